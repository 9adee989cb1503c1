/*
 * RPC groups composed into entities, and visibility: protected methods are
 * reachable from other entities (context::client) but refused to callers
 * without a `caller`; private methods are never dispatched.
 */
#include "support.hpp"

#include <cstring>
#include <future>
#include <vector>

namespace {

// ---- an rpc group used by two entity types --------------------------------

struct LogActionRequest {
  std::string action;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(LogActionRequest, action)

struct AuditEntry {
  std::string entity_type;
  std::string entity_id;
  std::string action;
  int64_t sequence = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(AuditEntry, entity_type, entity_id, action, sequence)

class audit_log {
public:
  int64_t append(const std::string &line) {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.push_back(line);
    return static_cast<int64_t>(lines_.size());
  }
  std::vector<std::string> lines() const {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }

private:
  mutable std::mutex mu_;
  std::vector<std::string> lines_;
};

struct Auditable {
  audit_log *log;
  AuditEntry log_action(cruster::context &ctx, const LogActionRequest &r) {
    AuditEntry e;
    e.entity_type = std::string(ctx.entity_type());
    e.entity_id = std::string(ctx.entity_id());
    e.action = r.action;
    e.sequence = log->append(e.entity_type + "/" + e.entity_id + ": " + r.action);
    return e;
  }
  static constexpr auto rpcs =
      cruster::rpcs(cruster::rpc<&Auditable::log_action>("log_action"));
};

struct Pingable {
  std::string pong() const { return "pong"; }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Pingable::pong>("pong"));
};

struct RenameRequest {
  std::string name;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RenameRequest, name)

struct User {
  test::store *store;
  std::string rename(cruster::context &ctx, const RenameRequest &r) {
    store->add(std::string(ctx.entity_id()), 1);
    return r.name;
  }
  using groups = cruster::groups<Auditable, Pingable>;
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&User::rename>("rename"));
};

struct Team {
  int64_t size() const { return 3; }
  using groups = cruster::groups<Auditable>;
  static constexpr auto options = cruster::entity_options().name("team").mailbox_capacity(10);
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Team::size>("size"));
};

void group_method_is_callable_through_the_composing_entity(void **) {
  test::store store;
  audit_log user_log, team_log;
  cruster::runtime rt = test::make_runtime();
  // Group instances in any order; Pingable is default-constructible and may be left out.
  auto users = rt.register_entity(User{&store}, Auditable{&user_log});
  auto teams = rt.register_entity(Team{}, Auditable{&team_log});
  rt.start();

  AuditEntry e = users.call<&Auditable::log_action>("u1", LogActionRequest{"login"});
  assert_string_equal(e.entity_type.c_str(), "User");
  assert_string_equal(e.entity_id.c_str(), "u1"); // the composing entity's id
  assert_string_equal(e.action.c_str(), "login");
  assert_int_equal(e.sequence, 1);
  assert_string_equal(users.call<&Pingable::pong>("u1").c_str(), "pong");
  assert_string_equal(users.call<&User::rename>("u1", RenameRequest{"ada"}).c_str(), "ada");

  AuditEntry t = teams.call<&Auditable::log_action>("t9", LogActionRequest{"grow"});
  assert_string_equal(t.entity_type.c_str(), "team"); // options.name
  assert_string_equal(t.entity_id.c_str(), "t9");
  assert_int_equal(teams.call<&Team::size>("t9"), 3);

  // Each registration uses its own group instance.
  assert_int_equal(static_cast<int>(user_log.lines().size()), 1);
  assert_int_equal(static_cast<int>(team_log.lines().size()), 1);
  assert_string_equal(team_log.lines()[0].c_str(), "team/t9: grow");
  rt.stop();
}

// ---- visibility ------------------------------------------------------------

struct SyncRequest {
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(SyncRequest, amount)

struct Ledger {
  test::store *store;
  int64_t sync(cruster::context &ctx, const SyncRequest &r) {
    if (!ctx.from_entity()) throw cruster::error(-1999, "sync called from outside");
    return store->add(std::string(ctx.entity_id()), r.amount);
  }
  bool validate(const SyncRequest &r) const { return r.amount >= 0; }
  static constexpr auto rpcs =
      cruster::rpcs(cruster::rpc<&Ledger::sync>("sync", cruster::protected_),
                    cruster::rpc<&Ledger::validate>("validate", cruster::private_));
};

struct TransferRequest {
  std::string ledger;
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TransferRequest, ledger, amount)

struct Bank {
  int64_t transfer(cruster::context &ctx, const TransferRequest &r) {
    return ctx.client<Ledger>().call<&Ledger::sync>(r.ledger, SyncRequest{r.amount});
  }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Bank::transfer>("transfer"));
};

struct raw_reply {
  int status = 0;
  std::string message;
};

void on_raw_reply(void *user, int status, const void *, size_t, const char *message) {
  auto *p = static_cast<std::promise<raw_reply> *>(user);
  p->set_value(raw_reply{status, message != nullptr ? message : ""});
}

raw_reply raw_send(cruster::runtime &rt, const char *type, const char *method,
                   const std::string &payload) {
  std::promise<raw_reply> p;
  std::future<raw_reply> f = p.get_future();
  cruster_call_opts opts = CRUSTER_CALL_OPTS_INIT; // caller = NULL: a public caller
  int st = cruster_send(rt.handle(), type, "l-1", method, payload.data(), payload.size(), &opts,
                        on_raw_reply, &p, NULL);
  if (st != CRUSTER_OK) return raw_reply{st, "refused synchronously"};
  return f.get();
}

void protected_method_is_callable_from_another_entity_only(void **) {
  test::store store;
  cruster::runtime rt = test::make_runtime();
  rt.register_entity(Ledger{&store});
  auto bank = rt.register_entity(Bank{});
  rt.start();

  assert_int_equal(bank.call<&Bank::transfer>("b-1", TransferRequest{"l-1", 25}), 25);
  assert_int_equal(bank.call<&Bank::transfer>("b-1", TransferRequest{"l-1", 5}), 30);
  assert_int_equal(store.get("l-1"), 30);

  raw_reply r = raw_send(rt, "Ledger", "sync", "{\"amount\": 1}");
  assert_int_equal(r.status, CRUSTER_E_FORBIDDEN);
  assert_int_equal(store.get("l-1"), 30); // the handler did not run

  r = raw_send(rt, "Ledger", "validate", "{\"amount\": 1}");
  assert_int_equal(r.status, CRUSTER_E_UNKNOWN_METHOD); // private: never dispatched
  rt.stop();
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(group_method_is_callable_through_the_composing_entity),
      cmocka_unit_test(protected_method_is_callable_from_another_entity_only),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
