/* Runner health, the parts that need no cluster: the health loop's decision
 * (behaviour.md §3.7: never zero healthy runners, counting this pass's
 * decisions; no fit runner -> this one stays healthy), the PingReply that
 * carries a runner's progress, and the worker pool's progress reading.
 * The cluster behaviour is tests/integration/test_cluster_health.c. */
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
#include "sharding/cluster.h"
#include "transport/wire.h"

#define DEADLINE_MS 60000

/* healthy, alive, stalled, self */
#define FIT(h) {h, 1, 0, 0}
#define DEAD(h) {h, 0, 0, 0}
#define STALLED(h) {h, 1, 1, 0}

static void decide(const sh_health_in *in, size_t n, const int *want, size_t want_writes,
                   size_t want_kept) {
  int out[16];
  size_t kept = 99;
  assert_true(n <= 16);
  size_t writes = sh_health_decide(in, n, out, &kept);
  for (size_t i = 0; i < n; i++)
    if (out[i] != want[i]) fail_msg("runner %zu: decision %d, want %d", i, out[i], want[i]);
  assert_int_equal(writes, want_writes);
  assert_int_equal(kept, want_kept);
}

static void all_fit_nothing_written(void **state) {
  (void)state;
  sh_health_in in[3] = {{1, 1, 0, 1}, FIT(1), FIT(1)};
  int want[3] = {-1, -1, -1};
  decide(in, 3, want, 0, 0);
}

static void dead_and_stalled_are_marked_unhealthy(void **state) {
  (void)state;
  sh_health_in in[4] = {{1, 1, 0, 1}, DEAD(1), STALLED(1), FIT(1)};
  int want[4] = {-1, 0, 0, -1};
  decide(in, 4, want, 2, 0);
}

static void recovered_are_marked_healthy(void **state) {
  (void)state;
  sh_health_in in[3] = {{1, 1, 0, 1}, FIT(0), DEAD(0)};
  int want[3] = {-1, 1, -1};
  decide(in, 3, want, 1, 0);
}

static void never_zero_healthy(void **state) {
  (void)state;
  /* Two healthy, both unfit, the checker fit but listed unhealthy: the
   * healthy mark counts first, so both can go. */
  sh_health_in a[3] = {{0, 1, 0, 1}, DEAD(1), STALLED(1)};
  int want_a[3] = {1, 0, 0};
  decide(a, 3, want_a, 3, 0);
  /* The only healthy one is dead, nobody else fit but the checker is
   * stalled: the checker becomes healthy (no fit runner), the dead one
   * then goes. */
  sh_health_in b[2] = {{0, 1, 1, 1}, DEAD(1)};
  int want_b[2] = {1, 0};
  decide(b, 2, want_b, 2, 0);
  /* Without this runner in the list: the last healthy one is kept. */
  sh_health_in c[2] = {DEAD(1), DEAD(0)};
  int want_c[2] = {-1, -1};
  decide(c, 2, want_c, 0, 1);
  /* Two healthy and unfit, no self: the first goes, the second is kept. */
  sh_health_in d[3] = {DEAD(1), STALLED(1), DEAD(0)};
  int want_d[3] = {0, -1, -1};
  decide(d, 3, want_d, 1, 1);
}

static void no_fit_runner_keeps_self(void **state) {
  (void)state;
  /* Every runner unfit, this one stalled and healthy: it stays, the other
   * healthy one goes (one healthy runner remains: this one). */
  sh_health_in in[3] = {DEAD(1), {1, 1, 1, 1}, DEAD(0)};
  int want[3] = {0, -1, -1};
  decide(in, 3, want, 1, 1);
  /* A single stalled runner: kept. */
  sh_health_in one[1] = {{1, 1, 1, 1}};
  int want_one[1] = {-1};
  decide(one, 1, want_one, 0, 1);
  sh_health_in none[1] = {{0, 1, 1, 1}};
  decide(none, 0, want_one, 0, 0);
}

static void ping_reply_round_trip(void **state) {
  (void)state;
  tp_health h = {1, 1234, 7}, got;
  size_t n = 0;
  uint8_t *buf = tp_wire_encode_ping_reply(&h, &n);
  assert_non_null(buf);
  char why[200];
  assert_int_equal(tp_wire_decode_ping_reply(buf, n, &got, why, sizeof why), CRUSTER_OK);
  assert_int_equal(got.stalled, 1);
  assert_int_equal(got.waiting_ms, 1234);
  assert_int_equal(got.queued, 7);
  free(buf);
  /* An empty reply (an older runner): not stalled. */
  got.stalled = 5;
  assert_int_equal(tp_wire_decode_ping_reply((const uint8_t *)"", 0, &got, why, sizeof why), CRUSTER_OK);
  assert_int_equal(got.stalled, 0);
  /* Garbage and negative counts are refused. */
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff};
  assert_int_equal(tp_wire_decode_ping_reply(junk, sizeof junk, &got, why, sizeof why), CRUSTER_E_MALFORMED);
  tp_health neg = {0, -5, 0};
  buf = tp_wire_encode_ping_reply(&neg, &n);
  assert_int_equal(tp_wire_decode_ping_reply(buf, n, &got, why, sizeof why), CRUSTER_E_MALFORMED);
  free(buf);
}

/* ---- the pool's progress ---- */

typedef struct gate {
  uv_mutex_t mu;
  uv_cond_t cv;
  int open, entered, done;
} gate;

static void gated(void *arg) {
  gate *g = arg;
  uv_mutex_lock(&g->mu);
  g->entered++;
  uv_cond_broadcast(&g->cv);
  while (!g->open) uv_cond_wait(&g->cv, &g->mu);
  g->done++;
  uv_cond_broadcast(&g->cv);
  uv_mutex_unlock(&g->mu);
}

static int gate_wait(gate *g, int *field, int n) {
  uint64_t end = uv_hrtime() + (uint64_t)DEADLINE_MS * 1000000u;
  uv_mutex_lock(&g->mu);
  while (*field < n && uv_hrtime() < end) uv_cond_timedwait(&g->cv, &g->mu, 10000000u);
  int ok = *field >= n;
  uv_mutex_unlock(&g->mu);
  return ok;
}

static void pool_progress(void **state) {
  (void)state;
  static const core_logger quiet = {NULL, NULL, CRUSTER_LOG_OFF};
  rt_pool *p = NULL;
  assert_int_equal(rt_pool_new(1, 1, &quiet, NULL, &p), CRUSTER_OK);
  int64_t q = -1, w = -1;
  rt_pool_progress(p, &q, &w);
  assert_int_equal(q, 0); /* idle: nothing waits */
  assert_int_equal(w, 0);
  gate g;
  memset(&g, 0, sizeof g);
  uv_mutex_init(&g.mu);
  uv_cond_init(&g.cv);
  rt_job jobs[3];
  for (int i = 0; i < 3; i++) {
    jobs[i].fn = gated;
    jobs[i].arg = &g;
    assert_int_equal(rt_pool_submit(p, &jobs[i]), CRUSTER_OK);
  }
  assert_true(gate_wait(&g, &g.entered, 1));
  /* The one worker hangs; two jobs wait, and the wait only grows. */
  uv_sleep(50);
  rt_pool_progress(p, &q, &w);
  assert_int_equal(q, 2);
  assert_true(w >= 50);
  uv_sleep(20);
  int64_t w2 = 0;
  rt_pool_progress(p, NULL, &w2);
  assert_true(w2 >= w + 20);
  uv_mutex_lock(&g.mu);
  g.open = 1;
  uv_cond_broadcast(&g.cv);
  uv_mutex_unlock(&g.mu);
  assert_true(gate_wait(&g, &g.done, 3));
  rt_pool_progress(p, &q, &w);
  assert_int_equal(q, 0);
  assert_int_equal(w, 0);
  rt_pool_progress(NULL, &q, &w);
  assert_int_equal(q, 0);
  rt_pool_free(p);
  uv_cond_destroy(&g.cv);
  uv_mutex_destroy(&g.mu);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(all_fit_nothing_written),
      cmocka_unit_test(dead_and_stalled_are_marked_unhealthy),
      cmocka_unit_test(recovered_are_marked_healthy),
      cmocka_unit_test(never_zero_healthy),
      cmocka_unit_test(no_fit_runner_keeps_self),
      cmocka_unit_test(ping_reply_round_trip),
      cmocka_unit_test(pool_progress),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
