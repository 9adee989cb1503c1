/* ClusterCron across a SIGKILL, on PostgreSQL (real server).
 *
 * A child process (child_cron_runner) runs the per-second job "tick" of
 * cron_crash_defs.h; its handler blocks in the middle of its third slot,
 * after its effects, and the child is SIGKILLed there. A few slots later a
 * runtime in this process takes the job over on the same schema:
 *  - the interrupted slot (recorded, never finished) runs again first, with
 *    the same slot id: its idempotent insert adds nothing, so app_slots
 *    holds every slot once;
 *  - no other slot runs twice (app_runs), none is left running;
 *  - missed slots follow the policy: with the default (latest) the slots
 *    after the interrupted one start at the latest missed slot and have no
 *    gap; with "all" no slot from the first on is lost.
 * No assertion depends on timing: waits poll for a state up to a generous
 * deadline. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include "pg_support.h"
#include "cron_crash_defs.h"

extern char **environ;

#define CHILD CRUSTER_TEST_BIN_DIR "/child_cron_runner"

static pid_t spawn_child(const char *conninfo, const char *block_at) {
  char *argv[] = {(char *)CHILD, (char *)conninfo, (char *)block_at, NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, CHILD, NULL, NULL, argv, environ);
  if (rc != 0) fail_msg("posix_spawn %s: %s", CHILD, strerror(rc));
  return pid;
}

static void kill_child(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

static void wait_sql_alive(pid_t pid, pgt_schema *s, const char *sql, long long want) {
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (pgt_scalar(s->admin, sql, -1) != want) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid)
      fail_msg("child exited (status 0x%x) before: %s", st, sql);
    if (pgt_mono_ms() > end) {
      kill_child(pid);
      fail_msg("within %ld ms, never %lld: %s", (long)PGT_DEADLINE_MS, want, sql);
    }
    ts_sleep_ms(10);
  }
}

static void crash_case(int32_t missed) {
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, CCD_APP_TABLES);

  pid_t pid = spawn_child(s.conninfo, "3");
  wait_sql_alive(pid, &s, "SELECT count(*) FROM app_runs", 3);
  /* Blocked in the middle of its third slot: recorded, running. */
  wait_sql_alive(pid, &s, "SELECT count(*) FROM cruster_cron_slots WHERE state = 0", 1);
  kill_child(pid);
  long long n = pgt_scalar(s.admin, "SELECT max(slot) FROM app_runs", -1);
  long long first = pgt_scalar(s.admin, "SELECT min(slot) FROM app_runs", -1);
  assert_int_equal(pgt_scalarf(s.admin, -1, "SELECT slot_ms FROM cruster_cron_slots WHERE state = 0"), n);
  /* Down for a few slots (not an assertion: the job just misses them). */
  while (pgt_now_ms() < n + 4000) ts_sleep_ms(50);

  /* Taken over here, on the same schema. */
  snprintf(ccd.conninfo, sizeof(ccd.conninfo), "%s", s.conninfo);
  ccd.block_at = 0;
  atomic_store(&ccd.runs, 0);
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  if (pgt_runtime_try(s.conninfo, NULL, &rt, &msg) != CRUSTER_OK) fail_msg("runtime: %s", msg);
  cruster_error *err = NULL;
  if (ccd_register(rt, missed, &err) != CRUSTER_OK) fail_msg("register: %s", cruster_error_message(err));
  int64_t t0 = pgt_now_ms();
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  char sql[256];
  snprintf(sql, sizeof(sql), "SELECT (count(*) >= 2)::int FROM app_slots WHERE slot > %lld", (long long)t0);
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (pgt_scalar(s.admin, sql, 0) != 1) {
    if (pgt_mono_ms() > end)
      fail_msg("no live slots after the restart (singletons running %g, runs %g, failures %g)",
               ts_metric(rt, "cluster_singletons", NULL), ts_metric(rt, "cluster_singleton_runs_total", NULL),
               ts_metric(rt, "cluster_singleton_failures_total", NULL));
    ts_sleep_ms(20);
  }
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);

  /* The interrupted slot ran twice (same slot id), every other once. */
  assert_int_equal(pgt_scalarf(s.admin, -1, "SELECT count(*) FROM app_runs WHERE slot = %lld", n), 2);
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM (SELECT slot FROM app_runs GROUP BY slot "
                              "HAVING count(*) > 1) d",
                              -1),
                   1);
  assert_int_equal(pgt_scalarf(s.admin, -1, "SELECT count(*) FROM app_slots WHERE slot = %lld AND "
                                            "slot_id = 'tick/%lld'", n, n),
                   1);
  /* Recorded slots and effects match; none is left running. */
  assert_int_equal(pgt_scalar(s.admin, "SELECT count(*) FROM cruster_cron_slots WHERE state <> 1", -1), 0);
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM cruster_cron_slots c FULL JOIN app_slots a "
                              "ON a.slot = c.slot_ms WHERE a.slot IS NULL OR c.slot_ms IS NULL",
                              -1),
                   0);
  /* Before the kill: every slot from the first to the interrupted one. */
  assert_int_equal(pgt_scalarf(s.admin, -1, "SELECT count(*) FROM app_slots WHERE slot <= %lld", n),
                   (n - first) / 1000 + 1);
  long long after = pgt_scalarf(s.admin, -1, "SELECT min(slot) FROM app_slots WHERE slot > %lld", n);
  long long last = pgt_scalar(s.admin, "SELECT max(slot) FROM app_slots", -1);
  /* After it: no gap from the first slot run after the restart on. */
  assert_int_equal(pgt_scalarf(s.admin, -1, "SELECT count(*) FROM app_slots WHERE slot > %lld", n),
                   (last - after) / 1000 + 1);
  if (missed == CRUSTER_CRON_MISSED_ALL) {
    assert_int_equal(after, n + 1000); /* nothing lost */
  } else {
    /* Latest: the missed slots older than the latest one were skipped. */
    assert_true(after >= t0 / 1000 * 1000);
    assert_true(after > n + 1000);
  }

  /* The history through the API. */
  cruster_cron_slot *v = NULL;
  size_t k = 0;
  assert_int_equal(cruster_cron_slots(rt, "tick", 1000, &v, &k, NULL), CRUSTER_OK);
  assert_int_equal((long long)k, pgt_scalar(s.admin, "SELECT count(*) FROM app_slots", -1));
  assert_int_equal(v[0].slot_ms, last);
  assert_int_equal(v[k - 1].slot_ms, first);
  for (size_t i = 0; i < k; i++) assert_int_equal(v[i].state, CRUSTER_CRON_SLOT_DONE);
  cruster_cron_slots_free(v, k);
  cruster_runtime_free(rt);
  if (ccd.conn) PQfinish(ccd.conn);
  ccd.conn = NULL;
  pgt_schema_drop(&s);
}

static void killed_mid_slot_default_policy(void **state) {
  (void)state;
  crash_case(CRUSTER_CRON_MISSED_LATEST);
}

static void killed_mid_slot_run_all_missed(void **state) {
  (void)state;
  crash_case(CRUSTER_CRON_MISSED_ALL);
}

/* A bad expression and the registration errors need no server, but the
 * slots listing of an unknown job does: empty. Retention: finished slots
 * older than storage_retention go, the newest stays. */
static void retention_keeps_the_newest(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, CCD_APP_TABLES);
  /* Old finished slots of the job. */
  pgt_exec(s.admin,
           "INSERT INTO cruster_cron_slots (job, slot_ms, state, started_ms, finished_ms) VALUES "
           "('tick', 1000, 1, 1000, 1000), ('tick', 2000, 1, 2000, 2000), "
           "('other', 1000, 1, 1000, 1000)");
  snprintf(ccd.conninfo, sizeof(ccd.conninfo), "%s", s.conninfo);
  ccd.block_at = 0;
  atomic_store(&ccd.runs, 0);
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  if (pgt_runtime_try(s.conninfo, "storage_retention=1h", &rt, &msg) != CRUSTER_OK)
    fail_msg("runtime: %s", msg);
  assert_int_equal(ccd_register(rt, CRUSTER_CRON_MISSED_NONE, NULL), CRUSTER_OK);
  cruster_cron_slot *v = NULL;
  size_t k = 0;
  assert_int_equal(cruster_cron_slots(rt, "nothing", 10, &v, &k, NULL), CRUSTER_OK);
  assert_int_equal(k, 0);
  cruster_cron_slots_free(v, k);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (pgt_scalar(s.admin, "SELECT count(*) FROM app_slots", 0) < 1) {
    if (pgt_mono_ms() > end) fail_msg("no slot ran");
    ts_sleep_ms(20);
  }
  assert_int_equal(cruster_runtime_stop(rt, NULL), CRUSTER_OK);
  /* The old ones of "tick" are gone once a slot finished; "other" is not
   * touched. */
  assert_int_equal(pgt_scalar(s.admin, "SELECT count(*) FROM cruster_cron_slots WHERE job = 'tick' "
                                       "AND slot_ms < 1000000", -1), 0);
  assert_int_equal(pgt_scalar(s.admin, "SELECT count(*) FROM cruster_cron_slots WHERE job = 'other'", -1), 1);
  cruster_runtime_free(rt);
  if (ccd.conn) PQfinish(ccd.conn);
  ccd.conn = NULL;
  pgt_schema_drop(&s);
}

int main(void) {
  pgt_main_start();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(killed_mid_slot_default_policy),
      cmocka_unit_test(killed_mid_slot_run_all_missed),
      cmocka_unit_test(retention_keeps_the_newest),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
