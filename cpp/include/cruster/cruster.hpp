/*
 * cruster/cruster.hpp -- the C++17 layer over the cruster C API.
 *
 * Header-only and thin: every type that owns something owns exactly one C
 * handle (move-only, the destructor frees it); there are no threads, caches
 * or hidden state. Errors are cruster::error exceptions carrying the status.
 *
 *   struct Counter {
 *     Store* store;
 *     int64_t increment(const IncrementRequest& r);
 *     int64_t get(cruster::context& ctx);
 *     static constexpr auto rpcs = cruster::rpcs(
 *         cruster::rpc<&Counter::increment>("increment", cruster::persisted),
 *         cruster::rpc<&Counter::get>("get"));
 *   };
 *
 *   cruster::runtime rt(cruster::config{}, cruster::memory_storage());
 *   auto counter = rt.register_entity(Counter{&store});
 *   rt.start();
 *   int64_t v = counter.call<&Counter::increment>("counter-1", IncrementRequest{5});
 *
 * See docs/cpp.md for the guide.
 */
#ifndef CRUSTER_CRUSTER_HPP
#define CRUSTER_CRUSTER_HPP

#include <cruster/cruster.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace cruster {

/** The version of the library actually linked ("MAJOR.MINOR.PATCH"). */
inline const char *version() noexcept { return cruster_version(); }

// ===========================================================================
// Errors
// ===========================================================================

/*
 * An error from cruster or from a handler: status() is a cruster_status
 * (negative) or an application code (<= CRUSTER_E_APPLICATION), what() the
 * message. Handlers may throw it to fail a request with a chosen code.
 */
class error : public std::runtime_error {
public:
  error(int status, const std::string &message)
      : std::runtime_error(message.empty() ? std::string(cruster_status_message(status)) : message),
        status_(status) {}
  explicit error(int status) : error(status, std::string()) {}

  int status() const noexcept { return status_; }
  /** The status constant's name ("CRUSTER_E_TIMEOUT", "CRUSTER_E_APPLICATION"). */
  const char *status_name() const noexcept { return cruster_status_name(status_); }

private:
  int status_;
};

/*
 * check
 *   For results of the C API: frees *err (and sets it to NULL) and throws
 *   cruster::error when status is not CRUSTER_OK. Safe to write as
 *   check(cruster_x(..., &err), &err): *err is read inside, after the call.
 */
inline void check(int status, cruster_error **err = nullptr) {
  std::string message;
  if (err != nullptr && *err != nullptr) {
    message = cruster_error_message(*err);
    cruster_error_free(*err);
    *err = nullptr;
  }
  if (status != CRUSTER_OK) throw error(status, message);
}

// ===========================================================================
// Configuration, storage
// ===========================================================================

/* A runner configuration (cruster_config). Setters chain; each throws
 * cruster::error (CRUSTER_E_INVALID_ARGUMENT for an unknown name,
 * CRUSTER_E_INVALID_CONFIG for a bad value). */
class config {
public:
  config() : h_(cruster_config_new()) {
    if (h_ == nullptr) throw error(CRUSTER_E_NOMEM);
  }
  /** Takes ownership of `owned`. */
  explicit config(cruster_config *owned) noexcept : h_(owned) {}
  ~config() { cruster_config_free(h_); }
  config(const config &) = delete;
  config &operator=(const config &) = delete;
  config(config &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  config &operator=(config &&o) noexcept {
    if (this != &o) {
      cruster_config_free(h_);
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }

  /** A deep copy (copies are explicit: a config is a handle). */
  config copy() const {
    cruster_config *c = cruster_config_copy(h_);
    if (c == nullptr) throw error(CRUSTER_E_NOMEM);
    return config(c);
  }

  config &set(const std::string &name, const std::string &value) & {
    cruster_error *err = nullptr;
    check(cruster_config_set(h_, name.c_str(), value.c_str(), &err), &err);
    return *this;
  }
  config &set(const std::string &name, int64_t value) & {
    cruster_error *err = nullptr;
    check(cruster_config_set_int(h_, name.c_str(), value, &err), &err);
    return *this;
  }
  template <class Rep, class Period>
  config &set(const std::string &name, std::chrono::duration<Rep, Period> value) & {
    return set(name,
               static_cast<int64_t>(
                   std::chrono::duration_cast<std::chrono::milliseconds>(value).count()));
  }
  /* Rvalue overloads so `cruster::config{}.set(...).set(...)` can be passed on. */
  config &&set(const std::string &name, const std::string &value) && {
    return std::move(set(name, value));
  }
  config &&set(const std::string &name, int64_t value) && { return std::move(set(name, value)); }
  template <class Rep, class Period>
  config &&set(const std::string &name, std::chrono::duration<Rep, Period> value) && {
    return std::move(set(name, value));
  }

  /** The text form of a field ("500ms", "default,premium"). */
  std::string get(const std::string &name) const {
    char *out = nullptr;
    cruster_error *err = nullptr;
    check(cruster_config_get(h_, name.c_str(), &out, &err), &err);
    std::string s(out != nullptr ? out : "");
    cruster_free(out);
    return s;
  }
  int64_t get_int(const std::string &name) const {
    int64_t v = 0;
    cruster_error *err = nullptr;
    check(cruster_config_get_int(h_, name.c_str(), &v, &err), &err);
    return v;
  }
  /** Checks the whole config as the runtime will; throws CRUSTER_E_INVALID_CONFIG. */
  void validate() const {
    cruster_error *err = nullptr;
    check(cruster_config_validate(h_, &err), &err);
  }

  /** Replaces the log sink (see cruster_config_set_logger); `user` must outlive the runtime. */
  config &set_logger(cruster_log_fn fn, void *user, cruster_log_level min_level) & {
    cruster_config_set_logger(h_, fn, user, min_level);
    return *this;
  }
  /** Only records at `min_level` and above, to stderr. */
  config &log_level(cruster_log_level min_level) & {
    return set_logger(nullptr, nullptr, min_level);
  }

  cruster_config *handle() const noexcept { return h_; }
  cruster_config *release() noexcept { return std::exchange(h_, nullptr); }
  explicit operator bool() const noexcept { return h_ != nullptr; }

private:
  cruster_config *h_;
};

/* A message storage backend not yet handed to a runtime. */
class storage {
public:
  storage() noexcept = default;
  explicit storage(cruster_storage *owned) noexcept : h_(owned) {}
  ~storage() { cruster_storage_free(h_); }
  storage(const storage &) = delete;
  storage &operator=(const storage &) = delete;
  storage(storage &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  storage &operator=(storage &&o) noexcept {
    if (this != &o) {
      cruster_storage_free(h_);
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  cruster_storage *handle() const noexcept { return h_; }
  cruster_storage *release() noexcept { return std::exchange(h_, nullptr); }
  explicit operator bool() const noexcept { return h_ != nullptr; }

private:
  cruster_storage *h_ = nullptr;
};

/** In-memory message storage (at-least-once within this process). */
inline storage memory_storage() {
  cruster_storage *s = nullptr;
  cruster_error *err = nullptr;
  check(cruster_storage_memory_new(&s, &err), &err);
  return storage(s);
}

/*
 * PostgreSQL message storage for `conninfo` (a libpq connection string or
 * URI; see cruster/pg.h). Only the string's syntax is checked here: the
 * runtime that takes the storage contacts the server when it is created and
 * throws then if it is unreachable or not migrated.
 * Throws cruster::error (CRUSTER_E_INVALID_ARGUMENT for a connection string
 * that does not parse, CRUSTER_E_NOMEM). Any thread.
 */
inline storage pg_storage(const std::string &conninfo) {
  cruster_storage *s = nullptr;
  cruster_error *err = nullptr;
  check(cruster_storage_pg_new(conninfo.c_str(), &s, &err), &err);
  return storage(s);
}

/*
 * Applies the PostgreSQL schema migrations not yet recorded in
 * `migrations_table` (empty = "cruster_migrations") and returns how many
 * were applied now. Blocks until done; needs no runtime.
 * Throws cruster::error (CRUSTER_E_PERSISTENCE with the server's text,
 * CRUSTER_E_INVALID_ARGUMENT). Any thread.
 */
inline int pg_migrate(const std::string &conninfo, const std::string &migrations_table = {}) {
  int applied = 0;
  cruster_error *err = nullptr;
  check(cruster_storage_pg_migrate(conninfo.c_str(),
                                   migrations_table.empty() ? nullptr : migrations_table.c_str(),
                                   &applied, &err),
        &err);
  return applied;
}

// ===========================================================================
// Codecs
// ===========================================================================

/*
 * codec<T>: how a request or result type travels as bytes. The default is
 * JSON through nlohmann::json (give the type to_json/from_json, e.g. with
 * NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE). Specialise it for a type to use
 * another encoding:
 *
 *   template <> struct cruster::codec<Point> {
 *     static std::string encode(const Point& p);
 *     static Point decode(const void* data, std::size_t len);  // throw on bad input
 *   };
 *
 * decode should throw cruster::error(CRUSTER_E_MALFORMED) on bad input; any
 * other exception it throws is reported as CRUSTER_E_MALFORMED as well.
 * Codecs run on worker threads and, for futures, on the runtime's loop
 * thread: keep them short and never block in them.
 */
template <class T, class Enable = void> struct codec {
  static std::string encode(const T &value) {
    try {
      nlohmann::json j = value;
      return j.dump();
    } catch (const nlohmann::json::exception &e) {
      throw error(CRUSTER_E_INVALID_ARGUMENT, std::string("cruster: cannot encode: ") + e.what());
    }
  }
  static T decode(const void *data, std::size_t len) {
    const char *p = static_cast<const char *>(data);
    try {
      return nlohmann::json::parse(p, p + (p != nullptr ? len : 0)).template get<T>();
    } catch (const nlohmann::json::exception &e) {
      throw error(CRUSTER_E_MALFORMED, std::string("cruster: cannot decode: ") + e.what());
    }
  }
};

// ===========================================================================
// Declaring RPCs
// ===========================================================================

/** RPC kind and visibility; combine with |. */
struct rpc_flags {
  unsigned bits = 0;
  constexpr rpc_flags operator|(rpc_flags o) const noexcept { return rpc_flags{bits | o.bits}; }
};
/** At-most-once, callable by anyone (the default). */
inline constexpr rpc_flags public_{0u};
/** Written to message storage first: at-least-once. */
inline constexpr rpc_flags persisted{CRUSTER_RPC_PERSISTED};
/** Callable from entities only (context::client), not from a public client. */
inline constexpr rpc_flags protected_{CRUSTER_RPC_PROTECTED};
/** Never callable: an internal helper, declared for completeness. */
inline constexpr rpc_flags private_{CRUSTER_RPC_PRIVATE};

/** One RPC: member function M under `name`. Made by cruster::rpc<&T::m>(...). */
template <auto M> struct rpc_def {
  static constexpr auto method = M;
  const char *name;
  unsigned flags;
};

template <auto M> constexpr rpc_def<M> rpc(const char *name, rpc_flags flags = public_) {
  static_assert(std::is_member_function_pointer_v<decltype(M)>,
                "cruster: rpc<&T::method>: the template argument must be a member function");
  return rpc_def<M>{name, flags.bits};
}

/** The list of a class's RPCs, as `static constexpr auto rpcs = cruster::rpcs(...)`. */
template <class... Defs> struct rpc_list {
  std::tuple<Defs...> defs;
};

namespace detail {
template <class D> struct is_rpc_def : std::false_type {};
template <auto M> struct is_rpc_def<rpc_def<M>> : std::true_type {};
} // namespace detail

template <class... Defs> constexpr rpc_list<Defs...> rpcs(Defs... defs) {
  static_assert((detail::is_rpc_def<Defs>::value && ...),
                "cruster: rpcs(...) takes cruster::rpc<&T::method>(\"name\", flags) entries");
  return rpc_list<Defs...>{std::tuple<Defs...>(defs...)};
}

/** The RPC groups an entity includes: `using groups = cruster::groups<Auditable>;` */
template <class... G> struct groups {};

/*
 * Entity options (all optional), as
 *   static constexpr auto options = cruster::entity_options()
 *       .name("user").shard_group("premium").max_idle_time(std::chrono::minutes(5))
 *       .mailbox_capacity(50).concurrency(4);
 * Unset fields take the runtime's defaults. The type name may also be given
 * as `static constexpr const char* name = "user";`; otherwise it is the
 * struct's name without namespaces.
 */
class entity_options {
public:
  constexpr entity_options() = default;
  constexpr entity_options name(const char *v) const {
    entity_options o = *this;
    o.name_ = v;
    return o;
  }
  constexpr entity_options shard_group(const char *v) const {
    entity_options o = *this;
    o.shard_group_ = v;
    return o;
  }
  template <class Rep, class Period>
  constexpr entity_options max_idle_time(std::chrono::duration<Rep, Period> v) const {
    entity_options o = *this;
    o.max_idle_ms_ = static_cast<int64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(v).count());
    return o;
  }
  constexpr entity_options mailbox_capacity(int64_t v) const {
    entity_options o = *this;
    o.mailbox_capacity_ = v;
    return o;
  }
  /** Handlers of one instance running at once; 0 = no limit. */
  constexpr entity_options concurrency(int64_t v) const {
    entity_options o = *this;
    o.concurrency_ = v;
    return o;
  }

  constexpr const char *name() const { return name_; }
  constexpr const char *shard_group() const { return shard_group_; }
  constexpr int64_t max_idle_time_ms() const { return max_idle_ms_; }
  constexpr int64_t mailbox_capacity() const { return mailbox_capacity_; }
  constexpr int64_t concurrency() const { return concurrency_; }

private:
  const char *name_ = nullptr;
  const char *shard_group_ = nullptr;
  int64_t max_idle_ms_ = -1;
  int64_t mailbox_capacity_ = -1;
  int64_t concurrency_ = -1;
};

// ===========================================================================
// Call options and results
// ===========================================================================

/* Per-call options; setters chain: call_options().timeout(100ms).idempotency_key("k"). */
class call_options {
public:
  using clock = std::chrono::system_clock;

  /** Deadline from now; zero = the runtime's "default_call_timeout". */
  template <class Rep, class Period> call_options &timeout(std::chrono::duration<Rep, Period> d) {
    timeout_ = std::chrono::duration_cast<std::chrono::milliseconds>(d);
    return *this;
  }
  /** Idempotency key: a persisted call with the same key gets the stored reply. */
  call_options &idempotency_key(std::string key) {
    key_ = std::move(key);
    has_key_ = true;
    return *this;
  }
  /** Do not deliver before `t` (implies persisted). */
  call_options &deliver_at(clock::time_point t) {
    deliver_at_ = t;
    return *this;
  }
  /** Deliver through message storage even if the method is not declared persisted. */
  call_options &persisted(bool on = true) {
    persisted_ = on;
    return *this;
  }
  /**
   * W3C traceparent of the call (cruster_call_opts.traceparent; checked by
   * the call: a bad one makes it throw / fail with invalid_argument). An
   * empty string = none. A handler passes its own on with
   * `.traceparent(ctx.traceparent())`.
   */
  call_options &traceparent(std::string_view tp) {
    traceparent_ = std::string(tp);
    return *this;
  }

  std::chrono::milliseconds timeout() const noexcept { return timeout_; }
  const std::optional<std::string> idempotency_key() const {
    return has_key_ ? std::optional<std::string>(key_) : std::nullopt;
  }
  std::optional<clock::time_point> deliver_at() const noexcept { return deliver_at_; }
  bool persisted() const noexcept { return persisted_; }
  const std::string &traceparent() const noexcept { return traceparent_; }

  /** The C options; they point into *this, so keep *this alive while they are used. */
  cruster_call_opts to_c(const cruster_request *caller = nullptr) const noexcept {
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    o.flags = persisted_ ? unsigned(CRUSTER_CALL_PERSISTED) : 0u;
    o.timeout_ms = timeout_.count();
    if (has_key_) {
      o.idempotency_key = key_.data();
      o.idempotency_key_len = key_.size();
    }
    if (deliver_at_) {
      o.deliver_at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deliver_at_->time_since_epoch())
                            .count();
    }
    o.caller = caller;
    if (!traceparent_.empty()) o.traceparent = traceparent_.c_str();
    return o;
  }

private:
  std::chrono::milliseconds timeout_{0};
  std::string traceparent_;
  std::string key_;
  bool has_key_ = false;
  std::optional<clock::time_point> deliver_at_;
  bool persisted_ = false;
};

/* The outcome of an asynchronous call handed to a callback: a value or an error. */
template <class T> class result {
public:
  static result success(T value) { return result(CRUSTER_OK, std::string(), std::move(value)); }
  static result failure(int status, std::string message) {
    return result(status, std::move(message), std::nullopt);
  }

  bool ok() const noexcept { return status_ == CRUSTER_OK; }
  explicit operator bool() const noexcept { return ok(); }
  int status() const noexcept { return status_; }
  const std::string &message() const noexcept { return message_; }
  /** The value; throws the error when the call failed. */
  T &value() & {
    throw_if_failed();
    return *value_;
  }
  const T &value() const & {
    throw_if_failed();
    return *value_;
  }
  T &&value() && {
    throw_if_failed();
    return std::move(*value_);
  }
  /** The error as an exception object (meaningful when !ok()). */
  cruster::error error() const { return cruster::error(status_, message_); }

private:
  result(int status, std::string message, std::optional<T> value)
      : status_(status), message_(std::move(message)), value_(std::move(value)) {}
  void throw_if_failed() const {
    if (!ok()) throw cruster::error(status_, message_);
  }
  int status_;
  std::string message_;
  std::optional<T> value_;
};

template <> class result<void> {
public:
  static result success() { return result(CRUSTER_OK, std::string()); }
  static result failure(int status, std::string message) {
    return result(status, std::move(message));
  }
  bool ok() const noexcept { return status_ == CRUSTER_OK; }
  explicit operator bool() const noexcept { return ok(); }
  int status() const noexcept { return status_; }
  const std::string &message() const noexcept { return message_; }
  /** Throws the error when the call failed. */
  void value() const {
    if (!ok()) throw cruster::error(status_, message_);
  }
  cruster::error error() const { return cruster::error(status_, message_); }

private:
  result(int status, std::string message) : status_(status), message_(std::move(message)) {}
  int status_;
  std::string message_;
};

template <class T, bool Internal> class basic_client;

// ===========================================================================
// The handler's view of its request
// ===========================================================================

/*
 * context: the request being handled, passed to handlers that take
 * `cruster::context&` as first parameter. Valid only during the handler call.
 */
class context {
public:
  explicit context(cruster_request *req) noexcept : req_(req) {}
  context(const context &) = delete;
  context &operator=(const context &) = delete;

  std::string_view entity_id() const noexcept { return cruster_request_entity_id(req_); }
  std::string_view entity_type() const noexcept { return cruster_request_entity_type(req_); }
  std::string_view method() const noexcept { return cruster_request_method(req_); }
  std::string_view shard_group() const noexcept { return cruster_request_shard_group(req_); }
  int32_t shard() const noexcept { return cruster_request_shard(req_); }
  /** The caller's W3C traceparent, empty when the call carried none. */
  std::string_view traceparent() const noexcept {
    const char *tp = cruster_request_traceparent(req_);
    return tp ? std::string_view(tp) : std::string_view();
  }
  int64_t request_id() const noexcept { return cruster_request_id(req_); }
  /** True once nobody needs the answer (deadline passed, shard moving, stopping). */
  bool cancelled() const noexcept { return cruster_request_cancelled(req_) != 0; }
  /** True if the message came through message storage. */
  bool persisted() const noexcept { return cruster_request_is_persisted(req_) != 0; }
  /** True if the caller is another entity (through its context::client). */
  bool from_entity() const noexcept { return cruster_request_from_entity(req_) != 0; }

  /*
   * A client for calling entity type T on behalf of this request: protected
   * methods are callable through it. Use it during the handler only.
   */
  template <class T> basic_client<T, true> client() const;

  cruster_request *handle() const noexcept { return req_; }
  cruster_runtime *runtime_handle() const noexcept { return cruster_request_runtime(req_); }

  /** True if the call is a streamed one (client::send_stream): the handler may yield items. */
  bool streamed() const noexcept { return cruster_request_is_stream(req_) != 0; }

  /*
   * Streamed calls: sends one item, encoded with cruster::codec<Item>, to the
   * caller (entity.h, "Streamed answers"). Blocks while 16 items wait for the
   * caller. Throws cruster::error: CRUSTER_E_CANCELLED once the caller went
   * away (stop producing; let the exception end the handler, or return);
   * CRUSTER_E_STATE when the call is not a streamed one (see streamed());
   * CRUSTER_E_PAYLOAD_TOO_LARGE for an item over "max_payload_size" (not
   * sent; the stream goes on); CRUSTER_E_HANDLER when the item cannot be
   * encoded. The handler's return value, if it returns one, is the stream's
   * final item; a void handler just ends the stream.
   */
  template <class Item> void yield(const Item &item) const;

private:
  cruster_request *req_;
};

// ===========================================================================
// Implementation details: signatures, names, visibility
// ===========================================================================

namespace detail {

/** The request type of a method that takes none; sent as JSON null. */
struct no_request {};

template <class... A> struct args_traits {
  static_assert(sizeof...(A) <= 2, "cruster: an rpc takes at most (cruster::context&, Request)");
};
template <> struct args_traits<> {
  static constexpr bool takes_context = false;
  static constexpr bool has_request = false;
  using request = no_request;
  using request_param = no_request;
};
template <class A> struct args_traits<A> {
  static constexpr bool takes_context = std::is_same_v<std::decay_t<A>, context>;
  static constexpr bool has_request = !takes_context;
  using request = std::conditional_t<takes_context, no_request, std::decay_t<A>>;
  using request_param = std::conditional_t<takes_context, no_request, A>;
  static_assert(!takes_context || std::is_lvalue_reference_v<A>,
                "cruster: take the context as cruster::context&");
};
template <class A0, class A1> struct args_traits<A0, A1> {
  static_assert(std::is_same_v<std::decay_t<A0>, context> && std::is_lvalue_reference_v<A0>,
                "cruster: an rpc with two parameters takes (cruster::context&, Request)");
  static constexpr bool takes_context = true;
  static constexpr bool has_request = true;
  using request = std::decay_t<A1>;
  using request_param = A1;
};

template <class C, class R, class... A> struct method_traits_base : args_traits<A...> {
  using owner = C;
  using result = R;
};

template <class M> struct method_traits {
  static_assert(std::is_member_function_pointer_v<M>,
                "cruster: an rpc must be a member function pointer (&T::method)");
};
template <class C, class R, class... A>
struct method_traits<R (C::*)(A...)> : method_traits_base<C, R, A...> {};
template <class C, class R, class... A>
struct method_traits<R (C::*)(A...) const> : method_traits_base<C, R, A...> {};
template <class C, class R, class... A>
struct method_traits<R (C::*)(A...) noexcept> : method_traits_base<C, R, A...> {};
template <class C, class R, class... A>
struct method_traits<R (C::*)(A...) const noexcept> : method_traits_base<C, R, A...> {};

template <auto M> using traits_of = method_traits<std::remove_cv_t<decltype(M)>>;
template <auto M> using owner_of = typename traits_of<M>::owner;
template <auto M> using request_of = typename traits_of<M>::request;
template <auto M> using result_of = typename traits_of<M>::result;

template <class T, class = void> struct has_rpcs : std::false_type {};
template <class T> struct has_rpcs<T, std::void_t<decltype(T::rpcs)>> : std::true_type {};

template <class T, class = void> struct groups_of {
  using type = groups<>;
};
template <class T> struct groups_of<T, std::void_t<typename T::groups>> {
  using type = typename T::groups;
};
template <class T> using groups_of_t = typename groups_of<T>::type;

template <class G> struct is_groups : std::false_type {};
template <class... G> struct is_groups<groups<G...>> : std::true_type {};

template <class C, class Gs> struct in_groups;
template <class C, class... G>
struct in_groups<C, groups<G...>> : std::bool_constant<(std::is_same_v<C, G> || ...)> {};

/** True if entity T's client may reach a method of class C. */
template <class T, class C>
inline constexpr bool composes_v = std::is_same_v<T, C> || in_groups<C, groups_of_t<T>>::value;

inline constexpr unsigned not_declared = ~0u;

/** Flags of method M in C::rpcs, or not_declared. Compile time. */
template <class C, auto M, std::size_t I = 0> constexpr unsigned flags_of() {
  using defs = decltype(C::rpcs.defs);
  if constexpr (I == std::tuple_size_v<std::remove_cv_t<defs>>) {
    return not_declared;
  } else if constexpr (std::is_same_v<std::tuple_element_t<I, std::remove_cv_t<defs>>,
                                      rpc_def<M>>) {
    return std::get<I>(C::rpcs.defs).flags;
  } else {
    return flags_of<C, M, I + 1>();
  }
}

template <class C, auto M, std::size_t I = 0> constexpr const char *name_of() {
  using defs = std::remove_cv_t<decltype(C::rpcs.defs)>;
  if constexpr (I == std::tuple_size_v<defs>) {
    return nullptr;
  } else if constexpr (std::is_same_v<std::tuple_element_t<I, defs>, rpc_def<M>>) {
    return std::get<I>(C::rpcs.defs).name;
  } else {
    return name_of<C, M, I + 1>();
  }
}

template <class C, class Defs> struct all_owned_by;
template <class C, class... D>
struct all_owned_by<C, std::tuple<D...>>
    : std::bool_constant<(std::is_same_v<owner_of<D::method>, C> && ...)> {};

/** Checks a class used as an entity or a group. */
template <class C> constexpr void check_rpc_class() {
  static_assert(has_rpcs<C>::value,
                "cruster: an entity or rpc group declares its rpcs: static constexpr auto rpcs = "
                "cruster::rpcs(cruster::rpc<&T::method>(\"method\"), ...);");
  if constexpr (has_rpcs<C>::value) {
    static_assert(all_owned_by<C, std::remove_cv_t<decltype(C::rpcs.defs)>>::value,
                  "cruster: T::rpcs lists a member function of another class (declare a group's "
                  "methods in the group's own rpcs and include it with cruster::groups<G>)");
  }
}

template <class T> constexpr const char *raw_type_name() noexcept {
#if defined(__GNUC__) || defined(__clang__)
  return __PRETTY_FUNCTION__;
#else
  return nullptr;
#endif
}

/** T's unqualified name ("Counter" for app::Counter), from the compiler. */
template <class T> std::string type_name() {
  const char *raw = raw_type_name<T>();
  if (raw == nullptr) return std::string();
  std::string_view s(raw);
  std::size_t start = s.find("T = ");
  if (start == std::string_view::npos) return std::string();
  start += 4;
  int depth = 0;
  std::size_t end = start, last = start;
  for (; end < s.size(); ++end) {
    char c = s[end];
    if (c == '<' || c == '(') ++depth;
    else if (c == '>' || c == ')') --depth;
    else if (depth == 0 && (c == ';' || c == ']')) break;
    else if (depth == 0 && c == ':' && end + 1 < s.size() && s[end + 1] == ':') last = end + 2;
  }
  return std::string(s.substr(last, end - last));
}

template <class T, class = void> struct has_options : std::false_type {};
template <class T>
struct has_options<T, std::void_t<decltype(&T::options)>>
    : std::bool_constant<std::is_pointer_v<decltype(&T::options)> &&
                         std::is_convertible_v<decltype(T::options), entity_options>> {};

template <class T, class = void> struct has_name : std::false_type {};
template <class T>
struct has_name<T, std::void_t<decltype(&T::name)>>
    : std::bool_constant<std::is_pointer_v<decltype(&T::name)> &&
                         std::is_convertible_v<decltype(T::name), const char *>> {};

/** The type name T registers under: options.name, then T::name, then the struct name. */
template <class T> std::string name_for() {
  if constexpr (has_options<T>::value) {
    constexpr entity_options o = T::options;
    if constexpr (o.name() != nullptr) return std::string(o.name());
  }
  if constexpr (has_name<T>::value) return std::string(T::name);
  return type_name<T>();
}

template <class T> constexpr entity_options options_for() {
  if constexpr (has_options<T>::value) {
    return T::options;
  } else {
    return entity_options();
  }
}

/** Frees buffers the library allocated. */
struct c_free {
  void operator()(void *p) const noexcept { cruster_free(p); }
};

/** Frees a cruster_message_list. */
struct message_list_free {
  void operator()(cruster_message_list *l) const noexcept { cruster_message_list_free(l); }
};

/** What basic_client::poll returns: the answer once there is one (bool for void methods). */
template <class R> struct poll_result {
  using type = std::optional<R>;
};
template <> struct poll_result<void> {
  using type = bool;
};
template <class R> using poll_result_t = typename poll_result<R>::type;

/** RAII for cruster_entity_def / cruster_rpc_group while building one. */
struct def_handle {
  cruster_entity_def *h = nullptr;
  explicit def_handle(const std::string &name) {
    cruster_error *err = nullptr;
    check(cruster_entity_def_new(name.c_str(), &h, &err), &err);
  }
  ~def_handle() { cruster_entity_def_free(h); }
  def_handle(const def_handle &) = delete;
  def_handle &operator=(const def_handle &) = delete;
};
struct group_handle {
  cruster_rpc_group *h = nullptr;
  explicit group_handle(const std::string &name) {
    cruster_error *err = nullptr;
    check(cruster_rpc_group_new(name.c_str(), &h, &err), &err);
  }
  ~group_handle() { cruster_rpc_group_free(h); }
  group_handle(const group_handle &) = delete;
  group_handle &operator=(const group_handle &) = delete;
};

/** Encodes a call's request (JSON null for methods without one). */
template <auto M, class Req> std::string encode_request(const Req &req) {
  if constexpr (traits_of<M>::has_request) {
    return codec<request_of<M>>::encode(req);
  } else {
    (void)req;
    return "null";
  }
}

/** Decodes an answer into the method's result type. */
template <class R> R decode_result(const void *data, std::size_t len) {
  if constexpr (std::is_void_v<R>) {
    (void)data;
    (void)len;
  } else {
    try {
      return codec<R>::decode(data, len);
    } catch (const error &) {
      throw;
    } catch (const std::exception &e) {
      throw error(CRUSTER_E_MALFORMED, e.what());
    }
  }
}

/*
 * The C handler of method M of class Owner; `user` is the Owner instance the
 * runtime stores. Decodes, runs the method, answers exactly once.
 */
template <class Owner, auto M> void handle_request(void *user, cruster_request *req) noexcept {
  using tr = traits_of<M>;
  using R = typename tr::result;
  Owner *self = static_cast<Owner *>(user);
  context ctx(req);

  std::optional<typename tr::request> request;
  if constexpr (tr::has_request) {
    std::size_t len = 0;
    const void *data = cruster_request_payload(req, &len);
    try {
      request.emplace(codec<typename tr::request>::decode(data, len));
    } catch (const error &e) {
      cruster_request_fail(req, e.status(), e.what());
      return;
    } catch (const std::exception &e) {
      cruster_request_fail(req, CRUSTER_E_MALFORMED, e.what());
      return;
    } catch (...) {
      cruster_request_fail(req, CRUSTER_E_MALFORMED, "cruster: the request could not be decoded");
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
      // A streamed call's plain end has no final item.
      if (cruster_request_is_stream(req) == 0) out = "null";
    } else {
      R value = invoke();
      try {
        out = codec<R>::encode(value);
      } catch (const std::exception &e) {
        cruster_request_fail(req, CRUSTER_E_HANDLER,
                             (std::string("cruster: cannot encode the reply: ") + e.what()).c_str());
        return;
      }
    }
  } catch (const error &e) {
    cruster_request_fail(req, e.status(), e.what());
    return;
  } catch (const std::exception &e) {
    cruster_request_fail(req, CRUSTER_E_HANDLER, e.what());
    return;
  } catch (...) {
    cruster_request_fail(req, CRUSTER_E_HANDLER, "cruster: the handler threw a non-std exception");
    return;
  }
  // The reply's own status (payload too large, shutting down) reaches the
  // caller through the runtime; the handler has nobody to report it to.
  (void)cruster_request_reply(req, out.data(), out.size());
}

/** Completion of call_async returning a future: runs inline on the loop thread. */
template <class R>
void complete_promise(void *user, int status, const void *data, std::size_t len,
                      const char *message) noexcept {
  std::unique_ptr<std::promise<R>> p(static_cast<std::promise<R> *>(user));
  try {
    if (status != CRUSTER_OK) {
      p->set_exception(std::make_exception_ptr(error(status, message != nullptr ? message : "")));
    } else if constexpr (std::is_void_v<R>) {
      p->set_value();
    } else {
      p->set_value(decode_result<R>(data, len));
    }
  } catch (...) {
    try {
      p->set_exception(std::current_exception());
    } catch (...) {
      // Only reachable if the promise was already satisfied: nothing left to report to.
    }
  }
}

/** Completion of call_async with a callback: runs on a worker thread. */
template <class R> struct callback_box {
  std::function<void(result<R>)> fn;
};

template <class R>
void complete_callback(void *user, int status, const void *data, std::size_t len,
                       const char *message) noexcept {
  std::unique_ptr<callback_box<R>> box(static_cast<callback_box<R> *>(user));
  std::optional<result<R>> r;
  if (status != CRUSTER_OK) {
    r.emplace(result<R>::failure(status, message != nullptr ? message : ""));
  } else {
    try {
      if constexpr (std::is_void_v<R>) {
        r.emplace(result<R>::success());
      } else {
        r.emplace(result<R>::success(decode_result<R>(data, len)));
      }
    } catch (const error &e) {
      r.emplace(result<R>::failure(e.status(), e.what()));
    } catch (const std::exception &e) {
      r.emplace(result<R>::failure(CRUSTER_E_MALFORMED, e.what()));
    }
  }
  // A callback that throws terminates the program (as a thread function would).
  box->fn(std::move(*r));
}

/** Streamed calls with callbacks (send_stream_async): lives until the end. */
template <class Item> struct stream_box {
  std::function<bool(Item)> on_item;
  std::function<void(result<void>)> on_end;
  int decode_status = CRUSTER_OK;
  std::string decode_message;
};

template <class Item>
int stream_item(void *user, int32_t seq, const void *data, std::size_t len) noexcept {
  (void)seq;
  auto *box = static_cast<stream_box<Item> *>(user);
  std::optional<Item> item;
  try {
    item.emplace(decode_result<Item>(data, len));
  } catch (const error &e) {
    box->decode_status = e.status();
    box->decode_message = e.what();
    return 1; // stops the stream; the end reports the decode failure
  } catch (const std::exception &e) {
    box->decode_status = CRUSTER_E_MALFORMED;
    box->decode_message = e.what();
    return 1;
  }
  // A callback that throws terminates the program (as a thread function would).
  return box->on_item(std::move(*item)) ? 0 : 1;
}

template <class Item>
void stream_end(void *user, int status, const void *data, std::size_t len,
                const char *message) noexcept {
  (void)data;
  (void)len;
  std::unique_ptr<stream_box<Item>> box(static_cast<stream_box<Item> *>(user));
  if (box->decode_status != CRUSTER_OK) {
    box->on_end(result<void>::failure(box->decode_status, box->decode_message));
  } else if (status != CRUSTER_OK) {
    box->on_end(result<void>::failure(status, message != nullptr ? message : ""));
  } else {
    box->on_end(result<void>::success());
  }
}

/** What the runtime keeps for a registered entity: its instance and group instances. */
struct instance_base {
  virtual ~instance_base() = default;
};
template <class T, class Gs> struct instance;
template <class T, class... G> struct instance<T, groups<G...>> : instance_base {
  T entity;
  std::tuple<G...> group_instances;
  instance(T e, std::tuple<G...> g) : entity(std::move(e)), group_instances(std::move(g)) {}
};

template <class X, class... A> inline constexpr std::size_t count_v = (std::size_t(std::is_same_v<X, A>) + ... + 0);

/** The instance of group G among the arguments of register_entity, or G{}. */
template <class G, class... A> G pick_group(std::tuple<A...> &args) {
  static_assert(count_v<G, A...> <= 1,
                "cruster: register_entity got two instances of the same rpc group");
  if constexpr (count_v<G, A...> == 1) {
    return std::move(std::get<G>(args));
  } else {
    static_assert(std::is_default_constructible_v<G>,
                  "cruster: register_entity needs an instance of every group in T::groups that "
                  "is not default-constructible");
    return G{};
  }
}

template <class Owner>
void add_rpcs(cruster_entity_def *def, cruster_rpc_group *group, Owner *owner) {
  std::apply(
      [&](const auto &...d) {
        auto add = [&](const auto &one) {
          using D = std::decay_t<decltype(one)>;
          cruster_error *err = nullptr;
          cruster_rpc_fn fn = &handle_request<Owner, D::method>;
          if (group != nullptr) {
            check(cruster_rpc_group_add_rpc(group, one.name, one.flags, fn, owner, &err), &err);
          } else {
            check(cruster_entity_def_add_rpc(def, one.name, one.flags, fn, owner, &err), &err);
          }
        };
        (add(d), ...);
      },
      Owner::rpcs.defs);
}

template <class G> void add_group(cruster_entity_def *def, G *instance) {
  check_rpc_class<G>();
  group_handle g(name_for<G>());
  add_rpcs<G>(nullptr, g.h, instance);
  cruster_error *err = nullptr;
  check(cruster_entity_def_add_group(def, g.h, &err), &err);
}

} // namespace detail

template <class Item> void context::yield(const Item &item) const {
  std::string out;
  try {
    out = codec<Item>::encode(item);
  } catch (const std::exception &e) {
    throw error(CRUSTER_E_HANDLER, std::string("cruster: cannot encode the item: ") + e.what());
  }
  int st = cruster_request_yield(req_, out.data(), out.size());
  if (st != CRUSTER_OK) {
    const char *why = st == CRUSTER_E_CANCELLED ? "cruster: the caller of the stream went away"
                      : st == CRUSTER_E_STATE
                          ? "cruster: yield: not a streamed call (or answered already)"
                          : cruster_status_message(st);
    throw error(st, why);
  }
}

// ===========================================================================
// Streams
// ===========================================================================

/*
 * stream<Item>: the items of a streamed call (client::send_stream), read in
 * order with next(). Move-only; owns its C stream (closed by the
 * destructor: a stream not read to its end is stopped, its handler sees the
 * cancellation). Read it from one thread at a time, never from the loop
 * thread (a future's completion).
 */
template <class Item> class stream {
public:
  explicit stream(cruster_stream *s) noexcept : s_(s) {}
  stream(stream &&o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  stream &operator=(stream &&o) noexcept {
    if (this != &o) {
      cruster_stream_close(s_);
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  stream(const stream &) = delete;
  stream &operator=(const stream &) = delete;
  ~stream() { cruster_stream_close(s_); }

  /*
   * The next item, or std::nullopt at the end. Waits for it (up to the
   * call's deadline). Throws the stream's cruster::error (the handler's code
   * and message, CRUSTER_E_TIMEOUT, CRUSTER_E_RUNNER_UNAVAILABLE, ...) -- again
   * on every later call -- or CRUSTER_E_MALFORMED when an item does not
   * decode.
   */
  std::optional<Item> next() {
    void *data = nullptr;
    std::size_t len = 0;
    int done = 0;
    cruster_error *err = nullptr;
    int st = cruster_stream_next(s_, 0, &data, &len, &done, &err);
    std::unique_ptr<void, detail::c_free> owned(data);
    check(st, &err);
    if (done != 0) return std::nullopt;
    return detail::decode_result<Item>(data, len);
  }

  /** Reads to the end: every item in order (throws as next()). */
  std::vector<Item> collect() {
    std::vector<Item> v;
    while (auto x = next()) v.push_back(std::move(*x));
    return v;
  }

  cruster_stream *handle() const noexcept { return s_; }

private:
  cruster_stream *s_;
};

// ===========================================================================
// Clients
// ===========================================================================

/*
 * A client of entity type T: call its methods by member pointer. Internal
 * clients (from context::client<T>()) call on behalf of the request being
 * handled and may reach protected methods.
 *
 * A client is a small value (runtime pointer, type name, caller): copy it
 * freely; it owns nothing and must not outlive its runtime (an internal
 * client: its handler call).
 */
template <class T, bool Internal> class basic_client {
  template <auto M> using R = detail::result_of<M>;
  template <auto M> using Req = detail::request_of<M>;

public:
  basic_client(cruster_runtime *rt, std::string entity_type,
               const cruster_request *caller = nullptr) noexcept
      : rt_(rt), type_(std::move(entity_type)), caller_(caller) {}

  const std::string &entity_type() const noexcept { return type_; }
  cruster_runtime *runtime_handle() const noexcept { return rt_; }

  /** Blocking call; returns the result or throws cruster::error. */
  template <auto M> R<M> call(const std::string &id, const Req<M> &req,
                              const call_options &opts = {}) const {
    check_callable<M>();
    return call_encoded<M>(id, detail::encode_request<M>(req), opts);
  }
  template <auto M> R<M> call(const std::string &id, const call_options &opts = {}) const {
    check_callable<M>();
    check_no_request<M>();
    return call_encoded<M>(id, "null", opts);
  }

  /** Asynchronous call; the future holds the result or the cruster::error. */
  template <auto M> std::future<R<M>> call_async(const std::string &id, const Req<M> &req,
                                                 const call_options &opts = {}) const {
    check_callable<M>();
    return future_call<M>(id, detail::encode_request<M>(req), opts);
  }
  template <auto M>
  std::future<R<M>> call_async(const std::string &id, const call_options &opts = {}) const {
    check_callable<M>();
    check_no_request<M>();
    return future_call<M>(id, "null", opts);
  }

  /** Asynchronous call; `fn(cruster::result<R>)` runs once, on a worker thread, and must not throw. */
  template <auto M, class F,
            class = std::enable_if_t<std::is_invocable_v<F &, result<detail::result_of<M>>>>>
  void call_async(const std::string &id, const Req<M> &req, F &&fn,
                  const call_options &opts = {}) const {
    check_callable<M>();
    callback_call<M>(id, detail::encode_request<M>(req), std::forward<F>(fn), opts);
  }
  template <auto M, class F,
            class = std::enable_if_t<std::is_invocable_v<F &, result<detail::result_of<M>>>>>
  void call_async(const std::string &id, F &&fn, const call_options &opts = {}) const {
    check_callable<M>();
    check_no_request<M>();
    callback_call<M>(id, "null", std::forward<F>(fn), opts);
  }

  /*
   * Streamed call (client.h, cruster_send_stream): the handler's items, read
   * in order from the returned cruster::stream<Item>. Item defaults to the
   * method's result type (a handler that only returns gives its result as the
   * single item); name it for a void method. Never persisted: a persisted
   * method, persisted(), an idempotency key or deliver_at throw / end with
   * CRUSTER_E_INVALID_ARGUMENT. Throws at once when refused up front.
   */
  template <auto M, class Item = detail::result_of<M>>
  stream<Item> send_stream(const std::string &id, const Req<M> &req,
                           const call_options &opts = {}) const {
    check_callable<M>();
    return open_stream<M, Item>(id, detail::encode_request<M>(req), opts);
  }
  template <auto M, class Item = detail::result_of<M>>
  stream<Item> send_stream(const std::string &id, const call_options &opts = {}) const {
    check_callable<M>();
    check_no_request<M>();
    return open_stream<M, Item>(id, "null", opts);
  }

  /*
   * Streamed call with callbacks: `on_item(Item)` gets each item in order --
   * return false (or nothing, for a void callback: go on) to stop the
   * stream -- then `on_end(cruster::result<void>)` runs once: success, or the
   * error (CRUSTER_E_CANCELLED after a stop; CRUSTER_E_MALFORMED when an
   * item did not decode). Both run on worker threads, one at a time, in
   * order, and must not throw. Throws at once when refused up front (then
   * neither is called).
   */
  template <auto M, class Item = detail::result_of<M>, class F, class E>
  void send_stream_async(const std::string &id, const Req<M> &req, F &&on_item, E &&on_end,
                         const call_options &opts = {}) const {
    check_callable<M>();
    async_stream<M, Item>(id, detail::encode_request<M>(req), std::forward<F>(on_item),
                          std::forward<E>(on_end), opts);
  }

  template <auto M, class Item = detail::result_of<M>, class F, class E>
  void send_stream_async(const std::string &id, F &&on_item, E &&on_end,
                         const call_options &opts = {}) const {
    check_callable<M>();
    check_no_request<M>();
    async_stream<M, Item>(id, "null", std::forward<F>(on_item), std::forward<E>(on_end), opts);
  }

  /** Fire and forget: returns once the message is accepted (queued or stored). */
  template <auto M>
  void notify(const std::string &id, const Req<M> &req, const call_options &opts = {}) const {
    check_callable<M>();
    notify_encoded<M>(id, detail::encode_request<M>(req), opts);
  }
  template <auto M> void notify(const std::string &id, const call_options &opts = {}) const {
    check_callable<M>();
    check_no_request<M>();
    notify_encoded<M>(id, "null", opts);
  }

  // ---- Persisted calls made with an idempotency key -------------------------
  //
  // A persisted call sent with call_options().idempotency_key(key) is stored
  // under a request id derived from (entity type, entity id, method, key), and
  // so is its answer (for "storage_retention"). The functions below find it
  // again by those four: from this process or another one, after the caller
  // gave up waiting, or after a restart. `idempotency_key` holds the same bytes
  // as the call's key (any bytes; empty is refused with
  // CRUSTER_E_INVALID_ARGUMENT). They need message storage on the runtime
  // (CRUSTER_E_PERSISTENCE otherwise) and a started runtime (CRUSTER_E_STATE).

  /*
   * poll: the stored answer of the persisted call to method M of entity
   * `id` made with `idempotency_key`, without waiting for the handler.
   * Returns std::nullopt while the message is stored but not answered yet,
   * else the decoded answer; for a void method, false / true.
   * Throws cruster::error: the stored failure when the call was answered
   * with one (the handler's code and message, CRUSTER_E_DEAD_LETTER for a
   * dead letter, ...); CRUSTER_E_NOT_FOUND when no such message is stored
   * (never sent, or removed after "storage_retention"); CRUSTER_E_MALFORMED
   * when the answer does not decode; CRUSTER_E_PERSISTENCE,
   * CRUSTER_E_SHUTTING_DOWN, CRUSTER_E_STATE, CRUSTER_E_INVALID_ARGUMENT.
   * Threads: any but the runtime's loop thread (so not from a future's
   * completion); it blocks for one storage lookup.
   */
  template <auto M>
  detail::poll_result_t<R<M>> poll(const std::string &id, std::string_view idempotency_key) const {
    check_callable<M>();
    int ready = 0;
    void *reply = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_poll_reply(rt_, type_.c_str(), id.c_str(), method_name<M>(),
                                idempotency_key.data(), idempotency_key.size(), &ready, &reply,
                                &len, &err);
    std::unique_ptr<void, detail::c_free> owned(reply);
    check(st, &err); // a stored failure (ready == 1) throws here as well
    if constexpr (std::is_void_v<R<M>>) {
      return ready != 0;
    } else {
      if (ready == 0) return std::nullopt;
      return detail::decode_result<R<M>>(reply, len);
    }
  }

  /*
   * join_async: waits for the answer of the persisted call identified as for
   * poll; an answer already stored is delivered at once. Only opts.timeout()
   * is used (the deadline of the wait; the call's own idempotency key,
   * deliver_at and persisted settings are not consulted). The future holds
   * the answer or the cruster::error: the handler's failure,
   * CRUSTER_E_DEAD_LETTER, CRUSTER_E_NOT_FOUND (no such message stored),
   * CRUSTER_E_TIMEOUT, CRUSTER_E_SHUTTING_DOWN, CRUSTER_E_PERSISTENCE. As with
   * call_async, the promise is set (and the answer decoded) on the loop thread.
   * Throws at once (and the future is never made) when the C layer refuses
   * the wait up front: CRUSTER_E_INVALID_ARGUMENT (empty key, bad id or
   * timeout), CRUSTER_E_STATE, CRUSTER_E_SHUTTING_DOWN, CRUSTER_E_PERSISTENCE
   * (no storage), CRUSTER_E_NOMEM -- with the C call's message.
   * Threads: any.
   */
  template <auto M>
  std::future<R<M>> join_async(const std::string &id, std::string_view idempotency_key,
                               const call_options &opts = {}) const {
    check_callable<M>();
    auto promise = std::make_unique<std::promise<R<M>>>();
    std::future<R<M>> fut = promise->get_future();
    cruster_call_opts o = opts.to_c(caller_);
    o.flags |= CRUSTER_CALL_INLINE_CALLBACK; // setting a promise never blocks
    cruster_error *err = nullptr;
    check(cruster_join_reply(rt_, type_.c_str(), id.c_str(), method_name<M>(),
                             idempotency_key.data(), idempotency_key.size(), &o,
                             &detail::complete_promise<R<M>>, promise.get(), &err),
          &err);
    promise.release(); // complete_promise owns it now
    return fut;
  }

  /*
   * join_async with a callback: `fn(cruster::result<R>)` runs once, on a
   * worker thread, with what the future above would hold; it must not throw.
   * Throws as above when refused up front (fn is then never called).
   */
  template <auto M, class F,
            class = std::enable_if_t<std::is_invocable_v<F &, result<detail::result_of<M>>>>>
  void join_async(const std::string &id, std::string_view idempotency_key, F &&fn,
                  const call_options &opts = {}) const {
    check_callable<M>();
    auto box = std::make_unique<detail::callback_box<R<M>>>();
    box->fn = std::forward<F>(fn);
    cruster_call_opts o = opts.to_c(caller_);
    cruster_error *err = nullptr;
    check(cruster_join_reply(rt_, type_.c_str(), id.c_str(), method_name<M>(),
                             idempotency_key.data(), idempotency_key.size(), &o,
                             &detail::complete_callback<R<M>>, box.get(), &err),
          &err);
    box.release(); // complete_callback owns it now
  }

  /*
   * join: blocking join_async; returns the answer or throws its
   * cruster::error. It holds the calling thread like any wait (unlike call,
   * the worker pool does not grow for it): in a handler prefer join_async.
   * Never from the loop thread (a future's completion): it would deadlock.
   */
  template <auto M>
  R<M> join(const std::string &id, std::string_view idempotency_key,
            const call_options &opts = {}) const {
    return join_async<M>(id, idempotency_key, opts).get();
  }

  /*
   * The request id a persisted call to M of entity `id` with
   * `idempotency_key` is stored under (cruster_persisted_request_id, PRID):
   * what dead_letter::request_id and context::request_id() show for it --
   * unless a call of another identity already held that id (the weak hash
   * collided), in which case the call was stored under another id
   * (docs/ids.md). Pure computation; any thread; never throws.
   */
  template <auto M>
  int64_t persisted_request_id(const std::string &id, std::string_view idempotency_key) const
      noexcept {
    check_callable<M>();
    return cruster_persisted_request_id(type_.c_str(), id.c_str(), method_name<M>(),
                                        idempotency_key.data(), idempotency_key.size());
  }

private:
  template <auto M> static constexpr void check_callable() {
    using C = detail::owner_of<M>;
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
        static_assert(Internal || (flags & CRUSTER_RPC_PROTECTED) == 0,
                      "cruster: this method is protected: call it from an entity through "
                      "context::client<T>()");
      }
    }
  }
  template <auto M> static constexpr void check_no_request() {
    static_assert(!detail::traits_of<M>::has_request,
                  "cruster: this rpc takes a request: pass it after the entity id");
  }
  template <auto M> static const char *method_name() {
    return detail::name_of<detail::owner_of<M>, M>();
  }

  template <auto M>
  R<M> call_encoded(const std::string &id, const std::string &payload,
                    const call_options &opts) const {
    cruster_call_opts o = opts.to_c(caller_);
    void *reply = nullptr;
    std::size_t len = 0;
    cruster_error *err = nullptr;
    int st = cruster_send_sync(rt_, type_.c_str(), id.c_str(), method_name<M>(), payload.data(),
                               payload.size(), &o, &reply, &len, &err);
    std::unique_ptr<void, detail::c_free> owned(reply);
    check(st, &err);
    return detail::decode_result<R<M>>(reply, len);
  }

  template <auto M>
  std::future<R<M>> future_call(const std::string &id, const std::string &payload,
                                const call_options &opts) const {
    auto promise = std::make_unique<std::promise<R<M>>>();
    std::future<R<M>> fut = promise->get_future();
    cruster_call_opts o = opts.to_c(caller_);
    o.flags |= CRUSTER_CALL_INLINE_CALLBACK; // setting a promise never blocks
    cruster_error *err = nullptr;
    check(cruster_send(rt_, type_.c_str(), id.c_str(), method_name<M>(), payload.data(),
                       payload.size(), &o, &detail::complete_promise<R<M>>, promise.get(), &err),
          &err);
    promise.release(); // complete_promise owns it now
    return fut;
  }

  template <auto M, class F>
  void callback_call(const std::string &id, const std::string &payload, F &&fn,
                     const call_options &opts) const {
    auto box = std::make_unique<detail::callback_box<R<M>>>();
    box->fn = std::forward<F>(fn);
    cruster_call_opts o = opts.to_c(caller_);
    cruster_error *err = nullptr;
    check(cruster_send(rt_, type_.c_str(), id.c_str(), method_name<M>(), payload.data(),
                       payload.size(), &o, &detail::complete_callback<R<M>>, box.get(), &err),
          &err);
    box.release(); // complete_callback owns it now
  }

  template <auto M, class Item>
  stream<Item> open_stream(const std::string &id, const std::string &payload,
                           const call_options &opts) const {
    static_assert(!std::is_void_v<Item>,
                  "cruster: send_stream<&T::method, Item>: name the item type (the method returns "
                  "void)");
    cruster_call_opts o = opts.to_c(caller_);
    cruster_stream *s = nullptr;
    cruster_error *err = nullptr;
    check(cruster_stream_open(rt_, type_.c_str(), id.c_str(), method_name<M>(), payload.data(),
                              payload.size(), &o, &s, &err),
          &err);
    return stream<Item>(s);
  }

  template <auto M, class Item, class F, class E>
  void async_stream(const std::string &id, const std::string &payload, F &&on_item, E &&on_end,
                    const call_options &opts) const {
    static_assert(!std::is_void_v<Item>,
                  "cruster: send_stream_async<&T::method, Item>: name the item type (the method "
                  "returns void)");
    auto box = std::make_unique<detail::stream_box<Item>>();
    if constexpr (std::is_same_v<std::invoke_result_t<F &, Item>, void>) {
      box->on_item = [f = std::forward<F>(on_item)](Item x) mutable {
        f(std::move(x));
        return true;
      };
    } else {
      box->on_item = [f = std::forward<F>(on_item)](Item x) mutable {
        return static_cast<bool>(f(std::move(x)));
      };
    }
    box->on_end = std::forward<E>(on_end);
    cruster_call_opts o = opts.to_c(caller_);
    cruster_error *err = nullptr;
    check(cruster_send_stream(rt_, type_.c_str(), id.c_str(), method_name<M>(), payload.data(),
                              payload.size(), &o, &detail::stream_item<Item>,
                              &detail::stream_end<Item>, box.get(), &err),
          &err);
    box.release(); // stream_end owns it now
  }

  template <auto M>
  void notify_encoded(const std::string &id, const std::string &payload,
                      const call_options &opts) const {
    cruster_call_opts o = opts.to_c(caller_);
    cruster_error *err = nullptr;
    check(cruster_notify_sync(rt_, type_.c_str(), id.c_str(), method_name<M>(), payload.data(),
                              payload.size(), &o, &err),
          &err);
  }

  cruster_runtime *rt_;
  std::string type_;
  const cruster_request *caller_;
};

/** The public client of entity T: public methods only. */
template <class T> using entity_client = basic_client<T, false>;
/** A client calling on behalf of a request (context::client<T>()): protected methods too. */
template <class T> using internal_client = basic_client<T, true>;

template <class T> basic_client<T, true> context::client() const {
  detail::check_rpc_class<T>();
  return basic_client<T, true>(cruster_request_runtime(req_), detail::name_for<T>(), req_);
}

// ===========================================================================
// Dead letters
// ===========================================================================

/*
 * A dead letter: a persisted message whose delivery failed more than
 * "storage_message_max_retries" times (its handler never answered: the
 * runner died or stopped under it). A plain value copied out of the C list.
 */
struct dead_letter {
  /** Its request id: pass it to runtime::redeliver. */
  int64_t request_id = 0;
  std::string entity_type;
  std::string entity_id;
  std::string method;
  /** The request bytes as sent (what codec<Req>::encode made; "null" for none). */
  std::string payload;
  /** Delivery attempts made. */
  int64_t attempts = 0;

  /** The payload decoded as `Req`; throws cruster::error(CRUSTER_E_MALFORMED). */
  template <class Req> Req request() const {
    return detail::decode_result<Req>(payload.data(), payload.size());
  }
};

template <class W> class workflow_client; // cruster/workflow.hpp

// ===========================================================================
// The runtime
// ===========================================================================

/*
 * One runner (cruster_runtime). It also keeps the entity and group instances
 * given to register_entity: they live exactly as long as the runtime, and
 * are destroyed after its threads are joined. Move-only.
 */
class singleton_context;
class singleton_options;
class singleton_builder;
struct cron_slot;
struct cron_slot_record;
class cron_options;
class cron_job_builder;

class runtime {
public:
  /** A runner from `cfg` (copied); `store` is taken over (empty = no storage). */
  explicit runtime(const config &cfg, storage store = storage()) { init(cfg, std::move(store), nullptr); }
  /** Cluster mode: `registry` (may be NULL) is taken over, also on failure. */
  runtime(const config &cfg, storage store, cruster_registry *registry) {
    init(cfg, std::move(store), registry);
  }
  ~runtime() { reset(); }
  runtime(const runtime &) = delete;
  runtime &operator=(const runtime &) = delete;
  runtime(runtime &&o) noexcept
      : h_(std::exchange(o.h_, nullptr)), instances_(std::move(o.instances_)) {}
  runtime &operator=(runtime &&o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, nullptr);
      instances_ = std::move(o.instances_);
    }
    return *this;
  }

  /** Joins the cluster and starts delivering. Not from a handler. */
  void start() {
    cruster_error *err = nullptr;
    check(cruster_runtime_start(h_, &err), &err);
  }
  /** Stops gracefully (idempotent). Not from a handler. */
  void stop() {
    cruster_error *err = nullptr;
    check(cruster_runtime_stop(h_, &err), &err);
  }

  /** Every metric in the Prometheus text format. */
  std::string metrics() const {
    char *out = nullptr;
    std::size_t len = 0;
    check(cruster_metrics_render(cruster_runtime_metrics(h_), &out, &len));
    std::unique_ptr<char, detail::c_free> owned(out);
    return std::string(out, len);
  }
  /** One series ("name", "label=\"value\""); throws CRUSTER_E_NOT_FOUND if it does not exist yet. */
  double metric(const std::string &name, const std::string &labels = std::string()) const {
    double v = 0;
    check(cruster_metrics_value(cruster_runtime_metrics(h_), name.c_str(), labels.c_str(), &v));
    return v;
  }
  std::string runner_address() const { return cruster_runtime_runner_address(h_); }

  /*
   * Up to `limit` dead letters of the message storage, oldest first, copied
   * out (the C list is freed before returning, also when copying throws).
   * Throws cruster::error: CRUSTER_E_PERSISTENCE (no storage, or it failed),
   * CRUSTER_E_STATE (not started), CRUSTER_E_SHUTTING_DOWN, CRUSTER_E_NOMEM.
   * Threads: any but the loop thread; blocks for one storage query.
   */
  std::vector<dead_letter> dead_letters(std::size_t limit) const {
    cruster_message_list *raw = nullptr;
    cruster_error *err = nullptr;
    int st = cruster_dead_letters(h_, limit, &raw, &err);
    std::unique_ptr<cruster_message_list, detail::message_list_free> list(raw);
    check(st, &err);
    const std::size_t n = cruster_message_list_count(list.get());
    std::vector<dead_letter> out;
    out.reserve(n);
    auto text = [](const char *s) { return std::string(s != nullptr ? s : ""); };
    for (std::size_t i = 0; i < n; ++i) {
      dead_letter d;
      d.request_id = cruster_message_list_request_id(list.get(), i);
      d.entity_type = text(cruster_message_list_entity_type(list.get(), i));
      d.entity_id = text(cruster_message_list_entity_id(list.get(), i));
      d.method = text(cruster_message_list_method(list.get(), i));
      std::size_t len = 0;
      const void *p = cruster_message_list_payload(list.get(), i, &len);
      if (p != nullptr) d.payload.assign(static_cast<const char *>(p), len);
      d.attempts = cruster_message_list_attempts(list.get(), i);
      out.push_back(std::move(d));
    }
    return out;
  }

  /*
   * Makes dead letter `request_id` deliverable again with its attempt count
   * reset; it is delivered promptly, and a join on its key gets the new
   * answer. Throws cruster::error: CRUSTER_E_NOT_FOUND (no dead letter with
   * that id: never one, or already redelivered), CRUSTER_E_PERSISTENCE,
   * CRUSTER_E_STATE, CRUSTER_E_SHUTTING_DOWN.
   * Threads: any but the loop thread; blocks for one storage write.
   */
  void redeliver(int64_t request_id) {
    cruster_error *err = nullptr;
    check(cruster_dead_letter_redeliver(h_, request_id, &err), &err);
  }

  /*
   * Registers entity type T handled by `entity`, including the groups of
   * T::groups handled by `group_instances` (one per group, any order; a
   * default-constructible group may be left out). The runtime keeps the
   * instances until it is destroyed. Handlers of different entity ids run
   * concurrently on worker threads against the same instances, so their
   * member functions must be thread-safe.
   */
  template <class T, class... G> entity_client<T> register_entity(T entity, G... group_instances) {
    using Gs = detail::groups_of_t<T>;
    static_assert(detail::is_groups<Gs>::value,
                  "cruster: T::groups must be cruster::groups<G...>");
    static_assert((detail::in_groups<G, Gs>::value && ...),
                  "cruster: register_entity got an instance of a group T does not include "
                  "(using groups = cruster::groups<...>)");
    detail::check_rpc_class<T>();

    auto inst = make_instance<T>(std::move(entity), std::tuple<G...>(std::move(group_instances)...),
                                 static_cast<Gs *>(nullptr));
    const std::string name = detail::name_for<T>();
    detail::def_handle def(name);
    constexpr entity_options o = detail::options_for<T>();
    cruster_error *err = nullptr;
    if constexpr (o.shard_group() != nullptr) {
      check(cruster_entity_def_set_shard_group(def.h, o.shard_group(), &err), &err);
    }
    if constexpr (o.max_idle_time_ms() >= 0) {
      check(cruster_entity_def_set_max_idle_time(def.h, o.max_idle_time_ms(), &err), &err);
    }
    if constexpr (o.mailbox_capacity() >= 0) {
      check(cruster_entity_def_set_mailbox_capacity(def.h, o.mailbox_capacity(), &err), &err);
    }
    if constexpr (o.concurrency() >= 0) {
      check(cruster_entity_def_set_concurrency(def.h, o.concurrency(), &err), &err);
    }
    detail::add_rpcs<T>(def.h, nullptr, &inst->entity);
    std::apply([&](auto &...g) -> void { (detail::add_group(def.h, &g), ...); }, inst->group_instances);

    instances_.reserve(instances_.size() + 1); // so that keeping it cannot fail once registered
    check(cruster_runtime_register_entity(h_, def.h, &err), &err);
    instances_.push_back(std::move(inst));
    return entity_client<T>(h_, name);
  }

  /** A public client of entity type T registered here or on another runner. */
  template <class T> entity_client<T> client() const {
    detail::check_rpc_class<T>();
    return entity_client<T>(h_, detail::name_for<T>());
  }

  /*
   * Registers workflow W with its activities and those of the activity
   * groups in W::groups (instances in any order), and returns its typed
   * client; workflow<W>() is a client of W registered here or elsewhere.
   * Defined in cruster/workflow.hpp (docs/cpp.md, "Workflows").
   */
  template <class W, class... G>
  workflow_client<W> register_workflow(W workflow, G... group_instances);
  template <class W> workflow_client<W> workflow() const;

  /*
   * Singletons and cron jobs (cruster/singleton.hpp, docs/cpp.md
   * "Singletons and cron"): register_singleton(name, fn[, options]) or
   * singleton(name)...run(fn); register_cron_job(name, expr, fn[, options])
   * or cron_job(name).schedule(expr)...run(fn); cron_slots(job, limit) lists
   * a job's recorded slots. Throw cruster::error as the C functions fail.
   */
  void register_singleton(const std::string &name, std::function<void(singleton_context &)> fn);
  void register_singleton(const std::string &name, std::function<void(singleton_context &)> fn,
                          const singleton_options &options);
  singleton_builder singleton(std::string name);
  void register_cron_job(const std::string &name, const std::string &expr,
                         std::function<void(const cron_slot &)> fn);
  void register_cron_job(const std::string &name, const std::string &expr,
                         std::function<void(const cron_slot &)> fn, const cron_options &options);
  cron_job_builder cron_job(std::string name);
  std::vector<cron_slot_record> cron_slots(const std::string &job, std::size_t limit) const;

  cruster_runtime *handle() const noexcept { return h_; }
  explicit operator bool() const noexcept { return h_ != nullptr; }

private:
  void init(const config &cfg, storage store, cruster_registry *registry) {
    cruster_error *err = nullptr;
    h_ = nullptr;
    check(cruster_runtime_new(cfg.handle(), store.release(), registry, &h_, &err), &err);
  }
  void reset() noexcept {
    // The runtime joins its workers before the instances its handlers use go away.
    cruster_runtime_free(h_);
    h_ = nullptr;
    instances_.clear();
  }
  template <class T, class... A, class... G>
  static std::unique_ptr<detail::instance<T, groups<G...>>>
  make_instance(T entity, std::tuple<A...> args, groups<G...> *) {
    (void)args; // unused when T includes no groups
    return std::make_unique<detail::instance<T, groups<G...>>>(
        std::move(entity), std::tuple<G...>(detail::pick_group<G>(args)...));
  }

  cruster_runtime *h_ = nullptr;
  std::vector<std::unique_ptr<detail::instance_base>> instances_;
};

} // namespace cruster

// Durable workflows: register_workflow, workflow_context, workflow_client.
#include <cruster/workflow.hpp>
// Singletons and cron jobs.
#include <cruster/singleton.hpp>

#endif /* CRUSTER_CRUSTER_HPP */
