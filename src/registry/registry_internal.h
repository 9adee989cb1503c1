/* Internal: the runner-registry interface (etcd in cluster mode). A NULL
 * registry means single-node mode.
 *
 * The upper layers call a registry only through its rg_ops (a second backend
 * is another rg_ops). Every operation runs on the loop thread of the host it
 * was attached with, and so does every callback. An operation that returns
 * CRUSTER_OK calls its callback exactly once, later (never inside the call):
 * with its outcome, or CRUSTER_E_SHUTTING_DOWN when stop() comes first. Any
 * other return value means nothing happened and the callback is never called.
 *
 * Statuses given to callbacks: CRUSTER_OK; CRUSTER_E_REGISTRY (etcd could not
 * be reached, or answered with an error: the message says which);
 * CRUSTER_E_TIMEOUT (no answer within the request timeout);
 * CRUSTER_E_MALFORMED (an answer that is not what etcd sends);
 * CRUSTER_E_STATE (no lease: not registered, or the lease was lost);
 * CRUSTER_E_SHUTTING_DOWN; CRUSTER_E_NOMEM. */
#ifndef RG_REGISTRY_INTERNAL_H
#define RG_REGISTRY_INTERNAL_H

#include "core/prefix.h"

#include <cruster/registry.h>
#include <stdint.h>

#include "core/log.h"
#include "core/metrics_internal.h"
#include "loop/loop.h"

/* One runner as registered (valid during the callback that hands it). */
typedef struct rg_runner {
  const char *addr; /* "host:port", as in the key */
  const char *host;
  int port;
  int weight; /* >= 0 (0 = drain) */
  int healthy;
  int64_t lease;        /* its lease id (0 = none) */
  int64_t mod_revision; /* of its key */
} rg_runner;

/* The lease's state, as reported to rg_host.on_lease. */
enum {
  RG_LEASE_OK = 1,        /* a keep-alive succeeded after an uncertain period (same lease) */
  RG_LEASE_UNCERTAIN = 2, /* the lease deadline (minus the margin) passed, or etcd said the
                             lease is gone: stop running shards now */
  RG_LEASE_NEW = 3        /* registered again under a new lease after the old one was lost:
                             every lock is gone, acquire again */
};

/* What a registry gets from the layer that attaches it. Valid from attach
 * until stop. */
typedef struct rg_host {
  rt_loop *loop; /* the registry runs on loop->uv, on the loop thread */
  const core_logger *lg;
  cruster_metrics *metrics; /* may be NULL: no metrics */
  void *ud;                 /* passed to the callbacks */
  /* The full runner list, sorted by key, after each watch event that changed
   * it and after each poll (the list may then be unchanged). Optional. */
  void (*on_runners)(void *ud, const rg_runner *runners, size_t n);
  /* RG_LEASE_*. Optional. */
  void (*on_lease)(void *ud, int state);
} rg_host;

typedef void (*rg_status_cb)(void *ud, int status, const char *msg);
typedef void (*rg_register_cb)(void *ud, int status, const char *msg, int machine_id);
typedef void (*rg_runners_cb)(void *ud, int status, const char *msg, const rg_runner *runners,
                              size_t n);
/* results[i] for shard_keys[i]: acquire 1 = mine (created now or already
 * mine), 0 = held by another runner; refresh 1 = still mine (now under the
 * current lease), 0 = lost; release 1 = released, 0 = was not mine (nothing
 * done); a negative status = that shard's request failed. Valid during the
 * callback; NULL when status != CRUSTER_OK. */
typedef void (*rg_locks_cb)(void *ud, int status, const char *msg, const int *results, size_t n);

/* Most lock requests in flight at once for one acquire/refresh/release. */
#define RG_MAX_INFLIGHT 64

typedef struct rg_ops {
  const char *name;
  /* Frees the registry. After stop() (and after the loop has run the close
   * callbacks of the handles stop closed), or when never attached. */
  void (*destroy)(cruster_registry *r);
  /* Binds the registry to a loop. Before the loop thread runs, or on it.
   * Once. CRUSTER_E_STATE when attached already. */
  cruster_status (*attach)(cruster_registry *r, const rg_host *host, cruster_error **err);
  /* Registers this runner (host:port, weight >= 0, healthy) under a new
   * lease, takes a machine id (1..1023, 0) and starts the keep-alive, the
   * runner watch and the safety-net poll. Once per attach (again after
   * release_all). */
  cruster_status (*register_runner)(cruster_registry *r, const char *host, int port, int weight,
                                    rg_register_cb cb, void *ud, cruster_error **err);
  /* Reads the runner list (malformed entries skipped and counted). */
  cruster_status (*get_runners)(cruster_registry *r, rg_runners_cb cb, void *ud,
                                cruster_error **err);
  /* Shard locks ("group:n" keys, n >= 0, at most 1<<20 of them), at most
   * RG_MAX_INFLIGHT requests in flight. acquire and refresh need a lease
   * (CRUSTER_E_STATE otherwise). */
  cruster_status (*acquire)(cruster_registry *r, const char *const *shard_keys, size_t n,
                            rg_locks_cb cb, void *ud, cruster_error **err);
  cruster_status (*refresh)(cruster_registry *r, const char *const *shard_keys, size_t n,
                            rg_locks_cb cb, void *ud, cruster_error **err);
  cruster_status (*release)(cruster_registry *r, const char *const *shard_keys, size_t n,
                            rg_locks_cb cb, void *ud, cruster_error **err);
  /* Marks runner "host:port" (un)healthy, keeping its key's lease; a
   * missing key is a no-op (CRUSTER_OK). */
  cruster_status (*set_runner_health)(cruster_registry *r, const char *addr, int healthy,
                                      rg_status_cb cb, void *ud, cruster_error **err);
  /* Stops the keep-alive, watch and poll and revokes the lease: the runner
   * key and every lock of this runner vanish at once. A registry that holds
   * no lease answers CRUSTER_OK. */
  cruster_status (*release_all)(cruster_registry *r, rg_status_cb cb, void *ud,
                                cruster_error **err);
  /* Cancels everything: every pending callback gets CRUSTER_E_SHUTTING_DOWN
   * (inside this call), then every handle is closed. Later operations are
   * refused with CRUSTER_E_SHUTTING_DOWN. Idempotent. The runtime calls it
   * on the loop thread before the loop closes its handles. */
  void (*stop)(cruster_registry *r);
  /* Monotonic ms (uv_hrtime() / 1e6) until which the lease is provably
   * alive: the send time of the last successful keep-alive (or grant) plus
   * the TTL it returned. 0 when there is no lease. */
  int64_t (*lease_deadline_ms)(cruster_registry *r);
} rg_ops;

struct cruster_registry {
  const rg_ops *ops;
  void *impl;
};

/* Test hook (etcd only): non-zero makes the keep-alive ticks send nothing
 * (as if etcd could not be reached), zero resumes them with a keep-alive at
 * once. Loop thread. */
void rg_etcd_test_drop_keepalives(cruster_registry *r, int drop);

#endif
