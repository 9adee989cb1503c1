/* Workflows and activity groups shared by the workflow compile-fail checks (see check.sh). */
#ifndef CRUSTER_COMPILE_FAIL_WORKFLOW_FIXTURES_HPP
#define CRUSTER_COMPILE_FAIL_WORKFLOW_FIXTURES_HPP

#include <cruster/cruster.hpp>

struct OrderRequest {
  std::string order;
  int amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(OrderRequest, order, amount)

struct OtherRequest {
  int x = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(OtherRequest, x)

struct Approval {
  std::string by;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Approval, by)

struct Inventory {
  bool reserve(cruster::activity_context &, const OrderRequest &) { return true; }
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Inventory::reserve>("reserve"));
};

struct Shipping { // a group Order does not include
  std::string ship(const OrderRequest &r) { return r.order; }
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Shipping::ship>("ship"));
};

struct Order {
  static constexpr cruster::deferred<Approval> approval{"approval"};
  static constexpr cruster::deferred<void> go{"go"};

  int charge(cruster::activity_context &, const OrderRequest &r) { return r.amount; }
  void notify() {}
  int helper(const OrderRequest &r) { return r.amount; } // a member function, not an activity

  std::string execute(cruster::workflow_context<Order> &wf, const OrderRequest &r) {
    if (wf.activity<&Inventory::reserve>(r))
      wf.activity<&Order::charge>(r);
    return r.order;
  }

  using groups = cruster::groups<Inventory>;
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Order::charge>("charge", cruster::retries(3)),
                          cruster::activity<&Order::notify>("notify"));
};

#endif
