/* Durable workflows across runner processes (child_cluster_runner, workflow
 * CW) on loopback, with the real etcd (CRUSTER_TEST_ETCD) and PostgreSQL
 * (CRUSTER_TEST_PG):
 *   - executions started from every runner while one runner is SIGKILLed
 *     all complete with the right answer, every activity's SQL took effect
 *     exactly once (the activities insert into cluster_wf_app, which has
 *     no unique constraint, so a doubled one would show), and the killed
 *     runner's shards are owned again;
 *   - a deferred resolved from a runner that does not own the execution
 *     wakes it; a cancellation from such a runner cancels it;
 *   - a durable sleep of an execution whose runner is killed wakes on a
 *     survivor;
 *   - a call's traceparent (cruster_call_opts) reaches its handler on this
 *     runner and on others, and a handler passes it on to another runner.
 * Waits are bounded by generous deadlines (failure only), never rates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cluster_support.h"

#define SHARDS 12
#define MAXR 3

static const char *CONFIG = "shards_per_group=12;shard_rebalance_retry_interval=300ms;"
                            "runner_lock_refresh_interval=1s;send_retry_interval=50ms;"
                            "workflow_pool_size=6;storage_pool_size=3";

static void prefix_new(char *buf, size_t cap) {
  static int seq;
  snprintf(buf, cap, "/cruster-test-clwf-%ld-%d/", (long)getpid(), seq++);
}

#define child_kill clt_child_kill

/* Every shard owned once, by the runner rendezvous gives it. */
static void wait_settled(clt_child *cs, size_t n) { clt_wait_rendezvous(cs, n, SHARDS); }

typedef struct cluster {
  pgt_schema s;
  char prefix[96];
  clt_child cs[MAXR];
} cluster;

static void cluster_start(cluster *cl) {
  pgt_schema_create(&cl->s);
  pgt_migrate(&cl->s);
  pgt_exec(cl->s.admin, "CREATE TABLE cluster_wf_app (exec text NOT NULL, step int4 NOT NULL, runner text NOT NULL)");
  pgt_exec(cl->s.admin, "CREATE TABLE cluster_wf_gate_in (exec text NOT NULL, runner text NOT NULL)");
  pgt_exec(cl->s.admin, "CREATE TABLE cluster_wf_gate (exec text NOT NULL)");
  /* (the child's singleton writes here) */
  pgt_exec(cl->s.admin,
           "CREATE TABLE cluster_fence (shard int4, runner text, started_us int8, ended_us int8, entity_id text)");
  prefix_new(cl->prefix, sizeof(cl->prefix));
  for (int i = 0; i < MAXR; i++) clt_child_start(&cl->cs[i], clt_shared_etcd(), cl->prefix, cl->s.conninfo, CONFIG);
  for (int i = 0; i < MAXR; i++) clt_child_expect_ready(&cl->cs[i]);
  wait_settled(cl->cs, MAXR);
}

static void cluster_end(cluster *cl) {
  for (int i = 0; i < MAXR; i++) clt_child_close(&cl->cs[i]);
  pgt_schema_drop(&cl->s);
}

/* The index of the runner whose address is `addr`, or -1. */
static int runner_index(cluster *cl, const char *addr) {
  for (int i = 0; i < MAXR; i++)
    if (strcmp(cl->cs[i].addr, addr) == 0) return i;
  return -1;
}

/* Waits until execution `id` has journaled step `step` (its row is
 * committed) and returns the index of the runner that ran it. */
static int wait_step(cluster *cl, const char *id, int step) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT runner FROM cluster_wf_app WHERE exec = '%s' AND step = %d", id, step);
    PGresult *r = PQexec(cl->s.admin, sql);
    int idx = -2;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) >= 1) idx = runner_index(cl, PQgetvalue(r, 0, 0));
    PQclear(r);
    if (idx >= 0) return idx;
    if (idx == -1) fail_msg("execution %s: step %d ran on an unknown runner", id, step);
    if (pgt_mono_ms() > end) fail_msg("execution %s never journaled step %d", id, step);
    ts_sleep_ms(50);
  }
}

/* Every (execution, step) row exactly once, `want` rows in all. */
static void assert_exactly_once(cluster *cl, long long want) {
  long long doubled = pgt_scalar(cl->s.admin,
                                 "SELECT count(*) FROM (SELECT exec, step FROM cluster_wf_app "
                                 "GROUP BY exec, step HAVING count(*) > 1) d",
                                 -1);
  if (doubled != 0) {
    PGresult *r = PQexec(cl->s.admin, "SELECT exec, step, string_agg(runner, ',') FROM cluster_wf_app "
                                      "GROUP BY exec, step HAVING count(*) > 1 LIMIT 5");
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
      print_message("doubled: %s step %s on %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    PQclear(r);
    fail_msg("%lld activities' SQL took effect more than once", doubled);
  }
  assert_int_equal(pgt_scalar(cl->s.admin, "SELECT count(*) FROM cluster_wf_app", -1), want);
}

/* Joins execution `id` from runner `c` and checks its answer. */
static void expect_answer(clt_child *c, const char *id, const char *want) {
  char line[1024];
  clt_child_cmd(c, line, sizeof(line), "wfjoin 60000 %s", id);
  char exp[600];
  snprintf(exp, sizeof(exp), "ok %s", want);
  if (strcmp(line, exp) != 0) fail_msg("execution %s (joined on %s): '%s', expected '%s'", id, c->addr, line, exp);
}

/* Starts execution KEY with INPUT on runner c; its id into `id`. */
static void start_one(clt_child *c, const char *key, const char *input, char *id, size_t cap) {
  char line[1024];
  clt_child_cmd(c, line, sizeof(line), "wfstart %s %s", key, input);
  if (strncmp(line, "ok ", 3) != 0) fail_msg("start %s on %s: %s", key, c->addr, line);
  snprintf(id, cap, "%.63s", line + 3);
}

#define LOAD_N 40

/* The loads: runner 0's executions run straight through ("n"), runner 1's
 * sleep durably between their steps, runner 2's wait for deferred "go",
 * resolved after the kill (so the killed runner's own executions are
 * certainly in the middle when it dies). */
static const char *const LOAD_MODE[MAXR] = {"n", "s1500", "d"};

static void load_answer(int i, int k, char *want, size_t cap) {
  const char *m = LOAD_MODE[i];
  char tag[32], mid[40];
  snprintf(tag, sizeof(tag), "r%d-%d", i, k);
  if (m[0] == 'n') snprintf(mid, sizeof(mid), "%s/1", tag);
  else if (m[0] == 's') snprintf(mid, sizeof(mid), "slept");
  else snprintf(mid, sizeof(mid), "v%d", k);
  snprintf(want, cap, "%s:%s:%s/2", tag, mid, tag);
}

static void test_sigkill_under_workflow_load(void **state) {
  (void)state;
  cluster cl;
  cluster_start(&cl);
  clt_child *cs = cl.cs;
  /* Every runner starts LOAD_N executions (keys r<i>-<n>); runner 2 is
   * killed while runner 0's starts flow (its own starts are all in by then,
   * their executions running or waiting). */
  char ids[MAXR][LOAD_N][64];
  int acked[MAXR][LOAD_N];
  memset(acked, 0, sizeof(acked));
  for (int i = 0; i < MAXR; i++) clt_child_cmd(&cs[i], NULL, 0, "wfload %d r%d %s", LOAD_N, i, LOAD_MODE[i]);
  char line[1024], sql[512];
  const int victim = 2;
  long long waiting_on_victim = -1;
  for (int i = MAXR - 1; i >= 0; i--) {
    int n = 0;
    for (;;) {
      clt_child_line(&cs[i], line, sizeof(line));
      if (strcmp(line, "wfloaded") == 0) break;
      int k = -1;
      char id[64];
      if (sscanf(line, "wfacked %d %63s", &k, id) == 2 && k >= 0 && k < LOAD_N) {
        acked[i][k] = 1;
        snprintf(ids[i][k], sizeof(ids[i][k]), "%s", id);
        n++;
      } else {
        print_message("runner %d: %s\n", i, line);
      }
      if (i == 0 && n == LOAD_N / 4 && cs[victim].alive) {
        /* The kill must find the victim in the middle of runner 2's
         * executions: wait until it ran the first step of one of them (they
         * then wait for their deferred, resolved only after the kill). */
        char in2[LOAD_N * 70 + 64];
        size_t o2 = 0;
        for (int k = 0; k < LOAD_N; k++)
          if (acked[2][k]) o2 += (size_t)snprintf(in2 + o2, sizeof(in2) - o2, "%s'%s'", o2 ? "," : "", ids[2][k]);
        assert_true(o2 > 0);
        char q[sizeof(in2) + 256];
        snprintf(q, sizeof(q), "SELECT count(*) FROM cluster_wf_app WHERE step = 1 AND runner = '%s' AND exec IN (%s)",
                 cs[victim].addr, in2);
        int64_t until = pgt_mono_ms() + TS_DEADLINE_MS / 3;
        while (pgt_scalar(cl.s.admin, q, -1) <= 0 && pgt_mono_ms() < until) ts_sleep_ms(50);
        /* Executions the victim began and has not finished (they cannot
         * finish there any more). */
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM cluster_wf_app a WHERE a.step = 1 AND a.runner = '%s' AND NOT EXISTS "
                 "(SELECT 1 FROM cluster_wf_app b WHERE b.exec = a.exec AND b.step = 2)",
                 cs[victim].addr);
        child_kill(&cs[victim]);
        waiting_on_victim = pgt_scalar(cl.s.admin, sql, -1);
      }
    }
    if (i == 0) assert_false(cs[victim].alive);
  }
  /* The survivors' starts were all accepted (they wait for the new owner). */
  for (int i = 0; i < MAXR; i++)
    for (int k = 0; k < LOAD_N; k++)
      if (i != victim && !acked[i][k]) fail_msg("runner %d: start r%d-%d was refused", i, i, k);
  /* Runner 2's executions: resolved from the survivors. */
  for (int k = 0; k < LOAD_N; k++) {
    if (!acked[2][k]) continue;
    clt_child_cmd(&cs[k % 2], line, sizeof(line), "wfresolve %s go v%d", ids[2][k], k);
    if (strncmp(line, "ok", 2) != 0) fail_msg("resolve r2-%d (%s): %s", k, ids[2][k], line);
  }
  /* Every acknowledged execution completes with the right answer. */
  long long started = 0;
  for (int i = 0; i < MAXR; i++)
    for (int k = 0; k < LOAD_N; k++) {
      if (!acked[i][k]) continue;
      started++;
      char want[256];
      load_answer(i, k, want, sizeof(want));
      expect_answer(&cs[(i + k) % 2], ids[i][k], want);
    }
  /* Each activity's SQL exactly once. */
  assert_exactly_once(&cl, 2 * started);
  /* What the victim began and left was finished by the survivors. */
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM cluster_wf_app a JOIN cluster_wf_app b ON a.exec = b.exec AND a.step = 1 "
           "AND b.step = 2 WHERE a.runner = '%s' AND b.runner <> '%s'",
           cs[victim].addr, cs[victim].addr);
  long long split = pgt_scalar(cl.s.admin, sql, -1);
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM cluster_wf_app WHERE runner = '%s'", cs[victim].addr);
  print_message("%lld executions; %lld activities ran on the killed runner; %lld executions it began were "
                "finished by a survivor (about %lld were unfinished there at the kill)\n",
                started, pgt_scalar(cl.s.admin, sql, -1), split, waiting_on_victim);
  /* Runner 2's executions waited for their deferred until after the kill:
   * those the victim began were certainly finished by a survivor. */
  char in[LOAD_N * 70 + 64];
  size_t off = 0;
  for (int k = 0; k < LOAD_N; k++)
    if (acked[2][k]) off += (size_t)snprintf(in + off, sizeof(in) - off, "%s'%s'", off ? "," : "", ids[2][k]);
  assert_true(off > 0);
  char big[sizeof(in) + 512];
  snprintf(big, sizeof(big), "SELECT count(*) FROM cluster_wf_app WHERE step = 1 AND runner = '%s' AND exec IN (%s)",
           cs[victim].addr, in);
  long long began = pgt_scalar(cl.s.admin, big, -1);
  snprintf(big, sizeof(big),
           "SELECT count(*) FROM cluster_wf_app a JOIN cluster_wf_app b ON a.exec = b.exec AND a.step = 1 "
           "AND b.step = 2 WHERE a.runner = '%s' AND b.runner <> '%s' AND a.exec IN (%s)",
           cs[victim].addr, cs[victim].addr, in);
  /* (Seen on loaded CI machines: the victim had run none of them yet at
   * the kill; then there is nothing of its to check here, the rest of the
   * test still holds.) */
  if (began == 0) print_message("the killed runner had begun none of runner 2's executions\n");
  assert_int_equal(pgt_scalar(cl.s.admin, big, -1), began);
  /* The killed runner's shards are owned again, by the survivors. */
  wait_settled(cs, MAXR);
  cluster_end(&cl);
}

#define DN 6

static void test_deferred_and_cancel_from_another_runner(void **state) {
  (void)state;
  cluster cl;
  cluster_start(&cl);
  clt_child *cs = cl.cs;
  char line[1024];
  /* DN executions waiting on deferred "go" (and DN to cancel), started from
   * runner 0; each is resolved (cancelled) from a runner that does not own
   * it. */
  char rid[DN][64], cid[DN][64];
  for (int k = 0; k < DN; k++) {
    char key[32], input[64];
    snprintf(key, sizeof(key), "res-%d", k);
    snprintf(input, sizeof(input), "d:%s", key);
    start_one(&cs[0], key, input, rid[k], sizeof(rid[k]));
    snprintf(key, sizeof(key), "can-%d", k);
    snprintf(input, sizeof(input), "d:%s", key);
    start_one(&cs[0], key, input, cid[k], sizeof(cid[k]));
  }
  int remote_resolves = 0, remote_cancels = 0;
  for (int k = 0; k < DN; k++) {
    /* Step 1 is committed once the execution suspends on its await. */
    int owner = wait_step(&cl, rid[k], 1);
    int other = (owner + 1 + k % 2) % MAXR;
    clt_child_cmd(&cs[other], line, sizeof(line), "wfpoll %s", rid[k]);
    assert_string_equal(line, "pending");
    clt_child_cmd(&cs[other], line, sizeof(line), "wfresolve %s go v%d", rid[k], k);
    if (strcmp(line, "ok ") != 0 && strcmp(line, "ok") != 0) fail_msg("resolve %s on %s: %s", rid[k], cs[other].addr, line);
    remote_resolves++;
    owner = wait_step(&cl, cid[k], 1);
    other = (owner + 1 + k % 2) % MAXR;
    clt_child_cmd(&cs[other], line, sizeof(line), "wfcancel %s", cid[k]);
    if (strcmp(line, "ok ") != 0 && strcmp(line, "ok") != 0) fail_msg("cancel %s on %s: %s", cid[k], cs[other].addr, line);
    remote_cancels++;
  }
  for (int k = 0; k < DN; k++) {
    char want[128];
    snprintf(want, sizeof(want), "res-%d:v%d:res-%d/2", k, k, k);
    expect_answer(&cs[k % MAXR], rid[k], want);
    clt_child_cmd(&cs[(k + 1) % MAXR], line, sizeof(line), "wfjoin 60000 %s", cid[k]);
    char want_err[32];
    snprintf(want_err, sizeof(want_err), "err %d ", CRUSTER_E_CANCELLED);
    if (strncmp(line, want_err, strlen(want_err)) != 0) fail_msg("cancelled execution %s: '%s'", cid[k], line);
  }
  assert_int_equal(remote_resolves, DN);
  assert_int_equal(remote_cancels, DN);
  /* Resolved ones ran both steps, cancelled ones only the first. */
  assert_exactly_once(&cl, 2 * DN + DN);
  cluster_end(&cl);
}

#define GN 4

/* An execution running on its owner (inside an activity) is cancelled
 * from another runner: it must not answer with success afterwards -- its
 * answer is CRUSTER_E_CANCELLED and the durable calls it made after the
 * cancellation left nothing. */
static void test_cancel_while_running_on_another_runner(void **state) {
  (void)state;
  cluster cl;
  cluster_start(&cl);
  clt_child *cs = cl.cs;
  char line[1024], id[GN][64];
  for (int k = 0; k < GN; k++) {
    char key[32], input[64];
    snprintf(key, sizeof(key), "gate-%d", k);
    snprintf(input, sizeof(input), "g:%s", key);
    start_one(&cs[0], key, input, id[k], sizeof(id[k]));
  }
  for (int k = 0; k < GN; k++) {
    /* In its gate activity, on its owner. */
    int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
    int owner = -1;
    while (owner < 0) {
      char sql[512];
      snprintf(sql, sizeof(sql), "SELECT runner FROM cluster_wf_gate_in WHERE exec = '%s'", id[k]);
      PGresult *r = PQexec(cl.s.admin, sql);
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0) owner = runner_index(&cl, PQgetvalue(r, 0, 0));
      PQclear(r);
      if (owner < 0 && pgt_mono_ms() > end) fail_msg("execution %s never entered its gate", id[k]);
      if (owner < 0) ts_sleep_ms(50);
    }
    int other = (owner + 1 + k % 2) % MAXR;
    clt_child_cmd(&cs[other], line, sizeof(line), "wfcancel %s", id[k]);
    if (strncmp(line, "ok", 2) != 0) fail_msg("cancel %s on %s: %s", id[k], cs[other].addr, line);
    pgt_execf(cl.s.admin, "INSERT INTO cluster_wf_gate (exec) VALUES ('%s')", id[k]);
    clt_child_cmd(&cs[other], line, sizeof(line), "wfjoin 60000 %s", id[k]);
    char want_err[32];
    snprintf(want_err, sizeof(want_err), "err %d ", CRUSTER_E_CANCELLED);
    if (strncmp(line, want_err, strlen(want_err)) != 0)
      fail_msg("execution %s cancelled from %s while running on %s: '%s'", id[k], cs[other].addr,
               cs[owner].addr, line);
  }
  /* Step 2 (after the cancellation) left nothing. */
  assert_int_equal(pgt_scalar(cl.s.admin, "SELECT count(*) FROM cluster_wf_app WHERE step = 2", -1), 0);
  assert_exactly_once(&cl, GN);
  cluster_end(&cl);
}

#define SN 12

static void test_durable_sleep_wakes_on_a_survivor(void **state) {
  (void)state;
  cluster cl;
  cluster_start(&cl);
  clt_child *cs = cl.cs;
  /* SN executions sleep 4 s between their steps; once all sleep, a runner
   * (not runner 0, which the test talks to) that owns some is killed. */
  char id[SN][64];
  int owner[SN];
  for (int k = 0; k < SN; k++) {
    char key[32], input[64];
    snprintf(key, sizeof(key), "sl-%d", k);
    snprintf(input, sizeof(input), "s4000:%s", key);
    start_one(&cs[0], key, input, id[k], sizeof(id[k]));
  }
  int owns[MAXR] = {0};
  for (int k = 0; k < SN; k++) {
    owner[k] = wait_step(&cl, id[k], 1);
    owns[owner[k]]++;
  }
  int victim = owns[1] >= owns[2] ? 1 : 2;
  if (owns[victim] == 0) fail_msg("runners 1 and 2 own none of %d executions", SN);
  /* Nothing has woken yet: the sleeps are durable suspensions. */
  child_kill(&cs[victim]);
  for (int k = 0; k < SN; k++) {
    char want[128];
    snprintf(want, sizeof(want), "sl-%d:slept:sl-%d/2", k, k);
    expect_answer(&cs[0], id[k], want);
  }
  /* The victim's executions finished on a survivor. */
  char sql[512];
  snprintf(sql, sizeof(sql), "SELECT count(*) FROM cluster_wf_app a JOIN cluster_wf_app b ON a.exec = b.exec "
                             "AND a.step = 1 AND b.step = 2 WHERE a.runner = '%s' AND b.runner <> '%s'",
           cs[victim].addr, cs[victim].addr);
  assert_int_equal(pgt_scalar(cl.s.admin, sql, -1), owns[victim]);
  assert_exactly_once(&cl, 2 * SN);
  wait_settled(cs, MAXR);
  cluster_end(&cl);
}

#define TPV "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void test_traceparent_across_runners(void **state) {
  (void)state;
  cluster cl;
  cluster_start(&cl);
  clt_child *cs = cl.cs;
  char line[1024], who[64], who2[64], tp[128];
  int local = 0, remote = 0, relayed_across = 0;
  for (int e = 0; e < 24; e++) {
    /* With a traceparent: the handler sees it, wherever it runs. */
    clt_child_cmd(&cs[0], line, sizeof(line), "trcall %s Trace t%d get x", TPV, e);
    if (sscanf(line, "ok %63s %127s", who, tp) != 2) fail_msg("t%d: %s", e, line);
    assert_string_equal(tp, TPV);
    if (strcmp(who, cs[0].addr) == 0) local++;
    else remote++;
    /* Without: none. */
    clt_child_cmd(&cs[0], line, sizeof(line), "call Trace t%d get x", e);
    if (sscanf(line, "ok %63s %127s", who, tp) != 2) fail_msg("t%d: %s", e, line);
    assert_string_equal(tp, "-");
    /* A handler passes it on (to t<e+7>, often on another runner). */
    clt_child_cmd(&cs[1], line, sizeof(line), "trcall %s Trace t%d relay t%d", TPV, e, e + 7);
    if (sscanf(line, "ok %63s %63s %127s", who, who2, tp) != 3) fail_msg("relay t%d: %s", e, line);
    assert_string_equal(tp, TPV);
    if (strcmp(who, who2) != 0) relayed_across++;
  }
  assert_true(local > 0);
  assert_true(remote > 0);
  assert_true(relayed_across > 0);
  /* A bad one is refused before anything is sent. */
  clt_child_cmd(&cs[0], line, sizeof(line), "trcall 00-xyz Trace t0 get x");
  char want[128];
  snprintf(want, sizeof(want), "err %d opts.traceparent is not W3C trace context: ", CRUSTER_E_INVALID_ARGUMENT);
  if (strncmp(line, want, strlen(want)) != 0) fail_msg("bad traceparent: %s", line);
  cluster_end(&cl);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigkill_under_workflow_load),
      cmocka_unit_test(test_deferred_and_cancel_from_another_runner),
      cmocka_unit_test(test_cancel_while_running_on_another_runner),
      cmocka_unit_test(test_durable_sleep_wakes_on_a_survivor),
      cmocka_unit_test(test_traceparent_across_runners),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
