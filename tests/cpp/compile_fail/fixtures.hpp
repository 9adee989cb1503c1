/* Entities shared by the compile-fail checks (see check.sh). */
#ifndef CRUSTER_COMPILE_FAIL_FIXTURES_HPP
#define CRUSTER_COMPILE_FAIL_FIXTURES_HPP

#include <cruster/cruster.hpp>

struct SyncRequest {
  int amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(SyncRequest, amount)

struct Auditable {
  std::string log_action(cruster::context &ctx) const { return std::string(ctx.entity_id()); }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Auditable::log_action>("log_action"));
};

struct Ledger {
  int get() const { return 1; }
  void sync(const SyncRequest &) {}
  bool validate(const SyncRequest &) const { return true; }
  int helper() const { return 2; } // a member function, but not an rpc
  using groups = cruster::groups<Auditable>;
  static constexpr auto rpcs =
      cruster::rpcs(cruster::rpc<&Ledger::get>("get"),
                    cruster::rpc<&Ledger::sync>("sync", cruster::protected_),
                    cruster::rpc<&Ledger::validate>("validate", cruster::private_));
};

struct Plain { // includes no group
  int get() const { return 3; }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Plain::get>("get"));
};

#endif
