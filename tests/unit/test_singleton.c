/* Singletons (cruster/singleton.h) in single-node mode with memory storage:
 * start, restart after a return, backoff after failures, cancellation by
 * shard loss and by stop (clean-up before stop returns), registration
 * errors. Timing is never asserted as an upper bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "runner/runner_internal.h"
#include "test_support.h"

#define MAX_STARTS 64

typedef struct sg_probe {
  atomic_int starts, returns, cleanups, concurrent, max_concurrent;
  int64_t start_ms[MAX_STARTS];
  int64_t failures_seen[MAX_STARTS];
  int fail_first; /* return a failure from the first n runs */
  int mode;       /* 0: return at once; 1: wait for cancellation */
} sg_probe;

static int probe_fn(void *user, cruster_singleton_ctx *ctx) {
  sg_probe *p = user;
  int n = atomic_fetch_add(&p->starts, 1);
  int c = atomic_fetch_add(&p->concurrent, 1) + 1;
  if (c > atomic_load(&p->max_concurrent)) atomic_store(&p->max_concurrent, c);
  if (n < MAX_STARTS) {
    p->start_ms[n] = ts_mono_ms();
    p->failures_seen[n] = cruster_singleton_failures(ctx);
  }
  int rc = CRUSTER_OK;
  if (p->mode == 1) {
    while (!cruster_singleton_wait(ctx, 60000)) {
    }
    ts_sleep_ms(20); /* some clean-up that takes time */
    atomic_fetch_add(&p->cleanups, 1);
  } else if (n < p->fail_first) {
    rc = -1000;
  }
  atomic_fetch_sub(&p->concurrent, 1);
  atomic_fetch_add(&p->returns, 1);
  return rc;
}

static cruster_runtime *new_rt(const char *extra, int start) {
  cruster_config *cfg = ts_config(extra);
  cruster_storage *st = NULL;
  cruster_storage_memory_new(&st, NULL);
  cruster_runtime *rt = NULL;
  assert_int_equal(cruster_runtime_new(cfg, st, NULL, &rt, NULL), CRUSTER_OK);
  cruster_config_free(cfg);
  if (start) assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  return rt;
}

static void test_runs_once_managed_stop(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("entity_termination_timeout=60s", 0);
  sg_probe p;
  memset(&p, 0, sizeof(p));
  p.mode = 1;
  /* Registered before start: starts with it. */
  assert_int_equal(cruster_runtime_register_singleton(rt, "leader", probe_fn, &p, NULL, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&p.starts), 0);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&p.starts, 1));
  assert_true(ts_metric(rt, "cluster_singletons", NULL) == 1);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  /* Its clean-up ran before stop returned, and it ran once. */
  assert_int_equal(atomic_load(&p.cleanups), 1);
  assert_int_equal(atomic_load(&p.starts), 1);
  assert_int_equal(atomic_load(&p.max_concurrent), 1);
  cruster_runtime_free(rt);
}

static void test_restarts_after_return(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=5ms", 1);
  sg_probe p;
  memset(&p, 0, sizeof(p));
  assert_int_equal(cruster_runtime_register_singleton(rt, "ticker", probe_fn, &p, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&p.returns, 4));
  assert_true(ts_metric(rt, "cluster_singleton_restarts_total", NULL) >= 3);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  int n = atomic_load(&p.starts);
  assert_int_equal(atomic_load(&p.returns), n); /* every run returned before stop did */
  assert_int_equal(atomic_load(&p.max_concurrent), 1);
  for (int i = 1; i < n && i < MAX_STARTS; i++) {
    assert_true(p.start_ms[i] - p.start_ms[i - 1] >= 5); /* base after a success */
    assert_int_equal(p.failures_seen[i], 0);
  }
  cruster_runtime_free(rt);
}

static void test_backoff_grows(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=4ms", 1);
  sg_probe p;
  memset(&p, 0, sizeof(p));
  p.fail_first = 5;
  assert_int_equal(cruster_runtime_register_singleton(rt, "flaky", probe_fn, &p, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&p.starts, 7));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  /* Runs 0..4 fail: run i+1 starts at least 4 * 2^i ms after run i; its
   * context says how many failures preceded it. Run 5 succeeds: run 6
   * follows after the base again. */
  for (int i = 0; i < 5; i++) {
    assert_int_equal(p.failures_seen[i + 1], i + 1);
    assert_true(p.start_ms[i + 1] - p.start_ms[i] >= (int64_t)4 << i);
  }
  assert_int_equal(p.failures_seen[6], 0);
  assert_true(p.start_ms[6] - p.start_ms[5] >= 4);
  assert_true(ts_metric(rt, "cluster_singleton_failures_total", NULL) == 5);
  cruster_runtime_free(rt);
}

/* Loop thread: a test hook moving the ownership of one shard. */
typedef struct own_cmd {
  rt_sync s;
  cruster_runtime *rt;
  int32_t shard;
  int owned;
} own_cmd;

static void own_on_loop(void *ud, rt_cmd *cmd) {
  (void)ud;
  own_cmd *c = (own_cmd *)cmd;
  sh_own_set(&c->rt->sh, "default", c->shard, c->owned);
  rt_sync_done(&c->s, CRUSTER_OK);
}

static void set_owned(cruster_runtime *rt, int32_t shard, int owned) {
  own_cmd c;
  memset(&c, 0, sizeof(c));
  c.rt = rt;
  c.shard = shard;
  c.owned = owned;
  assert_int_equal(rt_run_sync(&rt->loop, &c.s, own_on_loop, rt, NULL), CRUSTER_OK);
}

static void test_shard_loss_cancels(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=1ms", 1);
  sg_probe p;
  memset(&p, 0, sizeof(p));
  p.mode = 1;
  int32_t shard = cruster_shard_for("watcher", 7, 300);
  assert_int_equal(cruster_runtime_register_singleton(rt, "watcher", probe_fn, &p, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&p.starts, 1));
  set_owned(rt, shard, 0);
  assert_true(ts_wait_ge(&p.cleanups, 1));
  assert_true(ts_wait_ge(&p.returns, 1));
  /* Not owned: not started again. Another shard's loss changes nothing. */
  set_owned(rt, (shard + 1) % 300, 0);
  ts_sleep_ms(20);
  assert_int_equal(atomic_load(&p.starts), 1);
  /* Gained again: it starts again. */
  set_owned(rt, shard, 1);
  assert_true(ts_wait_ge(&p.starts, 2));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&p.cleanups), 2);
  assert_int_equal(atomic_load(&p.max_concurrent), 1);
  cruster_runtime_free(rt);
}

static void test_registration_errors(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt(NULL, 1);
  sg_probe p;
  memset(&p, 0, sizeof(p));
  p.mode = 1;
  cruster_error *e = NULL;
  assert_int_equal(cruster_runtime_register_singleton(NULL, "x", probe_fn, &p, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", NULL, &p, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), "fn"));
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_singleton(rt, "", probe_fn, &p, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), "singleton name"));
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_singleton(rt, NULL, probe_fn, &p, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  char longname[CRUSTER_MAX_NAME_LEN + 2];
  memset(longname, 'a', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = 0;
  assert_int_not_equal(cruster_runtime_register_singleton(rt, longname, probe_fn, &p, NULL, &e),
                       CRUSTER_OK);
  assert_non_null(strstr(cruster_error_message(e), "singleton name"));
  cruster_error_free(e);
  cruster_singleton_opts o = CRUSTER_SINGLETON_OPTS_INIT;
  o.group = "nope";
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", probe_fn, &p, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), "nope"));
  cruster_error_free(e);
  o.size = 3;
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", probe_fn, &p, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  /* Same name: refused, the first keeps running. */
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", probe_fn, &p, NULL, NULL), CRUSTER_OK);
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", probe_fn, &p, NULL, &e),
                   CRUSTER_E_ALREADY_EXISTS);
  assert_non_null(strstr(cruster_error_message(e), "\"x\""));
  cruster_error_free(e);
  assert_true(ts_wait_ge(&p.starts, 1));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&p.starts), 1);
  assert_int_equal(cruster_runtime_register_singleton(rt, "y", probe_fn, &p, NULL, &e),
                   CRUSTER_E_SHUTTING_DOWN);
  cruster_error_free(e);
  cruster_runtime_free(rt);
}

/* A singleton holds a worker: with one worker and two singletons, an
 * entity's handler still runs (the pool grows for it). */
static void echo(void *u, cruster_request *req) {
  (void)u;
  cruster_request_reply(req, "ok", 2);
}

static void test_does_not_starve_entities(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("worker_threads=1;worker_threads_max=1", 0);
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, echo, NULL);
  assert_int_equal(cruster_runtime_register_entity(rt, d, NULL), CRUSTER_OK);
  cruster_entity_def_free(d);
  sg_probe p1, p2;
  memset(&p1, 0, sizeof(p1));
  memset(&p2, 0, sizeof(p2));
  p1.mode = p2.mode = 1;
  assert_int_equal(cruster_runtime_register_singleton(rt, "a", probe_fn, &p1, NULL, NULL), CRUSTER_OK);
  assert_int_equal(cruster_runtime_register_singleton(rt, "b", probe_fn, &p2, NULL, NULL), CRUSTER_OK);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&p1.starts, 1));
  assert_true(ts_wait_ge(&p2.starts, 1));
  char *out = NULL;
  assert_int_equal(send_str(rt, "Echo", "1", "echo", "hi", NULL, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "ok");
  cruster_free(out);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&p1.cleanups) + atomic_load(&p2.cleanups), 2);
  cruster_runtime_free(rt);
}

int main(void) {
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_runs_once_managed_stop),
      cmocka_unit_test(test_restarts_after_return),
      cmocka_unit_test(test_backoff_grows),
      cmocka_unit_test(test_shard_loss_cancels),
      cmocka_unit_test(test_registration_errors),
      cmocka_unit_test(test_does_not_starve_entities),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
