/* Shared helpers for runtime tests (header-only, static functions). */
#ifndef TEST_SUPPORT_H
#define TEST_SUPPORT_H

#include <cruster/cruster.h>
#include <uv.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef TS_STORAGE_PG
#include <libpq-fe.h>
#include <unistd.h>
#endif

static void ts_quiet_log(void *user, cruster_log_level level, const char *component,
                         const char *message) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN) fprintf(stderr, "[%s] %s\n", component, message);
}

static void ts_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static double ts_metric(cruster_runtime *rt, const char *name, const char *labels) {
  double v = -1;
  if (cruster_metrics_value(cruster_runtime_metrics(rt), name, labels, &v) != CRUSTER_OK) return -1;
  return v;
}

/* Tests never decide on timing: a wait polls for a condition up to a
 * generous deadline, so only something that never happens (a bug) fails it,
 * however loaded the machine (sanitizers, parallel builds). */
#define TS_DEADLINE_MS 60000L

static inline int64_t ts_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits (up to TS_DEADLINE_MS) until fn(arg) is true. Returns 1 if it became true. */
static int ts_eventually(int (*fn)(void *), void *arg) {
  int64_t end = ts_mono_ms() + TS_DEADLINE_MS;
  while (ts_mono_ms() < end) {
    if (fn(arg)) return 1;
    ts_sleep_ms(5);
  }
  return fn(arg);
}

/* Waits (up to TS_DEADLINE_MS) until *a >= n. Returns 1 if it got there. */
static inline int ts_wait_ge(atomic_int *a, int n) {
  int64_t end = ts_mono_ms() + TS_DEADLINE_MS;
  while (atomic_load(a) < n && ts_mono_ms() < end) ts_sleep_ms(1);
  return atomic_load(a) >= n;
}

/* ---- helpers for cmocka tests (include <cmocka.h> first) ---- */
#ifdef cmocka_unit_test
/* A config with the quiet logger and `extra` ("name=value;..."). */
static inline cruster_config *ts_config(const char *extra) {
  cruster_config *cfg = cruster_config_new();
  cruster_config_set_logger(cfg, ts_quiet_log, NULL, CRUSTER_LOG_WARN);
  if (extra) {
    char *buf = strdup(extra), *save = NULL;
    for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
      char *eq = strchr(kv, '=');
      if (!eq) fail_msg("bad config item %s", kv);
      *eq = 0;
      cruster_error *e = NULL;
      if (cruster_config_set(cfg, kv, eq + 1, &e) != CRUSTER_OK)
        fail_msg("config %s: %s", kv, cruster_error_message(e));
    }
    free(buf);
  }
  return cfg;
}

static inline cruster_entity_def *def_new(const char *name) {
  cruster_entity_def *d = NULL;
  assert_int_equal(cruster_entity_def_new(name, &d, NULL), CRUSTER_OK);
  return d;
}

static inline void add(cruster_entity_def *d, const char *m, unsigned flags, cruster_rpc_fn fn,
                       void *u) {
  cruster_error *e = NULL;
  if (cruster_entity_def_add_rpc(d, m, flags, fn, u, &e) != CRUSTER_OK)
    fail_msg("add_rpc %s: %s", m, cruster_error_message(e));
}

/* A started single-node runtime with memory storage. extra: "name=value;..." */
static inline cruster_runtime *ts_runtime(const char *extra, cruster_entity_def **defs, size_t ndefs) {
  cruster_config *cfg = ts_config(extra);
  cruster_storage *st = NULL;
#ifdef TS_STORAGE_PG
  /* The same tests over PostgreSQL: a fresh schema per runtime. */
  const char *base = getenv("CRUSTER_TEST_PG");
  if (!base) {
    fprintf(stderr, "CRUSTER_TEST_PG is not set: run scripts/dev services start\n");
    abort();
  }
  static int schema_n;
  char schema[64], conninfo[1024], sql[256];
  snprintf(schema, sizeof(schema), "ts_%d_%d", (int)getpid(), ++schema_n);
  PGconn *pc = PQconnectdb(base);
  snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s", schema, schema);
  PQclear(PQexec(pc, sql));
  PQfinish(pc);
  snprintf(conninfo, sizeof(conninfo), "%s options=-csearch_path=%s", base, schema);
  cruster_config_set(cfg, "storage_auto_migrate", "true", NULL);
  if (cruster_storage_pg_new(conninfo, &st, NULL) != CRUSTER_OK) abort();
#else
  cruster_storage_memory_new(&st, NULL);
#endif
  cruster_runtime *rt = NULL;
  cruster_error *err = NULL;
  if (cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK) {
    fprintf(stderr, "runtime_new: %s\n", cruster_error_message(err));
    abort();
  }
  cruster_config_free(cfg);
  for (size_t i = 0; i < ndefs; i++) {
    if (cruster_runtime_register_entity(rt, defs[i], &err) != CRUSTER_OK) {
      fprintf(stderr, "register: %s\n", cruster_error_message(err));
      abort();
    }
  }
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK) abort();
  return rt;
}

/* Captures one call's outcome (cruster_reply_fn). */
typedef struct reply {
  uv_mutex_t mu;
  uv_cond_t cv;
  int done, status;
  char data[8192];
  size_t len;
  char msg[512];
} reply;

static inline void reply_init(reply *r) {
  memset(r, 0, sizeof(*r));
  uv_mutex_init(&r->mu);
  uv_cond_init(&r->cv);
}

static inline void on_reply(void *user, int status, const void *data, size_t len,
                            const char *msg) {
  reply *r = user;
  uv_mutex_lock(&r->mu);
  r->status = status;
  r->len = len;
  if (data) snprintf(r->data, sizeof(r->data), "%.*s", (int)len, (const char *)data);
  if (msg) snprintf(r->msg, sizeof(r->msg), "%s", msg);
  r->done++;
  uv_cond_broadcast(&r->cv);
  uv_mutex_unlock(&r->mu);
}

static inline int reply_done(reply *r) {
  uv_mutex_lock(&r->mu);
  int d = r->done;
  uv_mutex_unlock(&r->mu);
  return d;
}

/* Waits until the call completed. */
static inline void reply_wait(reply *r) {
  uv_mutex_lock(&r->mu);
  while (!r->done) uv_cond_wait(&r->cv, &r->mu);
  uv_mutex_unlock(&r->mu);
}

/* Waits up to `ms`; 1 if the call completed. */
static inline int reply_wait_ms(reply *r, long ms) {
  int64_t end = ts_mono_ms() + ms;
  while (!reply_done(r) && ts_mono_ms() < end) ts_sleep_ms(1);
  return reply_done(r);
}

static inline void reply_destroy(reply *r) {
  uv_cond_destroy(&r->cv);
  uv_mutex_destroy(&r->mu);
}

/* Blocking call with a string payload; `out` (cruster_free) and `msg` (free) may be NULL. */
static inline int send_str(cruster_runtime *rt, const char *type, const char *id,
                           const char *method, const char *payload, const cruster_call_opts *o,
                           char **out, char **msg) {
  void *rep = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  int st = cruster_send_sync(rt, type, id, method, payload, payload ? strlen(payload) : 0, o, &rep,
                             &len, &err);
  if (out) *out = rep;
  else cruster_free(rep);
  if (msg) *msg = err ? strdup(cruster_error_message(err)) : NULL;
  cruster_error_free(err);
  return st;
}
#endif

#endif
