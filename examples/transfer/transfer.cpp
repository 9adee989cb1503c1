// transfer.cpp -- the money transfer of transfer.c with the C++ layer: a
// durable workflow in PostgreSQL.
//
// The workflow "Transfer" moves an amount between two accounts:
//   1. activity "debit": takes the amount from the payer (fails when the
//      balance is too low);
//   2. a durable sleep (a cooling-off period);
//   3. waits for the deferred "approval", resolved by any client;
//   4. activity "credit" pays the payee -- or, when refused, activity
//      "refund" gives the amount back.
// Each activity's SQL runs on activity_context::pg(), the transaction cruster
// opens for it, and commits together with its journal row: it takes effect
// exactly once, even if the process dies and the workflow replays. While it
// sleeps or waits, the execution holds no thread: the sleep and the await
// throw cruster::suspended (not a std::exception), execute unwinds, and it
// runs again from the top when the wait ends.
//
// The demo runs one transfer to completion, asks again with the same key (the
// stored answer; nothing moves twice), then starts a second transfer, stops
// the runtime while that one waits for approval, and finishes it in a new
// runtime -- as after a crash.
//
//   transfer_cpp "host=127.0.0.1 port=5432 dbname=app user=app"
//
// (without an argument it uses $CRUSTER_TEST_PG, which scripts/dev sets).
// The tables go to the schema "transfer_demo_cpp".
#include <cruster/cruster.hpp>
#include <libpq-fe.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

using namespace std::chrono_literals;

struct TransferRequest {
  std::string from, to;
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TransferRequest, from, to, amount)

struct Approval {
  bool yes = false;
  std::string by;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Approval, yes, by)

/** Runs one statement on `db` with text parameters; the rows it changed.
 *  Throws cruster::error when it fails (the activity's attempt fails, and
 *  its transaction rolls back). */
static int64_t exec(PGconn *db, const char *sql, const std::vector<std::string> &params) {
  std::vector<const char *> v;
  for (const std::string &p : params) v.push_back(p.c_str());
  PGresult *r = PQexecParams(db, sql, static_cast<int>(v.size()), nullptr, v.data(), nullptr,
                             nullptr, 0);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    std::string m = PQresultErrorMessage(r);
    PQclear(r);
    throw cruster::error(CRUSTER_E_PERSISTENCE, m);
  }
  int64_t n = std::atoll(PQcmdTuples(r));
  PQclear(r);
  return n;
}

struct Transfer {
  static constexpr cruster::deferred<Approval> approval{"approval"};

  std::string execute(cruster::workflow_context<Transfer> &wf, const TransferRequest &r) {
    wf.activity<&Transfer::debit>(r);     // journaled: runs once
    wf.sleep(200ms);                      // cooling-off: suspends, no thread held
    Approval a = wf.await(approval);      // resolved by any client
    if (a.yes) {
      wf.activity<&Transfer::credit>(r);
      return "transferred, approved by " + a.by;
    }
    wf.activity<&Transfer::refund>(r);
    return "refused and refunded";
  }

  // The activities' SQL runs in their transactions (a.pg()); never COMMIT it.
  void debit(cruster::activity_context &a, const TransferRequest &r) {
    int64_t n = exec(a.pg(),
                     "UPDATE accounts SET balance = balance - $2::int8"
                     " WHERE id = $1 AND balance - $2::int8 >= 0",
                     {r.from, std::to_string(r.amount)});
    if (n != 1) throw cruster::error(CRUSTER_E_APPLICATION - 1, "insufficient funds");
  }
  void credit(cruster::activity_context &a, const TransferRequest &r) {
    add(a, r.to, r.amount);
  }
  void refund(cruster::activity_context &a, const TransferRequest &r) {
    add(a, r.from, r.amount);
  }

  static constexpr auto activities = cruster::activities(
      cruster::activity<&Transfer::debit>("debit"), cruster::activity<&Transfer::credit>("credit"),
      cruster::activity<&Transfer::refund>("refund"));

private:
  static void add(cruster::activity_context &a, const std::string &id, int64_t amount) {
    if (exec(a.pg(), "UPDATE accounts SET balance = balance + $2::int8 WHERE id = $1",
             {id, std::to_string(amount)}) != 1)
      throw cruster::error(CRUSTER_E_PERSISTENCE, "no account " + id);
  }
};

/** A runtime on PostgreSQL with "Transfer" registered, started. */
static std::unique_ptr<cruster::runtime> start(const std::string &conninfo) {
  cruster::config cfg;
  cfg.log_level(CRUSTER_LOG_WARN).set("storage_auto_migrate", "true");
  auto rt = std::make_unique<cruster::runtime>(cfg, cruster::pg_storage(conninfo));
  rt->register_workflow(Transfer{});
  rt->start();
  return rt;
}

static void balances(PGconn *db, const char *when) {
  PGresult *r =
      PQexec(db, "SELECT string_agg(id || '=' || balance, ' ' ORDER BY id) FROM accounts");
  std::printf("  balances %s: %s\n", when,
              PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?");
  PQclear(r);
}

int main(int argc, char **argv) {
  const char *base = argc > 1 ? argv[1] : std::getenv("CRUSTER_TEST_PG");
  if (!base) {
    std::fprintf(stderr, "usage: transfer_cpp CONNINFO (or set CRUSTER_TEST_PG)\n");
    return 2;
  }
  const std::string conninfo = std::string(base) + " options=-csearch_path=transfer_demo_cpp";
  PGconn *admin = PQconnectdb(base);
  PQsetNoticeProcessor(admin, [](void *, const char *) {}, nullptr);
  PGresult *r = PQexec(admin,
                       "DROP SCHEMA IF EXISTS transfer_demo_cpp CASCADE;"
                       "CREATE SCHEMA transfer_demo_cpp;"
                       "CREATE TABLE transfer_demo_cpp.accounts (id TEXT PRIMARY KEY, balance INT8);"
                       "INSERT INTO transfer_demo_cpp.accounts VALUES ('alice', 100), ('bob', 0);"
                       "SET search_path = transfer_demo_cpp");
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    std::fprintf(stderr, "transfer_cpp: %s", PQerrorMessage(admin));
    PQclear(r);
    PQfinish(admin);
    return 1;
  }
  PQclear(r);
  int status = 0;
  try {
    auto rt = start(conninfo);
    balances(admin, "at the start");

    // 1. One transfer, approved while it sleeps or waits.
    const TransferRequest t1{"alice", "bob", 30};
    auto transfers = rt->workflow<Transfer>().with_timeout(20s);
    std::string id = transfers.with_key("t-1").start(t1);
    std::printf("started transfer t-1 (execution %s): debit, sleep, wait for approval\n",
                id.c_str());
    transfers.resolve(id, Transfer::approval, Approval{true, "ada"});
    std::printf("  approved by a client\n");
    std::printf("  answer: %s\n", transfers.join(id).c_str());
    balances(admin, "after t-1");
    // The same key again: the stored answer, nothing moves.
    std::string again = transfers.with_key("t-1").execute(t1);
    std::printf("t-1 again (same key): %s -- answered from storage\n", again.c_str());
    balances(admin, "after asking again");

    // 2. A transfer that outlives its runtime.
    const TransferRequest t2{"alice", "bob", 50};
    id = transfers.with_key("t-2").start(t2);
    std::printf("started transfer t-2; stopping the runtime while it waits\n");
    rt.reset();
    balances(admin, "with t-2 waiting, no runtime");
    rt = start(conninfo); // a new life, as after a crash
    auto next = rt->workflow<Transfer>().with_timeout(20s);
    next.resolve(id, Transfer::approval, Approval{true, "grace"});
    std::printf("t-2 finished in a new runtime: %s\n", next.join(id).c_str());
    balances(admin, "at the end");
  } catch (const cruster::error &e) {
    std::fprintf(stderr, "transfer_cpp: %s: %s\n", e.status_name(), e.what());
    status = 1;
  }
  PQfinish(admin);
  return status;
}
