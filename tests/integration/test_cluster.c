/* Cluster mode across runner processes (child_cluster_runner) on loopback,
 * with the real etcd (CRUSTER_TEST_ETCD) and PostgreSQL (CRUSTER_TEST_PG):
 * calls from each runner reach entities on the others and errors keep their
 * kind; a graceful stop hands every shard to the others; a SIGKILLed runner's
 * shards are taken after its lease and no acknowledged persisted message is
 * lost; streamed calls across runners (order, errors, backpressure, the
 * caller going away, the owner killed mid-stream). Waits are bounded by generous deadlines (failure only), never rates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cluster_support.h"

#define SHARDS 12
/* The runner processes: cluster_support.h's, under this file's names. */
typedef clt_child child;
#define child_line clt_child_line
#define child_cmd clt_child_cmd
#define child_owned clt_child_owned
#define child_close clt_child_close

static void child_start(child *c, const char *prefix, const char *conninfo, const char *config) {
  clt_child_start(c, clt_shared_etcd(), prefix, conninfo, config);
}

#define child_kill clt_child_kill

/* Each live child owns exactly what rendezvous gives it (cluster_support.h). */
static void wait_all_owned(child *cs, size_t n) { clt_wait_rendezvous(cs, n, SHARDS); }

static void prefix_new(char *buf, size_t cap) {
  static int seq;
  snprintf(buf, cap, "/cruster-test-cluster-%ld-%d/", (long)getpid(), seq++);
}

static const char *CONFIG = "shards_per_group=12;shard_rebalance_retry_interval=300ms;"
                            "runner_lock_refresh_interval=1s;send_retry_interval=50ms";

/* Starts three runners, waits for their "ready" and for the shards to settle. */
static void start_three(child *cs, const char *prefix, const char *conninfo) {
  char line[64];
  for (int i = 0; i < 3; i++) child_start(&cs[i], prefix, conninfo, CONFIG);
  for (int i = 0; i < 3; i++) {
    child_line(&cs[i], line, sizeof(line));
    assert_string_equal(line, "ready");
  }
  wait_all_owned(cs, 3);
}

static void test_calls_across_runners_and_graceful_stop(void **state) {
  (void)state;
  char prefix[96];
  prefix_new(prefix, sizeof(prefix));
  child cs[3];
  start_three(cs, prefix, NULL);
  char line[1024];

  /* Every runner reaches every entity; one entity is always answered by the
   * same runner, whoever calls; each caller reaches the others. */
  char owner[40][64];
  for (int i = 0; i < 3; i++) {
    int remote = 0;
    for (int e = 0; e < 40; e++) {
      child_cmd(&cs[i], line, sizeof(line), "call Echo e%d who x%d", e, e);
      char who[64], echo[64];
      if (sscanf(line, "ok %63s %63s", who, echo) != 2) fail_msg("runner %s: e%d: %s", cs[i].addr, e, line);
      char want[64];
      snprintf(want, sizeof(want), "x%d", e);
      assert_string_equal(echo, want);
      if (i == 0) snprintf(owner[e], sizeof(owner[e]), "%s", who);
      else assert_string_equal(who, owner[e]);
      if (strcmp(who, cs[i].addr) != 0) remote++;
    }
    assert_true(remote > 0);
  }
  /* An error keeps its code and message across runners. */
  for (int e = 0; e < 6; e++) {
    child_cmd(&cs[0], line, sizeof(line), "call Echo e%d fail -", e);
    char want[200];
    snprintf(want, sizeof(want), "err -1001 failed on %.64s", owner[e]);
    assert_string_equal(line, want);
  }

  /* A graceful stop: the two others own every shard. */
  child_cmd(&cs[2], line, sizeof(line), "stop");
  assert_string_equal(line, "stopped");
  waitpid(cs[2].pid, NULL, 0);
  close(cs[2].in_fd);
  close(cs[2].out_fd);
  cs[2].alive = 0;
  wait_all_owned(cs, 3);
  for (int e = 0; e < 40; e++) {
    child_cmd(&cs[0], line, sizeof(line), "call Echo e%d who y", e);
    char who[64];
    assert_int_equal(sscanf(line, "ok %63s", who), 1);
    assert_true(strcmp(who, cs[0].addr) == 0 || strcmp(who, cs[1].addr) == 0);
  }
  for (int i = 0; i < 3; i++) child_close(&cs[i]);
}


/* The owner of entity `id` (any type): Stream.count with 0 items answers
 * with the owner's address as its one item. */
static void stream_owner(child *c, const char *id, char *out, size_t cap) {
  char line[1024];
  child_cmd(c, line, sizeof(line), "scall 60000 Stream %s count 0", id);
  long n = -1;
  int st = 1, ordered = 0;
  char last[128];
  if (sscanf(line, "end %ld %d %d %127s", &n, &st, &ordered, last) != 4 || n != 1 || st != 0)
    fail_msg("runner %s: owner of %s: %s", c->addr, id, line);
  snprintf(out, cap, "%s", last);
}

/* An id owned by runner `owner` (so called from another runner it is remote). */
static void id_owned_by(child *caller, const child *owner, const char *prefix, char *id,
                        size_t cap) {
  for (int i = 0; i < 1000; i++) {
    char who[128];
    snprintf(id, cap, "%s%d", prefix, i);
    stream_owner(caller, id, who, sizeof(who));
    if (strcmp(who, owner->addr) == 0) return;
  }
  fail_msg("no id of 1000 is owned by %s", owner->addr);
}

static void test_streaming_across_runners(void **state) {
  (void)state;
  char prefix[96];
  prefix_new(prefix, sizeof(prefix));
  child cs[3];
  start_three(cs, prefix, NULL);
  char line[1024];

  /* Every runner streams from entities all over the cluster: every item in
   * order, then the owner's final item, then the end. */
  char owner[20][64];
  for (int i = 0; i < 3; i++) {
    int remote = 0;
    for (int e = 0; e < 20; e++) {
      child_cmd(&cs[i], line, sizeof(line), "scall 60000 Stream s%d count 300", e);
      long n = -1;
      int st = 1, ordered = 0;
      char last[128];
      if (sscanf(line, "end %ld %d %d %127s", &n, &st, &ordered, last) != 4)
        fail_msg("runner %s: s%d: %s", cs[i].addr, e, line);
      assert_int_equal(st, CRUSTER_OK);
      assert_int_equal(n, 301);
      assert_int_equal(ordered, 1);
      if (i == 0) snprintf(owner[e], sizeof(owner[e]), "%.63s", last);
      else assert_string_equal(last, owner[e]);
      if (strcmp(last, cs[i].addr) != 0) remote++;
    }
    assert_true(remote > 0);
  }
  /* A stream's error keeps its code and message, after its items. */
  for (int e = 0; e < 6; e++) {
    child_cmd(&cs[0], line, sizeof(line), "scall 60000 Stream s%d fail -", e);
    char want[300];
    snprintf(want, sizeof(want), "end 2 -1002 1 1 stream failed on %.64s", owner[e]);
    assert_string_equal(line, want);
  }

  /* Backpressure across runners: runner 0 opens a stream from an entity of
   * runner 1 and does not read it; runner 1's handler is held back (its
   * yields stop), then goes on when runner 0 reads, and sees the
   * cancellation when runner 0 closes the stream. */
  char id[64];
  id_owned_by(&cs[0], &cs[1], "bp", id, sizeof(id));
  child_cmd(&cs[0], line, sizeof(line), "sopen StreamX %s endless 32768", id);
  assert_string_equal(line, "opened");
  int prev = -1, same = 0, yields = 0, done = 0, last_rc = 0;
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (same < 5) {
    child_cmd(&cs[1], line, sizeof(line), "syields");
    assert_int_equal(sscanf(line, "syields %d %d %d", &yields, &done, &last_rc), 3);
    assert_int_equal(done, 0);
    same = yields > 0 && yields == prev ? same + 1 : 0;
    prev = yields;
    if (pgt_mono_ms() > end) fail_msg("the producer never stopped: %d items", yields);
    ts_sleep_ms(200);
  }
  /* Held back by the windows (16 + 16 items) and gRPC's flow control: a
   * few MB, not the hundreds it makes per second when nothing holds it. */
  assert_true(yields < 1000);
  child_cmd(&cs[0], line, sizeof(line), "sread %d", yields + 100);
  snprintf(id, sizeof(id), "read %d 1", yields + 100);
  assert_string_equal(line, id);
  child_cmd(&cs[0], line, sizeof(line), "sclose");
  assert_string_equal(line, "closed");
  end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    child_cmd(&cs[1], line, sizeof(line), "syields");
    assert_int_equal(sscanf(line, "syields %d %d %d", &yields, &done, &last_rc), 3);
    if (done) break;
    if (pgt_mono_ms() > end) fail_msg("the producer never saw its caller go away");
    ts_sleep_ms(100);
  }
  assert_int_equal(last_rc, CRUSTER_E_CANCELLED);

  /* A stream broken mid-way -- its owner is SIGKILLed -- ends with an
   * error, not a hang. */
  id_owned_by(&cs[0], &cs[2], "kill", id, sizeof(id));
  child_cmd(&cs[0], line, sizeof(line), "swatch 60000 StreamX %s endless 64", id);
  char first[200];
  assert_int_equal(sscanf(line, "first %199s", first), 1);
  *strrchr(first, ':') = 0;
  assert_string_equal(first, cs[2].addr);
  child_kill(&cs[2]);
  child_line(&cs[0], line, sizeof(line));
  long n = -1;
  int st = 0, ordered = 0;
  assert_int_equal(sscanf(line, "end %ld %d %d", &n, &st, &ordered), 3);
  assert_true(n >= 1);
  assert_int_equal(ordered, 1);
  assert_int_equal(st, CRUSTER_E_RUNNER_UNAVAILABLE);
  assert_non_null(strstr(line, "the stream broke after"));
  for (int i = 0; i < 3; i++) child_close(&cs[i]);
}

static void test_sigkill_loses_nothing_acknowledged(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE cluster_sink (entity_id text, payload text, runner text)");
  pgt_exec(s.admin,
           "CREATE TABLE cluster_fence (shard int4, runner text, started_us int8, ended_us int8, entity_id text)");
  char prefix[96];
  prefix_new(prefix, sizeof(prefix));
  child cs[3];
  start_three(cs, prefix, s.conninfo);
  char line[1024];

  /* Runner 0 sends persisted messages to entities all over the cluster;
   * runner 2 is killed while they flow. */
  enum { N = 120 };
  child_cmd(&cs[0], NULL, 0, "load %d k", N);
  int acked[N] = {0}, nacked = 0, killed = 0;
  long long kill_at_us = 0;
  char victim_addr[64] = "";
  for (;;) {
    child_line(&cs[0], line, sizeof(line));
    if (strcmp(line, "loaded") == 0) break;
    int i = -1;
    if (sscanf(line, "acked %d", &i) == 1 && i >= 0 && i < N) {
      acked[i] = 1;
      nacked++;
    } else {
      print_message("runner 0: %s\n", line);
    }
    if (!killed && nacked >= N / 4) {
      /* The runner that runs the singleton, if it ran yet: its failover is
       * checked too. */
      int victim = 2;
      PGresult *r = PQexec(s.admin, "SELECT runner FROM cluster_fence WHERE shard = -1 "
                                    "ORDER BY ended_us DESC LIMIT 1");
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        for (int i = 0; i < 3; i++)
          if (strcmp(PQgetvalue(r, 0, 0), cs[i].addr) == 0 && i != 0) victim = i;
      PQclear(r);
      kill_at_us = pgt_now_ms() * 1000;
      snprintf(victim_addr, sizeof(victim_addr), "%s", cs[victim].addr);
      child_kill(&cs[victim]);
      killed = 1;
    }
  }
  assert_true(killed);
  /* Every acknowledged message is handled, by the survivors if need be. */
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    int missing = 0;
    for (int i = 0; i < N; i++) {
      if (!acked[i]) continue;
      if (pgt_scalarf(s.admin, 0, "SELECT count(*) FROM cluster_sink WHERE entity_id = 'k-%d'", i) == 0)
        missing++;
    }
    if (missing == 0) break;
    if (pgt_mono_ms() > end) fail_msg("%d acknowledged messages never handled", missing);
    ts_sleep_ms(200);
  }
  assert_int_equal(nacked, N);
  /* The dead runner's shards are owned again (after its lease). */
  wait_all_owned(cs, 3);
  /* The singleton runs on a survivor after the kill... */
  end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (pgt_scalarf(s.admin, 0,
                     "SELECT count(*) FROM cluster_fence WHERE shard = -1 AND runner <> '%s' "
                     "AND started_us > %lld",
                     victim_addr, kill_at_us) == 0) {
    if (pgt_mono_ms() > end) fail_msg("the singleton never ran on a survivor after the kill");
    ts_sleep_ms(100);
  }
  /* ... and two runners' stretches of it never overlapped (fencing). */
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM cluster_fence a JOIN cluster_fence b "
                              "ON a.shard = b.shard AND a.runner < b.runner "
                              "AND a.started_us < b.ended_us AND b.started_us < a.ended_us",
                              -1),
                   0);
  for (int i = 0; i < 3; i++) child_close(&cs[i]);
  pgt_schema_drop(&s);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_calls_across_runners_and_graceful_stop),
      cmocka_unit_test(test_streaming_across_runners),
      cmocka_unit_test(test_sigkill_loses_nothing_acknowledged),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
