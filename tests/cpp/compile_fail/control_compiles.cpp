// The control: everything the failing files try, done the allowed way, compiles.
#include "fixtures.hpp"

struct Bank {
  int transfer(cruster::context &ctx, const SyncRequest &r) {
    auto ledger = ctx.client<Ledger>();
    ledger.call<&Ledger::sync>("l-1", r);                    // protected: fine internally
    ledger.notify<&Ledger::sync>("l-1", r);
    ledger.call_async<&Ledger::sync>("l-1", r).get();
    std::string who = ledger.call<&Auditable::log_action>("l-1"); // group method
    bool synced = ledger.poll<&Ledger::sync>("l-1", "key-1");        // void: bool
    ledger.join<&Ledger::sync>("l-1", "key-1");
    ledger.join_async<&Ledger::sync>("l-1", "key-1", [](cruster::result<void>) {});
    (void)synced;
    return ledger.call<&Ledger::get>("l-1") + static_cast<int>(who.size());
  }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Bank::transfer>("transfer"));
};

void use(cruster::runtime &rt) {
  auto ledger = rt.register_entity(Ledger{}, Auditable{});
  auto plain = rt.register_entity(Plain{});
  auto bank = rt.register_entity(Bank{});
  (void)ledger.call<&Ledger::get>("l-1");
  (void)ledger.call<&Auditable::log_action>("l-1");
  (void)plain.call<&Plain::get>("p-1");
  (void)bank.call<&Bank::transfer>("b-1", SyncRequest{1});
  std::optional<int> polled = ledger.poll<&Ledger::get>("l-1", "key-1");
  std::future<std::string> joined = ledger.join_async<&Auditable::log_action>("l-1", "key-1");
  int64_t id = ledger.persisted_request_id<&Ledger::get>("l-1", "key-1");
  std::vector<cruster::dead_letter> dead = rt.dead_letters(10);
  if (!dead.empty()) rt.redeliver(dead[0].request_id + id + polled.value_or(0));
  (void)joined;
}
