/* A runner process for the cluster tests (test_cluster.c).
 *
 *   child_cluster_runner ETCD PREFIX ADDRESS CONNINFO|- [CONFIG]
 *
 * Starts a runtime in cluster mode (etcd registry at ETCD under key prefix
 * PREFIX, listening on ADDRESS = runner_address; PostgreSQL storage on
 * CONNINFO, or none with "-"; CONFIG: "name=value;..." settings) with:
 *   Echo.who   replies "<ADDRESS> <payload>"
 *   Echo.fail  fails with application code -1001, message "failed on <ADDRESS>"
 *   Sink.put   (persisted) inserts (entity id, payload, ADDRESS) into table
 *              cluster_sink of CONNINFO, then replies "ok"
 *   Fence.hold (persisted) records in table cluster_fence the interval
 *              [start, end] it ran on ADDRESS for its shard (and its entity
 *              id), holding it ~50 ms
 *   singleton Fencer records the stretches it runs as cluster_fence rows
 *              with shard -1 (with storage)
 *   Trace.get  replies "<ADDRESS> <the request's traceparent or ->"
 *   Trace.relay calls Trace.get on entity PAYLOAD passing its own request's
 *              traceparent on; replies "<ADDRESS> <that reply>"
 *   workflow CW (with storage; test_cluster_workflow.c): input "MODE:TAG",
 *              activity step (transactional: inserts (execution id, step,
 *              ADDRESS) into table cluster_wf_app, replies "TAG/<step>"):
 *                n: step 1, step 2, answer "TAG:TAG/1:TAG/2"
 *                d: step 1, await deferred "go" (value V), step 2,
 *                   answer "TAG:V:TAG/2"
 *                s<ms>: step 1, durable sleep of <ms> ms, step 2, answer
 *                   "TAG:slept:TAG/2"
 *                g: step 1, activity gate (records (execution id, ADDRESS)
 *                   in cluster_wf_gate_in, then waits until table
 *                   cluster_wf_gate has a row for the execution id; not in
 *                   its transaction), step 2, answer "TAG:gate:TAG/2"
 * and answers commands on stdin, one per line, with one line on stdout:
 *   call TYPE ID METHOD PAYLOAD      -> "ok <reply>" | "err <status> <message>"
 *   pcall TYPE ID METHOD PAYLOAD KEY -> the same, a persisted call with a key
 *   tcall MS TYPE ID METHOD PAYLOAD  -> "call" with a timeout of MS ms
 *   load N PREFIX                    -> persisted keyed notifies Sink.put to ids
 *                                       PREFIX-0..N-1 (payload = id), one
 *                                       line "acked <i>" per accepted one,
 *                                       then "loaded"
 *   owned                            -> "owned <shards owned here>"
 *   detached                         -> "detached <0|1>" (metric
 *                                       cluster_sharding_detached)
 *   fstream K PREFIX                 -> starts K threads sending persisted
 *                                       keyed calls Fence.hold to ids
 *                                       PREFIX-0, PREFIX-1, ... (key = id;
 *                                       thread t takes t, t+K, ...) until
 *                                       fstop; answers "streaming"
 *   fstop                            -> stops them: "fstopped SENT OK FAILED
 *                                       <first error>" (sent = ids 0..SENT-1)
 *   cron JOB [MS]                    -> registers cron job JOB ("* * * * * *",
 *                                       calculate_next_from_previous, missed
 *                                       = ALL) whose handler records each call
 *                                       in cluster_cron_attempts, takes MS ms
 *                                       (default 0), then records the slot,
 *                                       keyed by its slot id, in cluster_cron
 *                                       (see cron_tick); "cron ok" or "err ..."
 *   trcall TP TYPE ID METHOD PAYLOAD -> "call" with traceparent TP
 *   wfload N PREFIX MODE             -> starts executions of CW with keys
 *                                       PREFIX-0..N-1 (input "MODE:<key>"),
 *                                       one line "wfacked <i> <execution id>"
 *                                       (or "wfnack <i> <status> <message>")
 *                                       per start, then "wfloaded"
 *   wfstart KEY INPUT                -> "ok <execution id>" | "err ..."
 *   wfpoll ID                        -> "ok <answer>" | "pending" | "err ..."
 *   wfjoin MS ID                     -> "ok <answer>" | "err ..." (waits MS ms)
 *   wfresolve ID NAME VALUE          -> "ok" | "err ..."
 *   wfcancel ID                      -> "ok" | "err ..."
 *   Stream.count   (streamed) yields "<i>" for i in 0..PAYLOAD-1, then
 *                  replies "<ADDRESS>" (the final item)
 *   Stream.fail    (streamed) yields "0", "1", then fails with -1002,
 *                  "stream failed on <ADDRESS>"
 *   Stream.endless (streamed) yields "<ADDRESS>:<i>" items of PAYLOAD bytes
 *                  (padded) until a yield fails; counted for syields
 *   scall MS TYPE ID METHOD PAYLOAD  -> a streamed call read to its end:
 *                                       "end N STATUS ORDERED LAST MSG"
 *                                       (ORDERED: items 0..N-2 were "<i>"
 *                                       or "<addr>:<i>"; LAST: the last
 *                                       item or "-"; MSG: the error or "-")
 *   swatch MS TYPE ID METHOD PAYLOAD -> the same, with a line "first <item>"
 *                                       once the first item arrived
 *   sopen TYPE ID METHOD PAYLOAD     -> opens a streamed call and does not
 *                                       read it: "opened"
 *   sread N                          -> reads N items of it: "read N ORDERED"
 *                                       (or "err STATUS MSG")
 *   sclose                           -> closes it: "closed"
 *   syields                          -> "syields OK DONE LAST_RC" of the
 *                                       Stream.endless handlers here
 *   stop                             -> graceful stop, "stopped", exit 0
 * Runner health (test_cluster_health.c):
 *   Stall.hold  blocks while this runner is "blocked", then replies "ok"
 *   block / unblock                  -> "blocked" / "unblocked": Stall.hold
 *                                       handlers here wait / all return
 *   snotify N PREFIX                 -> notifies Stall.hold to ids
 *                                       PREFIX-0..N-1 (no callback):
 *                                       "snotified <accepted>"
 *   metric NAME [LABELS]             -> "metric <value>" ("metric none"
 *                                       when the series does not exist)
 * "ready" is printed once the runtime has started. Exits when stdin closes. */
#include <cruster/cruster.h>
#include <cruster/pg.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *g_addr;
static const char *g_conninfo;
static __thread PGconn *t_conn;

static void die(const char *what, cruster_error *err) {
  fprintf(stderr, "child_cluster_runner[%ld]: %s: %s\n", (long)getpid(), what,
          err ? cruster_error_message(err) : "");
  exit(2);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One connection per worker thread (handlers run on workers), closed when
 * the thread exits (a key's destructor: no leak reports under ASan). */
static pthread_key_t g_conn_key;
static pthread_once_t g_conn_once = PTHREAD_ONCE_INIT;
static void conn_close(void *c) { PQfinish(c); }
static void conn_key_init(void) { pthread_key_create(&g_conn_key, conn_close); }

static PGconn *conn(void) {
  if (t_conn && PQstatus(t_conn) == CONNECTION_OK) return t_conn;
  pthread_once(&g_conn_once, conn_key_init);
  if (t_conn) PQfinish(t_conn);
  t_conn = PQconnectdb(g_conninfo);
  pthread_setspecific(g_conn_key, t_conn);
  return t_conn;
}

static void h_who(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char out[600];
  int n = snprintf(out, sizeof(out), "%s %.*s", g_addr, (int)(len > 500 ? 500 : len), p ? p : "");
  cruster_request_reply(req, out, (size_t)n);
}

static void h_fail(void *user, cruster_request *req) {
  (void)user;
  char msg[200];
  snprintf(msg, sizeof(msg), "failed on %s", g_addr);
  cruster_request_fail(req, -1001, msg);
}

static void h_put(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char payload[256];
  snprintf(payload, sizeof(payload), "%.*s", (int)(len > 200 ? 200 : len), p ? p : "");
  const char *vals[3] = {cruster_request_entity_id(req), payload, g_addr};
  PGresult *r = PQexecParams(conn(), "INSERT INTO cluster_sink (entity_id, payload, runner) VALUES ($1, $2, $3)",
                             3, NULL, vals, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) {
    cruster_request_fail(req, CRUSTER_E_HANDLER, "insert failed");
    return;
  }
  cruster_request_reply(req, "ok", 2);
}

static void h_hold(void *user, cruster_request *req) {
  (void)user;
  int64_t start = now_us();
  sleep_ms(50);
  int64_t end = now_us();
  char shard[16], s[24], e[24];
  snprintf(shard, sizeof(shard), "%d", (int)cruster_request_shard(req));
  snprintf(s, sizeof(s), "%lld", (long long)start);
  snprintf(e, sizeof(e), "%lld", (long long)end);
  const char *vals[5] = {shard, g_addr, s, e, cruster_request_entity_id(req)};
  PGresult *r = PQexecParams(conn(),
                             "INSERT INTO cluster_fence (shard, runner, started_us, ended_us, entity_id) "
                             "VALUES ($1::int4, $2, $3::int8, $4::int8, $5)",
                             5, NULL, vals, NULL, NULL, 0);
  PQclear(r);
  cruster_request_reply(req, "ok", 2);
}

/* Singleton "Fencer": with storage, records each ~100 ms stretch it runs
 * as a row (shard -1) of cluster_fence; two runners' rows must never
 * overlap (at most one instance at any time). */
static int fencer(void *user, cruster_singleton_ctx *ctx) {
  (void)user;
  while (!cruster_singleton_cancelled(ctx)) {
    int64_t start = now_us();
    int cancelled = cruster_singleton_wait(ctx, 100);
    int64_t end = now_us();
    if (g_conninfo) {
      char s[24], e[24];
      snprintf(s, sizeof(s), "%lld", (long long)start);
      snprintf(e, sizeof(e), "%lld", (long long)end);
      const char *vals[3] = {g_addr, s, e};
      PGresult *r = PQexecParams(conn(),
                                 "INSERT INTO cluster_fence (shard, runner, started_us, ended_us) "
                                 "VALUES (-1, $1, $2::int8, $3::int8)",
                                 3, NULL, vals, NULL, NULL, 0);
      PQclear(r);
    }
    if (cancelled) break;
  }
  return CRUSTER_OK;
}

/* Cron job handler (command "cron"): records the call (slot id, slot time,
 * this runner) in cluster_cron_attempts, then commits the slot once, keyed
 * by its slot id (INSERT ... ON CONFLICT DO NOTHING on cluster_cron's
 * unique slot_id): an interrupted slot run again after a crash commits
 * nothing twice. A failure is returned (and recorded with the slot). */
static long g_cron_ms;

static int cron_tick(void *user, int64_t slot_ms, const char *slot_id) {
  (void)user;
  if (!g_conninfo) return -1000;
  char t[24];
  snprintf(t, sizeof(t), "%lld", (long long)slot_ms);
  const char *vals[3] = {slot_id, t, g_addr};
  PGresult *r = PQexecParams(conn(),
                             "INSERT INTO cluster_cron_attempts (slot_id, slot_ms, runner) "
                             "VALUES ($1, $2::int8, $3)",
                             3, NULL, vals, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) return -1001;
  if (g_cron_ms > 0) sleep_ms(g_cron_ms); /* the work of the slot */
  r = PQexecParams(conn(),
                   "INSERT INTO cluster_cron (slot_id, slot_ms, runner) VALUES ($1, $2::int8, $3) "
                   "ON CONFLICT (slot_id) DO NOTHING",
                   3, NULL, vals, NULL, NULL, 0);
  ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  return ok ? CRUSTER_OK : -1002;
}

/* ---- the Fence.hold stream (fstream / fstop) ---- */
#define MAX_STREAM_THREADS 16
static cruster_runtime *g_rt;
static pthread_t g_threads[MAX_STREAM_THREADS];
static int g_nthreads;
static atomic_int g_stop;
static atomic_long g_next, g_ok, g_failed;
static char g_prefix[64];
static pthread_mutex_t g_err_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_first_err[300];

static void *stream_main(void *arg) {
  (void)arg;
  while (!atomic_load(&g_stop)) {
    long i = atomic_fetch_add(&g_next, 1);
    char id[128];
    snprintf(id, sizeof(id), "%s-%ld", g_prefix, i);
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    o.timeout_ms = 120000;
    o.flags = CRUSTER_CALL_PERSISTED;
    o.idempotency_key = id;
    o.idempotency_key_len = strlen(id);
    void *reply = NULL;
    size_t rlen = 0;
    cruster_error *err = NULL;
    int rc = cruster_send_sync(g_rt, "Fence", id, "hold", "x", 1, &o, &reply, &rlen, &err);
    if (rc == CRUSTER_OK) {
      atomic_fetch_add(&g_ok, 1);
    } else {
      atomic_fetch_add(&g_failed, 1);
      pthread_mutex_lock(&g_err_mu);
      if (!g_first_err[0])
        snprintf(g_first_err, sizeof(g_first_err), "%s: %d %s", id, rc, err ? cruster_error_message(err) : "");
      pthread_mutex_unlock(&g_err_mu);
    }
    cruster_free(reply);
    cruster_error_free(err);
  }
  return NULL;
}

/* ---- runner health: handlers that hang on demand ---- */
static pthread_mutex_t g_stall_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_stall_cv = PTHREAD_COND_INITIALIZER;
static int g_blocked;

static void h_stall(void *user, cruster_request *req) {
  (void)user;
  pthread_mutex_lock(&g_stall_mu);
  while (g_blocked) pthread_cond_wait(&g_stall_cv, &g_stall_mu);
  pthread_mutex_unlock(&g_stall_mu);
  cruster_request_reply(req, "ok", 2);
}

static void stall_set(int blocked) {
  pthread_mutex_lock(&g_stall_mu);
  g_blocked = blocked;
  pthread_cond_broadcast(&g_stall_cv);
  pthread_mutex_unlock(&g_stall_mu);
}

/* The health commands; 1 if `cmd` was one. */
static int health_command(cruster_runtime *rt, const char *cmd, char **save) {
  if (strcmp(cmd, "block") == 0 || strcmp(cmd, "unblock") == 0) {
    stall_set(cmd[0] == 'b');
    printf("%s\n", cmd[0] == 'b' ? "blocked" : "unblocked");
  } else if (strcmp(cmd, "snotify") == 0) {
    char *ns = strtok_r(NULL, " ", save), *prefix = strtok_r(NULL, " ", save);
    int n = ns ? atoi(ns) : 0, ok = 0;
    for (int i = 0; i < n && prefix; i++) {
      char id[128];
      snprintf(id, sizeof(id), "%s-%d", prefix, i);
      cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
      o.timeout_ms = 600000;
      if (cruster_notify(rt, "Stall", id, "hold", "x", 1, &o, NULL, NULL, NULL) == CRUSTER_OK) ok++;
    }
    printf("snotified %d\n", ok);
  } else if (strcmp(cmd, "metric") == 0) {
    char *name = strtok_r(NULL, " ", save), *labels = strtok_r(NULL, " ", save);
    double v = 0;
    if (name && cruster_metrics_value(cruster_runtime_metrics(rt), name, labels, &v) == CRUSTER_OK)
      printf("metric %.0f\n", v);
    else
      printf("metric none\n");
  } else {
    return 0;
  }
  fflush(stdout);
  return 1;
}

/* ---- streamed calls (Stream.*, scall / swatch / sopen / sread / sclose) ---- */
static atomic_int g_syields, g_sdone, g_slast_rc;

static void h_scount(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char buf[32];
  snprintf(buf, sizeof(buf), "%.*s", (int)(len > 20 ? 20 : len), p ? p : "");
  long n = atol(buf);
  for (long i = 0; i < n; i++) {
    int k = snprintf(buf, sizeof(buf), "%ld", i);
    if (cruster_request_yield(req, buf, (size_t)k) != CRUSTER_OK) {
      cruster_request_fail(req, CRUSTER_E_CANCELLED, "yield failed");
      return;
    }
  }
  cruster_request_reply(req, g_addr, strlen(g_addr));
}

static void h_sfail(void *user, cruster_request *req) {
  (void)user;
  cruster_request_yield(req, "0", 1);
  cruster_request_yield(req, "1", 1);
  char msg[200];
  snprintf(msg, sizeof(msg), "stream failed on %s", g_addr);
  cruster_request_fail(req, -1002, msg);
}

static void h_sendless(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char buf[32];
  snprintf(buf, sizeof(buf), "%.*s", (int)(len > 20 ? 20 : len), p ? p : "");
  size_t size = (size_t)atol(buf);
  if (size < 64) size = 64;
  if (size > 1 << 20) size = 1 << 20;
  char *item = malloc(size);
  int rc = CRUSTER_E_NOMEM;
  for (long i = 0; item; i++) {
    memset(item, '.', size);
    int k = snprintf(item, size, "%s:%ld", g_addr, i);
    item[k] = ' ';
    rc = cruster_request_yield(req, item, size);
    if (rc != CRUSTER_OK) break;
    atomic_fetch_add(&g_syields, 1);
  }
  free(item);
  atomic_store(&g_slast_rc, rc);
  atomic_store(&g_sdone, 1);
  cruster_request_reply(req, NULL, 0);
}

/* Item i is "<i>" or "<addr>:<i>..." */
static int item_is(const void *data, size_t len, long i) {
  char buf[128];
  snprintf(buf, sizeof(buf), "%.*s", (int)(len > 100 ? 100 : len), (const char *)data);
  char *sp = strchr(buf, ' ');
  if (sp) *sp = 0;
  char *colon = strrchr(buf, ':');
  const char *num = colon ? colon + 1 : buf;
  char *end = NULL;
  long v = strtol(num, &end, 10);
  return end != num && v == i;
}

static cruster_stream *g_open;
static long g_open_read;

static void cmd_scall(cruster_runtime *rt, long timeout, const char *type, const char *id,
                      const char *method, const char *payload, int watch) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = timeout;
  cruster_error *err = NULL;
  cruster_stream *s = NULL;
  int rc = cruster_stream_open(rt, type, id, method, payload, strlen(payload), &o, &s, &err);
  long n = 0;
  int ordered = 1, done = 0, last_matched = 1;
  char last[128] = "-";
  while (rc == CRUSTER_OK) {
    void *item = NULL;
    size_t len = 0;
    rc = cruster_stream_next(s, 0, &item, &len, &done, &err);
    if (rc != CRUSTER_OK || done) break;
    if (n == 0 && watch) {
      printf("first %.*s\n", (int)(len > 100 ? 100 : len), (char *)item);
      fflush(stdout);
    }
    if (!last_matched) ordered = 0; /* (all but the last item) */
    last_matched = item_is(item, len, n);
    snprintf(last, sizeof(last), "%.*s", (int)(len > 100 ? 100 : len), (char *)item);
    char *sp = strchr(last, ' ');
    if (sp) *sp = 0;
    n++;
    cruster_free(item);
  }
  printf("end %ld %d %d %s %s\n", n, rc, ordered, last, rc == CRUSTER_OK ? "-" : cruster_error_message(err));
  fflush(stdout);
  cruster_error_free(err);
  cruster_stream_close(s);
}

static void cmd_sopen(cruster_runtime *rt, const char *type, const char *id, const char *method,
                      const char *payload) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 120000;
  cruster_error *err = NULL;
  g_open_read = 0;
  int rc = cruster_stream_open(rt, type, id, method, payload, strlen(payload), &o, &g_open, &err);
  if (rc == CRUSTER_OK) printf("opened\n");
  else printf("err %d %s\n", rc, cruster_error_message(err));
  fflush(stdout);
  cruster_error_free(err);
}

static void cmd_sread(long n) {
  int ordered = 1, rc = CRUSTER_OK, done = 0;
  cruster_error *err = NULL;
  for (long i = 0; i < n && g_open; i++) {
    void *item = NULL;
    size_t len = 0;
    rc = cruster_stream_next(g_open, 0, &item, &len, &done, &err);
    if (rc != CRUSTER_OK || done) break;
    if (!item_is(item, len, g_open_read)) ordered = 0;
    g_open_read++;
    cruster_free(item);
  }
  if (rc == CRUSTER_OK && !done) printf("read %ld %d\n", n, ordered);
  else printf("err %d %s\n", rc, err ? cruster_error_message(err) : "ended");
  fflush(stdout);
  cruster_error_free(err);
}

static void quiet(void *user, cruster_log_level level, const char *component, const char *msg) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN || getenv("CHILD_VERBOSE"))
    fprintf(stderr, "child[%s] [%s] %s\n", g_addr, component, msg);
}

static void reply_line(int st, const void *data, size_t len, cruster_error *err) {
  if (st == CRUSTER_OK)
    printf("ok %.*s\n", (int)len, data ? (const char *)data : "");
  else
    printf("err %d %s\n", st, err ? cruster_error_message(err) : "");
  fflush(stdout);
}

/* ---- entity Trace (traceparent across calls and runners) ---- */

static void h_trace_get(void *user, cruster_request *req) {
  (void)user;
  const char *tp = cruster_request_traceparent(req);
  char out[200];
  int n = snprintf(out, sizeof(out), "%s %s", g_addr, tp ? tp : "-");
  cruster_request_reply(req, out, (size_t)n);
}

static void h_trace_relay(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char target[128];
  snprintf(target, sizeof(target), "%.*s", (int)(len > 100 ? 100 : len), p ? p : "");
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.caller = req;
  o.traceparent = cruster_request_traceparent(req); /* passed on */
  void *rep = NULL;
  size_t rlen = 0;
  cruster_error *err = NULL;
  int rc = cruster_send_sync(cruster_request_runtime(req), "Trace", target, "get", "", 0, &o, &rep, &rlen, &err);
  if (rc != CRUSTER_OK) {
    cruster_request_fail(req, rc, err ? cruster_error_message(err) : "relay failed");
  } else {
    char out[400];
    int n = snprintf(out, sizeof(out), "%s %.*s", g_addr, (int)(rlen > 300 ? 300 : rlen), rep ? (char *)rep : "");
    cruster_request_reply(req, out, (size_t)n);
  }
  cruster_free(rep);
  cruster_error_free(err);
}

/* ---- workflow CW (with storage) ---- */

/* Activity step: input "TAG/<step>"; inserts (execution id, step, runner)
 * in the journal's transaction (so exactly once), replies its input. */
static void a_step(void *user, cruster_activity *act) {
  (void)user;
  size_t len;
  const char *in = cruster_activity_input(act, &len);
  char buf[256];
  snprintf(buf, sizeof(buf), "%.*s", (int)(len > 200 ? 200 : len), in ? in : "");
  const char *slash = strrchr(buf, '/');
  const char *vals[3] = {cruster_activity_execution_id(act), slash ? slash + 1 : "0", g_addr};
  PGconn *pc = (PGconn *)cruster_activity_pg(act);
  if (!pc) {
    cruster_activity_fail(act, CRUSTER_E_HANDLER, "no transaction");
    return;
  }
  sleep_ms(5); /* a little work: kills land mid-activity too */
  PGresult *r = PQexecParams(pc, "INSERT INTO cluster_wf_app (exec, step, runner) VALUES ($1, $2::int4, $3)",
                             3, NULL, vals, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  char why[300];
  snprintf(why, sizeof(why), "insert failed: %s", PQresultErrorMessage(r));
  PQclear(r);
  if (!ok) {
    cruster_activity_fail(act, CRUSTER_E_HANDLER, why);
    return;
  }
  cruster_activity_reply(act, buf, strlen(buf));
}

/* Activity gate (mode g): see the header. */
static void a_gate(void *user, cruster_activity *act) {
  (void)user;
  const char *vals[2] = {cruster_activity_execution_id(act), g_addr};
  PGresult *r = PQexecParams(conn(), "INSERT INTO cluster_wf_gate_in (exec, runner) VALUES ($1, $2)", 2, NULL,
                             vals, NULL, NULL, 0);
  PQclear(r);
  for (int i = 0; i < 6000; i++) { /* at most ~2 min */
    r = PQexecParams(conn(), "SELECT 1 FROM cluster_wf_gate WHERE exec = $1", 1, NULL, vals, NULL, NULL, 0);
    int open = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
    PQclear(r);
    if (open) {
      cruster_activity_reply(act, "gate", 4);
      return;
    }
    sleep_ms(20);
  }
  cruster_activity_fail(act, CRUSTER_E_HANDLER, "the gate never opened");
}

static int wf_step(cruster_wf *wf, const char *tag, int step, char *out, size_t cap) {
  char in[160];
  int n = snprintf(in, sizeof(in), "%s/%d", tag, step);
  void *rep = NULL;
  size_t rlen = 0;
  int rc = cruster_wf_activity(wf, "step", in, (size_t)n, &rep, &rlen, NULL);
  if (rc == CRUSTER_OK) snprintf(out, cap, "%.*s", (int)(rlen > 150 ? 150 : rlen), rep ? (char *)rep : "");
  cruster_free(rep);
  return rc;
}

static void wf_cw(void *user, cruster_wf *wf) {
  (void)user;
  size_t len;
  const char *in = cruster_wf_input(wf, &len);
  char input[160], s1[160] = "", mid[160] = "", s2[160] = "";
  snprintf(input, sizeof(input), "%.*s", (int)(len > 150 ? 150 : len), in ? in : "");
  char *colon = strchr(input, ':');
  if (!colon) {
    cruster_wf_fail(wf, CRUSTER_E_APPLICATION - 1, "bad input");
    return;
  }
  *colon = 0;
  const char *mode = input, *tag = colon + 1;
  int rc = wf_step(wf, tag, 1, s1, sizeof(s1));
  if (rc == CRUSTER_OK && mode[0] == 'd') {
    void *v = NULL;
    size_t vlen = 0;
    rc = cruster_wf_await(wf, "go", &v, &vlen, NULL);
    if (rc == CRUSTER_OK) snprintf(mid, sizeof(mid), "%.*s", (int)(vlen > 150 ? 150 : vlen), v ? (char *)v : "");
    cruster_free(v);
  } else if (rc == CRUSTER_OK && mode[0] == 'g') {
    void *v = NULL;
    size_t vlen = 0;
    rc = cruster_wf_activity(wf, "gate", NULL, 0, &v, &vlen, NULL);
    if (rc == CRUSTER_OK) snprintf(mid, sizeof(mid), "%.*s", (int)(vlen > 150 ? 150 : vlen), v ? (char *)v : "");
    cruster_free(v);
  } else if (rc == CRUSTER_OK && mode[0] == 's') {
    rc = cruster_wf_sleep(wf, atol(mode + 1), NULL);
    snprintf(mid, sizeof(mid), "slept");
  } else {
    snprintf(mid, sizeof(mid), "%s", s1);
  }
  if (rc == CRUSTER_OK) rc = wf_step(wf, tag, 2, s2, sizeof(s2));
  if (rc == CRUSTER_OK) {
    char ans[500];
    int n = snprintf(ans, sizeof(ans), "%s:%s:%s", tag, mid, s2);
    cruster_wf_complete(wf, ans, (size_t)n);
  } else if (!cruster_wf_stopped(wf)) {
    cruster_wf_fail(wf, rc, "step failed");
  }
}

static void add_workflow(cruster_runtime *rt) {
  cruster_error *err = NULL;
  cruster_workflow_def *d = NULL;
  if (cruster_workflow_def_new("CW", wf_cw, NULL, &d, &err) != CRUSTER_OK) die("wf def", err);
  if (cruster_workflow_def_add_activity(d, "step", a_step, NULL, NULL, &err) != CRUSTER_OK) die("wf activity", err);
  if (cruster_workflow_def_add_activity(d, "gate", a_gate, NULL, NULL, &err) != CRUSTER_OK) die("wf activity", err);
  if (cruster_runtime_register_workflow(rt, d, &err) != CRUSTER_OK) die("wf register", err);
  cruster_workflow_def_free(d);
}

/* The workflow commands (see the header); 0 when `cmd` is not one. */
static int wf_command(cruster_runtime *rt, const char *cmd, char **save) {
  cruster_error *err = NULL;
  int rc;
  if (strcmp(cmd, "wfload") == 0) {
    char *ns = strtok_r(NULL, " ", save), *prefix = strtok_r(NULL, " ", save);
    char *mode = strtok_r(NULL, " ", save);
    int n = ns ? atoi(ns) : 0;
    for (int i = 0; i < n && prefix && mode; i++) {
      char key[128], input[200];
      snprintf(key, sizeof(key), "%s-%d", prefix, i);
      int ilen = snprintf(input, sizeof(input), "%s:%s", mode, key);
      cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
      o.key = key;
      o.key_len = strlen(key);
      o.timeout_ms = 60000;
      char *id = NULL;
      rc = cruster_workflow_start(rt, "CW", input, (size_t)ilen, &o, &id, &err);
      if (rc == CRUSTER_OK) printf("wfacked %d %s\n", i, id);
      else printf("wfnack %d %d %s\n", i, rc, err ? cruster_error_message(err) : "");
      fflush(stdout);
      cruster_free(id);
      cruster_error_free(err);
      err = NULL;
    }
    printf("wfloaded\n");
  } else if (strcmp(cmd, "wfstart") == 0) {
    char *key = strtok_r(NULL, " ", save), *input = strtok_r(NULL, " ", save);
    if (!key || !input) {
      printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
    } else {
      cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
      o.key = key;
      o.key_len = strlen(key);
      o.timeout_ms = 60000;
      char *id = NULL;
      rc = cruster_workflow_start(rt, "CW", input, strlen(input), &o, &id, &err);
      if (rc == CRUSTER_OK) printf("ok %s\n", id);
      else reply_line(rc, NULL, 0, err);
      cruster_free(id);
    }
  } else if (strcmp(cmd, "wfpoll") == 0 || strcmp(cmd, "wfjoin") == 0) {
    long ms = 0;
    if (cmd[2] == 'j') {
      char *m = strtok_r(NULL, " ", save);
      ms = m ? atol(m) : 0;
    }
    char *id = strtok_r(NULL, " ", save);
    void *out = NULL;
    size_t olen = 0;
    int ready = 1;
    if (!id) {
      printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
    } else {
      if (cmd[2] == 'j') rc = cruster_workflow_join_sync(rt, "CW", id, ms, &out, &olen, &err);
      else rc = cruster_workflow_poll(rt, "CW", id, &ready, &out, &olen, &err);
      if (!ready) printf("pending\n");
      else reply_line(rc, out, olen, err);
    }
    cruster_free(out);
  } else if (strcmp(cmd, "wfresolve") == 0) {
    char *id = strtok_r(NULL, " ", save), *name = strtok_r(NULL, " ", save);
    char *value = strtok_r(NULL, " ", save);
    if (!id || !name || !value) {
      printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
    } else {
      rc = cruster_workflow_resolve(rt, "CW", id, name, value, strlen(value), &err);
      reply_line(rc, NULL, 0, err);
    }
  } else if (strcmp(cmd, "wfcancel") == 0) {
    char *id = strtok_r(NULL, " ", save);
    if (!id) {
      printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
    } else {
      rc = cruster_workflow_cancel(rt, "CW", id, &err);
      reply_line(rc, NULL, 0, err);
    }
  } else {
    return 0;
  }
  fflush(stdout);
  cruster_error_free(err);
  return 1;
}

static void add_entity(cruster_runtime *rt, const char *name, const char *m1, unsigned f1,
                       cruster_rpc_fn fn1, const char *m2, cruster_rpc_fn fn2) {
  cruster_error *err = NULL;
  cruster_entity_def *d = NULL;
  if (cruster_entity_def_new(name, &d, &err) != CRUSTER_OK) die("def", err);
  if (cruster_entity_def_add_rpc(d, m1, f1, fn1, NULL, &err) != CRUSTER_OK) die("add_rpc", err);
  if (m2 && cruster_entity_def_add_rpc(d, m2, 0, fn2, NULL, &err) != CRUSTER_OK) die("add_rpc", err);
  if (cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK) die("register", err);
  cruster_entity_def_free(d);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s ETCD PREFIX ADDRESS CONNINFO|- [CONFIG]\n", argv[0]);
    return 64;
  }
  signal(SIGPIPE, SIG_IGN);
  g_addr = argv[3];
  g_conninfo = strcmp(argv[4], "-") == 0 ? NULL : argv[4];
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_config_set_logger(cfg, quiet, NULL, getenv("CHILD_VERBOSE") ? CRUSTER_LOG_DEBUG : CRUSTER_LOG_WARN);
  if (cruster_config_set(cfg, "runner_address", g_addr, &err) != CRUSTER_OK) die("runner_address", err);
  if (argc > 5 && argv[5][0]) {
    char *buf = strdup(argv[5]), *save = NULL;
    for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
      char *eq = strchr(kv, '=');
      if (!eq) die("bad config item", NULL);
      *eq = 0;
      if (cruster_config_set(cfg, kv, eq + 1, &err) != CRUSTER_OK) die(kv, err);
    }
    free(buf);
  }
  cruster_etcd_opts eo = CRUSTER_ETCD_OPTS_INIT;
  eo.endpoints = argv[1];
  eo.prefix = argv[2];
  eo.lease_ttl_ms = getenv("CHILD_LEASE_TTL_MS") ? atoll(getenv("CHILD_LEASE_TTL_MS")) : 3000;
  cruster_registry *reg = NULL;
  if (cruster_registry_etcd_new(&eo, &reg, &err) != CRUSTER_OK) die("registry", err);
  cruster_storage *st = NULL;
  if (g_conninfo && cruster_storage_pg_new(g_conninfo, &st, &err) != CRUSTER_OK) die("storage", err);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, st, reg, &rt, &err) != CRUSTER_OK) die("runtime_new", err);
  cruster_config_free(cfg);
  add_entity(rt, "Echo", "who", 0, h_who, "fail", h_fail);
  add_entity(rt, "Sink", "put", CRUSTER_RPC_PERSISTED, h_put, NULL, NULL);
  add_entity(rt, "Fence", "hold", CRUSTER_RPC_PERSISTED, h_hold, NULL, NULL);
  add_entity(rt, "Stall", "hold", 0, h_stall, NULL, NULL);
  add_entity(rt, "Trace", "get", 0, h_trace_get, "relay", h_trace_relay);
  add_entity(rt, "Stream", "count", 0, h_scount, "fail", h_sfail);
  {
    cruster_entity_def *d = NULL;
    if (cruster_entity_def_new("StreamX", &d, &err) != CRUSTER_OK) die("def", err);
    if (cruster_entity_def_add_rpc(d, "endless", 0, h_sendless, NULL, &err) != CRUSTER_OK)
      die("add_rpc", err);
    if (cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK) die("register", err);
    cruster_entity_def_free(d);
  }
  if (cruster_runtime_register_singleton(rt, "Fencer", fencer, NULL, NULL, &err) != CRUSTER_OK)
    die("singleton", err);
  if (g_conninfo) add_workflow(rt);
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK) die("start", err);
  printf("ready\n");
  fflush(stdout);

  char line[1024];
  while (fgets(line, sizeof(line), stdin)) {
    line[strcspn(line, "\n")] = 0;
    char *save = NULL;
    char *cmd = strtok_r(line, " ", &save);
    if (!cmd) continue;
    if (strcmp(cmd, "call") == 0 || strcmp(cmd, "pcall") == 0 || strcmp(cmd, "tcall") == 0 ||
        strcmp(cmd, "trcall") == 0) {
      long timeout = 60000;
      char *traceparent = cmd[1] == 'r' ? strtok_r(NULL, " ", &save) : NULL;
      if (cmd[0] == 't' && cmd[1] == 'c') {
        char *ms = strtok_r(NULL, " ", &save);
        timeout = ms ? atol(ms) : 0;
        if (timeout <= 0) timeout = 60000;
      }
      char *type = strtok_r(NULL, " ", &save), *id = strtok_r(NULL, " ", &save);
      char *method = strtok_r(NULL, " ", &save), *payload = strtok_r(NULL, " ", &save);
      char *key = cmd[0] == 'p' ? strtok_r(NULL, " ", &save) : NULL;
      if (!type || !id || !method || !payload || (cmd[0] == 'p' && !key)) {
        printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
        fflush(stdout);
        continue;
      }
      cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
      o.timeout_ms = timeout;
      o.traceparent = traceparent;
      if (key) {
        o.flags = CRUSTER_CALL_PERSISTED;
        o.idempotency_key = key;
        o.idempotency_key_len = strlen(key);
      }
      void *reply = NULL;
      size_t rlen = 0;
      int rc = cruster_send_sync(rt, type, id, method, payload, strlen(payload), &o, &reply, &rlen, &err);
      reply_line(rc, reply, rlen, err);
      cruster_free(reply);
      cruster_error_free(err);
      err = NULL;
    } else if (strcmp(cmd, "load") == 0) {
      char *ns = strtok_r(NULL, " ", &save), *prefix = strtok_r(NULL, " ", &save);
      int n = ns ? atoi(ns) : 0;
      for (int i = 0; i < n && prefix; i++) {
        char id[128];
        snprintf(id, sizeof(id), "%s-%d", prefix, i);
        cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
        o.timeout_ms = 60000;
        o.flags = CRUSTER_CALL_PERSISTED;
        o.idempotency_key = id;
        o.idempotency_key_len = strlen(id);
        int rc = cruster_notify_sync(rt, "Sink", id, "put", id, strlen(id), &o, &err);
        if (rc == CRUSTER_OK) printf("acked %d\n", i);
        else printf("nack %d %d %s\n", i, rc, err ? cruster_error_message(err) : "");
        fflush(stdout);
        cruster_error_free(err);
        err = NULL;
      }
      printf("loaded\n");
      fflush(stdout);
    } else if (strcmp(cmd, "owned") == 0) {
      double v = 0;
      cruster_metrics_value(cruster_runtime_metrics(rt), "cluster_shards", NULL, &v);
      printf("owned %.0f\n", v);
      fflush(stdout);
    } else if (strcmp(cmd, "detached") == 0) {
      double v = 0;
      cruster_metrics_value(cruster_runtime_metrics(rt), "cluster_sharding_detached", NULL, &v);
      printf("detached %.0f\n", v);
      fflush(stdout);
    } else if (strcmp(cmd, "fstream") == 0) {
      char *ks = strtok_r(NULL, " ", &save), *prefix = strtok_r(NULL, " ", &save);
      int k = ks ? atoi(ks) : 0;
      if (g_nthreads || k < 1 || k > MAX_STREAM_THREADS || !prefix) {
        printf("err %d bad fstream\n", CRUSTER_E_INVALID_ARGUMENT);
        fflush(stdout);
        continue;
      }
      snprintf(g_prefix, sizeof(g_prefix), "%s", prefix);
      g_rt = rt;
      for (int t = 0; t < k; t++)
        if (pthread_create(&g_threads[g_nthreads], NULL, stream_main, NULL) == 0) g_nthreads++;
      printf("streaming\n");
      fflush(stdout);
    } else if (strcmp(cmd, "fstop") == 0) {
      atomic_store(&g_stop, 1);
      for (int t = 0; t < g_nthreads; t++) pthread_join(g_threads[t], NULL);
      g_nthreads = 0;
      printf("fstopped %ld %ld %ld %s\n", (long)atomic_load(&g_next), (long)atomic_load(&g_ok),
             (long)atomic_load(&g_failed), g_first_err[0] ? g_first_err : "-");
      fflush(stdout);
    } else if (strcmp(cmd, "cron") == 0) {
      char *job = strtok_r(NULL, " ", &save), *ms = strtok_r(NULL, " ", &save);
      g_cron_ms = ms ? atol(ms) : 0;
      cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
      o.calculate_next_from_previous = 1;
      o.missed = CRUSTER_CRON_MISSED_ALL;
      int rc = job ? cruster_runtime_register_cron_job(rt, job, "* * * * * *", cron_tick, NULL, &o, &err)
                   : CRUSTER_E_INVALID_ARGUMENT;
      if (rc == CRUSTER_OK) printf("cron ok\n");
      else printf("err %d %s\n", rc, err ? cruster_error_message(err) : "bad cron");
      fflush(stdout);
      cruster_error_free(err);
      err = NULL;
    } else if (health_command(rt, cmd, &save)) {
    } else if (wf_command(rt, cmd, &save)) {
      /* (answered) */
    } else if (strcmp(cmd, "scall") == 0 || strcmp(cmd, "swatch") == 0) {
      char *ms = strtok_r(NULL, " ", &save), *type = strtok_r(NULL, " ", &save);
      char *id = strtok_r(NULL, " ", &save), *method = strtok_r(NULL, " ", &save);
      char *payload = strtok_r(NULL, " ", &save);
      if (!ms || !type || !id || !method || !payload) {
        printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
        fflush(stdout);
        continue;
      }
      cmd_scall(rt, atol(ms), type, id, method, payload, cmd[1] == 'w');
    } else if (strcmp(cmd, "sopen") == 0) {
      char *type = strtok_r(NULL, " ", &save), *id = strtok_r(NULL, " ", &save);
      char *method = strtok_r(NULL, " ", &save), *payload = strtok_r(NULL, " ", &save);
      if (!type || !id || !method || !payload || g_open) {
        printf("err %d bad command\n", CRUSTER_E_INVALID_ARGUMENT);
        fflush(stdout);
        continue;
      }
      cmd_sopen(rt, type, id, method, payload);
    } else if (strcmp(cmd, "sread") == 0) {
      char *ns = strtok_r(NULL, " ", &save);
      cmd_sread(ns ? atol(ns) : 0);
    } else if (strcmp(cmd, "sclose") == 0) {
      cruster_stream_close(g_open);
      g_open = NULL;
      printf("closed\n");
      fflush(stdout);
    } else if (strcmp(cmd, "syields") == 0) {
      printf("syields %d %d %d\n", atomic_load(&g_syields), atomic_load(&g_sdone),
             atomic_load(&g_slast_rc));
      fflush(stdout);
    } else if (strcmp(cmd, "stop") == 0) {
      stall_set(0);
      cruster_stream_close(g_open);
      g_open = NULL;
      cruster_runtime_stop(rt, NULL);
      printf("stopped\n");
      fflush(stdout);
      cruster_runtime_free(rt);
      return 0;
    } else {
      printf("err %d unknown command\n", CRUSTER_E_INVALID_ARGUMENT);
      fflush(stdout);
    }
  }
  stall_set(0);
  cruster_stream_close(g_open);
  cruster_runtime_stop(rt, NULL);
  cruster_runtime_free(rt);
  return 0;
}
