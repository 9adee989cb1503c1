/* PostgreSQL restarting under load (pg_ctl restart of the scripts/dev
 * server, same port): every caller gets its answer or an error within its
 * deadline; every call answered OK was processed and its reply is stored;
 * after the restart new calls succeed (the storage reconnects by itself).
 *
 * This program restarts the shared server: tests/CMakeLists.txt runs it with
 * RUN_SERIAL so that no other test program runs meanwhile. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <libgen.h>
#include <pthread.h>
#include <uv.h>

#include "pg_support.h"

#define PG_CTL "/usr/lib/postgresql/15/bin/pg_ctl"
#define THREADS 8
#define DEADLINE_MS 5000
/* A call returns within its deadline plus this: generous, as a busy machine
 * may be slow to run the loop's timer; a call that ignores its deadline
 * (hangs while the server is down) exceeds any slack. */
#define SLACK_MS 30000
#define OK_BEFORE 40 /* calls answered OK before the restart */
#define MAX_CALLS 200000

typedef struct outcome {
  int thread, n;
  int status;
  int64_t elapsed_ms;
} outcome;

static outcome *g_out;
static atomic_int g_nout;
static atomic_int g_stop;
static atomic_int g_ok;                /* calls answered OK */
static atomic_int g_restarted;         /* the server is back (pg_ctl restart returned) */
static atomic_int g_ok_after[THREADS]; /* per thread: a call started after that was answered OK */
static cruster_runtime *g_rt;

/* Handler effects: a set of keys processed (seen[thread][n]). */
#define PER_THREAD (MAX_CALLS / THREADS)
static atomic_uchar g_seen[THREADS][PER_THREAD];

static void h_rec(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  int t = -1, n = -1;
  char buf[64];
  snprintf(buf, sizeof(buf), "%.*s", (int)len, p);
  if (sscanf(buf, "t%d-%d", &t, &n) == 2 && t >= 0 && t < THREADS && n >= 0 && n < PER_THREAD)
    atomic_store(&g_seen[t][n], 1);
  cruster_request_reply(req, p, len);
}

static void *load(void *arg) {
  int t = (int)(intptr_t)arg;
  for (int n = 0; n < PER_THREAD && !atomic_load(&g_stop); n++) {
    char key[64];
    snprintf(key, sizeof(key), "t%d-%d", t, n);
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    o.timeout_ms = DEADLINE_MS;
    o.idempotency_key = key;
    o.idempotency_key_len = strlen(key);
    int started_after = atomic_load(&g_restarted);
    int64_t t0 = pgt_mono_ms();
    void *rep = NULL;
    size_t rlen = 0;
    cruster_error *err = NULL;
    char eid[16];
    snprintf(eid, sizeof(eid), "e%d", t);
    int st = cruster_send_sync(g_rt, "Rec", eid, "rec", key, strlen(key), &o, &rep, &rlen, &err);
    int64_t el = pgt_mono_ms() - t0;
    if (st == CRUSTER_OK && (rlen != strlen(key) || memcmp(rep, key, rlen) != 0)) st = 1; /* wrong answer */
    if (st != CRUSTER_OK && st != CRUSTER_E_PERSISTENCE && st != CRUSTER_E_TIMEOUT)
      fprintf(stderr, "  unexpected outcome %s: %s\n", cruster_status_name(st),
              cruster_error_message(err));
    cruster_free(rep);
    cruster_error_free(err);
    if (st == CRUSTER_OK) {
      atomic_fetch_add(&g_ok, 1);
      if (started_after) atomic_store(&g_ok_after[t], 1);
    }
    int i = atomic_fetch_add(&g_nout, 1);
    if (i < MAX_CALLS) g_out[i] = (outcome){t, n, st, el};
    if (st != CRUSTER_OK) ts_sleep_ms(20); /* do not spin while the server is down */
  }
  return NULL;
}

static char g_data[1024], g_log[1200];

static int pg_ctl(const char *action) {
  char cmd[4096];
  const char *as = geteuid() == 0 ? "runuser -u postgres -- " : "";
  snprintf(cmd, sizeof(cmd), "cd / && %s%s -D '%s' -l '%s' -w -t 60 -m fast -s %s", as, PG_CTL,
           g_data, g_log, action);
  int rc = system(cmd);
  printf("  [%s] -> %d\n", cmd, rc);
  return rc;
}

static int server_up(void) {
  PGconn *c = PQconnectdb(pgt_base_conninfo());
  int ok = PQstatus(c) == CONNECTION_OK;
  PQfinish(c);
  return ok;
}

static void postgres_restart_under_load(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  /* where the server lives, to restart it as scripts/dev started it */
  PGresult *r = PQexec(s.admin, "SHOW data_directory");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  snprintf(g_data, sizeof(g_data), "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
  char tmp[1024];
  snprintf(tmp, sizeof(tmp), "%s", g_data);
  snprintf(g_log, sizeof(g_log), "%s/server.log", dirname(tmp));

  cruster_entity_def *d = NULL;
  assert_int_equal(cruster_entity_def_new("Rec", &d, NULL), CRUSTER_OK);
  assert_int_equal(cruster_entity_def_add_rpc(d, "rec", CRUSTER_RPC_PERSISTED, h_rec, NULL, NULL),
                   CRUSTER_OK);
  g_rt = pgt_runtime(&s, "storage_poll_interval=200ms;storage_retry_backoff=50ms", &d, 1);
  g_out = calloc(MAX_CALLS, sizeof(outcome));

  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, load, (void *)(intptr_t)i);
  /* Load first: the restart comes once calls are being answered. */
  int64_t until = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (atomic_load(&g_ok) < OK_BEFORE && pgt_mono_ms() < until) ts_sleep_ms(10);
  int before = atomic_load(&g_nout);
  if (atomic_load(&g_ok) < OK_BEFORE) {
    atomic_store(&g_stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    fail_msg("only %d calls answered OK in %d ms before the restart", atomic_load(&g_ok),
             (int)PGT_DEADLINE_MS);
  }
  int rc = pg_ctl("restart");
  if (rc != 0 || !server_up()) {
    /* leave the server running for the other tests whatever happened */
    pg_ctl("start");
    atomic_store(&g_stop, 1);
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    fail_msg("pg_ctl restart failed (%d)", rc);
  }
  int at_restart = atomic_load(&g_nout);
  atomic_store(&g_restarted, 1);
  /* The load goes on until every thread had a call answered OK again (the
   * storage reconnects by itself), or the deadline. */
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  int recovered = 0;
  while (pgt_mono_ms() < end) {
    recovered = 0;
    for (int i = 0; i < THREADS; i++) recovered += atomic_load(&g_ok_after[i]);
    if (recovered == THREADS) break;
    ts_sleep_ms(20);
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  int n = atomic_load(&g_nout);
  if (n > MAX_CALLS) n = MAX_CALLS;

  int ok = 0, persist = 0, timeout = 0, other = 0, late = 0;
  int64_t max_el = 0;
  for (int i = 0; i < n; i++) {
    outcome *o = &g_out[i];
    if (o->elapsed_ms > max_el) max_el = o->elapsed_ms;
    if (o->elapsed_ms > DEADLINE_MS + SLACK_MS) late++;
    if (o->status == CRUSTER_OK) ok++;
    else if (o->status == CRUSTER_E_PERSISTENCE) persist++;
    else if (o->status == CRUSTER_E_TIMEOUT) timeout++;
    else other++;
  }
  printf("  calls: %d (before restart %d, when the server was back %d): ok %d, persistence %d, "
         "timeout %d, other %d; slowest %lld ms\n",
         n, before, at_restart, ok, persist, timeout, other, (long long)max_el);
  assert_int_equal(other, 0);
  assert_int_equal(late, 0);
  assert_true(ok > 0);
  if (recovered != THREADS)
    fail_msg("after the restart only %d of %d threads had a call answered OK within %d ms",
             recovered, THREADS, (int)PGT_DEADLINE_MS);

  /* New calls succeed again (the storage reconnects by itself). */
  end = pgt_mono_ms() + PGT_DEADLINE_MS;
  int st;
  int attempts = 0;
  do {
    char key[32];
    snprintf(key, sizeof(key), "after-%d", attempts++);
    cruster_call_opts oo = CRUSTER_CALL_OPTS_INIT;
    oo.timeout_ms = DEADLINE_MS;
    cruster_error *err = NULL;
    st = cruster_send_sync(g_rt, "Rec", "e", "rec", key, strlen(key), &oo, NULL, NULL, &err);
    if (st != CRUSTER_OK) {
      printf("  after restart: %s %s\n", cruster_status_name(st), cruster_error_message(err));
      ts_sleep_ms(500);
    }
    cruster_error_free(err);
  } while (st != CRUSTER_OK && pgt_mono_ms() < end);
  assert_int_equal(st, CRUSTER_OK);

  /* Nothing acknowledged is lost: each OK call ran and its reply is stored. */
  for (int i = 0; i < n; i++) {
    outcome *o = &g_out[i];
    if (o->status != CRUSTER_OK) continue;
    if (!atomic_load(&g_seen[o->thread][o->n]))
      fail_msg("call t%d-%d answered OK but its handler never ran", o->thread, o->n);
    char key[64];
    snprintf(key, sizeof(key), "t%d-%d", o->thread, o->n);
    int ready = -1;
    void *rep = NULL;
    size_t rlen = 0;
    cruster_error *err = NULL;
    char eid[16];
    snprintf(eid, sizeof(eid), "e%d", o->thread);
    int ps = cruster_poll_reply(g_rt, "Rec", eid, "rec", key, strlen(key), &ready, &rep, &rlen, &err);
    if (ps != CRUSTER_OK || ready != 1 || rlen != strlen(key) || memcmp(rep, key, rlen) != 0)
      fail_msg("call %s answered OK but its stored reply is missing or wrong: %s ready=%d %s", key,
               cruster_status_name(ps), ready, cruster_error_message(err));
    cruster_free(rep);
    cruster_error_free(err);
  }
  cruster_runtime_free(g_rt);
  cruster_entity_def_free(d);
  free(g_out);
  pgt_schema_drop(&s);
}

int main(void) {
  alarm(280);
  if (!getenv("CRUSTER_TEST_PG") || !*getenv("CRUSTER_TEST_PG"))
    fprintf(stderr, "CRUSTER_TEST_PG is not set: the test will fail. Run `scripts/dev services "
                    "start` and `source .dev/env`.\n");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(postgres_restart_under_load),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
