/* The workflows of the workflow crash tests, shared by the test program
 * (tests/integration/test_workflow_crash.c, which restarts executions in
 * its own process) and the runner process it kills
 * (tests/integration/child_wf_runner.c), so both run the same `execute`
 * and journal the same durable calls. No cmocka here: the child has none.
 *
 * Side effects: the activities' SQL goes to the application table
 *   wf_app (exec TEXT, step TEXT, at TIMESTAMPTZ DEFAULT now())
 * through cruster_activity_pg (committed with the journal row, so exactly
 * once); what happens outside the transaction (every invocation, every
 * attempt) is appended as a line to the log file wfc.out (fsynced: it
 * survives a SIGKILL), so the test sees what each process did. */
#ifndef WF_CRASH_DEFS_H
#define WF_CRASH_DEFS_H

#include <cruster/cruster.h>
#include <cruster/pg.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#pragma GCC diagnostic ignored "-Wunused-function"

/* WFC_SANITIZED: built with ASan or TSan; WFC_TSAN: with TSan (gcc defines
 * __SANITIZE_*__, clang -- which scripts/dev uses for those builds -- has
 * __has_feature). The scale tests run fewer executions there. */
#if defined(__SANITIZE_THREAD__)
#  define WFC_TSAN 1
#elif defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define WFC_TSAN 1
#  endif
#endif
#if defined(WFC_TSAN) || defined(__SANITIZE_ADDRESS__)
#  define WFC_SANITIZED 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define WFC_SANITIZED 1
#  endif
#endif

#define WFC_APP_TABLE                                                                     \
  "CREATE TABLE wf_app (exec TEXT NOT NULL, step TEXT NOT NULL, at TIMESTAMPTZ NOT NULL " \
  "DEFAULT now())"

/* "Retry": `flaky` always fails; retries, constant backoff. */
#define WFC_RETRIES 3
#define WFC_BACKOFF_MS 1500
/* "SlowRetry": the same activity, a backoff no test waits for;
 * "QuickRetry": one hardly waited for. */
#define WFC_SLOW_BACKOFF_MS 3600000
#define WFC_QUICK_BACKOFF_MS 20
#define WFC_FLAKY_CODE (CRUSTER_E_APPLICATION - 5)

typedef struct wfc_ctl {
  char out[512];               /* the log file ("" = no log) */
  int block_step;              /* step n blocks after its INSERT, until the process dies */
  int retry_block_after;       /* flaky blocks on attempts above this (0: never) */
  char block_mark[16];         /* mark activity of this step blocks (after its INSERT) */
  atomic_int steps[4];         /* invocations of step n in this process */
  atomic_int flaky_calls;      /* invocations of flaky in this process */
  atomic_int in_gate, release; /* the "gate" activity: entered / may return */
  atomic_int runs;             /* runs of any execute in this process */
} wfc_ctl;

static wfc_ctl wfc;

static int64_t wfc_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void wfc_pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Appends one line to the log, durably (a SIGKILL right after keeps it). */
static void wfc_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void wfc_log(const char *fmt, ...) {
  if (!wfc.out[0])
    return;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n > sizeof(line) - 2)
    n = (int)sizeof(line) - 2;
  line[n++] = '\n';
  int fd = open(wfc.out, O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0)
    return;
  if (write(fd, line, (size_t)n) != n) {
    /* nothing better to do: the test sees the line missing */
  }
  fsync(fd);
  close(fd);
}

/* Never returns: the process is killed in here. */
static void wfc_block_forever(void) {
  for (;;)
    wfc_pause_ms(1000);
}

/* INSERTs (execution, step) into wf_app on the activity's transaction; 1 on
 * success, else the attempt is failed and 0 returned. */
static int wfc_insert(cruster_activity *act, const char *step) {
  PGconn *c = (PGconn *)cruster_activity_pg(act);
  if (!c) {
    cruster_activity_fail(act, CRUSTER_E_INTERNAL, "no transaction (PostgreSQL storage expected)");
    return 0;
  }
  const char *v[2] = {cruster_activity_execution_id(act), step};
  PGresult *r =
      PQexecParams(c, "INSERT INTO wf_app (exec, step) VALUES ($1, $2)", 2, NULL, v, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok)
    cruster_activity_fail(act, CRUSTER_E_INTERNAL, PQerrorMessage(c));
  return ok;
}

/* ---- "Three": step1, step2, step3, each an INSERT ----------------------- */

/* user = the step number. Replies "s<n>(<input>)". */
static void wfc_act_step(void *user, cruster_activity *act) {
  int n = (int)(intptr_t)user;
  atomic_fetch_add(&wfc.steps[n], 1);
  wfc_log("step %d", n);
  char step[16];
  snprintf(step, sizeof(step), "%d", n);
  if (!wfc_insert(act, step))
    return;
  if (wfc.block_step == n) {
    /* Its INSERT is done, not committed: the kill must roll it back. */
    wfc_log("#BLOCK step %d", n);
    wfc_block_forever();
  }
  size_t len;
  const char *in = cruster_activity_input(act, &len);
  char out[128];
  int k = snprintf(out, sizeof(out), "s%d(%.*s)", n, (int)len, in ? in : "");
  cruster_activity_reply(act, out, (size_t)k);
}

static void wfc_finish(cruster_wf *wf, int rc, const char *answer, cruster_error *err) {
  if (rc == CRUSTER_OK)
    cruster_wf_complete(wf, answer, strlen(answer));
  else if (!cruster_wf_stopped(wf))
    cruster_wf_fail(wf, rc, err ? cruster_error_message(err) : "a durable call failed");
}

static void wfc_three(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&wfc.runs, 1);
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  void *r[3] = {NULL, NULL, NULL};
  size_t l[3] = {0, 0, 0};
  cruster_error *err = NULL;
  int rc = CRUSTER_OK;
  for (int i = 0; i < 3 && rc == CRUSTER_OK; i++) {
    char name[8];
    snprintf(name, sizeof(name), "step%d", i + 1);
    rc = cruster_wf_activity(wf, name, in, len, &r[i], &l[i], &err);
  }
  char out[512] = "";
  if (rc == CRUSTER_OK)
    snprintf(out, sizeof(out), "%.*s %.*s %.*s", (int)l[0], (char *)r[0], (int)l[1], (char *)r[1],
             (int)l[2], (char *)r[2]);
  wfc_finish(wf, rc, out, err);
  cruster_error_free(err);
  for (int i = 0; i < 3; i++)
    cruster_free(r[i]);
}

/* ---- "Sleepy": now, mark, sleep(input ms), now, after ------------------- */

/* user = the step name ("before"/"after"). */
static void wfc_act_mark(void *user, cruster_activity *act) {
  const char *step = user;
  wfc_log("mark %s", step);
  if (!wfc_insert(act, step))
    return;
  if (strcmp(wfc.block_mark, step) == 0) {
    wfc_log("#BLOCK mark %s", step);
    wfc_block_forever();
  }
  cruster_activity_reply(act, step, strlen(step));
}

/* Answers "<t0> <t1>": the journaled times before and after the sleep. */
static void wfc_sleepy(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&wfc.runs, 1);
  size_t len;
  const char *in = cruster_wf_input(wf, &len);
  char buf[32];
  snprintf(buf, sizeof(buf), "%.*s", (int)(len < 31 ? len : 31), in ? in : "");
  int64_t ms = atoll(buf), t0 = 0, t1 = 0;
  cruster_error *err = NULL;
  int rc = cruster_wf_now(wf, &t0, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_activity(wf, "mark", NULL, 0, NULL, NULL, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_sleep(wf, ms, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_now(wf, &t1, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_activity(wf, "after", NULL, 0, NULL, NULL, &err);
  char out[64];
  snprintf(out, sizeof(out), "%lld %lld", (long long)t0, (long long)t1);
  wfc_finish(wf, rc, out, err);
  cruster_error_free(err);
}

/* ---- "Retry" / "SlowRetry" / "QuickRetry": flaky fails every attempt ------------------- */

/* Logs "attempt <n> <unix ms>" (outside the transaction: it stays) and
 * fails; on attempts above wfc.retry_block_after it blocks instead. */
static void wfc_act_flaky(void *user, cruster_activity *act) {
  (void)user;
  int32_t a = cruster_activity_attempt(act);
  atomic_fetch_add(&wfc.flaky_calls, 1);
  if (wfc.retry_block_after > 0 && a > wfc.retry_block_after) {
    wfc_log("#BLOCK attempt %d", (int)a);
    wfc_block_forever();
  }
  wfc_log("attempt %d %lld", (int)a, (long long)wfc_now_ms());
  char msg[64];
  snprintf(msg, sizeof(msg), "flaky attempt %d failed", (int)a);
  cruster_activity_fail(act, WFC_FLAKY_CODE, msg);
}

static void wfc_retry(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&wfc.runs, 1);
  cruster_error *err = NULL;
  int rc = cruster_wf_activity(wf, "flaky", NULL, 0, NULL, NULL, &err);
  wfc_finish(wf, rc, "flaky succeeded", err);
  cruster_error_free(err);
}

/* ---- "Gate": gate (blocks until released), await "go" ------------------- */

static void wfc_act_gate(void *user, cruster_activity *act) {
  (void)user;
  atomic_store(&wfc.in_gate, 1);
  while (!atomic_load(&wfc.release))
    wfc_pause_ms(1);
  cruster_activity_reply(act, "gate", 4);
}

/* Answers "got:<go's value>", or fails with the rejection. */
static void wfc_gate(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&wfc.runs, 1);
  void *go = NULL;
  size_t lg = 0;
  cruster_error *err = NULL;
  int rc = cruster_wf_activity(wf, "gate", NULL, 0, NULL, NULL, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_await(wf, "go", &go, &lg, &err);
  char out[256];
  snprintf(out, sizeof(out), "got:%.*s", (int)lg, go ? (char *)go : "");
  wfc_finish(wf, rc, out, err);
  cruster_error_free(err);
  cruster_free(go);
}

/* ---- "Race": echo, await "go" -------------------------------------------- */

static void wfc_act_echo(void *user, cruster_activity *act) {
  (void)user;
  size_t len;
  const char *in = cruster_activity_input(act, &len);
  cruster_activity_reply(act, in, len);
}

/* Answers "<echo of input>+<go's value>". */
static void wfc_race(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&wfc.runs, 1);
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  void *e = NULL, *go = NULL;
  size_t le = 0, lg = 0;
  cruster_error *err = NULL;
  int rc = cruster_wf_activity(wf, "echo", in, len, &e, &le, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_await(wf, "go", &go, &lg, &err);
  char out[512];
  snprintf(out, sizeof(out), "%.*s+%.*s", (int)le, e ? (char *)e : "", (int)lg,
           go ? (char *)go : "");
  wfc_finish(wf, rc, out, err);
  cruster_error_free(err);
  cruster_free(e);
  cruster_free(go);
}

/* ---- "Nap": now, sleep(WFC_NAP_MS), await "go", now ---------------------- */

#define WFC_NAP_MS 2000

/* Answers "<input>:<go's value>:<ok|early>" (early: the journaled times are
 * closer than the sleep). */
static void wfc_nap(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&wfc.runs, 1);
  size_t len;
  const char *in = cruster_wf_input(wf, &len);
  int64_t t0 = 0, t1 = 0;
  void *go = NULL;
  size_t lg = 0;
  cruster_error *err = NULL;
  int rc = cruster_wf_now(wf, &t0, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_sleep(wf, WFC_NAP_MS, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_await(wf, "go", &go, &lg, &err);
  if (rc == CRUSTER_OK)
    rc = cruster_wf_now(wf, &t1, &err);
  char out[256];
  snprintf(out, sizeof(out), "%.*s:%.*s:%s", (int)len, in ? in : "", (int)lg, go ? (char *)go : "",
           t1 - t0 >= WFC_NAP_MS ? "ok" : "early");
  wfc_finish(wf, rc, out, err);
  cruster_error_free(err);
  cruster_free(go);
}

/* ---- registration -------------------------------------------------------- */

static cruster_status wfc_def(cruster_runtime *rt, const char *name, cruster_workflow_fn fn,
                              const char *const *acts, cruster_activity_fn const *fns,
                              void *const *users, const cruster_activity_opts *const *opts,
                              size_t nacts, cruster_error **err) {
  cruster_workflow_def *d = NULL;
  cruster_status rc = cruster_workflow_def_new(name, fn, NULL, &d, err);
  for (size_t i = 0; rc == CRUSTER_OK && i < nacts; i++)
    rc = cruster_workflow_def_add_activity(d, acts[i], fns[i], users[i], opts[i], err);
  if (rc == CRUSTER_OK)
    rc = cruster_runtime_register_workflow(rt, d, err);
  cruster_workflow_def_free(d);
  return rc;
}

/* Registers every workflow above. */
static cruster_status wfc_register(cruster_runtime *rt, cruster_error **err) {
  cruster_activity_opts retry = CRUSTER_ACTIVITY_OPTS_INIT;
  retry.retries = WFC_RETRIES;
  retry.backoff = CRUSTER_BACKOFF_CONSTANT;
  retry.backoff_base_ms = WFC_BACKOFF_MS;
  cruster_activity_opts slow = retry;
  slow.backoff_base_ms = WFC_SLOW_BACKOFF_MS;
  slow.backoff_max_ms = WFC_SLOW_BACKOFF_MS;
  cruster_activity_opts quick = retry;
  quick.backoff_base_ms = WFC_QUICK_BACKOFF_MS;
  {
    const char *a[] = {"step1", "step2", "step3"};
    cruster_activity_fn f[] = {wfc_act_step, wfc_act_step, wfc_act_step};
    void *u[] = {(void *)(intptr_t)1, (void *)(intptr_t)2, (void *)(intptr_t)3};
    const cruster_activity_opts *o[] = {NULL, NULL, NULL};
    cruster_status rc = wfc_def(rt, "Three", wfc_three, a, f, u, o, 3, err);
    if (rc != CRUSTER_OK)
      return rc;
  }
  {
    const char *a[] = {"mark", "after"};
    cruster_activity_fn f[] = {wfc_act_mark, wfc_act_mark};
    void *u[] = {(void *)"before", (void *)"after"};
    const cruster_activity_opts *o[] = {NULL, NULL};
    cruster_status rc = wfc_def(rt, "Sleepy", wfc_sleepy, a, f, u, o, 2, err);
    if (rc != CRUSTER_OK)
      return rc;
  }
  {
    const char *a[] = {"flaky"};
    cruster_activity_fn f[] = {wfc_act_flaky};
    void *u[] = {NULL};
    const cruster_activity_opts *o[] = {&retry};
    cruster_status rc = wfc_def(rt, "Retry", wfc_retry, a, f, u, o, 1, err);
    if (rc != CRUSTER_OK)
      return rc;
    const cruster_activity_opts *o2[] = {&slow};
    rc = wfc_def(rt, "SlowRetry", wfc_retry, a, f, u, o2, 1, err);
    if (rc != CRUSTER_OK)
      return rc;
    const cruster_activity_opts *o3[] = {&quick};
    rc = wfc_def(rt, "QuickRetry", wfc_retry, a, f, u, o3, 1, err);
    if (rc != CRUSTER_OK)
      return rc;
  }
  {
    const char *a[] = {"gate"};
    cruster_activity_fn f[] = {wfc_act_gate};
    void *u[] = {NULL};
    const cruster_activity_opts *o[] = {NULL};
    cruster_status rc = wfc_def(rt, "Gate", wfc_gate, a, f, u, o, 1, err);
    if (rc != CRUSTER_OK)
      return rc;
  }
  {
    const char *a[] = {"echo"};
    cruster_activity_fn f[] = {wfc_act_echo};
    void *u[] = {NULL};
    const cruster_activity_opts *o[] = {NULL};
    cruster_status rc = wfc_def(rt, "Race", wfc_race, a, f, u, o, 1, err);
    if (rc != CRUSTER_OK)
      return rc;
  }
  return wfc_def(rt, "Nap", wfc_nap, NULL, NULL, NULL, NULL, 0, err);
}

#endif
