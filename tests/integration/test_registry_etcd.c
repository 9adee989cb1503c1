/* The etcd registry (src/registry) against the real etcd of scripts/dev
 * (CRUSTER_TEST_ETCD): registration and the key layout of behaviour.md §3.1,
 * machine ids, the runner watch, shard locks, runner health, the
 * lease-deadline model and re-registration, bad input and an endpoint that
 * answers garbage. Each test uses its own key prefix.
 *
 * The registry runs on a libuv loop that this thread drives itself (pump), so
 * callbacks run here, on the "loop thread"; a second, plain libcurl client
 * reads etcd directly to check what the registry wrote. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/metrics_internal.h"
#include "registry/etcd_util.h"
#include "registry/registry_internal.h"

#define DEADLINE_MS 60000

static rt_loop L;
static uv_timer_t guard;
static int test_no;
static char prefix[128];

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *etcd_url(void) {
  const char *u = getenv("CRUSTER_TEST_ETCD");
  if (!u || !*u)
    fail_msg("CRUSTER_TEST_ETCD is not set: these tests need the etcd of `scripts/dev services "
             "start` (then `source .dev/env`)");
  return u;
}

static void guard_cb(uv_timer_t *t) { (void)t; }

/* Runs the loop until fn(arg) is true (or DEADLINE_MS): 1 if it became true. */
static int pump_until(int (*fn)(void *), void *arg) {
  int64_t end = mono_ms() + DEADLINE_MS;
  uv_timer_start(&guard, guard_cb, 5, 5);
  while (!fn(arg) && mono_ms() < end) uv_run(&L.uv, UV_RUN_ONCE);
  uv_timer_stop(&guard);
  return fn(arg);
}


static int setup(void **state) {
  (void)state;
  memset(&L, 0, sizeof L);
  assert_int_equal(uv_loop_init(&L.uv), 0);
  uv_timer_init(&L.uv, &guard);
  snprintf(prefix, sizeof prefix, "/cruster-test-etcd-%d-%d/", (int)getpid(), ++test_no);
  return 0;
}

typedef struct node node;
static node *live[8];
static void node_free(node *x);
static void close_any(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int teardown(void **state) {
  (void)state;
  /* A failed test leaves its registries: stop them, close what is left. */
  for (int i = 0; i < 8; i++)
    if (live[i]) node_free(live[i]);
  uv_walk(&L.uv, close_any, NULL);
  uv_run(&L.uv, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&L.uv), 0);
  return 0;
}

/* ---- a plain client of etcd (blocking libcurl easy) ---------------------------- */

static size_t raw_write(char *d, size_t s, size_t n, void *ud) {
  char **buf = ud;
  size_t old = *buf ? strlen(*buf) : 0;
  char *b = realloc(*buf, old + s * n + 1);
  if (!b) return 0;
  memcpy(b + old, d, s * n);
  b[old + s * n] = 0;
  *buf = b;
  return s * n;
}

static json_t *raw_post(const char *path, json_t *body) {
  char url[512];
  snprintf(url, sizeof url, "%s%s", etcd_url(), path);
  char *req = json_dumps(body, JSON_COMPACT), *resp = NULL;
  json_decref(body);
  CURL *c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, req);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, raw_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
  CURLcode rc = curl_easy_perform(c);
  curl_easy_cleanup(c);
  free(req);
  if (rc != CURLE_OK) fail_msg("raw etcd request %s failed: %s", path, curl_easy_strerror(rc));
  json_t *j = json_loads(resp ? resp : "", 0, NULL);
  free(resp);
  if (!j) fail_msg("raw etcd request %s: not JSON", path);
  return j;
}

static json_t *b64j(const char *s) {
  char *b = rg_b64_encode(s, strlen(s));
  json_t *j = json_string(b);
  free(b);
  return j;
}

/* The value of `key` (malloc'd) or NULL when absent; its lease in *lease. */
static char *raw_get(const char *key, int64_t *lease) {
  json_t *r = raw_post("/v3/kv/range", json_pack("{s:o}", "key", b64j(key)));
  json_t *kvs = json_object_get(r, "kvs");
  char *out = NULL;
  if (lease) *lease = 0;
  if (json_array_size(kvs) > 0) {
    json_t *kv = json_array_get(kvs, 0);
    size_t n;
    json_t *v = json_object_get(kv, "value");
    out = v ? (char *)rg_b64_decode(json_string_value(v), &n) : strdup("");
    if (lease) rg_json_i64(json_object_get(kv, "lease"), lease);
  }
  json_decref(r);
  return out;
}

static void raw_delete_prefix(void) {
  size_t elen;
  char *end = rg_prefix_end(prefix, strlen(prefix), &elen);
  char *b = rg_b64_encode(end, elen);
  json_decref(raw_post("/v3/kv/deleterange",
                       json_pack("{s:o,s:s}", "key", b64j(prefix), "range_end", b)));
  free(b);
  free(end);
}

static char *key_of(const char *rest) {
  static char k[256];
  snprintf(k, sizeof k, "%s%s", prefix, rest);
  return k;
}

/* ---- a registry under test ------------------------------------------------------ */

struct node {
  cruster_registry *r;
  cruster_metrics *m;
  rg_host host;
  int reg_done, reg_status, machine_id;
  int runner_events;
  int n_runners;
  char addrs[16][64];
  int healthy[16];
  int lease_events[32];
  int n_lease;
  int uncertain_key_present; /* -1 unknown */
  int64_t uncertain_key_lease;
  int64_t uncertain_at, deadline_at_uncertain;
};

static void on_runners(void *ud, const rg_runner *v, size_t n) {
  node *x = ud;
  x->runner_events++;
  x->n_runners = (int)(n < 16 ? n : 16);
  for (int i = 0; i < x->n_runners; i++) {
    snprintf(x->addrs[i], sizeof x->addrs[i], "%s", v[i].addr);
    x->healthy[i] = v[i].healthy;
  }
}

static void on_lease(void *ud, int state) {
  node *x = ud;
  if (x->n_lease < 32) x->lease_events[x->n_lease++] = state;
  if (state == RG_LEASE_UNCERTAIN && x->uncertain_key_present < 0) {
    /* Right now, from a second client: the key must still be there. */
    x->uncertain_at = mono_ms();
    x->deadline_at_uncertain = x->r->ops->lease_deadline_ms(x->r);
    char *v = raw_get(key_of("runners/127.0.0.1:9003"), &x->uncertain_key_lease);
    x->uncertain_key_present = v != NULL;
    free(v);
  }
}

static cruster_etcd_opts opts_for(const char *endpoints) {
  cruster_etcd_opts o = CRUSTER_ETCD_OPTS_INIT;
  o.endpoints = endpoints;
  o.prefix = prefix;
  o.poll_interval_ms = 3600000; /* membership changes must come through the watch */
  return o;
}

static void node_init(node *x, const cruster_etcd_opts *o) {
  memset(x, 0, sizeof *x);
  x->uncertain_key_present = -1;
  cruster_error *err = NULL;
  cruster_status st = cruster_registry_etcd_new(o, &x->r, &err);
  if (st != CRUSTER_OK) fail_msg("etcd_new: %s", cruster_error_message(err));
  x->m = core_metrics_new();
  x->host = (rg_host){&L, NULL, x->m, x, on_runners, on_lease};
  assert_int_equal(x->r->ops->attach(x->r, &x->host, NULL), CRUSTER_OK);
  for (int i = 0; i < 8; i++)
    if (!live[i]) {
      live[i] = x;
      break;
    }
}

static void node_free(node *x) {
  for (int i = 0; i < 8; i++)
    if (live[i] == x) live[i] = NULL;
  x->r->ops->stop(x->r);
  uv_run(&L.uv, UV_RUN_NOWAIT);
  cruster_registry_free(x->r);
  core_metrics_free(x->m);
}

static void reg_cb(void *ud, int status, const char *msg, int machine_id) {
  node *x = ud;
  if (status != CRUSTER_OK) fprintf(stderr, "register: %s\n", msg);
  x->reg_done++;
  x->reg_status = status;
  x->machine_id = machine_id;
}
static int reg_finished(void *a) { return ((node *)a)->reg_done > 0; }

static void node_register(node *x, int port) {
  assert_int_equal(x->r->ops->register_runner(x->r, "127.0.0.1", port, 1, reg_cb, x, NULL),
                   CRUSTER_OK);
  assert_true(pump_until(reg_finished, x));
  assert_int_equal(x->reg_done, 1);
  assert_int_equal(x->reg_status, CRUSTER_OK);
}

typedef struct res {
  int done, status;
  int results[512];
  size_t n;
  char msg[256];
} res;

static void locks_cb(void *ud, int status, const char *msg, const int *results, size_t n) {
  res *r = ud;
  r->done++;
  r->status = status;
  r->n = n;
  if (msg) snprintf(r->msg, sizeof r->msg, "%s", msg);
  for (size_t i = 0; results && i < n && i < 512; i++) r->results[i] = results[i];
}
static void status_cb(void *ud, int status, const char *msg) {
  res *r = ud;
  r->done++;
  r->status = status;
  if (msg) snprintf(r->msg, sizeof r->msg, "%s", msg);
}
static void runners_cb(void *ud, int status, const char *msg, const rg_runner *v, size_t n) {
  (void)v;
  res *r = ud;
  r->done++;
  r->status = status;
  r->n = n;
  if (msg) snprintf(r->msg, sizeof r->msg, "%s", msg);
}
static int res_done(void *a) { return ((res *)a)->done > 0; }

typedef enum { ACQ, REF, REL } lk;
static res *lock_op(node *x, lk kind, const char *const *keys, size_t n) {
  static res r;
  memset(&r, 0, sizeof r);
  cruster_status st = kind == ACQ   ? x->r->ops->acquire(x->r, keys, n, locks_cb, &r, NULL)
                      : kind == REF ? x->r->ops->refresh(x->r, keys, n, locks_cb, &r, NULL)
                                    : x->r->ops->release(x->r, keys, n, locks_cb, &r, NULL);
  assert_int_equal(st, CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.done, 1);
  if (r.status != CRUSTER_OK) fail_msg("lock op: %s", r.msg);
  assert_int_equal(r.n, n);
  return &r;
}

static void release_all(node *x) {
  res r = {0};
  assert_int_equal(x->r->ops->release_all(x->r, status_cb, &r, NULL), CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.status, CRUSTER_OK);
}

static int sees(node *x, const char *addr) {
  for (int i = 0; i < x->n_runners; i++)
    if (strcmp(x->addrs[i], addr) == 0) return 1;
  return 0;
}

typedef struct watch_cond {
  node *x;
  int want_n;
  const char *addr;
  int present;
} watch_cond;
static int watch_ok(void *a) {
  watch_cond *c = a;
  return c->x->n_runners == c->want_n && sees(c->x, c->addr) == c->present;
}

/* ---- tests ------------------------------------------------------------------------ */

static void two_runners_register_and_watch(void **state) {
  (void)state;
  cruster_etcd_opts o = opts_for(etcd_url());
  node a, b;
  node_init(&a, &o);
  node_init(&b, &o);
  node_register(&a, 9001);
  node_register(&b, 9002);
  assert_true(a.machine_id >= 0 && a.machine_id < 1024);
  assert_int_not_equal(a.machine_id, b.machine_id);
  assert_int_equal(a.machine_id, 1); /* a fresh prefix: the first runner ever gets 1 */
  assert_int_equal(b.machine_id, 2);

  /* The keys and values exactly as §3.1. */
  int64_t lease_a = 0, lease_b = 0, lease_c = -1;
  char *va = raw_get(key_of("runners/127.0.0.1:9001"), &lease_a);
  char *vb = raw_get(key_of("runners/127.0.0.1:9002"), &lease_b);
  char *vc = raw_get(key_of("machine_id_counter"), &lease_c);
  assert_non_null(va);
  assert_non_null(vb);
  assert_string_equal(va, "{\"address\":{\"host\":\"127.0.0.1\",\"port\":9001},\"weight\":1,\"healthy\":true}");
  assert_string_equal(vb, "{\"address\":{\"host\":\"127.0.0.1\",\"port\":9002},\"weight\":1,\"healthy\":true}");
  assert_string_equal(vc, "2");
  assert_true(lease_a != 0 && lease_b != 0 && lease_a != lease_b);
  assert_int_equal(lease_c, 0); /* the counter has no lease */
  free(va);
  free(vb);
  free(vc);
  assert_true(a.r->ops->lease_deadline_ms(a.r) > mono_ms());

  /* The watch brings B to A (the poll is an hour away). */
  watch_cond c = {&a, 2, "127.0.0.1:9002", 1};
  assert_true(pump_until(watch_ok, &c));
  assert_string_equal(a.addrs[0], "127.0.0.1:9001"); /* sorted by key */

  /* get_runners */
  res r = {0};
  assert_int_equal(a.r->ops->get_runners(a.r, runners_cb, &r, NULL), CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.status, CRUSTER_OK);
  assert_int_equal(r.n, 2);

  /* A malformed entry is skipped and counted. */
  json_decref(raw_post("/v3/kv/put", json_pack("{s:o,s:o}", "key", b64j(key_of("runners/bad:1")),
                                               "value", b64j("{\"address\":7}"))));
  memset(&r, 0, sizeof r);
  assert_int_equal(a.r->ops->get_runners(a.r, runners_cb, &r, NULL), CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.n, 2);
  double mal = 0;
  assert_int_equal(cruster_metrics_value(a.m, "cluster_etcd_malformed_runners_total", NULL, &mal),
                   CRUSTER_OK);
  assert_true(mal >= 1);

  /* Health: B marked unhealthy keeps its lease; the watch shows it. */
  memset(&r, 0, sizeof r);
  assert_int_equal(a.r->ops->set_runner_health(a.r, "127.0.0.1:9002", 0, status_cb, &r, NULL),
                   CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.status, CRUSTER_OK);
  int64_t lease_b2 = 0;
  vb = raw_get(key_of("runners/127.0.0.1:9002"), &lease_b2);
  assert_string_equal(vb, "{\"address\":{\"host\":\"127.0.0.1\",\"port\":9002},\"weight\":1,\"healthy\":false}");
  assert_true(lease_b2 == lease_b);
  free(vb);
  /* a missing runner: a no-op */
  memset(&r, 0, sizeof r);
  assert_int_equal(a.r->ops->set_runner_health(a.r, "127.0.0.1:1", 0, status_cb, &r, NULL),
                   CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.status, CRUSTER_OK);

  /* B leaves: A sees it gone through the watch. */
  release_all(&b);
  vb = raw_get(key_of("runners/127.0.0.1:9002"), NULL);
  assert_null(vb);
  watch_cond gone = {&a, 1, "127.0.0.1:9002", 0};
  assert_true(pump_until(watch_ok, &gone));

  double reqs = 0;
  assert_int_equal(cruster_metrics_value(a.m, "cluster_etcd_requests_total",
                                         "op=\"lease_grant\",outcome=\"ok\"", &reqs),
                   CRUSTER_OK);
  assert_true(reqs == 1);
  release_all(&a);
  node_free(&a);
  node_free(&b);
  raw_delete_prefix();
}

static void shard_locks(void **state) {
  (void)state;
  cruster_etcd_opts o = opts_for(etcd_url());
  node a, b;
  node_init(&a, &o);
  node_init(&b, &o);
  node_register(&a, 9001);
  node_register(&b, 9002);
  const char *s12[] = {"default:1", "default:2"};
  const char *s1[] = {"default:1"};
  res *r = lock_op(&a, ACQ, s12, 2);
  assert_int_equal(r->results[0], 1);
  assert_int_equal(r->results[1], 1);
  char *v = raw_get(key_of("shards/default:1"), NULL);
  assert_string_equal(v, "127.0.0.1:9001");
  free(v);
  assert_int_equal(lock_op(&a, ACQ, s1, 1)->results[0], 1); /* already mine */
  assert_int_equal(lock_op(&b, ACQ, s1, 1)->results[0], 0); /* held */
  assert_int_equal(lock_op(&a, REF, s1, 1)->results[0], 1);
  assert_int_equal(lock_op(&b, REF, s1, 1)->results[0], 0);
  assert_int_equal(lock_op(&b, REL, s1, 1)->results[0], 0); /* not B's: nothing done */
  v = raw_get(key_of("shards/default:1"), NULL);
  assert_string_equal(v, "127.0.0.1:9001");
  free(v);
  assert_int_equal(lock_op(&a, REL, s1, 1)->results[0], 1);
  v = raw_get(key_of("shards/default:1"), NULL);
  assert_null(v);
  assert_int_equal(lock_op(&b, ACQ, s1, 1)->results[0], 1);
  v = raw_get(key_of("shards/default:1"), NULL);
  assert_string_equal(v, "127.0.0.1:9002");
  free(v);

  /* Many at once (more than RG_MAX_INFLIGHT). */
  enum { N = 300 };
  static char names[N][32];
  const char *many[N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "big:%d", i);
    many[i] = names[i];
  }
  r = lock_op(&a, ACQ, many, N);
  for (int i = 0; i < N; i++) assert_int_equal(r->results[i], 1);
  r = lock_op(&b, ACQ, many, N);
  for (int i = 0; i < N; i++) assert_int_equal(r->results[i], 0);
  /* none at all */
  lock_op(&a, REF, many, 0);

  /* A's locks vanish with its lease. */
  release_all(&a);
  v = raw_get(key_of("shards/default:2"), NULL);
  assert_null(v);
  v = raw_get(key_of("shards/big:7"), NULL);
  assert_null(v);
  r = lock_op(&b, ACQ, many, N);
  for (int i = 0; i < N; i++) assert_int_equal(r->results[i], 1);
  /* A without a lease cannot acquire */
  res rr = {0};
  cruster_error *err = NULL;
  assert_int_equal(a.r->ops->acquire(a.r, s1, 1, locks_cb, &rr, &err), CRUSTER_E_STATE);
  cruster_error_free(err);
  /* bad shard keys */
  const char *bad[] = {"nocolon"};
  assert_int_equal(b.r->ops->acquire(b.r, bad, 1, locks_cb, &rr, NULL), CRUSTER_E_INVALID_ARGUMENT);
  release_all(&b);
  node_free(&a);
  node_free(&b);
  raw_delete_prefix();
}

typedef struct lease_cond {
  node *x;
  int state;
} lease_cond;
static int got_lease(void *a) {
  lease_cond *c = a;
  for (int i = 0; i < c->x->n_lease; i++)
    if (c->x->lease_events[i] == c->state) return 1;
  return 0;
}

static void lease_expiry_detaches_then_reregisters(void **state) {
  (void)state;
  cruster_etcd_opts o = opts_for(etcd_url());
  /* Keep-alive every 3 s; uncertain 5 s after the last proven keep-alive,
   * which leaves etcd's expiry (>= 10 s after it) 5 s away: room enough for
   * a loaded machine, where a timer can fire late. */
  o.lease_ttl_ms = 10000;
  o.lease_margin_ms = 5000;
  node a;
  node_init(&a, &o);
  node_register(&a, 9003);
  int64_t lease1 = 0;
  char *v = raw_get(key_of("runners/127.0.0.1:9003"), &lease1);
  assert_non_null(v);
  free(v);
  const char *s1[] = {"g:1"};
  assert_int_equal(lock_op(&a, ACQ, s1, 1)->results[0], 1);

  /* Keep-alives stop: the registry reports the lease uncertain while etcd
   * still has the key (checked from another client inside the callback). */
  rg_etcd_test_drop_keepalives(a.r, 1);
  lease_cond unc = {&a, RG_LEASE_UNCERTAIN};
  assert_true(pump_until(got_lease, &unc));
  assert_int_equal(a.lease_events[0], RG_LEASE_UNCERTAIN);
  assert_int_equal(a.uncertain_key_present, 1);
  assert_true(a.uncertain_key_lease == lease1);
  assert_true(a.uncertain_at < a.deadline_at_uncertain); /* before the lease can have ended */
  double gauge = 0;
  cruster_metrics_value(a.m, "cluster_lease_state", NULL, &gauge);
  assert_true(gauge == 2);

  /* Keep-alives resume in time: the same lease is alive again. */
  rg_etcd_test_drop_keepalives(a.r, 0);
  lease_cond ok = {&a, RG_LEASE_OK};
  assert_true(pump_until(got_lease, &ok));
  assert_int_equal(a.n_lease, 2);
  assert_int_equal(a.lease_events[1], RG_LEASE_OK);
  cruster_metrics_value(a.m, "cluster_lease_state", NULL, &gauge);
  assert_true(gauge == 1);
  assert_true(a.r->ops->lease_deadline_ms(a.r) > mono_ms());

  /* They stop again. */
  rg_etcd_test_drop_keepalives(a.r, 1);
  a.n_lease = 0;
  a.uncertain_key_present = -1;
  assert_true(pump_until(got_lease, &unc));
  assert_int_equal(a.uncertain_key_present, 1);

  /* The lease ends at etcd (revoked from the other client, the same for
   * the registry as its expiry, without waiting for etcd's expiry under
   * load): the key and the lock go. */
  json_decref(raw_post("/v3/lease/revoke", json_pack("{s:I}", "ID", (json_int_t)lease1)));
  v = raw_get(key_of("runners/127.0.0.1:9003"), NULL);
  assert_null(v);
  v = raw_get(key_of("shards/g:1"), NULL);
  assert_null(v);

  /* Traffic resumes: the registry learns the lease is gone and registers
   * again under a new one. */
  rg_etcd_test_drop_keepalives(a.r, 0);
  lease_cond nw = {&a, RG_LEASE_NEW};
  assert_true(pump_until(got_lease, &nw));
  assert_int_equal(a.n_lease, 2); /* uncertain, then new */
  assert_int_equal(a.lease_events[0], RG_LEASE_UNCERTAIN);
  assert_int_equal(a.lease_events[1], RG_LEASE_NEW);
  int64_t lease2 = 0;
  v = raw_get(key_of("runners/127.0.0.1:9003"), &lease2);
  assert_non_null(v);
  assert_string_equal(v, "{\"address\":{\"host\":\"127.0.0.1\",\"port\":9003},\"weight\":1,\"healthy\":true}");
  free(v);
  assert_true(lease2 != 0 && lease2 != lease1);
  cruster_metrics_value(a.m, "cluster_lease_state", NULL, &gauge);
  assert_true(gauge == 1);
  double reregs = 0;
  cruster_metrics_value(a.m, "cluster_lease_reregistrations_total", NULL, &reregs);
  assert_true(reregs == 1);
  /* and locks work under the new lease */
  assert_int_equal(lock_op(&a, ACQ, s1, 1)->results[0], 1);
  int64_t lk = 0;
  v = raw_get(key_of("shards/g:1"), &lk);
  free(v);
  assert_true(lk == lease2);
  release_all(&a);
  node_free(&a);
  raw_delete_prefix();
}

static void expect_invalid_p(const cruster_etcd_opts *o, const char *field) {
  cruster_registry *r = (cruster_registry *)1;
  cruster_error *err = NULL;
  cruster_status st = cruster_registry_etcd_new(o, &r, &err);
  if (st != CRUSTER_E_INVALID_ARGUMENT) fail_msg("expected %s to be refused, got %d", field, st);
  assert_null(r);
  assert_non_null(err);
  if (!strstr(cruster_error_message(err), field))
    fail_msg("message \"%s\" does not name %s", cruster_error_message(err), field);
  cruster_error_free(err);
}

static void expect_invalid(cruster_etcd_opts o, const char *field) { expect_invalid_p(&o, field); }

static void bad_options(void **state) {
  (void)state;
  cruster_etcd_opts o = opts_for("http://127.0.0.1:2379");
  cruster_registry *r = NULL;
  assert_int_equal(cruster_registry_etcd_new(&o, &r, NULL), CRUSTER_OK);
  cruster_registry_free(r); /* never attached */
  assert_int_equal(cruster_registry_etcd_new(NULL, &r, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_registry_etcd_new(&o, NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  cruster_etcd_opts x;
  x = o, x.prefix = "/no-slash";
  expect_invalid(x, "prefix");
  x = o, x.prefix = "";
  expect_invalid(x, "prefix");
  x = o, x.prefix = NULL;
  expect_invalid(x, "prefix");
  x = o, x.lease_ttl_ms = 0;
  expect_invalid(x, "lease_ttl_ms");
  x = o, x.lease_ttl_ms = -1000;
  expect_invalid(x, "lease_ttl_ms");
  x = o, x.lease_ttl_ms = 1500;
  expect_invalid(x, "lease_ttl_ms");
  x = o, x.request_timeout_ms = 0;
  expect_invalid(x, "request_timeout_ms");
  x = o, x.poll_interval_ms = -5;
  expect_invalid(x, "poll_interval_ms");
  x = o, x.lease_margin_ms = 30000;
  expect_invalid(x, "lease_margin_ms");
  x = o, x.endpoints = "";
  expect_invalid(x, "endpoints");
  x = o, x.endpoints = NULL;
  expect_invalid(x, "endpoints");
  x = o, x.endpoints = "garbage";
  expect_invalid(x, "endpoints");
  x = o, x.endpoints = "http://";
  expect_invalid(x, "endpoints");
  x = o, x.endpoints = "ftp://127.0.0.1:1";
  expect_invalid(x, "endpoints");
  x = o, x.endpoints = "http://127.0.0.1:1,,http://127.0.0.1:2";
  expect_invalid(x, "endpoints");
  x = o, x.endpoints = "http://a b:1";
  expect_invalid(x, "endpoints");
  x = o, x.size = 8;
  expect_invalid(x, "cruster_etcd_opts.size");
  /* a newer caller's struct with an unknown option set */
  struct {
    cruster_etcd_opts o;
    int64_t newer;
  } big = {o, 1};
  big.o.size = sizeof big;
  expect_invalid_p(&big.o, "newer option");
  big.newer = 0;
  assert_int_equal(cruster_registry_etcd_new(&big.o, &r, NULL), CRUSTER_OK);
  cruster_registry_free(r);
  /* Spaces around commas are fine. */
  x = o, x.endpoints = " http://127.0.0.1:1/ , http://127.0.0.1:2";
  assert_int_equal(cruster_registry_etcd_new(&x, &r, NULL), CRUSTER_OK);
  cruster_registry_free(r);

  /* Operations before attach, bad arguments. */
  assert_int_equal(cruster_registry_etcd_new(&o, &r, NULL), CRUSTER_OK);
  res rs = {0};
  assert_int_equal(r->ops->get_runners(r, runners_cb, &rs, NULL), CRUSTER_E_STATE);
  node n;
  n.host = (rg_host){&L, NULL, NULL, &n, NULL, NULL};
  assert_int_equal(r->ops->attach(r, &n.host, NULL), CRUSTER_OK);
  assert_int_equal(r->ops->attach(r, &n.host, NULL), CRUSTER_E_STATE);
  assert_int_equal(r->ops->register_runner(r, "", 1, 1, reg_cb, &n, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(r->ops->register_runner(r, "h", 0, 1, reg_cb, &n, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(r->ops->register_runner(r, "h", 1, -1, reg_cb, &n, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(r->ops->set_runner_health(r, "nope", 1, status_cb, &rs, NULL),
                   CRUSTER_E_INVALID_ARGUMENT);
  const char *k1[] = {"g:1"};
  assert_int_equal(r->ops->acquire(r, k1, 1, locks_cb, &rs, NULL), CRUSTER_E_STATE);
  assert_int_equal(r->ops->acquire(r, NULL, 1, locks_cb, &rs, NULL), CRUSTER_E_INVALID_ARGUMENT);
  r->ops->stop(r);
  assert_int_equal(r->ops->get_runners(r, runners_cb, &rs, NULL), CRUSTER_E_SHUTTING_DOWN);
  uv_run(&L.uv, UV_RUN_NOWAIT);
  cruster_registry_free(r);
}

/* ---- endpoints that misbehave ------------------------------------------------------ */

typedef struct server {
  uv_tcp_t tcp;
  int port;
  int answer; /* 1: garbage, 0: silent */
  uv_tcp_t *clients[64];
  int n_clients;
} server;

static void on_client_closed(uv_handle_t *h) { free(h); }
static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  static char buf[65536];
  (void)sz;
  *b = uv_buf_init(buf, sizeof buf);
}
static void on_written(uv_write_t *w, int status) {
  (void)status;
  free(w);
}
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  server *sv = s->data;
  if (n < 0) {
    uv_read_stop(s);
    return;
  }
  if (n > 0 && sv->answer) {
    static const char body[] = "{\"kvs\": [1, 2, not json";
    static char resp[256];
    int len = snprintf(resp, sizeof resp,
                       "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\n\r\n%s",
                       sizeof body - 1, body);
    uv_write_t *w = malloc(sizeof *w);
    uv_buf_t out = uv_buf_init(resp, (unsigned)len);
    uv_write(w, s, &out, 1, on_written);
  }
}
static void on_conn(uv_stream_t *l, int status) {
  server *sv = l->data;
  if (status < 0 || sv->n_clients == 64) return;
  uv_tcp_t *c = malloc(sizeof *c);
  uv_tcp_init(&L.uv, c);
  c->data = sv;
  if (uv_accept(l, (uv_stream_t *)c) != 0) {
    uv_close((uv_handle_t *)c, on_client_closed);
    return;
  }
  sv->clients[sv->n_clients++] = c;
  uv_read_start((uv_stream_t *)c, alloc_cb, on_read);
}
static void server_start(server *sv, int answer) {
  memset(sv, 0, sizeof *sv);
  sv->answer = answer;
  uv_tcp_init(&L.uv, &sv->tcp);
  sv->tcp.data = sv;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  assert_int_equal(uv_tcp_bind(&sv->tcp, (const struct sockaddr *)&a, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&sv->tcp, 64, on_conn), 0);
  struct sockaddr_in got;
  int len = sizeof got;
  uv_tcp_getsockname(&sv->tcp, (struct sockaddr *)&got, &len);
  sv->port = ntohs(got.sin_port);
}
static void server_stop(server *sv) {
  for (int i = 0; i < sv->n_clients; i++)
    if (!uv_is_closing((uv_handle_t *)sv->clients[i]))
      uv_close((uv_handle_t *)sv->clients[i], on_client_closed);
  uv_close((uv_handle_t *)&sv->tcp, NULL);
  uv_run(&L.uv, UV_RUN_NOWAIT);
}

static void garbage_and_silent_endpoints(void **state) {
  (void)state;
  server g, s;
  server_start(&g, 1);
  server_start(&s, 0);
  char ep[128];

  /* Garbage: an error status, no crash. */
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", g.port);
  cruster_etcd_opts o = opts_for(ep);
  node a;
  node_init(&a, &o);
  assert_int_equal(a.r->ops->register_runner(a.r, "127.0.0.1", 9001, 1, reg_cb, &a, NULL),
                   CRUSTER_OK);
  assert_true(pump_until(reg_finished, &a));
  assert_int_equal(a.reg_status, CRUSTER_E_MALFORMED);
  res r = {0};
  assert_int_equal(a.r->ops->get_runners(a.r, runners_cb, &r, NULL), CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.status, CRUSTER_E_MALFORMED);
  node_free(&a);

  /* Silent: the request timeout. */
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", s.port);
  o = opts_for(ep);
  o.request_timeout_ms = 300;
  node_init(&a, &o);
  memset(&r, 0, sizeof r);
  assert_int_equal(a.r->ops->get_runners(a.r, runners_cb, &r, NULL), CRUSTER_OK);
  assert_true(pump_until(res_done, &r));
  assert_int_equal(r.status, CRUSTER_E_TIMEOUT);
  /* stop with a call pending: its callback gets SHUTTING_DOWN, once */
  memset(&r, 0, sizeof r);
  assert_int_equal(a.r->ops->get_runners(a.r, runners_cb, &r, NULL), CRUSTER_OK);
  a.r->ops->stop(a.r);
  assert_int_equal(r.done, 1);
  assert_int_equal(r.status, CRUSTER_E_SHUTTING_DOWN);
  a.r->ops->stop(a.r);
  uv_run(&L.uv, UV_RUN_NOWAIT);
  assert_int_equal(r.done, 1);
  node_free(&a);

  /* A dead endpoint first: the next one is tried. The port of a server that
   * was closed refuses connections. */
  server d;
  server_start(&d, 0);
  int dead = d.port;
  server_stop(&d);
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d,%s", dead, etcd_url());
  o = opts_for(ep);
  node_init(&a, &o);
  node_register(&a, 9005);
  release_all(&a);
  node_free(&a);

  server_stop(&g);
  server_stop(&s);
  raw_delete_prefix();
}

int main(int argc, char **argv) {
  alarm(280);
  if (argc > 1) cmocka_set_test_filter(argv[1]);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(bad_options, setup, teardown),
      cmocka_unit_test_setup_teardown(two_runners_register_and_watch, setup, teardown),
      cmocka_unit_test_setup_teardown(shard_locks, setup, teardown),
      cmocka_unit_test_setup_teardown(garbage_and_silent_endpoints, setup, teardown),
      cmocka_unit_test_setup_teardown(lease_expiry_detaches_then_reregisters, setup, teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
