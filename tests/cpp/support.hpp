/*
 * Shared helpers of the C++ tests (cmocka). Not a test program itself.
 */
#ifndef CRUSTER_TESTS_CPP_SUPPORT_HPP
#define CRUSTER_TESTS_CPP_SUPPORT_HPP

#include <cruster/cruster.hpp>

// cmocka needs these before its header.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// The installed cmocka.h declares its functions without C linkage for C++.
extern "C" {
#include <cmocka.h>
}

#include <map>
#include <mutex>
#include <string>

namespace test {

/** The status a callable throws as cruster::error; CRUSTER_OK if it returns. */
template <class F> int status_of(F &&f, std::string *message = nullptr) {
  try {
    f();
  } catch (const cruster::error &e) {
    if (message != nullptr) *message = e.what();
    return e.status();
  }
  return CRUSTER_OK;
}

/** A started single-node runtime with in-memory storage. */
inline cruster::runtime make_runtime() {
  cruster::config cfg;
  cfg.set("shards_per_group", 16).log_level(CRUSTER_LOG_WARN);
  return cruster::runtime(cfg, cruster::memory_storage());
}

/** "Your database": state outside the stateless entities. */
class store {
public:
  int64_t add(const std::string &key, int64_t amount) {
    std::lock_guard<std::mutex> lock(mu_);
    return values_[key] += amount;
  }
  int64_t get(const std::string &key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = values_.find(key);
    return it == values_.end() ? 0 : it->second;
  }

private:
  mutable std::mutex mu_;
  std::map<std::string, int64_t> values_;
};

} // namespace test

#endif
