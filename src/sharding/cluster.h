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

/* One runner as the health loop judges it (health.c). */
typedef struct sh_health_in {
  int healthy; /* as etcd lists it now */
  int alive;   /* answered the ping (this runner: always) */
  int stalled; /* its answer said stalled */
  int self;    /* this runner */
} sh_health_in;

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

  /* Runner health (health.c). */
  uv_timer_t health_timer, progress_timer;
  struct sh_health_pass *pass; /* the health pass in flight, NULL = none */
  int32_t health_shard;        /* "cluster/RunnerHealth"'s shard of group "default", -1 = none */
  int stalled;                 /* this runner's progress state */
  size_t kept_last;            /* unfit runners kept healthy by the last pass */
  core_metric *m_stalled, *m_stalls, *m_pings_ok, *m_pings_failed, *m_marked_unhealthy,
      *m_marked_healthy, *m_passes, *m_kept;

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

/* health.c: runner health (the cluster/RunnerHealth loop, progress). */
/* Timers and metrics; from sh_cluster_init. */
void sh_health_init(sh_sharding *sh, cruster_metrics *m);
/* Registered: the progress check and the health timer run. */
void sh_health_start(sh_sharding *sh);
/* Graceful stop: timers stopped, a pass in flight cancelled (its results dropped). */
void sh_health_stop(sh_sharding *sh);
/* From sh_cluster_free. */
void sh_health_free(sh_sharding *sh);
/* The transport's ping handler: this runner's progress now. */
void sh_health_on_ping(void *ud, tp_health *out);
/* 1 while health writes of this runner are out and `flat` is the health
 * loop's shard (its lock is kept meanwhile). */
int sh_health_busy(const sh_sharding *sh, size_t flat);
/* The pass's decision (pure, for tests): out[i] = 1 mark runner i healthy,
 * 0 mark it unhealthy, -1 leave it. A runner is fit when alive and not
 * stalled. Fit unhealthy ones become healthy; unfit healthy ones become
 * unhealthy unless that would leave no healthy runner (in[] order, after
 * the healthy marks); with no fit runner, `self` stays or becomes healthy.
 * *kept (optional) = unfit runners left healthy. Returns the writes. */
size_t sh_health_decide(const sh_health_in *in, size_t n, int *out, size_t *kept);

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
