/* PostgreSQL backends terminated (pg_terminate_backend from a second
 * connection) under the runtime's storage connections.
 *
 *   lost_reconcile_runs_again
 *       a claim left in doubt by a lost connection is given back by the
 *       reconcile -- even when the reconcile itself is lost with the next
 *       connection (it used to be dropped: the message stayed claimed, and
 *       was never delivered, for the runtime's life).
 *   calls_survive_backends_killed_repeatedly
 *       8 threads make 1,504 keyed and ~500 unkeyed persisted calls while
 *       every backend of the runtime is terminated again and again (every
 *       250 ms, once a call has completed since the last time). Every call
 *       gets an answer: OK, or CRUSTER_E_PERSISTENCE when its outcome is
 *       unknown (a keyed one is then repeated with its key until OK); no
 *       handler runs again for a keyed call once its answer was stored; and
 *       each terminated backend is reported once -- the connection lines
 *       ("lost the connection", "cannot connect") are counted against the
 *       backends terminated (a count of events, not a rate). Prints how
 *       long the calls took. CRUSTER_STORM_UNGATED=1 terminates every
 *       250 ms whether calls progress or not (for measuring; on a slow
 *       machine the calls may then starve).
 *
 * Each test runs in its own schema; the storage's connections carry an
 * application_name of the test's own, which is how the killer finds them. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <uv.h>

#include "pg_support.h"

/* ---- the log ---------------------------------------------------------------- */

static atomic_int g_conn_events; /* "connection N: lost the connection" / "cannot connect" */
static atomic_int g_lost_any;    /* any line saying "lost the connection" */
static atomic_int g_badfd;       /* lines saying "bad file descriptor" */
static uv_mutex_t g_log_mu;
static char g_first[4][300];

static void capture_log(void *user, cruster_log_level level, const char *component,
                        const char *message) {
  (void)user;
  if (strstr(message, "lost the connection")) atomic_fetch_add(&g_lost_any, 1);
  if (strstr(message, "bad file descriptor")) atomic_fetch_add(&g_badfd, 1);
  if (strncmp(message, "connection ", 11) == 0 &&
      (strstr(message, ": lost the connection") || strstr(message, ": cannot connect"))) {
    int n = atomic_fetch_add(&g_conn_events, 1);
    if (n < 4) {
      uv_mutex_lock(&g_log_mu);
      snprintf(g_first[n], sizeof g_first[n], "[%s] %s", component, message);
      uv_mutex_unlock(&g_log_mu);
    }
  } else if (level >= CRUSTER_LOG_ERROR && !strstr(message, "lost the connection")) {
    fprintf(stderr, "[%s] %s\n", component, message);
  }
}

static void log_reset(void) {
  atomic_store(&g_conn_events, 0);
  atomic_store(&g_lost_any, 0);
  atomic_store(&g_badfd, 0);
}

/* A started runtime on the schema whose storage connections are named
 * `app` (application_name), logging to capture_log. */
static cruster_runtime *named_runtime(pgt_schema *s, const char *app, const char *extra,
                                      cruster_entity_def *d) {
  char conninfo[2048];
  snprintf(conninfo, sizeof conninfo, "%s application_name=%s", s->conninfo, app);
  cruster_config *cfg = pgt_config(extra);
  cruster_config_set_logger(cfg, capture_log, NULL, CRUSTER_LOG_INFO);
  cruster_storage *st = NULL;
  cruster_runtime *rt = NULL;
  cruster_error *err = NULL;
  if (cruster_storage_pg_new(conninfo, &st, &err) != CRUSTER_OK ||
      cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK)
    fail_msg("runtime_new: %s", cruster_error_message(err));
  cruster_config_free(cfg);
  if (cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK ||
      cruster_runtime_start(rt, &err) != CRUSTER_OK)
    fail_msg("start: %s", cruster_error_message(err));
  return rt;
}

/* Terminates the backends named `app`; returns how many. */
static int kill_backends(PGconn *c, const char *app, const char *query_like) {
  char sql[512];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
           "WHERE application_name = '%s' AND query LIKE '%s'",
           app, query_like ? query_like : "%");
  return (int)pgt_scalar(c, sql, 0);
}

typedef struct lock_waiter {
  PGconn *c;
  const char *app, *query_like;
} lock_waiter;
/* A backend named `app` waits for a lock, running a statement like query_like. */
static int waits_for_lock(void *arg) {
  lock_waiter *w = arg;
  return pgt_scalarf(w->c, 0,
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' AND "
                     "wait_event_type = 'Lock' AND query LIKE '%s'",
                     w->app, w->query_like) > 0;
}
static void wait_lock_waiter(PGconn *c, const char *app, const char *query_like) {
  lock_waiter w = {c, app, query_like};
  if (!pgt_eventually(waits_for_lock, &w, 30000))
    fail_msg("no backend of the runtime waits for a lock running %s", query_like);
}

/* ---- (1) a lost reconcile runs again ------------------------------------------ */

static atomic_int g_gate, g_held_runs, g_stale_runs;

static void h_rec1(void *user, cruster_request *req) {
  (void)user;
  const char *id = cruster_request_entity_id(req);
  if (strcmp(id, "held") == 0) {
    atomic_fetch_add(&g_held_runs, 1);
    while (!atomic_load(&g_gate)) ts_sleep_ms(2);
  } else if (strcmp(id, "stale") == 0) {
    atomic_fetch_add(&g_stale_runs, 1);
  }
  cruster_request_reply(req, "done", 4);
}

static int stale_ran(void *arg) {
  (void)arg;
  return atomic_load(&g_stale_runs) >= 1;
}

/* One storage connection. "held" is being handled (its handler blocks):
 * claimed under the current token T1, and in flight here. "stale" is
 * stored claimed under T1 too, as a claim whose result never reached the
 * runtime (its connection broke) leaves it: nobody handles it.
 *
 * A second connection holds stale's row locked and has inserted, without
 * committing, the row of a keyed call "blocker" the test then makes: the
 * runtime's insert of it waits. Its backend is terminated: that insert
 * was a claim in doubt, so the storage switches to token T2 and reconciles
 * -- the reconcile waits for stale's row, and its backend is terminated
 * too. Then the second connection rolls back. "stale" must be given back
 * and delivered, "held" must not (it is being handled: it runs once). */
static void lost_reconcile_runs_again(void **state) {
  (void)state;
  atomic_store(&g_gate, 0);
  atomic_store(&g_held_runs, 0);
  atomic_store(&g_stale_runs, 0);
  uv_mutex_init(&g_log_mu);
  log_reset();
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  char app[96];
  snprintf(app, sizeof app, "recon_%s", s.name);
  cruster_entity_def *d = def_new("Rec");
  add(d, "step", CRUSTER_RPC_PERSISTED, h_rec1, NULL);
  cruster_runtime *rt =
      named_runtime(&s, app, "storage_pool_size=1;storage_poll_interval=100ms", d);

  reply held, blocker;
  reply_init(&held);
  reply_init(&blocker);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 60000;
  o.idempotency_key = "h";
  o.idempotency_key_len = 1;
  assert_int_equal(cruster_send(rt, "Rec", "held", "step", "h", 1, &o, on_reply, &held, NULL),
                   CRUSTER_OK);
  int64_t end = pgt_mono_ms() + 30000;
  while (atomic_load(&g_held_runs) < 1 && pgt_mono_ms() < end) ts_sleep_ms(5);
  assert_int_equal(atomic_load(&g_held_runs), 1);
  char t1[256];
  PGresult *r = PQexec(s.admin, "SELECT claimed_by FROM cruster_messages WHERE entity_id = 'held'");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(PQntuples(r), 1);
  assert_false(PQgetisnull(r, 0, 0));
  snprintf(t1, sizeof t1, "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
  const char *row = "INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, "
                    "entity_id, tag, payload, keyed, attempts, claimed_by, claimed_at) VALUES ";
  pgt_execf(s.admin, "%s (8001, 'default', %d, 'Rec', 'stale', 'step', convert_to('s', 'UTF8'), "
                     "TRUE, 1, '%s', now())",
            row, (int)cruster_shard_for("stale", 5, 300), t1);

  PGconn *lk = pgt_connect(s.conninfo);
  pgt_exec(lk, "BEGIN");
  pgt_exec(lk, "SELECT 1 FROM cruster_messages WHERE request_id = 8001 FOR UPDATE");
  long long bid = (long long)cruster_persisted_request_id("Rec", "blocker", "step", "b", 1);
  pgt_execf(lk, "%s (%lld, 'default', 0, 'Rec', 'other', 'step', '', TRUE, 0, NULL, NULL)", row,
            bid);
  o.idempotency_key = "b";
  assert_int_equal(cruster_send(rt, "Rec", "blocker", "step", "b", 1, &o, on_reply, &blocker, NULL),
                   CRUSTER_OK);
  wait_lock_waiter(s.admin, app, "WITH cand AS%");
  assert_int_equal(kill_backends(s.admin, app, "WITH cand AS%"), 1);
  const char *recon = "%NOT (request_id = ANY($2::int8[]))%";
  wait_lock_waiter(s.admin, app, recon);
  assert_int_equal(kill_backends(s.admin, app, recon), 1);
  pgt_exec(lk, "ROLLBACK");
  assert_true(reply_wait_ms(&blocker, 30000));
  printf("  blocker: %s (%s)\n", cruster_status_name(blocker.status), blocker.msg);
  assert_int_equal(blocker.status, CRUSTER_E_PERSISTENCE);

  if (!pgt_eventually(stale_ran, NULL, 30000)) {
    printf("  stale: %s\n",
           pgt_scalar(s.admin,
                      "SELECT count(*) FROM cruster_messages WHERE request_id = 8001 AND "
                      "claimed_by IS NOT NULL",
                      -1) == 1
               ? "still claimed"
               : "given back, not delivered");
    fail_msg("the message claimed under the token of before the losses was never delivered");
  }
  printf("  stale delivered after 2 losses; held ran %d time(s)\n", atomic_load(&g_held_runs));
  atomic_store(&g_gate, 1);
  assert_true(reply_wait_ms(&held, 30000));
  assert_int_equal(held.status, CRUSTER_OK);
  assert_int_equal(atomic_load(&g_held_runs), 1);
  assert_int_equal(atomic_load(&g_stale_runs), 1);
  reply_destroy(&held);
  reply_destroy(&blocker);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  PQfinish(lk);
  uv_mutex_destroy(&g_log_mu);
  pgt_schema_drop(&s);
}

/* ---- (2) many calls, backends terminated again and again ----------------------- */

#define THREADS 8
#define KEYED_PER_THREAD 188 /* 8 x 188 = 1,504 keyed calls */
#define KEYED_TOTAL (THREADS * KEYED_PER_THREAD)
#define UNKEYED_EVERY 3 /* an unkeyed call after every 3rd keyed one */
#define KILL_EVERY_MS 250

/* Runs per keyed call (thread t, call n). */
static atomic_int g_runs[THREADS][KEYED_PER_THREAD];
static atomic_int g_answered; /* calls answered OK, for the killer's pace */

/* Answers "<payload>#<run>": the stored answer tells which run it was. */
static void h_rec2(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char buf[64], out[80];
  snprintf(buf, sizeof buf, "%.*s", (int)len, p ? p : "");
  int t = -1, n = -1, run = 0;
  if (sscanf(buf, "k%d-%d", &t, &n) == 2 && t >= 0 && t < THREADS && n >= 0 &&
      n < KEYED_PER_THREAD)
    run = atomic_fetch_add(&g_runs[t][n], 1) + 1;
  int k = snprintf(out, sizeof out, "%s#%d", buf, run);
  cruster_request_reply(req, out, (size_t)k);
}

typedef struct caller {
  cruster_runtime *rt;
  int t;
  int stored_run[KEYED_PER_THREAD]; /* the run whose answer was stored */
  int keyed_unknown;                /* keyed attempts answered PERSISTENCE */
  int unkeyed_ok, unkeyed_unknown;
  int bad; /* any other outcome */
  char bad_msg[300];
  pthread_t th;
} caller;

static int call(caller *c, const char *eid, const char *payload, const char *key, char *out,
                size_t outsz) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 60000;
  if (key) {
    o.idempotency_key = key;
    o.idempotency_key_len = strlen(key);
  }
  void *rep = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  int st = cruster_send_sync(c->rt, "Storm", eid, "rec", payload, strlen(payload), &o, &rep, &len,
                             &err);
  if (st == CRUSTER_OK) {
    snprintf(out, outsz, "%.*s", (int)len, (const char *)rep);
    atomic_fetch_add(&g_answered, 1);
  } else if (st != CRUSTER_E_PERSISTENCE && !c->bad++) {
    snprintf(c->bad_msg, sizeof c->bad_msg, "%s (%s): %s: %s", payload, key ? "keyed" : "unkeyed",
             cruster_status_name(st), cruster_error_message(err));
  }
  cruster_free(rep);
  cruster_error_free(err);
  return st;
}

static void *caller_main(void *arg) {
  caller *c = arg;
  char eid[16];
  snprintf(eid, sizeof eid, "e%d", c->t);
  for (int n = 0; n < KEYED_PER_THREAD && !c->bad; n++) {
    char key[32], out[128], want[40];
    snprintf(key, sizeof key, "k%d-%d", c->t, n);
    /* Repeated with its key until answered: the outcome of an attempt
     * answered PERSISTENCE is unknown, the key makes repeating it safe. */
    int st;
    while ((st = call(c, eid, key, key, out, sizeof out)) == CRUSTER_E_PERSISTENCE)
      c->keyed_unknown++;
    if (st != CRUSTER_OK) break;
    snprintf(want, sizeof want, "%s#", key);
    if (strncmp(out, want, strlen(want)) != 0 || atoi(out + strlen(want)) < 1) {
      c->bad++;
      snprintf(c->bad_msg, sizeof c->bad_msg, "%s answered \"%s\"", key, out);
      break;
    }
    c->stored_run[n] = atoi(out + strlen(want));
    if (n % UNKEYED_EVERY == 0) {
      char p[32];
      snprintf(p, sizeof p, "u%d-%d", c->t, n);
      st = call(c, eid, p, NULL, out, sizeof out);
      if (st == CRUSTER_OK) c->unkeyed_ok++;
      else if (st == CRUSTER_E_PERSISTENCE) c->unkeyed_unknown++;
    }
  }
  return NULL;
}

typedef struct killer {
  const char *base;
  const char *app;
  atomic_int stop;
  int ungated; /* CRUSTER_STORM_UNGATED=1: every 250 ms, progress or not */
  int rounds, killed;
  pthread_t th;
} killer;

/* Every KILL_EVERY_MS (the load's pace, not a synchronisation), terminates
 * every backend of the runtime -- once a call was answered since the last
 * time, so the calls cannot starve however slow the machine is. */
static void *killer_main(void *arg) {
  killer *k = arg;
  PGconn *c = pgt_connect(k->base);
  int last = -1;
  while (!atomic_load(&k->stop)) {
    ts_sleep_ms(KILL_EVERY_MS);
    int now = atomic_load(&g_answered);
    if (now == last && !k->ungated) continue;
    last = now;
    k->killed += kill_backends(c, k->app, NULL);
    k->rounds++;
  }
  PQfinish(c);
  return NULL;
}

static void calls_survive_backends_killed_repeatedly(void **state) {
  (void)state;
  uv_mutex_init(&g_log_mu);
  log_reset();
  memset(g_runs, 0, sizeof g_runs);
  atomic_store(&g_answered, 0);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  char app[96];
  snprintf(app, sizeof app, "storm_%s", s.name);
  cruster_entity_def *d = def_new("Storm");
  add(d, "rec", CRUSTER_RPC_PERSISTED, h_rec2, NULL);
  cruster_runtime *rt = named_runtime(&s, app, "storage_poll_interval=100ms", d);

  killer k;
  memset(&k, 0, sizeof k);
  k.base = pgt_base_conninfo();
  k.app = app;
  k.ungated = getenv("CRUSTER_STORM_UNGATED") && atoi(getenv("CRUSTER_STORM_UNGATED"));
  static caller cs[THREADS];
  memset(cs, 0, sizeof cs);
  assert_int_equal(pthread_create(&k.th, NULL, killer_main, &k), 0);
  int64_t t0 = pgt_mono_ms();
  for (int t = 0; t < THREADS; t++) {
    cs[t].rt = rt;
    cs[t].t = t;
    assert_int_equal(pthread_create(&cs[t].th, NULL, caller_main, &cs[t]), 0);
  }
  for (int t = 0; t < THREADS; t++) pthread_join(cs[t].th, NULL);
  int64_t took = pgt_mono_ms() - t0;
  atomic_store(&k.stop, 1);
  pthread_join(k.th, NULL);

  int keyed_unknown = 0, unkeyed_ok = 0, unkeyed_unknown = 0, reruns = 0;
  for (int t = 0; t < THREADS; t++) {
    keyed_unknown += cs[t].keyed_unknown;
    unkeyed_ok += cs[t].unkeyed_ok;
    unkeyed_unknown += cs[t].unkeyed_unknown;
    for (int n = 0; n < KEYED_PER_THREAD; n++) reruns += atomic_load(&g_runs[t][n]) > 1;
  }
  int events = atomic_load(&g_conn_events);
  printf("  %d keyed + %d unkeyed persisted calls, backends terminated every %d ms%s: %.1f s "
         "(%.0f calls/s)\n",
         KEYED_TOTAL, unkeyed_ok + unkeyed_unknown, KILL_EVERY_MS,
         k.ungated ? "" : " (once a call was answered since)", took / 1000.0,
         (KEYED_TOTAL + unkeyed_ok + unkeyed_unknown) / (took / 1000.0));
  printf("  %d rounds, %d backends terminated; connection lines %d, lines saying \"lost the "
         "connection\" %d, \"bad file descriptor\" %d, reconnects %.0f\n",
         k.rounds, k.killed, events, atomic_load(&g_lost_any), atomic_load(&g_badfd),
         ts_metric(rt, "cluster_storage_reconnects_total", NULL));
  printf("  keyed attempts answered PERSISTENCE %d (repeated), handlers run again before an "
         "answer was stored %d; unkeyed OK %d, PERSISTENCE %d\n",
         keyed_unknown, reruns, unkeyed_ok, unkeyed_unknown);
  for (int i = 0; i < 4 && i < events; i++) printf("    %s\n", g_first[i]);

  for (int t = 0; t < THREADS; t++)
    if (cs[t].bad) fail_msg("caller %d: %s", t, cs[t].bad_msg);
  /* No run after the one whose answer was stored. */
  for (int t = 0; t < THREADS; t++)
    for (int n = 0; n < KEYED_PER_THREAD; n++)
      if (atomic_load(&g_runs[t][n]) != cs[t].stored_run[n])
        fail_msg("k%d-%d: its handler ran %d times, the stored answer is of run %d", t, n,
                 atomic_load(&g_runs[t][n]), cs[t].stored_run[n]);
  assert_true(k.killed > 0);
  /* Each terminated backend ends one connection, reported once (a lost
   * connection, or a failed attempt when it was still starting); a few
   * more for connections that were starting when the last round ran. */
  if (events > k.killed + 4)
    fail_msg("%d connection lines for %d terminated backends", events, k.killed);
  /* Every line saying "lost the connection": those, and one per operation
   * that failed with its connection (a handful per terminated backend with
   * 8 callers) -- a small multiple, never a storm. */
  if (atomic_load(&g_lost_any) > 8 * k.killed + 16)
    fail_msg("%d lines saying \"lost the connection\" for %d terminated backends",
             atomic_load(&g_lost_any), k.killed);

  /* Afterwards the storage works as usual (a last round of terminations
   * may still be on its way: repeated with a key). */
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = "after";
  o.idempotency_key_len = 5;
  int st = CRUSTER_E_PERSISTENCE;
  for (int i = 0; i < 10 && st == CRUSTER_E_PERSISTENCE; i++)
    st = send_str(rt, "Storm", "after", "rec", "after", &o, NULL, NULL);
  assert_int_equal(st, CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
  uv_mutex_destroy(&g_log_mu);
}

int main(void) {
  pgt_main_start();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(lost_reconcile_runs_again),
      cmocka_unit_test(calls_survive_backends_killed_repeatedly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
