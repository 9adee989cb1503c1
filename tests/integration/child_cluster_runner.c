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

/* One connection per worker thread (handlers run on workers). */
static PGconn *conn(void) {
  if (t_conn && PQstatus(t_conn) == CONNECTION_OK) return t_conn;
  if (t_conn) PQfinish(t_conn);
  t_conn = PQconnectdb(g_conninfo);
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
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK) die("start", err);
  printf("ready\n");
  fflush(stdout);

  char line[1024];
  while (fgets(line, sizeof(line), stdin)) {
    line[strcspn(line, "\n")] = 0;
    char *save = NULL;
    char *cmd = strtok_r(line, " ", &save);
    if (!cmd) continue;
    if (strcmp(cmd, "call") == 0 || strcmp(cmd, "pcall") == 0 || strcmp(cmd, "tcall") == 0) {
      long timeout = 60000;
      if (cmd[0] == 't') {
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
  cruster_stream_close(g_open);
  cruster_runtime_stop(rt, NULL);
  cruster_runtime_free(rt);
  return 0;
}
