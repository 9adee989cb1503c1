/* etcd away for longer than the lease (behaviour.md §3, the preface's fix 5:
 * lease-deadline detachment). Three runner processes (child_cluster_runner)
 * with PostgreSQL storage and a 3 s lease use a PRIVATE etcd that this test
 * starts, stops and restarts (the shared one keeps running for the other
 * tests). A stream of persisted Fence.hold calls to ever new entities flows
 * from every runner throughout; each handler run records [start, end] of
 * its shard and runner in table cluster_fence.
 *
 * Twice -- etcd frozen (SIGSTOP, then SIGCONT: its leases expired meanwhile)
 * and etcd killed and started again on the same data dir (it gives the
 * leases a fresh TTL: the old ones are proven alive again) -- for 2x the
 * lease TTL:
 *   (a) every runner detaches (owns no shard) while etcd is away;
 *   (b) after etcd returns they re-attach and own every shard again;
 * and over the whole test:
 *   (c) no two Fence.hold runs of one shard on different runners overlap;
 *   (d) every persisted call completes (answered, and its run recorded).
 * Waits are bounded by generous deadlines (failure only); no assertion
 * depends on how fast anything happens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cluster_support.h"

#define SHARDS 12
#define RUNNERS 3
#define LEASE_TTL_MS 3000

static const char *CONFIG = "shards_per_group=12;shard_rebalance_retry_interval=300ms;"
                            "runner_lock_refresh_interval=1s;send_retry_interval=50ms";

static int64_t g_t0;
static clt_etcd *g_etcd;
static clt_child *g_cs;
static void note(const char *what) { print_message("[%6.1f s] %s\n", (pgt_mono_ms() - g_t0) / 1000.0, what); }

static int all_detached(clt_child *cs) {
  for (int i = 0; i < RUNNERS; i++)
    if (clt_child_num(&cs[i], "detached") != 1 || clt_child_owned(&cs[i]) != 0) return 0;
  return 1;
}

static int none_detached(clt_child *cs) {
  for (int i = 0; i < RUNNERS; i++)
    if (clt_child_num(&cs[i], "detached") != 0) return 0;
  return 1;
}

static void wait_for(const char *what, int (*fn)(clt_child *), clt_child *cs) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (!fn(cs)) {
    if (pgt_mono_ms() > end) fail_msg("%s: not within %ld ms", what, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

/* Waits until at least `more` handler runs were recorded after `since`. */
static int64_t wait_progress(pgt_schema *s, int64_t since, int64_t more) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    int64_t n = pgt_scalarf(s->admin, 0, "SELECT count(*) FROM cluster_fence");
    if (n >= since + more) return n;
    if (pgt_mono_ms() > end) fail_msg("the persisted calls stopped: %lld runs recorded", (long long)n);
    ts_sleep_ms(100);
  }
}

/* Holds etcd away (the caller stopped or killed it) until every runner has
 * detached and at least 2x the lease TTL went by. */
static void away(clt_child *cs, int64_t since) {
  wait_for("every runner detached while etcd is away", all_detached, cs);
  note("detached");
  int64_t until = since + 2 * LEASE_TTL_MS;
  while (pgt_mono_ms() < until) ts_sleep_ms(100);
  /* Still detached: nobody can prove a lease. */
  assert_true(all_detached(cs));
}

static void back(clt_child *cs, pgt_schema *s) {
  note("etcd back");
  wait_for("every runner re-attached after etcd returned", none_detached, cs);
  note("re-attached");
  clt_wait_rendezvous(cs, RUNNERS, SHARDS);
  note("every shard owned");
  int64_t n = pgt_scalarf(s->admin, 0, "SELECT count(*) FROM cluster_fence");
  wait_progress(s, n, 30);
}

static void test_etcd_away_detach_fence_reattach(void **state) {
  (void)state;
  g_t0 = pgt_mono_ms();
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin,
           "CREATE TABLE cluster_fence (shard int4, runner text, started_us int8, ended_us int8, entity_id text)");
  clt_etcd etcd;
  memset(&etcd, 0, sizeof(etcd));
  g_etcd = &etcd;
  clt_etcd_run(&etcd);

  char lease[32];
  snprintf(lease, sizeof(lease), "%d", LEASE_TTL_MS);
  setenv("CHILD_LEASE_TTL_MS", lease, 1);
  char prefix[96];
  snprintf(prefix, sizeof(prefix), "/cruster-test-cldetach-%ld/", (long)getpid());
  clt_child cs[RUNNERS];
  memset(cs, 0, sizeof(cs));
  g_cs = cs;
  for (int i = 0; i < RUNNERS; i++) clt_child_start(&cs[i], etcd.endpoint, prefix, s.conninfo, CONFIG);
  for (int i = 0; i < RUNNERS; i++) clt_child_expect_ready(&cs[i]);
  clt_wait_rendezvous(cs, RUNNERS, SHARDS);

  char line[1024];
  for (int i = 0; i < RUNNERS; i++) {
    clt_child_cmd(&cs[i], line, sizeof(line), "fstream 3 f%d", i);
    assert_string_equal(line, "streaming");
  }
  wait_progress(&s, 0, 30);

  /* 1: etcd frozen. Its leases run out meanwhile: the runners register
   * again under new leases (RG_LEASE_NEW). */
  int64_t t0 = pgt_mono_ms();
  assert_int_equal(kill(etcd.pid, SIGSTOP), 0);
  away(cs, t0);
  assert_int_equal(kill(etcd.pid, SIGCONT), 0);
  back(cs, &s);

  /* 2: etcd killed and started again on the same data dir. It gives the
   * leases a new TTL: the runners prove theirs again (RG_LEASE_OK), with
   * their shard locks still held. */
  t0 = pgt_mono_ms();
  clt_etcd_kill(&etcd);
  away(cs, t0);
  clt_etcd_run(&etcd);
  back(cs, &s);

  note("progress again");
  /* (d): every call answered; its run recorded. */
  long total = 0;
  for (int i = 0; i < RUNNERS; i++) {
    clt_child_cmd(&cs[i], line, sizeof(line), "fstop");
    note(line);
    long sent = -1, ok = -1, failed = -1;
    if (sscanf(line, "fstopped %ld %ld %ld", &sent, &ok, &failed) != 3)
      fail_msg("runner %s: %s", cs[i].addr, line);
    if (failed != 0 || ok != sent) fail_msg("runner %s: %s", cs[i].addr, line);
    assert_true(sent > 0);
    int64_t recorded = pgt_scalarf(s.admin, 0,
                                   "SELECT count(DISTINCT entity_id) FROM cluster_fence WHERE entity_id LIKE 'f%d-%%'", i);
    if (recorded != sent)
      fail_msg("runner %s: %ld calls answered, %lld recorded", cs[i].addr, sent, (long long)recorded);
    total += sent;
  }
  print_message("%ld persisted calls, %lld handler runs\n", total,
                (long long)pgt_scalarf(s.admin, 0, "SELECT count(*) FROM cluster_fence"));

  /* (c): no shard ran on two runners at once. */
  int64_t overlaps = pgt_scalarf(s.admin, 0,
                                 "SELECT count(*) FROM cluster_fence a JOIN cluster_fence b ON a.shard = b.shard "
                                 "AND a.runner < b.runner AND a.started_us < b.ended_us AND b.started_us < a.ended_us");
  if (overlaps != 0) {
    PGresult *r = PQexec(s.admin,
                         "SELECT a.shard, a.runner, a.started_us, a.ended_us, b.runner, b.started_us, b.ended_us "
                         "FROM cluster_fence a JOIN cluster_fence b ON a.shard = b.shard AND a.runner < b.runner "
                         "AND a.started_us < b.ended_us AND b.started_us < a.ended_us LIMIT 10");
    for (int i = 0; i < PQntuples(r); i++)
      print_message("overlap: shard %s: %s [%s, %s] and %s [%s, %s]\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                    PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 5),
                    PQgetvalue(r, i, 6));
    PQclear(r);
    fail_msg("%lld overlapping runs of one shard on two runners", (long long)overlaps);
  }

  for (int i = 0; i < RUNNERS; i++) clt_child_close(&cs[i]);
  clt_etcd_destroy(&etcd);
  g_etcd = NULL;
  g_cs = NULL;
  pgt_schema_drop(&s);
}

/* After a failure: no runner or etcd left behind. */
static int teardown(void **state) {
  (void)state;
  for (int i = 0; g_cs && i < RUNNERS; i++)
    if (g_cs[i].alive) {
      kill(g_cs[i].pid, SIGKILL);
      waitpid(g_cs[i].pid, NULL, 0);
      g_cs[i].alive = 0;
    }
  if (g_etcd) clt_etcd_destroy(g_etcd);
  g_cs = NULL;
  g_etcd = NULL;
  return 0;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_etcd_away_detach_fence_reattach, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
