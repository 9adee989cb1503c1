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
  atomic_int cancels;   /* runs that saw their cancellation */
  atomic_int release;   /* modes 2 and 3: may return */
  struct sg_probe *old; /* a replaced singleton's probe: snapshot at start */
  int old_cleanups_at_start, old_returns_at_start;
  atomic_int *both, *both_max; /* concurrency across probes */
  int64_t start_ms[MAX_STARTS];
  int64_t failures_seen[MAX_STARTS];
  int fail_first; /* return a failure from the first n runs */
  int mode;       /* 0: return at once; 1: wait for cancellation; 2: unmanaged,
                     wait for release; 3: wait for cancellation, then release */
} sg_probe;

static int probe_fn(void *user, cruster_singleton_ctx *ctx) {
  sg_probe *p = user;
  if (p->both) {
    int b = atomic_fetch_add(p->both, 1) + 1;
    if (b > atomic_load(p->both_max)) atomic_store(p->both_max, b);
  }
  if (p->old && atomic_load(&p->starts) == 0) {
    p->old_cleanups_at_start = atomic_load(&p->old->cleanups);
    p->old_returns_at_start = atomic_load(&p->old->returns);
  }
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
    atomic_fetch_add(&p->cancels, 1);
    ts_sleep_ms(20); /* some clean-up that takes time */
    atomic_fetch_add(&p->cleanups, 1);
  } else if (p->mode == 2) {
    while (!atomic_load(&p->release)) ts_sleep_ms(2); /* never asks: unmanaged */
  } else if (p->mode == 3) {
    while (!cruster_singleton_wait(ctx, 60000)) {
    }
    atomic_fetch_add(&p->cancels, 1);
    while (!atomic_load(&p->release)) ts_sleep_ms(2); /* a clean-up that waits */
    atomic_fetch_add(&p->cleanups, 1);
  } else if (n < p->fail_first) {
    rc = -1000;
  }
  if (p->both) atomic_fetch_sub(p->both, 1);
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
  /* A bad re-registration of a registered name replaces nothing. */
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", probe_fn, &p, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&p.starts, 1));
  o.size = sizeof(o);
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", probe_fn, &p, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_singleton(rt, "x", NULL, &p, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&p.starts), 1);
  assert_int_equal(atomic_load(&p.cancels), 1);
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

/* ---- replacement by a same-named registration (behaviour.md §8) ---- */

static void probe_pair(sg_probe *a, sg_probe *b, atomic_int *both, atomic_int *both_max) {
  memset(a, 0, sizeof(*a));
  memset(b, 0, sizeof(*b));
  atomic_store(both, 0);
  atomic_store(both_max, 0);
  a->both = b->both = both;
  a->both_max = b->both_max = both_max;
  b->old = a;
}

/* A managed function replaced while it runs: it is cancelled once, its
 * clean-up is done before the new function's first run, it never runs
 * again; the new one starts without a backoff (base 300 s). */
static void test_replace_running_managed(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=300s;entity_termination_timeout=60s", 1);
  sg_probe a, b;
  atomic_int both, both_max;
  probe_pair(&a, &b, &both, &both_max);
  a.mode = b.mode = 1;
  assert_int_equal(cruster_runtime_register_singleton(rt, "r", probe_fn, &a, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&a.starts, 1));
  assert_int_equal(cruster_runtime_register_singleton(rt, "r", probe_fn, &b, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&b.starts, 1));
  assert_int_equal(b.old_cleanups_at_start, 1);
  assert_int_equal(b.old_returns_at_start, 1);
  assert_true(ts_metric(rt, "cluster_singletons", NULL) == 1);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&a.starts), 1);
  assert_int_equal(atomic_load(&a.cancels), 1);
  assert_int_equal(atomic_load(&a.cleanups), 1);
  assert_int_equal(atomic_load(&b.starts), 1);
  assert_int_equal(atomic_load(&b.cleanups), 1); /* stopped by the stop */
  assert_int_equal(atomic_load(&both_max), 1);
  /* A replacement is not a restart. */
  assert_true(ts_metric(rt, "cluster_singleton_restarts_total", NULL) == 0);
  assert_true(ts_metric(rt, "cluster_singleton_runs_total", NULL) == 2);
  cruster_runtime_free(rt);
}

/* An unmanaged function is not aborted (a thread cannot be): the new one
 * waits until it has returned. */
static void test_replace_running_unmanaged(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=300s", 1);
  sg_probe a, b;
  atomic_int both, both_max;
  probe_pair(&a, &b, &both, &both_max);
  a.mode = 2;
  b.mode = 1;
  assert_int_equal(cruster_runtime_register_singleton(rt, "u", probe_fn, &a, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&a.starts, 1));
  assert_int_equal(cruster_runtime_register_singleton(rt, "u", probe_fn, &b, NULL, NULL), CRUSTER_OK);
  ts_sleep_ms(50);
  assert_int_equal(atomic_load(&b.starts), 0); /* a still runs */
  atomic_store(&a.release, 1);
  assert_true(ts_wait_ge(&b.starts, 1));
  assert_int_equal(b.old_returns_at_start, 1);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&a.starts), 1);
  assert_int_equal(atomic_load(&b.starts), 1);
  assert_int_equal(atomic_load(&both_max), 1);
  cruster_runtime_free(rt);
}

/* Replaced twice while the first still cleans up: the middle registration
 * never runs, the last one starts after the first returned. */
static void test_replace_twice_while_cleaning_up(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=300s", 1);
  sg_probe a, b, c;
  atomic_int both, both_max;
  probe_pair(&a, &b, &both, &both_max);
  memcpy(&c, &b, sizeof(c));
  a.mode = 3;
  b.mode = c.mode = 1;
  assert_int_equal(cruster_runtime_register_singleton(rt, "t", probe_fn, &a, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&a.starts, 1));
  assert_int_equal(cruster_runtime_register_singleton(rt, "t", probe_fn, &b, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&a.cancels, 1)); /* cleaning up, held */
  assert_int_equal(cruster_runtime_register_singleton(rt, "t", probe_fn, &c, NULL, NULL), CRUSTER_OK);
  ts_sleep_ms(20);
  assert_int_equal(atomic_load(&c.starts), 0);
  atomic_store(&a.release, 1);
  assert_true(ts_wait_ge(&c.starts, 1));
  assert_int_equal(c.old_cleanups_at_start, 1);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&a.starts), 1);
  assert_int_equal(atomic_load(&a.cancels), 1);
  assert_int_equal(atomic_load(&b.starts), 0);
  assert_int_equal(atomic_load(&c.starts), 1);
  assert_int_equal(atomic_load(&both_max), 1);
  cruster_runtime_free(rt);
}

/* Replacement while the shard is not owned: before start (only the last
 * registration runs at start), and after a shard loss (the new one starts
 * when the shard is gained, the old one never again). */
static void test_replace_not_owned(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("singleton_crash_backoff_base=1ms", 0);
  sg_probe a, b;
  atomic_int both, both_max;
  probe_pair(&a, &b, &both, &both_max);
  a.mode = b.mode = 1;
  assert_int_equal(cruster_runtime_register_singleton(rt, "n", probe_fn, &a, NULL, NULL), CRUSTER_OK);
  assert_int_equal(cruster_runtime_register_singleton(rt, "n", probe_fn, &b, NULL, NULL), CRUSTER_OK);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&b.starts, 1));
  assert_int_equal(atomic_load(&a.starts), 0);

  sg_probe c, d;
  atomic_int both2, both2_max;
  probe_pair(&c, &d, &both2, &both2_max);
  c.mode = d.mode = 1;
  int32_t shard = cruster_shard_for("w", 1, 300);
  assert_int_equal(cruster_runtime_register_singleton(rt, "w", probe_fn, &c, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&c.starts, 1));
  set_owned(rt, shard, 0);
  assert_true(ts_wait_ge(&c.returns, 1));
  assert_int_equal(cruster_runtime_register_singleton(rt, "w", probe_fn, &d, NULL, NULL), CRUSTER_OK);
  ts_sleep_ms(20);
  assert_int_equal(atomic_load(&d.starts), 0); /* not owned */
  set_owned(rt, shard, 1);
  assert_true(ts_wait_ge(&d.starts, 1));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&a.starts), 0);
  assert_int_equal(atomic_load(&b.starts), 1);
  assert_int_equal(atomic_load(&c.starts), 1);
  assert_int_equal(atomic_load(&c.cancels), 1);
  assert_int_equal(atomic_load(&d.starts), 1);
  cruster_runtime_free(rt);
}

/* A replacement in another shard group moves the singleton to that group's
 * shard; the pool does not grow for a replacement. */
static void test_replace_other_group(void **state) {
  (void)state;
  cruster_runtime *rt = new_rt("shard_groups=default,other;singleton_crash_backoff_base=300s", 1);
  sg_probe a, b;
  atomic_int both, both_max;
  probe_pair(&a, &b, &both, &both_max);
  a.mode = b.mode = 1;
  assert_int_equal(cruster_runtime_register_singleton(rt, "g", probe_fn, &a, NULL, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&a.starts, 1));
  cruster_singleton_opts o = CRUSTER_SINGLETON_OPTS_INIT;
  o.group = "other";
  assert_int_equal(cruster_runtime_register_singleton(rt, "g", probe_fn, &b, &o, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&b.starts, 1));
  assert_int_equal(b.old_cleanups_at_start, 1);
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&a.starts), 1);
  assert_int_equal(atomic_load(&b.starts), 1);
  assert_int_equal(atomic_load(&both_max), 1);
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
      cmocka_unit_test(test_replace_running_managed),
      cmocka_unit_test(test_replace_running_unmanaged),
      cmocka_unit_test(test_replace_twice_while_cleaning_up),
      cmocka_unit_test(test_replace_not_owned),
      cmocka_unit_test(test_replace_other_group),
      cmocka_unit_test(test_does_not_starve_entities),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
