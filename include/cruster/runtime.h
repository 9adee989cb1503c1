/*
 * cruster/runtime.h -- a runner: its loop thread, workers and lifecycle.
 *
 * A cruster_runtime is one runner of a cluster. It owns one event-loop thread
 * that holds all cluster state, and a bounded pool of worker threads on which
 * user code (entity handlers, reply callbacks) runs. Every public function is
 * safe to call from any thread unless its comment says otherwise.
 *
 * Lifecycle: cruster_runtime_new -> register entities -> cruster_runtime_start
 * -> calls -> cruster_runtime_stop -> cruster_runtime_free.
 *
 * Blocking calls made from a worker (a handler calling cruster_send_sync)
 * are allowed: while a worker is blocked in cruster the pool adds a worker,
 * up to the "worker_threads_max" setting, so chains of entities calling each
 * other synchronously complete.
 */
#ifndef CRUSTER_RUNTIME_H
#define CRUSTER_RUNTIME_H

#include "common.h"
#include "config.h"
#include "metrics.h"
#include "registry.h"
#include "status.h"
#include "storage.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cruster_runtime cruster_runtime;

/*
 * cruster_runtime_new
 *   Creates a runner from `cfg` (copied; validated as by
 *   cruster_config_validate) and starts its loop and worker threads. No
 *   message is accepted until cruster_runtime_start.
 *   `storage`: message storage, or NULL for none (persisted calls then fail
 *   with CRUSTER_E_PERSISTENCE). `registry`: runner registry, or NULL for
 *   single-node mode. The runtime takes ownership of both, also when this
 *   function fails.
 * Returns: CRUSTER_OK with *out set; CRUSTER_E_INVALID_ARGUMENT;
 *   CRUSTER_E_INVALID_CONFIG (message names the field); CRUSTER_E_NOMEM;
 *   CRUSTER_E_INTERNAL (a thread or loop could not be created).
 */
CRUSTER_API cruster_status cruster_runtime_new(const cruster_config *cfg, cruster_storage *storage,
                                               cruster_registry *registry, cruster_runtime **out,
                                               cruster_error **err);

/*
 * cruster_runtime_start
 *   Joins the cluster (single-node: takes every shard) and starts delivering
 *   messages. Blocks until this is done.
 * Threads: any thread but the runtime's own (loop or worker).
 * Returns: CRUSTER_OK; CRUSTER_E_STATE if already started or stopped, or if
 *   called from the runtime's own threads.
 */
CRUSTER_API cruster_status cruster_runtime_start(cruster_runtime *rt, cruster_error **err);

/*
 * cruster_runtime_stop
 *   Stops gracefully and blocks until done: new calls fail with
 *   CRUSTER_E_SHUTTING_DOWN; running handlers see cruster_request_cancelled()
 *   become true and get up to "entity_termination_timeout" to answer; every
 *   call still waiting then gets an answer (CRUSTER_E_INTERRUPTED for queued
 *   messages, CRUSTER_E_SHUTTING_DOWN for the rest); worker threads are
 *   joined once their handler functions have returned. Idempotent.
 *   Request handles not yet answered stay valid until cruster_runtime_free;
 *   answering them returns CRUSTER_E_SHUTTING_DOWN.
 * Threads: any thread but the runtime's own (loop or worker).
 * Returns: CRUSTER_OK; CRUSTER_E_STATE when called from the runtime's own
 *   threads.
 */
CRUSTER_API cruster_status cruster_runtime_stop(cruster_runtime *rt, cruster_error **err);

/*
 * cruster_runtime_free
 *   Stops the runtime if it is running (as cruster_runtime_stop), joins all
 *   its threads and frees everything it owns, including unanswered request
 *   handles. NULL is a no-op. No pointer obtained from this runtime may be
 *   used afterwards.
 * Threads: any thread but the runtime's own.
 */
CRUSTER_API void cruster_runtime_free(cruster_runtime *rt);

/*
 * cruster_runtime_metrics
 *   Returns the runtime's metrics registry (see cruster/metrics.h). It lives
 *   as long as the runtime.
 */
CRUSTER_API const cruster_metrics *cruster_runtime_metrics(const cruster_runtime *rt);

/*
 * cruster_runtime_runner_address
 *   Returns this runner's "host:port" (the "runner_address" setting). The
 *   string lives as long as the runtime.
 */
CRUSTER_API const char *cruster_runtime_runner_address(const cruster_runtime *rt);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_RUNTIME_H */
