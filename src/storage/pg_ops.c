/* PostgreSQL storage: the prepared statements, and each operation's
 * parameters (marshalling; pg_result.c reads what comes back). */
#include <stdio.h>
#include <stdlib.h>

#include "core/hash.h"
#include "storage/pg_sql.h"
#include "storage/pg_store.h"

/* ---- statements ------------------------------------------------------------ */

/* Prepared on every connection as it opens (pg_conn.c), with the fast
 * inserts (cr_fast1 .. cr_fast64). */
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
    {"cr_park", PG_SQL_PARK, 4},
    {"cr_recon_own", PG_SQL_RECONCILE_OWN, 3},
    {"cr_acq_unclaim", PG_SQL_ACQUIRE_UNCLAIM, 4}, {"cr_acq_scan", PG_SQL_ACQUIRE_SCAN, 3},
    {"cr_guard", PG_SQL_JOB_GUARD, 2},
};
#define N_STMTS (int)(sizeof stmts / sizeof stmts[0])

int pg_prepare_count(void) { return N_STMTS + PG_FAST_SIZES; }

int pg_send_prepares(pg_conn *c) {
  int ok = 1;
  for (int i = 0; ok && i < N_STMTS; i++)
    ok = PQsendPrepare(c->pq, stmts[i].name, stmts[i].sql, stmts[i].nparams, NULL);
  for (int i = 0; ok && i < PG_FAST_SIZES; i++) {
    char name[16];
    snprintf(name, sizeof name, "cr_fast%d", 1 << i);
    ok = PQsendPrepare(c->pq, name, c->st->fast_sql[i], 1 + PG_FAST_PARAMS * (1 << i), NULL);
  }
  return ok;
}

/* The fast insert's statements, of 1, 2, 4, ... PG_FAST_MAX rows. */
int pg_fast_sql_build(pg_store *st) {
  for (int i = 0; i < PG_FAST_SIZES; i++) {
    int rows = 1 << i;
    size_t cap = sizeof(PG_SQL_FAST_HEAD) + (size_t)rows * (sizeof(PG_SQL_FAST_ROW) + 64);
    char *q = malloc(cap);
    if (!q) return -1;
    size_t at = (size_t)snprintf(q, cap, "%s", PG_SQL_FAST_HEAD);
    for (int r = 0; r < rows; r++) {
      int b = 2 + PG_FAST_PARAMS * r;
      at += (size_t)snprintf(q + at, cap - at, r ? ", " PG_SQL_FAST_ROW : PG_SQL_FAST_ROW, b,
                             b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8);
    }
    st->fast_sql[i] = q;
  }
  return 0;
}

/* ---- sending an operation ------------------------------------------------------ */

char *pg_int8_array(const int64_t *ids, size_t n) {
  char *out = malloc(n * 21 + 3);
  if (!out) return NULL;
  char *p = out;
  *p++ = '{';
  for (size_t i = 0; i < n; i++) p += sprintf(p, "%s%lld", i ? "," : "", (long long)ids[i]);
  *p++ = '}';
  *p = 0;
  return out;
}

int pg_send_fast(pg_conn *c, pg_op **ops, size_t n) {
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
    ok = pg_send_stmt(c, name, np, v, l, f);
  }
  free(v);
  free(l);
  free(f);
  free(num);
  return ok;
}

int pg_fast_split(size_t n, size_t *sizes) {
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

int pg_op_send(pg_conn *c, pg_op *o) {
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
      char *ids = pg_int8_array(cand, CORE_KEY_CANDIDATES);
      if (!ids) return 0;
      const char *v[14] = {ids, m->group, b, m->type, m->id, m->method, m->payload,
                           m->internal ? "t" : "f", m->is_request ? "t" : "f", d,
                           o->claim && !o->behind ? "t" : "f", st->claimer, e, o->key};
      int l[14] = {0, 0, 0, 0, 0, 0, (int)m->len, 0, 0, 0, 0, 0, 0, (int)o->key_len};
      int fm[14] = {0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1};
      int ok = pg_send_stmt(c, "cr_ins", 14, v, l, fm);
      free(ids);
      return ok;
    }
    snprintf(a, sizeof a, "%lld", (long long)m->request_id);
    const char *v[14] = {a, m->group, b, m->type, m->id, m->method, m->payload,
                         m->internal ? "t" : "f", m->is_request ? "t" : "f", "f",
                         d, o->claim && !o->behind ? "t" : "f", st->claimer, e};
    int l[14] = {0, 0, 0, 0, 0, 0, (int)m->len, 0, 0, 0, 0, 0, 0, 0};
    int fm[14] = {0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    return pg_send_stmt(c, "cr_ins1", 14, v, l, fm);
  }
  case OP_REPLY: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    if (!o->env->keyed) {
      const char *v[1] = {a};
      return pg_send_stmt(c, "cr_done", 1, v, NULL, NULL);
    }
    snprintf(b, sizeof b, "%d", o->status);
    const char *v[4] = {a, b, o->status == CRUSTER_OK ? (o->data ? o->data : "") : NULL,
                        o->status == CRUSTER_OK ? NULL : o->message};
    int l[4] = {0, 0, (int)o->len, 0};
    int fm[4] = {0, 0, 1, 0};
    return pg_send_stmt(c, "cr_rep", 4, v, l, fm);
  }
  case OP_RELEASE: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    snprintf(b, sizeof b, "%d", o->attempt ? 1 : 0);
    snprintf(d, sizeof d, "%lld", (long long)st->backoff_ms);
    const char *v[3] = {a, b, d};
    return pg_send_stmt(c, "cr_rel", 3, v, NULL, NULL);
  }
  case OP_PARK: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    snprintf(b, sizeof b, "%lld",
             (long long)(o->wake_at > PG_PARK_FOREVER_MS ? PG_PARK_FOREVER_MS : o->wake_at));
    snprintf(d, sizeof d, "%lld", (long long)o->wake_seq);
    snprintf(f, sizeof f, "%d", o->progress ? 1 : 0);
    const char *v[4] = {a, b, d, f};
    return pg_send_stmt(c, "cr_park", 4, v, NULL, NULL);
  }
  case OP_POLL: {
    /* LIMIT is an int4: storage_inbox_size may be larger. */
    snprintf(a, sizeof a, "%zu", o->limit > (size_t)INT32_MAX ? (size_t)INT32_MAX : o->limit);
    snprintf(b, sizeof b, "%lld", (long long)o->now_ms);
    snprintf(f, sizeof f, "%lld", (long long)o->max_retries);
    /* Planned at each poll, not prepared: a plan for its joins made while
     * the table was empty (as on a new connection) could walk every
     * unanswered message per candidate (pg_sql.h). Polls are rare enough
     * to pay for planning with the table's size of now. */
    if (!o->owned) { /* every shard owned (single-node) */
      const char *v1[4] = {a, st->claimer, b, f};
      const char *v2[1] = {b};
      return PQsendQueryParams(c->pq, PG_SQL_CLAIM, 4, NULL, v1, NULL, NULL, 1) &&
             PQsendQueryParams(c->pq, PG_SQL_NEXT_DUE, 1, NULL, v2, NULL, NULL, 1);
    }
    snprintf(d, sizeof d, "%lld", (long long)st->host.cfg->shards_per_group);
    const char *v1[7] = {a, st->claimer, b, f, st->groups_lit, d, o->owned};
    const char *v2[4] = {b, st->groups_lit, d, o->owned};
    return PQsendQueryParams(c->pq, PG_SQL_CLAIM_OWNED, 7, NULL, v1, NULL, NULL, 1) &&
           PQsendQueryParams(c->pq, PG_SQL_NEXT_DUE_OWNED, 4, NULL, v2, NULL, NULL, 1);
  }
  case OP_GET:
  case OP_REDELIVER: {
    snprintf(a, sizeof a, "%lld", (long long)o->request_id);
    const char *v[1] = {a};
    return pg_send_stmt(c, o->kind == OP_GET ? "cr_get" : "cr_redel", 1, v, NULL, NULL);
  }
  case OP_GET_KEYED: {
    const core_env *m = o->env;
    int64_t cand[CORE_KEY_CANDIDATES];
    core_key_candidates(m->type, m->id, m->method, o->key, o->key_len, cand);
    char *ids = pg_int8_array(cand, CORE_KEY_CANDIDATES);
    if (!ids) return 0;
    const char *v[5] = {ids, m->type, m->id, m->method, o->key};
    int l[5] = {0, 0, 0, 0, (int)o->key_len};
    int fm[5] = {0, 0, 0, 0, 1};
    int ok = pg_send_stmt(c, "cr_getk", 5, v, l, fm);
    free(ids);
    return ok;
  }
  case OP_DEAD: {
    snprintf(a, sizeof a, "%zu", o->limit > 100000 ? (size_t)100000 : o->limit);
    const char *v[1] = {a};
    return pg_send_stmt(c, "cr_list", 1, v, NULL, NULL);
  }
  case OP_CLEANUP: {
    snprintf(a, sizeof a, "%lld", (long long)st->retention_ms);
    const char *v[1] = {a};
    return pg_send_stmt(c, "cr_clean", 1, v, NULL, NULL);
  }
  case OP_UNCLAIM: {
    snprintf(a, sizeof a, "%lld", (long long)o->env->request_id);
    snprintf(b, sizeof b, "%lld", (long long)o->attempts_before);
    const char *v[3] = {a, b, o->token};
    return pg_send_stmt(c, "cr_unclaim", 3, v, NULL, NULL);
  }
  case OP_SCAN: {
    snprintf(a, sizeof a, "%d", PG_SCAN_LIMIT + 1);
    const char *v[1] = {a};
    return pg_send_stmt(c, "cr_scan", 1, v, NULL, NULL);
  }
  case OP_RECONCILE: {
    /* The set is taken now, on the loop thread: exactly what runs here. */
    size_t n = 0;
    int64_t *inflight = st->host.inflight(st->host.ud, &n);
    char *ids = inflight ? pg_int8_array(inflight, n) : NULL;
    free(inflight);
    if (!ids) return 0;
    const char *v[3] = {st->claimer, ids, st->life};
    int ok = st->cluster ? pg_send_stmt(c, "cr_recon_own", 3, v, NULL, NULL)
                         : pg_send_stmt(c, "cr_recon", 2, v, NULL, NULL);
    free(ids);
    return ok;
  }
  case OP_ACQUIRE: {
    /* As the reconcile's: what runs here now is kept. */
    size_t n = 0;
    int64_t *inflight = st->host.inflight(st->host.ud, &n);
    char *ids = inflight ? pg_int8_array(inflight, n) : NULL;
    free(inflight);
    int64_t *sh = ids ? malloc((o->limit + 1) * sizeof(*sh)) : NULL;
    for (size_t i = 0; sh && i < o->limit; i++) sh[i] = o->shards[i];
    char *shards = sh ? pg_int8_array(sh, o->limit) : NULL;
    free(sh);
    snprintf(a, sizeof a, "%d", PG_SCAN_LIMIT + 1);
    const char *v1[4] = {o->env->group, shards, st->life, ids};
    const char *v2[3] = {o->env->group, shards, a};
    int ok = ids && shards && pg_send_stmt(c, "cr_acq_unclaim", 4, v1, NULL, NULL) &&
             pg_send_stmt(c, "cr_acq_scan", 3, v2, NULL, NULL);
    free(ids);
    free(shards);
    return ok;
  }
  }
  return 0;
}

void pg_op_free(pg_op *o) {
  for (int i = 0; i < 3; i++) PQclear(o->res[i]);
  free(o->env);
  free(o->data);
  free(o->message);
  free(o->token);
  free(o->key);
  free(o->owned);
  free(o->shards);
  free(o->gens);
  free(o);
}

/* The caller sets the callback (o->cb) of its kind. */
pg_op *pg_op_new(int kind, void *ud) {
  pg_op *o = calloc(1, sizeof(*o));
  if (!o) return NULL;
  o->kind = kind;
  o->ud = ud;
  o->nstmt = kind == OP_POLL || kind == OP_ACQUIRE ? 2 : 1;
  return o;
}
