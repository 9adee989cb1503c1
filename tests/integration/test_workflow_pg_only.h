/* PostgreSQL-only workflow tests, included by tests/unit/test_workflow.c
 * when built as test_workflow_pg. */
#include <libpq-fe.h>

/* The activity's SQL runs on its transaction: "ok:<k>" inserts k and
 * answers, "fail:<k>" inserts k and fails -- its row must vanish. */
static void act_ledger(void *user, cruster_activity *act) {
  (void)user;
  size_t len;
  const char *in = cruster_activity_input(act, &len);
  char buf[128];
  snprintf(buf, sizeof(buf), "%.*s", (int)len, in);
  PGconn *c = (PGconn *)cruster_activity_pg(act);
  if (!c) {
    cruster_activity_fail(act, CRUSTER_E_INTERNAL, "no transaction");
    return;
  }
  const char *k = strchr(buf, ':') + 1;
  const char *v[1] = {k};
  PGresult *r = PQexecParams(c, "INSERT INTO ledger (k) VALUES ($1)", 1, NULL, v, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) cruster_activity_fail(act, CRUSTER_E_INTERNAL, PQerrorMessage(c));
  else if (strncmp(buf, "fail:", 5) == 0) cruster_activity_fail(act, CRUSTER_E_APPLICATION - 1, "asked to fail");
  else cruster_activity_reply(act, k, strlen(k));
}

/* ledger(ok:one), ledger(fail:two) -- its failure is expected --, ledger(ok:three). */
static void wf_ledger(void *user, cruster_wf *wf) {
  (void)user;
  atomic_fetch_add(&g_runs, 1);
  int rc = cruster_wf_activity(wf, "ledger", "ok:one", 6, NULL, NULL, NULL);
  if (rc == CRUSTER_OK) {
    rc = cruster_wf_activity(wf, "ledger", "fail:two", 8, NULL, NULL, NULL);
    rc = rc == CRUSTER_E_APPLICATION - 1 ? CRUSTER_OK : (rc == CRUSTER_OK ? CRUSTER_E_INTERNAL : rc);
  }
  if (rc == CRUSTER_OK) rc = cruster_wf_activity(wf, "ledger", "ok:three", 8, NULL, NULL, NULL);
  finish(wf, rc, "ledger done");
}

static long long ledger_count(const char *conninfo, const char *k) {
  PGconn *c = PQconnectdb(conninfo);
  const char *v[1] = {k};
  PGresult *r = PQexecParams(c, "SELECT count(*) FROM ledger WHERE k = $1", 1, NULL, v, NULL, NULL, 0);
  long long n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoll(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  PQfinish(c);
  return n;
}

static void activity_sql_commits_with_its_journal_row(void **state) {
  (void)state;
  reset_globals();
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE ledger (k TEXT NOT NULL)");
  cruster_runtime *rt = pgt_runtime(&s, NULL, NULL, 0);
  cruster_workflow_def *d = wdef("Ledger", wf_ledger);
  act(d, "ledger", act_ledger, NULL, NULL);
  reg(rt, d);
  char out[128];
  assert_int_equal(run_wf(rt, "Ledger", "l", "l1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "ledger done");
  assert_int_equal(ledger_count(s.conninfo, "one"), 1);
  assert_int_equal(ledger_count(s.conninfo, "two"), 0); /* rolled back with its failure */
  assert_int_equal(ledger_count(s.conninfo, "three"), 1);
  /* Three journal rows: two results and the final failure. */
  assert_int_equal(pgt_count(&s, "cruster_journal"), 3);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

/* The same with one pooled connection: no activity's transaction is held
 * open past the activity (at most half the pool is), so each commits at
 * once and the answer is stored by the message storage. */
static void activity_sql_commits_with_its_journal_row_without_holding(void **state) {
  (void)state;
  reset_globals();
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE ledger (k TEXT NOT NULL)");
  cruster_runtime *rt = pgt_runtime(&s, "workflow_pool_size=1", NULL, 0);
  cruster_workflow_def *d = wdef("Ledger", wf_ledger);
  act(d, "ledger", act_ledger, NULL, NULL);
  reg(rt, d);
  char out[128];
  assert_int_equal(run_wf(rt, "Ledger", "l", "l1", out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "ledger done");
  assert_int_equal(ledger_count(s.conninfo, "one"), 1);
  assert_int_equal(ledger_count(s.conninfo, "two"), 0);
  assert_int_equal(ledger_count(s.conninfo, "three"), 1);
  assert_int_equal(pgt_count(&s, "cruster_journal"), 3);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

/* ---- a held transaction whose COMMIT fails ------------------------------ */

/* An activity's transaction stays open until its run's next write (the
 * next activity's BEGIN, or the answer), so a failure at COMMIT -- here a
 * deferred unique constraint -- surfaces after execute has the result.
 * The run must stop, leave nothing, and run again later: the activity runs
 * again, the later one never sees an uncommitted predecessor. */
static atomic_int g_uq_a, g_uq_b;

static void act_uniq(void *user, cruster_activity *act) {
  (void)user;
  size_t len;
  const char *in = cruster_activity_input(act, &len);
  char k[32];
  snprintf(k, sizeof(k), "%.*s", (int)len, in);
  atomic_fetch_add(k[0] == 'a' ? &g_uq_a : &g_uq_b, 1);
  PGconn *c = (PGconn *)cruster_activity_pg(act);
  const char *v[1] = {k};
  PGresult *r = PQexecParams(c, "INSERT INTO uniq (k) VALUES ($1)", 1, NULL, v, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) cruster_activity_fail(act, CRUSTER_E_INTERNAL, PQerrorMessage(c));
  else cruster_activity_reply(act, k, strlen(k));
}

/* uniq(a<input>), uniq(b<input>) */
static void wf_uniq(void *user, cruster_wf *wf) {
  (void)user;
  size_t len;
  const char *in = cruster_wf_input(wf, &len);
  char a[32], b[32];
  snprintf(a, sizeof(a), "a%.*s", (int)len, in);
  snprintf(b, sizeof(b), "b%.*s", (int)len, in);
  int rc = cruster_wf_activity(wf, "uniq", a, strlen(a), NULL, NULL, NULL);
  if (rc == CRUSTER_OK) rc = cruster_wf_activity(wf, "uniq", b, strlen(b), NULL, NULL, NULL);
  finish(wf, rc, "uniq done");
}

static long long uniq_count(const char *conninfo, const char *k) {
  PGconn *c = PQconnectdb(conninfo);
  const char *v[1] = {k};
  PGresult *r = PQexecParams(c, "SELECT count(*) FROM uniq WHERE k = $1", 1, NULL, v, NULL, NULL, 0);
  long long n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoll(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  PQfinish(c);
  return n;
}

static void a_failed_commit_after_the_activity_runs_it_again(void **state) {
  (void)state;
  reset_globals();
  atomic_store(&g_uq_a, 0);
  atomic_store(&g_uq_b, 0);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE uniq (k TEXT UNIQUE DEFERRABLE INITIALLY DEFERRED)");
  cruster_runtime *rt = pgt_runtime(&s, "storage_retry_backoff=50ms;storage_poll_interval=50ms", NULL, 0);
  cruster_workflow_def *d = wdef("Uniq", wf_uniq);
  act(d, "uniq", act_uniq, NULL, NULL);
  reg(rt, d);
  char out[128];

  /* 1. The first activity's COMMIT (with the second one's BEGIN) fails
   * while "a1" is taken: "a1" runs again on every run, "b1" never runs. */
  pgt_exec(s.admin, "INSERT INTO uniq VALUES ('a1')");
  char *id = start_wf(rt, "Uniq", "1", "u1");
  assert_true(wait_count(&g_uq_a, 2));
  assert_int_equal(atomic_load(&g_uq_b), 0);
  pgt_exec(s.admin, "DELETE FROM uniq WHERE k = 'a1'");
  assert_int_equal(join_wf(rt, "Uniq", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "uniq done");
  assert_int_equal(uniq_count(s.conninfo, "a1"), 1);
  assert_int_equal(uniq_count(s.conninfo, "b1"), 1);
  assert_int_equal(atomic_load(&g_uq_b), 1);
  cruster_free(id);

  /* 2. The last activity's COMMIT, which carries the answer, fails while
   * "b2" is taken: no answer is stored, "a2" is not run again, "b2" is. */
  atomic_store(&g_uq_a, 0);
  atomic_store(&g_uq_b, 0);
  pgt_exec(s.admin, "INSERT INTO uniq VALUES ('b2')");
  id = start_wf(rt, "Uniq", "2", "u2");
  assert_true(wait_count(&g_uq_b, 2));
  int ready = 1;
  void *rep = NULL;
  size_t len = 0;
  assert_int_equal(cruster_workflow_poll(rt, "Uniq", id, &ready, &rep, &len, NULL), CRUSTER_OK);
  assert_int_equal(ready, 0);
  pgt_exec(s.admin, "DELETE FROM uniq WHERE k = 'b2'");
  assert_int_equal(join_wf(rt, "Uniq", id, out, sizeof(out)), CRUSTER_OK);
  assert_string_equal(out, "uniq done");
  assert_int_equal(atomic_load(&g_uq_a), 1);
  assert_int_equal(uniq_count(s.conninfo, "a2"), 1);
  assert_int_equal(uniq_count(s.conninfo, "b2"), 1);
  cruster_free(id);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

#define WF_PG_ONLY_TESTS                                                   \
  cmocka_unit_test(activity_sql_commits_with_its_journal_row),             \
  cmocka_unit_test(activity_sql_commits_with_its_journal_row_without_holding), \
  cmocka_unit_test(a_failed_commit_after_the_activity_runs_it_again),

/* ---- transactional entity handlers ---------------------------------------- */

static atomic_int g_tx_runs, g_tx_block, g_tx_in;

/* Inserts its payload into ledger on the request's transaction; payload
 * "fail:<k>" fails after the insert; "block:<k>" waits until released. */
static void h_tx(void *user, cruster_request *req) {
  (void)user;
  atomic_fetch_add(&g_tx_runs, 1);
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char buf[128];
  snprintf(buf, sizeof(buf), "%.*s", (int)len, p);
  PGconn *c = (PGconn *)cruster_request_pg(req);
  if (!c) {
    cruster_request_fail(req, CRUSTER_E_INTERNAL, "no transaction");
    return;
  }
  const char *k = strchr(buf, ':') ? strchr(buf, ':') + 1 : buf;
  const char *v[1] = {k};
  PGresult *r = PQexecParams(c, "INSERT INTO ledger (k) VALUES ($1)", 1, NULL, v, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (strncmp(buf, "block:", 6) == 0) {
    atomic_store(&g_tx_in, 1);
    while (atomic_load(&g_tx_block)) ts_sleep_ms(1);
  }
  if (!ok) cruster_request_fail(req, CRUSTER_E_INTERNAL, PQerrorMessage(c));
  else if (strncmp(buf, "fail:", 5) == 0) cruster_request_fail(req, CRUSTER_E_APPLICATION - 2, "no");
  else cruster_request_reply(req, k, strlen(k));
}

static cruster_runtime *tx_runtime(pgt_schema *s) {
  cruster_entity_def *d = def_new("Ledger");
  add(d, "post", CRUSTER_RPC_TRANSACTIONAL, h_tx, NULL);
  cruster_runtime *rt = pgt_runtime(s, "storage_poll_interval=100ms", &d, 1);
  cruster_entity_def_free(d);
  return rt;
}

static void transactional_handler_commits_its_sql_with_its_reply(void **state) {
  (void)state;
  atomic_store(&g_tx_runs, 0);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE ledger (k TEXT NOT NULL)");
  cruster_runtime *rt = tx_runtime(&s);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = TS_DEADLINE_MS;
  o.idempotency_key = "k-1";
  o.idempotency_key_len = 3;
  char *out = NULL, *msg = NULL;
  /* Keyed: the reply is stored with the SQL; the repeat runs nothing. */
  assert_int_equal(send_str(rt, "Ledger", "l", "post", "ok:one", &o, &out, &msg), CRUSTER_OK);
  assert_string_equal(out, "one");
  cruster_free(out);
  assert_int_equal(send_str(rt, "Ledger", "l", "post", "ok:one", &o, &out, &msg), CRUSTER_OK);
  assert_string_equal(out, "one");
  cruster_free(out);
  assert_int_equal(atomic_load(&g_tx_runs), 1);
  assert_int_equal(ledger_count(s.conninfo, "one"), 1);
  /* Unkeyed: answered, its row deleted in the same transaction. */
  o.idempotency_key = NULL;
  o.idempotency_key_len = 0;
  assert_int_equal(send_str(rt, "Ledger", "l", "post", "ok:two", &o, &out, &msg), CRUSTER_OK);
  cruster_free(out);
  assert_int_equal(ledger_count(s.conninfo, "two"), 1);
  /* A failure rolls the SQL back; the failure is the answer. */
  assert_int_equal(send_str(rt, "Ledger", "l", "post", "fail:three", &o, &out, &msg),
                   CRUSTER_E_APPLICATION - 2);
  free(msg);
  msg = NULL;
  assert_int_equal(ledger_count(s.conninfo, "three"), 0);
  cruster_runtime_free(rt);
  /* Nothing is left unanswered. */
  assert_int_equal(pgt_scalarf(s.admin, -1, "SELECT count(*) FROM cruster_messages WHERE NOT processed"), 0);
  pgt_schema_drop(&s);
}

/* The runner goes away while the handler is between its SQL and its reply:
 * whether the stop drops the answer (the SQL rolls back with it, and the
 * next life runs the message again) or lets it land first, the row exists
 * once, with the stored reply. (A SIGKILLed runner's transaction dies with
 * its connection, the same as the first case.) */
static void transactional_handler_lost_before_its_reply_runs_again_once(void **state) {
  (void)state;
  atomic_store(&g_tx_runs, 0);
  atomic_store(&g_tx_in, 0);
  atomic_store(&g_tx_block, 1);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE ledger (k TEXT NOT NULL)");
  cruster_runtime *rt = tx_runtime(&s);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = "k-lost";
  o.idempotency_key_len = 6;
  cruster_error *err = NULL;
  assert_int_equal(cruster_notify_sync(rt, "Ledger", "l", "post", "block:four", 10, &o, &err), CRUSTER_OK);
  assert_true(wait_count(&g_tx_in, 1));
  /* Its insert is done but not committed: nobody sees it. */
  assert_int_equal(ledger_count(s.conninfo, "four"), 0);
  atomic_store(&g_tx_block, 0); /* the stop must not wait forever for it */
  cruster_runtime_free(rt); /* its answer, if any, is dropped */
  long long after_first = ledger_count(s.conninfo, "four");
  assert_true(after_first <= 1);
  rt = tx_runtime(&s);
  cruster_call_opts j = CRUSTER_CALL_OPTS_INIT;
  j.timeout_ms = TS_DEADLINE_MS;
  reply r;
  reply_init(&r);
  assert_int_equal(cruster_join_reply(rt, "Ledger", "l", "post", "k-lost", 6, &j, on_reply, &r, &err),
                   CRUSTER_OK);
  reply_wait(&r);
  assert_int_equal(r.status, CRUSTER_OK);
  assert_string_equal(r.data, "four");
  reply_destroy(&r);
  assert_int_equal(ledger_count(s.conninfo, "four"), 1);
  cruster_runtime_free(rt);
  pgt_schema_drop(&s);
}

#undef WF_PG_ONLY_TESTS
#define WF_PG_ONLY_TESTS                                                 \
  cmocka_unit_test(activity_sql_commits_with_its_journal_row),           \
  cmocka_unit_test(activity_sql_commits_with_its_journal_row_without_holding), \
  cmocka_unit_test(a_failed_commit_after_the_activity_runs_it_again),    \
  cmocka_unit_test(transactional_handler_commits_its_sql_with_its_reply), \
  cmocka_unit_test(transactional_handler_lost_before_its_reply_runs_again_once),
