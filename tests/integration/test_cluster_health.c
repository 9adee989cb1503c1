/* Runner health (behaviour.md §3.7; docs/architecture.md "Runner health"):
 * runner processes (child_cluster_runner) on loopback with the shared etcd
 * (no storage), a short runner_poll_interval and a long lease, so that the
 * health loop -- not the lease -- decides what etcd says:
 *   (a) a runner frozen with SIGSTOP is marked healthy:false by the runner
 *       that runs cluster/RunnerHealth; it keeps its registration and its
 *       shard locks (its lease lives), the others leave it out of the
 *       assignment; after SIGCONT it is marked healthy again and takes its
 *       share back;
 *   (b) a runner whose handlers all hang with work waiting reports itself
 *       stalled (gauge cluster_runner_stalled), is marked healthy:false and
 *       lets go of its shards (the other takes them); once the handlers
 *       return it is healthy again and takes its share back;
 *   (c) never zero healthy: with the other runner frozen (marked unhealthy)
 *       the health runner itself stalls; it keeps itself healthy.
 * Every wait is bounded by a generous deadline (failure only); nothing
 * depends on how fast anything happens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <jansson.h>

#include "cluster_support.h"
#include "registry/etcd_util.h"

#define SHARDS 12
#define LEASE_TTL "120000" /* ms: longer than any test's freeze */

static const char *CONFIG = "shards_per_group=12;shard_rebalance_retry_interval=300ms;"
                            "runner_lock_refresh_interval=1s;send_retry_interval=50ms;"
                            "runner_poll_interval=300ms;runner_ping_timeout=1s;"
                            "runner_stall_threshold=1s;entity_termination_timeout=2s;"
                            "worker_threads=2;worker_threads_max=2";

static void prefix_new(char *buf, size_t cap) {
  static int seq;
  snprintf(buf, cap, "/cruster-test-health-%ld-%d/", (long)getpid(), seq++);
}

/* ---- etcd, read directly (blocking libcurl) ---- */

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

/* The values of the keys under `key` (a prefix when `range` is 1). */
static json_t *etcd_range(const char *key, int range) {
  char url[512];
  snprintf(url, sizeof url, "%s/v3/kv/range", clt_shared_etcd());
  char *kb = rg_b64_encode(key, strlen(key));
  json_t *body = json_pack("{s:s}", "key", kb);
  free(kb);
  if (range) {
    size_t elen;
    char *end = rg_prefix_end(key, strlen(key), &elen);
    char *eb = rg_b64_encode(end, elen);
    json_object_set_new(body, "range_end", json_string(eb));
    free(eb);
    free(end);
  }
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
  if (rc != CURLE_OK) fail_msg("etcd range failed: %s", curl_easy_strerror(rc));
  json_t *j = json_loads(resp ? resp : "", 0, NULL);
  free(resp);
  if (!j) fail_msg("etcd range: not JSON");
  return j;
}

static char *kv_value(json_t *kv) {
  size_t n;
  json_t *v = json_object_get(kv, "value");
  char *raw = v ? (char *)rg_b64_decode(json_string_value(v), &n) : NULL;
  if (!raw) return strdup("");
  char *s = malloc(n + 1);
  memcpy(s, raw, n);
  s[n] = 0;
  free(raw);
  return s;
}

/* 1 / 0: runner `addr`'s "healthy" in etcd; -1: no such key. */
static int etcd_healthy(const char *prefix, const char *addr) {
  char key[256];
  snprintf(key, sizeof key, "%srunners/%s", prefix, addr);
  json_t *r = etcd_range(key, 0);
  json_t *kvs = json_object_get(r, "kvs");
  int out = -1;
  if (json_array_size(kvs) > 0) {
    char *v = kv_value(json_array_get(kvs, 0));
    json_t *j = json_loads(v, 0, NULL);
    json_t *h = json_object_get(j, "healthy");
    if (!json_is_boolean(h)) fail_msg("runner %s: value %s has no healthy", addr, v);
    out = json_is_true(h);
    json_decref(j);
    free(v);
  }
  json_decref(r);
  return out;
}

/* Shard locks held by `addr`. */
static int etcd_locks_of(const char *prefix, const char *addr) {
  char key[256];
  snprintf(key, sizeof key, "%sshards/", prefix);
  json_t *r = etcd_range(key, 1);
  json_t *kvs = json_object_get(r, "kvs");
  int n = 0;
  for (size_t i = 0; i < json_array_size(kvs); i++) {
    char *v = kv_value(json_array_get(kvs, i));
    if (strcmp(v, addr) == 0) n++;
    free(v);
  }
  json_decref(r);
  return n;
}

static void wait_healthy(const char *prefix, const char *addr, int want) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  int got;
  while ((got = etcd_healthy(prefix, addr)) != want) {
    if (pgt_mono_ms() > end)
      fail_msg("runner %s: etcd says healthy=%d, not %d, after %ld ms", addr, got, want, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

/* ---- the runners ---- */

static double child_metric(clt_child *c, const char *name, const char *labels) {
  char line[128];
  clt_child_cmd(c, line, sizeof line, "metric %s%s%s", name, labels ? " " : "", labels ? labels : "");
  double v = 0;
  if (strcmp(line, "metric none") == 0) return 0;
  if (sscanf(line, "metric %lf", &v) != 1) fail_msg("runner %s: metric %s: %s", c->addr, name, line);
  return v;
}

static void wait_metric_at_least(clt_child *c, const char *name, const char *labels, double want) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  double got;
  while ((got = child_metric(c, name, labels)) < want) {
    if (pgt_mono_ms() > end)
      fail_msg("runner %s: %s{%s} is %.0f, not >= %.0f, after %ld ms", c->addr, name,
               labels ? labels : "", got, want, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

static void wait_metric_equal(clt_child *c, const char *name, double want) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  double got;
  while ((got = child_metric(c, name, NULL)) != want) {
    if (pgt_mono_ms() > end)
      fail_msg("runner %s: %s is %.0f, not %.0f, after %ld ms", c->addr, name, got, want, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Index in cs of the runner rendezvous gives shard (group, shard) among
 * `skip`-less live children (skip = -1: none left out). */
static int owner_of(clt_child *cs, size_t n, int skip, const char *group, int32_t shard) {
  const char *addrs[8];
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (cs[i].alive && (int)i != skip) addrs[k++] = cs[i].addr;
  qsort(addrs, k, sizeof(addrs[0]), cmp_str);
  int o = cruster_rendezvous_owner(group, shard, addrs, NULL, k);
  assert_true(o >= 0);
  for (size_t i = 0; i < n; i++)
    if (strcmp(cs[i].addr, addrs[o]) == 0) return (int)i;
  return -1;
}

/* The runner that runs cluster/RunnerHealth (owns its shard) when all run. */
static int health_runner(clt_child *cs, size_t n) {
  const char *name = "cluster/RunnerHealth";
  return owner_of(cs, n, -1, "default", cruster_shard_for(name, strlen(name), SHARDS));
}

/* Waits until each live child (but `skip`) owns exactly its rendezvous
 * share among them, and `skip` (if any) owns none. */
static void wait_assigned(clt_child *cs, size_t n, int skip) {
  int want[8] = {0};
  for (int32_t sh = 0; sh < SHARDS; sh++) want[owner_of(cs, n, skip, "default", sh)]++;
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    int ok = 1;
    for (size_t i = 0; i < n; i++)
      if (cs[i].alive && clt_child_owned(&cs[i]) != want[i]) ok = 0;
    if (ok) return;
    if (pgt_mono_ms() > end) fail_msg("the shards are not assigned as expected after %ld ms", TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

static void start_runners(clt_child *cs, size_t n, const char *prefix) {
  setenv("CHILD_LEASE_TTL_MS", LEASE_TTL, 1);
  for (size_t i = 0; i < n; i++) clt_child_start(&cs[i], clt_shared_etcd(), prefix, NULL, CONFIG);
  unsetenv("CHILD_LEASE_TTL_MS");
  for (size_t i = 0; i < n; i++) clt_child_expect_ready(&cs[i]);
  wait_assigned(cs, n, -1);
  for (size_t i = 0; i < n; i++) assert_int_equal(etcd_healthy(prefix, cs[i].addr), 1);
}

/* (a) */
static void test_frozen_runner(void **state) {
  (void)state;
  char prefix[96];
  prefix_new(prefix, sizeof prefix);
  clt_child cs[3];
  start_runners(cs, 3, prefix);
  int checker = health_runner(cs, 3), victim = (checker + 1) % 3, other = (checker + 2) % 3;
  int locks = etcd_locks_of(prefix, cs[victim].addr);
  assert_int_equal(locks, clt_child_owned(&cs[victim]));

  kill(cs[victim].pid, SIGSTOP);
  wait_healthy(prefix, cs[victim].addr, 0);
  wait_metric_at_least(&cs[checker], "cluster_health_marked_total", "health=\"unhealthy\"", 1);
  wait_metric_at_least(&cs[checker], "cluster_health_pings_total", "outcome=\"failed\"", 1);
  /* The others leave it out of the assignment (two healthy runners)... */
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (child_metric(&cs[checker], "cluster_runners_healthy", NULL) != 2 ||
         child_metric(&cs[other], "cluster_runners_healthy", NULL) != 2) {
    if (pgt_mono_ms() > end) fail_msg("the others still count the frozen runner healthy");
    ts_sleep_ms(100);
  }
  /* ... but its registration and its locks stay while its lease lives. */
  assert_true(etcd_healthy(prefix, cs[victim].addr) == 0);
  assert_int_equal(etcd_locks_of(prefix, cs[victim].addr), locks);
  assert_int_equal(clt_child_owned(&cs[checker]) + clt_child_owned(&cs[other]), SHARDS - locks);

  kill(cs[victim].pid, SIGCONT);
  wait_healthy(prefix, cs[victim].addr, 1);
  wait_metric_at_least(&cs[checker], "cluster_health_marked_total", "health=\"healthy\"", 1);
  wait_assigned(cs, 3, -1);
  for (int i = 0; i < 3; i++) clt_child_close(&cs[i]);
}

/* (b) */
static void test_stalled_runner(void **state) {
  (void)state;
  char prefix[96];
  prefix_new(prefix, sizeof prefix);
  clt_child cs[2];
  start_runners(cs, 2, prefix);
  int checker = health_runner(cs, 2), victim = 1 - checker;
  char line[256];
  assert_int_equal(child_metric(&cs[victim], "cluster_runner_stalled", NULL), 0);

  /* Its handlers hang; messages keep coming for its entities. */
  clt_child_cmd(&cs[victim], line, sizeof line, "block");
  assert_string_equal(line, "blocked");
  clt_child_cmd(&cs[victim], line, sizeof line, "snotify 40 st");
  assert_string_equal(line, "snotified 40");
  wait_metric_equal(&cs[victim], "cluster_runner_stalled", 1);
  assert_true(child_metric(&cs[victim], "cluster_runner_stalls_total", NULL) >= 1);
  wait_healthy(prefix, cs[victim].addr, 0);
  wait_metric_at_least(&cs[checker], "cluster_health_marked_total", "health=\"unhealthy\"", 1);
  /* Its loop still works: it lets go of its shards, the other takes them
   * (once the hanging handlers' termination timeout has passed). */
  wait_assigned(cs, 2, victim);
  assert_int_equal(etcd_healthy(prefix, cs[checker].addr), 1);

  clt_child_cmd(&cs[victim], line, sizeof line, "unblock");
  assert_string_equal(line, "unblocked");
  wait_metric_equal(&cs[victim], "cluster_runner_stalled", 0);
  wait_healthy(prefix, cs[victim].addr, 1);
  wait_assigned(cs, 2, -1);
  for (int i = 0; i < 2; i++) clt_child_close(&cs[i]);
}

/* (c) */
static void test_never_zero_healthy(void **state) {
  (void)state;
  char prefix[96];
  prefix_new(prefix, sizeof prefix);
  clt_child cs[2];
  start_runners(cs, 2, prefix);
  int checker = health_runner(cs, 2), frozen = 1 - checker;
  char line[256];

  kill(cs[frozen].pid, SIGSTOP);
  wait_healthy(prefix, cs[frozen].addr, 0);
  /* The health runner stalls too: no runner is fit, it keeps itself. */
  clt_child_cmd(&cs[checker], line, sizeof line, "block");
  assert_string_equal(line, "blocked");
  clt_child_cmd(&cs[checker], line, sizeof line, "snotify 40 nz");
  assert_string_equal(line, "snotified 40");
  wait_metric_equal(&cs[checker], "cluster_runner_stalled", 1);
  double kept = child_metric(&cs[checker], "cluster_health_kept_healthy_total", NULL);
  wait_metric_at_least(&cs[checker], "cluster_health_kept_healthy_total", NULL, kept + 2);
  assert_int_equal(etcd_healthy(prefix, cs[checker].addr), 1);
  assert_int_equal(etcd_healthy(prefix, cs[frozen].addr), 0);
  assert_int_equal(child_metric(&cs[checker], "cluster_health_marked_total", "health=\"healthy\""), 0);

  clt_child_cmd(&cs[checker], line, sizeof line, "unblock");
  assert_string_equal(line, "unblocked");
  kill(cs[frozen].pid, SIGCONT);
  wait_healthy(prefix, cs[frozen].addr, 1);
  wait_assigned(cs, 2, -1);
  for (int i = 0; i < 2; i++) clt_child_close(&cs[i]);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frozen_runner),
      cmocka_unit_test(test_stalled_runner),
      cmocka_unit_test(test_never_zero_healthy),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
