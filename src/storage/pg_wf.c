/* PostgreSQL workflow storage (wf_storage.h): journals, deferreds and the
 * activities' transactions, on a pool of blocking connections used from
 * worker and client threads -- apart from the loop's non-blocking ones.
 * Statements go in pipeline mode where several are sent together, so a
 * journal write and its COMMIT cost one round trip. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/error.h"
#include "core/util.h"
#include "storage/pg_wf.h"

struct st_tx {
  PGconn *conn;
  int prepared; /* the statements below are prepared on conn */
  int held;     /* counted in pg_wf.held (try_hold) */
  struct st_tx *next; /* idle list */
};

struct pg_wf {
  char *conninfo;
  uv_mutex_t mu;
  uv_cond_t cv;
  st_tx *idle;
  size_t open, max; /* connections open (idle + lent), the cap */
  size_t held;      /* lent connections held between an activity and the next write */
  int closed;
};

/* ---- statements --------------------------------------------------------- */

#define SQL_LOAD                                                                               \
  "SELECT 0, seq, kind, name, status, attempts, at_ms, value, message"                       \
  "  FROM cruster_journal WHERE request_id = $1"                                              \
  " UNION ALL SELECT 1, 0, 0, name, status, 0, 0::BIGINT, value, message"                     \
  "  FROM cruster_deferreds WHERE request_id = $1"                                            \
  " UNION ALL SELECT 2, 0, 0, '', CASE WHEN processed THEN 1 ELSE 0 END, 0, wake_seq, NULL,"  \
  "  NULL FROM cruster_messages WHERE request_id = $1"
#define SQL_UPSERT                                                                             \
  "INSERT INTO cruster_journal (request_id, seq, kind, name, status, attempts, at_ms, value,"  \
  " message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"                                      \
  " ON CONFLICT (request_id, seq) DO UPDATE SET kind = EXCLUDED.kind, name = EXCLUDED.name,"   \
  " status = EXCLUDED.status, attempts = EXCLUDED.attempts, at_ms = EXCLUDED.at_ms,"           \
  " value = EXCLUDED.value, message = EXCLUDED.message"
#define SQL_FIND                                                                               \
  "SELECT request_id, processed, idem_key FROM cruster_messages"                                        \
  " WHERE entity_type = $1 AND entity_id = $2 AND tag = 'execute' ORDER BY seq"
/* One statement, one snapshot: the message row is locked first, so a
 * concurrent answer or park of the execution serializes with it. A wake
 * bumps wake_seq (a park made from an older read then leaves the message
 * due) and makes a parked message due now. */
#define SQL_RESOLVE                                                                            \
  "WITH m AS (SELECT request_id, processed FROM cruster_messages"                             \
  "  WHERE request_id = $1 FOR UPDATE),"                                                      \
  " ins AS (INSERT INTO cruster_deferreds (request_id, name, status, value, message)"          \
  "  SELECT $1, $2, $3, $4, $5 FROM m WHERE NOT m.processed ON CONFLICT DO NOTHING"            \
  "  RETURNING 1),"                                                                            \
  " up AS (UPDATE cruster_messages SET wake_seq = wake_seq + 1,"                              \
  "  deliver_at = CASE WHEN claimed_by IS NULL AND deliver_at > now() THEN now()"             \
  "  ELSE deliver_at END WHERE request_id = $1 AND EXISTS (SELECT 1 FROM ins) RETURNING 1)"    \
  " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM m WHERE processed),"                \
  " (SELECT count(*) FROM ins), (SELECT count(*) FROM up)"
/* Restart: a failed (or cancelled) execution gets no answer, loses its
 * cancellation and the journal from its first failed activity on, and is
 * due now with no attempts. */
#define SQL_RESTART                                                                            \
  "WITH m AS (SELECT request_id, processed, reply_status FROM cruster_messages"               \
  "  WHERE request_id = $1 FOR UPDATE),"                                                      \
  " ok AS (SELECT request_id FROM m WHERE processed AND reply_status <> 0),"                  \
  " f AS (SELECT min(seq) AS s FROM cruster_journal WHERE request_id = $1"                    \
  "  AND kind = 1 AND status <> 0 AND at_ms = 0),"                                             \
  " dj AS (DELETE FROM cruster_journal WHERE request_id IN (SELECT request_id FROM ok)"       \
  "  AND seq >= (SELECT s FROM f) RETURNING 1),"                                               \
  " dd AS (DELETE FROM cruster_deferreds WHERE request_id IN (SELECT request_id FROM ok)"     \
  "  AND name = '' RETURNING 1),"                                                              \
  " up AS (UPDATE cruster_messages SET processed = FALSE, processed_at = NULL,"                \
  "  reply_status = NULL, reply_payload = NULL, reply_message = NULL, claimed_by = NULL,"      \
  "  claimed_at = NULL, attempts = 0, retry_at = NULL, deliver_at = NULL,"                     \
  "  wake_seq = wake_seq + 1 WHERE request_id IN (SELECT request_id FROM ok) RETURNING 1)"     \
  " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM m WHERE processed),"               \
  " (SELECT count(*) FROM up), (SELECT count(*) FROM dj), (SELECT count(*) FROM dd)"

/* The reply in the handler's transaction. No row (answered already, or
 * not stored) divides by zero: the error aborts the transaction, so the
 * COMMIT after it cannot commit the handler's SQL. */
/* $3 >= 0 (a workflow execution's answer): only if the message's wake
 * counter is still $3, the value its run read -- no cancellation (nor
 * resolution, nor child's answer) was stored since; the row is locked and
 * re-read by the UPDATE, so one that commits meanwhile is seen. */
#define SQL_REPLY_KEYED                                                                        \
  "WITH u AS (UPDATE cruster_messages SET processed = TRUE, processed_at = now(),"             \
  " reply_status = 0, reply_payload = $2, reply_message = NULL, claimed_by = NULL,"            \
  " claimed_at = NULL WHERE request_id = $1 AND processed_at IS NULL"                         \
  " AND ($3::int8 < 0 OR wake_seq = $3::int8) RETURNING 1)"                                    \
  " SELECT 1 / (SELECT count(*)::int FROM u)"
#define SQL_REPLY_UNKEYED                                                                      \
  "WITH u AS (DELETE FROM cruster_messages WHERE request_id = $1 AND processed_at IS NULL"     \
  " AND ($2::int8 < 0 OR wake_seq = $2::int8) RETURNING 1) SELECT 1 / (SELECT count(*)::int FROM u)"
#define SQLSTATE_DIVISION_BY_ZERO "22012"

/* Prepared once per connection (prepare): parsing and planning them on
 * every call cost more server time than running them. */
#define PS_UPSERT "cruster_wf_upsert"
#define PS_REPLY_KEYED "cruster_wf_reply_keyed"
#define PS_REPLY_UNKEYED "cruster_wf_reply_unkeyed"

/* ---- binary values ------------------------------------------------------ */

static int64_t get_i64(const PGresult *r, int row, int col) {
  const unsigned char *p = (const unsigned char *)PQgetvalue(r, row, col);
  int n = PQgetlength(r, row, col);
  uint64_t v = 0;
  for (int i = 0; i < n && i < 8; i++) v = (v << 8) | p[i];
  if (n == 4) return (int32_t)(uint32_t)v;
  if (n == 2) return (int16_t)(uint16_t)v;
  return (int64_t)v;
}

static void put_i64(unsigned char out[8], int64_t v) {
  uint64_t u = (uint64_t)v;
  for (int i = 7; i >= 0; i--) {
    out[i] = (unsigned char)(u & 0xff);
    u >>= 8;
  }
}

static void put_i32(unsigned char out[4], int32_t v) {
  uint32_t u = htonl((uint32_t)v);
  memcpy(out, &u, 4);
}

static int pq_fail(PGconn *c, const PGresult *r, const char *what, cruster_error **err) {
  const char *m = r ? PQresultErrorMessage(r) : NULL;
  if (!m || !*m) m = PQerrorMessage(c);
  char buf[512];
  snprintf(buf, sizeof(buf), "%s: %s", what, m && *m ? m : "connection lost");
  core_text_one_line(buf);
  return core_error_set(err, CRUSTER_E_PERSISTENCE, "%s", buf);
}

/* ---- the pool ----------------------------------------------------------- */

pg_wf *pg_wf_new(const char *conninfo, size_t max_conns) {
  pg_wf *w = calloc(1, sizeof(*w));
  if (!w) return NULL;
  w->conninfo = core_strdup(conninfo);
  if (!w->conninfo || uv_mutex_init(&w->mu) != 0) {
    free(w->conninfo);
    free(w);
    return NULL;
  }
  uv_cond_init(&w->cv);
  w->max = max_conns ? max_conns : 1;
  return w;
}

void pg_wf_free(pg_wf *w) {
  if (!w) return;
  uv_mutex_lock(&w->mu);
  w->closed = 1;
  st_tx *t = w->idle;
  w->idle = NULL;
  uv_mutex_unlock(&w->mu);
  while (t) {
    st_tx *n = t->next;
    PQfinish(t->conn);
    free(t);
    t = n;
  }
  uv_cond_destroy(&w->cv);
  uv_mutex_destroy(&w->mu);
  free(w->conninfo);
  free(w);
}

/* Reads the pipeline's results up to its sync; CRUSTER_OK or the first
 * failure. A failure whose SQLSTATE is `state` (may be NULL) becomes
 * `state_rc` with `state_msg`. */
static int drain_pipeline(PGconn *c, const char *what, const char *state, int state_rc,
                          const char *state_msg, cruster_error **err) {
  int rc = CRUSTER_OK;
  for (;;) {
    PGresult *r = PQgetResult(c);
    if (!r) {
      /* end of one statement's results; the next one follows */
      if (PQstatus(c) != CONNECTION_OK) return rc == CRUSTER_OK ? pq_fail(c, NULL, what, err) : rc;
      continue;
    }
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      return rc;
    }
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK && rc == CRUSTER_OK) {
      const char *got = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      if (state && got && strcmp(got, state) == 0)
        rc = core_error_set(err, state_rc, "%s", state_msg);
      else
        rc = pq_fail(c, r, what, err);
    }
    PQclear(r);
  }
}

/* Prepares the statements on t's connection (a new one, one reset, or one
 * where a statement failed: whatever was prepared is dropped first, so a
 * user's DEALLOCATE in an activity only costs a new prepare). 0 or -1. */
static int prepare(st_tx *t) {
  if (t->prepared) return 0;
  PGconn *c = t->conn;
  static const struct {
    const char *name, *sql;
    int n;
  } ps[] = {{PS_UPSERT, SQL_UPSERT, 9}, {PS_REPLY_KEYED, SQL_REPLY_KEYED, 3},
            {PS_REPLY_UNKEYED, SQL_REPLY_UNKEYED, 2}};
  int ok = PQenterPipelineMode(c);
  if (ok) ok = PQsendQueryParams(c, "DEALLOCATE ALL", 0, NULL, NULL, NULL, NULL, 0);
  for (size_t i = 0; ok && i < sizeof(ps) / sizeof(ps[0]); i++)
    ok = PQsendPrepare(c, ps[i].name, ps[i].sql, ps[i].n, NULL);
  if (ok) ok = PQpipelineSync(c);
  if (ok) ok = drain_pipeline(c, "preparing statements", NULL, 0, NULL, NULL) == CRUSTER_OK;
  PQexitPipelineMode(c);
  t->prepared = ok && PQstatus(c) == CONNECTION_OK;
  return t->prepared ? 0 : -1;
}

/* Takes an idle connection, opens one under the cap, or waits for one.
 * CRUSTER_OK with *out set, or the failure (*err set). */
static int take(pg_wf *w, st_tx **out, cruster_error **err) {
  *out = NULL;
  uv_mutex_lock(&w->mu);
  for (;;) {
    if (w->closed) {
      uv_mutex_unlock(&w->mu);
      return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the workflow storage is closed");
    }
    if (w->idle) {
      st_tx *t = w->idle;
      w->idle = t->next;
      uv_mutex_unlock(&w->mu);
      if (PQstatus(t->conn) != CONNECTION_OK) { /* lost since last use */
        PQreset(t->conn);
        t->prepared = 0;
      }
      if (PQstatus(t->conn) == CONNECTION_OK && prepare(t) == 0) {
        *out = t;
        return CRUSTER_OK;
      }
      int rc = pq_fail(t->conn, NULL, "workflow storage connection", err);
      PQfinish(t->conn);
      free(t);
      uv_mutex_lock(&w->mu);
      w->open--;
      uv_cond_signal(&w->cv);
      uv_mutex_unlock(&w->mu);
      return rc;
    }
    if (w->open < w->max) {
      w->open++;
      uv_mutex_unlock(&w->mu);
      int rc = CRUSTER_OK;
      st_tx *t = calloc(1, sizeof(*t));
      if (!t) rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      else if (!(t->conn = pg_connect_blocking(w->conninfo, err))) rc = CRUSTER_E_PERSISTENCE;
      else if (prepare(t) != 0) rc = pq_fail(t->conn, NULL, "preparing statements", err);
      if (rc == CRUSTER_OK) {
        *out = t;
        return rc;
      }
      if (t) PQfinish(t->conn);
      free(t);
      uv_mutex_lock(&w->mu);
      w->open--;
      uv_cond_signal(&w->cv);
      uv_mutex_unlock(&w->mu);
      return rc;
    }
    uv_cond_wait(&w->cv, &w->mu);
  }
}

/* Gives a connection back; a broken one, or one left inside a transaction
 * or a pipeline, is closed instead. */
static void give(pg_wf *w, st_tx *t) {
  if (!t) return;
  int ok = PQstatus(t->conn) == CONNECTION_OK &&
           PQtransactionStatus(t->conn) == PQTRANS_IDLE &&
           PQpipelineStatus(t->conn) == PQ_PIPELINE_OFF;
  uv_mutex_lock(&w->mu);
  if (ok && !w->closed) {
    t->next = w->idle;
    w->idle = t;
    t = NULL;
  } else {
    w->open--;
  }
  uv_cond_signal(&w->cv);
  uv_mutex_unlock(&w->mu);
  if (t) {
    PQfinish(t->conn);
    free(t);
  }
}

/* Runs one statement with binary results; NULL with *err set on failure. */
static PGresult *exec1(PGconn *c, const char *sql, int n, const char *const *v, const int *l,
                       const int *f, const char *what, cruster_error **err) {
  PGresult *r = PQexecParams(c, sql, n, NULL, v, l, f, 1);
  ExecStatusType s = PQresultStatus(r);
  if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK) return r;
  pq_fail(c, r, what, err);
  PQclear(r);
  return NULL;
}

/* One statement on a pooled connection: takes one, runs it, gives it back.
 * NULL with *err set on failure (*rc the status). */
static PGresult *exec_pooled(pg_wf *w, const char *sql, int n, const char *const *v, const int *l,
                             const int *f, const char *what, int *rc, cruster_error **err) {
  st_tx *t;
  *rc = take(w, &t, err);
  if (*rc != CRUSTER_OK) return NULL;
  PGresult *r = exec1(t->conn, sql, n, v, l, f, what, err);
  give(w, t);
  if (!r) *rc = CRUSTER_E_PERSISTENCE;
  return r;
}

/* ---- operations --------------------------------------------------------- */

static int wf_load(void *impl, int64_t request_id, st_wf_state *out, cruster_error **err) {
  pg_wf *w = impl;
  memset(out, 0, sizeof(*out));
  unsigned char id[8];
  put_i64(id, request_id);
  const char *v[1] = {(const char *)id};
  int l[1] = {8}, f[1] = {1}, prc;
  PGresult *r = exec_pooled(w, SQL_LOAD, 1, v, l, f, "loading a workflow journal", &prc, err);
  if (!r) return prc;
  int rows = PQntuples(r);
  size_t nj = 0, nd = 0;
  for (int i = 0; i < rows; i++) {
    int64_t which = get_i64(r, i, 0);
    if (which == 0) nj++;
    else if (which == 1) nd++;
  }
  int rc = CRUSTER_OK;
  out->entries = nj ? calloc(nj, sizeof(*out->entries)) : NULL;
  out->deferreds = nd ? calloc(nd, sizeof(*out->deferreds)) : NULL;
  if ((nj && !out->entries) || (nd && !out->deferreds)) {
    rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
    goto done;
  }
  int found = 0;
  for (int i = 0; i < rows; i++) {
    int64_t which = get_i64(r, i, 0);
    const char *name = PQgetvalue(r, i, 3);
    size_t vlen = PQgetisnull(r, i, 7) ? 0 : (size_t)PQgetlength(r, i, 7);
    const char *msg = PQgetisnull(r, i, 8) ? NULL : PQgetvalue(r, i, 8);
    if (which == 2) {
      found = 1;
      out->wake_seq = get_i64(r, i, 6);
      continue;
    }
    void *val = NULL;
    if (!PQgetisnull(r, i, 7)) {
      val = core_memdup(PQgetvalue(r, i, 7), vlen);
      if (!val) {
        rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
        goto done;
      }
    }
    char *nm = core_strdup(name), *ms = msg ? core_strdup(msg) : NULL;
    if (!nm || (msg && !ms)) {
      free(val);
      free(nm);
      free(ms);
      rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      goto done;
    }
    if (which == 0) {
      int64_t seq = get_i64(r, i, 1);
      /* Entries are dense from 0 (each durable call is journaled before the
       * next one's); anything else is damage, not a replay to trust. */
      if (seq < 0 || (uint64_t)seq >= nj || out->entries[seq].name) {
        free(val);
        free(nm);
        free(ms);
        rc = core_error_set(err, CRUSTER_E_INTERNAL,
                            "workflow journal of request %lld is not dense (entry %lld)",
                            (long long)request_id, (long long)seq);
        goto done;
      }
      st_jentry *e = &out->entries[seq];
      e->seq = (int32_t)seq;
      e->kind = (int32_t)get_i64(r, i, 2);
      e->name = nm;
      e->status = (int32_t)get_i64(r, i, 4);
      e->attempts = (int32_t)get_i64(r, i, 5);
      e->at = get_i64(r, i, 6);
      e->value = val;
      e->len = vlen;
      e->message = ms;
      out->n++;
    } else {
      st_deferred *d = &out->deferreds[out->nd++];
      d->name = nm;
      d->status = (int32_t)get_i64(r, i, 4);
      d->value = val;
      d->len = vlen;
      d->message = ms;
      if (!*nm) out->cancelled = 1;
    }
  }
  if (!found) rc = core_error_set(err, CRUSTER_E_NOT_FOUND, "workflow execution %lld is not stored",
                                  (long long)request_id);
done:
  PQclear(r);
  if (rc != CRUSTER_OK) st_wf_state_free(out);
  return rc;
}

/* At most half the pool is held open between an activity and its run's
 * next write (st_wf_ops.try_hold): the other half always serves
 * activities, journal reads and handlers, whatever code runs while the
 * held ones wait. */
static int wf_try_hold(void *impl, st_tx *t) {
  pg_wf *w = impl;
  uv_mutex_lock(&w->mu);
  int ok = !t->held && w->held < w->max / 2;
  if (ok) {
    t->held = 1;
    w->held++;
  }
  uv_mutex_unlock(&w->mu);
  return ok;
}

/* The transaction is being finished or used again: no longer held. */
static void unhold(pg_wf *w, st_tx *t) {
  if (!t->held) return;
  uv_mutex_lock(&w->mu);
  t->held = 0;
  w->held--;
  uv_mutex_unlock(&w->mu);
}

static int wf_begin(void *impl, st_tx **out, cruster_error **err) {
  pg_wf *w = impl;
  *out = NULL;
  st_tx *t;
  int trc = take(w, &t, err);
  if (trc != CRUSTER_OK) return trc;
  PGresult *r = exec1(t->conn, "BEGIN", 0, NULL, NULL, NULL, "beginning an activity", err);
  if (!r) {
    give(w, t);
    return CRUSTER_E_PERSISTENCE;
  }
  PQclear(r);
  *out = t;
  return CRUSTER_OK;
}

static void *wf_tx_handle(st_tx *t) { return t ? t->conn : NULL; }

static void wf_rollback(void *impl, st_tx *t) {
  if (!t) return;
  unhold(impl, t);
  PGresult *r = PQexec(t->conn, "ROLLBACK");
  PQclear(r);
  give(impl, t);
}

/* Sends one upsert of `e` in pipeline mode. 0 or -1. */
static int send_upsert(PGconn *c, int64_t request_id, const st_jentry *e) {
  if (e->len > INT32_MAX) return -1;
  unsigned char id[8], seq[4], kind[4], status[4], attempts[4], at[8];
  put_i64(id, request_id);
  put_i32(seq, e->seq);
  put_i32(kind, e->kind);
  put_i32(status, e->status);
  put_i32(attempts, e->attempts);
  put_i64(at, e->at);
  const char *v[9] = {(const char *)id, (const char *)seq,    (const char *)kind,
                      e->name ? e->name : "", (const char *)status,
                      (const char *)attempts, (const char *)at,
                      e->len ? (const char *)e->value : NULL, e->message};
  int l[9] = {8, 4, 4, 0, 4, 4, 8, (int)e->len, 0};
  int f[9] = {1, 1, 1, 0, 1, 1, 1, 1, 0};
  return PQsendQueryPrepared(c, PS_UPSERT, 9, v, l, f, 1) ? 0 : -1;
}

/* What one pipelined write ends with (after the journal upserts). */
typedef struct wr_tail {
  int commit;      /* COMMIT the transaction opened with BEGIN */
  int reopen;      /* then BEGIN the next one on the same connection */
  int reply;       /* before the COMMIT: store the reply of request_id */
  int keyed;       /* (reply) the message is keyed: kept with its reply */
  const void *data; /* (reply) */
  size_t len;
  int64_t wake_seq; /* (reply) >= 0: only while the wake counter is this */
} wr_tail;

/* Writes `entries` on t's connection and ends as `tail` says, all in one
 * round trip (pipeline mode). On failure, or when the write leaves no
 * transaction open, the connection goes back to the pool; with reopen and
 * success the transaction of the next BEGIN stays the caller's. */
static int write_tx(pg_wf *w, st_tx *t, int64_t request_id, const st_jentry *entries, size_t n,
                    const wr_tail *tail, const char *what, cruster_error **err) {
  unhold(w, t);
  PGconn *c = t->conn;
  int rc = CRUSTER_OK;
  unsigned char id[8];
  put_i64(id, request_id);
  char msg[128];
  snprintf(msg, sizeof(msg), "message %lld was answered already%s", (long long)request_id,
           tail->wake_seq >= 0 ? ", or woken while it ran" : "");
  if (tail->reply && tail->len > INT32_MAX) {
    rc = core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE, "reply too large");
  } else if (!PQenterPipelineMode(c)) {
    rc = pq_fail(c, NULL, what, err);
  } else {
    /* Without BEGIN (own connection) the statements before the sync are
     * one implicit transaction. */
    int sent = 1;
    for (size_t i = 0; sent && i < n; i++) sent = send_upsert(c, request_id, &entries[i]) == 0;
    if (sent && tail->reply) {
      unsigned char ws[8];
      put_i64(ws, tail->wake_seq);
      const char *v[3] = {(const char *)id, tail->len ? (const char *)tail->data : "", (const char *)ws};
      int l[3] = {8, (int)tail->len, 8}, f[3] = {1, 1, 1};
      if (!tail->keyed) { /* ($1, $2 = the wake counter) */
        v[1] = v[2];
        l[1] = 8;
      }
      sent = PQsendQueryPrepared(c, tail->keyed ? PS_REPLY_KEYED : PS_REPLY_UNKEYED,
                                 tail->keyed ? 3 : 2, v, l, f, 1);
    }
    if (sent && tail->commit) sent = PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
    if (sent && tail->reopen) sent = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
    if (!sent || !PQpipelineSync(c)) {
      rc = pq_fail(c, NULL, what, err);
    } else {
      rc = drain_pipeline(c, what, tail->reply ? SQLSTATE_DIVISION_BY_ZERO : NULL,
                          CRUSTER_E_ALREADY_EXISTS, msg, err);
    }
    PQexitPipelineMode(c);
  }
  /* A statement that failed may have been ours (say, a prepared one that
   * an activity's DEALLOCATE removed): prepared again at the next take. */
  if (rc == CRUSTER_E_PERSISTENCE) t->prepared = 0;
  if (rc == CRUSTER_OK && tail->reopen && PQtransactionStatus(c) == PQTRANS_INTRANS) return rc;
  if (rc == CRUSTER_OK && tail->reopen) rc = pq_fail(c, NULL, what, err);
  if (PQtransactionStatus(c) != PQTRANS_IDLE) {
    PGresult *r = PQexec(c, "ROLLBACK");
    PQclear(r);
  }
  give(w, t);
  return rc;
}

static int wf_commit(void *impl, st_tx *t, int64_t request_id, const st_jentry *entries,
                     size_t n, cruster_error **err) {
  pg_wf *w = impl;
  wr_tail tail = {0};
  tail.commit = t != NULL;
  if (!t) {
    if (n == 0) return CRUSTER_OK;
    int trc = take(w, &t, err);
    if (trc != CRUSTER_OK) return trc;
  }
  return write_tx(w, t, request_id, entries, n, &tail, "writing a workflow journal", err);
}

static int wf_commit_reopen(void *impl, st_tx *t, int64_t request_id, const st_jentry *entries,
                            size_t n, cruster_error **err) {
  wr_tail tail = {0};
  tail.commit = tail.reopen = 1;
  return write_tx(impl, t, request_id, entries, n, &tail, "writing a workflow journal", err);
}

static int wf_commit_reply(void *impl, st_tx *t, int64_t request_id, int keyed, int64_t wake_seq,
                           const void *data, size_t len, const st_jentry *entries, size_t n,
                           cruster_error **err) {
  wr_tail tail = {0};
  tail.commit = tail.reply = 1;
  tail.wake_seq = wake_seq;
  tail.keyed = keyed;
  tail.data = data;
  tail.len = len;
  return write_tx(impl, t, request_id, entries, n, &tail, "storing a transactional reply", err);
}

static int wf_find(void *impl, const char *type, const char *id, st_exec_ref *out, size_t cap,
                   size_t *n, cruster_error **err) {
  pg_wf *w = impl;
  *n = 0;
  const char *v[2] = {type, id};
  int prc;
  PGresult *r = exec_pooled(w, SQL_FIND, 2, v, NULL, NULL, "finding a workflow execution", &prc, err);
  if (!r) return prc;
  int rows = PQntuples(r);
  for (int i = 0; i < rows; i++) {
    if ((size_t)i < cap) {
      out[i].request_id = get_i64(r, i, 0);
      out[i].finished = *PQgetvalue(r, i, 1) != 0;
      out[i].key_len = PQgetisnull(r, i, 2) ? 0 : (size_t)PQgetlength(r, i, 2);
      out[i].key = core_memdup(PQgetvalue(r, i, 2), out[i].key_len);
      if (!out[i].key) {
        for (int j = 0; j < i; j++) free(out[j].key);
        PQclear(r);
        return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      }
    }
  }
  *n = (size_t)rows;
  PQclear(r);
  return CRUSTER_OK;
}

static int wf_resolve(void *impl, int64_t request_id, const char *name, int32_t status,
                      const void *value, size_t len, const char *message, cruster_error **err) {
  pg_wf *w = impl;
  if (len > INT32_MAX)
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE, "deferred value too large");
  unsigned char id[8], st[4];
  put_i64(id, request_id);
  put_i32(st, status);
  const char *v[5] = {(const char *)id, name, (const char *)st, len ? (const char *)value : NULL,
                      message};
  int l[5] = {8, 0, 4, (int)len, 0}, f[5] = {1, 0, 1, 1, 0};
  int prc;
  PGresult *r = exec_pooled(w, SQL_RESOLVE, 5, v, l, f, "resolving a deferred", &prc, err);
  if (!r) return prc;
  int64_t found = get_i64(r, 0, 0), done = get_i64(r, 0, 1), ins = get_i64(r, 0, 2);
  PQclear(r);
  if (!found) return core_error_set(err, CRUSTER_E_NOT_FOUND, "the execution is not stored");
  if (done) return core_error_set(err, CRUSTER_E_STATE, "the execution has finished");
  if (!ins)
    return core_error_set(err, CRUSTER_E_ALREADY_EXISTS,
                          *name ? "deferred \"%s\" was resolved or rejected already"
                                : "the execution was cancelled already%s",
                          name);
  return CRUSTER_OK;
}

static int wf_restart(void *impl, int64_t request_id, cruster_error **err) {
  pg_wf *w = impl;
  unsigned char id[8];
  put_i64(id, request_id);
  const char *v[1] = {(const char *)id};
  int l[1] = {8}, f[1] = {1}, prc;
  PGresult *r = exec_pooled(w, SQL_RESTART, 1, v, l, f, "restarting an execution", &prc, err);
  if (!r) return prc;
  int64_t found = get_i64(r, 0, 0), done = get_i64(r, 0, 1), up = get_i64(r, 0, 2);
  PQclear(r);
  if (!found) return core_error_set(err, CRUSTER_E_NOT_FOUND, "the execution is not stored");
  if (!done) return core_error_set(err, CRUSTER_E_STATE, "the execution has not finished");
  if (!up) return core_error_set(err, CRUSTER_E_STATE, "the execution succeeded: nothing to restart");
  return CRUSTER_OK;
}

#define SQL_WAKE                                                                               \
  "UPDATE cruster_messages SET wake_seq = wake_seq + 1,"                                      \
  " deliver_at = CASE WHEN claimed_by IS NULL AND deliver_at > now() THEN now()"              \
  " ELSE deliver_at END WHERE request_id = $1 AND processed_at IS NULL"

static int wf_wake(void *impl, int64_t request_id, cruster_error **err) {
  pg_wf *w = impl;
  unsigned char id[8];
  put_i64(id, request_id);
  const char *v[1] = {(const char *)id};
  int l[1] = {8}, f[1] = {1}, prc;
  PGresult *r = exec_pooled(w, SQL_WAKE, 1, v, l, f, "waking an execution", &prc, err);
  if (!r) return prc;
  PQclear(r);
  return CRUSTER_OK;
}

/* ---- cron slots -------------------------------------------------------- */

#define SQL_CRON_BEGIN                                                                         \
  "WITH ins AS (INSERT INTO cruster_cron_slots (job, slot_ms, started_ms)"                    \
  "  VALUES ($1, $2::BIGINT, $3::BIGINT) ON CONFLICT DO NOTHING RETURNING 1)"                 \
  " SELECT (SELECT count(*) FROM ins), (SELECT state FROM cruster_cron_slots"                 \
  "  WHERE job = $1 AND slot_ms = $2::BIGINT)"
#define SQL_CRON_FINISH                                                                        \
  "WITH up AS (UPDATE cruster_cron_slots SET state = $3::INT, error = $4,"                    \
  "  finished_ms = $5::BIGINT WHERE job = $1 AND slot_ms = $2::BIGINT RETURNING 1),"          \
  " del AS (DELETE FROM cruster_cron_slots WHERE job = $1 AND state <> 0"                     \
  "  AND finished_ms < $6::BIGINT AND slot_ms < (SELECT max(slot_ms) FROM cruster_cron_slots" \
  "  WHERE job = $1))"                                                                          \
  " SELECT count(*) FROM up"
#define SQL_CRON_LIST                                                                          \
  "SELECT slot_ms, state, started_ms, finished_ms, error FROM cruster_cron_slots"             \
  " WHERE job = $1 ORDER BY slot_ms DESC LIMIT $2::BIGINT"
#define SQL_CRON_LIST_RUNNING                                                                  \
  "SELECT slot_ms, state, started_ms, finished_ms, error FROM cruster_cron_slots"             \
  " WHERE job = $1 AND state = 0 ORDER BY slot_ms LIMIT $2::BIGINT"

static int cron_begin(void *impl, const char *job, int64_t slot_ms, int64_t now_ms, int *fresh,
                      int32_t *state, cruster_error **err) {
  pg_wf *w = impl;
  char a[24], b[24];
  snprintf(a, sizeof a, "%lld", (long long)slot_ms);
  snprintf(b, sizeof b, "%lld", (long long)now_ms);
  const char *v[3] = {job, a, b};
  int prc;
  PGresult *r = exec_pooled(w, SQL_CRON_BEGIN, 3, v, NULL, NULL, "recording a cron slot", &prc, err);
  if (!r) return prc;
  *fresh = get_i64(r, 0, 0) > 0;
  *state = PQgetisnull(r, 0, 1) ? ST_CRON_RUNNING : (int32_t)get_i64(r, 0, 1);
  PQclear(r);
  return CRUSTER_OK;
}

static int cron_finish(void *impl, const char *job, int64_t slot_ms, int32_t state,
                       const char *error, int64_t now_ms, int64_t purge_before_ms,
                       cruster_error **err) {
  pg_wf *w = impl;
  char a[24], b[16], c[24], d[24];
  snprintf(a, sizeof a, "%lld", (long long)slot_ms);
  snprintf(b, sizeof b, "%d", (int)state);
  snprintf(c, sizeof c, "%lld", (long long)now_ms);
  snprintf(d, sizeof d, "%lld", (long long)purge_before_ms);
  const char *v[6] = {job, a, b, error, c, d};
  int prc;
  PGresult *r = exec_pooled(w, SQL_CRON_FINISH, 6, v, NULL, NULL, "finishing a cron slot", &prc, err);
  if (!r) return prc;
  int64_t up = get_i64(r, 0, 0);
  PQclear(r);
  if (!up)
    return core_error_set(err, CRUSTER_E_NOT_FOUND, "cron slot %lld of \"%s\" is not recorded",
                          (long long)slot_ms, job);
  return CRUSTER_OK;
}

static int cron_list(void *impl, const char *job, size_t limit, int running_only,
                     st_cron_slot **out, size_t *n, cruster_error **err) {
  pg_wf *w = impl;
  *out = NULL;
  *n = 0;
  char a[24];
  snprintf(a, sizeof a, "%llu", (unsigned long long)(limit > (size_t)INT64_MAX ? (size_t)INT64_MAX : limit));
  const char *v[2] = {job, a};
  int prc;
  PGresult *r = exec_pooled(w, running_only ? SQL_CRON_LIST_RUNNING : SQL_CRON_LIST, 2, v, NULL,
                            NULL, "listing cron slots", &prc, err);
  if (!r) return prc;
  int rows = PQntuples(r);
  st_cron_slot *s = calloc(rows > 0 ? (size_t)rows : 1, sizeof(*s));
  if (!s) {
    PQclear(r);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  for (int i = 0; i < rows; i++) {
    s[i].slot_ms = get_i64(r, i, 0);
    s[i].state = (int32_t)get_i64(r, i, 1);
    s[i].started_ms = get_i64(r, i, 2);
    s[i].finished_ms = get_i64(r, i, 3);
    if (!PQgetisnull(r, i, 4)) {
      s[i].error = core_strdup(PQgetvalue(r, i, 4));
      if (!s[i].error) {
        st_cron_slots_free(s, (size_t)i);
        PQclear(r);
        return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      }
    }
  }
  PQclear(r);
  *out = s;
  *n = (size_t)rows;
  return CRUSTER_OK;
}

const st_wf_ops pg_wf_ops = {
    .load = wf_load,
    .begin = wf_begin,
    .tx_handle = wf_tx_handle,
    .commit = wf_commit,
    .commit_reopen = wf_commit_reopen,
    .try_hold = wf_try_hold,
    .rollback = wf_rollback,
    .commit_reply = wf_commit_reply,
    .find = wf_find,
    .resolve = wf_resolve,
    .restart = wf_restart,
    .wake = wf_wake,
    .cron_begin = cron_begin,
    .cron_finish = cron_finish,
    .cron_list = cron_list,
};
