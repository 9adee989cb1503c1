// The control for workflows: everything the failing files try, done the allowed way, compiles.
#include "fixtures.hpp"
#include "workflow_fixtures.hpp"

struct Tick { // no request, void result, no activities of its own
  void execute(cruster::workflow_context<Tick> &wf) { wf.sleep(std::chrono::seconds(1)); }
};

struct Checkout {
  static constexpr auto options = cruster::workflow_options().name("checkout").raw_keys(true);

  int charge(cruster::activity_context &a, const OrderRequest &r) {
    ::pg_conn *conn = a.pg(); // PGconn* with <libpq-fe.h> (test_workflow checks that)
    (void)conn;
    return r.amount + a.attempt() + static_cast<int>(a.name().size() + a.execution_id().size());
  }
  void ping() {}
  std::string label(const OrderRequest &r) const { return r.order; }

  Approval execute(cruster::workflow_context<Checkout> &wf, const OrderRequest &r) {
    int charged = wf.activity<&Checkout::charge>(r);
    wf.activity<&Checkout::charge>({"braced", 2});
    wf.activity<&Checkout::ping>();
    std::string label = wf.activity<&Checkout::label>(r);
    bool reserved = wf.activity<&Inventory::reserve>(r); // a group Checkout includes
    wf.sleep(std::chrono::milliseconds(10));
    Approval a = wf.await(Order::approval);
    Approval b = wf.await<Approval>("approval-2");
    wf.await(Order::go);
    wf.await("plain");
    std::chrono::system_clock::time_point t = wf.now();
    std::uint64_t n = wf.random();
    n += static_cast<std::uint64_t>(wf.call<&Ledger::get>("l-1")); // entity calls: durable
    wf.call<&Ledger::sync>("l-1", SyncRequest{1});                 // protected: fine here
    n += wf.call<Ledger, &Auditable::log_action>("l-1").size();    // a group's method
    std::string child = wf.child<Order>(r);                        // child workflows
    child += wf.child<Order>(r, "child-key");
    wf.child<Tick>();
    if (wf.patched("v2"))
      n += 1;
    try {
      wf.activity<&Checkout::ping>();
    } catch (const cruster::error &) { // an activity's failure; stops pass through
    }
    (void)charged;
    (void)label;
    (void)reserved;
    (void)t;
    (void)n;
    (void)b;
    (void)child;
    return a;
  }
  static std::string key(const OrderRequest &r) { return r.order; }

  using groups = cruster::groups<Inventory>;
  static constexpr auto activities = cruster::activities(
      cruster::activity<&Checkout::charge>(
          "charge",
          cruster::retries(2).backoff(std::chrono::milliseconds(100), std::chrono::seconds(5))),
      cruster::activity<&Checkout::ping>(
          "ping", cruster::retries(1).constant_backoff(std::chrono::seconds(1))),
      cruster::activity<&Checkout::label>("label"));
};

void use(cruster::runtime &rt) {
  cruster::workflow_client<Order> orders = rt.register_workflow(Order{}, Inventory{});
  auto checkout = rt.register_workflow(Checkout{});
  auto ticks = rt.register_workflow(Tick{});

  std::string s = orders.execute(OrderRequest{"o-1", 5});
  s += orders.with_key("k").execute({"o-2", 1});
  std::future<std::string> f = orders.with_key_raw("o-3").execute_async(OrderRequest{"o-3", 1});
  orders.execute_async(OrderRequest{"o-4", 1}, [](cruster::result<std::string> r) { (void)r; });
  std::string id = orders.with_timeout(std::chrono::seconds(2)).start(OrderRequest{"o-5", 1});
  std::optional<std::string> polled = orders.poll(id);
  s += orders.join(id);
  std::future<std::string> joined = orders.join_async(id);
  orders.join_async(id, [](cruster::result<std::string> r) { (void)r; });
  orders.resolve(id, Order::approval, Approval{"ada"});
  orders.resolve(id, Order::approval, {"braced"});
  orders.resolve(id, Order::go);
  orders.resolve(id, "approval", Approval{"bob"});
  orders.resolve(id, "plain");
  orders.reject(id, Order::approval, -1001, "no");
  orders.reject(id, "approval", -1001, "no");
  orders.cancel(id);
  orders.restart(id);
  s += orders.execution_id(OrderRequest{"o-6", 1}) + orders.with_key("k").execution_id();

  Approval a = checkout.execute(OrderRequest{"c-1", 1});
  ticks.with_key("t").execute();
  bool done = ticks.poll("t-1");
  ticks.join("t-1");
  std::future<void> tf = ticks.execute_async();
  std::string tid = ticks.with_key("t").start();

  auto remote = rt.workflow<Order>(); // registered here or elsewhere
  s += remote.workflow_name();
  (void)f;
  (void)polled;
  (void)joined;
  (void)a;
  (void)done;
  (void)tf;
  (void)tid;
}
