/* The PostgreSQL message storage shared by several runners (cluster mode,
 * docs/architecture.md "Persisted messages in a cluster"): two storages
 * attached to the same schema in this process, each with its own owned
 * shards, driven through st_ops directly on one libuv loop (this thread is
 * their loop thread). Polls claim only owned shards' messages; a reconcile
 * never gives back another runner's claims; a shard's new owner gives back
 * what the old one left and keeps the entity's order; a released shard's
 * entities lose the fast path. And the memory storage's side of the same
 * interface. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "pg_support.h"

#include "core/config_internal.h"
#include "core/envelope.h"
#include "core/metrics_internal.h"
#include "core/snowflake.h"
#include "storage/pg_store.h"
#include "storage/storage_internal.h"

#define NSHARDS 8
#define GROUP "default"

static uv_loop_t loop;

/* ---- a runner's storage, without a runtime --------------------------------- */

typedef struct node {
  cruster_config *cfg;
  cruster_metrics *metrics;
  core_snowflake sf;
  cruster_storage *s;
  int owned[NSHARDS];
  int64_t inflight[64]; /* the messages "being handled here" */
  size_t ninflight;
  int wakes;
} node;

static int64_t *n_inflight(void *ud, size_t *n) {
  node *x = ud;
  int64_t *v = malloc((x->ninflight + 1) * sizeof(*v));
  if (v) memcpy(v, x->inflight, x->ninflight * sizeof(*v));
  *n = v ? x->ninflight : 0;
  return v;
}
static void n_wake(void *ud) { ((node *)ud)->wakes++; }
static int n_run_sync(void *ud, void (*fn)(void *arg), void *arg) {
  (void)ud;
  fn(arg);
  return CRUSTER_OK;
}

static int n_owns(void *ud, const char *group, int32_t shard) {
  node *x = ud;
  return strcmp(group, GROUP) == 0 && shard >= 0 && shard < NSHARDS && x->owned[shard];
}

static void node_attach(node *x, pgt_schema *sc, const char *address, int cluster, int pg) {
  char extra[256];
  snprintf(extra, sizeof extra, "runner_address=%s;shards_per_group=%d;storage_pool_size=2",
           address, NSHARDS);
  x->cfg = pgt_config(extra);
  x->metrics = core_metrics_new();
  core_snowflake_init(&x->sf, cluster ? (int32_t)(address[strlen(address) - 1] - '0') : 0);
  cruster_error *err = NULL;
  if (pg) assert_int_equal(cruster_storage_pg_new(sc->conninfo, &x->s, &err), CRUSTER_OK);
  else assert_int_equal(cruster_storage_memory_new(&x->s, &err), CRUSTER_OK);
  st_host host = {&loop, x->cfg, &x->cfg->logger, x->metrics, &x->sf, x,
                  n_inflight, n_wake, n_run_sync, cluster};
  if (x->s->ops->attach(x->s, &host, &err) != CRUSTER_OK)
    fail_msg("attach: %s", cruster_error_message(err));
}

static void on_flushed(void *ud) { *(int *)ud = 1; }
static void run_until(int *flag);

static void node_detach(node *x) {
  int flushed = 0;
  x->s->ops->flush(x->s, on_flushed, &flushed);
  run_until(&flushed);
  x->s->ops->detach(x->s);
  uv_run(&loop, UV_RUN_NOWAIT);
  x->s->ops->destroy(x->s);
  uv_run(&loop, UV_RUN_NOWAIT);
  core_metrics_free(x->metrics);
  cruster_config_free(x->cfg);
  x->s = NULL;
}

/* ---- running the loop until something happened ------------------------------ */

static void tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until *flag (or fn(arg)) is true; fails after the deadline. */
static int run_until_fn(int (*fn)(void *), void *arg) {
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uv_timer_start(&t, tick, 10, 10);
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  int ok = 0;
  while (!(ok = fn(arg)) && pgt_mono_ms() < end) uv_run(&loop, UV_RUN_ONCE);
  uv_timer_stop(&t);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  return ok;
}
static int flag_set(void *arg) { return *(int *)arg != 0; }
static void run_until(int *flag) {
  if (!run_until_fn(flag_set, flag)) fail_msg("the storage never answered");
}

/* ---- operations, waited for ------------------------------------------------ */

static core_env *msg_new(node *x, const char *id, int32_t shard, int64_t deliver_at) {
  core_env *m = core_env_new("Acct", id, "work", "p", 1);
  assert_non_null(m);
  assert_int_equal(core_snowflake_next(&x->sf, &m->request_id), CRUSTER_OK);
  snprintf(m->group, sizeof m->group, "%s", GROUP);
  m->shard = shard;
  m->deliver_at = deliver_at;
  m->is_request = 1;
  m->persisted = 1;
  return m;
}

typedef struct saved {
  int done, status;
  st_save_result result;
} saved;
static void on_saved(void *ud, int status, const char *errmsg, const st_saved *r) {
  (void)errmsg;
  saved *s = ud;
  s->status = status;
  s->result = r->result;
  s->done = 1;
}
static st_save_result save(node *x, const core_env *m, int claim) {
  saved s = {0, 0, 0};
  x->s->ops->save_request(x->s, m, NULL, claim, on_saved, &s);
  run_until(&s.done);
  assert_int_equal(s.status, CRUSTER_OK);
  return s.result;
}

typedef struct polled {
  int done, status;
  int64_t ids[64];
  size_t n;
} polled;
static void on_polled(void *ud, int status, const char *errmsg, core_env **msgs, size_t n,
                      const int64_t *dead, size_t nd) {
  (void)errmsg;
  (void)dead;
  (void)nd;
  polled *p = ud;
  p->status = status;
  for (size_t i = 0; i < n; i++) {
    if (p->n < 64) p->ids[p->n++] = msgs[i]->request_id;
    free(msgs[i]);
  }
  p->done = 1;
}
static void do_poll(node *x, size_t limit, polled *p) {
  memset(p, 0, sizeof(*p));
  x->s->ops->poll(x->s, pgt_now_ms(), limit, 0, n_owns, x, on_polled, p);
  run_until(&p->done);
  assert_int_equal(p->status, CRUSTER_OK);
}

typedef struct done {
  int done, status;
} done;
static void on_done(void *ud, int status, const char *errmsg) {
  (void)errmsg;
  done *d = ud;
  d->status = status;
  d->done = 1;
}
static void acquire(node *x, const int32_t *shards, size_t n) {
  done d = {0, -1};
  for (size_t i = 0; i < n; i++) x->owned[shards[i]] = 1;
  x->s->ops->shards_acquired(x->s, GROUP, shards, n, on_done, &d);
  run_until(&d.done);
  assert_int_equal(d.status, CRUSTER_OK);
}
static void release_shards(node *x, const int32_t *shards, size_t n) {
  for (size_t i = 0; i < n; i++) x->owned[shards[i]] = 0;
  x->s->ops->shards_released(x->s, GROUP, shards, n);
}
static void answer(node *x, const core_env *m) {
  done d = {0, -1};
  st_reply r = {CRUSTER_OK, "ok", 2, NULL};
  x->s->ops->save_reply(x->s, m, &r, on_done, &d);
  run_until(&d.done);
  assert_int_equal(d.status, CRUSTER_OK);
}

static int has(const polled *p, int64_t id) {
  for (size_t i = 0; i < p->n; i++)
    if (p->ids[i] == id) return 1;
  return 0;
}

/* The row's claim token ("" when unclaimed). */
static void claimed_by(pgt_schema *sc, int64_t id, char *out, size_t outsz) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT coalesce(claimed_by, '') FROM %s.cruster_messages "
                            "WHERE request_id = %lld", sc->name, (long long)id);
  PGresult *r = PQexec(sc->admin, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(PQntuples(r), 1);
  snprintf(out, outsz, "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
}

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* ---- tests ------------------------------------------------------------------- */

static const int32_t A_SHARDS[] = {0, 1, 2, 3};
static const int32_t B_SHARDS[] = {4, 5, 6, 7};

typedef struct two {
  pgt_schema sc;
  node a, b;
} two;

static void two_start(two *t) {
  memset(t, 0, sizeof(*t));
  pgt_schema_create(&t->sc);
  pgt_migrate(&t->sc);
  node_attach(&t->a, &t->sc, "127.0.0.1:9101", 1, 1);
  node_attach(&t->b, &t->sc, "127.0.0.1:9102", 1, 1);
  acquire(&t->a, A_SHARDS, 4);
  acquire(&t->b, B_SHARDS, 4);
}

static void two_stop(two *t) {
  if (t->a.s) node_detach(&t->a);
  if (t->b.s) node_detach(&t->b);
  pgt_schema_drop(&t->sc);
}

/* A owns 0..3, B 4..7: each poll claims only its own shards' messages --
 * even when A's limit is small and B's messages (due now or delayed and
 * due) are all older than A's. */
static void polls_claim_owned_shards_only(void **state) {
  (void)state;
  two t;
  two_start(&t);
  core_env *bm[10], *am[3];
  for (int i = 0; i < 10; i++) {
    char id[16];
    snprintf(id, sizeof id, "b%d", i);
    bm[i] = msg_new(&t.b, id, B_SHARDS[i % 4], i == 9 ? pgt_now_ms() - 1000 : 0);
    assert_int_equal(save(&t.b, bm[i], 0), ST_SAVED);
  }
  for (int i = 0; i < 3; i++) {
    char id[16];
    snprintf(id, sizeof id, "a%d", i);
    am[i] = msg_new(&t.a, id, A_SHARDS[i], 0);
    assert_int_equal(save(&t.a, am[i], 0), ST_SAVED);
  }
  polled p;
  size_t got = 0;
  for (int round = 0; round < 3; round++) {
    do_poll(&t.a, 2, &p);
    assert_true(p.n <= 2);
    for (int i = 0; i < 10; i++) assert_false(has(&p, bm[i]->request_id));
    got += p.n;
  }
  assert_int_equal(got, 3);
  for (int i = 0; i < 3; i++) {
    char who[512];
    claimed_by(&t.sc, am[i]->request_id, who, sizeof who);
    assert_true(starts_with(who, "127.0.0.1:9101#"));
  }
  for (int i = 0; i < 10; i++) {
    char who[512];
    claimed_by(&t.sc, bm[i]->request_id, who, sizeof who);
    assert_string_equal(who, "");
  }
  /* B gets all of its own, A's (claimed) stay A's. */
  do_poll(&t.b, 64, &p);
  assert_int_equal(p.n, 10);
  for (int i = 0; i < 10; i++) assert_true(has(&p, bm[i]->request_id));
  /* No shard owned: nothing claimed. */
  memset(t.a.owned, 0, sizeof t.a.owned);
  core_env *late = msg_new(&t.a, "a-late", 0, 0);
  assert_int_equal(save(&t.a, late, 0), ST_SAVED);
  do_poll(&t.a, 64, &p);
  assert_int_equal(p.n, 0);
  for (int i = 0; i < 10; i++) free(bm[i]);
  for (int i = 0; i < 3; i++) free(am[i]);
  free(late);
  two_stop(&t);
}

typedef struct unclaimed_arg {
  pgt_schema *sc;
  int64_t id;
} unclaimed_arg;
static int is_unclaimed(void *arg) {
  unclaimed_arg *u = arg;
  char who[512];
  claimed_by(u->sc, u->id, who, sizeof who);
  return who[0] == 0;
}

static int recon_over(void *arg) {
  pg_store *st = arg;
  return !st->recon_need && !st->recon_busy;
}

/* A's reconcile (after a lost connection, or A restarted) gives back only
 * A's own earlier claims, never B's. */
static void reconcile_keeps_other_runners_claims(void **state) {
  (void)state;
  two t;
  two_start(&t);
  core_env *am = msg_new(&t.a, "a", 1, 0), *am2 = msg_new(&t.a, "a2", 2, 0);
  core_env *bm = msg_new(&t.b, "b", 5, 0);
  assert_int_equal(save(&t.a, am, 1), ST_SAVED); /* claimed by A at insert */
  assert_int_equal(save(&t.a, am2, 1), ST_SAVED);
  assert_int_equal(save(&t.b, bm, 1), ST_SAVED); /* claimed by B */
  char b_token[512], who[512];
  claimed_by(&t.sc, bm->request_id, b_token, sizeof b_token);
  assert_true(starts_with(b_token, "127.0.0.1:9102#"));
  /* A's connection broke with claims in doubt: a new token, a reconcile.
   * am2 is being handled by A (kept); am is not (given back). */
  t.a.inflight[t.a.ninflight++] = am2->request_id;
  pg_store *ast = t.a.s->impl;
  int64_t epoch = ast->epoch;
  pg_new_claim_token(ast);
  unclaimed_arg u = {&t.sc, am->request_id};
  assert_true(run_until_fn(is_unclaimed, &u));
  assert_true(run_until_fn(recon_over, ast));
  assert_true(ast->epoch > epoch);
  claimed_by(&t.sc, am2->request_id, who, sizeof who);
  assert_true(starts_with(who, "127.0.0.1:9101#"));
  claimed_by(&t.sc, bm->request_id, who, sizeof who);
  assert_string_equal(who, b_token);
  /* A restarts: the new life's start gives nothing of B's back either. */
  node_detach(&t.a);
  memset(&t.a, 0, sizeof t.a);
  node_attach(&t.a, &t.sc, "127.0.0.1:9101", 1, 1);
  acquire(&t.a, A_SHARDS, 4); /* gives back what A's last life left on them */
  u.id = am2->request_id;
  assert_true(is_unclaimed(&u));
  claimed_by(&t.sc, bm->request_id, who, sizeof who);
  assert_string_equal(who, b_token);
  free(am);
  free(am2);
  free(bm);
  two_stop(&t);
}

/* Shard 2 moves from A to B while A handles m (A died): B's acquire gives
 * m back, and B's knowledge orders a new message m2 of the same entity
 * after m. */
static void shard_move_keeps_entity_order(void **state) {
  (void)state;
  two t;
  two_start(&t);
  core_env *m = msg_new(&t.a, "e", 2, 0);
  /* A knows shard 2: the fast insert stores m claimed for delivery. */
  assert_int_equal(t.a.s->ops->claims_now(t.a.s, m), 1);
  assert_int_equal(save(&t.a, m, 1), ST_SAVED);
  char who[512];
  claimed_by(&t.sc, m->request_id, who, sizeof who);
  assert_true(starts_with(who, "127.0.0.1:9101#"));
  /* A dies (its storage simply stops being used); B takes shard 2. */
  t.a.owned[2] = 0;
  core_env *m2 = msg_new(&t.b, "e", 2, 0), *f = msg_new(&t.b, "f", 2, 0);
  assert_int_equal(t.b.s->ops->claims_now(t.b.s, m2), 0); /* not B's shard yet */
  polled p;
  static const int32_t two_[] = {2};
  acquire(&t.b, two_, 1);
  claimed_by(&t.sc, m->request_id, who, sizeof who);
  assert_string_equal(who, "");
  core_metric *taken = core_metrics_get(t.b.metrics, CORE_COUNTER,
                                        "cluster_storage_claims_taken_over_total", "", NULL);
  core_metric *known = core_metrics_get(t.b.metrics, CORE_GAUGE, "cluster_storage_shards_known",
                                        "", NULL);
  assert_true(core_metric_get(taken) == 1.0);
  assert_true(core_metric_get(known) == 5.0);
  /* m is stored unanswered: its entity is not clear; another one is. */
  assert_int_equal(t.b.s->ops->claims_now(t.b.s, m2), 0);
  assert_int_equal(t.b.s->ops->claims_now(t.b.s, f), 1);
  /* m2 waits behind m in storage; the poll hands them over in order. */
  assert_int_equal(save(&t.b, m2, 1), ST_SAVED_QUEUED);
  do_poll(&t.b, 64, &p);
  assert_int_equal(p.n, 2);
  assert_true(p.ids[0] == m->request_id);
  assert_true(p.ids[1] == m2->request_id);
  answer(&t.b, m);
  answer(&t.b, m2);
  /* (Its entity stays ordered by asking: unknown is not forgotten while
   * the shard is owned.) */
  core_env *m3 = msg_new(&t.b, "e", 2, 0);
  assert_int_equal(t.b.s->ops->claims_now(t.b.s, m3), 0);
  free(m);
  free(m2);
  free(m3);
  free(f);
  two_stop(&t);
}

/* After shards_released, the fast path is off for the entities of those
 * shards (and what was tracked for them no longer counts). */
static void released_shards_lose_the_fast_path(void **state) {
  (void)state;
  two t;
  two_start(&t);
  core_env *g = msg_new(&t.a, "g", 1, 0), *h = msg_new(&t.a, "h", 3, 0);
  assert_int_equal(t.a.s->ops->claims_now(t.a.s, g), 1);
  assert_int_equal(save(&t.a, h, 1), ST_SAVED); /* h tracked, unanswered */
  static const int32_t r[] = {1, 3};
  release_shards(&t.a, r, 2);
  assert_int_equal(t.a.s->ops->claims_now(t.a.s, g), 0);
  pg_store *ast = t.a.s->impl;
  pg_ks *ks = pg_ks_of(ast, GROUP, 3);
  assert_non_null(ks);
  assert_int_equal(ks->tracked.count, 0);
  assert_int_equal(ks->pending.count, 0);
  /* A save there now asks PostgreSQL (no fast insert): still stored. */
  core_env *g2 = msg_new(&t.a, "g", 1, 0);
  assert_int_equal(save(&t.a, g2, 0), ST_SAVED);
  /* Acquired again: g has a stored unanswered message -- asked; h too. */
  acquire(&t.a, r, 2);
  assert_int_equal(t.a.s->ops->claims_now(t.a.s, g), 0);
  core_env *h2 = msg_new(&t.a, "h", 3, 0), *k = msg_new(&t.a, "k", 3, 0);
  assert_int_equal(t.a.s->ops->claims_now(t.a.s, h2), 0);
  assert_int_equal(t.a.s->ops->claims_now(t.a.s, k), 1);
  /* The claim A made on h in its earlier ownership is its own: kept. */
  char who[512];
  claimed_by(&t.sc, h->request_id, who, sizeof who);
  assert_true(starts_with(who, "127.0.0.1:9101#"));
  free(g);
  free(g2);
  free(h);
  free(h2);
  free(k);
  two_stop(&t);
}

/* Single-node mode keeps its schema lock: a second single-node storage on
 * the same schema is refused, while cluster storages share it. */
static void single_node_still_locks_the_schema(void **state) {
  (void)state;
  pgt_schema sc;
  pgt_schema_create(&sc);
  pgt_migrate(&sc);
  node a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  node_attach(&a, &sc, "127.0.0.1:9101", 0, 1);
  b.cfg = pgt_config("runner_address=127.0.0.1:9102");
  b.metrics = core_metrics_new();
  core_snowflake_init(&b.sf, 2);
  cruster_error *err = NULL;
  assert_int_equal(cruster_storage_pg_new(sc.conninfo, &b.s, &err), CRUSTER_OK);
  st_host host = {&loop, b.cfg, &b.cfg->logger, b.metrics, &b.sf, &b,
                  n_inflight, n_wake, n_run_sync, 0};
  assert_int_equal(b.s->ops->attach(b.s, &host, &err), CRUSTER_E_STATE);
  cruster_error_free(err);
  b.s->ops->detach(b.s);
  b.s->ops->destroy(b.s);
  uv_run(&loop, UV_RUN_NOWAIT);
  core_metrics_free(b.metrics);
  cruster_config_free(b.cfg);
  /* Single-node: every shard is known once attached (acquire: at once). */
  core_env *m = msg_new(&a, "s", 6, 0);
  polled p;
  for (int i = 0; i < NSHARDS; i++) a.owned[i] = 1;
  do_poll(&a, 1, &p); /* behind the attach scan on the first connection */
  assert_int_equal(a.s->ops->claims_now(a.s, m), 1);
  free(m);
  node_detach(&a);
  pgt_schema_drop(&sc);
}

/* The memory storage: the poll honours the owned shards; acquire and
 * release are consistent (nothing to give back in one process). */
static void memory_storage_honours_owned_shards(void **state) {
  (void)state;
  node a;
  memset(&a, 0, sizeof a);
  node_attach(&a, NULL, "127.0.0.1:9101", 1, 0);
  acquire(&a, A_SHARDS, 4);
  core_env *mine = msg_new(&a, "x", 1, 0), *other = msg_new(&a, "y", 6, 0);
  assert_int_equal(save(&a, other, 0), ST_SAVED);
  assert_int_equal(save(&a, mine, 0), ST_SAVED);
  polled p;
  do_poll(&a, 1, &p);
  assert_int_equal(p.n, 1);
  assert_true(p.ids[0] == mine->request_id);
  do_poll(&a, 64, &p);
  assert_int_equal(p.n, 0);
  static const int32_t six[] = {6};
  acquire(&a, six, 1);
  do_poll(&a, 64, &p);
  assert_int_equal(p.n, 1);
  assert_true(p.ids[0] == other->request_id);
  release_shards(&a, six, 1);
  free(mine);
  free(other);
  node_detach(&a);
}

int main(void) {
  pgt_main_start();
  uv_loop_init(&loop);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(polls_claim_owned_shards_only),
      cmocka_unit_test(reconcile_keeps_other_runners_claims),
      cmocka_unit_test(shard_move_keeps_entity_order),
      cmocka_unit_test(released_shards_lose_the_fast_path),
      cmocka_unit_test(single_node_still_locks_the_schema),
      cmocka_unit_test(memory_storage_honours_owned_shards),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  uv_loop_close(&loop);
  return rc;
}
