/*
 * PostgreSQL helpers of the C++ tests (the equivalent of
 * tests/integration/pg_support.h). Not a test program itself.
 *
 * Every test isolates itself in its own schema t_cpp_<pid>_<n>_<random>,
 * handed to cruster through "options=-csearch_path=<schema>" and dropped at
 * the end (with libpq, which the C++ test programs link for this).
 *
 * The tests FAIL (never skip) when CRUSTER_TEST_PG is missing.
 */
#ifndef CRUSTER_TESTS_CPP_PG_SUPPORT_HPP
#define CRUSTER_TESTS_CPP_PG_SUPPORT_HPP

#include "support.hpp"

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>

namespace test {

/** The connection string of the test server; fails the test when unset. */
inline std::string pg_base_conninfo() {
  const char *c = std::getenv("CRUSTER_TEST_PG");
  if (c == nullptr || *c == '\0') {
    fail_msg("CRUSTER_TEST_PG is not set: the PostgreSQL tests need the server of "
             "`scripts/dev services start` (then `source .dev/env`)");
  }
  return c;
}

/** Runs one statement on a connection of its own. */
class libpq {
public:
  static const libpq &get() {
    static const libpq instance;
    return instance;
  }

  /** Runs `sql` on a fresh connection to `conninfo`; fails the test on error. */
  void exec(const std::string &conninfo, const std::string &sql) const {
    std::string msg;
    if (!try_exec(conninfo, sql, &msg)) fail_msg("SQL failed: %s\n  %s", sql.c_str(), msg.c_str());
  }
  /** Runs `sql`; false (and *msg) on error. Never fails the test (for destructors). */
  bool try_exec(const std::string &conninfo, const std::string &sql, std::string *msg) const {
    PGconn *conn = PQconnectdb(conninfo.c_str());
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
      *msg = conn != nullptr ? PQerrorMessage(conn) : "out of memory";
      PQfinish(conn);
      return false;
    }
    PGresult *res = PQexec(conn, sql.c_str());
    ExecStatusType st = PQresultStatus(res);
    *msg = res != nullptr ? PQresultErrorMessage(res) : "no result";
    PQclear(res);
    PQfinish(conn);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
  }
};

/** A throwaway schema, migrated; dropped by the destructor. */
class pg_schema {
public:
  pg_schema() : base_(pg_base_conninfo()) {
    static std::atomic<int> seq{0};
    std::random_device rd;
    name_ = "t_cpp_" + std::to_string(static_cast<long>(getpid())) + "_" +
            std::to_string(seq.fetch_add(1)) + "_" + std::to_string(rd() % 1000000);
    conninfo_ = base_ + " options=-csearch_path=" + name_;
    libpq::get().exec(base_, "CREATE SCHEMA " + name_);
    try {
      cruster::pg_migrate(conninfo_);
    } catch (const cruster::error &e) {
      fail_msg("pg_migrate: %s", e.what());
    }
  }
  ~pg_schema() {
    std::string msg;
    (void)libpq::get().try_exec(base_, "SET client_min_messages = warning; DROP SCHEMA IF EXISTS " + name_ + " CASCADE", &msg);
  }
  pg_schema(const pg_schema &) = delete;
  pg_schema &operator=(const pg_schema &) = delete;

  const std::string &name() const noexcept { return name_; }
  /** The base connection string with search_path = this schema. */
  const std::string &conninfo() const noexcept { return conninfo_; }

private:
  std::string base_;
  std::string name_;
  std::string conninfo_;
};

/** Waits up to `ms` until pred() is true; returns its last value. */
template <class P> bool eventually(P &&pred, long ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

} // namespace test

#endif
