/* Durable workflows against the real PostgreSQL, with crashes: a runner
 * process (child_wf_runner) runs the workflows of wf_crash_defs.h and is
 * killed with SIGKILL at a point the test waits for (a line in its log, a
 * row in the journal), then the execution is taken over by a new runtime
 * on the same schema, in this process, which runs the same `execute`.
 *  - killed after two of three activities committed (the third blocked in
 *    its transaction): every activity's SQL exists exactly once;
 *  - killed while the execution sleeps: it wakes after the restart, never
 *    early (checked on the journaled times and the rows' now());
 *  - killed twice between the attempts of a retried activity: the attempt
 *    numbers go on (1, 2, 3, 4), never more than retries + 1;
 *  - deferreds resolved and rejected while the execution runs (before its
 *    await), cancellation while it sleeps and while it waits for a retry,
 *    and resolutions racing with suspensions.
 * Two tests were first named BUG_* for library bugs they found (described
 * above each); both are fixed.
 * The scale test (10,000 executions asleep at once) is test_workflow_scale.c.
 * No assertion depends on timing: waits poll for a state up to a generous
 * deadline; "never early" is checked on values. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <uv.h>

#include "pg_support.h"
#include "wf_crash_defs.h"

extern char **environ;

#define CHILD CRUSTER_TEST_BIN_DIR "/child_wf_runner"

static const char *CFG =
    "storage_poll_interval=100ms;storage_retry_backoff=50ms;entity_termination_timeout=500ms";

/* ---- processes ------------------------------------------------------------ */

static pid_t spawn_child(const char *conninfo, const char *log, const char *opts, const char *cfg) {
  char *argv[] = {(char *)CHILD, (char *)conninfo, (char *)log, (char *)opts, (char *)cfg, NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, CHILD, NULL, NULL, argv, environ);
  if (rc != 0)
    fail_msg("posix_spawn %s: %s", CHILD, strerror(rc));
  return pid;
}

/* Kills with SIGKILL and reaps. */
static void kill_child(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

static int child_exited(pid_t pid, int *status) {
  int st = 0;
  if (waitpid(pid, &st, WNOHANG) == pid) {
    if (status)
      *status = st;
    return 1;
  }
  return 0;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return strdup("");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  size_t got = fread(b, 1, (size_t)n, f);
  b[got] = 0;
  fclose(f);
  return b;
}

/* Lines of the log equal to `line` (exact) or, with prefix = 1, starting with it. */
static int count_lines(const char *path, const char *line, int prefix) {
  char *c = slurp(path);
  size_t n = strlen(line);
  int k = 0;
  for (const char *p = c; p && *p;) {
    const char *e = strchr(p, '\n');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (prefix ? (len >= n && memcmp(p, line, n) == 0) : (len == n && memcmp(p, line, n) == 0))
      k++;
    p = e ? e + 1 : NULL;
  }
  free(c);
  return k;
}

static void tmp_path(char *buf, size_t n, const char *tag) {
  static int seq;
  snprintf(buf, n, "/tmp/cruster_%s_%ld_%d.txt", tag, (long)getpid(), seq++);
  unlink(buf);
}

static void fail_child(pid_t pid, const char *what) {
  int st;
  if (child_exited(pid, &st))
    fail_msg("child %ld exited (status 0x%x) before %s: see its stderr above", (long)pid, st, what);
}

/* Waits until `line` is in the log, failing if the child exits first. */
static void wait_line_alive(pid_t pid, const char *log, const char *line) {
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (count_lines(log, line, 0) == 0) {
    fail_child(pid, line);
    if (pgt_mono_ms() > end) {
      kill_child(pid);
      fail_msg("child did not write \"%s\" within %ld ms", line, (long)PGT_DEADLINE_MS);
    }
    ts_sleep_ms(10);
  }
}

/* Waits until the query answers `want`, failing if the child exits first. */
static void wait_sql_alive(pid_t pid, pgt_schema *s, const char *sql, long long want) {
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (pgt_scalar(s->admin, sql, -1) != want) {
    fail_child(pid, sql);
    if (pgt_mono_ms() > end) {
      kill_child(pid);
      fail_msg("within %ld ms, never %lld: %s", (long)PGT_DEADLINE_MS, want, sql);
    }
    ts_sleep_ms(10);
  }
}

/* Polls the query until it answers `want` or `ms` have passed; 1 if it did. */
static int sql_within(pgt_schema *s, const char *sql, long long want, int64_t ms) {
  int64_t end = pgt_mono_ms() + ms;
  for (;;) {
    if (pgt_scalar(s->admin, sql, -1) == want)
      return 1;
    if (pgt_mono_ms() >= end)
      return 0;
    ts_sleep_ms(5);
  }
}

/* Waits (up to the deadline) until the query answers `want`. */
typedef struct sql_wait {
  pgt_schema *s;
  const char *sql;
  long long want;
} sql_wait;
static int sql_is(void *arg) {
  sql_wait *w = arg;
  return pgt_scalar(w->s->admin, w->sql, -1) == w->want;
}
static int eventually_sql(pgt_schema *s, const char *sql, long long want) {
  sql_wait w = {s, sql, want};
  return pgt_eventually(sql_is, &w, PGT_DEADLINE_MS);
}

/* ---- the runtime of this process ------------------------------------------ */

static void wfc_reset(const char *log) {
  snprintf(wfc.out, sizeof(wfc.out), "%s", log ? log : "");
  wfc.block_step = 0;
  wfc.retry_block_after = 0;
  wfc.block_mark[0] = 0;
  for (int i = 0; i < 4; i++)
    atomic_store(&wfc.steps[i], 0);
  atomic_store(&wfc.flaky_calls, 0);
  atomic_store(&wfc.in_gate, 0);
  atomic_store(&wfc.release, 0);
  atomic_store(&wfc.runs, 0);
}

/* A runtime on the schema with the workflows registered before it starts
 * (stored executions are delivered as soon as it does). */
static cruster_runtime *wfc_runtime(pgt_schema *s, const char *cfg) {
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  int st = pgt_runtime_try(s->conninfo, cfg, &rt, &msg);
  if (st != CRUSTER_OK)
    fail_msg("runtime_new (%s): %s", cruster_status_name(st), msg);
  cruster_error *err = NULL;
  if (wfc_register(rt, &err) != CRUSTER_OK)
    fail_msg("register: %s", cruster_error_message(err));
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK)
    fail_msg("start: %s", cruster_error_message(err));
  return rt;
}

static cruster_workflow_opts key_opts(const char *key) {
  cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
  o.key = key;
  o.key_len = strlen(key);
  o.timeout_ms = TS_DEADLINE_MS;
  return o;
}

/* The execution id of (workflow, key); cruster_free it. */
static char *exec_id(cruster_runtime *rt, const char *wf, const char *key) {
  cruster_workflow_opts o = key_opts(key);
  char *id = NULL;
  cruster_error *err = NULL;
  if (cruster_workflow_execution_id(rt, wf, "", 0, &o, &id, &err) != CRUSTER_OK)
    fail_msg("execution_id: %s", cruster_error_message(err));
  return id;
}

static char *start_wf(cruster_runtime *rt, const char *wf, const char *input, const char *key) {
  cruster_workflow_opts o = key_opts(key);
  char *id = NULL;
  cruster_error *err = NULL;
  if (cruster_workflow_start(rt, wf, input, strlen(input), &o, &id, &err) != CRUSTER_OK)
    fail_msg("start %s: %s", wf, cruster_error_message(err));
  return id;
}

/* Waits for the answer; its status, with the answer (or message) in out. */
static int join_wf(cruster_runtime *rt, const char *wf, const char *id, char *out, size_t outsz) {
  void *rep = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  int rc = cruster_workflow_join_sync(rt, wf, id, TS_DEADLINE_MS, &rep, &len, &err);
  if (rc == CRUSTER_OK)
    snprintf(out, outsz, "%.*s", (int)len, rep ? (char *)rep : "");
  else
    snprintf(out, outsz, "%s", err ? cruster_error_message(err) : "");
  cruster_free(rep);
  cruster_error_free(err);
  return rc;
}

static long long app_rows(pgt_schema *s, const char *step) {
  return pgt_scalarf(s->admin, -1, "SELECT count(*) FROM wf_app WHERE step = '%s'", step);
}

static pgt_schema new_schema(void) {
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, WFC_APP_TABLE);
  return s;
}

/* The execution's message is parked (given back unclaimed, due later). */
#define SQL_PARKED_WITH(cond)                                                         \
  "SELECT count(*) FROM cruster_journal j JOIN cruster_messages m USING (request_id)" \
  " WHERE " cond " AND NOT m.processed AND m.claimed_by IS NULL AND m.deliver_at IS NOT NULL"

/* ---- 1. killed after two of three activities committed ------------------- */

static void killed_after_two_activities_each_effect_exists_once(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  char log[256];
  tmp_path(log, sizeof(log), "wfc_three");
  /* step3 INSERTs, then blocks inside its transaction until the kill. */
  pid_t c = spawn_child(s.conninfo, log, "block-step=3,start=Three:k3:x", CFG);
  wait_line_alive(c, log, "#BLOCK step 3");
  /* step3 runs only after step2's commit: 1 and 2 are in, 3 is not yet. */
  assert_int_equal(app_rows(&s, "1"), 1);
  assert_int_equal(app_rows(&s, "2"), 1);
  assert_int_equal(app_rows(&s, "3"), 0);
  assert_int_equal(pgt_count(&s, "cruster_journal"), 2);
  kill_child(c);

  /* A new runtime on the same schema takes the execution over. */
  wfc_reset(log);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = exec_id(rt, "Three", "k3");
  char out[512];
  assert_int_equal(join_wf(rt, "Three", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "s1(x) s2(x) s3(x)");
  /* Exactly once each: 1 and 2 were replayed from the journal (not run
   * again), 3's uncommitted INSERT died with the child and ran once more. */
  assert_int_equal(app_rows(&s, "1"), 1);
  assert_int_equal(app_rows(&s, "2"), 1);
  assert_int_equal(app_rows(&s, "3"), 1);
  assert_int_equal(atomic_load(&wfc.steps[1]), 0);
  assert_int_equal(atomic_load(&wfc.steps[2]), 0);
  assert_int_equal(atomic_load(&wfc.steps[3]), 1);
  assert_int_equal(count_lines(log, "step 1", 0), 1);
  assert_int_equal(count_lines(log, "step 2", 0), 1);
  assert_int_equal(count_lines(log, "step 3", 0), 2); /* the killed attempt and this one */
  assert_int_equal(pgt_count(&s, "cruster_journal"), 3);
  printf("  execution's message attempts after the crash: %lld\n",
         pgt_scalar(s.admin, "SELECT attempts FROM cruster_messages WHERE tag = 'execute'", -1));
  cruster_free(id);
  cruster_runtime_free(rt);
  unlink(log);
  pgt_schema_drop(&s);
}

/* ---- 2. killed while the execution sleeps --------------------------------- */

#define SLEEP_MS 3000

static void killed_while_sleeping_wakes_after_restart_never_early(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  char log[256];
  tmp_path(log, sizeof(log), "wfc_sleep");
  char opts[64];
  /* (Should this process be too slow to kill it in time, the child blocks
   * in the activity after the sleep, uncommitted: it never finishes.) */
  snprintf(opts, sizeof(opts), "block-mark=after,start=Sleepy:ks:%d", SLEEP_MS);
  pid_t c = spawn_child(s.conninfo, log, opts, CFG);
  /* The sleep is journaled (written before the message is parked). */
  wait_sql_alive(c, &s, "SELECT count(*) FROM cruster_journal WHERE kind = 2", 1);
  int64_t due = pgt_scalar(s.admin, "SELECT at_ms FROM cruster_journal WHERE kind = 2", -1);
  /* Preferably once the message is parked too (asleep in storage); should
   * that take longer than half the sleep, now anyway. */
  int parked = sql_within(&s, SQL_PARKED_WITH("j.kind = 2"), 1, (due - pgt_now_ms()) / 2);
  int64_t killed_at = pgt_now_ms();
  kill_child(c);
  assert_int_equal(app_rows(&s, "before"), 1);
  assert_int_equal(app_rows(&s, "after"), 0);
  printf("  killed %lld ms before the sleep was due (message parked: %s; blocked after it: %s)\n",
         (long long)(due - killed_at), parked ? "yes" : "not yet",
         count_lines(log, "#BLOCK mark after", 0) ? "yes" : "no");

  wfc_reset(log);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  int64_t restarted_at = pgt_now_ms();
  char *id = exec_id(rt, "Sleepy", "ks");
  /* The answer, polled (the first sight of it is information only). */
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS, seen_at = 0;
  for (;;) {
    int ready = 0;
    cruster_error *err = NULL;
    int rc = cruster_workflow_poll(rt, "Sleepy", id, &ready, NULL, NULL, &err);
    cruster_error_free(err);
    if (ready || pgt_mono_ms() > end) {
      seen_at = pgt_now_ms();
      assert_int_equal(rc, CRUSTER_OK);
      break;
    }
    ts_sleep_ms(10);
  }
  char out[128];
  assert_int_equal(join_wf(rt, "Sleepy", id, out, sizeof(out)), CRUSTER_OK);
  long long t0 = 0, t1 = 0;
  assert_int_equal(sscanf(out, "%lld %lld", &t0, &t1), 2);
  printf("  restarted %lld ms before due; answer seen %lld ms after due\n",
         (long long)(due - restarted_at), (long long)(seen_at - due));
  /* Never early, on values: the journaled times (t0 by the killed child,
   * t1 by this process) and the rows' now() (transaction start times). */
  assert_true(t1 - t0 >= SLEEP_MS);
  assert_true(t1 >= due);
  long long before_ms = pgt_scalar(
      s.admin,
      "SELECT floor(extract(epoch FROM at) * 1000)::bigint FROM wf_app WHERE step = 'before'", -1);
  long long after_ms = pgt_scalar(
      s.admin,
      "SELECT floor(extract(epoch FROM at) * 1000)::bigint FROM wf_app WHERE step = 'after'", -1);
  assert_true(after_ms >= due);
  assert_true(after_ms - before_ms >= SLEEP_MS);
  assert_int_equal(app_rows(&s, "before"), 1);
  assert_int_equal(app_rows(&s, "after"), 1);
  assert_int_equal(count_lines(log, "mark before", 0), 1); /* replayed, not run again */
  cruster_free(id);
  cruster_runtime_free(rt);
  unlink(log);
  pgt_schema_drop(&s);
}

/* ---- 3. killed between the attempts of a retried activity ----------------- */

/* The attempt numbers of the log's "attempt <n> <ms>" lines, in order. */
static int read_attempts(const char *log, int *nums, long long *at, int cap) {
  char *c = slurp(log);
  int k = 0;
  for (char *p = c; p && *p;) {
    char *e = strchr(p, '\n');
    int n;
    long long t;
    if (strncmp(p, "attempt ", 8) == 0 && sscanf(p, "attempt %d %lld", &n, &t) == 2 && k < cap) {
      nums[k] = n;
      at[k++] = t;
    }
    p = e ? e + 1 : NULL;
  }
  free(c);
  return k;
}

/* The flaky activity's journal row holds "attempt n failed, retry at T"
 * (written before the message is parked) -- and with parked = 1, the
 * execution's message is parked. */
#define RETRY_ROW "j.kind = 1 AND j.attempts = %d AND j.status <> 0 AND j.at_ms > 0"
static void sql_retry_row(char *buf, size_t n, int attempt, int parked) {
  if (parked)
    snprintf(buf, n, SQL_PARKED_WITH(RETRY_ROW), attempt);
  else
    snprintf(buf, n, "SELECT count(*) FROM cruster_journal j WHERE " RETRY_ROW, attempt);
}

/* Kills the child once attempt n's failure is journaled: between attempts
 * n and n + 1 (in the backoff, or blocked in attempt n + 1 should this
 * process be slow: never after it). */
static void kill_after_attempt(pid_t c, pgt_schema *s, int n, int *in_backoff) {
  char sql[512];
  sql_retry_row(sql, sizeof(sql), n, 0);
  wait_sql_alive(c, s, sql, 1);
  /* Preferably once the message is parked (half the backoff at most). */
  sql_retry_row(sql, sizeof(sql), n, 1);
  *in_backoff += sql_within(s, sql, 1, WFC_BACKOFF_MS / 2);
  kill_child(c);
}

static void killed_between_attempts_the_attempt_count_goes_on(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  char log[256];
  tmp_path(log, sizeof(log), "wfc_retry");
  /* Child A: attempt 1 fails; killed while it waits for the retry. (It
   * blocks on attempt 2 should the kill come late: never a third.) */
  int parked = 0;
  pid_t a = spawn_child(s.conninfo, log, "retry-block-after=1,start=Retry:kr:x", CFG);
  kill_after_attempt(a, &s, 1, &parked);
  /* Child B: attempt 2 (after the backoff); killed while waiting again. */
  pid_t b = spawn_child(s.conninfo, log, "retry-block-after=2", CFG);
  kill_after_attempt(b, &s, 2, &parked);
  /* This process: attempts 3 and 4, the last (retries = 3), then the
   * activity's failure is the answer. */
  wfc_reset(log);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = exec_id(rt, "Retry", "kr");
  char out[512];
  assert_int_equal(join_wf(rt, "Retry", id, out, sizeof(out)), WFC_FLAKY_CODE);
  assert_non_null(strstr(out, "flaky attempt 4 failed"));
  assert_int_equal(atomic_load(&wfc.flaky_calls), 2);
  int nums[16];
  long long at[16];
  int n = read_attempts(log, nums, at, 16);
  printf("  attempts seen:");
  for (int i = 0; i < n; i++)
    printf(" %d", nums[i]);
  printf(" (kills with the message parked: %d of 2; inside a blocked next attempt: %d)\n", parked,
         count_lines(log, "#BLOCK attempt", 1));
  /* Never from 1 again, never more than retries + 1. */
  assert_int_equal(n, WFC_RETRIES + 1);
  for (int i = 0; i < n; i++)
    assert_int_equal(nums[i], i + 1);
  /* Each retry came after its backoff (wall clock of one machine). */
  for (int i = 1; i < n; i++)
    assert_true(at[i] - at[i - 1] >= WFC_BACKOFF_MS);
  /* The journal never counts past the last attempt. */
  assert_true(pgt_scalar(s.admin, "SELECT max(attempts) FROM cruster_journal WHERE kind = 1", -1) <=
              WFC_RETRIES + 1);
  /* Finished: nothing runs any more. */
  ts_sleep_ms(WFC_BACKOFF_MS + 500);
  assert_int_equal(atomic_load(&wfc.flaky_calls), 2);
  cruster_free(id);
  cruster_runtime_free(rt);
  unlink(log);
  pgt_schema_drop(&s);
}

/* ---- the final failure of an activity is journaled (it was not) ---------- */

/* cruster_workflow_restart drops "its recorded failures" (workflow.h): the
 * journal from the first activity whose last attempt failed (SQL_RESTART,
 * and memory.c: kind = activity, status <> 0, at = 0) on, so that activity
 * runs again with its retries. But run.c keeps that final failure in
 * `pending` (written "with the next write"), and engine.c's on_execute
 * answers a run that called cruster_wf_fail without flushing `pending`:
 * the usual `if (rc) cruster_wf_fail(...)` after a failed activity leaves
 * the journal at "attempt <retries> failed, retry at T". So nothing is
 * dropped by the restart, and the restarted execution runs the activity
 * once more as attempt retries + 1 -- its last -- and fails at once: no
 * retries. Fixed: a failing execution writes its pending entries first. */
static void restart_after_exhausted_retries_retries_again(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  char log[256];
  tmp_path(log, sizeof(log), "wfc_restart");
  wfc_reset(log);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = start_wf(rt, "QuickRetry", "x", "q-restart");
  char out[512];
  assert_int_equal(join_wf(rt, "QuickRetry", id, out, sizeof(out)), WFC_FLAKY_CODE);
  assert_int_equal(atomic_load(&wfc.flaky_calls), WFC_RETRIES + 1);
  long long final_rows = pgt_scalar(
      s.admin, "SELECT count(*) FROM cruster_journal WHERE kind = 1 AND status <> 0 AND at_ms = 0",
      -1);
  printf("  journal rows of a final activity failure: %lld (want 1); the activity's row: "
         "attempts %lld, at_ms %lld\n",
         final_rows, pgt_scalar(s.admin, "SELECT attempts FROM cruster_journal WHERE kind = 1", -1),
         pgt_scalar(s.admin, "SELECT at_ms FROM cruster_journal WHERE kind = 1", -1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_restart(rt, "QuickRetry", id, &err), CRUSTER_OK);
  assert_int_equal(join_wf(rt, "QuickRetry", id, out, sizeof(out)), WFC_FLAKY_CODE);
  int nums[32];
  long long at[32];
  int n = read_attempts(log, nums, at, 32);
  unlink(log);
  printf("  attempts seen, first run then restart:");
  for (int i = 0; i < n; i++)
    printf(" %d", nums[i]);
  printf("\n");
  int as_first = n == 2 * (WFC_RETRIES + 1);
  for (int i = 0; as_first && i < n; i++)
    as_first = nums[i] == i % (WFC_RETRIES + 1) + 1;
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
  /* The restarted execution retries as the first did: 1 2 3 4 1 2 3 4. */
  assert_int_equal(final_rows, 1);
  assert_true(as_first);
}

/* ---- 5. deferreds and cancellation while running / suspended ------------- */

static int in_gate(void *arg) {
  (void)arg;
  return atomic_load(&wfc.in_gate);
}

/* Resolved while execute is inside an activity, before it reaches its
 * await: the await finds the value (the run that read the journal before
 * the resolution must not sleep on stale information). */
static void resolve_while_running_before_the_await(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  wfc_reset(NULL);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = start_wf(rt, "Gate", "g", "g-resolve");
  assert_true(pgt_eventually(in_gate, NULL, PGT_DEADLINE_MS));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_resolve(rt, "Gate", id, "go", "GO", 2, &err), CRUSTER_OK);
  assert_int_equal(
      cruster_workflow_reject(rt, "Gate", id, "go", CRUSTER_E_APPLICATION - 9, "late", &err),
      CRUSTER_E_ALREADY_EXISTS);
  cruster_error_free(err);
  atomic_store(&wfc.release, 1);
  char out[256];
  assert_int_equal(join_wf(rt, "Gate", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "got:GO");
  printf("  runs of execute: %d\n", atomic_load(&wfc.runs));
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

static void reject_while_running_before_the_await(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  wfc_reset(NULL);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = start_wf(rt, "Gate", "g", "g-reject");
  assert_true(pgt_eventually(in_gate, NULL, PGT_DEADLINE_MS));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_reject(rt, "Gate", id, "go", CRUSTER_E_APPLICATION - 9,
                                           "denied while running", &err),
                   CRUSTER_OK);
  atomic_store(&wfc.release, 1);
  char out[256];
  assert_int_equal(join_wf(rt, "Gate", id, out, sizeof(out)), CRUSTER_E_APPLICATION - 9);
  assert_non_null(strstr(out, "denied while running"));
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

/* A cancellation of a sleeping execution (a sleep of an hour) is its answer
 * at once; the code after the sleep never runs. */
static void cancel_while_sleeping(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  wfc_reset(NULL);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = start_wf(rt, "Sleepy", "3600000", "s-cancel");
  assert_true(eventually_sql(&s, SQL_PARKED_WITH("j.kind = 2"), 1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_cancel(rt, "Sleepy", id, &err), CRUSTER_OK);
  char out[256];
  assert_int_equal(join_wf(rt, "Sleepy", id, out, sizeof(out)), CRUSTER_E_CANCELLED);
  assert_int_equal(app_rows(&s, "before"), 1);
  assert_int_equal(app_rows(&s, "after"), 0);
  assert_int_equal(cruster_workflow_cancel(rt, "Sleepy", id, &err), CRUSTER_E_STATE);
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

/* Cancelled while waiting an hour for a retry: cancelled at once, no
 * further attempt. */
static void cancel_while_waiting_for_a_retry(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  wfc_reset(NULL);
  cruster_runtime *rt = wfc_runtime(&s, CFG);
  char *id = start_wf(rt, "SlowRetry", "x", "r-cancel");
  char sql[512];
  sql_retry_row(sql, sizeof(sql), 1, 1);
  assert_true(eventually_sql(&s, sql, 1));
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_cancel(rt, "SlowRetry", id, &err), CRUSTER_OK);
  char out[256];
  assert_int_equal(join_wf(rt, "SlowRetry", id, out, sizeof(out)), CRUSTER_E_CANCELLED);
  assert_int_equal(atomic_load(&wfc.flaky_calls), 1);
  cruster_error_free(err);
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

/* A cancellation stored before the execution's first run began is its
 * answer (cruster_workflow_cancel returned OK: it had not finished), even
 * when that run would finish without ever suspending -- and a first run
 * straight after the insert reads no journal (3430bd4; the cancellation is
 * remembered by this runner since e389ead). Made deterministic with one
 * worker (no compensation): it is held by a "Gate" execution inside its
 * activity while "Three" is started -- stored and handed to the pool, not
 * run -- and cancelled; then the gate opens. */
static void cancel_before_the_first_run_is_its_answer(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  wfc_reset(NULL);
  char cfg[512];
  snprintf(cfg, sizeof(cfg), "worker_threads=1;worker_threads_max=1;%s", CFG);
  cruster_runtime *rt = wfc_runtime(&s, cfg);
  char *gate = start_wf(rt, "Gate", "g", "c-gate");
  assert_true(pgt_eventually(in_gate, NULL, PGT_DEADLINE_MS));
  char *id = start_wf(rt, "Three", "x", "c-three");
  cruster_error *err = NULL;
  assert_int_equal(cruster_workflow_cancel(rt, "Three", id, &err), CRUSTER_OK);
  assert_int_equal(atomic_load(&wfc.steps[1]), 0); /* it has not run */
  atomic_store(&wfc.release, 1);
  char out[256];
  int rc = join_wf(rt, "Three", id, out, sizeof(out));
  printf("  answer of the cancelled execution: %s \"%s\"; its steps run: %d\n",
         cruster_status_name(rc), out,
         atomic_load(&wfc.steps[1]) + atomic_load(&wfc.steps[2]) + atomic_load(&wfc.steps[3]));
  assert_int_equal(cruster_workflow_resolve(rt, "Gate", gate, "go", "", 0, &err), CRUSTER_OK);
  char gout[256];
  assert_int_equal(join_wf(rt, "Gate", gate, gout, sizeof(gout)), CRUSTER_OK);
  long long rows = app_rows(&s, "1");
  cruster_error_free(err);
  cruster_free(gate);
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
  assert_int_equal(rc, CRUSTER_E_CANCELLED);
  assert_int_equal(rows, 0); /* no step committed */
}

/* Resolutions from another thread race with the executions' runs: each is
 * resolved as soon as it is started -- before its run, during its
 * activity, while it decides to suspend, or once parked. Every one must
 * finish with its value, none left asleep. */
#ifdef WFC_SANITIZED
#  define RACE_N 100
#else
#  define RACE_N 300
#endif

typedef struct race {
  cruster_runtime *rt;
  char *_Atomic ids[RACE_N];
  atomic_int bad;
  char first_bad[512];
} race;

static void race_resolver(void *arg) {
  race *r = arg;
  for (int i = 0; i < RACE_N; i++) {
    char *id;
    int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
    while (!(id = atomic_load(&r->ids[i])) && pgt_mono_ms() < end)
      ts_sleep_ms(1);
    if (!id) {
      atomic_fetch_add(&r->bad, 1);
      return;
    }
    char v[32];
    snprintf(v, sizeof(v), "v%d", i);
    cruster_error *err = NULL;
    int rc = cruster_workflow_resolve(r->rt, "Race", id, "go", v, strlen(v), &err);
    if (rc != CRUSTER_OK && atomic_fetch_add(&r->bad, 1) == 0)
      snprintf(r->first_bad, sizeof(r->first_bad), "resolve %d: %s: %s", i, cruster_status_name(rc),
               err ? cruster_error_message(err) : "");
    cruster_error_free(err);
  }
}

static void resolutions_racing_with_suspension_all_complete(void **state) {
  (void)state;
  pgt_schema s = new_schema();
  wfc_reset(NULL);
  static race r;
  memset(&r, 0, sizeof(r));
  r.rt = wfc_runtime(&s, CFG);
  uv_thread_t t;
  assert_int_equal(uv_thread_create(&t, race_resolver, &r), 0);
  for (int i = 0; i < RACE_N; i++) {
    char key[32], in[32];
    snprintf(key, sizeof(key), "race-%d", i);
    snprintf(in, sizeof(in), "i%d", i);
    atomic_store(&r.ids[i], start_wf(r.rt, "Race", in, key));
  }
  uv_thread_join(&t);
  if (atomic_load(&r.bad))
    fail_msg("%d resolutions failed; first: %s", atomic_load(&r.bad), r.first_bad);
  for (int i = 0; i < RACE_N; i++) {
    char out[256], want[64];
    snprintf(want, sizeof(want), "i%d+v%d", i, i);
    int rc = join_wf(r.rt, "Race", atomic_load(&r.ids[i]), out, sizeof(out));
    if (rc != CRUSTER_OK || strcmp(out, want) != 0)
      fail_msg("execution %d: %s \"%s\", want \"%s\"", i, cruster_status_name(rc), out, want);
    cruster_free(atomic_load(&r.ids[i]));
  }
  printf("  %d executions, %d runs of execute\n", RACE_N, atomic_load(&wfc.runs));
  cruster_runtime_free(r.rt);
  pgt_schema_drop(&s);
}

int main(void) {
  pgt_main_start();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(killed_after_two_activities_each_effect_exists_once),
      cmocka_unit_test(killed_while_sleeping_wakes_after_restart_never_early),
      cmocka_unit_test(killed_between_attempts_the_attempt_count_goes_on),
      cmocka_unit_test(restart_after_exhausted_retries_retries_again),
      cmocka_unit_test(resolve_while_running_before_the_await),
      cmocka_unit_test(reject_while_running_before_the_await),
      cmocka_unit_test(cancel_while_sleeping),
      cmocka_unit_test(cancel_while_waiting_for_a_retry),
      cmocka_unit_test(cancel_before_the_first_run_is_its_answer),
      cmocka_unit_test(resolutions_racing_with_suspension_all_complete),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
