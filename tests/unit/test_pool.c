/* Worker pool: ordering, exactly-once execution, blocking compensation,
 * shutdown draining, worker identity. No timing assertions: waits use a
 * generous deadline and only fail when something never happens. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "loop/pool.h"

/* Generous: a wait fails only if what it waits for never happens, however
 * busy the machine (a gate held past it would let gated jobs run early). */
#define DEADLINE_NS (60ull * 1000ull * 1000ull * 1000ull)

static const core_logger quiet = {NULL, NULL, CRUSTER_LOG_OFF};

/* ---- helpers -------------------------------------------------------------- */

/* A latch: count goes up, waiters wait for a value. */
typedef struct latch {
  uv_mutex_t mu;
  uv_cond_t cv;
  int count;
} latch;

static void latch_init(latch *l) {
  assert_int_equal(uv_mutex_init(&l->mu), 0);
  assert_int_equal(uv_cond_init(&l->cv), 0);
  l->count = 0;
}

static void latch_destroy(latch *l) {
  uv_cond_destroy(&l->cv);
  uv_mutex_destroy(&l->mu);
}

static void latch_add(latch *l) {
  uv_mutex_lock(&l->mu);
  l->count++;
  uv_cond_broadcast(&l->cv);
  uv_mutex_unlock(&l->mu);
}

static int latch_get(latch *l) {
  uv_mutex_lock(&l->mu);
  int c = l->count;
  uv_mutex_unlock(&l->mu);
  return c;
}

/* 1 once count >= n, 0 if the deadline passed first. */
static int latch_wait(latch *l, int n) {
  uint64_t end = uv_hrtime() + DEADLINE_NS;
  uv_mutex_lock(&l->mu);
  while (l->count < n) {
    uint64_t now = uv_hrtime();
    if (now >= end) break;
    uv_cond_timedwait(&l->cv, &l->mu, end - now);
  }
  int ok = l->count >= n;
  uv_mutex_unlock(&l->mu);
  return ok;
}

static double gauge_value(cruster_metrics *m, const char *name) {
  core_metric *g = core_metrics_get(m, CORE_GAUGE, name, "", NULL);
  assert_non_null(g);
  return core_metric_get(g);
}

/* 1 once the gauge equals v, 0 if the deadline passed first. */
static int gauge_eventually(cruster_metrics *m, const char *name, double v) {
  uint64_t end = uv_hrtime() + DEADLINE_NS;
  for (;;) {
    if (gauge_value(m, name) == v) return 1;
    if (uv_hrtime() >= end) return 0;
    uv_sleep(5);
  }
}

static void atomic_max(atomic_int *a, int v) {
  int cur = atomic_load(a);
  while (v > cur && !atomic_compare_exchange_weak(a, &cur, v)) {
  }
}

/* ---- FIFO ------------------------------------------------------------------ */

#define FIFO_N 200

typedef struct fifo_ctx {
  latch gate;
  int gate_timed_out;
  int order[FIFO_N];
  int n; /* written by the single worker only */
} fifo_ctx;

typedef struct fifo_item {
  rt_job job;
  fifo_ctx *ctx;
  int index;
} fifo_item;

static void fifo_gate_job(void *arg) {
  fifo_ctx *c = arg;
  /* No cmocka assertion off the test's own thread: record, check later. */
  c->gate_timed_out = !latch_wait(&c->gate, 1);
}

static void fifo_job(void *arg) {
  fifo_item *it = arg;
  it->ctx->order[it->ctx->n++] = it->index;
}

static void fifo_order_with_one_thread(void **state) {
  (void)state;
  rt_pool *p;
  assert_int_equal(rt_pool_new(1, 1, &quiet, NULL, &p), CRUSTER_OK);
  fifo_ctx c;
  memset(&c, 0, sizeof c);
  latch_init(&c.gate);
  rt_job gate = {fifo_gate_job, &c, NULL};
  /* Hold the only worker so that every job below is queued before any runs. */
  assert_int_equal(rt_pool_submit(p, &gate), CRUSTER_OK);
  static fifo_item items[FIFO_N];
  for (int i = 0; i < FIFO_N; i++) {
    items[i] = (fifo_item){{fifo_job, &items[i], NULL}, &c, i};
    assert_int_equal(rt_pool_submit(p, &items[i].job), CRUSTER_OK);
  }
  latch_add(&c.gate);
  rt_pool_shutdown(p); /* drains; joining the worker orders its writes before ours */
  assert_false(c.gate_timed_out);
  assert_int_equal(c.n, FIFO_N);
  for (int i = 0; i < FIFO_N; i++) assert_int_equal(c.order[i], i);
  rt_pool_free(p);
  latch_destroy(&c.gate);
}

/* ---- many submitters -------------------------------------------------------- */

#define SUBMITTERS 4
#define PER_SUBMITTER 5000

typedef struct count_item {
  rt_job job;
  atomic_int runs;
} count_item;

typedef struct submitter_arg {
  rt_pool *p;
  count_item *items;
  atomic_int failures;
} submitter_arg;

static void count_job(void *arg) {
  count_item *it = arg;
  atomic_fetch_add(&it->runs, 1);
}

static void submitter_main(void *arg) {
  submitter_arg *a = arg;
  for (int i = 0; i < PER_SUBMITTER; i++) {
    a->items[i].job = (rt_job){count_job, &a->items[i], NULL};
    if (rt_pool_submit(a->p, &a->items[i].job) != CRUSTER_OK) atomic_fetch_add(&a->failures, 1);
  }
}

static void jobs_from_many_submitters_run_exactly_once(void **state) {
  (void)state;
  cruster_metrics *m = core_metrics_new();
  rt_pool *p;
  assert_int_equal(rt_pool_new(3, 3, &quiet, m, &p), CRUSTER_OK);
  count_item *items = calloc(SUBMITTERS * PER_SUBMITTER, sizeof *items);
  assert_non_null(items);
  submitter_arg args[SUBMITTERS];
  uv_thread_t th[SUBMITTERS];
  for (int s = 0; s < SUBMITTERS; s++) {
    args[s].p = p;
    args[s].items = items + s * PER_SUBMITTER;
    atomic_init(&args[s].failures, 0);
    assert_int_equal(uv_thread_create(&th[s], submitter_main, &args[s]), 0);
  }
  for (int s = 0; s < SUBMITTERS; s++) {
    uv_thread_join(&th[s]);
    assert_int_equal(atomic_load(&args[s].failures), 0);
  }
  rt_pool_shutdown(p);
  for (int i = 0; i < SUBMITTERS * PER_SUBMITTER; i++)
    assert_int_equal(atomic_load(&items[i].runs), 1);
  assert_true(gauge_value(m, "cluster_worker_queue_depth") == 0);
  assert_true(gauge_value(m, "cluster_worker_threads_busy") == 0);
  assert_true(gauge_value(m, "cluster_worker_threads") == 0);
  rt_pool_free(p);
  free(items);
  core_metrics_free(m);
}

/* ---- compensation: a synchronous chain deeper than the pool ------------------ */

#define MAX_CHAIN 32

typedef struct chain chain;
typedef struct chain_link {
  rt_job job;
  chain *c;
  int k;
  int done; /* under c->mu */
} chain_link;

struct chain {
  rt_pool *p;
  cruster_metrics *m; /* may be NULL */
  int n;
  uv_mutex_t mu;
  uv_cond_t cv;
  chain_link links[MAX_CHAIN];
  atomic_int submit_failures;
  atomic_int not_worker;
  atomic_int peak_threads; /* highest cluster_worker_threads seen inside a chain_link */
  latch finished;          /* counts finished links */
};

static void chain_link_job(void *arg) {
  chain_link *l = arg;
  chain *c = l->c;
  if (!rt_pool_is_worker(c->p)) atomic_fetch_add(&c->not_worker, 1);
  if (c->m) atomic_max(&c->peak_threads, (int)gauge_value(c->m, "cluster_worker_threads"));
  if (l->k + 1 < c->n) {
    chain_link *next = &c->links[l->k + 1];
    if (rt_pool_submit(c->p, &next->job) != CRUSTER_OK) atomic_fetch_add(&c->submit_failures, 1);
    /* Wait synchronously for the next chain_link, as a handler waiting for another
     * entity's answer would. */
    rt_pool_block_enter(c->p);
    uv_mutex_lock(&c->mu);
    while (!next->done) uv_cond_wait(&c->cv, &c->mu);
    uv_mutex_unlock(&c->mu);
    rt_pool_block_leave(c->p);
  }
  uv_mutex_lock(&c->mu);
  l->done = 1;
  uv_cond_broadcast(&c->cv);
  uv_mutex_unlock(&c->mu);
  latch_add(&c->finished);
}

static chain *chain_new(rt_pool *p, cruster_metrics *m, int n) {
  chain *c = calloc(1, sizeof *c);
  assert_non_null(c);
  assert_true(n <= MAX_CHAIN);
  c->p = p;
  c->m = m;
  c->n = n;
  assert_int_equal(uv_mutex_init(&c->mu), 0);
  assert_int_equal(uv_cond_init(&c->cv), 0);
  latch_init(&c->finished);
  for (int k = 0; k < n; k++)
    c->links[k] = (chain_link){{chain_link_job, &c->links[k], NULL}, c, k, 0};
  return c;
}

static void chain_free(chain *c) {
  latch_destroy(&c->finished);
  uv_cond_destroy(&c->cv);
  uv_mutex_destroy(&c->mu);
  free(c);
}

static void chain_deeper_than_pool_completes(void **state) {
  (void)state;
  cruster_metrics *m = core_metrics_new();
  rt_pool *p;
  assert_int_equal(rt_pool_new(2, 64, &quiet, m, &p), CRUSTER_OK);
  chain *c = chain_new(p, m, 20);
  assert_int_equal(rt_pool_submit(p, &c->links[0].job), CRUSTER_OK);
  assert_true(latch_wait(&c->finished, 20));
  assert_int_equal(atomic_load(&c->submit_failures), 0);
  assert_int_equal(atomic_load(&c->not_worker), 0);
  assert_true(atomic_load(&c->peak_threads) <= 64);
  assert_true(atomic_load(&c->peak_threads) > 2); /* it did compensate */
  rt_pool_free(p);
  chain_free(c);
  core_metrics_free(m);
}

/* ---- compensation stops at max_threads ------------------------------------- */

#define GATED_JOBS 10
#define GATED_MAX 4

typedef struct gated {
  rt_pool *p;
  cruster_metrics *m;
  rt_job jobs[GATED_JOBS];
  latch started, gate;
  atomic_int running, peak_running, peak_threads;
} gated;

static void gated_job(void *arg) {
  gated *g = arg;
  atomic_max(&g->peak_running, atomic_fetch_add(&g->running, 1) + 1);
  atomic_max(&g->peak_threads, (int)gauge_value(g->m, "cluster_worker_threads"));
  latch_add(&g->started);
  rt_pool_block_enter(g->p);
  latch_wait(&g->gate, 1);
  rt_pool_block_leave(g->p);
  atomic_fetch_sub(&g->running, 1);
}

static void compensation_respects_max_threads(void **state) {
  (void)state;
  gated *g = calloc(1, sizeof *g);
  assert_non_null(g);
  g->m = core_metrics_new();
  latch_init(&g->started);
  latch_init(&g->gate);
  assert_int_equal(rt_pool_new(1, GATED_MAX, &quiet, g->m, &g->p), CRUSTER_OK);
  for (int i = 0; i < GATED_JOBS; i++) {
    g->jobs[i] = (rt_job){gated_job, g, NULL};
    assert_int_equal(rt_pool_submit(g->p, &g->jobs[i]), CRUSTER_OK);
  }
  /* Blocked workers are replaced until max_threads run... */
  assert_true(latch_wait(&g->started, GATED_MAX));
  assert_true(gauge_eventually(g->m, "cluster_worker_threads_blocked", GATED_MAX));
  /* ...and no further: the rest stays queued. */
  assert_true(gauge_value(g->m, "cluster_worker_threads") == GATED_MAX);
  assert_true(gauge_value(g->m, "cluster_worker_queue_depth") == GATED_JOBS - GATED_MAX);
  assert_int_equal(latch_get(&g->started), GATED_MAX);
  latch_add(&g->gate);
  rt_pool_shutdown(g->p);
  assert_int_equal(latch_get(&g->started), GATED_JOBS);
  assert_true(atomic_load(&g->peak_running) <= GATED_MAX);
  assert_true(atomic_load(&g->peak_threads) <= GATED_MAX);
  rt_pool_free(g->p);
  latch_destroy(&g->gate);
  latch_destroy(&g->started);
  core_metrics_free(g->m);
  free(g);
}

/* ---- extra workers go away ------------------------------------------------- */

static void extra_workers_exit_after_blocking_ends(void **state) {
  (void)state;
  cruster_metrics *m = core_metrics_new();
  rt_pool *p;
  assert_int_equal(rt_pool_new(2, 16, &quiet, m, &p), CRUSTER_OK);
  chain *c = chain_new(p, m, 12);
  assert_int_equal(rt_pool_submit(p, &c->links[0].job), CRUSTER_OK);
  assert_true(latch_wait(&c->finished, 12));
  assert_true(atomic_load(&c->peak_threads) > 2);
  assert_true(gauge_eventually(m, "cluster_worker_threads", 2));
  assert_true(gauge_value(m, "cluster_worker_threads_blocked") == 0);
  /* The pool still works at its base size. */
  chain *c2 = chain_new(p, m, 5);
  assert_int_equal(rt_pool_submit(p, &c2->links[0].job), CRUSTER_OK);
  assert_true(latch_wait(&c2->finished, 5));
  rt_pool_free(p);
  chain_free(c2);
  chain_free(c);
  core_metrics_free(m);
}

/* ---- shutdown ---------------------------------------------------------------- */

#define DRAIN_N 50

typedef struct drain_ctx {
  rt_pool *p;
  latch gate;
  latch parents, children;
  atomic_int child_submit_failures;
  rt_job gate_job;
  rt_job parent[DRAIN_N], child[DRAIN_N];
} drain_ctx;

static void drain_gate_job(void *arg) {
  drain_ctx *d = arg;
  latch_wait(&d->gate, 1);
}

static void drain_child_job(void *arg) { latch_add(&((drain_ctx *)arg)->children); }

static void drain_parent_job(void *arg) {
  drain_ctx *d = arg;
  int i = latch_get(&d->parents); /* one worker: parents run one at a time */
  d->child[i] = (rt_job){drain_child_job, d, NULL};
  if (rt_pool_submit(d->p, &d->child[i]) != CRUSTER_OK)
    atomic_fetch_add(&d->child_submit_failures, 1);
  latch_add(&d->parents);
}

static void open_gate_later(void *arg) {
  drain_ctx *d = arg;
  /* Gives rt_pool_shutdown time to start draining, so the children are most
   * likely submitted during the drain; the assertions hold either way. */
  uv_sleep(50);
  latch_add(&d->gate);
}

static void shutdown_drains_queued_jobs_and_jobs_they_submit(void **state) {
  (void)state;
  drain_ctx *d = calloc(1, sizeof *d);
  assert_non_null(d);
  latch_init(&d->gate);
  latch_init(&d->parents);
  latch_init(&d->children);
  assert_int_equal(rt_pool_new(1, 1, &quiet, NULL, &d->p), CRUSTER_OK);
  d->gate_job = (rt_job){drain_gate_job, d, NULL};
  assert_int_equal(rt_pool_submit(d->p, &d->gate_job), CRUSTER_OK);
  for (int i = 0; i < DRAIN_N; i++) {
    d->parent[i] = (rt_job){drain_parent_job, d, NULL};
    assert_int_equal(rt_pool_submit(d->p, &d->parent[i]), CRUSTER_OK);
  }
  uv_thread_t opener;
  assert_int_equal(uv_thread_create(&opener, open_gate_later, d), 0);
  rt_pool_shutdown(d->p);
  assert_int_equal(latch_get(&d->parents), DRAIN_N);
  assert_int_equal(latch_get(&d->children), DRAIN_N);
  assert_int_equal(atomic_load(&d->child_submit_failures), 0);
  uv_thread_join(&opener);
  rt_pool_free(d->p);
  latch_destroy(&d->children);
  latch_destroy(&d->parents);
  latch_destroy(&d->gate);
  free(d);
}

static void shutdown_completes_while_workers_block_on_queued_jobs(void **state) {
  (void)state;
  rt_pool *p;
  assert_int_equal(rt_pool_new(1, 32, &quiet, NULL, &p), CRUSTER_OK);
  chain *c = chain_new(p, NULL, 16);
  assert_int_equal(rt_pool_submit(p, &c->links[0].job), CRUSTER_OK);
  rt_pool_shutdown(p); /* the chain keeps blocking workers during the drain */
  assert_int_equal(latch_get(&c->finished), 16);
  assert_int_equal(atomic_load(&c->submit_failures), 0);
  rt_pool_free(p);
  chain_free(c);
}

static void noop_job(void *arg) { (void)arg; }

static void submit_after_shutdown_is_refused(void **state) {
  (void)state;
  rt_pool *p;
  assert_int_equal(rt_pool_new(2, 4, &quiet, NULL, &p), CRUSTER_OK);
  rt_job j = {noop_job, NULL, NULL};
  assert_int_equal(rt_pool_submit(p, &j), CRUSTER_OK);
  rt_pool_shutdown(p);
  rt_pool_shutdown(p); /* idempotent */
  rt_job k = {noop_job, NULL, NULL};
  assert_int_equal(rt_pool_submit(p, &k), CRUSTER_E_SHUTTING_DOWN);
  rt_pool_free(p);
}

static void concurrent_shutdown_main(void *arg) { rt_pool_shutdown(arg); }

static void concurrent_shutdowns_all_return(void **state) {
  (void)state;
  rt_pool *p;
  assert_int_equal(rt_pool_new(2, 4, &quiet, NULL, &p), CRUSTER_OK);
  rt_job jobs[100];
  for (int i = 0; i < 100; i++) {
    jobs[i] = (rt_job){noop_job, NULL, NULL};
    assert_int_equal(rt_pool_submit(p, &jobs[i]), CRUSTER_OK);
  }
  uv_thread_t th[3];
  for (int i = 0; i < 3; i++)
    assert_int_equal(uv_thread_create(&th[i], concurrent_shutdown_main, p), 0);
  rt_pool_shutdown(p);
  for (int i = 0; i < 3; i++) uv_thread_join(&th[i]);
  rt_job k = {noop_job, NULL, NULL};
  assert_int_equal(rt_pool_submit(p, &k), CRUSTER_E_SHUTTING_DOWN);
  rt_pool_free(p);
}

/* ---- identity and misuse ------------------------------------------------------ */

typedef struct ident_ctx {
  rt_pool *own, *other;
  atomic_int in_own, in_other;
  latch done;
} ident_ctx;

static void ident_job(void *arg) {
  ident_ctx *c = arg;
  atomic_store(&c->in_own, rt_pool_is_worker(c->own));
  atomic_store(&c->in_other, rt_pool_is_worker(c->other));
  latch_add(&c->done);
}

static void is_worker_only_inside_jobs_of_that_pool(void **state) {
  (void)state;
  ident_ctx c;
  memset(&c, 0, sizeof c);
  latch_init(&c.done);
  assert_int_equal(rt_pool_new(1, 2, &quiet, NULL, &c.own), CRUSTER_OK);
  assert_int_equal(rt_pool_new(1, 2, &quiet, NULL, &c.other), CRUSTER_OK);
  atomic_init(&c.in_own, -1);
  atomic_init(&c.in_other, -1);
  assert_false(rt_pool_is_worker(c.own));
  assert_false(rt_pool_is_worker(c.other));
  rt_job j = {ident_job, &c, NULL};
  assert_int_equal(rt_pool_submit(c.own, &j), CRUSTER_OK);
  assert_true(latch_wait(&c.done, 1));
  assert_int_equal(atomic_load(&c.in_own), 1);
  assert_int_equal(atomic_load(&c.in_other), 0);
  assert_false(rt_pool_is_worker(NULL));
  rt_pool_free(c.own);
  rt_pool_free(c.other);
  latch_destroy(&c.done);
}

static void count_latch_job(void *arg) { latch_add(arg); }

static void block_enter_outside_a_worker_is_a_noop(void **state) {
  (void)state;
  cruster_metrics *m = core_metrics_new();
  rt_pool *p;
  assert_int_equal(rt_pool_new(1, 4, &quiet, m, &p), CRUSTER_OK);
  rt_pool_block_enter(p);
  assert_true(gauge_value(m, "cluster_worker_threads_blocked") == 0);
  latch l;
  latch_init(&l);
  rt_job j = {count_latch_job, &l, NULL};
  assert_int_equal(rt_pool_submit(p, &j), CRUSTER_OK);
  assert_true(latch_wait(&l, 1));
  assert_true(gauge_value(m, "cluster_worker_threads") == 1);
  rt_pool_block_leave(p);
  rt_pool_block_leave(p); /* unmatched leave: also a no-op */
  assert_true(gauge_value(m, "cluster_worker_threads_blocked") == 0);
  rt_pool_free(p);
  latch_destroy(&l);
  core_metrics_free(m);
}

typedef struct nest_ctx {
  rt_pool *p;
  cruster_metrics *m;
  double seen[4]; /* blocked gauge after enter, enter, leave, leave */
  latch done;
} nest_ctx;

static void nest_job(void *arg) {
  nest_ctx *c = arg;
  rt_pool_block_enter(c->p);
  c->seen[0] = gauge_value(c->m, "cluster_worker_threads_blocked");
  rt_pool_block_enter(c->p);
  c->seen[1] = gauge_value(c->m, "cluster_worker_threads_blocked");
  rt_pool_block_leave(c->p);
  c->seen[2] = gauge_value(c->m, "cluster_worker_threads_blocked");
  rt_pool_block_leave(c->p);
  c->seen[3] = gauge_value(c->m, "cluster_worker_threads_blocked");
  latch_add(&c->done);
}

static void nested_block_counts_the_worker_once(void **state) {
  (void)state;
  nest_ctx c;
  memset(&c, 0, sizeof c);
  latch_init(&c.done);
  c.m = core_metrics_new();
  assert_int_equal(rt_pool_new(1, 4, &quiet, c.m, &c.p), CRUSTER_OK);
  rt_job j = {nest_job, &c, NULL};
  assert_int_equal(rt_pool_submit(c.p, &j), CRUSTER_OK);
  assert_true(latch_wait(&c.done, 1));
  rt_pool_free(c.p); /* joins the worker: its writes are visible below */
  assert_true(c.seen[0] == 1);
  assert_true(c.seen[1] == 1);
  assert_true(c.seen[2] == 1);
  assert_true(c.seen[3] == 0);
  core_metrics_free(c.m);
  latch_destroy(&c.done);
}

static void invalid_arguments_are_rejected(void **state) {
  (void)state;
  rt_pool *p = (rt_pool *)&p;
  assert_int_equal(rt_pool_new(0, 4, &quiet, NULL, &p), CRUSTER_E_INVALID_ARGUMENT);
  assert_null(p);
  assert_int_equal(rt_pool_new(3, 2, &quiet, NULL, &p), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(rt_pool_new(1, 1, &quiet, NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(rt_pool_new(1, 1, &quiet, NULL, &p), CRUSTER_OK);
  rt_job nofn = {NULL, NULL, NULL};
  assert_int_equal(rt_pool_submit(p, &nofn), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(rt_pool_submit(p, NULL), CRUSTER_E_INVALID_ARGUMENT);
  rt_pool_free(p);
  rt_pool_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fifo_order_with_one_thread),
      cmocka_unit_test(jobs_from_many_submitters_run_exactly_once),
      cmocka_unit_test(chain_deeper_than_pool_completes),
      cmocka_unit_test(compensation_respects_max_threads),
      cmocka_unit_test(extra_workers_exit_after_blocking_ends),
      cmocka_unit_test(shutdown_drains_queued_jobs_and_jobs_they_submit),
      cmocka_unit_test(shutdown_completes_while_workers_block_on_queued_jobs),
      cmocka_unit_test(submit_after_shutdown_is_refused),
      cmocka_unit_test(concurrent_shutdowns_all_return),
      cmocka_unit_test(is_worker_only_inside_jobs_of_that_pool),
      cmocka_unit_test(block_enter_outside_a_worker_is_a_noop),
      cmocka_unit_test(nested_block_counts_the_worker_once),
      cmocka_unit_test(invalid_arguments_are_rejected),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
