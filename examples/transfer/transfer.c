/* transfer.c -- a durable workflow in PostgreSQL: a money transfer.
 *
 * The workflow "Transfer" moves an amount between two accounts:
 *   1. activity "debit": takes the amount from the payer (fails when the
 *      balance is too low);
 *   2. a durable sleep (a cooling-off period);
 *   3. waits for the deferred "approval", resolved by any client;
 *   4. activity "credit" pays the payee -- or, when rejected, activity
 *      "refund" gives the amount back.
 * Each activity's SQL runs in the transaction cruster opens for it
 * (cruster_activity_pg) and commits together with its journal row: it takes
 * effect exactly once, even if the process dies and the workflow replays.
 * While it sleeps or waits, the execution holds no thread.
 *
 * The demo runs one transfer to completion, asks again with the same key
 * (the stored answer; nothing moves twice), then starts a second transfer,
 * stops the runtime while that one waits for approval, and finishes it in a
 * new runtime -- as after a crash.
 *
 *   transfer "host=127.0.0.1 port=5432 dbname=app user=app"
 *
 * (without an argument it uses $CRUSTER_TEST_PG, which scripts/dev sets).
 * The tables go to the schema "transfer_demo". */
#include <cruster/cruster.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The input: "<from> <to> <amount>". */
typedef struct transfer {
  char from[64], to[64];
  long amount;
} transfer;

static int parse(const void *p, size_t len, transfer *t) {
  char buf[256];
  if (len == 0 || len >= sizeof buf) return -1;
  memcpy(buf, p, len);
  buf[len] = 0;
  return sscanf(buf, "%63s %63s %ld", t->from, t->to, &t->amount) == 3 && t->amount > 0 ? 0 : -1;
}

/* Adds `delta` to account `id` in the activity's transaction; with
 * `guard`, only when the balance stays >= 0. 1 if a row changed. */
static int add(cruster_activity *act, const char *id, long delta, int guard) {
  PGconn *db = (PGconn *)cruster_activity_pg(act);
  char d[32];
  snprintf(d, sizeof d, "%ld", delta);
  const char *v[2] = {id, d};
  PGresult *r = PQexecParams(db,
                             guard ? "UPDATE accounts SET balance = balance + $2::int8"
                                     " WHERE id = $1 AND balance + $2::int8 >= 0"
                                   : "UPDATE accounts SET balance = balance + $2::int8 WHERE id = $1",
                             2, NULL, v, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK ? atoi(PQcmdTuples(r)) : -1;
  PQclear(r);
  return ok;
}

static void on_debit(void *app, cruster_activity *act) {
  (void)app;
  size_t len;
  const void *in = cruster_activity_input(act, &len);
  transfer t;
  if (parse(in, len, &t) != 0) {
    cruster_activity_fail(act, CRUSTER_E_MALFORMED, "input is \"<from> <to> <amount>\"");
    return;
  }
  int n = add(act, t.from, -t.amount, 1);
  if (n == 1) cruster_activity_reply(act, "debited", 7);
  else if (n == 0) cruster_activity_fail(act, CRUSTER_E_APPLICATION - 1, "insufficient funds");
  else cruster_activity_fail(act, CRUSTER_E_PERSISTENCE, "debit failed");
}

/* credit (to the payee) and refund (to the payer). */
static void on_credit(void *app, cruster_activity *act) {
  int refund = app != NULL;
  size_t len;
  const void *in = cruster_activity_input(act, &len);
  transfer t;
  if (parse(in, len, &t) != 0 || add(act, refund ? t.from : t.to, t.amount, 0) != 1) {
    cruster_activity_fail(act, CRUSTER_E_PERSISTENCE, "credit failed");
    return;
  }
  cruster_activity_reply(act, refund ? "refunded" : "credited", refund ? 8 : 8);
}

static void on_execute(void *app, cruster_wf *wf) {
  (void)app;
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  void *approval = NULL;
  size_t alen = 0;
  cruster_error *err = NULL;
  const char *answer = NULL;
  int rc = cruster_wf_activity(wf, "debit", in, len, NULL, NULL, &err);
  if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, 200, &err); /* cooling-off */
  if (rc == CRUSTER_OK) rc = cruster_wf_await(wf, "approval", &approval, &alen, &err);
  if (rc == CRUSTER_OK && alen == 3 && memcmp(approval, "yes", 3) == 0) {
    rc = cruster_wf_activity(wf, "credit", in, len, NULL, NULL, &err);
    answer = "transferred";
  } else if (rc == CRUSTER_OK) {
    rc = cruster_wf_activity(wf, "refund", in, len, NULL, NULL, &err);
    answer = "refused and refunded";
  }
  if (rc == CRUSTER_OK) cruster_wf_complete(wf, answer, strlen(answer));
  else if (!cruster_wf_stopped(wf)) cruster_wf_fail(wf, rc, cruster_error_message(err));
  /* After a stop (suspended while it sleeps or waits): just return. */
  cruster_error_free(err);
  cruster_free(approval);
}

static cruster_runtime *start(const char *conninfo) {
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_storage *storage = NULL;
  cruster_runtime *rt = NULL;
  cruster_workflow_def *def = NULL;
  static int refund_flag = 1;
  cruster_config_set_logger(cfg, NULL, NULL, CRUSTER_LOG_WARN);
  if (cruster_config_set(cfg, "storage_auto_migrate", "true", &err) != CRUSTER_OK ||
      cruster_storage_pg_new(conninfo, &storage, &err) != CRUSTER_OK ||
      cruster_runtime_new(cfg, storage, NULL, &rt, &err) != CRUSTER_OK ||
      cruster_workflow_def_new("Transfer", on_execute, NULL, &def, &err) != CRUSTER_OK ||
      cruster_workflow_def_add_activity(def, "debit", on_debit, NULL, NULL, &err) != CRUSTER_OK ||
      cruster_workflow_def_add_activity(def, "credit", on_credit, NULL, NULL, &err) != CRUSTER_OK ||
      cruster_workflow_def_add_activity(def, "refund", on_credit, &refund_flag, NULL, &err) !=
          CRUSTER_OK ||
      cruster_runtime_register_workflow(rt, def, &err) != CRUSTER_OK ||
      cruster_runtime_start(rt, &err) != CRUSTER_OK) {
    fprintf(stderr, "transfer: %s\n", cruster_error_message(err));
    cruster_error_free(err);
    cruster_runtime_free(rt);
    rt = NULL;
  }
  cruster_workflow_def_free(def);
  cruster_config_free(cfg);
  return rt;
}

static void balances(PGconn *db, const char *when) {
  PGresult *r = PQexec(db, "SELECT string_agg(id || '=' || balance, ' ' ORDER BY id) FROM accounts");
  printf("  balances %s: %s\n", when, PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?");
  PQclear(r);
}

static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

static int check(int rc, cruster_error *err, const char *what) {
  if (rc == CRUSTER_OK) return 0;
  fprintf(stderr, "transfer: %s: %s\n", what, cruster_error_message(err));
  cruster_error_free(err);
  return 1;
}

int main(int argc, char **argv) {
  const char *base = argc > 1 ? argv[1] : getenv("CRUSTER_TEST_PG");
  if (!base) {
    fprintf(stderr, "usage: transfer CONNINFO (or set CRUSTER_TEST_PG)\n");
    return 2;
  }
  char conninfo[1024];
  snprintf(conninfo, sizeof conninfo, "%s options=-csearch_path=transfer_demo", base);
  PGconn *admin = PQconnectdb(base);
  PQsetNoticeProcessor(admin, quiet, NULL);
  PGresult *r = PQexec(admin,
                       "DROP SCHEMA IF EXISTS transfer_demo CASCADE; CREATE SCHEMA transfer_demo;"
                       "CREATE TABLE transfer_demo.accounts (id TEXT PRIMARY KEY, balance INT8);"
                       "INSERT INTO transfer_demo.accounts VALUES ('alice', 100), ('bob', 0)");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    fprintf(stderr, "transfer: %s", PQerrorMessage(admin));
    return 1;
  }
  PQclear(r);
  PQclear(PQexec(admin, "SET search_path = transfer_demo"));
  cruster_runtime *rt = start(conninfo);
  if (!rt) return 1;
  balances(admin, "at the start");

  /* 1. One transfer, approved while it sleeps or waits. */
  const char *t1 = "alice bob 30";
  cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
  o.key = "t-1";
  o.key_len = 3;
  o.timeout_ms = 20000;
  char *id = NULL;
  void *out = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  if (check(cruster_workflow_start(rt, "Transfer", t1, strlen(t1), &o, &id, &err), err, "start"))
    return 1;
  printf("started transfer t-1 (execution %s): debit, sleep, wait for approval\n", id);
  if (check(cruster_workflow_resolve(rt, "Transfer", id, "approval", "yes", 3, &err), err, "approve"))
    return 1;
  printf("  approved by a client\n");
  if (check(cruster_workflow_join_sync(rt, "Transfer", id, 20000, &out, &len, &err), err, "join"))
    return 1;
  printf("  answer: %.*s\n", (int)len, (char *)out);
  cruster_free(out);
  balances(admin, "after t-1");
  /* The same key again: the stored answer, nothing moves. */
  if (check(cruster_workflow_execute_sync(rt, "Transfer", t1, strlen(t1), &o, &out, &len, &err), err,
            "execute"))
    return 1;
  printf("t-1 again (same key): %.*s -- answered from storage\n", (int)len, (char *)out);
  cruster_free(out);
  cruster_free(id);
  balances(admin, "after asking again");

  /* 2. A transfer that outlives its runtime. */
  const char *t2 = "alice bob 50";
  o.key = "t-2";
  if (check(cruster_workflow_start(rt, "Transfer", t2, strlen(t2), &o, &id, &err), err, "start"))
    return 1;
  printf("started transfer t-2; stopping the runtime while it waits\n");
  cruster_runtime_free(rt);
  balances(admin, "with t-2 waiting, no runtime");
  rt = start(conninfo); /* a new life, as after a crash */
  if (!rt) return 1;
  if (check(cruster_workflow_resolve(rt, "Transfer", id, "approval", "yes", 3, &err), err, "approve"))
    return 1;
  if (check(cruster_workflow_join_sync(rt, "Transfer", id, 20000, &out, &len, &err), err, "join"))
    return 1;
  printf("t-2 finished in a new runtime: %.*s\n", (int)len, (char *)out);
  cruster_free(out);
  cruster_free(id);
  balances(admin, "at the end");
  cruster_runtime_free(rt);
  PQfinish(admin);
  return 0;
}
