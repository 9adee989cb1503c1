/*
 * Durable workflows through the C++ layer, on memory storage: activities run
 * once and answer; a sleep suspends and resumes; await + resolve / reject
 * from the client; cancellation; retried activities; activity groups; keys
 * (hashed, raw, W::key); a failing activity's error reaching execute as an
 * exception and failing the workflow with its code; journaled now / random /
 * patched; restart; futures and callbacks; stops that are not std::exceptions.
 */
#include "support.hpp"

#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

// The stops unwind execute by themselves: no std::exception, no cruster::error.
static_assert(!std::is_base_of_v<std::exception, cruster::workflow_stop>);
static_assert(!std::is_base_of_v<std::exception, cruster::suspended>);
static_assert(!std::is_base_of_v<std::exception, cruster::cancelled>);
static_assert(!std::is_base_of_v<std::exception, cruster::nondeterministic>);
static_assert(std::is_base_of_v<cruster::workflow_stop, cruster::suspended>);
// activity_context::pg() is libpq's PGconn* once <libpq-fe.h> is included.
static_assert(std::is_same_v<decltype(std::declval<cruster::activity_context &>().pg()), PGconn *>);

/** A started runtime on memory storage that polls it often (sleeps and retries wake sooner). */
cruster::runtime make_wf_runtime() {
  cruster::config cfg;
  cfg.set("shards_per_group", 16)
      .set("storage_poll_interval", 20ms)
      .set("default_call_timeout", 60s)
      .log_level(CRUSTER_LOG_WARN);
  return cruster::runtime(cfg, cruster::memory_storage());
}

std::string hex128(const std::string &key) {
  char out[33];
  cruster_hex128(key.data(), key.size(), out);
  return out;
}

/** Waits (bounded) until pred() holds. */
template <class P> bool eventually(P pred, std::chrono::milliseconds limit = 30s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= end)
      return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// ---- transfers: activities run once ----------------------------------------

struct TransferRequest {
  std::string from;
  std::string to;
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TransferRequest, from, to, amount)

struct Receipt {
  std::string debit_id;
  int64_t amount = 0;
  int64_t balance_to = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Receipt, debit_id, amount, balance_to)

struct bank {
  test::store balances;
  std::atomic<int> runs{0}, debits{0}, credits{0};
  // What the activities saw (checked on the test's thread: cmocka asserts only there).
  std::atomic<int> had_pg{0}, retried{0};
};

struct Transfer {
  bank *b;

  Receipt execute(cruster::workflow_context<Transfer> &wf, const TransferRequest &r) {
    b->runs++;
    Receipt out;
    out.debit_id = wf.activity<&Transfer::debit>(r);
    out.balance_to = wf.activity<&Transfer::credit>(r);
    out.amount = r.amount;
    return out;
  }
  std::string debit(cruster::activity_context &a, const TransferRequest &r) {
    b->debits++;
    if (a.pg() != nullptr)
      b->had_pg++; // memory storage: no transaction
    if (a.attempt() != 1)
      b->retried++;
    b->balances.add(r.from, -r.amount);
    return std::string(a.name()) + "@" + std::string(a.execution_id());
  }
  int64_t credit(const TransferRequest &r) {
    b->credits++;
    return b->balances.add(r.to, r.amount);
  }

  static constexpr auto activities = cruster::activities(
      cruster::activity<&Transfer::debit>("debit"), cruster::activity<&Transfer::credit>("credit"));
};

void activities_run_once_and_the_answer_is_kept(void **) {
  bank b;
  cruster::runtime rt = make_wf_runtime();
  auto transfers = rt.register_workflow(Transfer{&b});
  rt.start();
  assert_string_equal(transfers.workflow_name().c_str(), "Transfer");

  const TransferRequest req{"alice", "bob", 5};
  // Without a key the encoded request is the key.
  const std::string id = transfers.execution_id(req);
  assert_string_equal(id.c_str(), hex128(cruster::codec<TransferRequest>::encode(req)).c_str());

  Receipt r = transfers.execute(req);
  assert_string_equal(r.debit_id.c_str(), ("debit@" + id).c_str());
  assert_int_equal(r.amount, 5);
  assert_int_equal(r.balance_to, 5);
  assert_int_equal(b.debits.load(), 1);
  assert_int_equal(b.credits.load(), 1);
  assert_int_equal(b.had_pg.load(), 0);
  assert_int_equal(b.retried.load(), 0);

  // The same key is the same execution: its stored answer, nothing runs again.
  const int runs = b.runs.load();
  Receipt again = transfers.execute(req);
  assert_string_equal(again.debit_id.c_str(), r.debit_id.c_str());
  assert_int_equal(again.balance_to, 5);
  assert_int_equal(b.runs.load(), runs);
  assert_int_equal(b.debits.load(), 1);
  assert_int_equal(b.credits.load(), 1);
  assert_int_equal(b.balances.get("alice"), -5);

  std::optional<Receipt> polled = transfers.poll(id);
  assert_true(polled.has_value());
  assert_string_equal(polled->debit_id.c_str(), r.debit_id.c_str());
  assert_string_equal(transfers.join(id).debit_id.c_str(), r.debit_id.c_str());

  // An id nobody started.
  assert_int_equal(test::status_of([&] { transfers.poll(hex128("nobody")); }), CRUSTER_E_NOT_FOUND);
  rt.stop();
}

// ---- sleep: suspends and resumes -------------------------------------------

struct NapRequest {
  int64_t ms = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(NapRequest, ms)

struct nap_log {
  std::atomic<int> runs{0}, before{0}, after{0}, suspended_seen{0};
};

struct Napper {
  nap_log *log;

  std::string execute(cruster::workflow_context<Napper> &wf, const NapRequest &r) {
    log->runs++;
    wf.activity<&Napper::step_before>();
    try {
      wf.sleep(std::chrono::milliseconds(r.ms));
    } catch (const cruster::suspended &) {
      log->suspended_seen++;
      throw;
    }
    wf.activity<&Napper::step_after>();
    return "rested";
  }
  void step_before() { log->before++; }
  void step_after() { log->after++; }

  static constexpr auto activities =
      cruster::activities(cruster::activity<&Napper::step_before>("before"),
                          cruster::activity<&Napper::step_after>("after"));
};

struct Swallower { // a catch (...) that forgets to rethrow cannot answer early
  std::string execute(cruster::workflow_context<Swallower> &wf, const std::string &) {
    bool slept = true;
    try {
      wf.sleep(100ms);
    } catch (...) {
      slept = false;
    }
    return slept ? "after the sleep" : "too early";
  }
};

void sleep_suspends_and_resumes(void **) {
  nap_log log;
  cruster::runtime rt = make_wf_runtime();
  auto naps = rt.register_workflow(Napper{&log});
  rt.start();

  const auto t0 = std::chrono::steady_clock::now();
  const std::string id = naps.with_key("nap-1").start(NapRequest{300});
  assert_string_equal(id.c_str(), hex128("nap-1").c_str());
  assert_true(eventually([&] { return log.suspended_seen.load() >= 1; }));
  assert_false(naps.poll(id).has_value()); // waiting: no answer yet
  assert_int_equal(log.after.load(), 0);

  assert_string_equal(naps.join(id).c_str(), "rested");
  assert_true(std::chrono::steady_clock::now() - t0 >= 300ms);
  assert_true(log.runs.load() >= 2); // replayed from the top after the wait
  assert_int_equal(log.before.load(), 1);
  assert_int_equal(log.after.load(), 1);

  // The run that swallowed its stop returned "too early": ignored, it is stopped.
  auto swallower = rt.register_workflow(Swallower{});
  assert_string_equal(swallower.with_key("s-1").execute(std::string("x")).c_str(),
                      "after the sleep");
  rt.stop();
}

// ---- deferreds --------------------------------------------------------------

struct Approval {
  std::string by;
  int level = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Approval, by, level)

struct ApprovalRequest {
  std::string what;
  int64_t delay_ms = 0; // sleep this long before the awaits
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ApprovalRequest, what, delay_ms)

struct Approvals {
  static constexpr cruster::deferred<Approval> first{"first"};
  static constexpr cruster::deferred<void> second{"second"};

  std::string execute(cruster::workflow_context<Approvals> &wf, const ApprovalRequest &r) {
    if (r.delay_ms > 0)
      wf.sleep(std::chrono::milliseconds(r.delay_ms));
    Approval a = wf.await(first);
    wf.await(second);
    std::string note = wf.await<std::string>("note");
    return r.what + " approved by " + a.by + " (" + std::to_string(a.level) + ") " + note;
  }
};

void await_is_resolved_and_rejected_from_the_client(void **) {
  cruster::runtime rt = make_wf_runtime();
  auto approvals = rt.register_workflow(Approvals{});
  rt.start();

  const std::string id = approvals.with_key("loan-1").start(ApprovalRequest{"loan", 0});
  assert_false(approvals.poll(id).has_value());
  approvals.resolve(id, Approvals::first, Approval{"ada", 3});
  // The first outcome wins; the execution still waits for the others.
  assert_int_equal(test::status_of([&] {
                     approvals.resolve(id, Approvals::first, {"bob", 1});
                   }),
                   CRUSTER_E_ALREADY_EXISTS);
  assert_int_equal(
      test::status_of([&] { approvals.reject(id, Approvals::first, -1001, "too late"); }),
      CRUSTER_E_ALREADY_EXISTS);
  approvals.resolve(id, Approvals::second);
  approvals.resolve(id, "note", std::string("ok"));
  assert_string_equal(approvals.join(id).c_str(), "loan approved by ada (3) ok");
  // Finished: nothing left to resolve.
  assert_int_equal(test::status_of([&] { approvals.resolve(id, "note", std::string("x")); }),
                   CRUSTER_E_STATE);

  // Resolved before execute reaches its await (it sleeps first): kept for it.
  const std::string early = approvals.with_key("loan-2").start(ApprovalRequest{"car", 200});
  approvals.resolve(early, Approvals::first, Approval{"eve", 1});
  approvals.resolve(early, Approvals::second);
  approvals.resolve(early, "note", std::string("early"));
  assert_string_equal(approvals.join(early).c_str(), "car approved by eve (1) early");

  // A rejection is thrown from the await; uncaught, it fails the workflow with its code.
  const std::string denied = approvals.with_key("loan-3").start(ApprovalRequest{"boat", 0});
  approvals.reject(denied, "first", -1042, "denied by the board");
  std::string message;
  assert_int_equal(test::status_of([&] { approvals.join(denied); }, &message), -1042);
  assert_non_null(std::strstr(message.c_str(), "denied by the board"));
  assert_int_equal(test::status_of([&] { approvals.poll(denied); }), -1042);
  rt.stop();
}

// ---- cancellation -------------------------------------------------------------

struct wait_log {
  std::atomic<int> suspended_seen{0}, swallowed{0}, after{0};
};

struct Waiter {
  wait_log *log;
  std::string execute(cruster::workflow_context<Waiter> &wf, const std::string &what) {
    try {
      wf.await("never");
    } catch (const std::exception &) { // user code's catch-all: a stop passes through it
      log->swallowed++;
      throw;
    } catch (const cruster::suspended &) {
      log->suspended_seen++;
      throw;
    }
    log->after++;
    return what;
  }
};

void cancel_stops_a_waiting_execution(void **) {
  wait_log log;
  cruster::runtime rt = make_wf_runtime();
  auto waiters = rt.register_workflow(Waiter{&log});
  rt.start();

  const std::string id = waiters.with_key_raw("waiter-1").start(std::string("w"));
  assert_string_equal(id.c_str(), "waiter-1");
  assert_true(eventually([&] { return log.suspended_seen.load() >= 1; }));
  waiters.cancel(id);
  std::string message;
  assert_int_equal(test::status_of([&] { waiters.join(id); }, &message), CRUSTER_E_CANCELLED);
  assert_int_equal(test::status_of([&] { waiters.poll(id); }), CRUSTER_E_CANCELLED);
  assert_int_equal(log.swallowed.load(), 0);
  assert_int_equal(log.after.load(), 0);
  // Finished: a second cancel is refused.
  assert_int_equal(test::status_of([&] { waiters.cancel(id); }), CRUSTER_E_STATE);
  // The same key answers the same again (execute through the client).
  assert_int_equal(test::status_of([&] { waiters.with_key_raw("waiter-1").execute("w"); }),
                   CRUSTER_E_CANCELLED);
  rt.stop();
}

// ---- retries -------------------------------------------------------------------

struct flaky_log {
  std::mutex mu;
  std::vector<int32_t> attempts; // of `flaky`
  std::vector<int32_t> hopeless_attempts;
  void add(std::vector<int32_t> &v, int32_t a) {
    std::lock_guard<std::mutex> lock(mu);
    v.push_back(a);
  }
  std::vector<int32_t> get(const std::vector<int32_t> &v) {
    std::lock_guard<std::mutex> lock(mu);
    return v;
  }
};

struct RetryOutcome {
  int32_t succeeded_on = 0;
  int hopeless_code = 0;
  std::string hopeless_message;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RetryOutcome, succeeded_on, hopeless_code, hopeless_message)

struct Retrying {
  flaky_log *log;

  RetryOutcome execute(cruster::workflow_context<Retrying> &wf, const std::string &) {
    RetryOutcome out;
    out.succeeded_on = wf.activity<&Retrying::flaky>();
    try {
      wf.activity<&Retrying::hopeless>();
    } catch (const cruster::error &e) { // the last attempt's failure
      out.hopeless_code = e.status();
      out.hopeless_message = e.what();
    }
    return out;
  }
  int32_t flaky(cruster::activity_context &a) {
    log->add(log->attempts, a.attempt());
    if (a.attempt() < 3)
      throw cruster::error(-1100, "flaky, attempt " + std::to_string(a.attempt()));
    return a.attempt();
  }
  void hopeless(cruster::activity_context &a) {
    log->add(log->hopeless_attempts, a.attempt());
    throw cruster::error(-1101, "never works");
  }

  static constexpr auto activities = cruster::activities(
      cruster::activity<&Retrying::flaky>("flaky", cruster::retries(3).constant_backoff(10ms)),
      cruster::activity<&Retrying::hopeless>("hopeless", cruster::retries(2).backoff(5ms, 20ms)));
};

void a_failing_activity_is_retried(void **) {
  flaky_log log;
  cruster::runtime rt = make_wf_runtime();
  auto retrying = rt.register_workflow(Retrying{&log});
  rt.start();

  RetryOutcome out = retrying.with_key("r-1").execute(std::string("go"));
  assert_int_equal(out.succeeded_on, 3);
  assert_true((log.get(log.attempts) == std::vector<int32_t>{1, 2, 3}));
  assert_int_equal(out.hopeless_code, -1101);
  assert_non_null(std::strstr(out.hopeless_message.c_str(), "never works"));
  assert_true((log.get(log.hopeless_attempts) == std::vector<int32_t>{1, 2, 3}));
  rt.stop();
}

// ---- activity groups ---------------------------------------------------------------

struct OrderRequest {
  std::string order;
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(OrderRequest, order, amount)

struct group_log {
  std::mutex mu;
  std::vector<std::string> lines;
  void add(const std::string &s) {
    std::lock_guard<std::mutex> lock(mu);
    lines.push_back(s);
  }
  std::vector<std::string> get() {
    std::lock_guard<std::mutex> lock(mu);
    return lines;
  }
};

struct Inventory {
  group_log *log;
  std::string tag;
  std::string reserve(cruster::activity_context &a, const OrderRequest &r) {
    std::string line = tag + ":" + std::string(a.name()) + ":" + r.order;
    log->add(line);
    return line;
  }
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Inventory::reserve>("reserve"));
};

struct Payments {
  static constexpr const char *name = "payments";
  group_log *log;
  std::string reserve(cruster::activity_context &a, const OrderRequest &r) {
    std::string line = "pay:" + std::string(a.name()) + ":" + r.order;
    log->add(line);
    return line;
  }
  int64_t charge(const OrderRequest &r) { return r.amount * 100; }
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Payments::reserve>("reserve"),
                          cruster::activity<&Payments::charge>("charge"));
};

struct CheckoutResult {
  std::string stock;
  std::string funds;
  int64_t cents = 0;
  std::string shipped;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CheckoutResult, stock, funds, cents, shipped)

struct Checkout {
  using groups = cruster::groups<Inventory, Payments>;
  static constexpr auto options = cruster::workflow_options().name("checkout");

  CheckoutResult execute(cruster::workflow_context<Checkout> &wf, const OrderRequest &r) {
    CheckoutResult out;
    out.stock = wf.activity<&Inventory::reserve>(r); // two groups' "reserve": never mixed up
    out.funds = wf.activity<&Payments::reserve>(r);
    out.cents = wf.activity<&Payments::charge>(r);
    out.shipped = wf.activity<&Checkout::ship>(r);
    return out;
  }
  std::string ship(cruster::activity_context &a, const OrderRequest &r) {
    return std::string(a.name()) + ":" + r.order;
  }
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Checkout::ship>("ship"));
};

struct Restock { // the Inventory group again, with its own instance
  using groups = cruster::groups<Inventory>;
  std::string execute(cruster::workflow_context<Restock> &wf, const OrderRequest &r) {
    return wf.activity<&Inventory::reserve>(r);
  }
};

void activity_groups_are_composed_with_their_instances(void **) {
  group_log log;
  cruster::runtime rt = make_wf_runtime();
  // Group instances in any order.
  auto checkout = rt.register_workflow(Checkout{}, Payments{&log}, Inventory{&log, "shop"});
  auto restock = rt.register_workflow(Restock{}, Inventory{&log, "depot"});
  rt.start();
  assert_string_equal(checkout.workflow_name().c_str(), "checkout");

  CheckoutResult out = checkout.with_key("o-1").execute(OrderRequest{"o-1", 7});
  assert_string_equal(out.stock.c_str(), "shop:Inventory/reserve:o-1");
  assert_string_equal(out.funds.c_str(), "pay:payments/reserve:o-1");
  assert_int_equal(out.cents, 700);
  assert_string_equal(out.shipped.c_str(), "ship:o-1");

  assert_string_equal(restock.with_key("r-1").execute(OrderRequest{"r-1", 1}).c_str(),
                      "depot:Inventory/reserve:r-1");
  assert_int_equal(log.get().size(), 3);

  // A client of a workflow registered here (or elsewhere) by type.
  auto again = rt.workflow<Checkout>();
  assert_string_equal(again.with_key("o-1").execute(OrderRequest{"o-1", 7}).stock.c_str(),
                      "shop:Inventory/reserve:o-1");
  assert_int_equal(log.get().size(), 3); // answered from storage

  // Registering the same workflow twice is refused.
  assert_int_equal(test::status_of([&] {
                     rt.register_workflow(Restock{}, Inventory{&log, "x"});
                   }),
                   CRUSTER_E_ALREADY_EXISTS);
  rt.stop();
}

// ---- keys -------------------------------------------------------------------------------

struct KeyedRequest {
  std::string order;
  int64_t amount = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(KeyedRequest, order, amount)

struct key_log {
  std::atomic<int> runs{0};
};

struct Keyed {
  key_log *log;
  static std::string key(const KeyedRequest &r) { return "order:" + r.order; }
  int64_t execute(cruster::workflow_context<Keyed> &, const KeyedRequest &r) {
    log->runs++;
    return r.amount;
  }
};

struct RawKeyed {
  static constexpr auto options = cruster::workflow_options().raw_keys(true);
  static std::string key(const KeyedRequest &r) { return r.order; }
  std::string execute(cruster::workflow_context<RawKeyed> &wf, const KeyedRequest &) {
    return std::string(wf.execution_id());
  }
};

void keys_hashed_raw_and_from_the_key_function(void **) {
  key_log log;
  cruster::runtime rt = make_wf_runtime();
  auto keyed = rt.register_workflow(Keyed{&log});
  auto raw = rt.register_workflow(RawKeyed{});
  rt.start();

  // W::key: the same order is the same execution, whatever the amount.
  assert_string_equal(keyed.execution_id(KeyedRequest{"o-1", 1}).c_str(),
                      hex128("order:o-1").c_str());
  assert_int_equal(keyed.execute(KeyedRequest{"o-1", 5}), 5);
  assert_int_equal(keyed.execute(KeyedRequest{"o-1", 9}), 5);
  assert_int_equal(log.runs.load(), 1);

  // A client's key wins over W::key: hashed, or raw (the id itself).
  assert_string_equal(keyed.with_key("k-1").execution_id().c_str(), hex128("k-1").c_str());
  assert_string_equal(keyed.with_key_raw("k-1").execution_id().c_str(), "k-1");
  assert_int_equal(keyed.with_key_raw("k-1").execute(KeyedRequest{"o-1", 3}), 3);
  assert_int_equal(keyed.poll("k-1").value_or(-1), 3);
  assert_int_equal(keyed.with_key("k-1").execute(KeyedRequest{"o-1", 4}), 4); // another execution
  assert_int_equal(keyed.join(hex128("k-1")), 4);
  assert_int_equal(log.runs.load(), 3);

  // raw_keys: W::key's key is the execution id itself.
  assert_string_equal(raw.execution_id(KeyedRequest{"order-7", 1}).c_str(), "order-7");
  assert_string_equal(raw.execute(KeyedRequest{"order-7", 1}).c_str(), "order-7");
  assert_string_equal(raw.with_key("h").execute(KeyedRequest{"order-7", 1}).c_str(),
                      hex128("h").c_str());

  // A raw key must be a valid entity id.
  assert_int_equal(test::status_of([&] {
                     keyed.with_key_raw(std::string("a\0b", 3)).start({"x", 1});
                   }),
                   CRUSTER_E_INVALID_ARGUMENT);
  rt.stop();
}

// ---- failures --------------------------------------------------------------------------

struct PayRequest {
  int64_t amount = 0;
  bool compensate = false;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PayRequest, amount, compensate)

struct PayResult {
  std::string outcome;
  int code = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(PayResult, outcome, code)

struct Payment {
  std::atomic<int> *withdrawals;

  PayResult execute(cruster::workflow_context<Payment> &wf, const PayRequest &r) {
    if (!r.compensate) {
      wf.activity<&Payment::withdraw>(r); // its failure fails the workflow with its code
      return {"paid", 0};
    }
    try {
      wf.activity<&Payment::withdraw>(r);
      return {"paid", 0};
    } catch (const cruster::error &e) {
      wf.activity<&Payment::refund>(r);
      return {std::string("refunded: ") + e.what(), e.status()};
    }
  }
  int64_t withdraw(const PayRequest &r) {
    withdrawals->fetch_add(1);
    if (r.amount > 100)
      throw cruster::error(-1001, "insufficient funds");
    if (r.amount < 0)
      throw std::runtime_error("negative amounts melt the vault");
    return 100 - r.amount;
  }
  void refund(const PayRequest &) {}

  static constexpr auto activities =
      cruster::activities(cruster::activity<&Payment::withdraw>("withdraw"),
                          cruster::activity<&Payment::refund>("refund"));
};

struct Exploding {
  int execute(cruster::workflow_context<Exploding> &, const int &n) {
    if (n == 1)
      throw std::runtime_error("execute is on fire");
    if (n == 2)
      throw cruster::error(-1500, "a chosen code");
    throw 42; // not a std::exception
  }
};

void a_failing_activity_reaches_execute_and_fails_the_workflow(void **) {
  std::atomic<int> withdrawals{0};
  cruster::runtime rt = make_wf_runtime();
  auto payments = rt.register_workflow(Payment{&withdrawals});
  auto exploding = rt.register_workflow(Exploding{});
  rt.start();

  assert_string_equal(payments.with_key("p-ok").execute(PayRequest{10, false}).outcome.c_str(),
                      "paid");

  // Uncaught: the workflow fails with the activity's code and message, stored.
  std::string message;
  auto broke = payments.with_key("p-broke");
  assert_int_equal(test::status_of(
                       [&] {
                         broke.execute(PayRequest{500, false});
                       },
                       &message),
                   -1001);
  assert_non_null(std::strstr(message.c_str(), "insufficient funds"));
  assert_int_equal(test::status_of([&] { broke.execute(PayRequest{500, false}); }), -1001);
  assert_int_equal(test::status_of([&] { payments.poll(broke.execution_id()); }), -1001);
  assert_int_equal(withdrawals.load(), 2); // "p-ok" and "p-broke" once: failures are journaled

  // Caught in execute: a compensation, and an answer.
  PayResult comp = payments.with_key("p-comp").execute(PayRequest{500, true});
  assert_int_equal(comp.code, -1001);
  assert_string_equal(comp.outcome.c_str(), "refunded: insufficient funds");

  // A std::exception in an activity: CRUSTER_E_HANDLER with its message.
  assert_int_equal(test::status_of(
                       [&] {
                         payments.with_key("p-neg").execute(PayRequest{-1, false});
                       },
                       &message),
                   CRUSTER_E_HANDLER);
  assert_non_null(std::strstr(message.c_str(), "negative amounts melt the vault"));

  // Exceptions thrown by execute itself.
  assert_int_equal(test::status_of([&] { exploding.execute(1); }, &message), CRUSTER_E_HANDLER);
  assert_non_null(std::strstr(message.c_str(), "execute is on fire"));
  assert_int_equal(test::status_of([&] { exploding.execute(2); }, &message), -1500);
  assert_non_null(std::strstr(message.c_str(), "a chosen code"));
  assert_int_equal(test::status_of([&] { exploding.execute(3); }), CRUSTER_E_HANDLER);
  rt.stop();
}

// ---- now, random, patched: journaled ------------------------------------------------------

struct Snapshot {
  int64_t now_ms = 0;
  uint64_t random = 0;
  bool patched = false;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Snapshot, now_ms, random, patched)

struct snapshot_log {
  std::mutex mu;
  std::vector<Snapshot> seen; // one per run of execute
};

struct Clocked {
  snapshot_log *log;
  Snapshot execute(cruster::workflow_context<Clocked> &wf, const std::string &) {
    Snapshot s;
    s.now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(wf.now().time_since_epoch()).count();
    s.random = wf.random();
    s.patched = wf.patched("v2");
    {
      std::lock_guard<std::mutex> lock(log->mu);
      log->seen.push_back(s);
    }
    wf.sleep(100ms); // forces a replay
    return s;
  }
};

void now_random_and_patched_are_replayed(void **) {
  snapshot_log log;
  cruster::runtime rt = make_wf_runtime();
  auto clocked = rt.register_workflow(Clocked{&log});
  rt.start();

  const int64_t before = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  Snapshot s = clocked.with_key("c-1").execute(std::string("x"));
  assert_true(s.now_ms >= before - 1000);
  assert_true(s.patched); // a new execution takes the new path
  std::lock_guard<std::mutex> lock(log.mu);
  assert_true(log.seen.size() >= 2);
  for (const Snapshot &run : log.seen) {
    assert_int_equal(run.now_ms, s.now_ms);
    assert_true(run.random == s.random);
    assert_true(run.patched);
  }
  rt.stop();
}

// ---- restart --------------------------------------------------------------------------------

struct restart_log {
  std::atomic<int> step1{0}, step2{0};
  std::atomic<bool> broken{true};
};

struct Restartable {
  restart_log *log;
  std::string execute(cruster::workflow_context<Restartable> &wf, const std::string &in) {
    int a = wf.activity<&Restartable::step1>();
    wf.activity<&Restartable::step2>();
    return in + ":" + std::to_string(a);
  }
  int step1() { return ++log->step1; }
  void step2() {
    log->step2++;
    if (log->broken.load())
      throw cruster::error(-1200, "step 2 is broken");
  }
  static constexpr auto activities =
      cruster::activities(cruster::activity<&Restartable::step1>("step1"),
                          cruster::activity<&Restartable::step2>("step2"));
};

void restart_runs_a_failed_execution_again(void **) {
  restart_log log;
  cruster::runtime rt = make_wf_runtime();
  auto wf = rt.register_workflow(Restartable{&log});
  rt.start();

  const std::string id = wf.with_key("job-1").start(std::string("job"));
  assert_int_equal(test::status_of([&] { wf.join(id); }), -1200);
  // Not finished successfully yet: restart it with the fix in place.
  log.broken = false;
  wf.restart(id);
  assert_string_equal(wf.join(id).c_str(), "job:1");
  assert_int_equal(log.step1.load(), 1); // its committed answer was kept
  assert_int_equal(log.step2.load(), 2);
  // A succeeded execution is not restarted.
  assert_int_equal(test::status_of([&] { wf.restart(id); }), CRUSTER_E_STATE);
  rt.stop();
}

// ---- futures, callbacks, request-less workflows ------------------------------------------------

struct Tick {
  std::atomic<int> *ticks;
  void execute(cruster::workflow_context<Tick> &wf) { wf.activity<&Tick::tick>(); }
  void tick() { ticks->fetch_add(1); }
  static constexpr auto activities = cruster::activities(cruster::activity<&Tick::tick>("tick"));
};

void futures_and_callbacks(void **) {
  bank b;
  std::atomic<int> ticks{0};
  cruster::runtime rt = make_wf_runtime();
  auto transfers = rt.register_workflow(Transfer{&b});
  auto tick = rt.register_workflow(Tick{&ticks});
  rt.start();

  std::future<Receipt> f = transfers.with_key("f-1").execute_async(TransferRequest{"a", "b", 1});
  assert_int_equal(f.get().amount, 1);

  std::promise<cruster::result<Receipt>> got;
  transfers.with_key("f-2").execute_async(TransferRequest{"a", "c", 2},
                                          [&](cruster::result<Receipt> r) { got.set_value(r); });
  cruster::result<Receipt> r = got.get_future().get();
  assert_true(r.ok());
  assert_int_equal(r.value().amount, 2);

  const std::string id = transfers.with_key("f-3").start(TransferRequest{"a", "d", 3});
  assert_int_equal(transfers.join_async(id).get().amount, 3);
  std::promise<int> status;
  transfers.join_async(hex128("f-2"),
                       [&](cruster::result<Receipt> j) { status.set_value(j.status()); });
  assert_int_equal(status.get_future().get(), CRUSTER_OK);
  std::future<Receipt> missing = transfers.join_async(hex128("f-3"));
  assert_int_equal(missing.get().amount, 3);

  // A request-less, void workflow: the client's key names the execution.
  auto t1 = tick.with_key("tick-1");
  t1.execute();
  t1.execute_async().get();
  assert_true(tick.poll(t1.execution_id()));
  assert_int_equal(ticks.load(), 1);
  tick.with_key("tick-2").start();
  tick.join(hex128("tick-2"));
  assert_int_equal(ticks.load(), 2);

  // A short wait gives up with a timeout; the execution goes on.
  auto approvals = rt.register_workflow(Approvals{});
  int st = test::status_of([&] {
    approvals.with_key("t-1").with_timeout(50ms).execute(ApprovalRequest{"x", 0});
  });
  assert_int_equal(st, CRUSTER_E_TIMEOUT);
  assert_false(approvals.poll(hex128("t-1")).has_value());
  rt.stop();
}

// ---- durable entity calls and child workflows
// ----------------------------------------------------

struct BumpRequest {
  int64_t by = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(BumpRequest, by)

struct Account {
  test::store *balances;
  std::atomic<int> *bumps;
  int64_t bump(cruster::context &ctx, const BumpRequest &r) { // protected: workflows may call it
    bumps->fetch_add(1);
    return balances->add(std::string(ctx.entity_id()), r.by);
  }
  int64_t balance(cruster::context &ctx) { return balances->get(std::string(ctx.entity_id())); }
  static constexpr auto rpcs =
      cruster::rpcs(cruster::rpc<&Account::bump>("bump", cruster::persisted | cruster::protected_),
                    cruster::rpc<&Account::balance>("balance"));
};

struct ParentResult {
  int64_t bumped = 0;
  int64_t balance = 0;
  Receipt child;
  Receipt keyed_child;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ParentResult, bumped, balance, child, keyed_child)

struct Parent {
  std::atomic<int> *runs;
  ParentResult execute(cruster::workflow_context<Parent> &wf, const std::string &account) {
    runs->fetch_add(1);
    ParentResult out;
    out.bumped = wf.call<&Account::bump>(account, BumpRequest{10}); // sent once
    out.balance = wf.call<&Account::balance>(account);
    out.child = wf.child<Transfer>(TransferRequest{account, "bob", 1}); // keyed by position
    out.keyed_child = wf.child<Transfer>(TransferRequest{account, "carol", 2}, "child-" + account);
    wf.sleep(50ms); // one more replay: nothing above is sent or run again
    return out;
  }
};

void entity_calls_and_child_workflows_are_durable(void **) {
  bank b;
  test::store balances;
  std::atomic<int> bumps{0}, runs{0};
  cruster::runtime rt = make_wf_runtime();
  auto accounts = rt.register_entity(Account{&balances, &bumps});
  auto transfers = rt.register_workflow(Transfer{&b});
  auto parents = rt.register_workflow(Parent{&runs});
  rt.start();

  ParentResult r = parents.with_key("p-1").execute(std::string("acct-1"));
  assert_int_equal(r.bumped, 10);
  assert_int_equal(r.balance, 10);
  assert_int_equal(bumps.load(), 1);
  assert_true(runs.load() >= 2);
  assert_int_equal(r.child.amount, 1);
  assert_int_equal(r.keyed_child.amount, 2);
  assert_int_equal(b.debits.load(), 2); // each child's activity ran once
  // A child is an execution of its own, found by its key.
  const std::string child_id = transfers.with_key("child-acct-1").execution_id();
  assert_int_equal(transfers.join(child_id).amount, 2);
  assert_int_equal(accounts.call<&Account::balance>("acct-1"), 10);
  // The public client still may not call the protected method (compile time); the raw C
  // API without a caller is refused.
  cruster_error *err = nullptr;
  void *reply = nullptr;
  size_t len = 0;
  int st = cruster_send_sync(rt.handle(), "Account", "acct-1", "bump", "{\"by\":1}", 8, nullptr,
                             &reply, &len, &err);
  assert_int_equal(st, CRUSTER_E_FORBIDDEN);
  cruster_error_free(err);
  cruster_free(reply);
  rt.stop();
}

void workflows_need_storage(void **) {
  cruster::config cfg;
  cfg.log_level(CRUSTER_LOG_WARN);
  cruster::runtime rt(cfg); // no storage
  std::atomic<int> ticks{0};
  assert_int_equal(test::status_of([&] { rt.register_workflow(Tick{&ticks}); }),
                   CRUSTER_E_INVALID_CONFIG);
}

} // namespace

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(activities_run_once_and_the_answer_is_kept),
      cmocka_unit_test(sleep_suspends_and_resumes),
      cmocka_unit_test(await_is_resolved_and_rejected_from_the_client),
      cmocka_unit_test(cancel_stops_a_waiting_execution),
      cmocka_unit_test(a_failing_activity_is_retried),
      cmocka_unit_test(activity_groups_are_composed_with_their_instances),
      cmocka_unit_test(keys_hashed_raw_and_from_the_key_function),
      cmocka_unit_test(a_failing_activity_reaches_execute_and_fails_the_workflow),
      cmocka_unit_test(now_random_and_patched_are_replayed),
      cmocka_unit_test(restart_runs_a_failed_execution_again),
      cmocka_unit_test(futures_and_callbacks),
      cmocka_unit_test(entity_calls_and_child_workflows_are_durable),
      cmocka_unit_test(workflows_need_storage),
  };
  return cmocka_run_group_tests(tests, nullptr, nullptr);
}
