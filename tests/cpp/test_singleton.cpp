/*
 * Singletons and cron jobs from C++: a managed singleton's clean-up runs
 * before stop returns; a throwing function is a failure (restarted); the
 * builder's shard group is checked; a same-named registration replaces a
 * running singleton after its clean-up; a cron job runs slots in order and
 * lists them; errors carry their status.
 */
#include "support.hpp"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

template <class F> bool eventually(F &&f) {
  auto end = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return f();
}

void test_managed_singleton(void **) {
  std::atomic<int> starts{0}, cleanups{0};
  {
    cruster::runtime rt = test::make_runtime();
    rt.register_singleton("leader", [&](cruster::singleton_context &ctx) {
      assert_true(ctx.name() == "leader");
      starts++;
      while (!ctx.wait(10s)) {
      }
      cleanups++;
    });
    rt.start();
    assert_true(eventually([&] { return starts.load() == 1; }));
    rt.stop();
    assert_int_equal(cleanups.load(), 1);
  }
  assert_int_equal(starts.load(), 1);
}

void test_throwing_singleton_restarts(void **) {
  cruster::config cfg;
  cfg.set("shards_per_group", 16).set("singleton_crash_backoff_base", "2ms").log_level(CRUSTER_LOG_ERROR);
  cruster::runtime rt(cfg, cruster::memory_storage());
  std::atomic<int> runs{0};
  std::atomic<int64_t> seen_failures{0};
  rt.singleton("flaky").shard_group("default").run([&](cruster::singleton_context &ctx) {
    seen_failures = ctx.failures();
    if (runs++ < 2) throw std::runtime_error("boom");
  });
  rt.start();
  assert_true(eventually([&] { return runs.load() >= 3; }));
  rt.stop();
  assert_true(rt.metric("cluster_singleton_failures_total") == 2);
}

void test_singleton_errors(void **) {
  cruster::runtime rt = test::make_runtime();
  auto noop = [](cruster::singleton_context &) {};
  std::string msg;
  assert_int_equal(test::status_of([&] { rt.singleton("x").shard_group("nope").run(noop); }, &msg),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_true(msg.find("nope") != std::string::npos);
  rt.register_singleton("x", noop);
  assert_int_equal(test::status_of([&] { rt.register_singleton("", noop); }),
                   CRUSTER_E_INVALID_ARGUMENT);
}

/* A same-named registration replaces a running singleton: the old one's
 * clean-up is done before the new one's first run; the old one runs once. */
void test_singleton_replaced(void **) {
  std::atomic<int> old_starts{0}, old_cleanups{0}, new_starts{0}, cleanups_seen{-1};
  cruster::runtime rt = test::make_runtime();
  rt.start();
  rt.register_singleton("leader", [&](cruster::singleton_context &ctx) {
    old_starts++;
    while (!ctx.wait(10s)) {
    }
    std::this_thread::sleep_for(20ms);
    old_cleanups++;
  });
  assert_true(eventually([&] { return old_starts.load() == 1; }));
  rt.singleton("leader").run([&](cruster::singleton_context &ctx) {
    if (new_starts++ == 0) cleanups_seen = old_cleanups.load();
    while (!ctx.wait(10s)) {
    }
  });
  assert_true(eventually([&] { return new_starts.load() == 1; }));
  assert_int_equal(cleanups_seen.load(), 1);
  rt.stop();
  assert_int_equal(old_starts.load(), 1);
  assert_int_equal(old_cleanups.load(), 1);
  assert_int_equal(new_starts.load(), 1);
}

void test_cron_job(void **) {
  cruster::runtime rt = test::make_runtime();
  std::mutex mu;
  std::vector<int64_t> slots;
  std::vector<std::string> ids;
  rt.cron_job("tick").schedule("* * * * * *").missed(CRUSTER_CRON_MISSED_NONE).run(
      [&](const cruster::cron_slot &s) {
        std::lock_guard<std::mutex> lock(mu);
        slots.push_back(s.time_ms);
        ids.emplace_back(s.id);
        assert_true(s.time.time_since_epoch() == std::chrono::milliseconds(s.time_ms));
      });
  rt.start();
  assert_true(eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return slots.size() >= 2;
  }));
  rt.stop();
  for (std::size_t i = 1; i < slots.size(); ++i) assert_true(slots[i] > slots[i - 1]);
  assert_true(ids[0] == "tick/" + std::to_string(slots[0]));
  auto recs = rt.cron_slots("tick", 100);
  assert_int_equal(recs.size(), slots.size());
  assert_int_equal(recs.front().slot_ms, slots.back());
  assert_int_equal(recs.front().state, CRUSTER_CRON_SLOT_DONE);
  std::string msg;
  assert_int_equal(test::status_of([&] { rt.register_cron_job("bad", "* * * * * 9", [](const cruster::cron_slot &) {}); }, &msg),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_true(msg.find("position") != std::string::npos);
}

} // namespace

int main() {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_managed_singleton),
      cmocka_unit_test(test_throwing_singleton_restarts),
      cmocka_unit_test(test_singleton_errors),
      cmocka_unit_test(test_singleton_replaced),
      cmocka_unit_test(test_cron_job),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
