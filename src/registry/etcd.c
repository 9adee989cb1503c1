/* The etcd registry (behaviour.md §3): runner registration under a lease,
 * keep-alive with the lease-deadline model, machine ids, shard locks, runner
 * health, the runner watch and its safety-net poll. Everything runs on the
 * host's loop thread; etcd is reached through etcd_http (libcurl multi on
 * libuv), requests and answers are JSON (jansson) with base64 keys/values. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "registry/etcd_http.h"
#include "registry/etcd_util.h"
#include "registry/registry_internal.h"

#define MAX_ENDPOINTS 16
#define MAX_ENDPOINTS_LEN 4096
#define MAX_PREFIX_LEN 1024
#define MAX_TTL_MS INT64_C(86400000)
#define MAX_TIMEOUT_MS INT64_C(600000)
#define MAX_POLL_MS INT64_C(3600000)
#define MAX_LOCKS ((size_t)1 << 20)
#define MAX_SHARD_KEY_LEN 1024
#define MACHINE_ID_ATTEMPTS 100
#define HEALTH_ATTEMPTS 10

typedef struct etcd etcd;
typedef struct task task;
typedef void (*task_fn)(etcd *e, task *t);
struct task {
  int64_t due;
  task_fn fn;
  task *next;
  int armed;
};

/* A pending operation with a caller waiting: stop() fails it. */
typedef struct op op;
struct op {
  etcd *e;
  op *prev, *next;
  task t; /* its delayed step (a retry's backoff, a deferred completion) */
  void (*fail)(op *o, int status, const char *msg); /* completes and frees */
};

/* One runner of the snapshot. */
typedef struct runner {
  char *addr, *host;
  int port, weight, healthy;
  int64_t lease, mod_revision;
} runner;

enum { RS_NONE, RS_REGISTERING, RS_UP, RS_LOST };

typedef struct reg_op reg_op;

struct etcd {
  cruster_registry base;
  /* options */
  char **eps;
  size_t n_eps;
  char *prefix;
  int64_t ttl_ms, timeout_ms, poll_ms, margin_ms;
  int deadline_on;
  /* host */
  rg_host host;
  int attached, stopped;
  rg_http http;
  uv_timer_t timer; /* the task scheduler */
  int timer_open;
  task *tasks;
  op *ops;
  /* this runner */
  int state; /* RS_* */
  char *me;  /* "host:port" */
  char *me_host;
  int me_port, me_weight;
  char *runner_key;
  int machine_id;
  int64_t lease;
  int64_t deadline; /* monotonic ms */
  int lease_state;  /* RG_LEASE_OK or RG_LEASE_UNCERTAIN while registered */
  reg_op *rereg;    /* the internal re-registration, while RS_LOST */
  task deadline_task;
  /* keep-alive */
  task ka_task;
  rg_hreq *ka_req;
  int64_t ka_sent, ka_lease;
  int ka_streak;
  int drop_keepalives; /* test hook */
  /* watch and poll */
  int watching;
  task watch_task, poll_task;
  rg_hreq *watch_req, *watch_sync_req, *poll_req;
  int watch_failures;
  int64_t snap_rev;
  runner *snap;
  size_t n_snap;
  /* metrics */
  core_metric *m_lease_state, *m_ka_failures, *m_ka_streak, *m_watch_reconnects, *m_malformed,
      *m_reregs;
};

static int64_t now_ms(void) { return (int64_t)(uv_hrtime() / 1000000u); }

/* ---- metrics ---------------------------------------------------------------- */

static void count_req(etcd *e, const char *opname, int status) {
  if (!e->host.metrics) return;
  char labels[96];
  snprintf(labels, sizeof labels, "op=\"%s\",outcome=\"%s\"", opname,
           status == CRUSTER_OK ? "ok" : "error");
  core_metric_add(core_metrics_get(e->host.metrics, CORE_COUNTER, "cluster_etcd_requests_total",
                                   "Requests sent to etcd, by operation and outcome", labels),
                  1);
}

static void set_lease_gauge(etcd *e) {
  double v = 0;
  if (e->state == RS_UP) v = e->lease_state == RG_LEASE_UNCERTAIN ? 2 : 1;
  if (e->state == RS_LOST) v = 2;
  core_metric_set(e->m_lease_state, v);
}

static void init_metrics(etcd *e) {
  cruster_metrics *m = e->host.metrics;
  if (!m) return;
  e->m_lease_state = core_metrics_get(
      m, CORE_GAUGE, "cluster_lease_state",
      "This runner's etcd lease: 0 none, 1 alive, 2 uncertain or lost (detached)", NULL);
  e->m_ka_failures = core_metrics_get(m, CORE_COUNTER, "cluster_lease_keepalive_failures_total",
                                      "Failed lease keep-alives", NULL);
  e->m_ka_streak = core_metrics_get(m, CORE_GAUGE, "cluster_lease_keepalive_failure_streak",
                                    "Consecutive failed lease keep-alives", NULL);
  e->m_watch_reconnects =
      core_metrics_get(m, CORE_COUNTER, "cluster_etcd_watch_reconnects_total",
                       "Times the etcd runner watch was opened again after it ended", NULL);
  e->m_malformed = core_metrics_get(m, CORE_COUNTER, "cluster_etcd_malformed_runners_total",
                                    "Runner entries in etcd skipped because they are malformed", NULL);
  e->m_reregs = core_metrics_get(m, CORE_COUNTER, "cluster_lease_reregistrations_total",
                                 "Registrations under a new lease after the lease was lost", NULL);
}

/* ---- the task scheduler (one uv timer) ---------------------------------------- */

static void on_timer(uv_timer_t *tm);

static void rearm(etcd *e) {
  if (!e->timer_open || e->stopped) return;
  if (!e->tasks) {
    uv_timer_stop(&e->timer);
    return;
  }
  int64_t d = e->tasks->due - now_ms();
  if (d < 0) d = 0;
  uv_update_time(&e->host.loop->uv);
  uv_timer_start(&e->timer, on_timer, (uint64_t)d, 0);
}

static void unsched(etcd *e, task *t) {
  if (!t->armed) return;
  for (task **p = &e->tasks; *p; p = &(*p)->next)
    if (*p == t) {
      *p = t->next;
      break;
    }
  t->armed = 0;
  t->next = NULL;
}

/* Runs fn(e, t) on the loop after `delay` ms (replacing t's earlier plan). */
static void sched(etcd *e, task *t, int64_t delay, task_fn fn) {
  unsched(e, t);
  if (e->stopped) return;
  t->fn = fn;
  t->due = now_ms() + (delay > 0 ? delay : 0);
  t->armed = 1;
  task **p = &e->tasks;
  while (*p && (*p)->due <= t->due) p = &(*p)->next;
  t->next = *p;
  *p = t;
  rearm(e);
}

static void on_timer(uv_timer_t *tm) {
  etcd *e = tm->data;
  int64_t now = now_ms();
  while (!e->stopped && e->tasks && e->tasks->due <= now) {
    task *t = e->tasks;
    e->tasks = t->next;
    t->next = NULL;
    t->armed = 0;
    t->fn(e, t);
  }
  rearm(e);
}

static void on_timer_closed(uv_handle_t *h) {
  etcd *e = h->data;
  e->timer_open = 0;
}

/* ---- operations ----------------------------------------------------------------- */

static void op_add(etcd *e, op *o, void (*fail)(op *, int, const char *)) {
  o->e = e;
  o->fail = fail;
  o->prev = NULL;
  o->next = e->ops;
  if (e->ops) e->ops->prev = o;
  e->ops = o;
}

static void op_remove(op *o) {
  etcd *e = o->e;
  unsched(e, &o->t);
  if (o->prev)
    o->prev->next = o->next;
  else if (e->ops == o)
    e->ops = o->next;
  if (o->next) o->next->prev = o->prev;
  o->prev = o->next = NULL;
}

/* 0 when the registry takes operations, else the status (with *err). */
static int check_usable(etcd *e, cruster_error **err) {
  if (e->stopped) return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the registry is stopped");
  if (!e->attached)
    return core_error_set(err, CRUSTER_E_STATE, "the registry is not attached to a runtime");
  return CRUSTER_OK;
}

/* ---- JSON requests --------------------------------------------------------------- */

static json_t *jb64(const char *s, size_t len) {
  char *b = rg_b64_encode(s, len);
  if (!b) return NULL;
  json_t *j = json_string(b);
  free(b);
  return j;
}
static json_t *jb64s(const char *s) { return jb64(s, strlen(s)); }
static json_t *jid(int64_t v) {
  char b[32];
  snprintf(b, sizeof b, "%lld", (long long)v);
  return json_string(b);
}

/* POSTs `body` (stolen; NULL = out of memory). NULL when nothing was sent. */
static rg_hreq *post(etcd *e, const char *path, json_t *body, int64_t timeout, rg_http_done done,
                     rg_http_line line, void *ud) {
  if (!body) return NULL;
  char *s = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  if (!s) return NULL;
  rg_hreq *q = rg_http_post(&e->http, path, s, timeout, done, line, ud);
  free(s);
  return q;
}

/* A txn comparing one key: target "CREATE" (create_revision 0), "MOD"
 * (mod_revision = rev) or "VALUE" (value = value). `success` and `failure`
 * (stolen, may be NULL) are request objects. */
static json_t *txn(const char *key, const char *target, int64_t rev, const char *value,
                   json_t *success, json_t *failure) {
  json_t *cmp = json_object();
  json_t *body = json_object();
  if (!cmp || !body) goto oom;
  json_object_set_new(cmp, "key", jb64s(key));
  json_object_set_new(cmp, "result", json_string("EQUAL"));
  json_object_set_new(cmp, "target", json_string(target));
  if (strcmp(target, "CREATE") == 0)
    json_object_set_new(cmp, "create_revision", json_string("0"));
  else if (strcmp(target, "MOD") == 0)
    json_object_set_new(cmp, "mod_revision", jid(rev));
  else
    json_object_set_new(cmp, "value", jb64s(value));
  if (json_object_size(cmp) != 4) goto oom;
  json_object_set_new(body, "compare", json_pack("[o]", cmp));
  cmp = NULL;
  if (success) json_object_set_new(body, "success", json_pack("[o]", success));
  if (failure) json_object_set_new(body, "failure", json_pack("[o]", failure));
  if (json_object_size(body) != 1u + !!success + !!failure) {
    json_decref(body);
    return NULL;
  }
  return body;
oom:
  json_decref(cmp);
  json_decref(body);
  json_decref(success);
  json_decref(failure);
  return NULL;
}

/* {"request_put":{key, value, lease?}} */
static json_t *req_put(const char *key, const char *value, int64_t lease) {
  json_t *p = json_object();
  if (!p) return NULL;
  json_object_set_new(p, "key", jb64s(key));
  json_object_set_new(p, "value", jb64s(value));
  if (lease) json_object_set_new(p, "lease", jid(lease));
  if (json_object_size(p) != (lease ? 3u : 2u)) {
    json_decref(p);
    return NULL;
  }
  return json_pack("{s:o}", "request_put", p);
}
static json_t *req_one_key(const char *kind, const char *key) {
  json_t *k = jb64s(key);
  return k ? json_pack("{s:{s:o}}", kind, "key", k) : NULL;
}

static json_t *first_kv(json_t *range_body) {
  json_t *kvs = json_object_get(range_body, "kvs");
  return json_is_array(kvs) && json_array_size(kvs) > 0 ? json_array_get(kvs, 0) : NULL;
}
/* A kv's key or value, base64-decoded (malloc'd, NUL-terminated); NULL when
 * missing (an empty value is omitted by etcd: "" then) or not base64. */
static char *kv_field(json_t *kv, const char *name, size_t *len) {
  json_t *v = json_object_get(kv, name);
  size_t n = 0;
  if (!v) {
    if (len) *len = 0;
    return strdup("");
  }
  if (!json_is_string(v)) return NULL;
  char *out = (char *)rg_b64_decode(json_string_value(v), &n);
  if (len) *len = n;
  return out;
}
static int64_t header_rev(json_t *body) {
  int64_t r = 0;
  if (rg_json_i64(json_object_get(json_object_get(body, "header"), "revision"), &r) != 0) r = 0;
  return r;
}

/* ---- the runner snapshot --------------------------------------------------------- */

static void free_runners(runner *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(v[i].addr);
    free(v[i].host);
  }
  free(v);
}

static int cmp_runner(const void *a, const void *b) {
  return strcmp(((const runner *)a)->addr, ((const runner *)b)->addr);
}

static const char *runners_prefix(etcd *e, char *buf, size_t n) {
  snprintf(buf, n, "%srunners/", e->prefix);
  return buf;
}

/* Parses one kv of <P>runners/: 0 with *r filled, -1 when malformed (counted
 * and logged), -2 on OOM. */
static int parse_runner_kv(etcd *e, json_t *kv, runner *r) {
  char pfx[MAX_PREFIX_LEN + 16];
  runners_prefix(e, pfx, sizeof pfx);
  size_t plen = strlen(pfx), klen = 0, vlen = 0;
  memset(r, 0, sizeof(*r));
  char *key = kv_field(kv, "key", &klen);
  char *val = kv_field(kv, "value", &vlen);
  int rc = -1;
  if (key && val && klen > plen && strlen(key) == klen && memcmp(key, pfx, plen) == 0 &&
      rg_runner_parse(val, vlen, &r->host, &r->port, &r->weight, &r->healthy) == 0) {
    r->addr = strdup(key + plen);
    if (!r->addr) {
      free(r->host);
      r->host = NULL;
      rc = -2;
    } else {
      rg_json_i64(json_object_get(kv, "lease"), &r->lease);
      rg_json_i64(json_object_get(kv, "mod_revision"), &r->mod_revision);
      rc = 0;
    }
  }
  if (rc == -1) {
    core_metric_add(e->m_malformed, 1);
    core_log(e->host.lg, CRUSTER_LOG_WARN, "registry", "skipping a malformed runner entry %s%s",
             key ? "under " : "(key not base64)", key ? key : "");
  }
  free(key);
  free(val);
  return rc;
}

/* The runners of a range answer, sorted by key. 0, or -1 on OOM. */
static int parse_range(etcd *e, json_t *body, runner **out, size_t *n) {
  json_t *kvs = json_object_get(body, "kvs");
  size_t cnt = json_is_array(kvs) ? json_array_size(kvs) : 0, k = 0;
  runner *v = calloc(cnt ? cnt : 1, sizeof(*v));
  if (!v) return -1;
  for (size_t i = 0; i < cnt; i++) {
    int rc = parse_runner_kv(e, json_array_get(kvs, i), &v[k]);
    if (rc == -2) {
      free_runners(v, k);
      return -1;
    }
    if (rc == 0) k++;
  }
  qsort(v, k, sizeof(*v), cmp_runner);
  *out = v;
  *n = k;
  return 0;
}

/* A view of runners as rg_runner (malloc'd; NULL on OOM). */
static rg_runner *view(const runner *v, size_t n) {
  rg_runner *out = calloc(n ? n : 1, sizeof(*out));
  if (!out) return NULL;
  for (size_t i = 0; i < n; i++)
    out[i] = (rg_runner){v[i].addr, v[i].host, v[i].port, v[i].weight, v[i].healthy,
                         v[i].lease, v[i].mod_revision};
  return out;
}

static void emit(etcd *e) {
  if (!e->host.on_runners || e->stopped) return;
  rg_runner *v = view(e->snap, e->n_snap);
  if (!v) return;
  e->host.on_runners(e->host.ud, v, e->n_snap);
  free(v);
}

/* Replaces the snapshot with a range answer unless the watch already applied
 * something newer; then emits it. */
static void apply_range(etcd *e, json_t *body) {
  int64_t rev = header_rev(body);
  if (rev < e->snap_rev) return;
  runner *v;
  size_t n;
  if (parse_range(e, body, &v, &n) != 0) return;
  free_runners(e->snap, e->n_snap);
  e->snap = v;
  e->n_snap = n;
  e->snap_rev = rev;
  emit(e);
}

static void snap_remove(etcd *e, const char *addr) {
  for (size_t i = 0; i < e->n_snap; i++)
    if (strcmp(e->snap[i].addr, addr) == 0) {
      free(e->snap[i].addr);
      free(e->snap[i].host);
      memmove(&e->snap[i], &e->snap[i + 1], (e->n_snap - i - 1) * sizeof(runner));
      e->n_snap--;
      return;
    }
}

/* Inserts or replaces (takes r's strings). 0, or -1 on OOM (r freed). */
static int snap_put(etcd *e, runner *r) {
  size_t i = 0;
  while (i < e->n_snap && strcmp(e->snap[i].addr, r->addr) < 0) i++;
  if (i < e->n_snap && strcmp(e->snap[i].addr, r->addr) == 0) {
    free(e->snap[i].addr);
    free(e->snap[i].host);
    e->snap[i] = *r;
    return 0;
  }
  runner *v = realloc(e->snap, (e->n_snap + 1) * sizeof(runner));
  if (!v) {
    free(r->addr);
    free(r->host);
    return -1;
  }
  e->snap = v;
  memmove(&v[i + 1], &v[i], (e->n_snap - i) * sizeof(runner));
  v[i] = *r;
  e->n_snap++;
  return 0;
}

/* ---- watch and poll -------------------------------------------------------------- */

static void watch_open(etcd *e, task *t);

static void watch_retry(etcd *e) {
  int n = e->watch_failures < 10 ? e->watch_failures : 10;
  e->watch_failures++;
  int64_t delay = (int64_t)500 << n;
  if (delay > 30000) delay = 30000;
  core_metric_add(e->m_watch_reconnects, 1);
  sched(e, &e->watch_task, delay, watch_open);
}

static void watch_cancel(etcd *e) {
  rg_http_cancel(e->watch_req);
  e->watch_req = NULL;
}

static void watch_line(void *ud, json_t *obj) {
  etcd *e = ud;
  if (!e->watching) return;
  json_t *res = json_object_get(obj, "result");
  if (json_object_get(obj, "error") || !json_is_object(res)) {
    json_t *m = json_object_get(json_object_get(obj, "error"), "message");
    core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "the runner watch broke: %s",
             json_is_string(m) ? json_string_value(m) : "unexpected answer");
    watch_cancel(e);
    watch_retry(e);
    return;
  }
  if (json_is_true(json_object_get(res, "canceled"))) {
    core_log(e->host.lg, CRUSTER_LOG_INFO, "registry",
             "etcd cancelled the runner watch (compacted?): reading the runners again");
    watch_cancel(e);
    watch_retry(e);
    return;
  }
  if (json_is_true(json_object_get(res, "created"))) e->watch_failures = 0;
  json_t *evs = json_object_get(res, "events");
  size_t nev = json_is_array(evs) ? json_array_size(evs) : 0;
  int changed = 0;
  for (size_t i = 0; i < nev; i++) {
    json_t *ev = json_array_get(evs, i);
    json_t *kv = json_object_get(ev, "kv");
    json_t *type = json_object_get(ev, "type");
    int64_t rev = 0;
    rg_json_i64(json_object_get(kv, "mod_revision"), &rev);
    if (rev > e->snap_rev) e->snap_rev = rev;
    if (json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0) {
      char pfx[MAX_PREFIX_LEN + 16];
      runners_prefix(e, pfx, sizeof pfx);
      size_t plen = strlen(pfx), klen;
      char *key = kv_field(kv, "key", &klen);
      if (key && klen > plen && memcmp(key, pfx, plen) == 0) {
        snap_remove(e, key + plen);
        changed = 1;
      }
      free(key);
      continue;
    }
    runner r;
    int rc = parse_runner_kv(e, kv, &r);
    if (rc == 0) {
      snap_put(e, &r);
      changed = 1;
    } else if (rc == -1) {
      /* a malformed value: whatever was there is no runner any more */
      char pfx[MAX_PREFIX_LEN + 16];
      runners_prefix(e, pfx, sizeof pfx);
      size_t plen = strlen(pfx), klen;
      char *key = kv_field(kv, "key", &klen);
      if (key && klen > plen && memcmp(key, pfx, plen) == 0) {
        snap_remove(e, key + plen);
        changed = 1;
      }
      free(key);
    }
  }
  int64_t hrev = header_rev(res);
  if (hrev > e->snap_rev) e->snap_rev = hrev;
  if (changed) emit(e);
}

static void watch_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)code;
  (void)body;
  etcd *e = ud;
  e->watch_req = NULL;
  count_req(e, "watch", status);
  if (!e->watching) return;
  core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "the runner watch ended: %s",
           msg ? msg : "end of stream");
  watch_retry(e);
}

static json_t *range_body(const char *pfx) {
  size_t elen;
  char *end = rg_prefix_end(pfx, strlen(pfx), &elen);
  if (!end) return NULL;
  json_t *k = jb64s(pfx), *en = jb64(end, elen);
  free(end);
  if (!k || !en) {
    json_decref(k);
    json_decref(en);
    return NULL;
  }
  return json_pack("{s:o,s:o}", "key", k, "range_end", en);
}

static void watch_sync_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)code;
  etcd *e = ud;
  e->watch_sync_req = NULL;
  count_req(e, "range", status);
  if (!e->watching) return;
  if (status != CRUSTER_OK) {
    core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "cannot read the runners: %s", msg);
    watch_retry(e);
    return;
  }
  int64_t rev = header_rev(body);
  apply_range(e, body);
  if (!e->watching) return; /* the callback stopped us */
  char pfx[MAX_PREFIX_LEN + 16];
  json_t *cr = range_body(runners_prefix(e, pfx, sizeof pfx));
  if (cr) json_object_set_new(cr, "start_revision", jid(rev + 1));
  e->watch_req = post(e, "/v3/watch", cr ? json_pack("{s:o}", "create_request", cr) : NULL, 0,
                      watch_done, watch_line, e);
  if (!e->watch_req) watch_retry(e);
}

static void watch_open(etcd *e, task *t) {
  (void)t;
  if (!e->watching || e->watch_sync_req) return;
  watch_cancel(e);
  char pfx[MAX_PREFIX_LEN + 16];
  e->watch_sync_req = post(e, "/v3/kv/range", range_body(runners_prefix(e, pfx, sizeof pfx)), 0,
                           watch_sync_done, NULL, e);
  if (!e->watch_sync_req) watch_retry(e);
}

static void poll_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)code;
  etcd *e = ud;
  e->poll_req = NULL;
  count_req(e, "range", status);
  if (!e->watching) return;
  if (status != CRUSTER_OK) {
    core_log(e->host.lg, CRUSTER_LOG_DEBUG, "registry", "runner poll failed: %s", msg);
    return;
  }
  apply_range(e, body);
}

static void poll_tick(etcd *e, task *t) {
  (void)t;
  if (!e->watching) return;
  sched(e, &e->poll_task, e->poll_ms, poll_tick);
  if (e->poll_req) return;
  char pfx[MAX_PREFIX_LEN + 16];
  e->poll_req = post(e, "/v3/kv/range", range_body(runners_prefix(e, pfx, sizeof pfx)), 0,
                     poll_done, NULL, e);
}

static void watch_stop(etcd *e) {
  e->watching = 0;
  watch_cancel(e);
  rg_http_cancel(e->watch_sync_req);
  e->watch_sync_req = NULL;
  rg_http_cancel(e->poll_req);
  e->poll_req = NULL;
  unsched(e, &e->watch_task);
  unsched(e, &e->poll_task);
}

/* ---- lease: keep-alive and the deadline model ------------------------------------- */

static void report(etcd *e, int state) {
  set_lease_gauge(e);
  if (e->host.on_lease && !e->stopped) e->host.on_lease(e->host.ud, state);
}

static int64_t margin(etcd *e) { return e->margin_ms ? e->margin_ms : e->ttl_ms / 4; }

static void deadline_fired(etcd *e, task *t) {
  (void)t;
  if (e->state != RS_UP || e->lease_state != RG_LEASE_OK) return;
  if (now_ms() < e->deadline - margin(e)) {
    sched(e, &e->deadline_task, e->deadline - margin(e) - now_ms(), deadline_fired);
    return;
  }
  e->lease_state = RG_LEASE_UNCERTAIN;
  core_log(e->host.lg, CRUSTER_LOG_WARN, "registry",
           "lease %llx uncertain: no keep-alive proves it past the deadline (%lld ms margin)",
           (unsigned long long)e->lease, (long long)margin(e));
  report(e, RG_LEASE_UNCERTAIN);
}

static void arm_deadline(etcd *e) {
  if (!e->deadline_on || e->state != RS_UP || e->lease_state != RG_LEASE_OK) {
    unsched(e, &e->deadline_task);
    return;
  }
  sched(e, &e->deadline_task, e->deadline - margin(e) - now_ms(), deadline_fired);
}

static int64_t ka_interval(etcd *e) {
  int64_t t = e->ttl_ms / 1000;
  if (t < 3) t = 3;
  return t / 3 * 1000;
}

static void start_rereg(etcd *e, task *t);

static void lease_lost(etcd *e, const char *why) {
  if (e->state != RS_UP) return;
  core_log(e->host.lg, CRUSTER_LOG_WARN, "registry",
           "lease %llx lost (%s): registering again under a new lease",
           (unsigned long long)e->lease, why);
  int was = e->lease_state;
  e->state = RS_LOST;
  e->lease_state = RG_LEASE_UNCERTAIN;
  e->lease = 0;
  e->deadline = 0;
  unsched(e, &e->deadline_task);
  rg_http_cancel(e->ka_req);
  e->ka_req = NULL;
  start_rereg(e, &e->ka_task);
  if (was != RG_LEASE_UNCERTAIN)
    report(e, RG_LEASE_UNCERTAIN);
  else
    set_lease_gauge(e);
}

static void ka_tick(etcd *e, task *t);

static void ka_failed(etcd *e, const char *why) {
  e->ka_streak++;
  core_metric_add(e->m_ka_failures, 1);
  core_metric_set(e->m_ka_streak, e->ka_streak);
  core_log(e->host.lg, CRUSTER_LOG_WARN, "registry", "lease keep-alive failed (%d in a row): %s",
           e->ka_streak, why);
  int64_t again = ka_interval(e) < 1000 ? ka_interval(e) : 1000;
  sched(e, &e->ka_task, again, ka_tick);
}

static void ka_done(void *ud, int status, const char *msg, int code, json_t *body) {
  etcd *e = ud;
  e->ka_req = NULL;
  count_req(e, "keepalive", status);
  if (e->state != RS_UP || e->ka_lease != e->lease) return;
  if (status != CRUSTER_OK) {
    if (code == 5) /* NotFound: the lease is gone */
      lease_lost(e, msg);
    else
      ka_failed(e, msg);
    return;
  }
  json_t *res = json_object_get(body, "result");
  json_t *err = json_object_get(body, "error");
  int64_t ttl = 0;
  if (err || !json_is_object(res) || rg_json_i64(json_object_get(res, "TTL"), &ttl) != 0) {
    json_t *c = json_object_get(err, "grpc_code");
    if (json_is_integer(c) && json_integer_value(c) == 5) {
      lease_lost(e, "etcd: lease not found");
      return;
    }
    ka_failed(e, "etcd answered the keep-alive with something unexpected");
    return;
  }
  if (ttl <= 0) {
    lease_lost(e, "etcd says it expired");
    return;
  }
  int64_t d = e->ka_sent + ttl * 1000;
  if (d > e->deadline) e->deadline = d;
  if (e->ka_streak) {
    core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "lease keep-alive works again");
    e->ka_streak = 0;
    core_metric_set(e->m_ka_streak, 0);
  }
  if (e->lease_state == RG_LEASE_UNCERTAIN && now_ms() < e->deadline - margin(e)) {
    e->lease_state = RG_LEASE_OK;
    arm_deadline(e);
    core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "lease %llx is alive again",
             (unsigned long long)e->lease);
    report(e, RG_LEASE_OK);
    return;
  }
  arm_deadline(e);
}

static void ka_tick(etcd *e, task *t) {
  (void)t;
  if (e->state != RS_UP) return;
  sched(e, &e->ka_task, ka_interval(e), ka_tick);
  if (e->ka_req || e->drop_keepalives) return;
  int64_t timeout = ka_interval(e);
  if (timeout > e->timeout_ms) timeout = e->timeout_ms;
  e->ka_sent = now_ms();
  e->ka_lease = e->lease;
  json_t *id = jid(e->lease);
  e->ka_req = post(e, "/v3/lease/keepalive", id ? json_pack("{s:o}", "ID", id) : NULL, timeout,
                   ka_done, NULL, e);
  if (!e->ka_req) ka_failed(e, "cannot send it (out of memory)");
}

/* ---- registration ----------------------------------------------------------------- */

struct reg_op {
  op o;
  rg_register_cb cb;
  void *ud;
  int internal; /* the re-registration after a lost lease (no caller) */
  int step;     /* 0 grant, 1 put the runner key, 2 read the counter, 3 CAS it */
  int attempt, failures;
  int64_t lease, grant_sent, ttl_s;
  int64_t counter, counter_mod;
  int counter_exists;
  rg_hreq *req;
};

static void reg_step(reg_op *r);

static void revoke_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)msg;
  (void)body;
  count_req(ud, "revoke", status == CRUSTER_OK || code == 5 ? CRUSTER_OK : status);
}

static void revoke_quietly(etcd *e, int64_t lease) {
  json_t *id = jid(lease);
  post(e, "/v3/lease/revoke", id ? json_pack("{s:o}", "ID", id) : NULL, 0, revoke_done, NULL, e);
}

static void reg_retry_task(etcd *e, task *t) {
  (void)e;
  reg_step((reg_op *)((char *)t - offsetof(op, t)));
}

static void reg_finish_fail(reg_op *r, int status, const char *msg) {
  etcd *e = r->o.e;
  if (r->lease) revoke_quietly(e, r->lease);
  r->lease = 0;
  if (r->internal) {
    r->failures++;
    int64_t delay = (int64_t)500 << (r->failures < 4 ? r->failures : 4);
    if (delay > 5000) delay = 5000;
    core_log(e->host.lg, CRUSTER_LOG_WARN, "registry",
             "registering again failed (%s); next attempt in %lld ms", msg, (long long)delay);
    r->step = 0;
    sched(e, &r->o.t, delay, reg_retry_task);
    return;
  }
  op_remove(&r->o);
  e->state = RS_NONE;
  set_lease_gauge(e);
  rg_register_cb cb = r->cb;
  void *ud = r->ud;
  free(r);
  cb(ud, status, msg, -1);
}

static void reg_fail_op(op *o, int status, const char *msg) {
  reg_op *r = (reg_op *)o;
  if (r->internal) {
    o->e->rereg = NULL;
    free(r);
    return;
  }
  rg_register_cb cb = r->cb;
  void *ud = r->ud;
  free(r);
  cb(ud, status, msg, -1);
}

static void reg_succeeded(reg_op *r) {
  etcd *e = r->o.e;
  op_remove(&r->o);
  e->lease = r->lease;
  e->ttl_ms = r->ttl_s * 1000 > e->ttl_ms ? r->ttl_s * 1000 : e->ttl_ms;
  e->deadline = r->grant_sent + r->ttl_s * 1000;
  e->state = RS_UP;
  e->lease_state = RG_LEASE_OK;
  e->ka_streak = 0;
  core_metric_set(e->m_ka_streak, 0);
  sched(e, &e->ka_task, ka_interval(e), ka_tick);
  arm_deadline(e);
  set_lease_gauge(e);
  if (r->internal) {
    e->rereg = NULL;
    free(r);
    core_metric_add(e->m_reregs, 1);
    core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "registered again as %s under lease %llx",
             e->me, (unsigned long long)e->lease);
    report(e, RG_LEASE_NEW);
    return;
  }
  e->machine_id = (int)(r->counter % 1024);
  e->watching = 1;
  e->watch_failures = 0;
  sched(e, &e->watch_task, 0, watch_open);
  sched(e, &e->poll_task, e->poll_ms, poll_tick);
  core_log(e->host.lg, CRUSTER_LOG_INFO, "registry", "registered %s, lease %llx, machine id %d",
           e->me, (unsigned long long)e->lease, e->machine_id);
  rg_register_cb cb = r->cb;
  void *ud = r->ud;
  free(r);
  cb(ud, CRUSTER_OK, NULL, e->machine_id);
}

static void reg_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)code;
  reg_op *r = ud;
  etcd *e = r->o.e;
  r->req = NULL;
  static const char *const names[] = {"lease_grant", "put", "range", "txn"};
  count_req(e, names[r->step], status);
  if (status != CRUSTER_OK) {
    reg_finish_fail(r, status, msg);
    return;
  }
  char cname[MAX_PREFIX_LEN + 32];
  snprintf(cname, sizeof cname, "%smachine_id_counter", e->prefix);
  switch (r->step) {
    case 0: {
      int64_t id = 0, ttl = 0;
      if (rg_json_i64(json_object_get(body, "ID"), &id) != 0 || id == 0 ||
          rg_json_i64(json_object_get(body, "TTL"), &ttl) != 0 || ttl <= 0) {
        reg_finish_fail(r, CRUSTER_E_MALFORMED, "etcd's lease grant has no lease ID or TTL");
        return;
      }
      r->lease = id;
      r->ttl_s = ttl;
      r->step = 1;
      break;
    }
    case 1:
      if (r->internal) {
        reg_succeeded(r);
        return;
      }
      r->step = 2;
      break;
    case 2: {
      json_t *kv = first_kv(body);
      r->counter = 0;
      r->counter_exists = kv != NULL;
      r->counter_mod = 0;
      if (kv) {
        size_t len;
        char *v = kv_field(kv, "value", &len), *end = NULL;
        long long x = v ? strtoll(v, &end, 10) : -1;
        int bad = !v || !*v || *end || x < 0 || x == LLONG_MAX;
        free(v);
        if (bad) {
          reg_finish_fail(r, CRUSTER_E_MALFORMED, "the machine id counter is not a decimal number");
          return;
        }
        r->counter = x;
        rg_json_i64(json_object_get(kv, "mod_revision"), &r->counter_mod);
      }
      r->step = 3;
      break;
    }
    case 3:
      if (json_is_true(json_object_get(body, "succeeded"))) {
        r->counter++;
        reg_succeeded(r);
        return;
      }
      if (++r->attempt >= MACHINE_ID_ATTEMPTS) {
        reg_finish_fail(r, CRUSTER_E_REGISTRY,
                        "the machine id counter changed under 100 attempts in a row");
        return;
      }
      r->step = 2;
      {
        int a = r->attempt < 6 ? r->attempt : 6;
        int64_t delay = (int64_t)1 << a;
        sched(e, &r->o.t, delay < 100 ? delay : 100, reg_retry_task);
      }
      return;
  }
  reg_step(r);
}

/* Sends the request of r's step; on failure to send, fails r (never inside
 * the caller's register_runner: that checks the first step itself). */
static int reg_send(reg_op *r) {
  etcd *e = r->o.e;
  char cname[MAX_PREFIX_LEN + 32];
  snprintf(cname, sizeof cname, "%smachine_id_counter", e->prefix);
  json_t *body = NULL;
  const char *path = "/v3/kv/txn";
  switch (r->step) {
    case 0:
      r->grant_sent = now_ms();
      body = json_pack("{s:I}", "TTL", (json_int_t)(e->ttl_ms / 1000));
      path = "/v3/lease/grant";
      break;
    case 1: {
      char *val = rg_runner_value(e->me_host, e->me_port, e->me_weight, 1);
      json_t *k = jb64s(e->runner_key), *v = val ? jb64s(val) : NULL, *l = jid(r->lease);
      free(val);
      body = k && v && l ? json_pack("{s:o,s:o,s:o}", "key", k, "value", v, "lease", l) : NULL;
      if (!body) {
        json_decref(k);
        json_decref(v);
        json_decref(l);
      }
      path = "/v3/kv/put";
      break;
    }
    case 2: {
      json_t *k = jb64s(cname);
      body = k ? json_pack("{s:o}", "key", k) : NULL;
      path = "/v3/kv/range";
      break;
    }
    case 3: {
      char num[32];
      snprintf(num, sizeof num, "%lld", (long long)(r->counter + 1));
      body = r->counter_exists ? txn(cname, "MOD", r->counter_mod, NULL, req_put(cname, num, 0), NULL)
                               : txn(cname, "CREATE", 0, NULL, req_put(cname, num, 0), NULL);
      break;
    }
  }
  r->req = post(e, path, body, 0, reg_done, NULL, r);
  return r->req ? 0 : -1;
}

static void reg_step(reg_op *r) {
  if (reg_send(r) != 0) reg_finish_fail(r, CRUSTER_E_NOMEM, "out of memory");
}

static void start_rereg(etcd *e, task *t) {
  (void)t;
  if (e->state != RS_LOST || e->rereg) return;
  reg_op *r = calloc(1, sizeof(*r));
  if (!r) {
    sched(e, &e->ka_task, 1000, start_rereg);
    return;
  }
  r->internal = 1;
  op_add(e, &r->o, reg_fail_op);
  e->rereg = r;
  reg_step(r);
}

static cruster_status etcd_register(cruster_registry *reg, const char *host, int port, int weight,
                                    rg_register_cb cb, void *ud, cruster_error **err) {
  etcd *e = reg->impl;
  int st = check_usable(e, err);
  if (st != CRUSTER_OK) return st;
  if (!cb) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "register needs a callback");
  if (!host || !*host || strlen(host) > 255)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "the runner host must be 1..255 bytes");
  for (const unsigned char *p = (const unsigned char *)host; *p; p++)
    if (*p <= ' ' || *p == 0x7f)
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "the runner host has a space or control character at offset %zu",
                            (size_t)(p - (const unsigned char *)host));
  if (port < 1 || port > 65535)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "runner port %d is outside 1..65535",
                          port);
  if (weight < 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "runner weight %d is negative", weight);
  if (e->state != RS_NONE)
    return core_error_set(err, CRUSTER_E_STATE, "this runner is registered already");
  size_t n = strlen(host) + 8;
  char *me = malloc(n), *mh = strdup(host);
  char *key = malloc(strlen(e->prefix) + n + 16);
  reg_op *r = calloc(1, sizeof(*r));
  if (!me || !mh || !key || !r) {
    free(me);
    free(mh);
    free(key);
    free(r);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  snprintf(me, n, "%s:%d", host, port);
  sprintf(key, "%srunners/%s", e->prefix, me);
  free(e->me);
  free(e->me_host);
  free(e->runner_key);
  e->me = me;
  e->me_host = mh;
  e->runner_key = key;
  e->me_port = port;
  e->me_weight = weight;
  r->cb = cb;
  r->ud = ud;
  op_add(e, &r->o, reg_fail_op);
  if (reg_send(r) != 0) {
    op_remove(&r->o);
    free(r);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  e->state = RS_REGISTERING;
  return CRUSTER_OK;
}

/* ---- get_runners ------------------------------------------------------------------- */

typedef struct runners_op {
  op o;
  rg_runners_cb cb;
  void *ud;
} runners_op;

static void runners_fail(op *o, int status, const char *msg) {
  runners_op *r = (runners_op *)o;
  rg_runners_cb cb = r->cb;
  void *ud = r->ud;
  free(r);
  cb(ud, status, msg, NULL, 0);
}

static void runners_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)code;
  runners_op *r = ud;
  etcd *e = r->o.e;
  count_req(e, "range", status);
  op_remove(&r->o);
  if (status != CRUSTER_OK) {
    runners_fail(&r->o, status, msg);
    return;
  }
  runner *v = NULL;
  size_t n = 0;
  rg_runner *out = NULL;
  if (parse_range(e, body, &v, &n) != 0 || !(out = view(v, n))) {
    free_runners(v, n);
    runners_fail(&r->o, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  rg_runners_cb cb = r->cb;
  void *cud = r->ud;
  free(r);
  cb(cud, CRUSTER_OK, NULL, out, n);
  free(out);
  free_runners(v, n);
}

static cruster_status etcd_get_runners(cruster_registry *reg, rg_runners_cb cb, void *ud,
                                       cruster_error **err) {
  etcd *e = reg->impl;
  int st = check_usable(e, err);
  if (st != CRUSTER_OK) return st;
  if (!cb) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "get_runners needs a callback");
  runners_op *r = calloc(1, sizeof(*r));
  if (!r) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  r->cb = cb;
  r->ud = ud;
  char pfx[MAX_PREFIX_LEN + 16];
  if (!post(e, "/v3/kv/range", range_body(runners_prefix(e, pfx, sizeof pfx)), 0, runners_done,
            NULL, r)) {
    free(r);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  op_add(e, &r->o, runners_fail);
  return CRUSTER_OK;
}

/* ---- shard locks --------------------------------------------------------------------- */

enum { LK_ACQUIRE, LK_REFRESH, LK_RELEASE };
static const char *const lk_names[] = {"acquire", "refresh", "release"};

typedef struct lock_op lock_op;
typedef struct lock_req {
  lock_op *l;
  size_t i;
} lock_req;

struct lock_op {
  op o;
  int kind;
  char **keys; /* full etcd keys */
  size_t n, next, done, inflight;
  int *results;
  lock_req *reqs;
  int64_t lease;
  rg_locks_cb cb;
  void *ud;
};

static void lock_free(lock_op *l) {
  for (size_t i = 0; i < l->n; i++) free(l->keys[i]);
  free(l->keys);
  free(l->results);
  free(l->reqs);
  free(l);
}

static void lock_fail(op *o, int status, const char *msg) {
  lock_op *l = (lock_op *)o;
  rg_locks_cb cb = l->cb;
  void *ud = l->ud;
  size_t n = l->n;
  lock_free(l);
  cb(ud, status, msg, NULL, n);
}

static void lock_complete(lock_op *l) {
  op_remove(&l->o);
  l->cb(l->ud, CRUSTER_OK, NULL, l->results, l->n);
  lock_free(l);
}

static void lock_complete_task(etcd *e, task *t) {
  (void)e;
  lock_complete((lock_op *)((char *)t - offsetof(op, t)));
}

static void lock_issue(lock_op *l);

static void lock_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)msg;
  (void)code;
  lock_req *q = ud;
  lock_op *l = q->l;
  etcd *e = l->o.e;
  l->inflight--;
  count_req(e, "txn", status);
  int res = status;
  if (status == CRUSTER_OK) {
    res = json_is_true(json_object_get(body, "succeeded")) ? 1 : 0;
    if (!res && l->kind == LK_ACQUIRE) {
      /* held: by me already? */
      json_t *resp = json_array_get(json_object_get(body, "responses"), 0);
      json_t *kv = first_kv(json_object_get(resp, "response_range"));
      size_t len;
      char *v = kv ? kv_field(kv, "value", &len) : NULL;
      if (v && e->me && strcmp(v, e->me) == 0 && strlen(v) == len) res = 1;
      free(v);
    }
  }
  l->results[q->i] = res;
  l->done++;
  if (l->done == l->n)
    lock_complete(l);
  else
    lock_issue(l);
}

static json_t *lock_body(lock_op *l, const char *key) {
  etcd *e = l->o.e;
  switch (l->kind) {
    case LK_ACQUIRE:
      return txn(key, "CREATE", 0, NULL, req_put(key, e->me, l->lease),
                 req_one_key("request_range", key));
    case LK_REFRESH: return txn(key, "VALUE", 0, e->me, req_put(key, e->me, l->lease), NULL);
    default: return txn(key, "VALUE", 0, e->me, req_one_key("request_delete_range", key), NULL);
  }
}

static void lock_issue(lock_op *l) {
  etcd *e = l->o.e;
  while (l->inflight < RG_MAX_INFLIGHT && l->next < l->n) {
    size_t i = l->next++;
    l->reqs[i] = (lock_req){l, i};
    if (post(e, "/v3/kv/txn", lock_body(l, l->keys[i]), 0, lock_done, NULL, &l->reqs[i])) {
      l->inflight++;
    } else {
      l->results[i] = CRUSTER_E_NOMEM;
      l->done++;
    }
  }
  if (l->done == l->n && !l->o.t.armed) sched(e, &l->o.t, 0, lock_complete_task);
}

static cruster_status locks(cruster_registry *reg, int kind, const char *const *shard_keys,
                            size_t n, rg_locks_cb cb, void *ud, cruster_error **err) {
  etcd *e = reg->impl;
  int st = check_usable(e, err);
  if (st != CRUSTER_OK) return st;
  if (!cb) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "%s needs a callback", lk_names[kind]);
  if (n > MAX_LOCKS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "%s of %zu shards: at most %zu at once",
                          lk_names[kind], n, MAX_LOCKS);
  if (n && !shard_keys)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "shard_keys is NULL but n is %zu", n);
  for (size_t i = 0; i < n; i++) {
    const char *k = shard_keys[i];
    size_t len = k ? strlen(k) : 0;
    if (!k || len == 0 || len > MAX_SHARD_KEY_LEN || !strchr(k, ':'))
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "shard key %zu is not \"group:n\" (1..%d bytes)", i, MAX_SHARD_KEY_LEN);
  }
  if (kind != LK_RELEASE && e->state != RS_UP)
    return core_error_set(err, CRUSTER_E_STATE, "%s needs a live lease (%s)", lk_names[kind],
                          e->state == RS_LOST ? "the lease was lost; registering again"
                                              : "not registered");
  if (!e->me)
    return core_error_set(err, CRUSTER_E_STATE, "%s: this runner was never registered",
                          lk_names[kind]);
  lock_op *l = calloc(1, sizeof(*l));
  if (!l) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  l->kind = kind;
  l->n = n;
  l->lease = e->lease;
  l->cb = cb;
  l->ud = ud;
  l->keys = calloc(n ? n : 1, sizeof(char *));
  l->results = calloc(n ? n : 1, sizeof(int));
  l->reqs = calloc(n ? n : 1, sizeof(lock_req));
  int oom = !l->keys || !l->results || !l->reqs;
  for (size_t i = 0; i < n && !oom; i++) {
    size_t len = strlen(e->prefix) + strlen(shard_keys[i]) + 8;
    if (!(l->keys[i] = malloc(len))) {
      oom = 1;
      break;
    }
    snprintf(l->keys[i], len, "%sshards/%s", e->prefix, shard_keys[i]);
  }
  if (oom) {
    if (!l->keys) l->n = 0;
    lock_free(l);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  op_add(e, &l->o, lock_fail);
  lock_issue(l);
  return CRUSTER_OK;
}

static cruster_status etcd_acquire(cruster_registry *r, const char *const *k, size_t n,
                                   rg_locks_cb cb, void *ud, cruster_error **err) {
  return locks(r, LK_ACQUIRE, k, n, cb, ud, err);
}
static cruster_status etcd_refresh(cruster_registry *r, const char *const *k, size_t n,
                                   rg_locks_cb cb, void *ud, cruster_error **err) {
  return locks(r, LK_REFRESH, k, n, cb, ud, err);
}
static cruster_status etcd_release(cruster_registry *r, const char *const *k, size_t n,
                                   rg_locks_cb cb, void *ud, cruster_error **err) {
  return locks(r, LK_RELEASE, k, n, cb, ud, err);
}

/* ---- set_runner_health ----------------------------------------------------------------- */

typedef struct health_op {
  op o;
  rg_status_cb cb;
  void *ud;
  char *key;
  int healthy, attempt, step; /* step 0: range, 1: txn */
} health_op;

static void health_fail(op *o, int status, const char *msg) {
  health_op *h = (health_op *)o;
  rg_status_cb cb = h->cb;
  void *ud = h->ud;
  free(h->key);
  free(h);
  cb(ud, status, msg);
}

static void health_end(health_op *h, int status, const char *msg) {
  op_remove(&h->o);
  health_fail(&h->o, status, msg);
}

static void health_done(void *ud, int status, const char *msg, int code, json_t *body);

static int health_range(health_op *h) {
  json_t *k = jb64s(h->key);
  h->step = 0;
  return post(h->o.e, "/v3/kv/range", k ? json_pack("{s:o}", "key", k) : NULL, 0, health_done,
              NULL, h)
             ? 0
             : -1;
}

static void health_retry_task(etcd *e, task *t) {
  (void)e;
  health_op *h = (health_op *)((char *)t - offsetof(op, t));
  if (health_range(h) != 0) health_end(h, CRUSTER_E_NOMEM, "out of memory");
}

static void health_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)code;
  health_op *h = ud;
  etcd *e = h->o.e;
  count_req(e, h->step ? "txn" : "range", status);
  if (status != CRUSTER_OK) {
    health_end(h, status, msg);
    return;
  }
  if (h->step == 1) {
    if (json_is_true(json_object_get(body, "succeeded"))) {
      health_end(h, CRUSTER_OK, NULL);
      return;
    }
    if (++h->attempt >= HEALTH_ATTEMPTS) {
      health_end(h, CRUSTER_E_REGISTRY, "the runner key changed under 10 attempts in a row");
      return;
    }
    int a = h->attempt < 5 ? h->attempt : 5;
    int64_t delay = (int64_t)1 << a;
    sched(e, &h->o.t, delay < 50 ? delay : 50, health_retry_task);
    return;
  }
  json_t *kv = first_kv(body);
  if (!kv) {
    health_end(h, CRUSTER_OK, NULL); /* no such runner: nothing to do */
    return;
  }
  size_t len;
  char *val = kv_field(kv, "value", &len);
  json_error_t je;
  json_t *v = val ? json_loadb(val, len, 0, &je) : NULL;
  free(val);
  json_t *hv = json_object_get(v, "healthy");
  if (!json_is_object(v) || !json_is_boolean(hv)) {
    json_decref(v);
    health_end(h, CRUSTER_E_MALFORMED, "the runner's value in etcd is malformed");
    return;
  }
  if (json_is_true(hv) == !!h->healthy) {
    json_decref(v);
    health_end(h, CRUSTER_OK, NULL);
    return;
  }
  json_object_set_new(v, "healthy", json_boolean(h->healthy));
  char *nv = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(v);
  int64_t mod = 0, lease = 0;
  rg_json_i64(json_object_get(kv, "mod_revision"), &mod);
  rg_json_i64(json_object_get(kv, "lease"), &lease);
  json_t *b = nv ? txn(h->key, "MOD", mod, NULL, req_put(h->key, nv, lease), NULL) : NULL;
  free(nv);
  h->step = 1;
  if (!post(e, "/v3/kv/txn", b, 0, health_done, NULL, h))
    health_end(h, CRUSTER_E_NOMEM, "out of memory");
}

static cruster_status etcd_set_health(cruster_registry *reg, const char *addr, int healthy,
                                      rg_status_cb cb, void *ud, cruster_error **err) {
  etcd *e = reg->impl;
  int st = check_usable(e, err);
  if (st != CRUSTER_OK) return st;
  if (!cb) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "set_runner_health needs a callback");
  if (!addr || core_parse_hostport(addr, NULL, 0, NULL) != 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "runner address %s%s%s is not host:port",
                          addr ? "\"" : "", addr ? addr : "NULL", addr ? "\"" : "");
  health_op *h = calloc(1, sizeof(*h));
  size_t n = strlen(e->prefix) + strlen(addr) + 16;
  if (h) h->key = malloc(n);
  if (!h || !h->key) {
    if (h) free(h);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  snprintf(h->key, n, "%srunners/%s", e->prefix, addr);
  h->cb = cb;
  h->ud = ud;
  h->healthy = healthy;
  h->o.e = e;
  if (health_range(h) != 0) {
    free(h->key);
    free(h);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  op_add(e, &h->o, health_fail);
  return CRUSTER_OK;
}

/* ---- release_all ------------------------------------------------------------------------ */

typedef struct release_op {
  op o;
  rg_status_cb cb;
  void *ud;
} release_op;

static void release_fail(op *o, int status, const char *msg) {
  release_op *r = (release_op *)o;
  rg_status_cb cb = r->cb;
  void *ud = r->ud;
  free(r);
  cb(ud, status, msg);
}

static void release_end(release_op *r, int status, const char *msg) {
  op_remove(&r->o);
  release_fail(&r->o, status, msg);
}

static void release_task(etcd *e, task *t) {
  (void)e;
  release_end((release_op *)((char *)t - offsetof(op, t)), CRUSTER_OK, NULL);
}

static void release_done(void *ud, int status, const char *msg, int code, json_t *body) {
  (void)body;
  release_op *r = ud;
  if (status != CRUSTER_OK && code == 5) status = CRUSTER_OK; /* gone already */
  count_req(r->o.e, "revoke", status);
  release_end(r, status, status == CRUSTER_OK ? NULL : msg);
}

static cruster_status etcd_release_all(cruster_registry *reg, rg_status_cb cb, void *ud,
                                       cruster_error **err) {
  etcd *e = reg->impl;
  int st = check_usable(e, err);
  if (st != CRUSTER_OK) return st;
  if (!cb) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "release_all needs a callback");
  if (e->state == RS_REGISTERING)
    return core_error_set(err, CRUSTER_E_STATE, "a registration is in progress");
  release_op *r = calloc(1, sizeof(*r));
  if (!r) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  r->cb = cb;
  r->ud = ud;
  int64_t lease = e->state == RS_UP ? e->lease : 0;
  if (e->rereg) {
    reg_op *rr = e->rereg;
    rg_http_cancel(rr->req);
    if (rr->lease) lease = rr->lease;
    op_remove(&rr->o);
    free(rr);
    e->rereg = NULL;
  }
  watch_stop(e);
  unsched(e, &e->ka_task);
  unsched(e, &e->deadline_task);
  rg_http_cancel(e->ka_req);
  e->ka_req = NULL;
  e->state = RS_NONE;
  e->lease = 0;
  e->deadline = 0;
  e->lease_state = 0;
  set_lease_gauge(e);
  op_add(e, &r->o, release_fail);
  json_t *id = lease ? jid(lease) : NULL;
  if (!lease || !post(e, "/v3/lease/revoke", id ? json_pack("{s:o}", "ID", id) : NULL, 0,
                      release_done, NULL, r))
    sched(e, &r->o.t, 0, release_task); /* nothing to revoke (or OOM: the TTL ends it) */
  return CRUSTER_OK;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void etcd_stop(cruster_registry *reg) {
  etcd *e = reg->impl;
  if (e->stopped || !e->attached) {
    e->stopped = 1;
    return;
  }
  e->stopped = 1;
  e->watching = 0;
  rg_http_close(&e->http);
  e->ka_req = e->watch_req = e->watch_sync_req = e->poll_req = NULL;
  for (task *t = e->tasks, *nx; t; t = nx) {
    nx = t->next;
    t->armed = 0;
    t->next = NULL;
  }
  e->tasks = NULL;
  uv_timer_stop(&e->timer);
  uv_close((uv_handle_t *)&e->timer, on_timer_closed);
  while (e->ops) {
    op *o = e->ops;
    op_remove(o);
    o->fail(o, CRUSTER_E_SHUTTING_DOWN, "the registry is stopping");
  }
  e->rereg = NULL;
  if (e->state != RS_NONE) e->state = RS_NONE;
  e->lease = 0;
  e->deadline = 0;
  set_lease_gauge(e);
}

static void etcd_destroy(cruster_registry *reg) {
  etcd *e = reg->impl;
  if (e->attached) {
    etcd_stop(reg);
    rg_http_free(&e->http);
  }
  for (size_t i = 0; i < e->n_eps; i++) free(e->eps[i]);
  free(e->eps);
  free(e->prefix);
  free(e->me);
  free(e->me_host);
  free(e->runner_key);
  free_runners(e->snap, e->n_snap);
  free(e);
}

static cruster_status etcd_attach(cruster_registry *reg, const rg_host *host, cruster_error **err) {
  etcd *e = reg->impl;
  if (!host || !host->loop)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "attach needs a host with a loop");
  if (e->attached || e->stopped)
    return core_error_set(err, CRUSTER_E_STATE, "the registry is attached already");
  e->host = *host;
  if (rg_http_init(&e->http, &host->loop->uv, host->lg, e->eps, e->n_eps, e->timeout_ms) != 0)
    return core_error_set(err, CRUSTER_E_INTERNAL, "cannot set up libcurl for etcd");
  if (uv_timer_init(&host->loop->uv, &e->timer) != 0) {
    rg_http_close(&e->http);
    rg_http_free(&e->http);
    return core_error_set(err, CRUSTER_E_INTERNAL, "cannot create the registry's timer");
  }
  e->timer.data = e;
  e->timer_open = 1;
  e->attached = 1;
  init_metrics(e);
  set_lease_gauge(e);
  return CRUSTER_OK;
}

static int64_t etcd_lease_deadline(cruster_registry *reg) {
  etcd *e = reg->impl;
  return e->state == RS_UP ? e->deadline : 0;
}

static const rg_ops etcd_ops = {
    .name = "etcd",
    .destroy = etcd_destroy,
    .attach = etcd_attach,
    .register_runner = etcd_register,
    .get_runners = etcd_get_runners,
    .acquire = etcd_acquire,
    .refresh = etcd_refresh,
    .release = etcd_release,
    .set_runner_health = etcd_set_health,
    .release_all = etcd_release_all,
    .stop = etcd_stop,
    .lease_deadline_ms = etcd_lease_deadline,
};

void rg_etcd_test_drop_keepalives(cruster_registry *r, int drop) {
  if (!r || r->ops != &etcd_ops) return;
  etcd *e = r->impl;
  e->drop_keepalives = drop;
  /* resuming: a keep-alive at once */
  if (!drop && e->state == RS_UP && !e->stopped) sched(e, &e->ka_task, 0, ka_tick);
}

/* ---- construction ------------------------------------------------------------------------- */

/* Splits and checks the endpoints ("http://h:p,https://h2:p2"). */
static int parse_endpoints(const char *s, char ***out, size_t *n, cruster_error **err) {
  *out = NULL;
  *n = 0;
  if (!s || !*s)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.endpoints is %s: give at least one http://host:port",
                          s ? "empty" : "NULL");
  if (strlen(s) > MAX_ENDPOINTS_LEN)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.endpoints is longer than %d bytes", MAX_ENDPOINTS_LEN);
  char **v = calloc(MAX_ENDPOINTS, sizeof(char *));
  if (!v) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  size_t k = 0;
  int st = CRUSTER_OK;
  const char *p = s;
  for (;;) {
    const char *comma = strchr(p, ',');
    const char *end = comma ? comma : p + strlen(p);
    while (p < end && *p == ' ') p++;
    const char *e2 = end;
    while (e2 > p && e2[-1] == ' ') e2--;
    while (e2 > p && e2[-1] == '/') e2--;
    size_t len = (size_t)(e2 - p);
    size_t scheme = len >= 7 && strncmp(p, "http://", 7) == 0    ? 7
                    : len >= 8 && strncmp(p, "https://", 8) == 0 ? 8
                                                                 : 0;
    if (k == MAX_ENDPOINTS) {
      st = core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.endpoints lists more than %d endpoints", MAX_ENDPOINTS);
      break;
    }
    if (!scheme || len == scheme || p[scheme] == '/' || p[scheme] == ':') {
      st = core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.endpoints: endpoint %zu (\"%.*s\") is not "
                          "http://host:port or https://host:port",
                          k + 1, (int)(len > 200 ? 200 : len), p);
      break;
    }
    for (size_t i = 0; i < len; i++)
      if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f || p[i] == '?' || p[i] == '#') {
        st = core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "cruster_etcd_opts.endpoints: endpoint %zu has a space, control "
                            "character, '?' or '#' at offset %zu",
                            k + 1, i);
        break;
      }
    if (st != CRUSTER_OK) break;
    if (!(v[k] = malloc(len + 1))) {
      st = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      break;
    }
    memcpy(v[k], p, len);
    v[k++][len] = 0;
    if (!comma) break;
    p = comma + 1;
  }
  if (st != CRUSTER_OK) {
    for (size_t i = 0; i < k; i++) free(v[i]);
    free(v);
    return st;
  }
  *out = v;
  *n = k;
  return CRUSTER_OK;
}

cruster_status cruster_registry_etcd_new(const cruster_etcd_opts *opts, cruster_registry **out,
                                         cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (!opts || !out)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "opts and out must not be NULL");
  cruster_etcd_opts o = CRUSTER_ETCD_OPTS_INIT;
  int st = core_opts_read("cruster_etcd_opts", "CRUSTER_ETCD_OPTS_INIT", opts, opts->size,
                          CRUSTER_ETCD_OPTS_SIZE_V1, sizeof(cruster_etcd_opts), &o, err);
  if (st != CRUSTER_OK) return st;
  const char *pf = o.prefix;
  size_t plen = pf ? strlen(pf) : 0;
  if (!pf || plen == 0 || plen > MAX_PREFIX_LEN)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.prefix must be 1..%d bytes ending with '/' (e.g. "
                          "\"/cluster-tests/\")",
                          MAX_PREFIX_LEN);
  if (pf[plen - 1] != '/')
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.prefix \"%.200s\" must end with '/'", pf);
  for (size_t i = 0; i < plen; i++)
    if ((unsigned char)pf[i] < ' ' || pf[i] == 0x7f)
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "cruster_etcd_opts.prefix has a control character at offset %zu", i);
  if (o.lease_ttl_ms <= 0 || o.lease_ttl_ms % 1000 != 0 || o.lease_ttl_ms > MAX_TTL_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.lease_ttl_ms is %lld: it must be a whole number of "
                          "seconds, 1000..%lld",
                          (long long)o.lease_ttl_ms, (long long)MAX_TTL_MS);
  if (o.request_timeout_ms <= 0 || o.request_timeout_ms > MAX_TIMEOUT_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.request_timeout_ms is %lld: it must be 1..%lld",
                          (long long)o.request_timeout_ms, (long long)MAX_TIMEOUT_MS);
  if (o.poll_interval_ms <= 0 || o.poll_interval_ms > MAX_POLL_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.poll_interval_ms is %lld: it must be 1..%lld",
                          (long long)o.poll_interval_ms, (long long)MAX_POLL_MS);
  if (o.lease_margin_ms < 0 || o.lease_margin_ms >= o.lease_ttl_ms)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_etcd_opts.lease_margin_ms is %lld: it must be 0 (a quarter of "
                          "the TTL) or below lease_ttl_ms (%lld)",
                          (long long)o.lease_margin_ms, (long long)o.lease_ttl_ms);
  char **eps;
  size_t n_eps;
  if ((st = parse_endpoints(o.endpoints, &eps, &n_eps, err)) != CRUSTER_OK) return st;
  etcd *e = calloc(1, sizeof(*e));
  char *prefix = strdup(pf);
  if (!e || !prefix) {
    for (size_t i = 0; i < n_eps; i++) free(eps[i]);
    free(eps);
    free(e);
    free(prefix);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  e->base.ops = &etcd_ops;
  e->base.impl = e;
  e->eps = eps;
  e->n_eps = n_eps;
  e->prefix = prefix;
  e->ttl_ms = o.lease_ttl_ms;
  e->timeout_ms = o.request_timeout_ms;
  e->poll_ms = o.poll_interval_ms;
  e->margin_ms = o.lease_margin_ms;
  e->deadline_on = !o.lease_deadline_off;
  *out = &e->base;
  return CRUSTER_OK;
}
