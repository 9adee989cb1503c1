/* PostgreSQL message storage: a pool of non-blocking libpq connections
 * driven by uv_poll on the runtime's loop thread. A connection sends jobs:
 * the statements of up to storage_batch_size queued operations pipelined up
 * to one Sync (one implicit transaction), so concurrent writes share one
 * commit. Two jobs may be in flight, so the server never waits for us; each
 * job first checks that the one before it committed, so jobs commit in the
 * order they were sent even when one fails. Writes for one entity always
 * use the same connection, which keeps them in order. Operations queue
 * while a connection reconnects. */
#include <arpa/inet.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/hash.h"
#include "core/util.h"
#include "storage/pg_internal.h"
#include "storage/pg_sql.h"

enum {
  OP_SAVE, OP_REPLY, OP_RELEASE, OP_POLL, OP_GET, OP_DEAD, OP_REDELIVER, OP_CLEANUP,
  OP_RECONCILE, OP_SCAN, OP_UNCLAIM, OP_GET_KEYED
};
enum { C_DOWN, C_CONNECTING, C_PREPARING, C_READY };

#define MAX_QUEUED 100000

typedef struct pg_op {
  struct pg_op *next;
  int kind;       /* OP_*: selects the member of cb */
  int solo;       /* run in a transaction of its own */
  int nstmt;      /* statements it sends */
  PGresult *res[3];
  core_env *env;  /* the message: a copy (SAVE, REPLY, RELEASE), the
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
  union {
    st_save_cb save;   /* SAVE */
    st_done_cb done;   /* REPLY (may be NULL), REDELIVER */
    st_poll_cb poll;   /* POLL */
    st_reply_cb reply; /* GET */
    st_keyed_cb keyed; /* GET_KEYED */
    st_list_cb list;   /* DEAD */
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
  /* Job order (see "the job guard"): the id of the last job sent on this
   * session, and of the last one known to have committed. */
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

/* Jobs in flight per connection: while the server runs one, the next is
 * already on its way, so its backend never waits for us. */
#define MAX_JOBS_IN_FLIGHT 2

/* Fast inserts go out as statements of 1, 2, 4, ... 64 rows. */
#define PG_FAST_SIZES 7
#define PG_FAST_MAX 64
/* Answers of unkeyed messages (deletes) wait up to this long, so that they
 * share a statement and a commit even when calls come one at a time. The
 * caller has its answer already; a crash in between runs them again, as
 * at-least-once allows. */
#define PG_DONE_DELAY_MS 2

/* The attach scan lists at most this many entities; beyond, all ask. */
#define PG_SCAN_LIMIT 100000
#define PG_SCAN_RETRY_MS 1000

struct pg_store {
  char *conninfo;
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
   * see "knowing the entities" below. */
  core_map pending;  /* "type\0id" -> count (as a pointer) of tracked messages */
  core_map tracked;  /* request id -> (void *)1: stored (or being stored) by this
                    * runtime and not answered */
  core_map unknown;  /* "type\0id" -> (void *)1: entities ordered by asking PostgreSQL */
  core_map transit;  /* "type\0id" -> count: claims of ours on their way to the
                    * runtime (a claiming insert, a release) */
  core_map held;     /* "type\0id" -> (void *)1: a poll held its messages back;
                    * poll again once its transits are over */
  int scanned;     /* the scan of stored messages at attach has completed */
  int all_unknown; /* too many to list, or out of memory: every entity asks */
  char *fast_sql[PG_FAST_SIZES];
  /* Deletes of answered unkeyed messages waiting for PG_DONE_DELAY_MS. */
  pg_op *done_head, *done_tail;
  size_t ndone;
  uv_timer_t done_timer;
  int done_timer_init;
  uv_timer_t scan_timer; /* retries a failed attach scan */
  int scan_timer_init;
  /* Giving back stale claims (see "the reconcile"). epoch counts claim
   * tokens: it grows each time a lost connection leaves claims in doubt. */
  int64_t epoch;
  int recon_need;  /* claims under other tokens than the current one may exist */
  int recon_busy;  /* a reconcile is on its way */
  int recon_first; /* the first one: what an earlier life left */
  uv_timer_t recon_timer; /* retries a failed reconcile */
  int recon_timer_init;
  core_metric *m_batches, *m_batch_ops, *m_reconnects, *m_latency;
};

static void conn_connect(pg_conn *c);
static void conn_pump(pg_conn *c);
static void redo_requeue(pg_conn *c);
static void on_poll(uv_poll_t *h, int status, int events);
static void enqueue(pg_store *st, pg_conn *c, pg_op *o);
static pg_conn *conn_for_entity(pg_store *st, const core_env *e);
static pg_op *op_new(int kind, void *ud);
static void recon_kick(pg_store *st);
static void recon_kick_timer(uv_timer_t *t);

/* ---- statements ------------------------------------------------------------ */

typedef struct stmt {
  const char *name;
  const char *sql;
  int nparams;
} stmt;

static const stmt stmts[] = {
    {"cr_ins", PG_SQL_INSERT, 14},  {"cr_ins1", PG_SQL_INSERT_FRESH, 14},
    {"cr_getk", PG_SQL_GET_KEYED, 5},
    {"cr_rep", PG_SQL_REPLY, 4},
    {"cr_done", PG_SQL_DONE, 1},    {"cr_done_many", PG_SQL_DONE_MANY, 1},    {"cr_rel", PG_SQL_RELEASE, 3},
    {"cr_rel_many", PG_SQL_RELEASE_MANY, 1},
    {"cr_get", PG_SQL_GET, 1},      {"cr_list", PG_SQL_LIST_DEAD, 1},
    {"cr_redel", PG_SQL_REDELIVER, 1},
    {"cr_clean", PG_SQL_CLEANUP, 1}, {"cr_recon", PG_SQL_RECONCILE, 2},
    {"cr_scan", PG_SQL_SCAN, 1},    {"cr_unclaim", PG_SQL_UNCLAIM, 3},
    {"cr_guard", PG_SQL_JOB_GUARD, 2},
};
#define N_STMTS (int)(sizeof stmts / sizeof stmts[0])

/* ---- binary results ---------------------------------------------------------- */

static int64_t get_i64(const PGresult *r, int row, int col) {
  if (PQgetisnull(r, row, col)) return 0;
  const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return (int64_t)v;
}

static int32_t get_i32(const PGresult *r, int row, int col) {
  if (PQgetisnull(r, row, col)) return 0;
  uint32_t v;
  memcpy(&v, PQgetvalue(r, row, col), 4);
  return (int32_t)ntohl(v);
}

static int get_bool(const PGresult *r, int row, int col) {
  return !PQgetisnull(r, row, col) && PQgetvalue(r, row, col)[0] != 0;
}

static const char *get_text(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

/* Builds an envelope from a PG_MSG_COLUMNS row. */
static core_env *row_env(const PGresult *r, int row, int64_t *attempts) {
  core_env *e = core_env_new(get_text(r, row, 4), get_text(r, row, 5), get_text(r, row, 6),
                         PQgetvalue(r, row, 7), (size_t)PQgetlength(r, row, 7));
  if (!e) return NULL;
  e->request_id = get_i64(r, row, 1);
  snprintf(e->group, sizeof(e->group), "%s", get_text(r, row, 2));
  e->shard = get_i32(r, row, 3);
  e->internal = (unsigned char)get_bool(r, row, 8);
  e->is_request = (unsigned char)get_bool(r, row, 9);
  e->keyed = (unsigned char)get_bool(r, row, 10);
  e->deliver_at = get_i64(r, row, 11);
  e->persisted = 1;
  if (attempts) *attempts = get_i32(r, row, 12);
  return e;
}

/* ---- knowing the entities ------------------------------------------------------ */

/* Per-entity order needs, for each new message, the answer to "is an older
 * unanswered message of this entity stored?". Asking PostgreSQL costs an
 * index probe inside every insert. In single-node mode this runtime writes
 * every row, so for the messages of its own life it knows the answer:
 * `tracked` holds the ids it stored (or is storing) and has not answered,
 * `pending` counts them per entity. Rows it cannot account for put their
 * entity in `unknown`, which is always asked: rows stored before it
 * attached (the scan), rows whose insert or answer failed (they may exist
 * and wait for a retry), and redelivered dead letters. Until the scan has
 * completed, every entity is asked. An entity with nothing tracked and not
 * unknown has no stored unanswered message: its new unkeyed message is
 * stored claimed by the fast insert and may be delivered at once. */

/* Adds `delta` (+1 or -1) to the count of `k` in `m` (a count held as the
 * value, absent = 0); returns the new count. A count that cannot be stored
 * (OOM) makes every entity ask PostgreSQL. */
static uintptr_t count_add(pg_store *st, core_map *m, const core_ekey *k, int delta) {
  uintptr_t n = (uintptr_t)core_map_get(m, k->p, k->n);
  if (delta > 0) {
    if (core_map_put(m, k->p, k->n, (void *)(n + 1)) != 0) {
      st->all_unknown = 1;
      return n;
    }
    return n + 1;
  }
  if (n == 0) return 0;
  if (n == 1) core_map_del(m, k->p, k->n);
  else core_map_put(m, k->p, k->n, (void *)(n - 1)); /* replaces: no allocation */
  return n - 1;
}

static void unknown_add(pg_store *st, const char *type, const char *id) {
  core_ekey k;
  if (st->all_unknown) return;
  if (core_ekey_make(&k, type, id) != 0) {
    st->all_unknown = 1;
    return;
  }
  if (!core_map_get(&st->unknown, k.p, k.n) && core_map_put(&st->unknown, k.p, k.n, (void *)1) != 0)
    st->all_unknown = 1;
  core_ekey_done(&k);
}

/* 1 when `m` (unkeyed, due now) can take the fast insert. */
static int knows_clear(pg_store *st, const core_env *m) {
  if (!st->scanned || st->all_unknown || m->keyed || m->deliver_at != 0) return 0;
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return 0;
  int clear = !core_map_get(&st->pending, k.p, k.n) && !core_map_get(&st->unknown, k.p, k.n);
  core_ekey_done(&k);
  return clear;
}

/* How many tracked messages its entity has. */
static uintptr_t pending_of(pg_store *st, const core_env *m) {
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return 1;
  uintptr_t n = (uintptr_t)core_map_get(&st->pending, k.p, k.n);
  core_ekey_done(&k);
  return n;
}

/* Counts a message being stored; 1 if this call added it. */
static int track_add(pg_store *st, const core_env *m) {
  if (core_map_iget(&st->tracked, m->request_id)) return 0; /* a repeated key */
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) {
    st->all_unknown = 1; /* untracked: nobody may rely on memory */
    return 0;
  }
  int ok = core_map_iput(&st->tracked, m->request_id, (void *)1) == 0;
  if (!ok) {
    st->all_unknown = 1;
  } else {
    uintptr_t before = (uintptr_t)core_map_get(&st->pending, k.p, k.n);
    ok = count_add(st, &st->pending, &k, 1) > before; /* else all_unknown is set */
    if (!ok) core_map_idel(&st->tracked, m->request_id);
  }
  core_ekey_done(&k);
  return ok;
}

/* The message is answered (or was never stored): uncounts it. */
static void track_remove(pg_store *st, int64_t request_id, const char *type, const char *id) {
  if (!core_map_idel(&st->tracked, request_id)) return;
  core_ekey k;
  if (core_ekey_make(&k, type, id) != 0) {
    st->all_unknown = 1; /* its count can no longer be lowered */
    return;
  }
  count_add(st, &st->pending, &k, -1);
  core_ekey_done(&k);
}

/* A claimed message is "in transit" from a claiming insert's start until
 * its callback has handed it to the runtime, and from a release's start
 * until it committed. Results of different connections arrive in any
 * order: a poll may claim a younger message of the entity meanwhile, and
 * delivering that one first would break the entity's order. Such a message
 * is held back: its claim is undone, and the runtime polls again when the
 * entity's transits are over. */
static void transit_start(pg_store *st, const core_env *m) {
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) {
    st->all_unknown = 1;
    return;
  }
  count_add(st, &st->transit, &k, 1);
  core_ekey_done(&k);
}

static void transit_end(pg_store *st, const core_env *m) {
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return;
  if (count_add(st, &st->transit, &k, -1) == 0 && core_map_del(&st->held, k.p, k.n))
    st->host.wake(st->host.ud);
  core_ekey_done(&k);
}

static int in_transit(pg_store *st, const char *type, const char *id) {
  if (st->transit.count == 0) return 0;
  core_ekey k;
  if (core_ekey_make(&k, type, id) != 0) return 1;
  int n = core_map_get(&st->transit, k.p, k.n) != NULL;
  if (n && !core_map_get(&st->held, k.p, k.n) && core_map_put(&st->held, k.p, k.n, (void *)1) != 0)
    n = 0; /* cannot remember to poll again: deliver it rather than strand it */
  core_ekey_done(&k);
  return n;
}

/* ---- sending an operation ------------------------------------------------------ */

/* ids as a PostgreSQL int8[] literal, "{1,2,3}" (malloc'd; NULL on OOM). */
static char *int8_array(const int64_t *ids, size_t n) {
  char *out = malloc(n * 21 + 3);
  if (!out) return NULL;
  char *p = out;
  *p++ = '{';
  for (size_t i = 0; i < n; i++) p += sprintf(p, "%s%lld", i ? "," : "", (long long)ids[i]);
  *p++ = '}';
  *p = 0;
  return out;
}

static int send_stmt(pg_conn *c, const char *name, int n, const char *const *vals, const int *lens,
                     const int *fmts) {
  return PQsendQueryPrepared(c->pq, name, n, vals, lens, fmts, 1);
}

/* The fast insert of `n` (1..PG_FAST_MAX, a power of two) rows. */
static int send_fast(pg_conn *c, pg_op **ops, size_t n) {
  pg_store *st = c->st;
  int np = 1 + PG_FAST_PARAMS * (int)n;
  char name[16];
  snprintf(name, sizeof name, "cr_fast%zu", n);
  const char **v = calloc((size_t)np, sizeof(*v));
  int *l = calloc((size_t)np, sizeof(*l));
  int *f = calloc((size_t)np, sizeof(*f));
  char(*num)[2][24] = calloc(n, sizeof(*num));
  int ok = v && l && f && num;
  if (ok) {
    v[0] = st->claimer;
    for (size_t i = 0; i < n; i++) {
      const core_env *m = ops[i]->env;
      int b = 1 + PG_FAST_PARAMS * (int)i;
      snprintf(num[i][0], sizeof num[i][0], "%lld", (long long)m->request_id);
      snprintf(num[i][1], sizeof num[i][1], "%d", m->shard);
      v[b] = num[i][0];
      v[b + 1] = m->group;
      v[b + 2] = num[i][1];
      v[b + 3] = m->type;
      v[b + 4] = m->id;
      v[b + 5] = m->method;
      v[b + 6] = m->payload;
      l[b + 6] = (int)m->len;
      f[b + 6] = 1;
      v[b + 7] = m->internal ? "t" : "f";
      v[b + 8] = m->is_request ? "t" : "f";
    }
    ok = send_stmt(c, name, np, v, l, f);
  }
  free(v);
  free(l);
  free(f);
  free(num);
  return ok;
}

/* How many fast-insert statements `n` rows take (and, with `sizes`, their
 * row counts: largest first). */
static int fast_split(size_t n, size_t *sizes) {
  int k = 0;
  while (n > 0) {
    size_t s = PG_FAST_MAX;
    while (s > n) s /= 2;
    if (sizes) sizes[k] = s;
    k++;
    n -= s;
  }
  return k;
}

static int op_send(pg_conn *c, pg_op *o) {
  pg_store *st = c->st;
  char a[32], b[32], d[32], e[32], f[32];
  switch (o->kind) {
  case OP_SAVE: {
    const core_env *m = o->env;
    snprintf(b, sizeof b, "%d", m->shard);
    snprintf(d, sizeof d, "%lld", (long long)m->deliver_at);
    snprintf(e, sizeof e, "%lld", (long long)o->now_ms);
    if (m->keyed) {
      int64_t cand[CORE_KEY_CANDIDATES];
      core_key_candidates(m->type, m->id, m->method, o->key, o->key_len, cand);
      char *ids = int8_array(cand, CORE_KEY_CANDIDATES);
      if (!ids) return 0;
      const char *v[14] = {ids, m->group, b, m->type, m->id, m->method, m->payload,
                           m->internal ? "t" : "f", m->is_request ? "t" : "f", d,
                           o->claim && !o->behind ? "t" : "f", st->claimer, e, o->key};
      int l[14] = {0, 0, 0, 0, 0, 0, (int)m->len, 0, 0, 0, 0, 0, 0, (int)o->key_len};
      int fm[14] = {0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1};
      int ok = send_stmt(c, "cr_ins", 14, v, l, fm);
      free(ids);
      return ok;
    }
    snprintf(a, sizeof a, "%lld", (long long)m->request_id);
    const char *v[14] = {a, m->group, b, m->type, m->id, m->method, m->payload,
                         m->internal ? "t" : "f", m->is_request ? "t" : "f", "f",
                         d, o->claim && !o->behind ? "t" : "f", st->claimer, e};
    int l[14] = {0, 0, 0, 0, 0, 0, (int)m->len, 0, 0, 0, 0, 0, 0, 0};
    int fm[14] = {0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    return send_stmt(c, "cr_ins1", 14, v, l, fm);
  }
  case OP_REPLY: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    if (!o->env->keyed) {
      const char *v[1] = {a};
      return send_stmt(c, "cr_done", 1, v, NULL, NULL);
    }
    snprintf(b, sizeof b, "%d", o->status);
    const char *v[4] = {a, b, o->status == CRUSTER_OK ? (o->data ? o->data : "") : NULL,
                        o->status == CRUSTER_OK ? NULL : o->message};
    int l[4] = {0, 0, (int)o->len, 0};
    int fm[4] = {0, 0, 1, 0};
    return send_stmt(c, "cr_rep", 4, v, l, fm);
  }
  case OP_RELEASE: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    snprintf(b, sizeof b, "%d", o->attempt ? 1 : 0);
    snprintf(d, sizeof d, "%lld", (long long)st->backoff_ms);
    const char *v[3] = {a, b, d};
    return send_stmt(c, "cr_rel", 3, v, NULL, NULL);
  }
  case OP_POLL: {
    /* LIMIT is an int4: storage_inbox_size may be larger. */
    snprintf(a, sizeof a, "%zu", o->limit > (size_t)INT32_MAX ? (size_t)INT32_MAX : o->limit);
    snprintf(b, sizeof b, "%lld", (long long)o->now_ms);
    snprintf(f, sizeof f, "%lld", (long long)o->max_retries);
    const char *v1[4] = {a, st->claimer, b, f};
    const char *v2[1] = {b};
    /* Planned at each poll, not prepared: a plan for its joins made while
     * the table was empty (as on a new connection) could walk every
     * unanswered message per candidate (pg_sql.h). Polls are rare enough
     * to pay for planning with the table's size of now. */
    return PQsendQueryParams(c->pq, PG_SQL_CLAIM, 4, NULL, v1, NULL, NULL, 1) &&
           PQsendQueryParams(c->pq, PG_SQL_NEXT_DUE, 1, NULL, v2, NULL, NULL, 1);
  }
  case OP_GET:
  case OP_REDELIVER: {
    snprintf(a, sizeof a, "%lld", (long long)o->request_id);
    const char *v[1] = {a};
    return send_stmt(c, o->kind == OP_GET ? "cr_get" : "cr_redel", 1, v, NULL, NULL);
  }
  case OP_GET_KEYED: {
    const core_env *m = o->env;
    int64_t cand[CORE_KEY_CANDIDATES];
    core_key_candidates(m->type, m->id, m->method, o->key, o->key_len, cand);
    char *ids = int8_array(cand, CORE_KEY_CANDIDATES);
    if (!ids) return 0;
    const char *v[5] = {ids, m->type, m->id, m->method, o->key};
    int l[5] = {0, 0, 0, 0, (int)o->key_len};
    int fm[5] = {0, 0, 0, 0, 1};
    int ok = send_stmt(c, "cr_getk", 5, v, l, fm);
    free(ids);
    return ok;
  }
  case OP_DEAD: {
    snprintf(a, sizeof a, "%zu", o->limit > 100000 ? (size_t)100000 : o->limit);
    const char *v[1] = {a};
    return send_stmt(c, "cr_list", 1, v, NULL, NULL);
  }
  case OP_CLEANUP: {
    snprintf(a, sizeof a, "%lld", (long long)st->retention_ms);
    const char *v[1] = {a};
    return send_stmt(c, "cr_clean", 1, v, NULL, NULL);
  }
  case OP_UNCLAIM: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    snprintf(b, sizeof b, "%lld", (long long)o->attempts_before);
    const char *v[3] = {a, b, o->token};
    return send_stmt(c, "cr_unclaim", 3, v, NULL, NULL);
  }
  case OP_SCAN: {
    snprintf(a, sizeof a, "%d", PG_SCAN_LIMIT + 1);
    const char *v[1] = {a};
    return send_stmt(c, "cr_scan", 1, v, NULL, NULL);
  }
  case OP_RECONCILE: {
    /* The set is taken now, on the loop thread: exactly what runs here. */
    size_t n = 0;
    int64_t *inflight = st->host.inflight(st->host.ud, &n);
    char *ids = inflight ? int8_array(inflight, n) : NULL;
    free(inflight);
    if (!ids) return 0;
    const char *v[2] = {st->claimer, ids};
    int ok = send_stmt(c, "cr_recon", 2, v, NULL, NULL);
    free(ids);
    return ok;
  }
  }
  return 0;
}

/* ---- completing an operation ---------------------------------------------------- */

static void op_free(pg_op *o) {
  for (int i = 0; i < 3; i++) PQclear(o->res[i]);
  free(o->env);
  free(o->data);
  free(o->message);
  free(o->token);
  free(o->key);
  free(o);
}

static void on_scan_timer(uv_timer_t *t) {
  pg_store *st = t->data;
  pg_op *o = op_new(OP_SCAN, NULL);
  if (o) enqueue(st, &st->conns[0], o);
}

/* Reports failure `status`/`msg` to the operation's callback. */
static void op_fail(pg_store *st, pg_op *o, int status, const char *msg) {
  switch (o->kind) {
  case OP_SAVE:
    /* The row may exist (a lost connection) and then waits for the poll. */
    if (o->tracked) track_remove(st, o->env->request_id, o->env->type, o->env->id);
    unknown_add(st, o->env->type, o->env->id);
    {
      st_saved out = {ST_SAVED, o->env->request_id, 0, NULL};
      o->cb.save(o->ud, status, msg, &out);
    }
    if (o->in_transit) transit_end(st, o->env);
    break;
  case OP_RELEASE:
    transit_end(st, o->env);
    if (!st->closing)
      core_log(st->lg, CRUSTER_LOG_WARN, "storage", "giving back message %lld failed: %s",
               (long long)o->env->request_id, msg);
    break;
  case OP_SCAN:
    /* Until it succeeds every entity asks PostgreSQL: run it again, later
     * (from a timer: never from inside enqueue's own failure). */
    if (!st->closing && st->scan_timer_init)
      uv_timer_start(&st->scan_timer, on_scan_timer, PG_SCAN_RETRY_MS, 0);
    break;
  case OP_REPLY:
    /* Not answered after all: the message is retried, after the ones in
     * memory would be delivered -- so its entity asks from now on. */
    unknown_add(st, o->env->type, o->env->id);
    if (o->cb.done) o->cb.done(o->ud, status, msg);
    break;
  case OP_REDELIVER:
    if (o->cb.done) o->cb.done(o->ud, status, msg);
    break;
  case OP_POLL:
    o->cb.poll(o->ud, status, msg, NULL, 0, NULL, 0);
    break;
  case OP_RECONCILE:
    /* Never dropped: stale claims would hold their messages (and, as the
     * claim never passes an older message, their entities) for good. It
     * runs again, later (from a timer: never from inside enqueue's own
     * failure). */
    st->recon_busy = 0;
    if (!st->closing && st->recon_timer_init)
      uv_timer_start(&st->recon_timer, recon_kick_timer, 100, 0);
    break;
  case OP_GET:
    o->cb.reply(o->ud, status, msg, 0, 0, NULL);
    break;
  case OP_GET_KEYED:
    o->cb.keyed(o->ud, status, msg, 0, 0, NULL);
    break;
  case OP_DEAD:
    o->cb.list(o->ud, status, msg, NULL);
    break;
  default:
    if (!st->closing)
      core_log(st->lg, CRUSTER_LOG_WARN, "storage", "a storage operation failed: %s", msg);
    break;
  }
  op_free(o);
}

static int cmp_seq(const void *a, const void *b) {
  const int64_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The keyed insert's result (PG_SQL_INSERT). Returns 1 when the operation
 * was queued again (a concurrent insert took its free candidate id). */
#define PG_KEYED_TRIES 8
static int save_keyed_done(pg_store *st, pg_op *o, PGresult *r, st_saved *out) {
  st_save_cb cb = o->cb.save;
  int kind = PQntuples(r) > 0 ? get_i32(r, 0, 0) : -1;
  if (kind == 0) {
    int64_t id = get_i64(r, 0, 2);
    if (id != o->env->request_id) {
      /* Stored under another candidate: its PRID (tracked, if anything) is
       * another call's. Its entity is ordered by asking from now on. */
      if (o->tracked) track_remove(st, o->env->request_id, o->env->type, o->env->id);
      o->tracked = 0;
      unknown_add(st, o->env->type, o->env->id);
    }
    out->request_id = id;
    out->result = (o->claim && !get_bool(r, 0, 1)) ? ST_SAVED_QUEUED : ST_SAVED;
    cb(o->ud, CRUSTER_OK, NULL, out);
    return 0;
  }
  /* Nothing new stored: nothing new to count. */
  if (o->tracked) track_remove(st, o->env->request_id, o->env->type, o->env->id);
  o->tracked = 0;
  if (kind == 1) {
    out->request_id = get_i64(r, 0, 2);
    out->same_payload = get_bool(r, 0, 7);
    if (get_bool(r, 0, 6) && !PQgetisnull(r, 0, 3)) {
      st_reply rep = {get_i32(r, 0, 3), PQgetvalue(r, 0, 4), (size_t)PQgetlength(r, 0, 4),
                      get_text(r, 0, 5)};
      out->result = ST_DUPLICATE_REPLIED;
      out->existing = &rep;
      cb(o->ud, CRUSTER_OK, NULL, out);
    } else {
      out->result = ST_DUPLICATE_PENDING;
      cb(o->ud, CRUSTER_OK, NULL, out);
    }
    return 0;
  }
  if (kind == 2) {
    cb(o->ud, CRUSTER_E_CONFLICT,
       "every candidate request id of this idempotency key holds another call: use another key",
       out);
    return 0;
  }
  if (++o->retries < PG_KEYED_TRIES && !st->closing) {
    for (int i = 0; i < 3; i++) {
      PQclear(o->res[i]);
      o->res[i] = NULL;
    }
    enqueue(st, conn_for_entity(st, o->env), o);
    return 1;
  }
  cb(o->ud, CRUSTER_E_PERSISTENCE, "storing a keyed message lost every try to concurrent inserts",
     out);
  return 0;
}

static void op_complete(pg_store *st, pg_op *o) {
  PGresult *r = o->res[0];
  core_metric_observe(st->m_latency, (double)(core_mono_ns() - o->queued_ns) / 1e9);
  switch (o->kind) {
  case OP_SAVE: {
    st_save_cb cb = o->cb.save;
    st_saved out = {ST_SAVED, o->env->request_id, 0, NULL};
    if (o->fast) {
      /* A row of the job's fast insert, which succeeded: stored, claimed. */
      cb(o->ud, CRUSTER_OK, NULL, &out);
    } else if (!o->env->keyed) {
      /* A fresh id: a row back means stored; none means it was taken. */
      if (PQntuples(r) == 0) {
        if (o->tracked) track_remove(st, o->env->request_id, o->env->type, o->env->id);
        cb(o->ud, CRUSTER_E_PERSISTENCE,
           "request id already stored: two runtimes share this schema in single-node mode?",
           &out);
      } else {
        out.result = (o->claim && !get_bool(r, 0, 0)) ? ST_SAVED_QUEUED : ST_SAVED;
        cb(o->ud, CRUSTER_OK, NULL, &out);
      }
    } else if (save_keyed_done(st, o, r, &out)) {
      return; /* queued again */
    }
    /* After the callback: it has handed the message over (or released it). */
    if (o->in_transit) transit_end(st, o->env);
    break;
  }
  case OP_REPLY:
    if (o->cb.done) o->cb.done(o->ud, CRUSTER_OK, NULL);
    break;
  case OP_RELEASE:
    transit_end(st, o->env);
    break;
  case OP_UNCLAIM:
    break;
  case OP_POLL: {
    int n = PQntuples(r), nd = 0;
    int64_t *dead_ids = calloc((size_t)n + 1, sizeof(int64_t));
    int64_t (*order)[2] = calloc((size_t)n + 1, sizeof(*order));
    core_env **msgs = calloc((size_t)n + 1, sizeof(*msgs));
    if (!dead_ids || !order || !msgs) {
      free(dead_ids);
      free(order);
      free(msgs);
      o->cb.poll(o->ud, CRUSTER_E_NOMEM, "out of memory", NULL, 0, NULL, 0);
      break;
    }
    /* Column 13: processed -- the claim made it a dead letter. */
    for (int i = 0; i < n; i++)
      if (get_bool(r, i, 13)) {
        dead_ids[nd++] = get_i64(r, i, 1);
        track_remove(st, get_i64(r, i, 1), get_text(r, i, 4), get_text(r, i, 5));
      }
    /* RETURNING has no order: sort the claimed rows by seq. */
    for (int i = 0; i < n; i++) {
      order[i][0] = get_i64(r, i, 0);
      order[i][1] = i;
    }
    qsort(order, (size_t)n, sizeof(*order), cmp_seq);
    size_t nm = 0;
    for (int k = 0; k < n; k++) {
      int i = (int)order[k][1];
      if (get_bool(r, i, 13)) continue;
      core_env *e = row_env(r, i, NULL);
      if (!e) continue;
      if (in_transit(st, e->type, e->id)) {
        /* An older message of its entity may still be on its way: not now. */
        pg_op *u = op_new(OP_UNCLAIM, NULL);
        if (u && (u->token = core_strdup(st->claimer))) {
          u->env = e;
          u->attempts_before = get_i32(r, i, 14);
          enqueue(st, &st->conns[0], u);
          continue;
        }
        free(u);
      }
      msgs[nm++] = e;
    }
    st->next_due = get_i64(o->res[1], 0, 0);
    o->cb.poll(o->ud, CRUSTER_OK, NULL, msgs, nm, dead_ids, (size_t)nd);
    free(msgs);
    free(order);
    free(dead_ids);
    break;
  }
  case OP_GET: {
    st_reply_cb cb = o->cb.reply;
    if (PQntuples(r) == 0) {
      cb(o->ud, CRUSTER_OK, NULL, 0, 0, NULL);
    } else if (get_bool(r, 0, 0) && !PQgetisnull(r, 0, 1)) {
      st_reply rep = {get_i32(r, 0, 1), PQgetvalue(r, 0, 2), (size_t)PQgetlength(r, 0, 2),
                      get_text(r, 0, 3)};
      cb(o->ud, CRUSTER_OK, NULL, 1, 1, &rep);
    } else {
      cb(o->ud, CRUSTER_OK, NULL, 1, 0, NULL);
    }
    break;
  }
  case OP_GET_KEYED: {
    st_keyed_cb cb = o->cb.keyed;
    if (PQntuples(r) == 0) {
      cb(o->ud, CRUSTER_OK, NULL, 0, 0, NULL);
    } else if (get_bool(r, 0, 1) && !PQgetisnull(r, 0, 2)) {
      st_reply rep = {get_i32(r, 0, 2), PQgetvalue(r, 0, 3), (size_t)PQgetlength(r, 0, 3),
                      get_text(r, 0, 4)};
      cb(o->ud, CRUSTER_OK, NULL, get_i64(r, 0, 0), 1, &rep);
    } else {
      cb(o->ud, CRUSTER_OK, NULL, get_i64(r, 0, 0), 0, NULL);
    }
    break;
  }
  case OP_DEAD: {
    size_t cap = 0;
    cruster_message_list *l = st_list_new(0);
    for (int i = 0; l && i < PQntuples(r); i++) {
      int64_t attempts = 0;
      core_env *e = row_env(r, i, &attempts);
      if (!e || st_list_add(l, &cap, e, attempts) != 0) {
        cruster_message_list_free(l);
        l = NULL;
      }
    }
    if (l) o->cb.list(o->ud, CRUSTER_OK, NULL, l);
    else o->cb.list(o->ud, CRUSTER_E_NOMEM, "out of memory", NULL);
    break;
  }
  case OP_REDELIVER:
    if (PQntuples(r) == 0) {
      o->cb.done(o->ud, CRUSTER_E_NOT_FOUND, "no dead letter with that request id");
    } else {
      /* Unanswered again, and not in memory: newer messages of its entity
       * must be ordered by asking. */
      unknown_add(st, get_text(r, 0, 1), get_text(r, 0, 2));
      o->cb.done(o->ud, CRUSTER_OK, NULL);
    }
    break;
  case OP_SCAN:
    if (PQntuples(r) > PG_SCAN_LIMIT) {
      st->all_unknown = 1;
      core_log(st->lg, CRUSTER_LOG_INFO, "storage",
               "more than %d entities have stored unanswered messages: every new message "
               "asks PostgreSQL for its entity's order",
               PG_SCAN_LIMIT);
    }
    for (int i = 0; i < PQntuples(r) && !st->all_unknown; i++)
      unknown_add(st, get_text(r, i, 0), get_text(r, i, 1));
    st->scanned = 1;
    break;
  case OP_CLEANUP:
    break;
  case OP_RECONCILE: {
    st->recon_busy = 0;
    if (o->epoch == st->epoch) st->recon_need = 0; /* else: a newer loss */
    const char *n = PQcmdTuples(r);
    if (n && *n && strcmp(n, "0") != 0) {
      core_log(st->lg, CRUSTER_LOG_INFO, "storage",
               st->recon_first
                   ? "%s message(s) claimed by an earlier run will be delivered again"
                   : "%s message(s) claimed just before a lost connection will be delivered again",
               n);
      /* Their entities' younger messages waited for them. */
      st->host.wake(st->host.ud);
    }
    st->recon_first = 0;
    break;
  }
  }
  op_free(o);
}

/* ---- the queue ---------------------------------------------------------------------- */

static pg_conn *conn_for_entity(pg_store *st, const core_env *e) {
  /* type, a zero byte, id: as the instance keys */
  uint64_t h = core_hash_bytes(CORE_HASH_SEED, e->type, strlen(e->type) + 1);
  h = core_hash_bytes(h, e->id, strlen(e->id));
  return &st->conns[h % (uint64_t)st->nconns];
}

static void enqueue(pg_store *st, pg_conn *c, pg_op *o) {
  if (st->closing) {
    op_fail(st, o, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
    return;
  }
  if (c->state != C_READY && c->qlen >= MAX_QUEUED) {
    op_fail(st, o, CRUSTER_E_PERSISTENCE,
            "PostgreSQL is unreachable and too many storage operations are waiting");
    return;
  }
  o->next = NULL;
  o->queued_ns = core_mono_ns();
  if (c->q_tail) c->q_tail->next = o; else c->q_head = o;
  c->q_tail = o;
  c->qlen++;
  conn_pump(c);
}

/* Sends the waiting deletes, each on its entity's connection (behind that
 * entity's writes: a delete that overtook a younger message's insert would
 * let that insert's probe find the entity clear and claim it while a poll
 * may claim a still younger one), where they share one statement per job. */
static void release_done(pg_store *st) {
  if (st->done_timer_init) uv_timer_stop(&st->done_timer);
  if (!st->done_head) return;
  pg_op *o = st->done_head;
  st->done_head = st->done_tail = NULL;
  st->ndone = 0;
  if (st->closing) {
    while (o) {
      pg_op *n = o->next;
      op_fail(st, o, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
      o = n;
    }
    return;
  }
  uint64_t now = core_mono_ns();
  while (o) {
    pg_op *n = o->next;
    pg_conn *c = conn_for_entity(st, o->env);
    o->next = NULL;
    o->queued_ns = now;
    if (c->q_tail) c->q_tail->next = o; else c->q_head = o;
    c->q_tail = o;
    c->qlen++;
    o = n;
  }
  for (int i = 0; i < st->nconns; i++) conn_pump(&st->conns[i]);
}

static void on_done_timer(uv_timer_t *t) { release_done(t->data); }

static pg_op *op_new(int kind, void *ud) {
  pg_op *o = calloc(1, sizeof(*o));
  if (!o) return NULL;
  o->kind = kind;
  o->ud = ud;
  o->nstmt = kind == OP_POLL ? 2 : 1;
  return o;
}

/* ---- the connection ------------------------------------------------------------------- */

static void poll_closed(uv_handle_t *h) { free(h); }

static void conn_watch(pg_conn *c, int events) {
  int fd = c->pq ? PQsocket(c->pq) : -1;
  if (c->poll && (fd != c->fd || events == 0)) {
    uv_poll_stop(c->poll);
    uv_close((uv_handle_t *)c->poll, poll_closed);
    c->poll = NULL;
  }
  if (events == 0 || fd < 0) return;
  if (!c->poll) {
    c->poll = malloc(sizeof(*c->poll));
    if (!c->poll || uv_poll_init(c->st->host.loop, c->poll, fd) != 0) {
      free(c->poll);
      c->poll = NULL;
      return;
    }
    c->poll->data = c;
    c->fd = fd;
    c->events = 0;
  }
  if (events != c->events) {
    uv_poll_start(c->poll, events, on_poll);
    c->events = events;
  }
}

static void job_free(pg_job *j) {
  for (int i = 0; i < j->nq; i++) PQclear(j->slots[i]);
  free(j->ops);
  free(j);
}

static pg_job *job_new(int nq, size_t nops) {
  pg_job *j = calloc(1, sizeof(*j) + (size_t)nq * sizeof(PGresult *));
  if (!j) return NULL;
  j->nq = nq;
  if (nops && !(j->ops = calloc(nops, sizeof(*j->ops)))) {
    free(j);
    return NULL;
  }
  return j;
}

static void job_push(pg_conn *c, pg_job *j) {
  j->next = NULL;
  if (c->jobs_tail) c->jobs_tail->next = j; else c->jobs_head = j;
  c->jobs_tail = j;
  c->njobs++;
}

static pg_job *job_pop(pg_conn *c) {
  pg_job *j = c->jobs_head;
  if (!j) return NULL;
  c->jobs_head = j->next;
  if (!c->jobs_head) c->jobs_tail = NULL;
  c->njobs--;
  j->next = NULL;
  return j;
}

static void on_retry_timer(uv_timer_t *t) { conn_connect(t->data); }

/* ---- the reconcile --------------------------------------------------------------
 *
 * Claims carry the runtime's current token. A claim under any other token
 * is stale (single-node): left by an earlier life of this runner, or made
 * by a statement of this life whose connection broke before its result
 * came back -- it may have committed, so the storage switched to a new
 * token (new_claim_token). The reconcile (PG_SQL_RECONCILE) gives back
 * every claim not under the current token, except those of messages being
 * handled here: at start and after every such loss. It is sent only once no
 * job sent under an earlier token is still in flight on any connection --
 * their claims are then either delivered (being handled: kept) or failed
 * (in doubt: given back); sent earlier, it would give back claims whose
 * messages are about to be delivered. It runs again until it succeeds (a
 * dropped one would hold stale claims, and the claim never passes an older
 * message of an entity, for good), and one covers every loss before it. It
 * goes to the head of the first connection's queue, sent at once. */

static void recon_kick_timer(uv_timer_t *t) { recon_kick(t->data); }

static void recon_kick(pg_store *st) {
  if (st->closing || !st->recon_need || st->recon_busy || !st->conns) return;
  pg_conn *c0 = &st->conns[0];
  /* Sent now or not at all: the barrier below holds only now. */
  if (c0->state != C_READY || c0->redo_head || c0->njobs >= MAX_JOBS_IN_FLIGHT) return;
  for (int i = 0; i < st->nconns; i++)
    for (struct pg_job *j = st->conns[i].jobs_head; j; j = j->next)
      if (!j->prepare && j->epoch < st->epoch) return;
  pg_op *o = op_new(OP_RECONCILE, NULL);
  if (!o) {
    core_log(st->lg, CRUSTER_LOG_ERROR, "storage", "out of memory reconciling claims");
    if (st->recon_timer_init) uv_timer_start(&st->recon_timer, recon_kick_timer, 100, 0);
    return;
  }
  o->epoch = st->epoch; /* the losses it covers */
  st->recon_busy = 1;
  o->queued_ns = core_mono_ns();
  o->next = c0->q_head;
  c0->q_head = o;
  if (!c0->q_tail) c0->q_tail = o;
  c0->qlen++;
  conn_pump(c0);
}

/* A claiming statement was in flight when its connection broke (it may have
 * committed), or a statement that gives a claim back was lost: claim under
 * a new token from now on, and reconcile. */
static void new_claim_token(pg_store *st) {
  int64_t token = 0;
  core_snowflake_next(st->host.snowflake, &token);
  snprintf(st->claimer, sizeof(st->claimer), "%s#%llx", st->host.cfg->runner_address,
           (unsigned long long)token);
  st->epoch++;
  st->recon_need = 1;
  recon_kick(st);
}

/* The connection broke (or could not be opened): fail the jobs in flight,
 * keep the queue, reconnect. */
static void conn_fail(pg_conn *c, const char *why) {
  pg_store *st = c->st;
  int was = c->state;
  char msg[512];
  /* An attempt fails (the server cannot be reached, refuses us or our
   * statements) or an accepted connection is lost (its backend terminated,
   * a restart). */
  int failed_attempt = (was == C_CONNECTING && !c->accepted) || c->refused;
  snprintf(msg, sizeof(msg), "%s to PostgreSQL: %s",
           failed_attempt ? "cannot connect" : "lost the connection", why);
  core_text_one_line(msg); /* libpq's text ends with a newline, may span lines */
  if (!st->closing)
    core_log(st->lg, CRUSTER_LOG_WARN, "storage", "connection %d: %s", c->idx, msg);
  pg_job *jobs = c->jobs_head;
  c->jobs_head = c->jobs_tail = NULL;
  c->njobs = 0;
  redo_requeue(c); /* not sent again yet: they wait for the new connection */
  conn_watch(c, 0);
  if (c->pq) PQfinish(c->pq);
  c->pq = NULL;
  c->state = C_DOWN;
  int in_doubt = 0;
  for (pg_job *j = jobs; j; j = j->next)
    for (size_t i = 0; i < j->nops; i++)
      in_doubt |= j->ops[i]->kind == OP_POLL || (j->ops[i]->kind == OP_SAVE && j->ops[i]->claim) ||
                  j->ops[i]->kind == OP_RELEASE || j->ops[i]->kind == OP_UNCLAIM ||
                  (j->ops[i]->kind == OP_REPLY && !j->ops[i]->cb.done);
  /* Fail first: a delivery whose insert failed is no longer counted as
   * handled here when the reconcile takes its set. */
  while (jobs) {
    pg_job *j = jobs;
    jobs = j->next;
    for (size_t i = 0; i < j->nops; i++)
      op_fail(st, j->ops[i], st->closing ? CRUSTER_E_SHUTTING_DOWN : CRUSTER_E_PERSISTENCE, msg);
    j->nops = 0;
    job_free(j);
  }
  if (st->closing) return;
  if (in_doubt) new_claim_token(st);
  else recon_kick(st); /* its jobs under an earlier token are gone */
  core_metric_add(st->m_reconnects, 1);
  /* One base backoff after losing a connection the server had accepted;
   * doubling up to 2 s while attempts fail. */
  if (failed_attempt)
    c->backoff = c->backoff ? (c->backoff * 2 > 2000 ? 2000 : c->backoff * 2) : 50;
  else
    c->backoff = 50;
  c->refused = c->accepted = 0;
  uv_timer_start(&c->timer, on_retry_timer, (uint64_t)c->backoff, 0);
}

static void conn_flush(pg_conn *c) {
  int r = PQflush(c->pq);
  if (r < 0) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  c->want_write = r == 1;
  conn_watch(c, UV_READABLE | (c->want_write ? UV_WRITABLE : 0));
}

static void check_flushed(pg_store *st) {
  if (!st->flush_cb || st->done_head) return;
  for (int i = 0; i < st->nconns; i++)
    if (st->conns[i].jobs_head || st->conns[i].q_head) return;
  void (*cb)(void *) = st->flush_cb;
  st->flush_cb = NULL;
  cb(st->flush_ud);
}

/* Operations of which a job sends one statement over all their ids, in
 * place of one each: answered unkeyed messages (deleted: they were all
 * answered before the job was built) and claims given back unused (full
 * mailboxes, stop: a poll can claim far more of one entity than its
 * mailbox takes). */
enum { SHARED_DONE, SHARED_RELEASE, SHARED_KINDS };
static const char *const shared_stmt[SHARED_KINDS] = {"cr_done_many", "cr_rel_many"};

static int shared_kind(const pg_op *o) {
  if (o->kind == OP_REPLY && !o->env->keyed) return SHARED_DONE;
  if (o->kind == OP_RELEASE && !o->attempt) return SHARED_RELEASE;
  return -1;
}

/* ---- the job guard ----------------------------------------------------------
 *
 * Up to MAX_JOBS_IN_FLIGHT jobs are on their way, each its own transaction.
 * When an operation makes a job fail, its other operations run again (each
 * alone, so only the bad one fails) -- but the next job, already in the
 * server's input, would commit before them: a message of that job could be
 * stored before an older message of its entity that was in the failed job,
 * and since the poll delivers in storage order (seq), be delivered first.
 * So every job starts with the guard (PG_SQL_JOB_GUARD): it fails unless
 * the job sent before it on this session committed. A failed job's
 * successors in flight then fail too, without changing anything; their
 * operations are kept, in order, behind the failed job's (redo), and
 * nothing new is sent until every job in flight has come back. Then the
 * redo list goes back to the head of the queue. Jobs thus commit in the
 * order their operations were queued. */

/* The statements an operation sends by itself (undoing what a job's
 * grouping changed: shared ids, a fast insert's row). */
static void op_reset_nstmt(pg_op *o) {
  o->nstmt = o->kind == OP_POLL ? 2 : o->fast ? 0 : 1;
}

static void redo_add(pg_conn *c, pg_op *o, int solo) {
  o->solo = o->solo || solo;
  op_reset_nstmt(o);
  o->next = NULL;
  if (c->redo_tail) c->redo_tail->next = o; else c->redo_head = o;
  c->redo_tail = o;
}

/* Once no job is in flight: the redo list goes back to the queue's head. */
static void redo_requeue(pg_conn *c) {
  if (!c->redo_head || c->jobs_head) return;
  size_t n = 0;
  for (pg_op *o = c->redo_head; o; o = o->next) n++;
  c->redo_tail->next = c->q_head;
  if (!c->q_head) c->q_tail = c->redo_tail;
  c->q_head = c->redo_head;
  c->qlen += n;
  c->redo_head = c->redo_tail = NULL;
}

/* Sends queued operations while fewer than MAX_JOBS_IN_FLIGHT jobs are out
 * (and no failed job's operations wait to run again). */
static void conn_pump(pg_conn *c) {
  pg_store *st = c->st;
  int sent = 0;
  while (c->state == C_READY && !c->redo_head && c->njobs < MAX_JOBS_IN_FLIGHT && c->q_head) {
    size_t max = (size_t)st->batch, nops = 0, nfast = 0, nsh[SHARED_KINDS] = {0};
    int solo = c->q_head->solo, stmts_n = 0;
    for (pg_op *o = c->q_head; o && nops < max && (nops == 0 || (!solo && !o->solo)); o = o->next) {
      nops++;
      stmts_n += o->nstmt;
      if (shared_kind(o) >= 0) nsh[shared_kind(o)]++;
      nfast += o->fast;
    }
    /* Shared statements come first: those over ids (when two or more share
     * one), then the fast inserts -- rows of a few multi-row statements,
     * whose entities have no other stored unanswered message, so no
     * operation of the job touches them and moving them first keeps every
     * order. */
    int nshared = 0, fail = 0;
    int64_t *ids[SHARED_KINDS] = {NULL};
    for (int k = 0; k < SHARED_KINDS; k++) {
      if (nsh[k] < 2) continue;
      stmts_n = stmts_n - (int)nsh[k] + 1;
      nshared++;
      fail |= !(ids[k] = malloc(nsh[k] * sizeof(int64_t)));
    }
    int nchunks = fast_split(nfast, NULL);
    stmts_n += nchunks + 1; /* and the guard */
    pg_job *j = job_new(stmts_n, nops);
    pg_op **fast = nfast ? malloc(nfast * sizeof(*fast)) : NULL;
    size_t *sizes = nchunks ? malloc((size_t)nchunks * sizeof(*sizes)) : NULL;
    if (!j || fail || (nfast && (!fast || !sizes))) {
      if (j) job_free(j);
      for (int k = 0; k < SHARED_KINDS; k++) free(ids[k]);
      free(fast);
      free(sizes);
      conn_fail(c, "out of memory");
      return;
    }
    j->shared = nshared + nchunks;
    size_t nid[SHARED_KINDS] = {0}, nf = 0;
    for (size_t i = 0; i < nops; i++) {
      pg_op *o = c->q_head;
      c->q_head = o->next;
      if (!c->q_head) c->q_tail = NULL;
      c->qlen--;
      o->next = NULL;
      int k = shared_kind(o);
      if (k >= 0 && ids[k]) {
        o->nstmt = 0; /* its result is the job's shared statement */
        ids[k][nid[k]++] = o->env->request_id;
      }
      if (o->fast) fast[nf++] = o;
      j->ops[j->nops++] = o;
    }
    /* The guard: the job before this one, if still in flight, must commit. */
    char prev[24], mine[24];
    snprintf(prev, sizeof prev, "%lld",
             (long long)(c->jobs_tail ? c->jobs_tail->id : c->committed));
    j->id = ++c->job_seq;
    j->behind = c->jobs_tail != NULL;
    j->epoch = st->epoch;
    snprintf(mine, sizeof mine, "%lld", (long long)j->id);
    job_push(c, j);
    /* No BEGIN/COMMIT: everything up to a Sync is one implicit transaction. */
    const char *gv[2] = {prev, mine};
    int ok = send_stmt(c, "cr_guard", 2, gv, NULL, NULL);
    for (int k = 0; k < SHARED_KINDS; k++) {
      if (ok && ids[k]) {
        char *arr = int8_array(ids[k], nid[k]);
        const char *v[1] = {arr};
        ok = arr && send_stmt(c, shared_stmt[k], 1, v, NULL, NULL);
        free(arr);
      }
      free(ids[k]);
    }
    if (nchunks) fast_split(nfast, sizes);
    for (int k = 0, at = 0; ok && k < nchunks; at += (int)sizes[k], k++)
      ok = send_fast(c, fast + at, sizes[k]);
    free(fast);
    free(sizes);
    for (size_t i = 0; ok && i < j->nops; i++)
      if (j->ops[i]->nstmt) ok = op_send(c, j->ops[i]);
    if (!ok || !PQpipelineSync(c->pq)) {
      conn_fail(c, PQerrorMessage(c->pq));
      return;
    }
    core_metric_add(st->m_batches, 1);
    core_metric_add(st->m_batch_ops, (double)j->nops);
    sent = 1;
  }
  if (sent) conn_flush(c);
  if (!c->jobs_head && !c->q_head && !c->redo_head) check_flushed(st);
}

/* A job's Sync arrived: hand results to its operations. */
static void job_done(pg_conn *c, pg_job *j) {
  pg_store *st = c->st;
  if (j->prepare) {
    const char *bad = NULL;
    for (int i = 0; i < j->nq && !bad; i++) {
      ExecStatusType s = j->slots[i] ? PQresultStatus(j->slots[i]) : PGRES_FATAL_ERROR;
      if (s != PGRES_COMMAND_OK) bad = j->slots[i] ? PQresultErrorMessage(j->slots[i]) : "no result";
    }
    if (bad) {
      char msg[512];
      snprintf(msg, sizeof(msg), "preparing statements failed: %s", bad);
      job_free(j);
      c->refused = 1;
      conn_fail(c, msg);
      return;
    }
    job_free(j);
    c->state = C_READY;
    c->backoff = 0;
    core_log(st->lg, CRUSTER_LOG_DEBUG, "storage", "connection %d ready", c->idx);
    recon_kick(st); /* first, at the head of the queue */
    conn_pump(c);
    return;
  }
  const char *err = NULL;
  int failed = 0;
  for (int i = 0; i < j->nq; i++) {
    PGresult *r = j->slots[i];
    ExecStatusType s = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) continue;
    failed = 1;
    if (!err && r && s != PGRES_PIPELINE_ABORTED) err = PQresultErrorMessage(r);
  }
  /* The guard (slot 0) failed: the job before this one did not commit, and
   * this one changed nothing -- its operations run again after that one's. */
  int guard_failed = failed && PQresultStatus(j->slots[0]) != PGRES_TUPLES_OK && j->behind;
  if (!failed) c->committed = j->id;
  char msg[512] = "";
  if (failed) {
    snprintf(msg, sizeof(msg), "%s", err ? err : "the transaction was aborted");
    core_text_one_line(msg); /* libpq's text ends with a newline, may span lines */
  } else {
    /* Move each operation's results to it (after the guard and the shared
     * statements). */
    int k = 1 + j->shared;
    for (size_t i = 0; i < j->nops; i++)
      for (int x = 0; x < j->ops[i]->nstmt; x++) {
        j->ops[i]->res[x] = j->slots[k];
        j->slots[k++] = NULL;
      }
  }
  pg_op **ops = j->ops;
  size_t nops = j->nops;
  j->ops = NULL;
  j->nops = 0;
  job_free(j);
  /* Callbacks may queue more work: the job is already off the connection. */
  if (guard_failed || (failed && nops > 1)) {
    /* One bad operation aborted the batch: run each alone, in order (after
     * the jobs in flight behind it have failed too: see the job guard). */
    for (size_t i = 0; i < nops; i++) {
      if (ops[i]->kind == OP_RECONCILE) {
        /* Sent again by recon_kick, under its barrier (which held when this
         * one was sent, not necessarily when the redo list runs). */
        st->recon_busy = 0;
        op_free(ops[i]);
        continue;
      }
      redo_add(c, ops[i], !guard_failed);
    }
  } else {
    int reclaim = 0;
    for (size_t i = 0; i < nops; i++) {
      /* A claim that could not be given back would be held forever:
       * reconcile under a new token (what is not being handled goes back). */
      reclaim |= failed && (ops[i]->kind == OP_RELEASE || ops[i]->kind == OP_UNCLAIM);
      if (failed) op_fail(st, ops[i], CRUSTER_E_PERSISTENCE, msg);
      else op_complete(st, ops[i]);
    }
    if (reclaim && !st->closing) new_claim_token(st);
  }
  free(ops);
  redo_requeue(c);
  recon_kick(st); /* a job under an earlier token may have been the last */
  if (c->pq) conn_pump(c);
}

static void conn_read(pg_conn *c) {
  if (!PQconsumeInput(c->pq)) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  while (c->pq && c->jobs_head && !PQisBusy(c->pq)) {
    pg_job *j = c->jobs_head;
    PGresult *r = PQgetResult(c->pq);
    if (!r) {
      if (!j->have_cur) break;
      j->cur++;
      j->have_cur = 0;
      continue;
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      job_done(c, job_pop(c));
      continue;
    }
    if (!j->have_cur && j->cur < j->nq) {
      j->slots[j->cur] = r;
      j->have_cur = 1;
    } else {
      PQclear(r);
    }
  }
  if (c->pq && PQstatus(c->pq) == CONNECTION_BAD) conn_fail(c, PQerrorMessage(c->pq));
}

static void quiet_notices(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* Connected: enter pipeline mode and prepare every statement. */
static void conn_connected(pg_conn *c) {
  if (PQsetnonblocking(c->pq, 1) != 0 || !PQenterPipelineMode(c->pq)) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  PQsetNoticeProcessor(c->pq, quiet_notices, NULL);
  pg_job *j = job_new(N_STMTS + 3 + PG_FAST_SIZES, 0);
  if (!j) {
    conn_fail(c, "out of memory");
    return;
  }
  j->prepare = 1;
  job_push(c, j);
  c->state = C_PREPARING;
  /* Our statements are planned once: custom plans (the default for the
   * first executions, and whenever they look cheaper) would re-plan each
   * execution. */
  int ok = PQsendQueryParams(c->pq, "SET plan_cache_mode = force_generic_plan", 0, NULL, NULL,
                             NULL, NULL, 0);
  /* Plans are made now, maybe on an empty table: no estimate may make a
   * sequential scan look as cheap as a lookup (see pg_sql.h). */
  ok = ok && PQsendQueryParams(c->pq, "SET enable_seqscan = off", 0, NULL, NULL, NULL, NULL, 0);
  /* The job guard's setting: job 0 (this one) committed. */
  ok = ok && PQsendQueryParams(c->pq, "SET cruster.job = '0'", 0, NULL, NULL, NULL, NULL, 0);
  c->job_seq = c->committed = 0;
  for (int i = 0; ok && i < N_STMTS; i++)
    ok = PQsendPrepare(c->pq, stmts[i].name, stmts[i].sql, stmts[i].nparams, NULL);
  for (int i = 0; ok && i < PG_FAST_SIZES; i++) {
    char name[16];
    snprintf(name, sizeof name, "cr_fast%d", 1 << i);
    ok = PQsendPrepare(c->pq, name, c->st->fast_sql[i], 1 + PG_FAST_PARAMS * (1 << i), NULL);
  }
  if (!ok || !PQpipelineSync(c->pq)) {
    conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  conn_flush(c);
}

static void conn_connect_step(pg_conn *c) {
  PostgresPollingStatusType p = PQconnectPoll(c->pq);
  switch (PQstatus(c->pq)) {
  case CONNECTION_AUTH_OK:
  case CONNECTION_SETENV:
  case CONNECTION_CHECK_WRITABLE:
  case CONNECTION_CONSUME:
  case CONNECTION_CHECK_TARGET:
  case CONNECTION_CHECK_STANDBY:
    c->accepted = 1; /* authenticated: what fails now is a loss, not an attempt */
    break;
  default:
    break;
  }
  switch (p) {
  case PGRES_POLLING_READING:
    conn_watch(c, UV_READABLE);
    break;
  case PGRES_POLLING_WRITING:
    conn_watch(c, UV_WRITABLE);
    break;
  case PGRES_POLLING_OK:
    conn_connected(c);
    break;
  default:
    conn_fail(c, PQerrorMessage(c->pq));
    break;
  }
}

/* Why the socket reports an error (SO_ERROR). */
static void socket_error(pg_conn *c, char *buf, size_t n) {
  int err = 0;
  socklen_t len = sizeof(err);
  int fd = PQsocket(c->pq);
  if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0)
    snprintf(buf, n, "%s", uv_strerror(uv_translate_sys_error(err)));
  else
    snprintf(buf, n, "the connection's socket reported an error");
}

static void on_poll(uv_poll_t *h, int status, int events) {
  pg_conn *c = h->data;
  if (!c->pq) return;
  if (status < 0) {
    /* An error condition on the socket (POLLERR: the server reset the
     * connection), which libuv reports as UV_EBADF ("bad file descriptor")
     * -- the socket is open and ours -- after it stopped watching it. Let
     * libpq read what the server sent before (the results of jobs that
     * completed, and its reason: a terminated backend says so); if that
     * does not end the connection, the socket's own error does. */
    c->events = 0; /* so that conn_watch starts watching again */
    if (c->state == C_CONNECTING) {
      conn_connect_step(c);
      return;
    }
    conn_read(c);
    if (c->pq) {
      char why[256];
      socket_error(c, why, sizeof(why));
      conn_fail(c, why);
    }
    return;
  }
  if (c->state == C_CONNECTING) {
    conn_connect_step(c);
    return;
  }
  if ((events & UV_WRITABLE) && c->want_write) {
    conn_flush(c);
    if (!c->pq) return;
  }
  if (events & UV_READABLE) conn_read(c);
}

static void conn_connect(pg_conn *c) {
  pg_store *st = c->st;
  if (st->closing) return;
  const char *keys[] = {"dbname", "connect_timeout", NULL};
  const char *vals[] = {st->conninfo, "5", NULL};
  c->pq = PQconnectStartParams(keys, vals, 1);
  if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD) {
    conn_fail(c, c->pq ? PQerrorMessage(c->pq) : "out of memory");
    return;
  }
  c->state = C_CONNECTING;
  c->fd = -1;
  conn_watch(c, UV_WRITABLE);
  if (!c->poll) conn_fail(c, "cannot watch the connection's socket");
}

/* ---- st_ops --------------------------------------------------------------------------- */

static void on_cleanup_timer(uv_timer_t *t) {
  pg_store *st = t->data;
  pg_op *o = op_new(OP_CLEANUP, NULL);
  if (o) enqueue(st, &st->conns[0], o);
}

static cruster_status pg_attach(cruster_storage *s, const st_host *host, cruster_error **err) {
  pg_store *st = s->impl;
  const cruster_config *cfg = host->cfg;
  PGconn *check = pg_connect_blocking(st->conninfo, err);
  if (!check) return CRUSTER_E_PERSISTENCE;
  cruster_status rc = pg_check_schema(check, cfg->storage_migrations_table,
                                      (int)cfg->storage_auto_migrate, err);
  /* Single-node mode: a second runtime on this schema would take the first
   * one's claims and write beside it (the in-memory knowledge of pending
   * entities assumes one writer). The check connection keeps the lock. */
  if (rc == CRUSTER_OK) rc = pg_lock_schema(check, err);
  if (rc != CRUSTER_OK) {
    PQfinish(check);
    return rc;
  }
  st->lock_conn = check;
  st->host = *host;
  st->lg = host->lg;
  st->batch = cfg->storage_batch_size;
  st->backoff_ms = cfg->storage_retry_backoff;
  st->retention_ms = cfg->storage_retention;
  int64_t token = 0;
  core_snowflake_next(host->snowflake, &token);
  snprintf(st->claimer, sizeof(st->claimer), "%s#%llx", cfg->runner_address, (unsigned long long)token);
  for (int i = 0; i < PG_FAST_SIZES; i++) {
    int rows = 1 << i;
    size_t cap = sizeof(PG_SQL_FAST_HEAD) + (size_t)rows * (sizeof(PG_SQL_FAST_ROW) + 64);
    char *q = malloc(cap);
    if (!q) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
    size_t at = (size_t)snprintf(q, cap, "%s", PG_SQL_FAST_HEAD);
    for (int r = 0; r < rows; r++) {
      int b = 2 + PG_FAST_PARAMS * r;
      at += (size_t)snprintf(q + at, cap - at, r ? ", " PG_SQL_FAST_ROW : PG_SQL_FAST_ROW, b,
                             b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8);
    }
    st->fast_sql[i] = q;
  }
  st->conns = calloc((size_t)cfg->storage_pool_size, sizeof(*st->conns));
  if (!st->conns) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  st->nconns = (int)cfg->storage_pool_size;
  st->m_batches = core_metrics_get(host->metrics, CORE_COUNTER, "cluster_storage_transactions_total",
                                   "Transactions the PostgreSQL storage committed or tried", NULL);
  st->m_batch_ops = core_metrics_get(host->metrics, CORE_COUNTER, "cluster_storage_operations_total",
                                     "Storage operations sent to PostgreSQL (several share a transaction)", NULL);
  st->m_latency = core_metrics_get(host->metrics, CORE_HISTOGRAM, "cluster_storage_operation_seconds",
                                   "Time from queueing a storage operation to its result", NULL);
  st->m_reconnects = core_metrics_get(host->metrics, CORE_COUNTER, "cluster_storage_reconnects_total",
                                      "Times a PostgreSQL connection was lost and reopened", NULL);
  for (int i = 0; i < st->nconns; i++) {
    pg_conn *c = &st->conns[i];
    c->st = st;
    c->idx = i;
    c->fd = -1;
    uv_timer_init(host->loop, &c->timer);
    c->timer.data = c;
    conn_connect(c);
  }
  uv_timer_init(host->loop, &st->done_timer);
  st->done_timer.data = st;
  st->done_timer_init = 1;
  uv_timer_init(host->loop, &st->scan_timer);
  st->scan_timer.data = st;
  st->scan_timer_init = 1;
  if (st->retention_ms > 0) {
    int64_t every = st->retention_ms / 2;
    if (every < 500) every = 500;
    if (every > 60000) every = 60000;
    uv_timer_init(host->loop, &st->cleanup_timer);
    st->cleanup_timer.data = st;
    st->cleanup_init = 1;
    uv_timer_start(&st->cleanup_timer, on_cleanup_timer, (uint64_t)every, (uint64_t)every);
  }
  uv_timer_init(host->loop, &st->recon_timer);
  st->recon_timer.data = st;
  st->recon_timer_init = 1;
  /* Claims an earlier life left: given back once the first connection is
   * ready (the reconcile goes first), then what earlier lives left is
   * listed. */
  st->recon_need = st->recon_first = 1;
  pg_op *o = op_new(OP_SCAN, NULL);
  if (o) enqueue(st, &st->conns[0], o);
  return CRUSTER_OK;
}

static int pg_claims_now(cruster_storage *s, const core_env *m) {
  return knows_clear(s->impl, m);
}

static void pg_save_request(cruster_storage *s, const core_env *m, const st_key *key, int claim,
                            st_save_cb cb, void *ud) {
  pg_store *st = s->impl;
  st_saved fail = {ST_SAVED, m->request_id, 0, NULL};
  if (m->keyed && (!key || !key->data || key->len == 0 || key->len > INT32_MAX)) {
    cb(ud, CRUSTER_E_INTERNAL, "a keyed message needs its key", &fail);
    return;
  }
  pg_op *o = op_new(OP_SAVE, ud);
  if (o) {
    o->cb.save = cb;
    o->env = core_env_copy(m);
  }
  if (o && o->env && m->keyed) {
    o->key = core_memdup(key->data, key->len);
    o->key_len = key->len;
  }
  if (!o || !o->env || (m->keyed && !o->key)) {
    if (o) op_free(o);
    unknown_add(st, m->type, m->id);
    cb(ud, CRUSTER_E_NOMEM, "out of memory", &fail);
    return;
  }
  o->claim = claim;
  o->now_ms = core_now_ms();
  o->fast = claim && knows_clear(st, m);
  if (o->fast) o->nstmt = 0; /* a row of the job's fast insert */
  /* An older message of this runtime for the entity is unanswered: if the
   * probe does not see its row, that row is not committed yet (another
   * job) or its transaction failed and is being re-run -- claiming this one
   * would deliver it first. It waits for the poll (ST_SAVED_QUEUED). */
  o->behind = !o->fast && pending_of(st, m) > 0;
  /* Only a save its insert may claim is on its way to the runtime. */
  o->in_transit = claim && !o->behind;
  if (o->in_transit) transit_start(st, m);
  o->tracked = track_add(st, m);
  enqueue(st, conn_for_entity(st, m), o);
}

static void pg_save_reply(cruster_storage *s, const core_env *m, const st_reply *r, st_done_cb cb,
                          void *ud) {
  pg_store *st = s->impl;
  /* Answered: newer messages of the entity no longer wait for it (should
   * storing the answer fail, op_fail makes the entity ask). */
  track_remove(st, m->request_id, m->type, m->id);
  pg_op *o = op_new(OP_REPLY, ud);
  if (o) {
    o->cb.done = cb;
    o->env = core_env_copy(m);
    o->status = r->status;
    o->len = r->len;
    o->data = r->status == CRUSTER_OK ? core_memdup(r->data, r->len) : NULL;
    /* reply_message is text: PostgreSQL refuses bytes that are not UTF-8,
     * and a refused reply is never durable (the handler would run again
     * until it became a dead letter). Handlers' failure texts are free-form. */
    o->message = r->message ? core_utf8_sanitize_dup(r->message) : NULL;
  }
  if (!o || !o->env || (r->status == CRUSTER_OK && !o->data) || (r->message && !o->message)) {
    if (o) op_free(o);
    unknown_add(st, m->type, m->id);
    if (cb) cb(ud, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  if (!m->keyed && !st->closing && !st->flush_cb) {
    /* Nobody waits for it (the caller has the answer): it waits a moment
     * for company. */
    o->next = NULL;
    if (st->done_tail) st->done_tail->next = o; else st->done_head = o;
    st->done_tail = o;
    if (++st->ndone >= (size_t)st->batch) release_done(st);
    else if (st->ndone == 1) uv_timer_start(&st->done_timer, on_done_timer, PG_DONE_DELAY_MS, 0);
    return;
  }
  enqueue(st, conn_for_entity(st, m), o);
}

static void pg_release(cruster_storage *s, const core_env *m, int attempt) {
  pg_store *st = s->impl;
  pg_op *o = op_new(OP_RELEASE, NULL);
  if (o) o->env = core_env_copy(m);
  if (!o || !o->env) {
    free(o);
    core_log(st->lg, CRUSTER_LOG_ERROR, "storage", "out of memory releasing message %lld",
             (long long)m->request_id);
    return;
  }
  o->attempt = attempt;
  transit_start(st, m);
  /* On the poll's connection: a later poll must see this message unclaimed,
   * or it would claim a younger message of the entity and deliver it first.
   * (Inserts do not look at claims, so they need no order with this.) */
  enqueue(st, &st->conns[0], o);
}

static void pg_poll(cruster_storage *s, int64_t now_ms, size_t limit, int64_t max_retries,
                    st_owned_fn owned, void *owned_ud, st_poll_cb cb, void *ud) {
  (void)owned; /* single-node: every shard is ours */
  (void)owned_ud;
  pg_store *st = s->impl;
  pg_op *o = op_new(OP_POLL, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory", NULL, 0, NULL, 0);
    return;
  }
  o->cb.poll = cb;
  o->now_ms = now_ms;
  o->limit = limit;
  o->max_retries = max_retries;
  enqueue(st, &st->conns[0], o);
}

static int64_t pg_next_due(cruster_storage *s) {
  pg_store *st = s->impl;
  return st->next_due;
}

static void pg_get_reply(cruster_storage *s, int64_t request_id, st_reply_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = op_new(OP_GET, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory", 0, 0, NULL);
    return;
  }
  o->cb.reply = cb;
  o->request_id = request_id;
  enqueue(st, &st->conns[0], o);
}

static void pg_get_keyed(cruster_storage *s, const char *type, const char *id, const char *method,
                         const st_key *key, st_keyed_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = op_new(OP_GET_KEYED, ud);
  if (o) {
    o->cb.keyed = cb;
    o->env = core_env_new(type, id, method, NULL, 0);
    o->key = key->len <= INT32_MAX ? core_memdup(key->data, key->len) : NULL;
    o->key_len = key->len;
  }
  if (!o || !o->env || !o->key) {
    if (o) op_free(o);
    cb(ud, CRUSTER_E_NOMEM, "out of memory", 0, 0, NULL);
    return;
  }
  /* On the entity's connection: behind its writes queued here. */
  enqueue(st, conn_for_entity(st, o->env), o);
}

static void pg_list_dead(cruster_storage *s, size_t limit, st_list_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = op_new(OP_DEAD, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory", NULL);
    return;
  }
  o->cb.list = cb;
  o->limit = limit;
  enqueue(st, &st->conns[0], o);
}

static void pg_redeliver(cruster_storage *s, int64_t request_id, st_done_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = op_new(OP_REDELIVER, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  o->cb.done = cb;
  o->request_id = request_id;
  enqueue(st, &st->conns[0], o);
}

static void pg_flush(cruster_storage *s, void (*cb)(void *ud), void *ud) {
  pg_store *st = s->impl;
  release_done(st);
  st->flush_cb = cb;
  st->flush_ud = ud;
  check_flushed(st);
}

static void pg_detach(cruster_storage *s) {
  pg_store *st = s->impl;
  st->flush_cb = NULL;
  /* The schema is free for another runtime once this one stops. */
  if (st->lock_conn) PQfinish(st->lock_conn);
  st->lock_conn = NULL;
  if (st->closing) return; /* stop may detach early (flush timeout), then again at close */
  st->closing = 1;
  release_done(st); /* fails them: closing */
  if (st->done_timer_init) {
    uv_close((uv_handle_t *)&st->done_timer, NULL);
    st->done_timer_init = 0;
  }
  if (st->scan_timer_init) {
    uv_timer_stop(&st->scan_timer);
    uv_close((uv_handle_t *)&st->scan_timer, NULL);
    st->scan_timer_init = 0;
  }
  if (st->recon_timer_init) {
    uv_timer_stop(&st->recon_timer);
    uv_close((uv_handle_t *)&st->recon_timer, NULL);
    st->recon_timer_init = 0;
  }
  if (st->cleanup_init) {
    uv_timer_stop(&st->cleanup_timer);
    uv_close((uv_handle_t *)&st->cleanup_timer, NULL);
    st->cleanup_init = 0;
  }
  for (int i = 0; i < st->nconns; i++) {
    pg_conn *c = &st->conns[i];
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, NULL);
    if (c->pq) conn_fail(c, "the runtime is shutting down");
    while (c->q_head) {
      pg_op *o = c->q_head;
      c->q_head = o->next;
      c->qlen--;
      op_fail(st, o, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
    }
    c->q_tail = NULL;
  }
}

static void pg_destroy(cruster_storage *s) {
  pg_store *st = s->impl;
  if (st->lock_conn) PQfinish(st->lock_conn);
  core_map_clear(&st->pending);
  core_map_clear(&st->tracked);
  core_map_clear(&st->unknown);
  core_map_clear(&st->transit);
  core_map_clear(&st->held);
  for (int i = 0; i < PG_FAST_SIZES; i++) free(st->fast_sql[i]);
  if (st->conns) {
    free(st->conns);
  }
  free(st->conninfo);
  free(st);
  free(s);
}

static const st_ops pg_ops = {
    .name = "postgresql",
    .attach = pg_attach,
    .claims_now = pg_claims_now,
    .save_request = pg_save_request,
    .save_reply = pg_save_reply,
    .poll = pg_poll,
    .release = pg_release,
    .next_due = pg_next_due,
    .get_reply = pg_get_reply,
    .get_keyed = pg_get_keyed,
    .list_dead = pg_list_dead,
    .redeliver = pg_redeliver,
    .flush = pg_flush,
    .detach = pg_detach,
    .destroy = pg_destroy,
};

cruster_status cruster_storage_pg_new(const char *conninfo, cruster_storage **out,
                                      cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  *out = NULL;
  if (!conninfo) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "conninfo must not be NULL");
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
  if (!opts) {
    cruster_status rc = core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                                       "bad PostgreSQL connection string: %s",
                                       perr ? perr : "out of memory");
    PQfreemem(perr);
    return rc;
  }
  PQconninfoFree(opts);
  cruster_storage *s = calloc(1, sizeof(*s));
  pg_store *st = calloc(1, sizeof(*st));
  if (!s || !st || !(st->conninfo = core_strdup(conninfo))) {
    free(s);
    free(st);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  s->ops = &pg_ops;
  s->impl = st;
  *out = s;
  return CRUSTER_OK;
}
