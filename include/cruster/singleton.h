/*
 * cruster/singleton.h -- cluster singletons.
 *
 * A singleton is a function that runs on exactly one runner of the cluster:
 * the one that owns its shard, (group, djb2_32(name) mod shards_per_group)
 * (cruster_shard_for). It starts when this runner gains that shard (in
 * single-node mode: at cruster_runtime_start, or at once when registered
 * later), and is cancelled when the runner loses it (in single-node mode: at
 * the beginning of cruster_runtime_stop); the new owner then starts it.
 *
 *   static int leader(void *app, cruster_singleton_ctx *ctx) {
 *     while (!cruster_singleton_wait(ctx, 1000)) do_some_work(app);
 *     cleanup(app);                      // runs before the stop returns
 *     return CRUSTER_OK;
 *   }
 *   cruster_runtime_register_singleton(rt, "leader", leader, app, NULL, &err);
 *
 * The model.
 *  - The function runs on a worker thread of the runtime and holds it while
 *    it runs. The pool's maximum (worker_threads_max) grows by one per
 *    registered singleton, and a running singleton counts as a blocked
 *    worker, so the pool starts another worker for entities' handlers when
 *    all the others are busy: singletons never starve entities.
 *  - Managed or not. A function that calls cruster_singleton_cancelled or
 *    cruster_singleton_wait is "managed": it promises to watch for its
 *    cancellation and return. On shard loss or stop it is told (both calls
 *    then return 1) and has "entity_termination_timeout" to return; the
 *    stop's clean-up waits for it, so its own clean-up is done before
 *    cruster_runtime_stop returns. A function that never asks is
 *    "unmanaged": it is expected to do a bounded piece of work and return
 *    promptly (it is started again, see below) -- a thread cannot be killed,
 *    so cruster never aborts a function. Either kind, a function that has
 *    not returned when the grace runs out is reported (an error log naming
 *    it) and waited for: cruster_runtime_stop returns only once every
 *    singleton function has returned. A function that ignores cancellation
 *    forever therefore hangs the stop -- and in cluster mode may run on
 *    while another runner, the new owner, starts it (there is no fencing:
 *    guard shared resources yourself, for example with a fencing row).
 *  - Restarts. While this runner still owns the shard, a function that
 *    returned CRUSTER_OK (or returned after its cancellation) is started
 *    again after "singleton_crash_backoff_base"; one that returned anything
 *    else (a failure) is started again after
 *    singleton_crash_backoff_base * 2^min(n-1, 10), n being the number of
 *    consecutive failures (1 s, 2 s, 4 s, ... 1024 s by default). A success
 *    resets n. On one runner, two runs of one singleton never overlap: a
 *    start waits until the previous run has returned (also across a
 *    replacement by a same-named registration).
 *  - Metrics: cluster_singletons (running here), cluster_singleton_runs_total
 *    (functions started) and cluster_singleton_restarts_total (started again
 *    after a return), cluster_singleton_failures_total (returned a failure).
 *
 * Threads: registration from any thread (not from inside a singleton
 * function while the runtime stops); the context only inside the function it
 * was given to, on its thread.
 */
#ifndef CRUSTER_SINGLETON_H
#define CRUSTER_SINGLETON_H

#include "common.h"
#include "runtime.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The context of one run of a singleton function. Opaque. */
typedef struct cruster_singleton_ctx cruster_singleton_ctx;

/*
 * cruster_singleton_fn
 *   A singleton's function: runs until it returns (see the model above).
 *   Returns CRUSTER_OK when done, anything else as a failure (restarted with
 *   backoff). `user` is the registration's.
 * Threads: a worker thread of the runtime.
 */
typedef int (*cruster_singleton_fn)(void *user, cruster_singleton_ctx *ctx);

/*
 * Registration options (the growth rule of cruster_call_opts: initialise
 * with CRUSTER_SINGLETON_OPTS_INIT, fields are only appended). NULL =
 * defaults.
 */
typedef struct cruster_singleton_opts {
  size_t size;
  /** The shard group ("shard_groups"); NULL = "default". */
  const char *group;
} cruster_singleton_opts;

#define CRUSTER_SINGLETON_OPTS_INIT {sizeof(cruster_singleton_opts), NULL}
/** The size of the first version of cruster_singleton_opts. */
#define CRUSTER_SINGLETON_OPTS_SIZE_V1 \
  (offsetof(cruster_singleton_opts, group) + sizeof(const char *))

/*
 * cruster_runtime_register_singleton
 *   Registers singleton `name` (a name as for entity types) run by
 *   fn(user, ctx), before or after start. When this runner owns its shard
 *   and runs, it starts at once. `user` must stay valid until
 *   cruster_runtime_free (also after a replacement, below). There is no
 *   unregistration: a singleton lives as long as the runtime.
 *   Same name: a registration REPLACES a singleton of the same name (its
 *   function, user, options and so shard): the replaced one is cancelled as
 *   on a shard loss -- a managed function is told and finishes its clean-up,
 *   an unmanaged one is expected to return promptly (a thread cannot be
 *   aborted) -- and the new function starts only once the replaced one has
 *   returned, at once then if this runner owns the new shard (else when it
 *   gains it). The two never run at the same time on this runner, and the
 *   replaced function is never started again. The call does not wait for
 *   the replaced function: it returns at once. A registration replaced in
 *   turn before it ever started never runs. A cron job is the singleton
 *   "ClusterCron/<job>" (cruster/cron_job.h): that name replaces it too.
 * Returns: CRUSTER_OK (registered, or replacing); CRUSTER_E_INVALID_ARGUMENT
 *   (rt, name or fn NULL, a bad name -- empty, over CRUSTER_MAX_NAME_LEN
 *   bytes, control characters -- bad options, or a group that is not in
 *   "shard_groups"; the message says which; nothing is replaced);
 *   CRUSTER_E_SHUTTING_DOWN (the runtime stops or stopped);
 *   CRUSTER_E_NOMEM.
 * Threads: any (a worker counts as blocked meanwhile).
 */
CRUSTER_API cruster_status cruster_runtime_register_singleton(cruster_runtime *rt,
                                                              const char *name,
                                                              cruster_singleton_fn fn, void *user,
                                                              const cruster_singleton_opts *opts,
                                                              cruster_error **err);

/*
 * cruster_singleton_cancelled
 *   1 once this run is cancelled (the shard was lost or the runtime stops):
 *   return promptly. 0 otherwise. Makes the singleton managed.
 */
CRUSTER_API int cruster_singleton_cancelled(cruster_singleton_ctx *ctx);

/*
 * cruster_singleton_wait
 *   Waits until this run is cancelled or `timeout_ms` (0..86400000; larger
 *   values are capped, negative ones are 0) have passed: 1 when cancelled,
 *   0 on timeout. A cancellable sleep. Makes the singleton managed.
 */
CRUSTER_API int cruster_singleton_wait(cruster_singleton_ctx *ctx, int64_t timeout_ms);

/** The singleton's name (valid during the run). */
CRUSTER_API const char *cruster_singleton_name(const cruster_singleton_ctx *ctx);

/** Consecutive failures before this run (0 after a success). */
CRUSTER_API int64_t cruster_singleton_failures(const cruster_singleton_ctx *ctx);

/** The runtime running it. */
CRUSTER_API cruster_runtime *cruster_singleton_runtime(const cruster_singleton_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_SINGLETON_H */
