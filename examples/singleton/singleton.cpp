// A singleton and a durable cron job in C++ (docs/singletons-and-cron.md).
#include <cruster/cruster.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

int main() {
  using namespace std::chrono_literals;
  std::atomic<int> rounds{0}, ticks{0};
  std::atomic<bool> cleaned{false};
  try {
    cruster::runtime rt(cruster::config(), cruster::memory_storage());
    rt.singleton("leader").shard_group("default").run([&](cruster::singleton_context &ctx) {
      while (!ctx.wait(100ms)) rounds++; // true once cancelled (stop or shard loss)
      cleaned = true;                    // runs before rt.stop() returns
    });
    rt.cron_job("tick").schedule("* * * * * *").run([&](const cruster::cron_slot &slot) {
      std::printf("slot %lld (%.*s)\n", static_cast<long long>(slot.time_ms),
                  static_cast<int>(slot.id.size()), slot.id.data());
      std::fflush(stdout);
      ticks++;
    });
    try {
      rt.register_cron_job("bad", "0 0 25 * * *", [](const cruster::cron_slot &) {});
    } catch (const cruster::error &e) {
      std::printf("refused: %s\n", e.what());
    }
    rt.start();
    while (ticks.load() < 2) std::this_thread::sleep_for(10ms);
    rt.stop();
    int done = 0;
    for (const auto &s : rt.cron_slots("tick", 10)) done += s.state == CRUSTER_CRON_SLOT_DONE;
    std::printf("%d slots done\n", done);
    std::printf("leader %s; slots %s\n", cleaned ? "cleaned up" : "did NOT clean up",
                done >= 2 ? "ok" : "missing");
  } catch (const cruster::error &e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
