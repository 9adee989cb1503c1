/* payments.c -- persisted calls in PostgreSQL, with an idempotency key.
 *
 * A "Payments" entity charges accounts. The charge is persisted: stored in
 * PostgreSQL before it runs, answered once, and a repeat with the same
 * idempotency key -- even from a new process -- gets the stored answer
 * without charging twice.
 *
 * The state model, which every persisted handler must follow: cruster
 * stores the *message* and its *answer*; your data lives in your tables. A
 * persisted message is delivered at least once: if the process dies after
 * the handler wrote to your tables but before its answer was stored, the
 * message is delivered again. So the handler makes its own write idempotent:
 * here the charge row is keyed by the request id (stable across
 * redeliveries of one call), and a second insert of it changes nothing.
 * (Durable workflows' activities will commit the write and the journal in
 * one transaction.)
 *
 *   payments "host=127.0.0.1 port=5432 dbname=app user=app"
 *
 * (without an argument it uses $CRUSTER_TEST_PG, which scripts/dev sets).
 * The tables go to the schema "payments_demo". */
#include <cruster/cruster.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The application's own database connection (one, shared by the handlers
 * under a mutex: enough for a demo; use a pool in a real program). */
typedef struct bank {
  pthread_mutex_t mu;
  PGconn *db;
  atomic_int runs; /* how often the handler really ran */
} bank;

static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* Charges the account: one row per call, keyed by the request id. */
static void on_charge(void *user, cruster_request *req) {
  bank *b = user;
  atomic_fetch_add(&b->runs, 1);
  size_t len;
  const char *amount = cruster_request_payload(req, &len);
  char rid[32], amt[32];
  if (len == 0 || len >= sizeof amt) {
    cruster_request_fail(req, CRUSTER_E_MALFORMED, "amount must be a decimal number");
    return;
  }
  snprintf(rid, sizeof rid, "%lld", (long long)cruster_request_id(req));
  snprintf(amt, sizeof amt, "%.*s", (int)len, amount);
  const char *account = cruster_request_entity_id(req);
  const char *ins[3] = {rid, account, amt};
  const char *acc[1] = {account};
  char receipt[256];
  pthread_mutex_lock(&b->mu);
  /* A redelivery of this call inserts nothing: the row is keyed by its
   * request id. */
  PGresult *r = PQexecParams(b->db,
                             "INSERT INTO charges (request_id, account, amount) "
                             "VALUES ($1::int8, $2, $3::numeric) ON CONFLICT (request_id) DO NOTHING",
                             3, NULL, ins, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  r = ok ? PQexecParams(b->db, "SELECT coalesce(sum(amount), 0)::text FROM charges WHERE account = $1",
                        1, NULL, acc, NULL, NULL, 0)
         : NULL;
  ok = ok && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  int n = ok ? snprintf(receipt, sizeof receipt, "charged %s to %s, balance %s", amt, account,
                        PQgetvalue(r, 0, 0))
             : snprintf(receipt, sizeof receipt, "%s", PQerrorMessage(b->db));
  PQclear(r);
  pthread_mutex_unlock(&b->mu);
  /* A failure is not answered as one: the message is delivered again. */
  if (ok) cruster_request_reply(req, receipt, (size_t)n);
  else cruster_request_fail(req, CRUSTER_E_HANDLER, receipt);
}

static cruster_runtime *start(const char *conninfo, bank *b) {
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_storage *storage = NULL;
  cruster_runtime *rt = NULL;
  cruster_entity_def *def = NULL;
  cruster_config_set_logger(cfg, NULL, NULL, CRUSTER_LOG_WARN);
  if (cruster_config_set(cfg, "storage_auto_migrate", "true", &err) != CRUSTER_OK || /* tables */
      cruster_storage_pg_new(conninfo, &storage, &err) != CRUSTER_OK ||
      cruster_runtime_new(cfg, storage, NULL, &rt, &err) != CRUSTER_OK ||
      cruster_entity_def_new("Payments", &def, &err) != CRUSTER_OK ||
      cruster_entity_def_add_rpc(def, "charge", CRUSTER_RPC_PERSISTED, on_charge, b, &err) !=
          CRUSTER_OK ||
      cruster_runtime_register_entity(rt, def, &err) != CRUSTER_OK ||
      cruster_runtime_start(rt, &err) != CRUSTER_OK) {
    fprintf(stderr, "payments: %s\n", cruster_error_message(err));
    cruster_error_free(err);
    cruster_runtime_free(rt);
    rt = NULL;
  }
  cruster_entity_def_free(def);
  cruster_config_free(cfg);
  return rt;
}

/* Charges order-42 and says whether the handler ran or storage answered. */
static int charge(cruster_runtime *rt, bank *b, const char *what) {
  cruster_call_opts opts = CRUSTER_CALL_OPTS_INIT;
  opts.idempotency_key = "order-42";
  opts.idempotency_key_len = strlen("order-42");
  opts.timeout_ms = 10000;
  void *reply = NULL;
  size_t reply_len = 0;
  cruster_error *err = NULL;
  int before = atomic_load(&b->runs);
  int st = cruster_send_sync(rt, "Payments", "acct-7", "charge", "9.90", 4, &opts, &reply,
                             &reply_len, &err);
  if (st == CRUSTER_OK)
    printf("%-34s %-22s -> %s\n", what,
           atomic_load(&b->runs) > before ? "the handler ran" : "answered from storage",
           (char *)reply);
  else
    fprintf(stderr, "payments: %s\n", cruster_error_message(err));
  cruster_free(reply);
  cruster_error_free(err);
  return st == CRUSTER_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  const char *base = argc > 1 ? argv[1] : getenv("CRUSTER_TEST_PG");
  if (!base) {
    fprintf(stderr, "usage: payments CONNINFO (or set CRUSTER_TEST_PG)\n");
    return 2;
  }
  char conninfo[2048];
  snprintf(conninfo, sizeof conninfo, "%s options=-csearch_path=payments_demo", base);
  /* A fresh schema of our own for the demo, and the application's table. */
  bank b = {.mu = PTHREAD_MUTEX_INITIALIZER};
  PGconn *admin = PQconnectdb(base);
  PQsetNoticeProcessor(admin, quiet, NULL);
  PGresult *r = PQexec(admin, "DROP SCHEMA IF EXISTS payments_demo CASCADE; CREATE SCHEMA payments_demo;"
                              "CREATE TABLE payments_demo.charges (request_id int8 PRIMARY KEY,"
                              " account text NOT NULL, amount numeric NOT NULL)");
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) fprintf(stderr, "payments: %s", PQerrorMessage(admin));
  PQclear(r);
  PQfinish(admin);
  if (!ok) return 1;
  b.db = PQconnectdb(conninfo);
  if (PQstatus(b.db) != CONNECTION_OK) {
    fprintf(stderr, "payments: %s", PQerrorMessage(b.db));
    return 1;
  }

  /* Three calls with idempotency key order-42: two in one process, one after
   * a restart (a second runtime on the same database). */
  int rc = 1;
  cruster_runtime *rt = start(conninfo, &b);
  if (rt && charge(rt, &b, "call 1, key order-42:") == 0 &&
      charge(rt, &b, "call 2, same key:") == 0) {
    cruster_runtime_free(rt);
    rt = start(conninfo, &b);
    rc = rt && charge(rt, &b, "call 3, same key, after a restart:") == 0 ? 0 : 1;
  }
  cruster_runtime_free(rt);
  if (rc == 0) {
    r = PQexec(b.db, "SELECT count(*), sum(amount) FROM charges");
    printf("the charge handler ran %d time(s) for 3 calls with key order-42; the charges table "
           "holds %s row(s), %s in all\n",
           atomic_load(&b.runs), PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
  }
  PQfinish(b.db);
  return rc;
}
