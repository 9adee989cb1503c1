/* Durable workflows through the public C API: activities journaled and
 * replayed, suspension (sleep, deferreds, retry waits), cancellation,
 * determinism errors, version markers, activity groups, keys, restart and
 * bad input. Run with memory storage here and with PostgreSQL by
 * tests/integration/test_workflow_pg.c (which adds what only a database
 * shows: activities' SQL in their transaction, crashes).
 * No assertion depends on timing: waits poll for a state up to a generous
 * deadline; "never early" is checked on the journaled clock values. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <uv.h>

#pragma GCC diagnostic ignored "-Wunused-function"

#ifdef TS_STORAGE_PG
#include "../integration/pg_support.h"
#else
#include "test_support.h"
#endif

/* ---- shared state of the test workflows (tests run one at a time) ---- */

static atomic_int g_runs;      /* runs of execute */
static atomic_int g_act_a, g_act_b, g_act_c; /* activity attempts */
static atomic_int g_fail_until; /* activity "flaky" fails while attempt < this */
static atomic_int g_version;   /* which code the "evolving" workflow runs */
static atomic_int g_in_activity, g_release; /* a blocking activity */
static int32_t g_attempts_seen[16];
static atomic_int g_nattempts;

static void reset_globals(void) {
  atomic_store(&g_runs, 0);
  atomic_store(&g_act_a, 0);
  atomic_store(&g_act_b, 0);
  atomic_store(&g_act_c, 0);
  atomic_store(&g_fail_until, 0);
  atomic_store(&g_version, 1);
  atomic_store(&g_in_activity, 0);
  atomic_store(&g_release, 0);
  atomic_store(&g_nattempts, 0);
}

static void act_echo(void *user, cruster_activity *act) {
  atomic_int *counter = user;
  if (counter) atomic_fetch_add(counter, 1);
  size_t len;
  const char *in = cruster_activity_input(act, &len);
  char out[256];
  int n = snprintf(out, sizeof(out), "%s(%.*s)", cruster_activity_name(act), (int)len, in ? in : "");
  cruster_activity_reply(act, out, (size_t)n);
}

static void act_flaky(void *user, cruster_activity *act) {
  (void)user;
  int32_t a = cruster_activity_attempt(act);
  int i = atomic_fetch_add(&g_nattempts, 1);
  if (i < 16) g_attempts_seen[i] = a;
  if (a < atomic_load(&g_fail_until)) {
    cruster_activity_fail(act, CRUSTER_E_APPLICATION - 7, "flaky says no");
    return;
  }
  cruster_activity_reply(act, "ok", 2);
}

static void act_block(void *user, cruster_activity *act) {
  (void)user;
  atomic_store(&g_in_activity, 1);
  while (!atomic_load(&g_release)) ts_sleep_ms(1);
  cruster_activity_reply(act, "unblocked", 9);
}

/* Ends a run the way the header's example does. */
static void finish(cruster_wf *wf, int rc, const char *out) {
  if (rc == CRUSTER_OK) cruster_wf_complete(wf, out, strlen(out));
  else if (!cruster_wf_stopped(wf)) cruster_wf_fail(wf, rc, "a durable call failed");
}

/* a(input) then b(a's answer): "b(a(x))". */
static void wf_chain(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  void *ra = NULL, *rb = NULL;
  size_t la = 0, lb = 0;
  int rc = cruster_wf_activity(wf, "a", in, len, &ra, &la, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_activity(wf, "b", ra, la, &rb, &lb, NULL);
  finish(wf, rc, rb ? (const char *)rb : "");
  cruster_free(ra);
  cruster_free(rb);
}

/* a, then await "go", then "a(..)+<go's value>". */
static void wf_waits(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  void *ra = NULL, *go = NULL;
  size_t la = 0, lg = 0;
  cruster_error *err = NULL;
  int rc = cruster_wf_activity(wf, "a", in, len, &ra, &la, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_await(wf, "go", &go, &lg, &err);
  if (rc == CRUSTER_OK) {
    char out[512];
    snprintf(out, sizeof(out), "%.*s+%.*s", (int)la, (char *)ra, (int)lg, (char *)go);
    cruster_wf_complete(wf, out, strlen(out));
  } else if (!cruster_wf_stopped(wf)) {
    cruster_wf_fail(wf, rc, err ? cruster_error_message(err) : "failed");
  }
  cruster_error_free(err);
  cruster_free(ra);
  cruster_free(go);
}

/* now; sleep(input ms); sleep(input ms); now: answers "<t0> <t1>". */
static void wf_sleeps(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  size_t len;
  const char *in = cruster_wf_input(wf, &len);
  int64_t ms = atoll(in), t0 = 0, t1 = 0;
  int rc = cruster_wf_now(wf, &t0, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, ms, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, ms, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_now(wf, &t1, NULL);
  char out[64];
  snprintf(out, sizeof(out), "%lld %lld", (long long)t0, (long long)t1);
  finish(wf, rc, out);
}

/* random(8); sleep(1); answers the bytes as hex (same on every run). */
static char g_first_random[17];
static void wf_random(void *user, cruster_wf *wf) {
  (void)user;
  int run = atomic_fetch_add(&g_runs, 1);
  unsigned char r[8];
  int rc = cruster_wf_random(wf, r, sizeof(r), NULL);
  char hex[17] = {0};
  for (int i = 0; rc == CRUSTER_OK && i < 8; i++) snprintf(hex + 2 * i, 3, "%02x", r[i]);
  if (rc == CRUSTER_OK && run == 0) memcpy(g_first_random, hex, sizeof(hex));
  if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, 1, NULL);
  finish(wf, rc, hex);
}

/* flaky, answers its answer or fails with its code. */
static void wf_flaky(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  cruster_error *err = NULL;
  int rc = cruster_wf_activity(wf, "flaky", NULL, 0, NULL, NULL, &err);
  if (rc == CRUSTER_OK) cruster_wf_complete(wf, "done", 4);
  else if (!cruster_wf_stopped(wf)) cruster_wf_fail(wf, rc, cruster_error_message(err));
  cruster_error_free(err);
}

/* block (an activity the test releases), then a: cancellation while it runs. */
static void wf_blocking(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  int rc = cruster_wf_activity(wf, "block", NULL, 0, NULL, NULL, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_activity(wf, "a", "x", 1, NULL, NULL, NULL);
  finish(wf, rc, "finished");
}

/* Version 1: a, await go. Version 2 (a changed order): b, await go.
 * Version 3 (a patch): a, patched("add-c") ? c : -, await go. */
static void wf_evolving(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  int v = atomic_load(&g_version), rc = CRUSTER_OK, yes = 0;
  cruster_error *err = NULL;
  if (v == 2) rc = cruster_wf_activity(wf, "b", "x", 1, NULL, NULL, &err);
  else rc = cruster_wf_activity(wf, "a", "x", 1, NULL, NULL, &err);
  if (rc == CRUSTER_OK && v == 3) rc = cruster_wf_patched(wf, "add-c", &yes, &err);
  if (rc == CRUSTER_OK && yes) rc = cruster_wf_activity(wf, "c", "x", 1, NULL, NULL, &err);
  if (rc == CRUSTER_OK) rc = cruster_wf_await(wf, "go", NULL, NULL, &err);
  finish(wf, rc, yes ? "patched" : "unpatched");
  cruster_error_free(err);
}

/* Activity groups: "Inventory/reserve" and "Payments/reserve". */
static char g_group_msg[512];
static void wf_groups(void *user, cruster_wf *wf) {
  (void)user;
  cruster_error *err = NULL;
  int amb = cruster_wf_activity(wf, "reserve", "1", 1, NULL, NULL, &err);
  snprintf(g_group_msg, sizeof(g_group_msg), "%s:%s", cruster_status_name(amb),
           err ? cruster_error_message(err) : "");
  cruster_error_free(err);
  void *r1 = NULL, *r2 = NULL;
  size_t l1 = 0, l2 = 0;
  int rc = cruster_wf_activity(wf, "Inventory/reserve", "1", 1, &r1, &l1, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_activity(wf, "Payments/reserve", "2", 1, &r2, &l2, NULL);
  char out[512];
  snprintf(out, sizeof(out), "%.*s %.*s", (int)l1, r1 ? (char *)r1 : "", (int)l2, r2 ? (char *)r2 : "");
  finish(wf, rc, out);
  cruster_free(r1);
  cruster_free(r2);
}

static void wf_silent(void *user, cruster_wf *wf) {
  (void)user;
  (void)wf; /* returns without an answer */
}

/* An entity the workflows call: counts its runs, answers "got <payload>". */
static atomic_int g_entity_runs;
static void h_count(void *user, cruster_request *req) {
  (void)user;
  atomic_fetch_add(&g_entity_runs, 1);
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char out[256];
  int n = snprintf(out, sizeof(out), "got %.*s", (int)len, p);
  cruster_request_reply(req, out, (size_t)n);
}

/* call Acct/bump (protected), sleep (a replay), answer the call's answer. */
static void wf_calls(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  void *r = NULL;
  size_t l = 0;
  int rc = cruster_wf_call(wf, "Acct", "a1", "bump", "5", 1, &r, &l, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, 1, NULL);
  char out[256];
  snprintf(out, sizeof(out), "%.*s", (int)l, r ? (char *)r : "");
  finish(wf, rc, out);
  cruster_free(r);
}

/* child Chain(input), sleep (a replay), answer "child: <its answer>". */
static void wf_parent(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  void *r = NULL;
  size_t l = 0;
  int rc = cruster_wf_child(wf, "Chain", in, len, NULL, 0, &r, &l, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, 1, NULL);
  char out[256];
  snprintf(out, sizeof(out), "child: %.*s", (int)l, r ? (char *)r : "");
  finish(wf, rc, out);
  cruster_free(r);
}

/* ---- helpers ------------------------------------------------------------ */

static cruster_runtime *rt_with(const char *extra) { return ts_runtime(extra, NULL, 0); }

static void reg(cruster_runtime *rt, cruster_workflow_def *d) {
  cruster_error *err = NULL;
  if (cruster_runtime_register_workflow(rt, d, &err) != CRUSTER_OK)
    fail_msg("register_workflow: %s", cruster_error_message(err));
  cruster_workflow_def_free(d);
}

static cruster_workflow_def *wdef(const char *name, cruster_workflow_fn fn) {
  cruster_workflow_def *d = NULL;
  cruster_error *err = NULL;
  if (cruster_workflow_def_new(name, fn, NULL, &d, &err) != CRUSTER_OK)
    fail_msg("workflow_def_new: %s", cruster_error_message(err));
  return d;
}

static void act(cruster_workflow_def *d, const char *name, cruster_activity_fn fn, void *user,
                const cruster_activity_opts *o) {
  cruster_error *err = NULL;
  if (cruster_workflow_def_add_activity(d, name, fn, user, o, &err) != CRUSTER_OK)
    fail_msg("add_activity %s: %s", name, cruster_error_message(err));
}

static cruster_workflow_opts key_opts(const char *key, int raw) {
  cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
  o.key = key;
  o.key_len = strlen(key);
  o.raw_key = raw;
  o.timeout_ms = TS_DEADLINE_MS;
  return o;
}

/* execute_sync with a key; the answer (or message) into out. */
static int run_wf(cruster_runtime *rt, const char *wf, const char *input, const char *key,
                  char *out, size_t outsz) {
  cruster_workflow_opts o = key_opts(key, 0);
  void *rep = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  int rc = cruster_workflow_execute_sync(rt, wf, input, strlen(input), &o, &rep, &len, &err);
  if (out)
    snprintf(out, outsz, "%.*s", rc == CRUSTER_OK ? (int)len : (int)strlen(cruster_error_message(err)),
             rc == CRUSTER_OK ? (rep ? (char *)rep : "") : cruster_error_message(err));
  cruster_free(rep);
  cruster_error_free(err);
  return rc;
}

static char *start_wf(cruster_runtime *rt, const char *wf, const char *input, const char *key) {
  cruster_workflow_opts o = key_opts(key, 0);
  char *id = NULL;
  cruster_error *err = NULL;
  if (cruster_workflow_start(rt, wf, input, strlen(input), &o, &id, &err) != CRUSTER_OK)
    fail_msg("start %s: %s", wf, cruster_error_message(err));
  return id;
}

/* Waits for the answer of execution `id`; status, with answer/message in out. */
static int join_wf(cruster_runtime *rt, const char *wf, const char *id, char *out, size_t outsz) {
  void *rep = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  int rc = cruster_workflow_join_sync(rt, wf, id, TS_DEADLINE_MS, &rep, &len, &err);
  if (out)
    snprintf(out, outsz, "%.*s", rc == CRUSTER_OK ? (int)len : (int)strlen(cruster_error_message(err)),
             rc == CRUSTER_OK ? (rep ? (char *)rep : "") : cruster_error_message(err));
  cruster_free(rep);
  cruster_error_free(err);
  return rc;
}

static atomic_int *g_wait_counter;
static int g_wait_target;
static int counter_reached(void *arg) {
  (void)arg;
  return atomic_load(g_wait_counter) >= g_wait_target;
}
static int wait_count(atomic_int *c, int n) {
  g_wait_counter = c;
  g_wait_target = n;
  return ts_eventually(counter_reached, NULL);
}

/* ---- tests -------------------------------------------------------------- */

static void activities_run_once_and_the_answer_is_kept(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Chain", wf_chain);
  act(d, "a", act_echo, &g_act_a, NULL);
  act(d, "b", act_echo, &g_act_b, NULL);
  reg(rt, d);
  char out[256];
  assert_int_equal(run_wf(rt, "Chain", "x", "k1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "b(a(x))");
  /* The same key: the stored answer, nothing runs again. */
  assert_int_equal(run_wf(rt, "Chain", "other input", "k1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "b(a(x))");
  assert_int_equal(atomic_load(&g_act_a), 1);
  assert_int_equal(atomic_load(&g_act_b), 1);
  assert_int_equal(atomic_load(&g_runs), 1);
  /* Another key: another execution. */
  assert_int_equal(run_wf(rt, "Chain", "y", "k2", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "b(a(y))");
  cruster_runtime_free(rt);
}

static void a_deferred_resumes_the_execution_and_replays_the_journal(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Waits", wf_waits);
  act(d, "a", act_echo, &g_act_a, NULL);
  reg(rt, d);
  char *id = start_wf(rt, "Waits", "in", "w1");
  assert_true(wait_count(&g_runs, 1));
  /* Suspended at the await: no answer yet. */
  int ready = -1;
  cruster_error *err = NULL;
  assert_true(wait_count(&g_act_a, 1));
  int rc = cruster_workflow_poll(rt, "Waits", id, &ready, NULL, NULL, &err);
  assert_int_equal(rc, CRUSTER_OK);
  assert_int_equal(ready, 0);
  assert_int_equal(cruster_workflow_resolve(rt, "Waits", id, "go", "GO", 2, &err), CRUSTER_OK);
  /* A second outcome is refused: resolved already -- or, when the
   * execution was quick, finished already. Either way "GO" stays. */
  int again = cruster_workflow_resolve(rt, "Waits", id, "go", "NO", 2, &err);
  assert_true(again == CRUSTER_E_ALREADY_EXISTS || again == CRUSTER_E_STATE);
  cruster_error_free(err);
  err = NULL;
  char out[256];
  assert_int_equal(join_wf(rt, "Waits", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "a(in)+GO");
  assert_int_equal(atomic_load(&g_act_a), 1); /* replayed, not run again */
  assert_true(atomic_load(&g_runs) >= 2);
  /* Finished: poll answers; resolving or cancelling is refused. */
  void *rep = NULL;
  size_t len = 0;
  assert_int_equal(cruster_workflow_poll(rt, "Waits", id, &ready, &rep, &len, &err), CRUSTER_OK);
  assert_int_equal(ready, 1);
  assert_memory_equal(rep, "a(in)+GO", len);
  cruster_free(rep);
  assert_int_equal(cruster_workflow_cancel(rt, "Waits", id, &err), CRUSTER_E_STATE);
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void a_rejected_deferred_gives_its_code(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Waits", wf_waits);
  act(d, "a", act_echo, &g_act_a, NULL);
  reg(rt, d);
  char *id = start_wf(rt, "Waits", "in", "rej");
  assert_true(wait_count(&g_act_a, 1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_reject(rt, "Waits", id, "go", CRUSTER_E_APPLICATION - 3,
                                           "approval denied", &err),
                   CRUSTER_OK);
  char out[256];
  assert_int_equal(join_wf(rt, "Waits", id, out, sizeof(out)), CRUSTER_E_APPLICATION - 3);
  assert_non_null(strstr(out, "approval denied"));
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void every_sleep_sleeps_and_never_wakes_early(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  reg(rt, wdef("Sleeps", wf_sleeps));
  char out[128];
  assert_int_equal(run_wf(rt, "Sleeps", "150", "s1", out, sizeof(out)), CRUSTER_OK);
  long long t0 = 0, t1 = 0;
  assert_int_equal(sscanf(out, "%lld %lld", &t0, &t1), 2);
  /* Two sleeps of 150 ms: journaled times at least 300 ms apart. */
  assert_true(t1 - t0 >= 300);
  /* It suspended (no thread held) and ran again for each sleep. */
  assert_true(atomic_load(&g_runs) >= 3);
  cruster_runtime_free(rt);
}

static void time_and_random_bytes_are_journaled(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  reg(rt, wdef("Random", wf_random));
  char out[64];
  assert_int_equal(run_wf(rt, "Random", "r", "r1", out, sizeof(out)), CRUSTER_OK);
  assert_true(atomic_load(&g_runs) >= 2);
  assert_string_equal(out, g_first_random); /* the replay saw the first run's bytes */
  cruster_runtime_free(rt);
}

static void retries_count_attempts_then_succeed(void **state) {
  (void)state;
  reset_globals();
  atomic_store(&g_fail_until, 3); /* attempts 1 and 2 fail */
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Flaky", wf_flaky);
  cruster_activity_opts o = CRUSTER_ACTIVITY_OPTS_INIT;
  o.retries = 3;
  o.backoff = CRUSTER_BACKOFF_CONSTANT;
  o.backoff_base_ms = 20;
  act(d, "flaky", act_flaky, NULL, &o);
  reg(rt, d);
  char out[128];
  assert_int_equal(run_wf(rt, "Flaky", "f", "f1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "done");
  assert_int_equal(atomic_load(&g_nattempts), 3);
  assert_int_equal(g_attempts_seen[0], 1);
  assert_int_equal(g_attempts_seen[1], 2);
  assert_int_equal(g_attempts_seen[2], 3);
  cruster_runtime_free(rt);
}

static void exhausted_retries_fail_and_restart_runs_again(void **state) {
  (void)state;
  reset_globals();
  atomic_store(&g_fail_until, 1000);
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Flaky", wf_flaky);
  cruster_activity_opts o = CRUSTER_ACTIVITY_OPTS_INIT;
  o.retries = 1;
  o.backoff_base_ms = 10;
  act(d, "flaky", act_flaky, NULL, &o);
  reg(rt, d);
  char out[256];
  assert_int_equal(run_wf(rt, "Flaky", "f", "f2", out, sizeof(out)), CRUSTER_E_APPLICATION - 7);
  assert_non_null(strstr(out, "flaky says no"));
  assert_int_equal(atomic_load(&g_nattempts), 2);
  /* The failure is the answer for the key. */
  assert_int_equal(run_wf(rt, "Flaky", "f", "f2", out, sizeof(out)), CRUSTER_E_APPLICATION - 7);
  assert_int_equal(atomic_load(&g_nattempts), 2);
  /* Restart: runs again, and this time the activity succeeds. */
  atomic_store(&g_fail_until, 0);
  char *id = NULL;
  cruster_workflow_opts ko = key_opts("f2", 0);
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_execution_id(rt, "Flaky", "f", 1, &ko, &id, &err), CRUSTER_OK);
  assert_int_equal(cruster_workflow_restart(rt, "Flaky", id, &err), CRUSTER_OK);
  assert_int_equal(join_wf(rt, "Flaky", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "done");
  /* A succeeded execution is not restarted. */
  assert_int_equal(cruster_workflow_restart(rt, "Flaky", id, &err), CRUSTER_E_STATE);
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void cancel_while_suspended(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Waits", wf_waits);
  act(d, "a", act_echo, &g_act_a, NULL);
  reg(rt, d);
  char *id = start_wf(rt, "Waits", "in", "c1");
  assert_true(wait_count(&g_act_a, 1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_cancel(rt, "Waits", id, &err), CRUSTER_OK);
  char out[256];
  assert_int_equal(join_wf(rt, "Waits", id, out, sizeof(out)), CRUSTER_E_CANCELLED);
  assert_int_equal(cruster_workflow_cancel(rt, "Waits", id, &err), CRUSTER_E_STATE);
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void cancel_while_running_stops_at_the_next_durable_call(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Blocking", wf_blocking);
  act(d, "block", act_block, NULL, NULL);
  act(d, "a", act_echo, &g_act_a, NULL);
  reg(rt, d);
  char *id = start_wf(rt, "Blocking", "in", "c2");
  assert_true(wait_count(&g_in_activity, 1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_cancel(rt, "Blocking", id, &err), CRUSTER_OK);
  atomic_store(&g_release, 1);
  char out[256];
  assert_int_equal(join_wf(rt, "Blocking", id, out, sizeof(out)), CRUSTER_E_CANCELLED);
  assert_int_equal(atomic_load(&g_act_a), 0); /* stopped before it */
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void changed_code_is_a_determinism_error_naming_both(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Evolving", wf_evolving);
  act(d, "a", act_echo, &g_act_a, NULL);
  act(d, "b", act_echo, &g_act_b, NULL);
  act(d, "c", act_echo, &g_act_c, NULL);
  reg(rt, d);
  char *id = start_wf(rt, "Evolving", "in", "d1");
  assert_true(wait_count(&g_act_a, 1));
  atomic_store(&g_version, 2);
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_resolve(rt, "Evolving", id, "go", "", 0, &err), CRUSTER_OK);
  char out[512];
  assert_int_equal(join_wf(rt, "Evolving", id, out, sizeof(out)), CRUSTER_E_DETERMINISM);
  assert_non_null(strstr(out, "activity \"a\""));
  assert_non_null(strstr(out, "activity \"b\""));
  assert_int_equal(atomic_load(&g_act_b), 0);
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void a_patch_keeps_old_executions_on_the_old_path(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Evolving", wf_evolving);
  act(d, "a", act_echo, &g_act_a, NULL);
  act(d, "b", act_echo, &g_act_b, NULL);
  act(d, "c", act_echo, &g_act_c, NULL);
  reg(rt, d);
  char *old = start_wf(rt, "Evolving", "in", "p-old");
  assert_true(wait_count(&g_act_a, 1));
  atomic_store(&g_version, 3);
  char *young = start_wf(rt, "Evolving", "in", "p-new");
  assert_true(wait_count(&g_act_c, 1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_resolve(rt, "Evolving", old, "go", "", 0, &err), CRUSTER_OK);
  assert_int_equal(cruster_workflow_resolve(rt, "Evolving", young, "go", "", 0, &err), CRUSTER_OK);
  char out[256];
  assert_int_equal(join_wf(rt, "Evolving", old, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "unpatched");
  assert_int_equal(join_wf(rt, "Evolving", young, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "patched");
  assert_int_equal(atomic_load(&g_act_c), 1);
  cruster_free(old);
  cruster_free(young);
  cruster_runtime_free(rt);
}

static void activity_groups_do_not_collide(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_activity_group *inv = NULL, *pay = NULL;
  assert_int_equal(cruster_activity_group_new("Inventory", &inv, NULL), CRUSTER_OK);
  assert_int_equal(cruster_activity_group_new("Payments", &pay, NULL), CRUSTER_OK);
  assert_int_equal(cruster_activity_group_add_activity(inv, "reserve", act_echo, &g_act_a, NULL, NULL),
                   CRUSTER_OK);
  assert_int_equal(cruster_activity_group_add_activity(pay, "reserve", act_echo, &g_act_b, NULL, NULL),
                   CRUSTER_OK);
  cruster_workflow_def *d = wdef("Groups", wf_groups);
  assert_int_equal(cruster_workflow_def_add_group(d, inv, NULL), CRUSTER_OK);
  assert_int_equal(cruster_workflow_def_add_group(d, pay, NULL), CRUSTER_OK);
  assert_int_equal(cruster_workflow_def_add_group(d, pay, NULL), CRUSTER_E_ALREADY_EXISTS);
  cruster_activity_group_free(inv);
  cruster_activity_group_free(pay);
  reg(rt, d);
  char out[256];
  assert_int_equal(run_wf(rt, "Groups", "g", "g1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "Inventory/reserve(1) Payments/reserve(2)");
  assert_non_null(strstr(g_group_msg, "CRUSTER_E_INVALID_ARGUMENT"));
  assert_non_null(strstr(g_group_msg, "ambiguous"));
  assert_int_equal(atomic_load(&g_act_a), 1);
  assert_int_equal(atomic_load(&g_act_b), 1);
  cruster_runtime_free(rt);
}

static int key_first_byte(void *user, const void *input, size_t len, void *out, size_t cap,
                          size_t *out_len) {
  (void)user;
  (void)cap;
  if (len == 0) return CRUSTER_E_INVALID_ARGUMENT;
  memcpy(out, "order-", 6);
  memcpy((char *)out + 6, input, 1);
  *out_len = 7;
  return CRUSTER_OK;
}

static void execution_ids_follow_the_key(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *d = wdef("Chain", wf_chain);
  act(d, "a", act_echo, NULL, NULL);
  act(d, "b", act_echo, NULL, NULL);
  reg(rt, d);
  cruster_workflow_def *k = wdef("Keyed", wf_chain);
  act(k, "a", act_echo, NULL, NULL);
  act(k, "b", act_echo, NULL, NULL);
  assert_int_equal(cruster_workflow_def_set_key(k, key_first_byte, NULL, 0, NULL), CRUSTER_OK);
  reg(rt, k);
  char hex[33], *id = NULL;
  cruster_hex128("order-42", 8, hex);
  cruster_workflow_opts o = key_opts("order-42", 0);
  assert_int_equal(cruster_workflow_execution_id(rt, "Chain", "x", 1, &o, &id, NULL), CRUSTER_OK);
  assert_string_equal(id, hex);
  cruster_free(id);
  o = key_opts("order-42", 1);
  assert_int_equal(cruster_workflow_execution_id(rt, "Chain", "x", 1, &o, &id, NULL), CRUSTER_OK);
  assert_string_equal(id, "order-42");
  cruster_free(id);
  /* No key: the input's HEX128; with the definition's key function: its key, raw. */
  cruster_hex128("abc", 3, hex);
  assert_int_equal(cruster_workflow_execution_id(rt, "Chain", "abc", 3, NULL, &id, NULL), CRUSTER_OK);
  assert_string_equal(id, hex);
  cruster_free(id);
  assert_int_equal(cruster_workflow_execution_id(rt, "Keyed", "9zz", 3, NULL, &id, NULL), CRUSTER_OK);
  assert_string_equal(id, "order-9");
  cruster_free(id);
  /* The start returns the same id, and the execution runs under it. */
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_start(rt, "Keyed", "9zz", 3, NULL, &id, &err), CRUSTER_OK);
  assert_string_equal(id, "order-9");
  char out[128];
  assert_int_equal(join_wf(rt, "Keyed", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "b(a(9zz))");
  cruster_free(id);
  cruster_runtime_free(rt);
}

static void bad_input_gets_clear_errors(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with("max_payload_size=1024");
  cruster_workflow_def *d = NULL;
  cruster_error *err = NULL;
  /* Definitions. */
  assert_int_equal(cruster_workflow_def_new("", wf_chain, NULL, &d, &err), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  assert_int_equal(cruster_workflow_def_new("W", NULL, NULL, &d, &err), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  char longname[300];
  memset(longname, 'n', sizeof(longname) - 1);
  longname[250] = 0; /* 250 + "Workflow/" > 255 */
  assert_int_equal(cruster_workflow_def_new(longname, wf_chain, NULL, &d, &err), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  d = wdef("Chain", wf_chain);
  assert_int_equal(cruster_workflow_def_add_activity(d, "a/b", act_echo, NULL, NULL, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  cruster_activity_opts o = CRUSTER_ACTIVITY_OPTS_INIT;
  o.retries = -1;
  assert_int_equal(cruster_workflow_def_add_activity(d, "a", act_echo, NULL, &o, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "retries"));
  cruster_error_free(err);
  err = NULL;
  o.retries = 1;
  o.size = 3;
  assert_int_equal(cruster_workflow_def_add_activity(d, "a", act_echo, NULL, &o, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  act(d, "a", act_echo, NULL, NULL);
  act(d, "b", act_echo, NULL, NULL);
  assert_int_equal(cruster_workflow_def_add_activity(d, "a", act_echo, NULL, NULL, &err),
                   CRUSTER_E_ALREADY_EXISTS);
  cruster_error_free(err);
  err = NULL;
  reg(rt, d);
  d = wdef("Chain", wf_chain);
  act(d, "a", act_echo, NULL, NULL);
  assert_int_equal(cruster_runtime_register_workflow(rt, d, &err), CRUSTER_E_ALREADY_EXISTS);
  cruster_error_free(err);
  err = NULL;
  cruster_workflow_def_free(d);
  /* Clients. */
  char *id = NULL;
  assert_int_equal(cruster_workflow_start(rt, "Nope", "x", 1, NULL, &id, &err), CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  err = NULL;
  cruster_workflow_opts ko = key_opts("k", 0);
  ko.timeout_ms = 2000;
  assert_int_equal(cruster_workflow_start(rt, "Nope", "x", 1, &ko, &id, &err),
                   CRUSTER_E_UNKNOWN_ENTITY_TYPE);
  cruster_error_free(err);
  err = NULL;
  char big[2048];
  memset(big, 'b', sizeof(big));
  assert_int_equal(cruster_workflow_start(rt, "Chain", big, sizeof(big), &ko, &id, &err),
                   CRUSTER_E_PAYLOAD_TOO_LARGE);
  cruster_error_free(err);
  err = NULL;
  static char hugekey[CRUSTER_MAX_KEY_LEN + 2];
  memset(hugekey, 'k', sizeof(hugekey) - 1);
  cruster_workflow_opts hk = key_opts(hugekey, 0);
  assert_int_equal(cruster_workflow_start(rt, "Chain", "x", 1, &hk, &id, &err),
                   CRUSTER_E_PAYLOAD_TOO_LARGE);
  cruster_error_free(err);
  err = NULL;
  cruster_workflow_opts raw = key_opts("bad\x01id", 1);
  assert_int_equal(cruster_workflow_start(rt, "Chain", "x", 1, &raw, &id, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  cruster_workflow_opts small = key_opts("k", 0);
  small.size = 4;
  assert_int_equal(cruster_workflow_start(rt, "Chain", "x", 1, &small, &id, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  err = NULL;
  int ready;
  assert_int_equal(cruster_workflow_poll(rt, "Chain", "no-such-id", &ready, NULL, NULL, &err),
                   CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  err = NULL;
  assert_int_equal(cruster_workflow_resolve(rt, "Chain", "no-such-id", "go", "", 0, &err),
                   CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  err = NULL;
  assert_int_equal(cruster_workflow_resolve(rt, "Chain", "x", "bad\nname", "", 0, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_null(id);
  cruster_runtime_free(rt);
}

static void execute_without_an_answer_fails(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  reg(rt, wdef("Silent", wf_silent));
  char out[256];
  assert_int_equal(run_wf(rt, "Silent", "s", "s1", out, sizeof(out)), CRUSTER_E_HANDLER);
  assert_non_null(strstr(out, "without an answer"));
  cruster_runtime_free(rt);
}

static void a_runtime_without_storage_refuses_workflows(void **state) {
  (void)state;
#ifndef TS_STORAGE_PG
  cruster_config *cfg = ts_config(NULL);
  cruster_runtime *rt = NULL;
  assert_int_equal(cruster_runtime_new(cfg, NULL, NULL, &rt, NULL), CRUSTER_OK);
  cruster_config_free(cfg);
  cruster_workflow_def *d = wdef("Chain", wf_chain);
  cruster_error *err = NULL;
  assert_int_equal(cruster_runtime_register_workflow(rt, d, &err), CRUSTER_E_INVALID_CONFIG);
  assert_non_null(strstr(cruster_error_message(err), "storage"));
  cruster_error_free(err);
  cruster_workflow_def_free(d);
  cruster_runtime_free(rt);
#endif
}

static void a_durable_entity_call_is_sent_once(void **state) {
  (void)state;
  reset_globals();
  atomic_store(&g_entity_runs, 0);
  cruster_entity_def *ed = def_new("Acct");
  add(ed, "bump", CRUSTER_RPC_PERSISTED | CRUSTER_RPC_PROTECTED, h_count, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &ed, 1);
  cruster_entity_def_free(ed);
  reg(rt, wdef("Calls", wf_calls));
  char out[128];
  assert_int_equal(run_wf(rt, "Calls", "c", "call-1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "got 5");
  assert_true(atomic_load(&g_runs) >= 2);       /* replayed after the sleep */
  assert_int_equal(atomic_load(&g_entity_runs), 1); /* but sent once */
  cruster_runtime_free(rt);
}

static void a_child_workflow_runs_once_and_its_answer_is_journaled(void **state) {
  (void)state;
  reset_globals();
  cruster_runtime *rt = rt_with(NULL);
  cruster_workflow_def *c = wdef("Chain", wf_chain);
  act(c, "a", act_echo, &g_act_a, NULL);
  act(c, "b", act_echo, &g_act_b, NULL);
  reg(rt, c);
  reg(rt, wdef("Parent", wf_parent));
  char out[128];
  assert_int_equal(run_wf(rt, "Parent", "z", "parent-1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "child: b(a(z))");
  assert_int_equal(atomic_load(&g_act_a), 1);
  assert_int_equal(atomic_load(&g_act_b), 1);
  /* The child is an execution of its own, under "<parent id>/0". */
  char *pid = NULL, *cid = NULL;
  cruster_workflow_opts o = key_opts("parent-1", 0);
  assert_int_equal(cruster_workflow_execution_id(rt, "Parent", "z", 1, &o, &pid, NULL), CRUSTER_OK);
  char ckey[128];
  snprintf(ckey, sizeof(ckey), "%s/0", pid);
  cruster_workflow_opts co = key_opts(ckey, 0);
  assert_int_equal(cruster_workflow_execution_id(rt, "Chain", "z", 1, &co, &cid, NULL), CRUSTER_OK);
  assert_int_equal(join_wf(rt, "Chain", cid, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "b(a(z))");
  cruster_free(pid);
  cruster_free(cid);
  cruster_runtime_free(rt);
}

#ifdef TS_STORAGE_PG
#define WF_PG_TESTS
#include "../integration/test_workflow_pg_only.h"
#endif

int main(void) {
#ifdef TS_STORAGE_PG
  pgt_main_start();
#endif
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(activities_run_once_and_the_answer_is_kept),
      cmocka_unit_test(a_deferred_resumes_the_execution_and_replays_the_journal),
      cmocka_unit_test(a_rejected_deferred_gives_its_code),
      cmocka_unit_test(every_sleep_sleeps_and_never_wakes_early),
      cmocka_unit_test(time_and_random_bytes_are_journaled),
      cmocka_unit_test(retries_count_attempts_then_succeed),
      cmocka_unit_test(exhausted_retries_fail_and_restart_runs_again),
      cmocka_unit_test(cancel_while_suspended),
      cmocka_unit_test(cancel_while_running_stops_at_the_next_durable_call),
      cmocka_unit_test(changed_code_is_a_determinism_error_naming_both),
      cmocka_unit_test(a_patch_keeps_old_executions_on_the_old_path),
      cmocka_unit_test(activity_groups_do_not_collide),
      cmocka_unit_test(execution_ids_follow_the_key),
      cmocka_unit_test(bad_input_gets_clear_errors),
      cmocka_unit_test(execute_without_an_answer_fails),
      cmocka_unit_test(a_runtime_without_storage_refuses_workflows),
      cmocka_unit_test(a_durable_entity_call_is_sent_once),
      cmocka_unit_test(a_child_workflow_runs_once_and_its_answer_is_journaled),
#ifdef WF_PG_TESTS
      WF_PG_ONLY_TESTS
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
