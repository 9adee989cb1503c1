/*
 * Durable workflows through the C++ layer on PostgreSQL: an activity's SQL
 * on activity_context::pg() commits once with its journal row; an activity
 * that throws after its SQL leaves nothing; an execution suspended by one
 * runtime is finished by the next one on the same storage, without running
 * its journaled activity again.
 */
#include "pg_support.hpp"

#include <chrono>
#include <cstring>
#include <string>

namespace {

using namespace std::chrono_literals;

struct Deposit {
  std::string account;
  int64_t amount = 0;
  bool fail_after_sql = false;
  int64_t then_sleep_ms = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Deposit, account, amount, fail_after_sql, then_sleep_ms)

struct Deposited {
  int64_t rows = 0;
  std::string execution_id;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Deposited, rows, execution_id)

/** Runs one statement with text parameters on `conn`; throws cruster::error on failure. */
int64_t exec_count(PGconn *conn, const std::string &sql, const std::vector<std::string> &params) {
  std::vector<const char *> values;
  for (const std::string &p : params)
    values.push_back(p.c_str());
  PGresult *res = PQexecParams(conn, sql.c_str(), static_cast<int>(values.size()), nullptr,
                               values.data(), nullptr, nullptr, 0);
  const ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    std::string m = PQresultErrorMessage(res);
    PQclear(res);
    throw cruster::error(CRUSTER_E_PERSISTENCE, m);
  }
  int64_t n = 0;
  if (st == PGRES_TUPLES_OK && PQntuples(res) > 0)
    n = std::stoll(PQgetvalue(res, 0, 0));
  PQclear(res);
  return n;
}

struct Deposits {
  std::string table; // schema-qualified
  std::atomic<int> *activity_runs;

  Deposited execute(cruster::workflow_context<Deposits> &wf, const Deposit &d) {
    Deposited out;
    out.rows = wf.activity<&Deposits::insert>(d);
    if (d.then_sleep_ms > 0)
      wf.sleep(std::chrono::milliseconds(d.then_sleep_ms));
    out.execution_id = std::string(wf.execution_id());
    return out;
  }

  int64_t insert(cruster::activity_context &a, const Deposit &d) {
    activity_runs->fetch_add(1);
    PGconn *conn = a.pg(); // the open transaction of this attempt
    if (conn == nullptr)
      throw cruster::error(CRUSTER_E_INTERNAL, "no transaction");
    exec_count(conn,
               "INSERT INTO " + table + " (execution_id, account, amount) VALUES ($1, $2, $3)",
               {std::string(a.execution_id()), d.account, std::to_string(d.amount)});
    if (d.fail_after_sql)
      throw cruster::error(-1300, "refused after the insert");
    return exec_count(conn, "SELECT count(*) FROM " + table + " WHERE account = $1", {d.account});
  }

  static constexpr auto activities =
      cruster::activities(cruster::activity<&Deposits::insert>("insert"));
};

cruster::runtime pg_runtime(const test::pg_schema &schema) {
  cruster::config cfg;
  cfg.set("shards_per_group", 16)
      .set("storage_poll_interval", 50ms)
      .set("default_call_timeout", 60s)
      .log_level(CRUSTER_LOG_WARN);
  return cruster::runtime(cfg, cruster::pg_storage(schema.conninfo()));
}

int64_t rows(const test::pg_schema &schema, const std::string &table, const std::string &account) {
  PGconn *conn = PQconnectdb(schema.conninfo().c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string m = PQerrorMessage(conn);
    PQfinish(conn);
    fail_msg("connect: %s", m.c_str());
  }
  int64_t n = -1;
  try {
    n = exec_count(conn, "SELECT count(*) FROM " + table + " WHERE account = $1", {account});
  } catch (const cruster::error &e) {
    PQfinish(conn);
    fail_msg("count: %s", e.what());
  }
  PQfinish(conn);
  return n;
}

void activity_sql_commits_once_with_its_journal_row(void **) {
  test::pg_schema schema;
  const std::string table = schema.name() + ".deposits";
  test::libpq::get().exec(schema.conninfo(),
                          "CREATE TABLE " + table +
                              " (execution_id text, account text, amount bigint)");
  std::atomic<int> runs{0};
  cruster::runtime rt = pg_runtime(schema);
  auto deposits = rt.register_workflow(Deposits{table, &runs});
  rt.start();

  Deposited d = deposits.with_key("d-1").execute(Deposit{"alice", 10, false, 0});
  assert_int_equal(d.rows, 1);
  assert_string_equal(d.execution_id.c_str(), deposits.with_key("d-1").execution_id().c_str());
  // The same key: the stored answer; the activity does not run again.
  assert_int_equal(deposits.with_key("d-1").execute(Deposit{"alice", 10, false, 0}).rows, 1);
  assert_int_equal(runs.load(), 1);
  assert_int_equal(rows(schema, table, "alice"), 1);

  // An activity that throws after its SQL: rolled back, and its code fails the workflow.
  std::string message;
  assert_int_equal(test::status_of(
                       [&] {
                         deposits.with_key("d-2").execute(Deposit{"bob", 5, true, 0});
                       },
                       &message),
                   -1300);
  assert_non_null(std::strstr(message.c_str(), "refused after the insert"));
  assert_int_equal(rows(schema, table, "bob"), 0);
  rt.stop();
}

void a_suspended_execution_is_finished_by_the_next_runtime(void **) {
  test::pg_schema schema;
  const std::string table = schema.name() + ".deposits";
  test::libpq::get().exec(schema.conninfo(),
                          "CREATE TABLE " + table +
                              " (execution_id text, account text, amount bigint)");
  std::atomic<int> runs{0};
  std::string id;
  {
    cruster::runtime first = pg_runtime(schema);
    auto deposits = first.register_workflow(Deposits{table, &runs});
    first.start();
    id = deposits.with_key("d-3").start(Deposit{"carol", 7, false, 800});
    assert_true(test::eventually([&] { return runs.load() == 1; }, 30000));
    assert_false(deposits.poll(id).has_value()); // sleeping
    first.stop();
  }
  cruster::runtime second = pg_runtime(schema);
  auto deposits = second.register_workflow(Deposits{table, &runs});
  second.start();
  Deposited d = deposits.join(id);
  assert_int_equal(d.rows, 1);
  assert_string_equal(d.execution_id.c_str(), id.c_str());
  assert_int_equal(runs.load(), 1); // journaled: not run again after the restart
  assert_int_equal(rows(schema, table, "carol"), 1);
  second.stop();
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(activity_sql_commits_once_with_its_journal_row),
      cmocka_unit_test(a_suspended_execution_is_finished_by_the_next_runtime),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
