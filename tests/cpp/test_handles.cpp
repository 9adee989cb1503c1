/*
 * Handles (config, storage, runtime) are move-only RAII owners; config
 * errors carry their status; a codec specialisation replaces JSON for its type.
 */
#include "support.hpp"

#include <cstdio>
#include <cstring>
#include <type_traits>

// ---- a type with its own wire format: "x,y" ---------------------------------

namespace geo {
struct Point {
  int x = 0;
  int y = 0;
};
} // namespace geo

template <> struct cruster::codec<geo::Point> {
  static std::string encode(const geo::Point &p) {
    return std::to_string(p.x) + "," + std::to_string(p.y);
  }
  static geo::Point decode(const void *data, std::size_t len) {
    std::string s(static_cast<const char *>(data), len);
    geo::Point p;
    char tail = 0;
    if (std::sscanf(s.c_str(), "%d,%d%c", &p.x, &p.y, &tail) != 2) {
      throw cruster::error(CRUSTER_E_MALFORMED, "not a point: " + s);
    }
    return p;
  }
};

namespace {

struct Mirror {
  geo::Point flip(const geo::Point &p) const { return geo::Point{p.y, p.x}; }
  static constexpr auto rpcs = cruster::rpcs(cruster::rpc<&Mirror::flip>("flip"));
};

static_assert(!std::is_copy_constructible_v<cruster::runtime> &&
                  !std::is_copy_assignable_v<cruster::runtime>,
              "runtime is move-only");
static_assert(std::is_nothrow_move_constructible_v<cruster::runtime> &&
                  std::is_nothrow_move_assignable_v<cruster::runtime>,
              "runtime moves without throwing");
static_assert(!std::is_copy_constructible_v<cruster::config> &&
                  std::is_nothrow_move_constructible_v<cruster::config>,
              "config is move-only");
static_assert(!std::is_copy_constructible_v<cruster::storage> &&
                  std::is_nothrow_move_constructible_v<cruster::storage>,
              "storage is move-only");

void custom_codec_is_used_on_the_wire(void **) {
  cruster::runtime rt = test::make_runtime();
  auto mirror = rt.register_entity(Mirror{});
  rt.start();

  geo::Point p = mirror.call<&Mirror::flip>("m-1", geo::Point{3, 4});
  assert_int_equal(p.x, 4);
  assert_int_equal(p.y, 3);

  // A raw caller speaks the codec's format, not JSON.
  const char text[] = "7,-2";
  void *reply = nullptr;
  size_t len = 0;
  cruster_error *err = nullptr;
  int st = cruster_send_sync(rt.handle(), "Mirror", "m-1", "flip", text, sizeof text - 1, nullptr,
                             &reply, &len, &err);
  assert_int_equal(st, CRUSTER_OK);
  assert_int_equal(len, 4);
  assert_memory_equal(reply, "-2,7", 4);
  cruster_free(reply);

  const char json[] = "{\"x\":1,\"y\":2}";
  st = cruster_send_sync(rt.handle(), "Mirror", "m-1", "flip", json, sizeof json - 1, nullptr,
                         &reply, &len, &err);
  assert_int_equal(st, CRUSTER_E_MALFORMED);
  assert_non_null(std::strstr(cruster_error_message(err), "not a point"));
  cruster_error_free(err);
  rt.stop();
}

void moved_runtime_keeps_working_and_the_source_is_empty(void **) {
  cruster::runtime a = test::make_runtime();
  auto mirror = a.register_entity(Mirror{});
  cruster_runtime *h = a.handle();

  cruster::runtime b(std::move(a));
  assert_null(a.handle());
  assert_false(static_cast<bool>(a));
  assert_ptr_equal(b.handle(), h);

  cruster::runtime c = test::make_runtime();
  c = std::move(b); // frees c's own runtime, takes b's
  assert_null(b.handle());
  assert_ptr_equal(c.handle(), h);

  c.start();
  // The client and the registered instance survived both moves.
  assert_int_equal(mirror.call<&Mirror::flip>("m-1", geo::Point{1, 2}).x, 2);
  c.stop();
  c.stop(); // idempotent
}

void config_and_storage_are_move_only_owners(void **) {
  cruster::config a;
  a.set("shards_per_group", 12).set("shard_groups", "default,premium");
  cruster::config b(std::move(a));
  assert_null(a.handle());
  assert_int_equal(b.get_int("shards_per_group"), 12);
  assert_string_equal(b.get("shard_groups").c_str(), "default,premium");

  cruster::config c = b.copy();
  c.set("shards_per_group", 5);
  assert_int_equal(b.get_int("shards_per_group"), 12); // a copy is independent

  cruster::storage s = cruster::memory_storage();
  assert_true(static_cast<bool>(s));
  cruster::storage t(std::move(s));
  assert_false(static_cast<bool>(s));
  assert_true(static_cast<bool>(t));
  // t is freed by its destructor: it was never handed to a runtime.
}

void config_errors_carry_their_status(void **) {
  cruster::config cfg;
  std::string message;
  int st = test::status_of([&] { cfg.set("no_such_field", 1); });
  assert_int_equal(st, CRUSTER_E_INVALID_ARGUMENT);
  st = test::status_of([&] { cfg.set("shards_per_group", "many"); }, &message);
  assert_int_equal(st, CRUSTER_E_INVALID_CONFIG);
  assert_non_null(std::strstr(message.c_str(), "shards_per_group"));

  st = test::status_of([&] { cfg.set("shards_per_group", 0); }, &message);
  assert_int_equal(st, CRUSTER_E_INVALID_CONFIG);
  assert_non_null(std::strstr(message.c_str(), "shards_per_group"));
  cfg.validate(); // the refused values left the config as it was
}

void metrics_render_as_text(void **) {
  cruster::runtime rt = test::make_runtime();
  rt.register_entity(Mirror{});
  rt.start();
  assert_int_equal(rt.client<Mirror>().call<&Mirror::flip>("m-2", geo::Point{0, 9}).x, 9);
  std::string text = rt.metrics();
  assert_true(text.find("# TYPE") != std::string::npos);
  rt.stop();
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(custom_codec_is_used_on_the_wire),
      cmocka_unit_test(moved_runtime_keeps_working_and_the_source_is_empty),
      cmocka_unit_test(config_and_storage_are_move_only_owners),
      cmocka_unit_test(config_errors_carry_their_status),
      cmocka_unit_test(metrics_render_as_text),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
