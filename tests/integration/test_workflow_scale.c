/* Many durable workflow executions asleep at once, against the real
 * PostgreSQL, with worker_threads = 4: NAP_N (10,000) executions of "Nap"
 * (wf_crash_defs.h: now, sleep 2 s, await "go", now) are started from four
 * client threads; once every one is suspended on its await (its journal
 * holds the await and its message is parked "until woken"), no worker
 * thread is busy or blocked and no job is queued (the pool's gauges), and
 * the process's RSS is printed (information, never asserted). Then every
 * deferred is resolved from four threads and every execution finishes with
 * its own answer, its journaled times at least the sleep apart.
 *
 * Its own program (not in test_workflow_crash): it needs most of a ctest
 * timeout by itself. NAP_N is 10,000 (about 35 s under ASan on an idle
 * 2-core machine, 105 s without ASan on a loaded one); 2,000 under TSan
 * (WFC_TSAN, wf_crash_defs.h), where every access costs many times more.
 * No assertion depends on timing: each phase polls for a state up to a
 * generous deadline. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "pg_support.h"
#include "wf_crash_defs.h"

#ifdef WFC_TSAN
#  define NAP_N 2000
#else
#  define NAP_N 10000
#endif
#define CLIENT_THREADS 4
/* A phase (all started and asleep; all finished) may take this long. */
#define PHASE_DEADLINE_MS 200000L

static const char *CFG = "worker_threads=4;storage_poll_interval=100ms;storage_retry_backoff=50ms;"
                         "entity_termination_timeout=500ms";

static long vmrss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f)
    return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, "VmRSS:", 6) == 0)
      kb = atol(line + 6);
  fclose(f);
  return kb;
}

typedef struct nap {
  cruster_runtime *rt;
  char *ids[NAP_N];
  atomic_int bad;
  char first_bad[512];
} nap;

typedef struct client {
  nap *n;
  int from;
} client;

static void note_bad(nap *n, const char *what, int i, int rc, cruster_error *err) {
  if (atomic_fetch_add(&n->bad, 1) == 0)
    snprintf(n->first_bad, sizeof(n->first_bad), "%s %d: %s: %s", what, i, cruster_status_name(rc),
             err ? cruster_error_message(err) : "");
}

static void starter(void *arg) {
  client *c = arg;
  for (int i = c->from; i < NAP_N; i += CLIENT_THREADS) {
    char key[32], in[32];
    snprintf(key, sizeof(key), "nap-%d", i);
    snprintf(in, sizeof(in), "n%d", i);
    cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
    o.key = key;
    o.key_len = strlen(key);
    o.timeout_ms = TS_DEADLINE_MS;
    cruster_error *err = NULL;
    int rc = cruster_workflow_start(c->n->rt, "Nap", in, strlen(in), &o, &c->n->ids[i], &err);
    if (rc != CRUSTER_OK)
      note_bad(c->n, "start", i, rc, err);
    cruster_error_free(err);
  }
}

static void resolver(void *arg) {
  client *c = arg;
  for (int i = c->from; i < NAP_N; i += CLIENT_THREADS) {
    if (!c->n->ids[i])
      continue;
    char v[32];
    snprintf(v, sizeof(v), "v%d", i);
    cruster_error *err = NULL;
    int rc = cruster_workflow_resolve(c->n->rt, "Nap", c->n->ids[i], "go", v, strlen(v), &err);
    if (rc != CRUSTER_OK)
      note_bad(c->n, "resolve", i, rc, err);
    cruster_error_free(err);
  }
}

static void on_clients(nap *n, void (*fn)(void *)) {
  uv_thread_t t[CLIENT_THREADS];
  client c[CLIENT_THREADS];
  for (int i = 0; i < CLIENT_THREADS; i++) {
    c[i].n = n;
    c[i].from = i;
    assert_int_equal(uv_thread_create(&t[i], fn, &c[i]), 0);
  }
  for (int i = 0; i < CLIENT_THREADS; i++)
    uv_thread_join(&t[i]);
  if (atomic_load(&n->bad))
    fail_msg("%d calls failed; first: %s", atomic_load(&n->bad), n->first_bad);
}

/* Polls the query until it answers `want`; fails after `ms`. Returns the
 * time it took. */
static int64_t wait_sql(pgt_schema *s, const char *sql, long long want, long ms) {
  int64_t t0 = pgt_mono_ms(), end = t0 + ms;
  long long got;
  while ((got = pgt_scalar(s->admin, sql, -1)) != want) {
    if (pgt_mono_ms() > end)
      fail_msg("after %ld ms, %lld (not %lld): %s", ms, got, want, sql);
    ts_sleep_ms(100);
  }
  return pgt_mono_ms() - t0;
}

static double gauge(cruster_runtime *rt, const char *name, const char *labels) {
  return ts_metric(rt, name, labels);
}

static int pool_idle(void *arg) {
  cruster_runtime *rt = arg;
  return gauge(rt, "cluster_worker_threads_busy", NULL) == 0 &&
         gauge(rt, "cluster_worker_threads_blocked", NULL) == 0 &&
         gauge(rt, "cluster_worker_queue_depth", NULL) == 0;
}

#define SQL_ASLEEP_ON_AWAIT                                                             \
  "SELECT count(*) FROM cruster_messages m WHERE m.tag = 'execute' AND NOT m.processed" \
  " AND m.claimed_by IS NULL AND m.deliver_at > now() + interval '100 years'"           \
  " AND EXISTS (SELECT 1 FROM cruster_journal j WHERE j.request_id = m.request_id AND j.kind = 3)"
#define SQL_FINISHED "SELECT count(*) FROM cruster_messages WHERE tag = 'execute' AND processed"
/* "n<i>" answers "n<i>:v<i>:ok". */
#define SQL_RIGHT_ANSWERS                                                                         \
  "SELECT count(*) FROM cruster_messages WHERE tag = 'execute' AND processed"                     \
  " AND reply_status = 0 AND convert_from(reply_payload, 'UTF8') = convert_from(payload, 'UTF8')" \
  " || ':v' || substr(convert_from(payload, 'UTF8'), 2) || ':ok'"

static void many_executions_asleep_hold_no_worker(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  memset(&wfc, 0, sizeof(wfc));
  static nap n;
  memset(&n, 0, sizeof(n));
  long rss0 = vmrss_kb();
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  int st = pgt_runtime_try(s.conninfo, CFG, &rt, &msg);
  if (st != CRUSTER_OK)
    fail_msg("runtime_new: %s", msg);
  n.rt = rt;
  cruster_error *err = NULL;
  if (wfc_register(rt, &err) != CRUSTER_OK)
    fail_msg("register: %s", cruster_error_message(err));
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK)
    fail_msg("start: %s", cruster_error_message(err));
  long rss1 = vmrss_kb();

  int64_t t0 = pgt_mono_ms();
  on_clients(&n, starter);
  int64_t started = pgt_mono_ms() - t0;
  int64_t asleep = wait_sql(&s, SQL_ASLEEP_ON_AWAIT, NAP_N, PHASE_DEADLINE_MS);
  assert_true(pgt_eventually(pool_idle, rt, PGT_DEADLINE_MS));
  long rss2 = vmrss_kb();
  printf("  %d executions started in %lld ms, all asleep on their await %lld ms later\n", NAP_N,
         (long long)started, (long long)asleep);
  printf("  asleep: workers busy %.0f, blocked %.0f, queued %.0f, threads %.0f; entities in "
         "memory %.0f; runs of execute %d\n",
         gauge(rt, "cluster_worker_threads_busy", NULL),
         gauge(rt, "cluster_worker_threads_blocked", NULL),
         gauge(rt, "cluster_worker_queue_depth", NULL), gauge(rt, "cluster_worker_threads", NULL),
         gauge(rt, "cluster_entities", "entity_type=\"Workflow/Nap\""), atomic_load(&wfc.runs));
  printf("  VmRSS: %ld kB before the runtime, %ld kB started, %ld kB with %d asleep\n", rss0, rss1,
         rss2, NAP_N);
  /* Every one is suspended: none holds a worker. */
  assert_int_equal((int)gauge(rt, "cluster_worker_threads_busy", NULL), 0);
  assert_int_equal((int)gauge(rt, "cluster_worker_threads_blocked", NULL), 0);
  assert_int_equal((int)gauge(rt, "cluster_worker_queue_depth", NULL), 0);
  assert_int_equal(pgt_scalar(s.admin, SQL_FINISHED, -1), 0);

  t0 = pgt_mono_ms();
  on_clients(&n, resolver);
  int64_t resolved = pgt_mono_ms() - t0;
  int64_t finished = wait_sql(&s, SQL_FINISHED, NAP_N, PHASE_DEADLINE_MS);
  printf("  resolved in %lld ms, all finished %lld ms later; VmRSS %ld kB\n", (long long)resolved,
         (long long)finished, vmrss_kb());
  /* Every answer right, the sleep never shortened (":ok"). */
  assert_int_equal(pgt_scalar(s.admin, SQL_RIGHT_ANSWERS, -1), NAP_N);
  /* And through the API, for a sample. */
  for (int i = 0; i < NAP_N; i += NAP_N / 50) {
    void *rep = NULL;
    size_t len = 0;
    char want[64];
    snprintf(want, sizeof(want), "n%d:v%d:ok", i, i);
    int rc = cruster_workflow_join_sync(rt, "Nap", n.ids[i], TS_DEADLINE_MS, &rep, &len, &err);
    if (rc != CRUSTER_OK || len != strlen(want) || memcmp(rep, want, len) != 0)
      fail_msg("execution %d: %s \"%.*s\", want \"%s\"", i, cruster_status_name(rc), (int)len,
               rep ? (char *)rep : (err ? cruster_error_message(err) : ""), want);
    cruster_free(rep);
  }
  for (int i = 0; i < NAP_N; i++)
    cruster_free(n.ids[i]);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

int main(void) {
  pgt_main_start();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(many_executions_asleep_hold_no_worker),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
