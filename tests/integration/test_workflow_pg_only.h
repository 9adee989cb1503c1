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

#define WF_PG_ONLY_TESTS cmocka_unit_test(activity_sql_commits_with_its_journal_row),
