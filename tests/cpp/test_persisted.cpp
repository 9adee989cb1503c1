/*
 * Persisted calls made with an idempotency key, read back through the typed
 * client (poll, join, join_async), and dead letters listed and redelivered
 * through the runtime -- against the real PostgreSQL (CRUSTER_TEST_PG), one
 * throwaway schema per test. The dead letter is produced for real: a handler
 * that never answers is interrupted by stopping its runtime until the
 * message exceeds storage_message_max_retries (as test_pg_storage.c does).
 */
#include "pg_support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <optional>
#include <thread>

namespace {

using namespace std::chrono_literals;

/** How long a test waits for what must happen: generous, never a rate. */
constexpr auto deadline = 60s;
constexpr long deadline_ms = 60000;

/** Shared by every runtime a test makes (it outlives them). */
struct JobState {
  std::atomic<int> entered{0};
  std::atomic<bool> open{false};
  /* Set (by the log sink of dead_letter_is_listed_and_redelivered) once a
   * stopping runtime gave up waiting for its running handlers: an answer
   * after that is dropped. */
  std::atomic<bool> gave_up{false};
};

struct Job {
  JobState *state;

  /* Holds until the gate opens. Interrupted (cancelled) while closed, it
   * answers only once the stopping runtime gave up on it (after
   * entity_termination_timeout), so that its answer is dropped: the delivery
   * counts as failed, as if the runner had died. (Not a sleep: on a busy
   * machine the runtime's timer may fire late, and an answer given before
   * would be stored as the message's reply.) */
  std::string run(cruster::context &ctx, const std::string &what) {
    state->entered.fetch_add(1);
    while (!state->open.load() && !ctx.cancelled()) std::this_thread::sleep_for(2ms);
    if (!state->open.load()) {
      auto end = std::chrono::steady_clock::now() + deadline;
      while (!state->gave_up.load() && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(2ms);
      throw cruster::error(CRUSTER_E_INTERRUPTED, "interrupted");
    }
    return "done:" + what;
  }
  int64_t charge(const std::string &) { throw cruster::error(-1042, "insufficient funds"); }
  void touch() {}

  static constexpr auto rpcs = cruster::rpcs(
      cruster::rpc<&Job::run>("run", cruster::persisted),
      cruster::rpc<&Job::charge>("charge", cruster::persisted),
      cruster::rpc<&Job::touch>("touch", cruster::persisted));
};

cruster::runtime pg_runtime(const test::pg_schema &schema, cruster::config cfg = {}) {
  cfg.set("shards_per_group", 16).log_level(CRUSTER_LOG_ERROR);
  return cruster::runtime(cfg, cruster::pg_storage(schema.conninfo()));
}

cruster::call_options keyed(std::string key) {
  return cruster::call_options().idempotency_key(std::move(key)).timeout(deadline);
}

void poll_reports_pending_then_the_answer(void **) {
  test::pg_schema schema;
  JobState state;
  cruster::runtime rt = pg_runtime(schema);
  auto jobs = rt.register_entity(Job{&state});
  rt.start();

  // Never sent.
  std::string message;
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("j", "k-1"); }, &message),
                   CRUSTER_E_NOT_FOUND);
  assert_true(!message.empty());

  // Stored, being handled, not answered.
  jobs.notify<&Job::run>("j", std::string("x"), keyed("k-1"));
  assert_true(test::eventually([&] { return state.entered.load() >= 1; }, deadline_ms));
  std::optional<std::string> pending = jobs.poll<&Job::run>("j", "k-1");
  assert_false(pending.has_value());

  // Answered.
  state.open = true;
  std::optional<std::string> answer;
  assert_true(test::eventually(
      [&] { return (answer = jobs.poll<&Job::run>("j", "k-1")).has_value(); }, deadline_ms));
  assert_string_equal(answer->c_str(), "done:x");
  // Polling again reads the same stored answer; the handler does not run again.
  assert_string_equal(jobs.poll<&Job::run>("j", "k-1").value().c_str(), "done:x");
  assert_int_equal(state.entered.load(), 1);

  // Another method, entity id or key is another message.
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::charge>("j", "k-1"); }),
                   CRUSTER_E_NOT_FOUND);
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("other", "k-1"); }),
                   CRUSTER_E_NOT_FOUND);
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("j", "k-10"); }),
                   CRUSTER_E_NOT_FOUND);

  // A failed answer is stored too: poll throws it with the handler's code and message.
  assert_int_equal(
      test::status_of([&] { jobs.call<&Job::charge>("j", std::string("5"), keyed("k-2")); }),
      -1042);
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::charge>("j", "k-2"); }, &message),
                   -1042);
  assert_string_equal(message.c_str(), "insufficient funds");

  // A void method: true once answered.
  jobs.call<&Job::touch>("j", keyed("k-3"));
  assert_true(jobs.poll<&Job::touch>("j", "k-3"));

  // Keys are bytes: an embedded NUL is part of the key.
  const std::string binary_key("a\0b", 3);
  jobs.call<&Job::touch>("j", keyed(binary_key));
  assert_true(jobs.poll<&Job::touch>("j", binary_key));
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::touch>("j", "a"); }),
                   CRUSTER_E_NOT_FOUND);

  // An empty key is refused.
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("j", ""); }),
                   CRUSTER_E_INVALID_ARGUMENT);
  rt.stop();
}

void join_waits_for_in_flight_and_returns_finished(void **) {
  test::pg_schema schema;
  JobState state;
  cruster::runtime rt = pg_runtime(schema);
  auto jobs = rt.register_entity(Job{&state});
  rt.start();

  jobs.notify<&Job::run>("j", std::string("joined"), keyed("join-1"));
  assert_true(test::eventually([&] { return state.entered.load() >= 1; }, deadline_ms));

  // In flight: a short join times out, a long one waits.
  std::future<std::string> early =
      jobs.join_async<&Job::run>("j", "join-1", cruster::call_options().timeout(200ms));
  std::string message;
  assert_int_equal(test::status_of([&] { early.get(); }, &message), CRUSTER_E_TIMEOUT);

  std::future<std::string> waiting =
      jobs.join_async<&Job::run>("j", "join-1", cruster::call_options().timeout(deadline));
  // (The handler has not answered: the join cannot be ready, however long this takes.)
  assert_true(waiting.wait_for(300ms) == std::future_status::timeout);
  state.open = true;
  assert_true(waiting.wait_for(deadline) == std::future_status::ready);
  assert_string_equal(waiting.get().c_str(), "done:joined");

  // Finished: every form reports the stored answer at once.
  assert_string_equal(jobs.join<&Job::run>("j", "join-1").c_str(), "done:joined");
  std::promise<cruster::result<std::string>> got;
  jobs.join_async<&Job::run>("j", "join-1", [&](cruster::result<std::string> r) {
    got.set_value(std::move(r));
  });
  cruster::result<std::string> r = got.get_future().get();
  assert_true(r.ok());
  assert_string_equal(r.value().c_str(), "done:joined");
  assert_int_equal(state.entered.load(), 1);

  // A stored failure is joined as that failure.
  assert_int_equal(
      test::status_of([&] { jobs.call<&Job::charge>("j", std::string("5"), keyed("join-2")); }),
      -1042);
  assert_int_equal(test::status_of([&] { jobs.join<&Job::charge>("j", "join-2"); }, &message),
                   -1042);
  assert_string_equal(message.c_str(), "insufficient funds");

  // Unknown key: NOT_FOUND through the future, the callback and the blocking join.
  assert_int_equal(test::status_of([&] { jobs.join<&Job::run>("j", "nope"); }, &message),
                   CRUSTER_E_NOT_FOUND);
  assert_true(!message.empty());
  std::promise<cruster::result<void>> none;
  jobs.join_async<&Job::touch>("j", "nope",
                               [&](cruster::result<void> res) { none.set_value(res); });
  cruster::result<void> rn = none.get_future().get();
  assert_false(rn.ok());
  assert_int_equal(rn.status(), CRUSTER_E_NOT_FOUND);

  // Refused up front (empty key): thrown at once, the callback never runs.
  bool called = false;
  assert_int_equal(test::status_of([&] {
                     jobs.join_async<&Job::run>("j", "",
                                                [&](cruster::result<std::string>) { called = true; });
                   }),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(test::status_of([&] { (void)jobs.join_async<&Job::run>("j", ""); }),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_false(called);
  rt.stop();
}

bool listed(const cruster::runtime &rt, int64_t id) {
  for (const cruster::dead_letter &d : rt.dead_letters(100)) {
    if (d.request_id == id) return true;
  }
  return false;
}

/* The log sink of dead_letter_is_listed_and_redelivered: notes when a
 * stopping runtime gives up on its running handlers; prints errors. */
void note_give_up(void *user, cruster_log_level level, const char *component, const char *message) {
  auto *state = static_cast<JobState *>(user);
  if (std::strstr(message, "still running after entity_termination_timeout") != nullptr)
    state->gave_up = true;
  else if (level >= CRUSTER_LOG_ERROR)
    std::fprintf(stderr, "[%s] %s\n", component, message);
}

void dead_letter_is_listed_and_redelivered(void **) {
  test::pg_schema schema;
  JobState state;
  auto make_runtime = [&] {
    cruster::config cfg;
    cfg.set("shards_per_group", 16)
        .set("storage_message_max_retries", 2)
        .set("storage_retry_backoff", 50ms)
        .set("storage_poll_interval", 100ms)
        .set("entity_termination_timeout", 200ms)
        .set_logger(note_give_up, &state, CRUSTER_LOG_WARN);
    return cruster::runtime(cfg, cruster::pg_storage(schema.conninfo()));
  };

  // Every runtime is stopped while the handler holds the message: a failed
  // delivery. After max_retries + 1 of them the message is a dead letter.
  int64_t id = 0;
  bool dead = false;
  std::optional<cruster::runtime> rt;
  for (int run = 0; run < 8 && !dead; ++run) {
    state.gave_up = false;
    // Counted before the runtime starts: it may deliver at once.
    const int before = state.entered.load();
    rt.emplace(make_runtime());
    auto jobs = rt->register_entity(Job{&state});
    rt->start();
    if (run == 0) {
      jobs.notify<&Job::run>("p", std::string("apple"), keyed("dl-1"));
      id = jobs.persisted_request_id<&Job::run>("p", "dl-1");
    }
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < end) {
      if (state.entered.load() > before) break;
      if (listed(*rt, id)) {
        dead = true;
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    if (!dead) rt.reset(); // interrupts the handler
  }
  assert_true(dead);
  assert_true(state.entered.load() >= 1);
  assert_true(state.entered.load() <= 3); // max_retries + 1 at most

  std::vector<cruster::dead_letter> letters = rt->dead_letters(10);
  assert_int_equal(letters.size(), 1);
  const cruster::dead_letter &d = letters[0];
  assert_int_equal(d.request_id, id);
  assert_string_equal(d.entity_type.c_str(), "Job");
  assert_string_equal(d.entity_id.c_str(), "p");
  assert_string_equal(d.method.c_str(), "run");
  assert_string_equal(d.payload.c_str(), "\"apple\""); // the encoded request
  assert_string_equal(d.request<std::string>().c_str(), "apple");
  assert_true(d.attempts >= 2);
  assert_int_equal(rt->dead_letters(0).size(), 0);

  // Its caller learns it is dead.
  auto jobs = rt->client<Job>();
  assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("p", "dl-1"); }),
                   CRUSTER_E_DEAD_LETTER);
  assert_int_equal(test::status_of([&] { jobs.join<&Job::run>("p", "dl-1"); }),
                   CRUSTER_E_DEAD_LETTER);

  // Redeliver: the handler is fixed now and answers.
  assert_int_equal(test::status_of([&] { rt->redeliver(id + 1); }), CRUSTER_E_NOT_FOUND);
  state.open = true;
  const int before = state.entered.load();
  rt->redeliver(id);
  assert_string_equal(
      jobs.join<&Job::run>("p", "dl-1", cruster::call_options().timeout(deadline)).c_str(),
      "done:apple");
  assert_true(state.entered.load() > before);
  assert_string_equal(jobs.poll<&Job::run>("p", "dl-1").value().c_str(), "done:apple");
  assert_int_equal(rt->dead_letters(10).size(), 0);
  // Not a dead letter any more.
  assert_int_equal(test::status_of([&] { rt->redeliver(id); }), CRUSTER_E_NOT_FOUND);
  rt->stop();
}

// ---- without PostgreSQL: the errors of the wrappers ---------------------------

void without_storage_or_start_the_wrappers_throw(void **) {
  JobState state;
  state.open = true;
  {
    cruster::config cfg;
    cfg.set("shards_per_group", 16).log_level(CRUSTER_LOG_ERROR);
    cruster::runtime rt(cfg); // no message storage
    auto jobs = rt.register_entity(Job{&state});
    // Not started.
    assert_int_equal(test::status_of([&] { (void)rt.dead_letters(10); }), CRUSTER_E_STATE);
    assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("j", "k"); }),
                     CRUSTER_E_STATE);
    assert_int_equal(test::status_of([&] { (void)jobs.join_async<&Job::run>("j", "k"); }),
                     CRUSTER_E_STATE);
    rt.start();
    assert_int_equal(test::status_of([&] { (void)rt.dead_letters(10); }), CRUSTER_E_PERSISTENCE);
    assert_int_equal(test::status_of([&] { rt.redeliver(1); }), CRUSTER_E_PERSISTENCE);
    assert_int_equal(test::status_of([&] { (void)jobs.poll<&Job::run>("j", "k"); }),
                     CRUSTER_E_PERSISTENCE);
    assert_int_equal(test::status_of([&] { jobs.join<&Job::run>("j", "k"); }),
                     CRUSTER_E_PERSISTENCE);
    rt.stop();
  }
  {
    // In-memory storage: nothing dead, nothing to redeliver; a keyed call polls back.
    cruster::runtime rt = test::make_runtime();
    auto jobs = rt.register_entity(Job{&state});
    rt.start();
    assert_true(rt.dead_letters(10).empty());
    assert_int_equal(test::status_of([&] { rt.redeliver(42); }), CRUSTER_E_NOT_FOUND);
    assert_string_equal(
        jobs.call<&Job::run>("j", std::string("m"), keyed("mem-1")).c_str(), "done:m");
    assert_string_equal(jobs.poll<&Job::run>("j", "mem-1").value().c_str(), "done:m");
    assert_string_equal(jobs.join<&Job::run>("j", "mem-1").c_str(), "done:m");
    rt.stop();
  }
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(without_storage_or_start_the_wrappers_throw),
      cmocka_unit_test(poll_reports_pending_then_the_answer),
      cmocka_unit_test(join_waits_for_in_flight_and_returns_finished),
      cmocka_unit_test(dead_letter_is_listed_and_redelivered),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
