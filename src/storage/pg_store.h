/* Internal: the PostgreSQL message storage's state, shared by its files
 * (all of it runs on the loop thread):
 *
 *   pg.c           the st_ops entry points; attach, flush, detach, destroy;
 *                  cruster_storage_pg_new
 *   pg_conn.c      a connection: connecting, uv_poll, reconnecting with
 *                  backoff, sending and reading jobs (the pipeline)
 *   pg_batch.c     the queues: operations into jobs (one transaction each),
 *                  the job guard and re-running failed jobs, the deletes of
 *                  answered messages (batched over PG_DONE_DELAY_MS)
 *   pg_ops.c       the prepared statements; an operation's parameters
 *   pg_result.c    results (and failures) into the operations' callbacks
 *   pg_known.c     what this runtime knows of stored unanswered messages
 *                  (tracked, unknown, in transit; the attach scan; cluster
 *                  mode: per shard, acquired and released shards)
 *   pg_reconcile.c claim tokens and giving back stale claims
 *
 * pg_internal.h: the schema (pg_schema.c); pg_sql.h: the statements. */
#ifndef ST_PG_STORE_H
#define ST_PG_STORE_H

#include "core/prefix.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#include "storage/pg_internal.h"

enum {
  OP_SAVE, OP_REPLY, OP_RELEASE, OP_POLL, OP_GET, OP_DEAD, OP_REDELIVER, OP_CLEANUP,
  OP_RECONCILE, OP_SCAN, OP_UNCLAIM, OP_GET_KEYED, OP_PARK, OP_ACQUIRE
};
enum { C_DOWN, C_CONNECTING, C_PREPARING, C_READY };

/* Operations a connection queues while it cannot send (beyond: they fail). */
#define MAX_QUEUED 100000

/* Jobs in flight per connection: while the server runs one, the next is
 * already on its way, so its backend never waits for us. */
#define MAX_JOBS_IN_FLIGHT 2

/* Fast inserts go out as statements of 1, 2, 4, ... 64 rows. */
#define PG_FAST_SIZES 7
#define PG_FAST_MAX 64

/* The attach scan lists at most this many entities; beyond, all ask. */
#define PG_SCAN_LIMIT 100000

/* One storage operation, queued on a connection until a job sends it. */
typedef struct pg_op {
  struct pg_op *next;
  int kind;       /* OP_*: selects the member of cb */
  int solo;       /* run in a transaction of its own */
  int nstmt;      /* statements it sends */
  PGresult *res[3];
  core_env *env;  /* the message: a copy (SAVE, REPLY, RELEASE, PARK), the
                   * identity looked up (GET_KEYED, no payload), the row
                   * claimed (UNCLAIM) */
  int claim;      /* SAVE: claim the message for direct delivery */
  int attempt;    /* RELEASE: a failed delivery (counts), not a message
                   * never handed to a handler */
  int fast;       /* SAVE: a row of the job's fast insert (no probe, claimed) */
  int behind;     /* SAVE: an older message of its entity is tracked: never
                   * claim it at insert, even if the probe sees none */
  int tracked;    /* SAVE: it added its id to the store's tracked set */
  int in_transit; /* SAVE: may be claimed by its insert: counted in transit */
  void *key;      /* SAVE (keyed), GET_KEYED: the idempotency key */
  size_t key_len;
  int retries;    /* SAVE (keyed): tries lost to a concurrent insert */
  int status;     /* REPLY: the exit reply (data, len on success; message) */
  void *data;
  size_t len;
  char *message;
  int64_t request_id; /* GET, REDELIVER: the message looked up */
  int64_t attempts_before; /* UNCLAIM: the row's attempts before the claim */
  int64_t epoch;  /* RECONCILE: the store's epoch when sent (the losses it covers) */
  int64_t max_retries; /* POLL */
  int64_t now_ms; /* SAVE, POLL: the runtime's clock (due messages) */
  size_t limit;   /* POLL, DEAD: at most this many rows */
  uint64_t queued_ns; /* when it was queued, for the latency histogram */
  char *token;    /* UNCLAIM: the token the poll claimed under */
  int64_t wake_at;  /* PARK: due again then (Unix ms) */
  int64_t wake_seq; /* PARK: the wake counter the run read (< 0: none) */
  int progress;     /* PARK: the run made progress (attempts start again) */
  int64_t gen;      /* SAVE: its knowledge slot's generation when it started */
  char *owned;      /* POLL (some shards owned): their keys, an int8[] literal */
  int32_t *shards;  /* ACQUIRE: the shards (of env->group), n = limit */
  int64_t *gens;    /* ACQUIRE: each one's knowledge generation when asked */
  union {
    st_save_cb save;   /* SAVE */
    st_done_cb done;   /* REPLY, PARK (may be NULL), REDELIVER */
    st_poll_cb poll;   /* POLL */
    st_reply_cb reply; /* GET */
    st_keyed_cb keyed; /* GET_KEYED */
    st_list_cb list;   /* DEAD */
    st_done_cb acquired; /* ACQUIRE */
  } cb;           /* none for RELEASE, CLEANUP, RECONCILE, SCAN, UNCLAIM */
  void *ud;
} pg_op;

typedef struct pg_store pg_store;

typedef struct pg_conn {
  pg_store *st;
  int idx;
  PGconn *pq;
  uv_poll_t *poll;
  int fd;
  int events;
  uv_timer_t timer;
  int state;
  int64_t backoff;
  int refused;   /* the server refused our statements: a failed attempt */
  int accepted;  /* this attempt got past authentication */
  pg_op *q_head, *q_tail;
  size_t qlen;
  /* jobs sent and not finished, oldest first (results come in this order) */
  struct pg_job *jobs_head, *jobs_tail;
  int njobs;
  int want_write;
  /* Job order (see "the job guard", pg_batch.c): the id of the last job
   * sent on this session, and of the last one known to have committed. */
  int64_t job_seq, committed;
  /* Operations of failed jobs, in their order, waiting to run again once
   * every job in flight behind them has come back (nothing is sent
   * meanwhile: it would commit before them). */
  pg_op *redo_head, *redo_tail;
} pg_conn;

/* One Sync's worth of statements: a transaction of several operations (or,
 * right after connecting, the prepares). */
typedef struct pg_job {
  struct pg_job *next;
  int prepare;   /* the statement preparation of a new connection */
  int64_t id;    /* its number on the connection's session (the guard's) */
  int64_t epoch; /* the store's claim token epoch when it was sent */
  int behind;    /* sent while another job was in flight */
  pg_op **ops;
  size_t nops;
  int nq;        /* statements sent */
  int shared;    /* after the guard (slot 0), the first slots hold statements
                  * several operations share: the delete of answered unkeyed
                  * messages, the fast inserts */
  int cur, have_cur;
  PGresult *slots[];
} pg_job;

/* What this runtime knows of the stored unanswered messages of some
 * shards (pg_known.c): single-node, one slot for all; cluster mode, one per
 * shard of each configured group. */
enum { KS_NONE, KS_SCANNING, KS_KNOWN };
typedef struct pg_ks {
  core_map pending; /* "type\0id" -> count (as a pointer) of tracked messages */
  core_map tracked; /* request id -> (void *)1: stored (or being stored) by this
                     * runtime and not answered */
  core_map unknown; /* "type\0id" -> (void *)1: entities ordered by asking PostgreSQL */
  int state;        /* KS_*: known once scanned (single-node: at attach;
                     * cluster: acquired, then scanned) */
  int64_t gen;      /* grows at each release: results asked for earlier are void */
  int64_t saving;   /* saves in flight, started under this generation */
  int64_t stale;    /* saves in flight, started under an earlier one */
} pg_ks;

struct pg_store {
  char *conninfo;
  struct pg_wf *wf; /* the workflow side: its own blocking connections */
  PGconn *lock_conn; /* holds the schema's advisory lock (one runtime per schema) */
  st_host host; /* the attaching layer: loop, settings, callbacks up */
  const core_logger *lg;
  pg_conn *conns;
  int nconns;
  int closing;
  int64_t batch;
  int64_t backoff_ms;
  int64_t retention_ms;
  uv_timer_t cleanup_timer;
  int cleanup_init;
  char claimer[CRUSTER_MAX_NAME_LEN + 64];
  void (*flush_cb)(void *ud); /* graceful stop waits for the queues to empty */
  void *flush_ud;
  int64_t next_due;
  /* What this runtime knows of stored unanswered messages (loop thread):
   * see "knowing the entities", pg_known.c. */
  pg_ks *ks;         /* nks slots (pending, tracked, unknown, state) */
  size_t nks;
  int cluster;       /* host->cluster: shared with other runners */
  char *groups_lit;  /* the configured shard groups, a text[] literal */
  char life[CRUSTER_MAX_NAME_LEN + 40]; /* "address#life.": this life's token prefix */
  pg_op *acq_wait;   /* ACQUIREs that failed, waiting for acq_timer */
  uv_timer_t acq_timer;
  int acq_timer_init;
  core_map transit;  /* "type\0id" -> count: claims of ours on their way to the
                    * runtime (a claiming insert, a release) */
  core_map held;     /* "type\0id" -> (void *)1: a poll held its messages back;
                    * poll again once its transits are over */
  int all_unknown; /* too many to list, or out of memory: every entity asks */
  char *fast_sql[PG_FAST_SIZES];
  /* Deletes of answered unkeyed messages waiting for PG_DONE_DELAY_MS. */
  pg_op *done_head, *done_tail;
  size_t ndone;
  uv_timer_t done_timer;
  int done_timer_init;
  uv_timer_t scan_timer; /* retries a failed attach scan */
  int scan_timer_init;
  /* Giving back stale claims (see "the reconcile", pg_reconcile.c). epoch
   * counts claim tokens: it grows each time a lost connection leaves
   * claims in doubt. */
  int64_t epoch;
  int recon_need;  /* claims under other tokens than the current one may exist */
  int recon_busy;  /* a reconcile is on its way */
  int recon_first; /* the first one: what an earlier life left */
  uv_timer_t recon_timer; /* retries a failed reconcile */
  int recon_timer_init;
  core_metric *m_batches, *m_batch_ops, *m_reconnects, *m_latency;
  core_metric *m_taken_over, *m_known; /* cluster mode: pg_acquire_*, pg_ks_release */
};

/* Binary result values (NULL reads as 0, false, NULL). */
static inline int64_t pg_get_i64(const PGresult *r, int row, int col) {
  if (PQgetisnull(r, row, col)) return 0;
  const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return (int64_t)v;
}

static inline int32_t pg_get_i32(const PGresult *r, int row, int col) {
  if (PQgetisnull(r, row, col)) return 0;
  uint32_t v;
  memcpy(&v, PQgetvalue(r, row, col), 4);
  return (int32_t)ntohl(v);
}

static inline int pg_get_bool(const PGresult *r, int row, int col) {
  return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] != 0;
}

static inline const char *pg_get_text(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

/* Sends a prepared statement (binary results). */
static inline int pg_send_stmt(pg_conn *c, const char *name, int n, const char *const *vals,
                               const int *lens, const int *fmts) {
  return PQsendQueryPrepared(c->pq, name, n, vals, lens, fmts, 1);
}

/* ---- pg_conn.c: a connection ---- */

/* Starts connecting (attach; the retry timer after a failure). */
void pg_conn_connect(pg_conn *c);
/* The connection broke (or could not be opened): fails the jobs in flight,
 * keeps the queue, reconnects after a backoff. */
void pg_conn_fail(pg_conn *c, const char *why);
/* Writes what libpq holds and watches the socket accordingly. */
void pg_conn_flush(pg_conn *c);
/* A job of `nq` statements for `nops` operations (NULL on OOM). */
pg_job *pg_job_new(int nq, size_t nops);
void pg_job_free(pg_job *j);
/* Appends to the connection's jobs in flight. */
void pg_job_push(pg_conn *c, pg_job *j);

/* ---- pg_batch.c: the queues ---- */

/* The connection of an entity's writes. */
pg_conn *pg_conn_for_entity(pg_store *st, const core_env *e);
/* Queues `o` on `c` and sends what can be sent (or fails `o`: closing,
 * too many waiting). */
void pg_enqueue(pg_store *st, pg_conn *c, pg_op *o);
/* Queues an OP_REPLY: an unkeyed message's delete waits a moment for
 * company (PG_DONE_DELAY_MS), the rest go at once. */
void pg_enqueue_reply(pg_store *st, pg_op *o);
/* Queues the waiting deletes now (or fails them: closing). */
void pg_done_release(pg_store *st);
/* Calls the flush callback once nothing is queued or in flight. */
void pg_check_flushed(pg_store *st);
/* Sends queued operations as jobs while the connection can take them. */
void pg_conn_pump(pg_conn *c);
/* An operations job's Sync arrived: hands the results to its operations. */
void pg_job_done(pg_conn *c, pg_job *j);
/* Once no job is in flight: failed jobs' operations go back to the queue. */
void pg_redo_requeue(pg_conn *c);

/* ---- pg_ops.c: statements ---- */

pg_op *pg_op_new(int kind, void *ud);
void pg_op_free(pg_op *o);
/* Sends the statements of `o` (o->nstmt of them). 1, or 0 on failure. */
int pg_op_send(pg_conn *c, pg_op *o);
/* The number of statements pg_send_prepares sends. */
int pg_prepare_count(void);
/* Prepares every statement on a new connection. 1, or 0 on failure. */
int pg_send_prepares(pg_conn *c);
/* Builds st->fast_sql. 0, or -1 on OOM. */
int pg_fast_sql_build(pg_store *st);
/* How many fast-insert statements `n` rows take (and, with `sizes`, their
 * row counts: largest first). */
int pg_fast_split(size_t n, size_t *sizes);
/* The fast insert of `n` (1..PG_FAST_MAX, a power of two) rows. */
int pg_send_fast(pg_conn *c, pg_op **ops, size_t n);
/* ids as a PostgreSQL int8[] literal, "{1,2,3}" (malloc'd; NULL on OOM). */
char *pg_int8_array(const int64_t *ids, size_t n);

/* ---- pg_result.c: results ---- */

/* Hands the operation's results (o->res) to its callback; frees it (unless
 * it was queued again). */
void pg_op_complete(pg_store *st, pg_op *o);
/* Reports failure `status`/`msg` to the operation's callback; frees it. */
void pg_op_fail(pg_store *st, pg_op *o, int status, const char *msg);

/* ---- pg_known.c: knowing the entities ---- */

/* Makes the knowledge slots (attach). 0, or -1 on OOM or overflow. */
int pg_ks_init(pg_store *st);
void pg_ks_free(pg_store *st);
/* The slot of a shard (single-node: the only one); NULL for a group not
 * configured or a shard out of range (nothing of it is known). */
pg_ks *pg_ks_of(pg_store *st, const char *group, int32_t shard);
/* The entity (of that shard) is ordered by asking PostgreSQL. */
void pg_unknown_add(pg_store *st, const char *group, int32_t shard, const char *type,
                    const char *id);
/* 1 when `m` (unkeyed, due now) can take the fast insert. */
int pg_knows_clear(pg_store *st, const core_env *m);
/* How many tracked messages its entity has. */
uintptr_t pg_pending_of(pg_store *st, const core_env *m);
/* Counts a message being stored (and its save in flight: o->gen); 1 if this
 * call added it. */
int pg_track_add(pg_store *st, pg_op *o);
/* The save of `o` came back (stored or not): its flight is over. */
void pg_save_landed(pg_store *st, pg_op *o);
/* The message is answered (or was never stored): uncounts it. */
void pg_track_remove(pg_store *st, int64_t request_id, const char *group, int32_t shard,
                     const char *type, const char *id);
/* Cluster mode: forgets what is known of the shards (release). */
void pg_ks_release(pg_store *st, const char *group, const int32_t *shards, size_t n);
/* Cluster mode: queues the give-back and scan of acquired shards. */
void pg_acquire_start(pg_store *st, pg_op *o);
/* Their result (two statements: the unclaim, the scan). */
void pg_acquire_done(pg_store *st, pg_op *o);
/* Failed: tried again later (or failed for good: closing). */
void pg_acquire_failed(pg_store *st, pg_op *o, int status, const char *msg);
/* Detach: fails the ACQUIREs waiting to be tried again. */
void pg_acquire_close(pg_store *st);
void pg_transit_start(pg_store *st, const core_env *m);
void pg_transit_end(pg_store *st, const core_env *m);
/* 1 when a claim of the entity is in transit (and remembers to poll again
 * when its transits end). */
int pg_in_transit(pg_store *st, const char *type, const char *id);
/* Queues the attach scan. */
void pg_scan_start(pg_store *st);
/* The scan's result (PG_SQL_SCAN). */
void pg_scan_done(pg_store *st, const PGresult *r);
/* The scan failed: it runs again later. */
void pg_scan_failed(pg_store *st);

/* ---- pg_reconcile.c: claim tokens ---- */

/* This life's token prefix in st->life (attach). */
void pg_life_new(pg_store *st);
/* The token of this life's epoch in st->claimer. */
void pg_claimer_new(pg_store *st);
/* Claims under the current token may be in doubt: a new token, and a
 * reconcile. */
void pg_new_claim_token(pg_store *st);
/* Sends the reconcile when one is needed and its barrier holds. */
void pg_recon_kick(pg_store *st);
/* The reconcile sent at `epoch` committed (r: its command result). */
void pg_recon_done(pg_store *st, int64_t epoch, PGresult *r);
/* The reconcile failed: it runs again later. */
void pg_recon_failed(pg_store *st);

#endif
