/*
 * Streamed calls through the C++ layer: context::yield in a handler,
 * client::send_stream (a cruster::stream<Item> read with next/collect) and
 * client::send_stream_async (callbacks), the final item, errors, the default
 * single item of an ordinary method, stopping a stream, refusals.
 */
#include "support.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Tick {
  int n = 0;
  std::string text;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Tick, n, text)

struct RangeRequest {
  int count = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RangeRequest, count)

std::atomic<int> g_yield_status{1};

struct Ticker {
  // Yields `count` ticks; a void method just ends the stream.
  void range(cruster::context &ctx, const RangeRequest &r) {
    for (int i = 0; i < r.count; i++) ctx.yield(Tick{i, "tick"});
  }
  // Two ticks, then a returned value: the final item.
  Tick with_final(cruster::context &ctx) {
    ctx.yield(Tick{0, "a"});
    ctx.yield(Tick{1, "b"});
    return Tick{2, "final"};
  }
  // Two ticks, then an application error.
  void broken(cruster::context &ctx) {
    ctx.yield(Tick{0, "x"});
    ctx.yield(Tick{1, "y"});
    throw cruster::error(-1077, "the ticker broke");
  }
  // Knows nothing of streams.
  Tick plain() { return Tick{7, "plain"}; }
  // Yields until the caller goes away; records how the yield failed.
  void forever(cruster::context &ctx) {
    try {
      for (int i = 0;; i++) ctx.yield(Tick{i, "f"});
    } catch (const cruster::error &e) {
      g_yield_status.store(e.status());
      throw;
    }
  }
  // A yield under an ordinary call throws CRUSTER_E_STATE.
  int yield_plain(cruster::context &ctx) {
    return test::status_of([&] { ctx.yield(Tick{0, "no"}); });
  }
  int stored(const RangeRequest &r) { return r.count; }

  static constexpr auto rpcs = cruster::rpcs(
      cruster::rpc<&Ticker::range>("range"), cruster::rpc<&Ticker::with_final>("with_final"),
      cruster::rpc<&Ticker::broken>("broken"), cruster::rpc<&Ticker::plain>("plain"),
      cruster::rpc<&Ticker::forever>("forever"),
      cruster::rpc<&Ticker::yield_plain>("yield_plain"),
      cruster::rpc<&Ticker::stored>("stored", cruster::persisted));
};

void items_arrive_in_order_through_next_and_collect(void **) {
  cruster::runtime rt = test::make_runtime();
  auto c = rt.register_entity(Ticker{});
  rt.start();
  cruster::stream<Tick> s = c.send_stream<&Ticker::range, Tick>("t1", RangeRequest{500});
  for (int i = 0; i < 500; i++) {
    std::optional<Tick> t = s.next();
    assert_true(t.has_value());
    assert_int_equal(t->n, i);
    assert_string_equal(t->text.c_str(), "tick");
  }
  assert_false(s.next().has_value());
  assert_false(s.next().has_value()); // the end stays the end

  std::vector<Tick> v = c.send_stream<&Ticker::with_final>("t2").collect();
  assert_int_equal(v.size(), 3);
  assert_string_equal(v[0].text.c_str(), "a");
  assert_string_equal(v[1].text.c_str(), "b");
  assert_string_equal(v[2].text.c_str(), "final");
  rt.stop();
}

void errors_keep_code_and_message_after_the_items(void **) {
  cruster::runtime rt = test::make_runtime();
  auto c = rt.register_entity(Ticker{});
  rt.start();
  auto s = c.send_stream<&Ticker::broken, Tick>("t");
  assert_int_equal(s.next()->n, 0);
  assert_int_equal(s.next()->n, 1);
  std::string msg;
  assert_int_equal(test::status_of([&] { s.next(); }, &msg), -1077);
  assert_string_equal(msg.c_str(), "the ticker broke");
  assert_int_equal(test::status_of([&] { s.next(); }), -1077);
  rt.stop();
}

void an_ordinary_method_gives_its_result_as_the_single_item(void **) {
  cruster::runtime rt = test::make_runtime();
  auto c = rt.register_entity(Ticker{});
  rt.start();
  std::vector<Tick> v = c.send_stream<&Ticker::plain>("t").collect();
  assert_int_equal(v.size(), 1);
  assert_int_equal(v[0].n, 7);
  assert_int_equal(c.call<&Ticker::yield_plain>("t"), CRUSTER_E_STATE);
  rt.stop();
}

struct async_state {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int> seen;
  bool ended = false;
  int status = 1;
  std::string message;
};

void callbacks_get_every_item_then_the_end_and_can_stop(void **) {
  cruster::runtime rt = test::make_runtime();
  auto c = rt.register_entity(Ticker{});
  rt.start();
  async_state a;
  c.send_stream_async<&Ticker::range, Tick>(
      "t", RangeRequest{300},
      [&](Tick t) {
        std::lock_guard<std::mutex> l(a.mu);
        a.seen.push_back(t.n);
      },
      [&](cruster::result<void> r) {
        std::lock_guard<std::mutex> l(a.mu);
        a.ended = true;
        a.status = r.status();
        a.cv.notify_all();
      });
  {
    std::unique_lock<std::mutex> l(a.mu);
    a.cv.wait(l, [&] { return a.ended; });
  }
  assert_int_equal(a.status, CRUSTER_OK);
  assert_int_equal(a.seen.size(), 300);
  for (int i = 0; i < 300; i++) assert_int_equal(a.seen[i], i);

  // Returning false stops the stream: the handler's yield throws CANCELLED.
  g_yield_status.store(1);
  async_state b;
  c.send_stream_async<&Ticker::forever, Tick>(
      "t2",
      [&](Tick t) {
        std::lock_guard<std::mutex> l(b.mu);
        b.seen.push_back(t.n);
        return t.n < 4;
      },
      [&](cruster::result<void> r) {
        std::lock_guard<std::mutex> l(b.mu);
        b.ended = true;
        b.status = r.status();
        b.message = r.message();
        b.cv.notify_all();
      });
  {
    std::unique_lock<std::mutex> l(b.mu);
    b.cv.wait(l, [&] { return b.ended; });
  }
  assert_int_equal(b.status, CRUSTER_E_CANCELLED);
  assert_int_equal(b.seen.size(), 5);
  for (int i = 0; i < 200 && g_yield_status.load() == 1; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  assert_int_equal(g_yield_status.load(), CRUSTER_E_CANCELLED);
  rt.stop();
}

void a_dropped_stream_stops_its_handler(void **) {
  cruster::runtime rt = test::make_runtime();
  auto c = rt.register_entity(Ticker{});
  rt.start();
  g_yield_status.store(1);
  {
    auto s = c.send_stream<&Ticker::forever, Tick>("t");
    assert_int_equal(s.next()->n, 0);
  } // destroyed unread
  for (int i = 0; i < 1200 && g_yield_status.load() == 1; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  assert_int_equal(g_yield_status.load(), CRUSTER_E_CANCELLED);
  rt.stop();
}

void persisted_streams_are_refused(void **) {
  cruster::runtime rt = test::make_runtime();
  auto c = rt.register_entity(Ticker{});
  rt.start();
  // Options that would persist it: refused up front.
  assert_int_equal(test::status_of([&] {
                     c.send_stream<&Ticker::range, Tick>("t", RangeRequest{1},
                                                         cruster::call_options().persisted());
                   }),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(test::status_of([&] {
                     c.send_stream<&Ticker::range, Tick>(
                         "t", RangeRequest{1}, cruster::call_options().idempotency_key("k"));
                   }),
                   CRUSTER_E_INVALID_ARGUMENT);
  // A persisted method: the stream ends with the refusal.
  auto s = c.send_stream<&Ticker::stored>("t", RangeRequest{3});
  assert_int_equal(test::status_of([&] { s.next(); }), CRUSTER_E_INVALID_ARGUMENT);
  rt.stop();
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(items_arrive_in_order_through_next_and_collect),
      cmocka_unit_test(errors_keep_code_and_message_after_the_items),
      cmocka_unit_test(an_ordinary_method_gives_its_result_as_the_single_item),
      cmocka_unit_test(callbacks_get_every_item_then_the_end_and_can_stop),
      cmocka_unit_test(a_dropped_stream_stops_its_handler),
      cmocka_unit_test(persisted_streams_are_refused),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
