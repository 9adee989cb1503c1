/*
 * Asynchronous results: std::future and callbacks, for values, void and errors.
 */
#include "support.hpp"

#include <cstring>
#include <future>

namespace {

struct AddRequest {
  int64_t a = 0;
  int64_t b = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(AddRequest, a, b)

struct Calculator {
  int64_t add(const AddRequest &r) const { return r.a + r.b; }
  int64_t deny(const AddRequest &) const { throw cruster::error(-1042, "calculator says no"); }
  void ping() const {}
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Calculator::add>("add"),
                                             cruster::rpc<&Calculator::deny>("deny"),
                                             cruster::rpc<&Calculator::ping>("ping"));
};

void future_holds_the_result(void **) {
  cruster::runtime rt = test::make_runtime();
  auto calc = rt.register_entity(Calculator{});
  rt.start();

  std::future<int64_t> f1 = calc.call_async<&Calculator::add>("calc-1", AddRequest{2, 3});
  std::future<int64_t> f2 = calc.call_async<&Calculator::add>("calc-2", AddRequest{40, 2});
  std::future<void> f3 = calc.call_async<&Calculator::ping>("calc-1");
  assert_int_equal(f1.get(), 5);
  assert_int_equal(f2.get(), 42);
  f3.get();
  rt.stop();
}

void future_holds_the_error(void **) {
  cruster::runtime rt = test::make_runtime();
  auto calc = rt.register_entity(Calculator{});
  rt.start();

  std::future<int64_t> f = calc.call_async<&Calculator::deny>("calc-1", AddRequest{1, 1});
  std::string message;
  int st = test::status_of([&] { f.get(); }, &message);
  assert_int_equal(st, -1042);
  assert_non_null(std::strstr(message.c_str(), "calculator says no"));
  rt.stop();
}

void callback_receives_the_result_or_the_error(void **) {
  cruster::runtime rt = test::make_runtime();
  auto calc = rt.register_entity(Calculator{});
  rt.start();

  std::promise<cruster::result<int64_t>> ok, bad;
  std::promise<cruster::result<void>> pinged;
  calc.call_async<&Calculator::add>("calc-1", AddRequest{20, 22},
                                    [&](cruster::result<int64_t> r) { ok.set_value(std::move(r)); });
  calc.call_async<&Calculator::deny>(
      "calc-1", AddRequest{0, 0}, [&](cruster::result<int64_t> r) { bad.set_value(std::move(r)); });
  calc.call_async<&Calculator::ping>("calc-1",
                                     [&](cruster::result<void> r) { pinged.set_value(r); });

  cruster::result<int64_t> r1 = ok.get_future().get();
  assert_true(r1.ok());
  assert_int_equal(r1.value(), 42);

  cruster::result<int64_t> r2 = bad.get_future().get();
  assert_false(r2.ok());
  assert_int_equal(r2.status(), -1042);
  assert_non_null(std::strstr(r2.message().c_str(), "calculator says no"));
  assert_int_equal(test::status_of([&] { r2.value(); }), -1042);

  assert_true(pinged.get_future().get().ok());
  rt.stop();
}

void async_call_refused_up_front_throws_at_once(void **) {
  cruster::runtime rt = test::make_runtime();
  auto calc = rt.register_entity(Calculator{});
  // Not started: the C layer refuses the call synchronously (CRUSTER_E_STATE); the
  // callback is never called and the error is thrown from call_async itself.
  bool called = false;
  int st = test::status_of([&] {
    calc.call_async<&Calculator::add>("calc-1", AddRequest{1, 2},
                                      [&](cruster::result<int64_t>) { called = true; });
  });
  assert_int_equal(st, CRUSTER_E_STATE);
  st = test::status_of([&] { calc.call_async<&Calculator::add>("calc-1", AddRequest{1, 2}); });
  assert_int_equal(st, CRUSTER_E_STATE);
  assert_false(called);
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(future_holds_the_result),
      cmocka_unit_test(future_holds_the_error),
      cmocka_unit_test(callback_receives_the_result_or_the_error),
      cmocka_unit_test(async_call_refused_up_front_throws_at_once),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
