/*
 * PostgreSQL helpers of the C++ tests (the equivalent of
 * tests/integration/pg_support.h). Not a test program itself.
 *
 * Every test isolates itself in its own schema t_cpp_<pid>_<n>_<random>,
 * handed to cruster through "options=-csearch_path=<schema>" and dropped at
 * the end. The C++ test programs link only cruster and cmocka (see
 * tests/CMakeLists.txt), not libpq, so the few libpq functions needed to
 * create and drop the schema are looked up at run time: libpq.so.5 is
 * already loaded as a dependency of libcruster, dlopen just returns it.
 *
 * The tests FAIL (never skip) when CRUSTER_TEST_PG is missing.
 */
#ifndef CRUSTER_TESTS_CPP_PG_SUPPORT_HPP
#define CRUSTER_TESTS_CPP_PG_SUPPORT_HPP

#include "support.hpp"

#include <dlfcn.h>
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

/** The handful of libpq calls needed to run one statement (ABI of libpq.so.5). */
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
    if (!load_error_.empty()) {
      *msg = load_error_;
      return false;
    }
    void *conn = connectdb_(conninfo.c_str());
    if (conn == nullptr || status_(conn) != 0 /* CONNECTION_OK */) {
      *msg = conn != nullptr ? error_message_(conn) : "out of memory";
      finish_(conn);
      return false;
    }
    void *res = exec_(conn, sql.c_str());
    int st = result_status_(res);
    *msg = res != nullptr ? result_error_message_(res) : "no result";
    clear_(res);
    finish_(conn);
    return st == 1 /* PGRES_COMMAND_OK */ || st == 2 /* PGRES_TUPLES_OK */;
  }

private:
  libpq() {
    // (No fail_msg here: it would longjmp out of a static's initialisation.)
    void *h = dlopen("libpq.so.5", RTLD_NOW | RTLD_GLOBAL);
    if (h == nullptr) {
      load_error_ = std::string("cannot load libpq.so.5: ") + dlerror();
      return;
    }
    bool ok = load(h, "PQconnectdb", connectdb_) && load(h, "PQstatus", status_) &&
              load(h, "PQerrorMessage", error_message_) && load(h, "PQexec", exec_) &&
              load(h, "PQresultStatus", result_status_) &&
              load(h, "PQresultErrorMessage", result_error_message_) &&
              load(h, "PQclear", clear_) && load(h, "PQfinish", finish_);
    if (!ok) load_error_ = "libpq.so.5 lacks a function the tests need";
  }
  template <class F> static bool load(void *h, const char *name, F &fn) {
    void *p = dlsym(h, name);
    fn = reinterpret_cast<F>(p);
    return p != nullptr;
  }

  std::string load_error_;

  // PGconn* and PGresult* are opaque: void* here; the enums are ints.
  void *(*connectdb_)(const char *) = nullptr;
  int (*status_)(const void *) = nullptr;
  char *(*error_message_)(const void *) = nullptr;
  void *(*exec_)(void *, const char *) = nullptr;
  int (*result_status_)(const void *) = nullptr;
  char *(*result_error_message_)(const void *) = nullptr;
  void (*clear_)(void *) = nullptr;
  void (*finish_)(void *) = nullptr;
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
