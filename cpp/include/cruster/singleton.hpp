/*
 * cruster/singleton.hpp -- singletons and ClusterCron jobs in C++ (included by
 * cruster/cruster.hpp).
 *
 *   rt.register_singleton("leader", [&](cruster::singleton_context &ctx) {
 *     while (!ctx.wait(std::chrono::seconds(1))) work();
 *     cleanup();                                   // done before rt.stop() returns
 *   });
 *   rt.singleton("indexer").shard_group("default").run([](cruster::singleton_context &) {
 *     index_a_batch();                             // unmanaged: bounded work, restarted
 *   });
 *   rt.cron_job("nightly").schedule("0 0 3 * * *").time_zone("Europe/Berlin")
 *     .missed(CRUSTER_CRON_MISSED_ALL)
 *     .run([](const cruster::cron_slot &slot) { report(slot.time, slot.id); });
 *
 * The model is the C API's: cruster/singleton.h and cruster/cron_job.h, and
 * docs/singletons-and-cron.md. A function that returns normally succeeded;
 * one that throws failed (cruster::error: its status; anything else:
 * CRUSTER_E_HANDLER), which restarts a singleton with backoff and records a
 * cron slot as failed. The runtime keeps the functions until it is
 * destroyed. Registering a name again replaces the singleton (or cron job)
 * of that name: the new function starts once the old one has returned
 * (after its clean-up); the old function object stays alive until the
 * runtime is destroyed.
 */
#ifndef CRUSTER_SINGLETON_HPP
#define CRUSTER_SINGLETON_HPP

#include <cruster/cruster.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cruster {

/* One run of a singleton's function; valid during that call only. */
class singleton_context {
public:
  explicit singleton_context(cruster_singleton_ctx *h) noexcept : h_(h) {}
  /** True once the run is cancelled (shard lost, stop): return promptly. Makes it managed. */
  bool cancelled() noexcept { return cruster_singleton_cancelled(h_) != 0; }
  /** Sleeps up to `d` or until cancelled; true when cancelled. Makes it managed. */
  template <class R, class P> bool wait(std::chrono::duration<R, P> d) noexcept {
    return cruster_singleton_wait(h_, std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) != 0;
  }
  std::string_view name() const noexcept { return cruster_singleton_name(h_); }
  /** Consecutive failures before this run. */
  int64_t failures() const noexcept { return cruster_singleton_failures(h_); }
  cruster_singleton_ctx *handle() const noexcept { return h_; }

private:
  cruster_singleton_ctx *h_;
};

/* A cron slot given to a job's handler. */
struct cron_slot {
  std::chrono::system_clock::time_point time; /* the scheduled time */
  int64_t time_ms;                            /* the same, Unix ms */
  std::string_view id;                        /* "<job>/<time_ms>": idempotency key */
};

/* A recorded slot, as listed by runtime::cron_slots. */
struct cron_slot_record {
  int64_t slot_ms = 0;
  cruster_cron_slot_state state = CRUSTER_CRON_SLOT_RUNNING;
  int64_t started_ms = 0;
  int64_t finished_ms = 0; /* 0 while running */
  std::string error;
};

/* Singleton options: the shard group ("default" when not set). */
class singleton_options {
public:
  singleton_options shard_group(std::string g) const {
    singleton_options o = *this;
    o.group_ = std::move(g);
    return o;
  }
  const std::string &shard_group() const noexcept { return group_; }

private:
  std::string group_;
};

/* Cron job options (cruster_cron_job_opts). */
class cron_options {
public:
  cron_options time_zone(std::string tz) const {
    cron_options o = *this;
    o.tz_ = std::move(tz);
    return o;
  }
  cron_options calculate_next_from_previous(bool yes = true) const {
    cron_options o = *this;
    o.from_prev_ = yes;
    return o;
  }
  template <class R, class P> cron_options skip_if_older_than(std::chrono::duration<R, P> d) const {
    cron_options o = *this;
    o.skip_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
    return o;
  }
  cron_options missed(cruster_cron_missed m) const {
    cron_options o = *this;
    o.missed_ = m;
    return o;
  }
  /** The C options; valid while this object lives. */
  cruster_cron_job_opts c_opts() const noexcept {
    cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
    o.tz = tz_.empty() ? nullptr : tz_.c_str();
    o.calculate_next_from_previous = from_prev_ ? 1 : 0;
    o.skip_if_older_than_ms = skip_ms_;
    o.missed = missed_;
    return o;
  }

private:
  std::string tz_;
  bool from_prev_ = false;
  int64_t skip_ms_ = 0;
  cruster_cron_missed missed_ = CRUSTER_CRON_MISSED_LATEST;
};

namespace detail {

/* Runs f, turning an exception into a status. */
template <class F> int run_guarded(F &&f) noexcept {
  try {
    f();
    return CRUSTER_OK;
  } catch (const error &e) {
    return e.status() != CRUSTER_OK ? e.status() : CRUSTER_E_HANDLER;
  } catch (...) {
    return CRUSTER_E_HANDLER;
  }
}

struct singleton_holder : instance_base {
  std::function<void(singleton_context &)> fn;
  static int trampoline(void *user, cruster_singleton_ctx *ctx) {
    auto *self = static_cast<singleton_holder *>(user);
    singleton_context c(ctx);
    return run_guarded([&] { self->fn(c); });
  }
};

struct cron_holder : instance_base {
  std::function<void(const cron_slot &)> fn;
  static int trampoline(void *user, int64_t slot_ms, const char *slot_id) {
    auto *self = static_cast<cron_holder *>(user);
    cron_slot s{std::chrono::system_clock::time_point(std::chrono::milliseconds(slot_ms)), slot_ms,
                slot_id};
    return run_guarded([&] { self->fn(s); });
  }
};

} // namespace detail

inline void runtime::register_singleton(const std::string &name,
                                        std::function<void(singleton_context &)> fn,
                                        const singleton_options &options) {
  if (!fn) throw error(CRUSTER_E_INVALID_ARGUMENT, "register_singleton: empty function");
  auto holder = std::make_unique<detail::singleton_holder>();
  holder->fn = std::move(fn);
  cruster_singleton_opts o = CRUSTER_SINGLETON_OPTS_INIT;
  o.group = options.shard_group().empty() ? nullptr : options.shard_group().c_str();
  instances_.reserve(instances_.size() + 1);
  cruster_error *err = nullptr;
  check(cruster_runtime_register_singleton(h_, name.c_str(), &detail::singleton_holder::trampoline,
                                           holder.get(), &o, &err),
        &err);
  instances_.push_back(std::move(holder));
}

inline void runtime::register_cron_job(const std::string &name, const std::string &expr,
                                       std::function<void(const cron_slot &)> fn,
                                       const cron_options &options) {
  if (!fn) throw error(CRUSTER_E_INVALID_ARGUMENT, "register_cron_job: empty function");
  auto holder = std::make_unique<detail::cron_holder>();
  holder->fn = std::move(fn);
  cruster_cron_job_opts o = options.c_opts();
  instances_.reserve(instances_.size() + 1);
  cruster_error *err = nullptr;
  check(cruster_runtime_register_cron_job(h_, name.c_str(), expr.c_str(),
                                          &detail::cron_holder::trampoline, holder.get(), &o, &err),
        &err);
  instances_.push_back(std::move(holder));
}

inline void runtime::register_singleton(const std::string &name,
                                        std::function<void(singleton_context &)> fn) {
  register_singleton(name, std::move(fn), singleton_options());
}

inline void runtime::register_cron_job(const std::string &name, const std::string &expr,
                                       std::function<void(const cron_slot &)> fn) {
  register_cron_job(name, expr, std::move(fn), cron_options());
}

inline std::vector<cron_slot_record> runtime::cron_slots(const std::string &job,
                                                         std::size_t limit) const {
  cruster_cron_slot *raw = nullptr;
  std::size_t n = 0;
  cruster_error *err = nullptr;
  int st = cruster_cron_slots(h_, job.c_str(), limit, &raw, &n, &err);
  struct freer {
    cruster_cron_slot *p;
    std::size_t n;
    ~freer() { cruster_cron_slots_free(p, n); }
  } guard{raw, n};
  check(st, &err);
  std::vector<cron_slot_record> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    cron_slot_record r;
    r.slot_ms = raw[i].slot_ms;
    r.state = static_cast<cruster_cron_slot_state>(raw[i].state);
    r.started_ms = raw[i].started_ms;
    r.finished_ms = raw[i].finished_ms;
    if (raw[i].error != nullptr) r.error = raw[i].error;
    out.push_back(std::move(r));
  }
  return out;
}

/* rt.singleton(name).shard_group(g).run(fn): register_singleton as a builder. */
class singleton_builder {
public:
  singleton_builder(runtime &rt, std::string name) : rt_(rt), name_(std::move(name)) {}
  singleton_builder &shard_group(std::string g) {
    opts_ = opts_.shard_group(std::move(g));
    return *this;
  }
  singleton_builder &options(singleton_options o) {
    opts_ = std::move(o);
    return *this;
  }
  void run(std::function<void(singleton_context &)> fn) {
    rt_.register_singleton(name_, std::move(fn), opts_);
  }

private:
  runtime &rt_;
  std::string name_;
  singleton_options opts_;
};

/* rt.cron_job(name).schedule(expr)...run(fn): register_cron_job as a builder. */
class cron_job_builder {
public:
  cron_job_builder(runtime &rt, std::string name) : rt_(rt), name_(std::move(name)) {}
  cron_job_builder &schedule(std::string expr) {
    expr_ = std::move(expr);
    return *this;
  }
  cron_job_builder &time_zone(std::string tz) {
    opts_ = opts_.time_zone(std::move(tz));
    return *this;
  }
  cron_job_builder &calculate_next_from_previous(bool yes = true) {
    opts_ = opts_.calculate_next_from_previous(yes);
    return *this;
  }
  template <class R, class P> cron_job_builder &skip_if_older_than(std::chrono::duration<R, P> d) {
    opts_ = opts_.skip_if_older_than(d);
    return *this;
  }
  cron_job_builder &missed(cruster_cron_missed m) {
    opts_ = opts_.missed(m);
    return *this;
  }
  void run(std::function<void(const cron_slot &)> fn) {
    rt_.register_cron_job(name_, expr_, std::move(fn), opts_);
  }

private:
  runtime &rt_;
  std::string name_, expr_;
  cron_options opts_;
};

inline singleton_builder runtime::singleton(std::string name) {
  return singleton_builder(*this, std::move(name));
}
inline cron_job_builder runtime::cron_job(std::string name) {
  return cron_job_builder(*this, std::move(name));
}

} // namespace cruster

#endif /* CRUSTER_SINGLETON_HPP */
