/* Internal: cluster mode of the sharding layer (cluster.c: membership,
 * shard locks, rebalancing, detachment; remote.c: calls to and from other
 * runners). Single-node mode has no sh_cluster (sh->cl == NULL). Loop
 * thread unless said. */
#ifndef SH_CLUSTER_H
#define SH_CLUSTER_H

#include "core/prefix.h"

#include "registry/registry_internal.h"
#include "sharding/sharding_internal.h"
#include "transport/transport.h"

/* A call is forwarded at most this many times between runners (fix 3):
 * routing tables that disagree cannot bounce it for ever. */
#define SH_MAX_HOPS 3

typedef struct sh_cluster {
  sh_sharding *sh;
  cruster_registry *reg; /* owned by the runtime */
  tp_transport *tp;      /* ours */
  char *me;              /* "host:port": runner_address */
  char *host;
  int port;
  int machine_id;

  /* The candidates (healthy, weight > 0) of the last runner list, in key order. */
  char **runners;
  int32_t *weights;
  size_t n_runners;
  size_t n_listed; /* every runner listed, candidates or not */
  /* Desired owner of each shard: index in runners, -1 = none. Per group,
   * shards_per_group entries. */
  int32_t *route;

  int registering, registered;
  int detached;  /* the lease is uncertain: nothing runs here */
  int leaving;   /* graceful stop: no rebalance */
  int busy;      /* a rebalance cycle waits for etcd */
  int again;     /* asked for while busy */
  int refreshing;
  uint64_t *locked; /* shards whose lock we may hold but no longer own (release pending) */
  int64_t *let_go_at; /* monotonic ms a shard was let go (per flat shard) */
  uv_timer_t held_timer; /* a cycle soon: releases held back by running work */
  uv_timer_t rebalance_timer, refresh_timer, register_timer, waiters_timer;
  int timers_init;
  void (*leave_cb)(void *ud);
  void *leave_ud;

  /* Calls waiting to be routed again (no owner known, a move in progress). */
  uv_timer_t retry_timer;
  sh_call *retry_head;

  core_metric *m_runners, *m_runners_healthy, *m_detached, *m_moves_in, *m_moves_out,
      *m_forwarded, *m_remote_received, *m_retries, *m_lease_uncertain;
} sh_cluster;

/* Sets up cluster mode: the transport (not listening yet) and the registry's
 * attachment. Before the loop thread runs. */
cruster_status sh_cluster_init(sh_sharding *sh, cruster_registry *reg, cruster_metrics *metrics,
                               cruster_error **err);
/* The runtime started: listen, register, then rebalance. */
void sh_cluster_start(sh_sharding *sh);
/* The graceful stop began: no rebalance; every shard let go. */
void sh_cluster_stop(sh_sharding *sh);
/* The last step of a graceful stop, after the handlers finished: revoke the
 * lease (the others take the shards at once), stop the transport and the
 * registry, then cb(ud). */
void sh_cluster_leave(sh_sharding *sh, void (*cb)(void *ud), void *ud);
/* Frees what sh_cluster_init made (after the loop closed). */
void sh_cluster_free(sh_sharding *sh);

/* remote.c */
/* Routes call `c` (already in the deadline heap, type and rpc checked, its
 * envelope addressed) whose shard this runner does not own. */
void sh_route_remote(sh_sharding *sh, sh_call *c);
/* Routes again, later, a call that found no owner. */
void sh_retry_later(sh_sharding *sh, sh_call *c);
/* A call leaves: detach it from a forward in flight or the retry list. */
void sh_remote_detach(sh_sharding *sh, sh_call *c);
/* What routing call `c` met last, for its deadline's message: "; the
 * last forward failed: runner ADDR: why" (one was refused), "; shard G:S
 * had no owner to forward to (...)", else "; the forward to runner ADDR
 * had not answered" (one in flight), else "". */
void sh_remote_describe(const sh_call *c, char *buf, size_t cap);
/* The transport's host: calls from other runners. */
extern const tp_host sh_tp_host_template;

#endif
