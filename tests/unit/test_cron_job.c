/* ClusterCron (cruster/cron_job.h) with memory storage: slots in order,
 * each once, with distinct ids; the slot history; the missed-slot policies
 * after downtime and skip_if_older_than (a second runtime on the same
 * storage object stands for a restart); registration errors. Waits poll for
 * conditions; no assertion depends on timing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "core/util.h"
#include "storage/storage_internal.h"
#include "storage/wf_storage.h"
#include "test_support.h"

#define MAX_SLOTS 256

typedef struct slots {
  uv_mutex_t mu;
  int n;
  int64_t slot[MAX_SLOTS];
  char id[MAX_SLOTS][96];
  atomic_int count;
} slots;

static int on_slot(void *user, int64_t slot_ms, const char *slot_id) {
  slots *s = user;
  uv_mutex_lock(&s->mu);
  if (s->n < MAX_SLOTS) {
    s->slot[s->n] = slot_ms;
    snprintf(s->id[s->n], sizeof(s->id[0]), "%s", slot_id);
    s->n++;
  }
  uv_mutex_unlock(&s->mu);
  atomic_fetch_add(&s->count, 1);
  return CRUSTER_OK;
}

static cruster_runtime *new_rt(cruster_storage *st) {
  cruster_config *cfg = ts_config(NULL);
  cruster_runtime *rt = NULL;
  assert_int_equal(cruster_runtime_new(cfg, st, NULL, &rt, NULL), CRUSTER_OK);
  cruster_config_free(cfg);
  return rt;
}

/* A storage object that outlives runtimes: a borrowed view of `real`. */
static void noop_destroy(cruster_storage *s) { free(s); }
static st_ops borrowed_ops;
static cruster_storage *borrow(cruster_storage *real) {
  borrowed_ops = *real->ops;
  borrowed_ops.destroy = noop_destroy;
  cruster_storage *s = calloc(1, sizeof(*s));
  s->ops = &borrowed_ops;
  s->impl = real->impl;
  return s;
}

static void test_every_second(void **state) {
  (void)state;
  cruster_storage *st = NULL;
  cruster_storage_memory_new(&st, NULL);
  cruster_runtime *rt = new_rt(st);
  slots s;
  memset(&s, 0, sizeof(s));
  uv_mutex_init(&s.mu);
  assert_int_equal(cruster_runtime_register_cron_job(rt, "tick", "* * * * * *", on_slot, &s, NULL, NULL),
                   CRUSTER_OK);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&s.count, 3));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  int n = atomic_load(&s.count);
  for (int i = 0; i < n; i++) {
    assert_int_equal(s.slot[i] % 1000, 0);
    if (i > 0) assert_true(s.slot[i] > s.slot[i - 1]);
    char want[96];
    snprintf(want, sizeof(want), "tick/%lld", (long long)s.slot[i]);
    assert_string_equal(s.id[i], want);
  }
  /* The history: every slot, newest first, done. */
  cruster_cron_slot *v = NULL;
  size_t k = 0;
  assert_int_equal(cruster_cron_slots(rt, "tick", 100, &v, &k, NULL), CRUSTER_OK);
  assert_int_equal(k, (size_t)n);
  for (size_t i = 0; i < k; i++) {
    assert_int_equal(v[i].slot_ms, s.slot[n - 1 - (int)i]);
    assert_int_equal(v[i].state, CRUSTER_CRON_SLOT_DONE);
    assert_true(v[i].finished_ms >= v[i].started_ms);
    assert_null(v[i].error);
  }
  cruster_cron_slots_free(v, k);
  assert_true(ts_metric(rt, "cluster_singleton_runs_total", NULL) >= 1);
  cruster_runtime_free(rt);
  uv_mutex_destroy(&s.mu);
}

static int failing(void *user, int64_t slot_ms, const char *slot_id) {
  (void)slot_ms;
  (void)slot_id;
  atomic_fetch_add((atomic_int *)user, 1);
  return -1001;
}

static void test_failed_slot_recorded(void **state) {
  (void)state;
  cruster_storage *st = NULL;
  cruster_storage_memory_new(&st, NULL);
  cruster_runtime *rt = new_rt(st);
  atomic_int calls = 0;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "bad", "* * * * * ?", failing, &calls, NULL, NULL),
                   CRUSTER_OK);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&calls, 1));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  cruster_cron_slot *v = NULL;
  size_t k = 0;
  assert_int_equal(cruster_cron_slots(rt, "bad", 10, &v, &k, NULL), CRUSTER_OK);
  assert_true(k >= 1);
  assert_int_equal(v[k - 1].state, CRUSTER_CRON_SLOT_FAILED);
  assert_non_null(strstr(v[k - 1].error, "-1001"));
  cruster_cron_slots_free(v, k);
  cruster_runtime_free(rt);
}

/* Downtime: the job's history says it last ran `ago_s` seconds ago; a
 * runtime starts with policy `missed` and runs until `want` slots ran.
 * Returns the time taken just before the start (t0) and the slot of the
 * history (last); the scheduler reads the clock after t0. */
static void downtime_case(int32_t missed, int64_t skip_ms, int64_t ago_s, int want, slots *s,
                          int64_t *t0, int64_t *last) {
  cruster_storage *real = NULL;
  cruster_storage_memory_new(&real, NULL);
  const st_wf_ops *ops = NULL;
  void *impl = real->ops->wf(real, &ops);
  *last = (core_now_ms() / 1000 - ago_s) * 1000;
  int fresh = 0;
  int32_t stt = 0;
  assert_int_equal(ops->cron_begin(impl, "job", *last, *last, &fresh, &stt, NULL), CRUSTER_OK);
  assert_int_equal(fresh, 1);
  assert_int_equal(ops->cron_finish(impl, "job", *last, ST_CRON_DONE, NULL, *last, 0, NULL), CRUSTER_OK);

  cruster_runtime *rt = new_rt(borrow(real));
  memset(s, 0, sizeof(*s));
  uv_mutex_init(&s->mu);
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  o.missed = missed;
  o.skip_if_older_than_ms = skip_ms;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "job", "* * * * * *", on_slot, s, &o, NULL), CRUSTER_OK);
  *t0 = core_now_ms();
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&s->count, want));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  for (int i = 0; i < s->n; i++) {
    if (i > 0) assert_int_equal(s->slot[i], s->slot[i - 1] + 1000); /* each once, in order */
    assert_true(s->slot[i] > *last);
  }
  cruster_runtime_free(rt);
  real->ops->destroy(real);
  uv_mutex_destroy(&s->mu);
}

/* Latest: one slot at or before the scheduler's start runs -- the latest,
 * so nothing older than t0's second. (A slot <= t0 is surely a missed one;
 * live ones come after the scheduler's clock, which is >= t0.) */
static void check_latest(const slots *s, int64_t t0) {
  assert_true(s->slot[0] >= t0 / 1000 * 1000);
  int le = 0;
  for (int i = 0; i < s->n; i++) le += s->slot[i] <= t0;
  assert_true(le <= 1);
}

static void test_missed_latest(void **state) {
  (void)state;
  slots s;
  int64_t t0, last;
  downtime_case(CRUSTER_CRON_MISSED_LATEST, 0, 20, 2, &s, &t0, &last);
  check_latest(&s, t0);
}

static void test_missed_all(void **state) {
  (void)state;
  slots s;
  int64_t t0, last;
  downtime_case(CRUSTER_CRON_MISSED_ALL, 0, 20, 21, &s, &t0, &last);
  assert_int_equal(s.slot[0], last + 1000); /* from the first missed one, contiguous */
}

static void test_missed_none(void **state) {
  (void)state;
  slots s;
  int64_t t0, last;
  downtime_case(CRUSTER_CRON_MISSED_NONE, 0, 20, 2, &s, &t0, &last);
  for (int i = 0; i < s.n; i++) assert_true(s.slot[i] > t0); /* only live slots */
}

static void test_missed_all_skip_if_older(void **state) {
  (void)state;
  /* All, but slots more than 5 s old are skipped. */
  slots s;
  int64_t t0, last;
  downtime_case(CRUSTER_CRON_MISSED_ALL, 5000, 20, 3, &s, &t0, &last);
  assert_true(s.slot[0] >= t0 - 5000);
  assert_true(s.slot[0] - last >= 14000);
}

static void test_missed_latest_long_gap(void **state) {
  (void)state;
  /* Two days down, default skip (one day): the latest missed slot is
   * recent, so it runs; the walk starts a day back, not at `last`. */
  slots s;
  int64_t t0, last;
  downtime_case(CRUSTER_CRON_MISSED_LATEST, 0, 2 * 86400, 2, &s, &t0, &last);
  check_latest(&s, t0);
}

/* A slot recorded and never finished (a crash mid-handler) runs again. */
static void test_interrupted_slot_resumed(void **state) {
  (void)state;
  cruster_storage *real = NULL;
  cruster_storage_memory_new(&real, NULL);
  const st_wf_ops *ops = NULL;
  void *impl = real->ops->wf(real, &ops);
  int64_t slot = (core_now_ms() / 1000 - 3) * 1000;
  int fresh = 0;
  int32_t stt = 0;
  assert_int_equal(ops->cron_begin(impl, "job", slot, slot, &fresh, &stt, NULL), CRUSTER_OK);
  cruster_runtime *rt = new_rt(borrow(real));
  slots s;
  memset(&s, 0, sizeof(s));
  uv_mutex_init(&s.mu);
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  o.missed = CRUSTER_CRON_MISSED_NONE;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "job", "* * * * * *", on_slot, &s, &o, NULL), CRUSTER_OK);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&s.count, 2));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  assert_int_equal(s.slot[0], slot); /* first: the interrupted one */
  char want[64];
  snprintf(want, sizeof(want), "job/%lld", (long long)slot);
  assert_string_equal(s.id[0], want);
  cruster_cron_slot *v = NULL;
  size_t k = 0;
  assert_int_equal(cruster_cron_slots(rt, "job", 1000, &v, &k, NULL), CRUSTER_OK);
  assert_int_equal(v[k - 1].slot_ms, slot);
  assert_int_equal(v[k - 1].state, CRUSTER_CRON_SLOT_DONE);
  cruster_cron_slots_free(v, k);
  cruster_runtime_free(rt);
  real->ops->destroy(real);
  uv_mutex_destroy(&s.mu);
}

/* A job replaced by a same-named registration while it runs: the old
 * handler's slots and the new one's are disjoint, in order, and (both with
 * calculate_next_from_previous and missed = ALL) without a gap between
 * them; every slot is recorded done once. */
static void test_replaced_job(void **state) {
  (void)state;
  cruster_storage *st = NULL;
  cruster_storage_memory_new(&st, NULL);
  cruster_runtime *rt = new_rt(st);
  slots a, b;
  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  uv_mutex_init(&a.mu);
  uv_mutex_init(&b.mu);
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  o.calculate_next_from_previous = 1;
  o.missed = CRUSTER_CRON_MISSED_ALL;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "rj", "* * * * * *", on_slot, &a, &o, NULL),
                   CRUSTER_OK);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  assert_true(ts_wait_ge(&a.count, 2));
  assert_int_equal(cruster_runtime_register_cron_job(rt, "rj", "* * * * * ?", on_slot, &b, &o, NULL),
                   CRUSTER_OK);
  assert_true(ts_wait_ge(&b.count, 2));
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  int na = atomic_load(&a.count), nb = atomic_load(&b.count);
  assert_true(na >= 2 && nb >= 2 && na + nb <= MAX_SLOTS);
  int64_t all[MAX_SLOTS];
  for (int i = 0; i < na; i++) all[i] = a.slot[i];
  for (int i = 0; i < nb; i++) all[na + i] = b.slot[i];
  for (int i = 1; i < na + nb; i++) assert_int_equal(all[i] - all[i - 1], 1000);
  cruster_cron_slot *v = NULL;
  size_t k = 0;
  assert_int_equal(cruster_cron_slots(rt, "rj", 1000, &v, &k, NULL), CRUSTER_OK);
  assert_int_equal(k, (size_t)(na + nb));
  for (size_t i = 0; i < k; i++) {
    assert_int_equal(v[i].slot_ms, all[na + nb - 1 - (int)i]);
    assert_int_equal(v[i].state, CRUSTER_CRON_SLOT_DONE);
  }
  cruster_cron_slots_free(v, k);
  cruster_runtime_free(rt);
  uv_mutex_destroy(&a.mu);
  uv_mutex_destroy(&b.mu);
}

static void test_errors(void **state) {
  (void)state;
  cruster_storage *st = NULL;
  cruster_storage_memory_new(&st, NULL);
  cruster_runtime *rt = new_rt(st);
  slots s;
  memset(&s, 0, sizeof(s));
  cruster_error *e = NULL;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "* * * * * 8", on_slot, &s, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), "position 11"));
  assert_non_null(strstr(cruster_error_message(e), "\"j\""));
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "* * * *", on_slot, &s, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", NULL, on_slot, &s, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "* * * * * *", NULL, &s, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_runtime_register_cron_job(rt, "", "* * * * * *", on_slot, &s, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  char longname[CRUSTER_MAX_NAME_LEN];
  memset(longname, 'a', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = 0;
  assert_int_equal(cruster_runtime_register_cron_job(rt, longname, "* * * * * *", on_slot, &s, NULL, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  o.missed = 7;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "* * * * * *", on_slot, &s, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), "missed"));
  cruster_error_free(e);
  o.missed = 0;
  o.skip_if_older_than_ms = -1;
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "* * * * * *", on_slot, &s, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  o.skip_if_older_than_ms = 0;
  o.tz = "Nowhere/Atlantis";
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "* * * * * *", on_slot, &s, &o, &e),
                   CRUSTER_E_NOT_FOUND);
  cruster_error_free(e);
  /* A good one, then the same name again (a replacement, cruster_cron_job.h). */
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "0 0 0 1 1 ? 2099", on_slot, &s, NULL, NULL),
                   CRUSTER_OK);
  assert_int_equal(cruster_runtime_register_cron_job(rt, "j", "0 0 0 1 1 ? 2099", on_slot, &s, NULL, NULL),
                   CRUSTER_OK);
  size_t k = 0;
  cruster_cron_slot *v = NULL;
  assert_int_equal(cruster_cron_slots(rt, "j", 0, &v, &k, &e), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  assert_int_equal(cruster_cron_slots(rt, "j", 10, &v, &k, NULL), CRUSTER_OK);
  assert_int_equal(k, 0);
  cruster_cron_slots_free(v, k);
  cruster_runtime_free(rt);
  /* No storage: refused. */
  cruster_runtime *bare = new_rt(NULL);
  assert_int_equal(cruster_runtime_register_cron_job(bare, "j", "* * * * * *", on_slot, &s, NULL, &e),
                   CRUSTER_E_INVALID_CONFIG);
  cruster_error_free(e);
  cruster_runtime_free(bare);
}

int main(void) {
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_second),
      cmocka_unit_test(test_failed_slot_recorded),
      cmocka_unit_test(test_missed_latest),
      cmocka_unit_test(test_missed_all),
      cmocka_unit_test(test_missed_none),
      cmocka_unit_test(test_missed_all_skip_if_older),
      cmocka_unit_test(test_missed_latest_long_gap),
      cmocka_unit_test(test_interrupted_slot_resumed),
      cmocka_unit_test(test_replaced_job),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
