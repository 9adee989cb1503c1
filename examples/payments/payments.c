/* payments.c -- persisted calls in PostgreSQL, with an idempotency key.
 *
 * A "Payments" entity charges accounts. The charge is persisted: stored in
 * PostgreSQL before it runs, answered once, and a repeat with the same
 * idempotency key -- even from a new process -- gets the stored answer
 * without charging twice.
 *
 *   payments "host=127.0.0.1 port=5432 dbname=app user=app"
 *
 * (without an argument it uses $CRUSTER_TEST_PG, which scripts/dev sets).
 * The tables go to the schema "payments_demo". */
#include <cruster/cruster.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_int charges_run; /* how often the handler really ran */

static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static void on_charge(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *amount = cruster_request_payload(req, &len);
  atomic_fetch_add(&charges_run, 1);
  char receipt[128];
  int n = snprintf(receipt, sizeof receipt, "charged %.*s to %s", (int)len, amount,
                   cruster_request_entity_id(req));
  cruster_request_reply(req, receipt, (size_t)n);
}

/* One runtime's life: start, charge order-42, stop. */
static int charge_once(const char *conninfo) {
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_config_set(cfg, "storage_auto_migrate", "true", &err); /* create the tables */
  cruster_config_set_logger(cfg, NULL, NULL, CRUSTER_LOG_WARN);
  cruster_storage *storage = NULL;
  cruster_runtime *rt = NULL;
  if (cruster_storage_pg_new(conninfo, &storage, &err) != CRUSTER_OK ||
      cruster_runtime_new(cfg, storage, NULL, &rt, &err) != CRUSTER_OK) {
    fprintf(stderr, "payments: %s\n", cruster_error_message(err));
    return 1;
  }
  cruster_config_free(cfg);
  cruster_entity_def *def = NULL;
  cruster_entity_def_new("Payments", &def, NULL);
  cruster_entity_def_add_rpc(def, "charge", CRUSTER_RPC_PERSISTED, on_charge, NULL, NULL);
  cruster_runtime_register_entity(rt, def, NULL);
  cruster_entity_def_free(def);
  cruster_runtime_start(rt, NULL);

  cruster_call_opts opts = CRUSTER_CALL_OPTS_INIT;
  opts.idempotency_key = "order-42";
  opts.idempotency_key_len = strlen("order-42");
  opts.timeout_ms = 10000;
  void *reply = NULL;
  size_t reply_len = 0;
  int st = cruster_send_sync(rt, "Payments", "acct-7", "charge", "9.90", 4, &opts, &reply,
                             &reply_len, &err);
  if (st == CRUSTER_OK) printf("%s\n", (char *)reply);
  else fprintf(stderr, "payments: %s\n", cruster_error_message(err));
  cruster_free(reply);
  cruster_error_free(err);
  cruster_runtime_free(rt);
  return st == CRUSTER_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  const char *base = argc > 1 ? argv[1] : getenv("CRUSTER_TEST_PG");
  if (!base) {
    fprintf(stderr, "usage: payments CONNINFO (or set CRUSTER_TEST_PG)\n");
    return 2;
  }
  /* A fresh schema of our own for the demo. */
  PGconn *admin = PQconnectdb(base);
  PQsetNoticeProcessor(admin, quiet, NULL);
  PGresult *r = PQexec(admin, "DROP SCHEMA IF EXISTS payments_demo CASCADE; CREATE SCHEMA payments_demo");
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok) fprintf(stderr, "payments: %s", PQerrorMessage(admin));
  PQclear(r);
  PQfinish(admin);
  if (!ok) return 1;
  char conninfo[2048];
  snprintf(conninfo, sizeof conninfo, "%s options=-csearch_path=payments_demo", base);

  /* Two separate runtimes, as if the program had been restarted. */
  if (charge_once(conninfo) != 0 || charge_once(conninfo) != 0) return 1;
  printf("the charge handler ran %d time(s) for 2 calls with key order-42\n",
         atomic_load(&charges_run));
  return 0;
}
