// counter.cpp -- the counter entity with the C++ layer.
//
// Entities are stateless: the counts live in "your database", here a
// mutex-protected map that outlives the runtime.
#include <cruster/cruster.hpp>

#include <cstdio>
#include <map>
#include <mutex>
#include <string>

struct IncrementRequest {
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(IncrementRequest, amount)

class Db {
public:
  int64_t add(const std::string &id, int64_t amount) {
    std::lock_guard<std::mutex> lock(mu_);
    return values_[id] += amount;
  }

private:
  std::mutex mu_;
  std::map<std::string, int64_t> values_;
};

struct Counter {
  Db *db;

  int64_t increment(cruster::context &ctx, const IncrementRequest &r) {
    return db->add(std::string(ctx.entity_id()), r.amount);
  }
  int64_t get(cruster::context &ctx) { return db->add(std::string(ctx.entity_id()), 0); }

  static constexpr auto rpcs = cruster::rpcs(
      cruster::rpc<&Counter::increment>("increment", cruster::persisted),
      cruster::rpc<&Counter::get>("get"));
};

int main() {
  Db db;
  try {
    cruster::config cfg;
    cfg.set("shards_per_group", 16);
    cruster::runtime rt(cfg, cruster::memory_storage());
    auto counter = rt.register_entity(Counter{&db});
    rt.start();

    // Persisted with an idempotency key: the retry gets the stored reply.
    auto once = cruster::call_options().idempotency_key("deposit-1");
    counter.call<&Counter::increment>("counter-1", IncrementRequest{5}, once);
    counter.call<&Counter::increment>("counter-1", IncrementRequest{5}, once);

    std::future<int64_t> value = counter.call_async<&Counter::get>("counter-1");
    std::printf("counter-1 = %lld\n", static_cast<long long>(value.get()));
    rt.stop();
  } catch (const cruster::error &e) {
    std::fprintf(stderr, "cruster: %s: %s\n", e.status_name(), e.what());
    return 1;
  }
  return 0;
}
