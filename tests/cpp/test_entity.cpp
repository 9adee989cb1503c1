/*
 * Entities through the C++ layer: JSON round trips, persisted calls with
 * idempotency keys, errors crossing from handler to caller, zero-argument and
 * void methods, notify, timeouts, malformed payloads.
 */
#include "support.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

namespace {

struct GreetRequest {
  std::string name;
  std::vector<int> lucky;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(GreetRequest, name, lucky)

struct Greeting {
  std::string text;
  int lucky_sum = 0;
  std::string entity_id;
  std::string entity_type;
  std::string method;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Greeting, text, lucky_sum, entity_id, entity_type, method)

struct Greeter {
  Greeting greet(cruster::context &ctx, const GreetRequest &r) const {
    Greeting g;
    g.text = "hello " + r.name;
    for (int n : r.lucky) g.lucky_sum += n;
    g.entity_id = std::string(ctx.entity_id());
    g.entity_type = std::string(ctx.entity_type());
    g.method = std::string(ctx.method());
    return g;
  }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Greeter::greet>("greet"));
};

struct IncrementRequest {
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(IncrementRequest, amount)

struct Counter {
  test::store *store;
  std::atomic<int> *increments_run;
  std::atomic<int> *persisted_seen;

  int64_t increment(cruster::context &ctx, const IncrementRequest &r) {
    increments_run->fetch_add(1);
    if (ctx.persisted()) persisted_seen->fetch_add(1);
    return store->add(std::string(ctx.entity_id()), r.amount);
  }
  int64_t get(cruster::context &ctx) const { return store->get(std::string(ctx.entity_id())); }
  void reset(cruster::context &ctx) { store->add(std::string(ctx.entity_id()), -store->get(std::string(ctx.entity_id()))); }

  static constexpr const char *name = "Counter";
  static constexpr auto rpcs = cruster::rpcs(
      cruster::rpc<&Counter::increment>("increment", cruster::persisted),
      cruster::rpc<&Counter::get>("get"), cruster::rpc<&Counter::reset>("reset"));
};

struct WithdrawRequest {
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(WithdrawRequest, amount)

struct Account {
  int64_t withdraw(const WithdrawRequest &r) {
    if (r.amount > 100) throw cruster::error(-1001, "insufficient funds");
    return 100 - r.amount;
  }
  int64_t explode(const WithdrawRequest &) { throw std::runtime_error("the vault is on fire"); }
  int64_t refuse(const WithdrawRequest &) { throw cruster::error(CRUSTER_E_NOT_FOUND, "no such account"); }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Account::withdraw>("withdraw"),
                                             cruster::rpc<&Account::explode>("explode"),
                                             cruster::rpc<&Account::refuse>("refuse"));
};

struct Sleeper {
  /* Answers only once the caller gave up (bounded, so a broken runtime cannot hang the test). */
  bool wait_for_cancel(cruster::context &ctx) {
    for (int i = 0; i < 20000 && !ctx.cancelled(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return ctx.cancelled();
  }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Sleeper::wait_for_cancel>("wait"));
};

void round_trip_of_json_structs_reaches_the_handler_and_back(void **) {
  cruster::runtime rt = test::make_runtime();
  auto greeter = rt.register_entity(Greeter{});
  rt.start();

  Greeting g = greeter.call<&Greeter::greet>("g-1", GreetRequest{"ada", {1, 2, 39}});
  assert_string_equal(g.text.c_str(), "hello ada");
  assert_int_equal(g.lucky_sum, 42);
  assert_string_equal(g.entity_id.c_str(), "g-1");
  assert_string_equal(g.entity_type.c_str(), "Greeter"); // the struct's name by default
  assert_string_equal(g.method.c_str(), "greet");
  assert_string_equal(greeter.entity_type().c_str(), "Greeter");
  rt.stop();
}

void persisted_call_with_idempotency_key_returns_the_stored_reply(void **) {
  test::store store;
  std::atomic<int> runs{0}, persisted{0};
  cruster::runtime rt = test::make_runtime();
  auto counter = rt.register_entity(Counter{&store, &runs, &persisted});
  rt.start();

  auto key = cruster::call_options().idempotency_key("deposit-1");
  assert_int_equal(counter.call<&Counter::increment>("c-1", IncrementRequest{5}, key), 5);
  assert_int_equal(counter.call<&Counter::increment>("c-1", IncrementRequest{5}, key), 5);
  assert_int_equal(runs.load(), 1); // the second call did not run the handler
  assert_int_equal(counter.call<&Counter::get>("c-1"), 5);

  // Without a key every call runs.
  assert_int_equal(counter.call<&Counter::increment>("c-1", IncrementRequest{2}), 7);
  assert_int_equal(runs.load(), 2);
  assert_int_equal(persisted.load(), 2); // declared persisted: delivered through storage
  rt.stop();
}

void application_error_code_arrives_intact(void **) {
  cruster::runtime rt = test::make_runtime();
  auto account = rt.register_entity(Account{});
  rt.start();

  assert_int_equal(account.call<&Account::withdraw>("a-1", WithdrawRequest{30}), 70);
  std::string message;
  int st = test::status_of(
      [&] { account.call<&Account::withdraw>("a-1", WithdrawRequest{500}); }, &message);
  assert_int_equal(st, -1001);
  assert_non_null(std::strstr(message.c_str(), "insufficient funds"));

  st = test::status_of([&] { account.call<&Account::refuse>("a-1", WithdrawRequest{1}); },
                       &message);
  assert_int_equal(st, CRUSTER_E_NOT_FOUND);
  assert_non_null(std::strstr(message.c_str(), "no such account"));
  rt.stop();
}

void std_exception_becomes_handler_error_with_its_message(void **) {
  cruster::runtime rt = test::make_runtime();
  auto account = rt.register_entity(Account{});
  rt.start();

  std::string message;
  int st = test::status_of([&] { account.call<&Account::explode>("a-1", WithdrawRequest{1}); },
                           &message);
  assert_int_equal(st, CRUSTER_E_HANDLER);
  assert_non_null(std::strstr(message.c_str(), "the vault is on fire"));
  rt.stop();
}

void zero_argument_and_void_methods_work_and_notify_is_accepted(void **) {
  test::store store;
  std::atomic<int> runs{0}, persisted{0};
  cruster::runtime rt = test::make_runtime();
  auto counter = rt.register_entity(Counter{&store, &runs, &persisted});
  rt.start();

  counter.notify<&Counter::increment>("c-2", IncrementRequest{3});
  // notify returns once the message is stored; its handler runs later (a
  // generous bounded wait: only a notify that is never handled fails it).
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (runs.load() < 1 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  assert_int_equal(runs.load(), 1);
  assert_int_equal(counter.call<&Counter::get>("c-2"), 3);
  counter.call<&Counter::reset>("c-2"); // void result, no request (payload JSON null)
  assert_int_equal(counter.call<&Counter::get>("c-2"), 0);
  rt.stop();
}

void call_past_its_timeout_throws_timeout(void **) {
  cruster::runtime rt = test::make_runtime();
  auto sleeper = rt.register_entity(Sleeper{});
  rt.start();

  int st = test::status_of([&] {
    sleeper.call<&Sleeper::wait_for_cancel>(
        "s-1", cruster::call_options().timeout(std::chrono::milliseconds(50)));
  });
  assert_int_equal(st, CRUSTER_E_TIMEOUT);
  rt.stop();
}

void malformed_payload_from_a_raw_caller_fails_with_malformed(void **) {
  cruster::runtime rt = test::make_runtime();
  rt.register_entity(Greeter{});
  rt.start();

  const char bad[] = "{not json";
  cruster_error *err = nullptr;
  void *reply = nullptr;
  size_t len = 0;
  int st = cruster_send_sync(rt.handle(), "Greeter", "g-1", "greet", bad, sizeof bad - 1, nullptr,
                             &reply, &len, &err);
  assert_int_equal(st, CRUSTER_E_MALFORMED);
  cruster_error_free(err);
  cruster_free(reply);

  // A well-formed JSON payload of the wrong shape is malformed as well.
  const char wrong[] = "{\"name\": 12}";
  st = cruster_send_sync(rt.handle(), "Greeter", "g-1", "greet", wrong, sizeof wrong - 1, nullptr,
                         &reply, &len, &err);
  assert_int_equal(st, CRUSTER_E_MALFORMED);
  cruster_error_free(err);
  rt.stop();
}

void unknown_entity_type_is_reported_through_a_client(void **) {
  cruster::runtime rt = test::make_runtime();
  rt.start();
  auto greeter = rt.client<Greeter>(); // never registered here
  int st = test::status_of([&] { greeter.call<&Greeter::greet>("g-1", GreetRequest{"x", {}}); });
  assert_int_equal(st, CRUSTER_E_UNKNOWN_ENTITY_TYPE);
  rt.stop();
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(round_trip_of_json_structs_reaches_the_handler_and_back),
      cmocka_unit_test(persisted_call_with_idempotency_key_returns_the_stored_reply),
      cmocka_unit_test(application_error_code_arrives_intact),
      cmocka_unit_test(std_exception_becomes_handler_error_with_its_message),
      cmocka_unit_test(zero_argument_and_void_methods_work_and_notify_is_accepted),
      cmocka_unit_test(call_past_its_timeout_throws_timeout),
      cmocka_unit_test(malformed_payload_from_a_raw_caller_fails_with_malformed),
      cmocka_unit_test(unknown_entity_type_is_reported_through_a_client),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
