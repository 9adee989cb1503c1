/* ClusterCron across runner processes (child_cluster_runner, command
 * "cron"), with the real etcd (CRUSTER_TEST_ETCD) and PostgreSQL
 * (CRUSTER_TEST_PG): a job firing every second (policy missed = ALL,
 * calculate_next_from_previous) keeps running when the runner that runs it
 * is SIGKILLed and when the next one stops gracefully, and across both:
 *  - no slot time is committed twice, nor under two slot ids;
 *  - no slot is lost: every second between the first and the last slot
 *    committed is there (policy ALL);
 *  - a handler is called twice for a slot only when the first call was on
 *    the killed runner (a slot interrupted by the crash, run again with the
 *    same slot id), and at most for one slot;
 *  - every recorded slot (cruster_cron_slots) ends done;
 *  - the Fencer singleton's stretches on two runners never overlap.
 * Waits are bounded by generous deadlines (failure only), never rates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cluster_support.h"

#define SHARDS 12
#define RUNNERS 3
/* Each slot's handler takes this long between recording its call and
 * committing the slot, so that the kill usually lands in the middle of a
 * handler (the slot is then resumed by the next owner). */
#define HANDLER_MS 300

static const char *CONFIG = "shards_per_group=12;shard_rebalance_retry_interval=300ms;"
                            "runner_lock_refresh_interval=1s;send_retry_interval=50ms";

/* The index of the child at address `addr` (-1: none). */
static int child_at(clt_child *cs, const char *addr) {
  for (int i = 0; i < RUNNERS; i++)
    if (strcmp(cs[i].addr, addr) == 0) return i;
  return -1;
}

/* The runner that committed the newest slot, and that slot. */
static int newest(pgt_schema *s, clt_child *cs, long long *slot_ms) {
  PGresult *r = PQexec(s->admin, "SELECT runner, slot_ms FROM cluster_cron ORDER BY slot_ms DESC LIMIT 1");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(PQntuples(r), 1);
  int i = child_at(cs, PQgetvalue(r, 0, 0));
  *slot_ms = atoll(PQgetvalue(r, 0, 1));
  PQclear(r);
  assert_true(i >= 0);
  return i;
}

/* Waits until runner `addr` committed at least `n` slots after `after_ms`. */
static void wait_slots_by(pgt_schema *s, const char *addr, long long after_ms, int n, const char *what) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    long long k = pgt_scalarf(s->admin, 0,
                              "SELECT count(*) FROM cluster_cron WHERE runner = '%s' AND slot_ms > %lld",
                              addr, after_ms);
    if (k >= n) return;
    if (pgt_mono_ms() > end)
      fail_msg("%s: runner %s committed %lld of %d slots after %lld within %ld ms", what, addr, k, n,
               after_ms, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

static void test_cron_survives_sigkill_and_stop(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE cluster_cron (slot_id text UNIQUE, slot_ms int8, runner text)");
  pgt_exec(s.admin, "CREATE TABLE cluster_cron_attempts (seq bigserial PRIMARY KEY, slot_id text, "
                    "slot_ms int8, runner text)");
  pgt_exec(s.admin,
           "CREATE TABLE cluster_fence (shard int4, runner text, started_us int8, ended_us int8, entity_id text)");
  char prefix[96];
  snprintf(prefix, sizeof(prefix), "/cruster-test-cluster-cron-%ld/", (long)getpid());
  clt_child cs[RUNNERS];
  for (int i = 0; i < RUNNERS; i++) clt_child_start(&cs[i], clt_shared_etcd(), prefix, s.conninfo, CONFIG);
  for (int i = 0; i < RUNNERS; i++) clt_child_expect_ready(&cs[i]);
  clt_wait_rendezvous(cs, RUNNERS, SHARDS);
  char line[512];
  for (int i = 0; i < RUNNERS; i++) {
    clt_child_cmd(&cs[i], line, sizeof(line), "cron Tick %d", HANDLER_MS);
    assert_string_equal(line, "cron ok");
  }

  /* It runs on one of them: SIGKILL that one, preferably while a handler
   * of it runs (its call recorded, its slot not committed yet). */
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (pgt_scalar(s.admin, "SELECT count(*) FROM cluster_cron", -1) < 3) {
    if (pgt_mono_ms() > end) fail_msg("the cron job never ran 3 slots");
    ts_sleep_ms(100);
  }
  long long killed_at;
  int victim = newest(&s, cs, &killed_at);
  end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    PGresult *r = PQexec(s.admin, "SELECT runner FROM cluster_cron_attempts a WHERE NOT EXISTS "
                                  "(SELECT 1 FROM cluster_cron c WHERE c.slot_id = a.slot_id) "
                                  "ORDER BY seq DESC LIMIT 1");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    int i = PQntuples(r) == 1 ? child_at(cs, PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    if (i >= 0) {
      victim = i;
      break;
    }
    if (pgt_mono_ms() > end) break; /* never seen mid-handler: kill the newest slot's runner */
    ts_sleep_ms(10);
  }
  char victim_addr[64];
  snprintf(victim_addr, sizeof(victim_addr), "%s", cs[victim].addr);
  clt_child_kill(&cs[victim]);
  print_message("killed %s (newest slot %lld)\n", victim_addr, killed_at);

  /* A survivor takes the job over (after the victim's lease) and runs it. */
  end = pgt_mono_ms() + TS_DEADLINE_MS;
  int next = -1;
  for (;;) {
    long long t;
    int i = newest(&s, cs, &t);
    if (t > killed_at && i != victim) {
      next = i;
      break;
    }
    if (pgt_mono_ms() > end) fail_msg("no survivor ran the cron job after the kill");
    ts_sleep_ms(100);
  }
  wait_slots_by(&s, cs[next].addr, killed_at, 3, "after the kill");

  /* A graceful stop of the runner that runs it: the last one goes on. */
  clt_child_cmd(&cs[next], line, sizeof(line), "stop");
  assert_string_equal(line, "stopped");
  waitpid(cs[next].pid, NULL, 0);
  close(cs[next].in_fd);
  close(cs[next].out_fd);
  cs[next].alive = 0;
  /* (The last runner may have taken the job over before the stop
   * returned: the stop releases the shard, then deregisters.) */
  long long stopped_at = pgt_scalarf(s.admin, -1, "SELECT max(slot_ms) FROM cluster_cron WHERE runner = '%s'",
                                     cs[next].addr);
  int last = 3 - victim - next;
  print_message("stopped %s (newest slot %lld); %s goes on\n", cs[next].addr, stopped_at, cs[last].addr);
  wait_slots_by(&s, cs[last].addr, stopped_at, 3, "after the graceful stop");
  clt_child_close(&cs[last]); /* graceful too: its running slot finishes */

  /* Each slot committed once, under its own id. */
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM (SELECT slot_ms FROM cluster_cron GROUP BY slot_ms "
                              "HAVING count(*) > 1) x",
                              -1),
                   0);
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM cluster_cron WHERE slot_id <> 'Tick/' || slot_ms "
                              "OR slot_ms % 1000 <> 0",
                              -1),
                   0);
  /* None lost: every second from the first to the last (policy ALL). */
  long long n = pgt_scalar(s.admin, "SELECT count(*) FROM cluster_cron", -1);
  long long span = pgt_scalar(s.admin, "SELECT (max(slot_ms) - min(slot_ms)) / 1000 + 1 FROM cluster_cron", -1);
  print_message("%lld slots committed, spanning %lld seconds\n", n, span);
  if (n != span) {
    PGresult *r = PQexec(s.admin,
                         "SELECT g FROM generate_series((SELECT min(slot_ms) FROM cluster_cron), "
                         "(SELECT max(slot_ms) FROM cluster_cron), 1000) g "
                         "WHERE g NOT IN (SELECT slot_ms FROM cluster_cron) LIMIT 10");
    for (int i = 0; i < PQntuples(r); i++) print_message("missing slot %s\n", PQgetvalue(r, i, 0));
    PQclear(r);
  }
  assert_int_equal(n, span);
  /* Each committed slot ran on a runner that ran the job: the victim up to
   * its death, then `next`, then `last`, in that order of slot times. */
  assert_int_equal(pgt_scalarf(s.admin, -1,
                               "SELECT count(*) FROM cluster_cron a JOIN cluster_cron b ON a.slot_ms < b.slot_ms "
                               "AND ((a.runner = '%s' AND b.runner = '%s') OR (a.runner = '%s' AND b.runner = '%s'))",
                               cs[last].addr, cs[next].addr, cs[next].addr, victim_addr),
                   0);
  /* A second call of a handler for a slot only after a crash: at most one
   * such slot, called first on the killed runner. */
  long long twice = pgt_scalar(s.admin,
                               "SELECT count(*) FROM (SELECT slot_ms FROM cluster_cron_attempts "
                               "GROUP BY slot_ms HAVING count(*) > 1) x",
                               -1);
  assert_true(twice <= 1);
  if (twice == 1) {
    print_message("one slot was interrupted by the kill and run again\n");
    assert_int_equal(pgt_scalarf(s.admin, -1,
                                 "SELECT count(*) FROM cluster_cron_attempts a WHERE slot_ms IN "
                                 "(SELECT slot_ms FROM cluster_cron_attempts GROUP BY slot_ms HAVING count(*) > 1) "
                                 "AND a.seq = (SELECT min(seq) FROM cluster_cron_attempts b WHERE b.slot_ms = a.slot_ms) "
                                 "AND a.runner = '%s'",
                                 victim_addr),
                     1);
    assert_int_equal(pgt_scalar(s.admin,
                                "SELECT max(c) FROM (SELECT count(*) c FROM cluster_cron_attempts GROUP BY slot_ms) x",
                                -1),
                     2);
  }
  /* The slots' history: all finished and done (none failed, none left
   * running), and each committed slot is recorded. */
  assert_int_equal(pgt_scalar(s.admin, "SELECT count(*) FROM cruster_cron_slots WHERE job = 'Tick' AND state <> 1", -1),
                   0);
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM cluster_cron c WHERE NOT EXISTS (SELECT 1 FROM "
                              "cruster_cron_slots s WHERE s.job = 'Tick' AND s.slot_ms = c.slot_ms)",
                              -1),
                   0);
  /* The singleton Fencer never ran on two runners at once. */
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM cluster_fence a JOIN cluster_fence b "
                              "ON a.shard = b.shard AND a.runner < b.runner "
                              "AND a.started_us < b.ended_us AND b.started_us < a.ended_us",
                              -1),
                   0);
  for (int i = 0; i < RUNNERS; i++) clt_child_close(&cs[i]);
  pgt_schema_drop(&s);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cron_survives_sigkill_and_stop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
