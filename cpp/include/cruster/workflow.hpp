/*
 * cruster/workflow.hpp -- durable workflows in the C++17 layer, over
 * cruster/workflow.h. Included by cruster/cruster.hpp (and including it), so
 * either header gives the whole layer.
 *
 *   struct Transfer {
 *     Db* db;
 *     Receipt execute(cruster::workflow_context<Transfer>& wf, const TransferRequest& r) {
 *       std::string id = wf.activity<&Transfer::debit>(r);   // journaled: runs once
 *       wf.sleep(std::chrono::minutes(1));                     // suspends: no thread held
 *       Approval ok = wf.await<Approval>("approval");          // resolved by a client
 *       wf.activity<&Transfer::credit>(r);
 *       return {id, ok.by};
 *     }
 *     std::string debit(cruster::activity_context& a, const TransferRequest& r);
 *     void credit(cruster::activity_context& a, const TransferRequest& r);
 *     static constexpr auto activities = cruster::activities(
 *         cruster::activity<&Transfer::debit>("debit", cruster::retries(3)),
 *         cruster::activity<&Transfer::credit>("credit"));
 *   };
 *
 *   auto transfers = rt.register_workflow(Transfer{&db});   // cruster::workflow_client<Transfer>
 *   rt.start();
 *   Receipt r = transfers.with_key("t-42").execute(TransferRequest{...});
 *
 * The model (replay, suspension, determinism, activities in a transaction)
 * is docs/workflows.md; the C++ specifics are docs/cpp.md, "Workflows".
 */
#ifndef CRUSTER_WORKFLOW_HPP
#define CRUSTER_WORKFLOW_HPP

#include <cruster/cruster.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cruster {

// ===========================================================================
// Stops: what a durable call throws when the run must end without an answer
// ===========================================================================

/*
 * workflow_stop: thrown by a durable call of workflow_context once the run
 * has to end without an answer: the execution waits (suspended), was
 * cancelled, is not deterministic (nondeterministic), or storage failed
 * (a plain workflow_stop with CRUSTER_E_PERSISTENCE: the execution runs
 * again later). It deliberately derives from nothing -- in particular not
 * from std::exception -- so that `catch (const std::exception&)` and
 * `catch (const cruster::error&)` in execute do not swallow it: it unwinds
 * execute by itself, and the layer's trampoline catches it and returns. A
 * `catch (...)` in execute must rethrow it (`throw;`). Once a stop was
 * thrown, every later durable call of the run throws it again, and
 * execute's answer is ignored.
 */
class workflow_stop {
public:
  workflow_stop(int status, std::string message) : status_(status), message_(std::move(message)) {}
  /** CRUSTER_E_SUSPENDED, CRUSTER_E_CANCELLED, CRUSTER_E_DETERMINISM, CRUSTER_E_PERSISTENCE, ... */
  int status() const noexcept { return status_; }
  const char *what() const noexcept { return message_.c_str(); }

private:
  int status_;
  std::string message_;
};

/** The execution waits (a sleep, a deferred, a retry's pause): it runs again when the wait ends. */
class suspended : public workflow_stop {
public:
  explicit suspended(std::string message)
      : workflow_stop(CRUSTER_E_SUSPENDED, std::move(message)) {}
};

/** The execution was cancelled (cruster_workflow_cancel): that is its answer. */
class cancelled : public workflow_stop {
public:
  explicit cancelled(std::string message)
      : workflow_stop(CRUSTER_E_CANCELLED, std::move(message)) {}
};

/** A durable call differs from its journal entry: the execution fails with CRUSTER_E_DETERMINISM.
 */
class nondeterministic : public workflow_stop {
public:
  explicit nondeterministic(std::string message)
      : workflow_stop(CRUSTER_E_DETERMINISM, std::move(message)) {}
};

// ===========================================================================
// Declaring activities
// ===========================================================================

/*
 * How an activity is retried (cruster_activity_opts), as a constexpr value:
 *   cruster::retries(3)                          exponential: 1 s, 2 s, 4 s ... 60 s
 *   cruster::retries(5).backoff(100ms, 10s)      exponential from 100 ms, at most 10 s
 *   cruster::retries(2).constant_backoff(5s)     every 5 s
 * Bad values (retries outside 0..1000, ...) are refused by register_workflow
 * with CRUSTER_E_INVALID_ARGUMENT naming the field.
 */
class activity_options {
public:
  constexpr activity_options() = default;
  /** Attempts after the first one when an attempt fails. */
  constexpr activity_options retries(int32_t n) const {
    activity_options o = *this;
    o.retries_ = n;
    return o;
  }
  /** Exponential backoff: base * 2^(attempt-1), at most `max` (zero = the C defaults). */
  template <class R1, class P1, class R2 = int64_t, class P2 = std::milli>
  constexpr activity_options backoff(std::chrono::duration<R1, P1> base,
                                     std::chrono::duration<R2, P2> max = {}) const {
    activity_options o = *this;
    o.backoff_ = CRUSTER_BACKOFF_EXPONENTIAL;
    o.base_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(base).count();
    o.max_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(max).count();
    return o;
  }
  /** The same wait between every two attempts. */
  template <class R1, class P1>
  constexpr activity_options constant_backoff(std::chrono::duration<R1, P1> every) const {
    activity_options o = *this;
    o.backoff_ = CRUSTER_BACKOFF_CONSTANT;
    o.base_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(every).count();
    o.max_ms_ = 0;
    return o;
  }

  constexpr int32_t retries() const { return retries_; }
  constexpr int32_t backoff_kind() const { return backoff_; }
  constexpr int64_t backoff_base_ms() const { return base_ms_; }
  constexpr int64_t backoff_max_ms() const { return max_ms_; }

  /** The C options. */
  cruster_activity_opts to_c() const noexcept {
    cruster_activity_opts o = CRUSTER_ACTIVITY_OPTS_INIT;
    o.retries = retries_;
    o.backoff = backoff_;
    o.backoff_base_ms = base_ms_;
    o.backoff_max_ms = max_ms_;
    return o;
  }

private:
  int32_t retries_ = 0;
  int32_t backoff_ = CRUSTER_BACKOFF_EXPONENTIAL;
  int64_t base_ms_ = 0;
  int64_t max_ms_ = 0;
};

/** cruster::retries(n): activity options with `n` retries (exponential backoff by default). */
constexpr activity_options retries(int32_t n) { return activity_options().retries(n); }

/** One activity: member function M under `name`. Made by cruster::activity<&T::m>(...). */
template <auto M> struct activity_def {
  static constexpr auto method = M;
  const char *name;
  activity_options options;
};

template <auto M>
constexpr activity_def<M> activity(const char *name, activity_options options = {}) {
  static_assert(std::is_member_function_pointer_v<decltype(M)>,
                "cruster: activity<&T::method>: the template argument must be a member function");
  return activity_def<M>{name, options};
}

/** A class's activities, as `static constexpr auto activities = cruster::activities(...)`. */
template <class... Defs> struct activity_list { std::tuple<Defs...> defs; };

namespace detail {
template <class D> struct is_activity_def : std::false_type {};
template <auto M> struct is_activity_def<activity_def<M>> : std::true_type {};
} // namespace detail

template <class... Defs> constexpr activity_list<Defs...> activities(Defs... defs) {
  static_assert((detail::is_activity_def<Defs>::value && ...),
                "cruster: activities(...) takes cruster::activity<&T::method>(\"name\", options) "
                "entries");
  return activity_list<Defs...>{std::tuple<Defs...>(defs...)};
}

/*
 * A typed deferred: its name and the type of its value, declared once and
 * used by both sides, so that await and resolve agree at compile time:
 *   static constexpr cruster::deferred<Approval> approval{"approval"};
 *   Approval a = wf.await(Transfer::approval);                  // in execute
 *   transfers.resolve(id, Transfer::approval, Approval{"ada"});  // a client
 * deferred<void> carries no value.
 */
template <class T> struct deferred { const char *name; };

/*
 * Workflow options (all optional), as
 *   static constexpr auto options = cruster::workflow_options().name("transfer").raw_keys(true);
 * name: the workflow's name (else `static constexpr const char* name`, else
 * the struct's name without namespaces); its executions are entities of type
 * "Workflow/<name>". raw_keys: an execution id is the key itself (it must
 * then be a valid entity id) instead of HEX128 of the key, for keys from
 * the workflow's key function or from the input; a client's with_key /
 * with_key_raw always decides for its own key.
 */
class workflow_options {
public:
  constexpr workflow_options() = default;
  constexpr workflow_options name(const char *v) const {
    workflow_options o = *this;
    o.name_ = v;
    return o;
  }
  constexpr workflow_options raw_keys(bool on) const {
    workflow_options o = *this;
    o.raw_keys_ = on;
    return o;
  }
  constexpr const char *name() const { return name_; }
  constexpr bool raw_keys() const { return raw_keys_; }

private:
  const char *name_ = nullptr;
  bool raw_keys_ = false;
};

// ===========================================================================
// Inside an activity
// ===========================================================================

/*
 * activity_context: the attempt being run, passed to activities that take
 * `cruster::activity_context&` first. Valid only during the activity call.
 */
class activity_context {
public:
  explicit activity_context(cruster_activity *act) noexcept : act_(act) {}
  activity_context(const activity_context &) = delete;
  activity_context &operator=(const activity_context &) = delete;

  /** The activity's full name ("<group>/<name>" for a group's). */
  std::string_view name() const noexcept { return cruster_activity_name(act_); }
  /** The execution id of the workflow running it (a key for idempotent side effects). */
  std::string_view execution_id() const noexcept { return cruster_activity_execution_id(act_); }
  /** 1 for the first attempt, 2 for the first retry, ... */
  int32_t attempt() const noexcept { return cruster_activity_attempt(act_); }
  /*
   * With PostgreSQL storage, the connection of the open transaction the
   * activity runs in: a `PGconn*` (libpq's PGconn is `struct pg_conn`, so
   * with <libpq-fe.h> included the pointer converts to nothing: it is one).
   * Do the activity's SQL on it; never COMMIT, ROLLBACK or close it. The
   * reply commits that SQL with the journal row; an exception rolls it back.
   * nullptr with memory storage.
   */
  ::pg_conn *pg() const noexcept { return cruster_activity_pg(act_); }

  cruster_activity *handle() const noexcept { return act_; }

private:
  cruster_activity *act_;
};

template <class W> class workflow_context;
template <class W> class workflow_client;

// ===========================================================================
// Implementation details: signatures and declarations
// ===========================================================================

namespace detail {

template <class T> struct type_identity { using type = T; };
template <class T> using type_identity_t = typename type_identity<T>::type;

template <class T> inline constexpr bool wf_always_false = false;

/** A member function's class, result and parameters. */
template <class M> struct member_fn { static constexpr bool valid = false; };
template <class C, class R, class... A> struct member_fn_base {
  static constexpr bool valid = true;
  using owner = C;
  using result = R;
  using args = std::tuple<A...>;
};
template <class C, class R, class... A>
struct member_fn<R (C::*)(A...)> : member_fn_base<C, R, A...> {};
template <class C, class R, class... A>
struct member_fn<R (C::*)(A...) const> : member_fn_base<C, R, A...> {};
template <class C, class R, class... A>
struct member_fn<R (C::*)(A...) noexcept> : member_fn_base<C, R, A...> {};
template <class C, class R, class... A>
struct member_fn<R (C::*)(A...) const noexcept> : member_fn_base<C, R, A...> {};

template <class A>
inline constexpr bool is_activity_context_v =
    std::is_same_v<std::remove_cv_t<std::remove_reference_t<A>>, activity_context>;

/** An activity's parameters: (), (Request), (activity_context&), (activity_context&, Request). */
template <class Args> struct activity_args {
  static_assert(wf_always_false<Args>,
                "cruster: an activity takes at most (cruster::activity_context&, Request)");
  static constexpr bool takes_context = false;
  static constexpr bool has_request = false;
  using request = no_request;
  using request_param = no_request;
};
template <> struct activity_args<std::tuple<>> {
  static constexpr bool takes_context = false;
  static constexpr bool has_request = false;
  using request = no_request;
  using request_param = no_request;
};
template <class A> struct activity_args<std::tuple<A>> {
  static constexpr bool takes_context = is_activity_context_v<A>;
  static constexpr bool has_request = !takes_context;
  using request = std::conditional_t<takes_context, no_request, std::decay_t<A>>;
  using request_param = std::conditional_t<takes_context, no_request, A>;
  static_assert(!takes_context ||
                    (std::is_lvalue_reference_v<A> && !std::is_const_v<std::remove_reference_t<A>>),
                "cruster: take the activity context as cruster::activity_context&");
};
template <class A0, class A1> struct activity_args<std::tuple<A0, A1>> {
  static_assert(is_activity_context_v<A0> && std::is_lvalue_reference_v<A0> &&
                    !std::is_const_v<std::remove_reference_t<A0>>,
                "cruster: an activity with two parameters takes (cruster::activity_context&, "
                "Request)");
  static constexpr bool takes_context = true;
  static constexpr bool has_request = true;
  using request = std::decay_t<A1>;
  using request_param = A1;
};

template <auto M>
struct activity_traits : activity_args<typename member_fn<std::remove_cv_t<decltype(M)>>::args> {
  using owner = typename member_fn<std::remove_cv_t<decltype(M)>>::owner;
  using result = typename member_fn<std::remove_cv_t<decltype(M)>>::result;
};
template <auto M> using activity_owner_t = typename member_fn<std::remove_cv_t<decltype(M)>>::owner;
template <auto M>
using activity_result_t = typename member_fn<std::remove_cv_t<decltype(M)>>::result;
template <auto M> using activity_request_t = typename activity_traits<M>::request;

/** W::execute's parameters: (workflow_context<W>&) or (workflow_context<W>&, Request). */
template <class W, class Args> struct execute_args {
  static_assert(wf_always_false<Args>,
                "cruster: W::execute takes (cruster::workflow_context<W>&) or "
                "(cruster::workflow_context<W>&, Request)");
  static constexpr bool valid = false;
  static constexpr bool has_request = false;
  using request = no_request;
  using request_param = no_request;
};
template <class W, class A> struct execute_args<W, std::tuple<A>> {
  static_assert(std::is_same_v<A, workflow_context<W> &>,
                "cruster: W::execute takes (cruster::workflow_context<W>&) or "
                "(cruster::workflow_context<W>&, Request)");
  static constexpr bool valid = std::is_same_v<A, workflow_context<W> &>;
  static constexpr bool has_request = false;
  using request = no_request;
  using request_param = no_request;
};
template <class W, class A0, class A1> struct execute_args<W, std::tuple<A0, A1>> {
  static_assert(std::is_same_v<A0, workflow_context<W> &>,
                "cruster: W::execute takes (cruster::workflow_context<W>&) or "
                "(cruster::workflow_context<W>&, Request)");
  static constexpr bool valid = std::is_same_v<A0, workflow_context<W> &>;
  static constexpr bool has_request = true;
  using request = std::decay_t<A1>;
  using request_param = A1;
};

template <class W, class = void> struct has_execute : std::false_type {};
template <class W> struct has_execute<W, std::void_t<decltype(&W::execute)>> : std::true_type {};

template <class W, class = void> struct execute_fn {
  static_assert(wf_always_false<W>,
                "cruster: a workflow has one member function execute(cruster::workflow_context<W>&"
                "[, Request]) (not overloaded, not a template)");
  using args = std::tuple<workflow_context<W> &>;
  using result = void;
};
template <class W> struct execute_fn<W, std::void_t<decltype(&W::execute)>> {
  using mf = member_fn<decltype(&W::execute)>;
  static_assert(mf::valid, "cruster: W::execute must be a non-static member function");
  static_assert(!mf::valid || std::is_same_v<typename mf::owner, W>,
                "cruster: W::execute must be declared in W itself");
  using args = typename mf::args;
  using result = typename mf::result;
};

template <class W> struct execute_traits : execute_args<W, typename execute_fn<W>::args> {
  using result = typename execute_fn<W>::result;
};
template <class W> using wf_request_t = typename execute_traits<W>::request;
template <class W> using wf_result_t = typename execute_traits<W>::result;

template <class T, class = void> struct has_activities : std::false_type {};
template <class T>
struct has_activities<T, std::void_t<decltype(T::activities)>> : std::true_type {};

/** The index of activity M in C::activities, or npos. Compile time. */
inline constexpr std::size_t activity_npos = ~std::size_t(0);
template <class C, auto M, std::size_t I = 0> constexpr std::size_t activity_index() {
  if constexpr (!has_activities<C>::value) {
    return activity_npos;
  } else {
    using defs = std::remove_cv_t<decltype(C::activities.defs)>;
    if constexpr (I == std::tuple_size_v<defs>) {
      return activity_npos;
    } else if constexpr (std::is_same_v<std::tuple_element_t<I, defs>, activity_def<M>>) {
      return I;
    } else {
      return activity_index<C, M, I + 1>();
    }
  }
}

template <class C, class Defs> struct activities_owned_by;
template <class C, class... D>
struct activities_owned_by<C, std::tuple<D...>>
    : std::bool_constant<(std::is_same_v<activity_owner_t<D::method>, C> && ...)> {};

/** Checks a class's activity list (a workflow's may be absent; a group's not). */
template <class C, bool Required> constexpr void check_activity_class() {
  static_assert(!Required || has_activities<C>::value,
                "cruster: an activity group declares its activities: static constexpr auto "
                "activities = cruster::activities(cruster::activity<&G::method>(\"name\"), ...);");
  if constexpr (has_activities<C>::value) {
    static_assert(activities_owned_by<C, std::remove_cv_t<decltype(C::activities.defs)>>::value,
                  "cruster: T::activities lists a member function of another class (declare a "
                  "group's activities in the group's own activities and include it with "
                  "using groups = cruster::groups<G>)");
  }
}

template <class T, class = void> struct has_wf_options : std::false_type {};
template <class T>
struct has_wf_options<T, std::void_t<decltype(&T::options)>>
    : std::bool_constant<std::is_pointer_v<decltype(&T::options)> &&
                         std::is_convertible_v<decltype(T::options), workflow_options>> {};

template <class W> constexpr workflow_options wf_options_for() {
  if constexpr (has_wf_options<W>::value) {
    return W::options;
  } else {
    return workflow_options();
  }
}

/** The name workflow W registers under: options.name, then W::name, then the struct name. */
template <class W> std::string wf_name_for() {
  constexpr workflow_options o = wf_options_for<W>();
  if constexpr (o.name() != nullptr)
    return std::string(o.name());
  if constexpr (has_name<W>::value)
    return std::string(W::name);
  return type_name<W>();
}

/** The name a durable call uses for activity M: "name", or "<group>/name" for a group's. */
template <class W, auto M> const std::string &activity_call_name() {
  using C = activity_owner_t<M>;
  static const std::string name = [] {
    const char *own = std::get<activity_index<C, M>()>(C::activities.defs).name;
    if constexpr (std::is_same_v<C, W>) {
      return std::string(own);
    } else {
      return name_for<C>() + "/" + own;
    }
  }();
  return name;
}

/** The W::key function, if any: `static std::string key(const Request&)`. */
template <class W, class = void> struct has_key_fn : std::false_type {};
template <class W> struct has_key_fn<W, std::void_t<decltype(&W::key)>> : std::true_type {};

/** Takes *err's message (and frees it). */
inline std::string take_message(cruster_error **err) {
  std::string message;
  if (*err != nullptr) {
    message = cruster_error_message(*err);
    cruster_error_free(*err);
    *err = nullptr;
  }
  return message;
}

/** Answers a failed run or attempt with `code`, or CRUSTER_E_HANDLER when the code is refused. */
template <class Fail> void fail_with(Fail &&fail, int code, const std::string &message) {
  if (fail(code, message.c_str()) == CRUSTER_E_INVALID_ARGUMENT) {
    std::string m = "cruster: failed with status " + std::to_string(code) +
                    " (not a failure code: use one of cruster_status or <= "
                    "CRUSTER_E_APPLICATION): " +
                    message;
    (void)fail(CRUSTER_E_HANDLER, m.c_str());
  }
}

/*
 * The C activity function of member function M of class Owner; `user` is
 * the Owner instance the runtime keeps. Decodes, runs, answers exactly once;
 * nothing escapes into the C engine.
 */
template <class Owner, auto M> void run_activity(void *user, cruster_activity *act) noexcept {
  using tr = activity_traits<M>;
  using R = typename tr::result;
  Owner *self = static_cast<Owner *>(user);
  auto fail = [act](int code, const char *m) { return cruster_activity_fail(act, code, m); };
  activity_context ctx(act);

  std::optional<typename tr::request> request;
  if constexpr (tr::has_request) {
    std::size_t len = 0;
    const void *data = cruster_activity_input(act, &len);
    try {
      request.emplace(codec<typename tr::request>::decode(data, len));
    } catch (const error &e) {
      fail_with(fail, e.status(), e.what());
      return;
    } catch (const std::exception &e) {
      fail_with(fail, CRUSTER_E_MALFORMED, e.what());
      return;
    } catch (...) {
      fail_with(fail, CRUSTER_E_MALFORMED, "cruster: the activity's input could not be decoded");
      return;
    }
  }

  auto invoke = [&]() -> R {
    using P = typename tr::request_param;
    if constexpr (tr::takes_context && tr::has_request) {
      return (self->*M)(ctx, static_cast<P &&>(*request));
    } else if constexpr (tr::takes_context) {
      return (self->*M)(ctx);
    } else if constexpr (tr::has_request) {
      return (self->*M)(static_cast<P &&>(*request));
    } else {
      return (self->*M)();
    }
  };

  std::string out;
  try {
    if constexpr (std::is_void_v<R>) {
      invoke();
      out = "null";
    } else {
      R value = invoke();
      try {
        out = codec<R>::encode(value);
      } catch (const std::exception &e) {
        fail_with(fail, CRUSTER_E_HANDLER,
                  std::string("cruster: cannot encode the activity's answer: ") + e.what());
        return;
      }
    }
  } catch (const error &e) {
    fail_with(fail, e.status(), e.what());
    return;
  } catch (const std::exception &e) {
    fail_with(fail, CRUSTER_E_HANDLER, e.what());
    return;
  } catch (const workflow_stop &s) {
    fail_with(fail, CRUSTER_E_HANDLER,
              std::string("cruster: a workflow stop escaped an activity: ") + s.what());
    return;
  } catch (...) {
    fail_with(fail, CRUSTER_E_HANDLER, "cruster: the activity threw a non-std exception");
    return;
  }
  int st = cruster_activity_reply(act, out.data(), out.size());
  if (st != CRUSTER_OK && st != CRUSTER_E_STATE) {
    fail_with(fail, st,
              std::string("cruster: the activity's answer was refused: ") +
                  cruster_status_message(st));
  }
}

/*
 * The C execute function of workflow W; `user` is the W instance. Decodes
 * the input, runs W::execute, answers with its value or the exception it
 * threw -- unless the run stopped (a workflow_stop, even one execute caught
 * and did not rethrow): then it returns without an answer, as the C API
 * asks.
 */
template <class W> void run_execute(void *user, cruster_wf *wf) noexcept {
  using tr = execute_traits<W>;
  using R = typename tr::result;
  W *self = static_cast<W *>(user);
  auto fail = [wf](int code, const char *m) { return cruster_wf_fail(wf, code, m); };
  workflow_context<W> ctx(wf);

  std::optional<typename tr::request> request;
  if constexpr (tr::has_request) {
    std::size_t len = 0;
    const void *data = cruster_wf_input(wf, &len);
    try {
      request.emplace(codec<typename tr::request>::decode(data, len));
    } catch (const error &e) {
      fail_with(fail, e.status(), e.what());
      return;
    } catch (const std::exception &e) {
      fail_with(fail, CRUSTER_E_MALFORMED, e.what());
      return;
    } catch (...) {
      fail_with(fail, CRUSTER_E_MALFORMED, "cruster: the workflow's input could not be decoded");
      return;
    }
  }

  auto invoke = [&]() -> R {
    using P = typename tr::request_param;
    if constexpr (!tr::valid) {
      throw error(CRUSTER_E_INTERNAL); // not reached: W::execute's signature does not compile
    } else if constexpr (tr::has_request) {
      return (self->*(&W::execute))(ctx, static_cast<P &&>(*request));
    } else {
      return (self->*(&W::execute))(ctx);
    }
  };

  std::string out;
  try {
    if constexpr (std::is_void_v<R>) {
      invoke();
      out = "null";
    } else {
      R value = invoke();
      if (cruster_wf_stopped(wf))
        return;
      try {
        out = codec<R>::encode(value);
      } catch (const std::exception &e) {
        fail_with(fail, CRUSTER_E_HANDLER,
                  std::string("cruster: cannot encode the workflow's answer: ") + e.what());
        return;
      }
    }
  } catch (const workflow_stop &) {
    return; // the engine knows why (cruster_wf_stopped): no answer
  } catch (const error &e) {
    if (!cruster_wf_stopped(wf))
      fail_with(fail, e.status(), e.what());
    return;
  } catch (const std::exception &e) {
    if (!cruster_wf_stopped(wf))
      fail_with(fail, CRUSTER_E_HANDLER, e.what());
    return;
  } catch (...) {
    if (!cruster_wf_stopped(wf)) {
      fail_with(fail, CRUSTER_E_HANDLER, "cruster: execute threw a non-std exception");
    }
    return;
  }
  if (cruster_wf_stopped(wf))
    return;
  int st = cruster_wf_complete(wf, out.data(), out.size());
  if (st != CRUSTER_OK && st != CRUSTER_E_STATE) {
    fail_with(fail, st,
              std::string("cruster: the workflow's answer was refused: ") +
                  cruster_status_message(st));
  }
}

/** The C key function of W: W::key(request) is the execution's key. */
template <class W>
int run_key(void *, const void *input, std::size_t len, void *out, std::size_t cap,
            std::size_t *out_len) noexcept {
  try {
    wf_request_t<W> req = codec<wf_request_t<W>>::decode(input, len);
    std::string key(W::key(req));
    if (key.empty() || key.size() > cap)
      return CRUSTER_E_INVALID_ARGUMENT;
    std::memcpy(out, key.data(), key.size());
    *out_len = key.size();
    return CRUSTER_OK;
  } catch (const error &e) {
    return e.status();
  } catch (const std::exception &) {
    return CRUSTER_E_MALFORMED;
  } catch (...) {
    return CRUSTER_E_HANDLER;
  }
}

/** RAII for cruster_workflow_def / cruster_activity_group while building one. */
struct wf_def_handle {
  cruster_workflow_def *h = nullptr;
  wf_def_handle(const std::string &name, cruster_workflow_fn fn, void *user) {
    cruster_error *err = nullptr;
    check(cruster_workflow_def_new(name.c_str(), fn, user, &h, &err), &err);
  }
  ~wf_def_handle() { cruster_workflow_def_free(h); }
  wf_def_handle(const wf_def_handle &) = delete;
  wf_def_handle &operator=(const wf_def_handle &) = delete;
};
struct activity_group_handle {
  cruster_activity_group *h = nullptr;
  explicit activity_group_handle(const std::string &name) {
    cruster_error *err = nullptr;
    check(cruster_activity_group_new(name.c_str(), &h, &err), &err);
  }
  ~activity_group_handle() { cruster_activity_group_free(h); }
  activity_group_handle(const activity_group_handle &) = delete;
  activity_group_handle &operator=(const activity_group_handle &) = delete;
};

/** Adds Owner's activities to a definition or to a group. */
template <class Owner>
void add_activities(cruster_workflow_def *def, cruster_activity_group *group, Owner *owner) {
  if constexpr (has_activities<Owner>::value) {
    std::apply(
        [&](const auto &...d) {
          auto add = [&](const auto &one) {
            using D = std::decay_t<decltype(one)>;
            cruster_error *err = nullptr;
            cruster_activity_fn fn = &run_activity<Owner, D::method>;
            cruster_activity_opts o = one.options.to_c();
            if (group != nullptr) {
              check(cruster_activity_group_add_activity(group, one.name, fn, owner, &o, &err),
                    &err);
            } else {
              check(cruster_workflow_def_add_activity(def, one.name, fn, owner, &o, &err), &err);
            }
          };
          (add(d), ...);
        },
        Owner::activities.defs);
  } else {
    (void)def;
    (void)group;
    (void)owner;
  }
}

template <class G> void add_activity_group(cruster_workflow_def *def, G *instance) {
  check_activity_class<G, true>();
  activity_group_handle g(name_for<G>());
  add_activities<G>(nullptr, g.h, instance);
  cruster_error *err = nullptr;
  check(cruster_workflow_def_add_group(def, g.h, &err), &err);
}

/** The instance of group G among the arguments of register_workflow, or G{}. */
template <class G, class... A> G pick_activity_group(std::tuple<A...> &args) {
  static_assert(count_v<G, A...> <= 1,
                "cruster: register_workflow got two instances of the same activity group");
  if constexpr (count_v<G, A...> == 1) {
    return std::move(std::get<G>(args));
  } else {
    static_assert(std::is_default_constructible_v<G>,
                  "cruster: register_workflow needs an instance of every group in W::groups that "
                  "is not default-constructible");
    return G{};
  }
}

template <class W, class... A, class... G>
std::unique_ptr<instance<W, groups<G...>>> make_workflow_instance(W workflow, std::tuple<A...> args,
                                                                  groups<G...> *) {
  (void)args; // unused when W includes no groups
  return std::make_unique<instance<W, groups<G...>>>(
      std::move(workflow), std::tuple<G...>(pick_activity_group<G>(args)...));
}

/** Checks a class used as a workflow. */
template <class W> constexpr void check_workflow_class() {
  static_assert(has_execute<W>::value,
                "cruster: a workflow has one member function execute(cruster::workflow_context<W>&"
                "[, Request]) (not overloaded, not a template)");
  check_activity_class<W, false>();
  using Gs = groups_of_t<W>;
  static_assert(is_groups<Gs>::value, "cruster: W::groups must be cruster::groups<G...>");
}

template <class W> constexpr void check_key_fn() {
  if constexpr (has_key_fn<W>::value) {
    using K = decltype(&W::key);
    static_assert(execute_traits<W>::has_request,
                  "cruster: W::key derives the key from the request, and W::execute takes none");
    if constexpr (execute_traits<W>::has_request) {
      static_assert(std::is_pointer_v<K> && std::is_invocable_v<K, const wf_request_t<W> &> &&
                        std::is_constructible_v<std::string,
                                                std::invoke_result_t<K, const wf_request_t<W> &>>,
                    "cruster: W::key must be a static member function taking the workflow's "
                    "request and returning its key (std::string)");
    }
  }
}

} // namespace detail

// ===========================================================================
// Inside execute
// ===========================================================================

/*
 * workflow_context<W>: the running execution of workflow W, passed to
 * W::execute. Its durable calls are journaled; a replay returns the
 * journal's results. Each throws:
 *  - cruster::suspended / cancelled / nondeterministic / workflow_stop when
 *    the run must end (not std::exceptions: let them unwind execute);
 *  - cruster::error for an outcome that execute may handle: an activity's
 *    last failure (its code and message), a rejected deferred, a bad
 *    argument, a value that does not decode (CRUSTER_E_MALFORMED).
 * Valid only during execute, on its thread.
 */
template <class W> class workflow_context {
  template <auto M> using R = detail::activity_result_t<M>;
  template <auto M> using Req = detail::activity_request_t<M>;

public:
  explicit workflow_context(cruster_wf *wf) noexcept : wf_(wf) {}
  workflow_context(const workflow_context &) = delete;
  workflow_context &operator=(const workflow_context &) = delete;

  /*
   * Runs activity M (a member function listed in the activities of W or of
   * an activity group W includes) with `req`, or returns its journaled
   * answer. Its last failure is thrown as cruster::error with its code.
   */
  template <auto M> R<M> activity(const Req<M> &req) {
    check_activity<M>();
    if constexpr (activity_ok<M>()) {
      return run_activity<M>(codec<Req<M>>::encode(req));
    } else {
      (void)req;
      throw error(CRUSTER_E_INVALID_ARGUMENT); // not reached: it does not compile
    }
  }
  /** An activity that takes no request. */
  template <auto M> R<M> activity() {
    check_activity<M>();
    static_assert(
        !detail::activity_traits<M>::has_request,
        "cruster: this activity takes a request: pass it to activity<&T::method>(request)");
    if constexpr (activity_ok<M>() && !detail::activity_traits<M>::has_request) {
      return run_activity<M>("null");
    } else {
      throw error(CRUSTER_E_INVALID_ARGUMENT); // not reached: it does not compile
    }
  }
  /** (Diagnoses a request of the wrong type.) */
  template <auto M, class A, class = std::enable_if_t<!std::is_convertible_v<const A &, Req<M>>>>
  R<M> activity(const A &) {
    check_activity<M>();
    if constexpr (detail::activity_traits<M>::has_request) {
      static_assert(detail::wf_always_false<A>,
                    "cruster: wrong request type for this activity: pass the type its member "
                    "function takes");
    } else {
      static_assert(detail::wf_always_false<A>,
                    "cruster: this activity takes no request: call activity<&T::method>()");
    }
    throw error(CRUSTER_E_INVALID_ARGUMENT); // not reached: it does not compile
  }

  /** A durable sleep of `d` (rounded up to ms) from the first time this call was reached. */
  template <class Rep, class Period> void sleep(std::chrono::duration<Rep, Period> d) {
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(d).count();
    cruster_error *err = nullptr;
    durable(cruster_wf_sleep(wf_, static_cast<int64_t>(ms), &err), &err);
  }

  /*
   * Waits for deferred `name` of this execution and returns its value
   * decoded as T (T = void: the value is ignored). A rejection is thrown as
   * cruster::error with the rejection's code and message.
   */
  template <class T = void> T await(const std::string &name) {
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_wf_await(wf_, name.c_str(), &out, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    durable(st, &err);
    return detail::decode_result<T>(out, len);
  }
  /** The typed form: the deferred's own type. */
  template <class T> T await(const deferred<T> &d) { return await<T>(d.name); }

  /** The current time, journaled: every replay sees the first run's value (ms precision). */
  std::chrono::system_clock::time_point now() {
    int64_t ms = 0;
    cruster_error *err = nullptr;
    durable(cruster_wf_now(wf_, &ms, &err), &err);
    return std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::milliseconds(ms)));
  }

  /** 64 random bits, journaled like now(). */
  std::uint64_t random() {
    std::uint64_t v = 0;
    random(&v, sizeof v);
    return v;
  }
  /** `len` (1..4096) random bytes into `out`, journaled. */
  void random(void *out, std::size_t len) {
    cruster_error *err = nullptr;
    durable(cruster_wf_random(wf_, out, len, &err), &err);
  }

  /*
   * Version marker (cruster_wf_patched): true on the new path (a new
   * execution, or one that recorded the marker here), false for an
   * execution journaled past this point by code without it.
   */
  bool patched(const std::string &name) {
    int yes = 0;
    cruster_error *err = nullptr;
    durable(cruster_wf_patched(wf_, name.c_str(), &yes, &err), &err);
    return yes != 0;
  }

  /*
   * A durable call of method M of entity `id` (cruster_wf_call): sent once
   * however often execute runs, its answer (or failure, thrown as
   * cruster::error) journaled. The entity type is M's class; for a method
   * of an rpc group, name the entity: call<Ledger, &Auditable::log_action>.
   * Protected methods are callable (an execution is an entity); private ones
   * do not compile. The worker waits for the answer ("default_call_timeout").
   */
  template <auto M>
  detail::result_of<M> call(const std::string &id, const detail::request_of<M> &req) {
    return call<detail::owner_of<M>, M>(id, req);
  }
  template <auto M> detail::result_of<M> call(const std::string &id) {
    return call<detail::owner_of<M>, M>(id);
  }
  template <class T, auto M>
  detail::result_of<M> call(const std::string &id, const detail::request_of<M> &req) {
    check_call<T, M>();
    return call_encoded<T, M>(id, detail::encode_request<M>(req));
  }
  template <class T, auto M> detail::result_of<M> call(const std::string &id) {
    check_call<T, M>();
    static_assert(!detail::traits_of<M>::has_request,
                  "cruster: this rpc takes a request: pass it after the entity id");
    return call_encoded<T, M>(id, "null");
  }

  /*
   * Runs workflow C as a child of this execution and returns its answer
   * (cruster_wf_child): started once, waited for suspended, its answer (or
   * failure, thrown as cruster::error) journaled. Its key is `key`, else
   * "<this execution id>/<position>"; its execution id is HEX128 of the key.
   * C must be registered where the child runs; clients can poll, join,
   * resolve and cancel it like any execution.
   */
  template <class C>
  detail::wf_result_t<C> child(const detail::wf_request_t<C> &req,
                               std::optional<std::string_view> key = std::nullopt) {
    detail::check_workflow_class<C>();
    if constexpr (detail::execute_traits<C>::has_request) {
      return child_encoded<C>(codec<detail::wf_request_t<C>>::encode(req), key);
    } else {
      (void)req;
      return child_encoded<C>("null", key);
    }
  }
  /** A child whose execute takes no request, keyed by its position (with a key: child<C>({}, key)).
   */
  template <class C> detail::wf_result_t<C> child() {
    detail::check_workflow_class<C>();
    static_assert(!detail::execute_traits<C>::has_request,
                  "cruster: this workflow takes a request: pass it to child<C>(request)");
    return child_encoded<C>("null", std::nullopt);
  }

  std::string_view execution_id() const noexcept { return cruster_wf_execution_id(wf_); }
  std::string_view workflow_name() const noexcept { return cruster_wf_workflow(wf_); }
  /** True once a durable call stopped the run (execute should be unwinding). */
  bool stopped() const noexcept { return cruster_wf_stopped(wf_) != 0; }
  cruster_wf *handle() const noexcept { return wf_; }

private:
  /** True if M is an activity execute may call (else check_activity does not compile). */
  template <auto M> static constexpr bool activity_ok() {
    using C = detail::activity_owner_t<M>;
    if constexpr (detail::composes_v<W, C>) {
      return detail::activity_index<C, M>() != detail::activity_npos;
    } else {
      return false;
    }
  }

  template <auto M> static constexpr void check_activity() {
    using C = detail::activity_owner_t<M>;
    static_assert(detail::composes_v<W, C>,
                  "cruster: this activity belongs neither to the workflow nor to an activity "
                  "group it includes (using groups = cruster::groups<...>)");
    if constexpr (detail::composes_v<W, C>) {
      detail::check_activity_class<C, !std::is_same_v<C, W>>();
      static_assert(detail::activity_index<C, M>() != detail::activity_npos,
                    "cruster: this member function is not an activity: list it in its class's "
                    "activities");
    }
  }

  template <auto M> R<M> run_activity(const std::string &payload) {
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_wf_activity(wf_, detail::activity_call_name<W, M>().c_str(), payload.data(),
                                 payload.size(), &out, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    durable(st, &err);
    return detail::decode_result<R<M>>(out, len);
  }

  template <class T, auto M> static constexpr void check_call() {
    using C = detail::owner_of<M>;
    detail::check_rpc_class<T>();
    static_assert(detail::composes_v<T, C>,
                  "cruster: this method belongs neither to the entity nor to an rpc group it "
                  "includes (using groups = cruster::groups<...>)");
    if constexpr (detail::composes_v<T, C>) {
      detail::check_rpc_class<C>();
      constexpr unsigned flags = detail::flags_of<C, M>();
      static_assert(flags != detail::not_declared,
                    "cruster: this member function is not an rpc: list it in its class's rpcs");
      if constexpr (flags != detail::not_declared) {
        static_assert((flags & CRUSTER_RPC_PRIVATE) == 0,
                      "cruster: this method is private: it is never callable, not even from "
                      "entities");
      }
    }
  }

  template <class T, auto M>
  detail::result_of<M> call_encoded(const std::string &id, const std::string &payload) {
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    const std::string type = detail::name_for<T>();
    int st =
        cruster_wf_call(wf_, type.c_str(), id.c_str(), detail::name_of<detail::owner_of<M>, M>(),
                        payload.data(), payload.size(), &out, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    durable(st, &err);
    return detail::decode_result<detail::result_of<M>>(out, len);
  }

  template <class C>
  detail::wf_result_t<C> child_encoded(const std::string &payload,
                                       std::optional<std::string_view> key) {
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    const std::string name = detail::wf_name_for<C>();
    int st = cruster_wf_child(wf_, name.c_str(), payload.data(), payload.size(),
                              key ? key->data() : nullptr, key ? key->size() : 0, &out, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    durable(st, &err);
    return detail::decode_result<detail::wf_result_t<C>>(out, len);
  }

  /** Turns a durable call's status into a stop or a cruster::error. */
  void durable(int st, cruster_error **err) {
    if (st == CRUSTER_OK)
      return;
    std::string message = detail::take_message(err);
    if (message.empty())
      message = cruster_status_message(st);
    if (cruster_wf_stopped(wf_)) {
      switch (st) {
      case CRUSTER_E_SUSPENDED:
        throw suspended(std::move(message));
      case CRUSTER_E_CANCELLED:
        throw cancelled(std::move(message));
      case CRUSTER_E_DETERMINISM:
        throw nondeterministic(std::move(message));
      default:
        throw workflow_stop(st, std::move(message));
      }
    }
    throw error(st, message);
  }

  cruster_wf *wf_;
};

// ===========================================================================
// The client
// ===========================================================================

/*
 * A client of workflow W. A small value (runtime pointer, name, key and
 * timeout): copy it freely; it must not outlive its runtime. with_key /
 * with_key_raw / with_timeout return modified copies.
 *
 * Which execution a call means: the client's key (with_key: the execution id
 * is HEX128 of it; with_key_raw: the key itself), else W::key(request) when
 * W has one, else the encoded request's bytes. The same key is the same
 * execution: a finished one answers with its stored answer (a failure too)
 * without running again.
 *
 * Threads: any but the runtime's loop thread (so not from a future's
 * completion); from execute, only through activities (a client call is not
 * a durable call).
 */
template <class W> class workflow_client {
public:
  using request_type = detail::wf_request_t<W>;
  using result_type = detail::wf_result_t<W>;

private:
  using Req = request_type;
  using R = result_type;
  static constexpr bool has_request = detail::execute_traits<W>::has_request;
  template <class A>
  using if_wrong_request = std::enable_if_t<!std::is_convertible_v<const A &, Req>>;

public:
  workflow_client(cruster_runtime *rt, std::string workflow_name) noexcept
      : rt_(rt), name_(std::move(workflow_name)) {}

  const std::string &workflow_name() const noexcept { return name_; }
  cruster_runtime *runtime_handle() const noexcept { return rt_; }
  /** The key given with with_key / with_key_raw, if any. */
  const std::optional<std::string> &key() const noexcept { return key_; }

  /** A copy whose calls address the execution of key `k` (its id is HEX128 of `k`). */
  workflow_client with_key(std::string_view k) const {
    workflow_client c = *this;
    c.key_.emplace(k);
    c.raw_ = false;
    return c;
  }
  /** A copy whose calls address the execution whose id is `k` itself (a valid entity id). */
  workflow_client with_key_raw(std::string_view k) const {
    workflow_client c = *this;
    c.key_.emplace(k);
    c.raw_ = true;
    return c;
  }
  /** A copy whose waiting calls (execute, join) give up after `d` (zero: "default_call_timeout").
   */
  template <class Rep, class Period>
  workflow_client with_timeout(std::chrono::duration<Rep, Period> d) const {
    workflow_client c = *this;
    c.timeout_ = std::chrono::duration_cast<std::chrono::milliseconds>(d);
    return c;
  }

  // ---- execute: start and wait for the answer -------------------------------

  /*
   * Starts the execution (unless it exists) and waits for its answer: the
   * value W::execute returned, or its failure thrown as cruster::error (the
   * code execute or an activity failed with, CRUSTER_E_CANCELLED,
   * CRUSTER_E_DETERMINISM, CRUSTER_E_TIMEOUT -- the execution goes on:
   * join it later).
   */
  R execute(const Req &req) const { return execute_encoded(encode(req)); }
  /** For a workflow whose execute takes no request. */
  template <class X = void> R execute() const {
    static_assert(!has_request || detail::wf_always_false<X>,
                  "cruster: this workflow takes a request: pass it to execute(request)");
    return execute_encoded("null");
  }
  template <class A, class = if_wrong_request<A>> R execute(const A &) const {
    static_assert(detail::wf_always_false<A>, "cruster: execute takes the workflow's request "
                                              "type (the second parameter of W::execute)");
    throw error(CRUSTER_E_INVALID_ARGUMENT);
  }

  /** As execute; the future holds the answer or the cruster::error. */
  std::future<R> execute_async(const Req &req) const { return execute_future(encode(req)); }
  template <class X = void> std::future<R> execute_async() const {
    static_assert(!has_request || detail::wf_always_false<X>,
                  "cruster: this workflow takes a request: pass it to execute_async(request)");
    return execute_future("null");
  }
  /** As execute; `fn(cruster::result<R>)` runs once, on a worker thread, and must not throw. */
  template <class F, class = std::enable_if_t<std::is_invocable_v<F &, result<R>>>>
  void execute_async(const Req &req, F &&fn) const {
    execute_callback(encode(req), std::forward<F>(fn));
  }
  template <class A, class = if_wrong_request<A>,
            class = std::enable_if_t<!std::is_invocable_v<A &, result<R>>>>
  std::future<R> execute_async(const A &) const {
    static_assert(detail::wf_always_false<A>, "cruster: execute takes the workflow's request "
                                              "type (the second parameter of W::execute)");
    throw error(CRUSTER_E_INVALID_ARGUMENT);
  }

  // ---- start, poll, join -----------------------------------------------------

  /** Starts the execution (a start of an existing one changes nothing); returns its execution id
   * once stored. */
  std::string start(const Req &req) const { return start_encoded(encode(req)); }
  template <class X = void> std::string start() const {
    static_assert(!has_request || detail::wf_always_false<X>,
                  "cruster: this workflow takes a request: pass it to start(request)");
    return start_encoded("null");
  }
  template <class A, class = if_wrong_request<A>> std::string start(const A &) const {
    static_assert(detail::wf_always_false<A>, "cruster: start takes the workflow's request type "
                                              "(the second parameter of W::execute)");
    throw error(CRUSTER_E_INVALID_ARGUMENT);
  }

  /*
   * The execution id a start with `req` would address (pure computation with
   * a key; W::key or the request's bytes otherwise, which needs W registered
   * on this runtime: CRUSTER_E_NOT_FOUND else).
   */
  std::string execution_id(const Req &req) const { return id_encoded(encode(req)); }
  /** The execution id of the client's key (with_key / with_key_raw), or of a request-less workflow.
   */
  std::string execution_id() const { return id_encoded(has_request ? std::string() : "null"); }

  /*
   * The answer of execution `id` without waiting: std::nullopt while it runs
   * or waits (for a void workflow: false / true). A stored failure throws.
   * Throws CRUSTER_E_NOT_FOUND (no such execution), CRUSTER_E_CONFLICT (two
   * executions share the id: use raw keys), CRUSTER_E_MALFORMED, ...
   */
  detail::poll_result_t<R> poll(const std::string &id) const {
    int ready = 0;
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_workflow_poll(rt_, name_.c_str(), id.c_str(), &ready, &out, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    check(st, &err); // a stored failure (ready == 1) throws here as well
    if constexpr (std::is_void_v<R>) {
      return ready != 0;
    } else {
      if (ready == 0)
        return std::nullopt;
      return detail::decode_result<R>(out, len);
    }
  }

  /** Waits (within the client's timeout) for the answer of execution `id`, started anywhere. */
  R join(const std::string &id) const {
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_workflow_join_sync(rt_, name_.c_str(), id.c_str(), timeout_.count(), &out,
                                        &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    check(st, &err);
    return detail::decode_result<R>(out, len);
  }
  /** As join; the future holds the answer or the cruster::error. */
  std::future<R> join_async(const std::string &id) const {
    auto promise = std::make_unique<std::promise<R>>();
    std::future<R> fut = promise->get_future();
    cruster_error *err = nullptr;
    check(cruster_workflow_join(rt_, name_.c_str(), id.c_str(), timeout_.count(),
                                &detail::complete_promise<R>, promise.get(), &err),
          &err);
    promise.release(); // complete_promise owns it now
    return fut;
  }
  /** As join; `fn(cruster::result<R>)` runs once, on a worker thread, and must not throw. */
  template <class F, class = std::enable_if_t<std::is_invocable_v<F &, result<R>>>>
  void join_async(const std::string &id, F &&fn) const {
    auto box = std::make_unique<detail::callback_box<R>>();
    box->fn = std::forward<F>(fn);
    cruster_error *err = nullptr;
    check(cruster_workflow_join(rt_, name_.c_str(), id.c_str(), timeout_.count(),
                                &detail::complete_callback<R>, box.get(), &err),
          &err);
    box.release(); // complete_callback owns it now
  }

  // ---- deferreds, cancel, restart --------------------------------------------

  /*
   * Resolves deferred `name` of execution `id` with `value` (encoded with
   * codec<T>; without a value: JSON null). The first outcome wins: a later
   * one throws CRUSTER_E_ALREADY_EXISTS; a finished execution throws
   * CRUSTER_E_STATE. Works before the execution reaches its await.
   */
  template <class T>
  void resolve(const std::string &id, const std::string &name, const T &value) const {
    resolve_encoded(id, name, codec<T>::encode(value));
  }
  void resolve(const std::string &id, const std::string &name) const {
    resolve_encoded(id, name, "null");
  }
  /** The typed form: the value has the deferred's type. */
  template <class T>
  void resolve(const std::string &id, const deferred<T> &d,
               const detail::type_identity_t<T> &value) const {
    static_assert(!std::is_void_v<T>, "cruster: a deferred<void> is resolved without a value");
    resolve_encoded(id, d.name, codec<T>::encode(value));
  }
  template <class T, class V,
            class = std::enable_if_t<!std::is_convertible_v<const V &, detail::type_identity_t<T>>>>
  void resolve(const std::string &, const deferred<T> &, const V &) const {
    static_assert(detail::wf_always_false<V>,
                  "cruster: the value does not have the deferred's type (cruster::deferred<T>)");
  }
  template <class T> void resolve(const std::string &id, const deferred<T> &d) const {
    static_assert(std::is_void_v<T>,
                  "cruster: this deferred carries a value: resolve(id, deferred, value)");
    resolve_encoded(id, d.name, "null");
  }

  /** Rejects deferred `name` of execution `id`: its await throws cruster::error(code, message). */
  void reject(const std::string &id, const std::string &name, int code,
              const std::string &message) const {
    cruster_error *err = nullptr;
    check(cruster_workflow_reject(rt_, name_.c_str(), id.c_str(), name.c_str(), code,
                                  message.c_str(), &err),
          &err);
  }
  template <class T>
  void reject(const std::string &id, const deferred<T> &d, int code,
              const std::string &message) const {
    reject(id, std::string(d.name), code, message);
  }

  /** Cancels execution `id`: its answer becomes CRUSTER_E_CANCELLED (CRUSTER_E_STATE if finished).
   */
  void cancel(const std::string &id) const {
    cruster_error *err = nullptr;
    check(cruster_workflow_cancel(rt_, name_.c_str(), id.c_str(), &err), &err);
  }

  /*
   * Runs failed or cancelled execution `id` again (its successful
   * activities' answers are kept); join it for the new answer. Throws
   * CRUSTER_E_STATE when it has not finished or succeeded.
   */
  void restart(const std::string &id) const {
    cruster_error *err = nullptr;
    check(cruster_workflow_restart(rt_, name_.c_str(), id.c_str(), &err), &err);
  }

private:
  static std::string encode(const Req &req) {
    if constexpr (has_request) {
      return codec<Req>::encode(req);
    } else {
      (void)req;
      return "null";
    }
  }

  /** The C options; they point into *this. */
  cruster_workflow_opts opts() const noexcept {
    cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
    if (key_) {
      o.key = key_->data();
      o.key_len = key_->size();
      o.raw_key = raw_ ? 1 : 0;
    }
    o.timeout_ms = timeout_.count();
    return o;
  }

  R execute_encoded(const std::string &payload) const {
    cruster_workflow_opts o = opts();
    void *out = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_workflow_execute_sync(rt_, name_.c_str(), payload.data(), payload.size(), &o,
                                           &out, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(out);
    check(st, &err);
    return detail::decode_result<R>(out, len);
  }

  std::future<R> execute_future(const std::string &payload) const {
    auto promise = std::make_unique<std::promise<R>>();
    std::future<R> fut = promise->get_future();
    cruster_workflow_opts o = opts();
    cruster_error *err = nullptr;
    check(cruster_workflow_execute(rt_, name_.c_str(), payload.data(), payload.size(), &o,
                                   &detail::complete_promise<R>, promise.get(), &err),
          &err);
    promise.release(); // complete_promise owns it now
    return fut;
  }

  template <class F> void execute_callback(const std::string &payload, F &&fn) const {
    auto box = std::make_unique<detail::callback_box<R>>();
    box->fn = std::forward<F>(fn);
    cruster_workflow_opts o = opts();
    cruster_error *err = nullptr;
    check(cruster_workflow_execute(rt_, name_.c_str(), payload.data(), payload.size(), &o,
                                   &detail::complete_callback<R>, box.get(), &err),
          &err);
    box.release(); // complete_callback owns it now
  }

  std::string start_encoded(const std::string &payload) const {
    cruster_workflow_opts o = opts();
    char *id = nullptr;
    cruster_error *err = nullptr;
    int st =
        cruster_workflow_start(rt_, name_.c_str(), payload.data(), payload.size(), &o, &id, &err);
    std::unique_ptr<char, detail::c_free> owned(id);
    check(st, &err);
    return std::string(id != nullptr ? id : "");
  }

  std::string id_encoded(const std::string &payload) const {
    cruster_workflow_opts o = opts();
    char *id = nullptr;
    cruster_error *err = nullptr;
    int st = cruster_workflow_execution_id(rt_, name_.c_str(), payload.data(), payload.size(), &o,
                                           &id, &err);
    std::unique_ptr<char, detail::c_free> owned(id);
    check(st, &err);
    return std::string(id != nullptr ? id : "");
  }

  void resolve_encoded(const std::string &id, const std::string &name,
                       const std::string &value) const {
    cruster_error *err = nullptr;
    check(cruster_workflow_resolve(rt_, name_.c_str(), id.c_str(), name.c_str(), value.data(),
                                   value.size(), &err),
          &err);
  }

  cruster_runtime *rt_;
  std::string name_;
  std::optional<std::string> key_;
  bool raw_ = false;
  std::chrono::milliseconds timeout_{0};
};

// ===========================================================================
// Registration (members of cruster::runtime, declared in cruster.hpp)
// ===========================================================================

/*
 * Registers workflow W, with W's activities and those of the groups in
 * W::groups handled by `group_instances` (one per group, any order; a
 * default-constructible group may be left out). The runtime keeps the
 * instances until it is destroyed; executions of different ids run
 * concurrently on worker threads against them, so their member functions
 * must be thread-safe. Throws cruster::error: CRUSTER_E_ALREADY_EXISTS (a
 * workflow or entity type of that name), CRUSTER_E_INVALID_CONFIG (the
 * runtime has no storage), CRUSTER_E_INVALID_ARGUMENT (a bad name or
 * activity options), ...
 */
template <class W, class... G>
workflow_client<W> runtime::register_workflow(W workflow, G... group_instances) {
  detail::check_workflow_class<W>();
  detail::check_key_fn<W>();
  using Gs = detail::groups_of_t<W>;
  static_assert((detail::in_groups<G, Gs>::value && ...),
                "cruster: register_workflow got an instance of a group W does not include "
                "(using groups = cruster::groups<...>)");

  auto inst = detail::make_workflow_instance<W>(std::move(workflow),
                                                std::tuple<G...>(std::move(group_instances)...),
                                                static_cast<Gs *>(nullptr));
  const std::string name = detail::wf_name_for<W>();
  detail::wf_def_handle def(name, &detail::run_execute<W>, &inst->entity);
  constexpr workflow_options o = detail::wf_options_for<W>();
  cruster_error *err = nullptr;
  if constexpr (detail::has_key_fn<W>::value) {
    check(cruster_workflow_def_set_key(def.h, &detail::run_key<W>, nullptr, o.raw_keys() ? 0 : 1,
                                       &err),
          &err);
  } else if constexpr (o.raw_keys()) {
    check(cruster_workflow_def_set_key(def.h, nullptr, nullptr, 0, &err), &err);
  }
  detail::add_activities<W>(def.h, nullptr, &inst->entity);
  std::apply([&](auto &...g) -> void { (detail::add_activity_group(def.h, &g), ...); },
             inst->group_instances);

  instances_.reserve(instances_.size() + 1); // so that keeping it cannot fail once registered
  check(cruster_runtime_register_workflow(h_, def.h, &err), &err);
  instances_.push_back(std::move(inst));
  return workflow_client<W>(h_, name);
}

/*
 * A client of workflow W registered here or on another runner. From another
 * runner, give every call a key (with_key / with_key_raw): W::key and the
 * request's bytes are only used where W is registered.
 */
template <class W> workflow_client<W> runtime::workflow() const {
  detail::check_workflow_class<W>();
  return workflow_client<W>(h_, detail::wf_name_for<W>());
}

} // namespace cruster

#endif /* CRUSTER_WORKFLOW_HPP */
