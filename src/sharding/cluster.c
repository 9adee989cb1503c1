/* Cluster mode: membership, shard locks, rebalancing and detachment
 * (behaviour.md §2-3 with the preface's fixes 3 and 5).
 *
 * - The runner registers (lease, runner key, machine id) and listens on its
 *   transport. The registry's watch hands every change of the runner list
 *   to on_runners, which recomputes the desired owner of every shard
 *   (rendezvous, §2) and runs a rebalance cycle at once; a timer runs one
 *   every shard_rebalance_retry_interval as the safety net.
 * - A cycle first lets go of the shards that should be elsewhere (each is
 *   marked not owned -- the listeners stop singletons, the storage forgets
 *   it --, its entities are interrupted, then its lock is released), then
 *   takes the locks of the shards that should be here. A shard is owned
 *   (sh_own_set) only once its lock is held, and only its owner runs its
 *   messages (fix 3).
 * - The locks are refreshed every runner_lock_refresh_interval; one found
 *   lost is let go at once.
 * - Lease-deadline detachment (fix 5, on by default): when the registry
 *   cannot prove the lease (RG_LEASE_UNCERTAIN) every shard is let go at
 *   once; on RG_LEASE_OK or RG_LEASE_NEW (re-registered by itself) the next
 *   cycle takes them again.
 * - A graceful stop lets go of every shard, waits for the handlers (the
 *   runner), then revokes the lease: runner key and locks vanish at once
 *   and the others' watches rebalance immediately. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "sharding/cluster.h"

#define SH_REGISTER_RETRY_MS 1000

static size_t n_shards(const sh_sharding *sh) {
  return sh->cfg->n_shard_groups * (size_t)sh->cfg->shards_per_group;
}

/* "group:n" into buf. */
static void shard_key(const sh_sharding *sh, size_t flat, char *buf, size_t cap) {
  size_t per = (size_t)sh->cfg->shards_per_group;
  snprintf(buf, cap, "%s:%zu", sh->cfg->shard_groups[flat / per], flat % per);
}

static int locked_get(const sh_cluster *cl, size_t flat) {
  return (int)((cl->locked[flat / 64] >> (flat % 64)) & 1u);
}
static void locked_put(sh_cluster *cl, size_t flat, int on) {
  uint64_t bit = (uint64_t)1 << (flat % 64);
  if (on) cl->locked[flat / 64] |= bit;
  else cl->locked[flat / 64] &= ~bit;
}

static int owns_flat(const sh_sharding *sh, size_t flat) {
  size_t per = (size_t)sh->cfg->shards_per_group;
  return sh_owns(sh, sh->cfg->shard_groups[flat / per], (int32_t)(flat % per));
}

/* Lets go of one shard: not owned (listeners told), its entities
 * interrupted. Its lock is still ours until released. */
static void let_go(sh_sharding *sh, size_t flat) {
  sh_cluster *cl = sh->cl;
  size_t per = (size_t)sh->cfg->shards_per_group;
  const char *g = sh->cfg->shard_groups[flat / per];
  int32_t n = (int32_t)(flat % per);
  if (sh_own_set(sh, g, n, 0) == 1) {
    core_metric_add(cl->m_moves_out, 1);
    em_interrupt_shard(sh->em, g, n);
    if (sh->storage && sh->storage->ops->shards_released)
      sh->storage->ops->shards_released(sh->storage, g, &n, 1);
    cl->let_go_at[flat] = core_mono_ms();
  }
  locked_put(cl, flat, 1);
}

static void let_go_all(sh_sharding *sh) {
  size_t total = n_shards(sh);
  for (size_t f = 0; f < total; f++)
    if (owns_flat(sh, f)) let_go(sh, f);
}

/* ---- rebalance ------------------------------------------------------------ */

static void cycle(sh_sharding *sh);
static int still_busy(sh_sharding *sh, size_t f);
static void held_fire(uv_timer_t *t);

typedef struct lock_req {
  sh_sharding *sh;
  size_t n;
  size_t *flat;
  char **keys;
} lock_req;

static lock_req *lock_req_new(sh_sharding *sh, size_t n) {
  lock_req *q = calloc(1, sizeof(*q));
  if (!q) return NULL;
  q->sh = sh;
  q->flat = calloc(n ? n : 1, sizeof(size_t));
  q->keys = calloc(n ? n : 1, sizeof(char *));
  if (!q->flat || !q->keys) {
    free(q->flat);
    free(q->keys);
    free(q);
    return NULL;
  }
  return q;
}

static int lock_req_add(lock_req *q, size_t flat) {
  char buf[CRUSTER_MAX_NAME_LEN + 24];
  shard_key(q->sh, flat, buf, sizeof(buf));
  q->keys[q->n] = core_strdup(buf);
  if (!q->keys[q->n]) return -1;
  q->flat[q->n++] = flat;
  return 0;
}

static void lock_req_free(lock_req *q) {
  if (!q) return;
  for (size_t i = 0; i < q->n; i++) free(q->keys[i]);
  free(q->keys);
  free(q->flat);
  free(q);
}

static void cycle_done(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  cl->busy = 0;
  if (cl->again) {
    cl->again = 0;
    cycle(sh);
  }
}

/* The storage took over the acquired shards' stored messages: poll them. */
static void storage_took(void *ud, int status, const char *msg) {
  sh_sharding *sh = ud;
  (void)msg;
  if (status == CRUSTER_OK) sh_poll_schedule(sh, 0);
}

static void on_acquired(void *ud, int status, const char *msg, const int *results, size_t n) {
  lock_req *q = ud;
  sh_sharding *sh = q->sh;
  sh_cluster *cl = sh->cl;
  if (status == CRUSTER_E_SHUTTING_DOWN) {
    lock_req_free(q);
    return;
  }
  if (status != CRUSTER_OK) {
    core_log(sh->lg, CRUSTER_LOG_WARN, "cluster", "acquiring %zu shard locks failed: %s", q->n,
             msg ? msg : cruster_status_message(status));
  } else if (!cl->detached && !cl->leaving && !sh->stopping) {
    size_t per = (size_t)sh->cfg->shards_per_group, got = 0;
    unsigned char *taken = calloc(n_shards(sh), 1);
    for (size_t i = 0; i < n && i < q->n; i++) {
      if (results[i] != 1) continue;
      size_t f = q->flat[i];
      locked_put(cl, f, 0);
      /* Still meant to be here? (The runner list may have changed while the
       * request was out: the next cycle releases it otherwise.) */
      if (sh_own_set(sh, sh->cfg->shard_groups[f / per], (int32_t)(f % per), 1) == 1) {
        core_metric_add(cl->m_moves_in, 1);
        got++;
        if (taken) taken[f] = 1;
      }
    }
    if (got) {
      core_log(sh->lg, CRUSTER_LOG_INFO, "cluster", "acquired %zu shard(s); %zu owned", got,
               sh_owned_count(sh));
    }
    /* Until the storage has given back the stale claims of the shards and
     * learnt their stored messages, their new messages are ordered by
     * asking it; then the poll picks them up. One request per group. */
    int32_t *list = got && taken ? malloc(per * sizeof(int32_t)) : NULL;
    for (size_t g = 0; list && g < sh->cfg->n_shard_groups; g++) {
      size_t k = 0;
      for (size_t j = 0; j < per; j++)
        if (taken[g * per + j]) list[k++] = (int32_t)j;
      if (k && sh->storage && sh->storage->ops->shards_acquired)
        sh->storage->ops->shards_acquired(sh->storage, sh->cfg->shard_groups[g], list, k,
                                          storage_took, sh);
    }
    if (got && !list) sh_poll_schedule(sh, 0); /* OOM: stale claims stay; new messages take the slow path */
    free(list);
    free(taken);
  }
  lock_req_free(q);
  cycle_done(sh);
}

static void on_released(void *ud, int status, const char *msg, const int *results, size_t n) {
  lock_req *q = ud;
  sh_sharding *sh = q->sh;
  if (status == CRUSTER_OK) {
    for (size_t i = 0; i < n && i < q->n; i++)
      if (results[i] >= 0) locked_put(sh->cl, q->flat[i], 0);
  } else if (status != CRUSTER_E_SHUTTING_DOWN) {
    core_log(sh->lg, CRUSTER_LOG_WARN, "cluster", "releasing %zu shard locks failed: %s (retried)",
             q->n, msg ? msg : cruster_status_message(status));
  }
  lock_req_free(q);
}

/* One rebalance cycle: release what should be elsewhere, acquire what
 * should be here. */
static void cycle(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  if (!cl->registered || cl->detached || cl->leaving || sh->stopping) return;
  if (cl->busy) {
    cl->again = 1;
    return;
  }
  size_t total = n_shards(sh);
  int32_t me = -1;
  for (size_t i = 0; i < cl->n_runners; i++)
    if (strcmp(cl->runners[i], cl->me) == 0) me = (int32_t)i;
  size_t held = 0;
  lock_req *rel = lock_req_new(sh, total), *acq = lock_req_new(sh, total);
  if (!rel || !acq) {
    lock_req_free(rel);
    lock_req_free(acq);
    return;
  }
  for (size_t f = 0; f < total; f++) {
    int mine = me >= 0 && cl->route[f] == me;
    int owned = owns_flat(sh, f);
    if (owned && !mine) {
      let_go(sh, f);
    }
    if (!mine && locked_get(cl, f)) {
      if (still_busy(sh, f)) {
        held++;
        continue;
      }
      if (lock_req_add(rel, f) != 0) break;
    } else if (mine && !owned) {
      if (lock_req_add(acq, f) != 0) break;
    }
  }
  if (held && !uv_is_active((uv_handle_t *)&cl->held_timer))
    uv_timer_start(&cl->held_timer, held_fire, 20, 0);
  cruster_error *err = NULL;
  if (rel->n) {
    if (cl->reg->ops->release(cl->reg, (const char *const *)rel->keys, rel->n, on_released, rel,
                              &err) != CRUSTER_OK) {
      cruster_error_free(err);
      err = NULL;
      lock_req_free(rel);
    }
  } else {
    lock_req_free(rel);
  }
  if (acq->n) {
    cl->busy = 1;
    if (cl->reg->ops->acquire(cl->reg, (const char *const *)acq->keys, acq->n, on_acquired, acq,
                              &err) != CRUSTER_OK) {
      core_log(sh->lg, CRUSTER_LOG_WARN, "cluster", "acquiring shard locks: %s",
               err ? cruster_error_message(err) : "failed");
      cruster_error_free(err);
      lock_req_free(acq);
      cl->busy = 0;
    }
  } else {
    lock_req_free(acq);
  }
}

/* 1 while work of a let-go shard still runs here (within
 * entity_termination_timeout of the let-go): its lock stays ours, so no
 * other runner starts the shard meanwhile (fix 3). */
static int still_busy(sh_sharding *sh, size_t f) {
  if (sh_health_busy(sh, f)) return 1;
  if (!sh->shard_busy) return 0;
  if (core_mono_ms() - sh->cl->let_go_at[f] >= sh->cfg->entity_termination_timeout) return 0;
  size_t per = (size_t)sh->cfg->shards_per_group;
  return sh->shard_busy(sh->shard_busy_ud, sh->cfg->shard_groups[f / per], (int32_t)(f % per)) > 0;
}

static void held_fire(uv_timer_t *t) { cycle(t->data); }

static void rebalance_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  cycle(sh);
}

/* The registry's runner list: the candidates and the desired owners. */
static void on_runners(void *ud, const rg_runner *rs, size_t n) {
  sh_sharding *sh = ud;
  sh_cluster *cl = sh->cl;
  size_t cand = 0, healthy = 0;
  for (size_t i = 0; i < n; i++) {
    if (rs[i].healthy) healthy++;
    if (rs[i].healthy && rs[i].weight > 0) cand++;
  }
  char **names = calloc(cand ? cand : 1, sizeof(char *));
  int32_t *w = calloc(cand ? cand : 1, sizeof(int32_t));
  if (!names || !w) {
    free(names);
    free(w);
    return;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (!(rs[i].healthy && rs[i].weight > 0)) continue;
    names[k] = core_strdup(rs[i].addr);
    if (!names[k]) {
      for (size_t j = 0; j < k; j++) free(names[j]);
      free(names);
      free(w);
      return;
    }
    w[k++] = rs[i].weight;
  }
  /* Unchanged list: nothing to recompute (the poll's safety net). */
  int same = k == cl->n_runners;
  for (size_t i = 0; same && i < k; i++)
    same = strcmp(names[i], cl->runners[i]) == 0 && w[i] == cl->weights[i];
  core_metric_set(cl->m_runners, (double)n);
  core_metric_set(cl->m_runners_healthy, (double)healthy);
  if (same) {
    for (size_t i = 0; i < k; i++) free(names[i]);
    free(names);
    free(w);
    return;
  }
  for (size_t i = 0; i < cl->n_runners; i++) free(cl->runners[i]);
  free(cl->runners);
  free(cl->weights);
  cl->runners = names;
  cl->weights = w;
  cl->n_runners = k;
  cl->n_listed = n;
  size_t per = (size_t)sh->cfg->shards_per_group, total = n_shards(sh);
  for (size_t f = 0; f < total; f++)
    cl->route[f] = cruster_rendezvous_owner(sh->cfg->shard_groups[f / per], (int32_t)(f % per),
                                            (const char *const *)names, w, k);
  core_log(sh->lg, CRUSTER_LOG_INFO, "cluster", "%zu runner(s) listed, %zu candidate(s)", n, k);
  cycle(sh);
}

static void on_lease(void *ud, int state) {
  sh_sharding *sh = ud;
  sh_cluster *cl = sh->cl;
  if (state == RG_LEASE_UNCERTAIN) {
    if (!cl->detached) {
      core_log(sh->lg, CRUSTER_LOG_WARN, "cluster",
               "the lease cannot be proven alive: detaching (%zu shard(s) let go)",
               sh_owned_count(sh));
      cl->detached = 1;
      core_metric_set(cl->m_detached, 1);
      core_metric_add(cl->m_lease_uncertain, 1);
      let_go_all(sh);
    }
    return;
  }
  if (state == RG_LEASE_NEW) {
    /* Every lock went with the old lease. */
    memset(cl->locked, 0, ((n_shards(sh) + 63) / 64) * sizeof(uint64_t));
  }
  if (cl->detached) {
    core_log(sh->lg, CRUSTER_LOG_INFO, "cluster", "lease %s: re-attaching",
             state == RG_LEASE_NEW ? "renewed after re-registration" : "proven again");
    cl->detached = 0;
    core_metric_set(cl->m_detached, 0);
  }
  cycle(sh);
}

/* ---- lock refresh ------------------------------------------------------- */

static void on_refreshed(void *ud, int status, const char *msg, const int *results, size_t n) {
  lock_req *q = ud;
  sh_sharding *sh = q->sh;
  sh_cluster *cl = sh->cl;
  cl->refreshing = 0;
  if (status == CRUSTER_OK && !cl->detached) {
    size_t lost = 0;
    for (size_t i = 0; i < n && i < q->n; i++)
      if (results[i] == 0 && owns_flat(sh, q->flat[i])) {
        let_go(sh, q->flat[i]);
        locked_put(cl, q->flat[i], 0);
        lost++;
      }
    if (lost)
      core_log(sh->lg, CRUSTER_LOG_WARN, "cluster", "%zu shard lock(s) found lost: let go", lost);
  } else if (status != CRUSTER_OK && status != CRUSTER_E_SHUTTING_DOWN) {
    core_log(sh->lg, CRUSTER_LOG_WARN, "cluster", "refreshing shard locks failed: %s",
             msg ? msg : cruster_status_message(status));
  }
  lock_req_free(q);
}

static void refresh_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  sh_cluster *cl = sh->cl;
  if (cl->refreshing || cl->detached || cl->leaving || !cl->registered || sh->stopping) return;
  size_t total = n_shards(sh);
  lock_req *q = lock_req_new(sh, sh_owned_count(sh));
  if (!q) return;
  for (size_t f = 0; f < total && q->n < sh_owned_count(sh); f++)
    if (owns_flat(sh, f) && lock_req_add(q, f) != 0) break;
  if (q->n == 0) {
    lock_req_free(q);
    return;
  }
  cruster_error *err = NULL;
  cl->refreshing = 1;
  if (cl->reg->ops->refresh(cl->reg, (const char *const *)q->keys, q->n, on_refreshed, q, &err) !=
      CRUSTER_OK) {
    cruster_error_free(err);
    lock_req_free(q);
    cl->refreshing = 0;
  }
}

/* ---- answers stored by other runners ---------------------------------------- */

/* A caller waiting here for a persisted request's answer (a join, a keyed
 * repeat) is resolved when this runner stores it; in a cluster another
 * runner may store it. So every storage_poll_interval the waited-for ids
 * are looked up (fix 1: the answer reaches its caller on whichever runner
 * it waits). */
typedef struct recheck {
  sh_sharding *sh;
  int64_t request_id;
} recheck;

static void on_recheck(void *ud, int status, const char *errmsg, int found, int processed,
                       const st_reply *r) {
  recheck *x = ud;
  (void)errmsg;
  (void)found;
  if (status == CRUSTER_OK && processed && r && !x->sh->stopping)
    sh_waiters_resolve(x->sh, x->request_id, r->status, r->data, r->len, r->message);
  free(x);
}

static void collect_waiter(void *ctx, core_map_entry *e) {
  int64_t **cur = ctx;
  *(*cur)++ = e->ikey;
}

static void waiters_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  size_t n = sh->waiters.count;
  if (!sh->storage || sh->stopping || n == 0) return;
  int64_t *ids = malloc(n * sizeof(int64_t)), *cur = ids;
  if (!ids) return;
  core_map_each(&sh->waiters, collect_waiter, &cur);
  for (size_t i = 0; i < (size_t)(cur - ids); i++) {
    recheck *x = malloc(sizeof(*x));
    if (!x) break;
    x->sh = sh;
    x->request_id = ids[i];
    sh->storage->ops->get_reply(sh->storage, ids[i], on_recheck, x);
  }
  free(ids);
}

/* ---- registration -------------------------------------------------------- */

static void do_register(sh_sharding *sh);

static void register_fire(uv_timer_t *t) { do_register(t->data); }

static void on_registered(void *ud, int status, const char *msg, int machine_id) {
  sh_sharding *sh = ud;
  sh_cluster *cl = sh->cl;
  cl->registering = 0;
  if (status == CRUSTER_E_SHUTTING_DOWN || cl->leaving || sh->stopping) return;
  if (status != CRUSTER_OK) {
    core_log(sh->lg, CRUSTER_LOG_ERROR, "cluster",
             "registering runner %s failed: %s (retrying in %d ms)", cl->me,
             msg ? msg : cruster_status_message(status), SH_REGISTER_RETRY_MS);
    uv_timer_start(&cl->register_timer, register_fire, SH_REGISTER_RETRY_MS, 0);
    return;
  }
  cl->registered = 1;
  cl->machine_id = machine_id;
  core_snowflake_set_machine_id(sh->snowflake, machine_id);
  core_log(sh->lg, CRUSTER_LOG_INFO, "cluster", "runner %s registered (machine id %d)", cl->me,
           machine_id);
  uint64_t every = (uint64_t)sh->cfg->shard_rebalance_retry_interval;
  uv_timer_start(&cl->rebalance_timer, rebalance_fire, every, every);
  uint64_t refresh = (uint64_t)sh->cfg->runner_lock_refresh_interval;
  uv_timer_start(&cl->refresh_timer, refresh_fire, refresh, refresh);
  uint64_t poll = (uint64_t)sh->cfg->storage_poll_interval;
  uv_timer_start(&cl->waiters_timer, waiters_fire, poll, poll);
  sh_health_start(sh);
  /* The watch hands the runner list soon; ask now as well. */
  cycle(sh);
}

static void do_register(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  if (cl->registering || cl->registered || cl->leaving || sh->stopping) return;
  cruster_error *err = NULL;
  cl->registering = 1;
  int weight = sh->cfg->runner_weight > INT32_MAX ? INT32_MAX : (int)sh->cfg->runner_weight;
  if (cl->reg->ops->register_runner(cl->reg, cl->host, cl->port, weight, on_registered, sh, &err) !=
      CRUSTER_OK) {
    cl->registering = 0;
    core_log(sh->lg, CRUSTER_LOG_ERROR, "cluster", "registering runner %s: %s", cl->me,
             err ? cruster_error_message(err) : "failed");
    cruster_error_free(err);
    uv_timer_start(&cl->register_timer, register_fire, SH_REGISTER_RETRY_MS, 0);
  }
}

/* ---- setup, start, stop -------------------------------------------------- */

static int split_hostport(const char *addr, char **host, int *port) {
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr) return -1;
  char *end = NULL;
  long p = strtol(colon + 1, &end, 10);
  if (!end || *end || p < 1 || p > 65535) return -1;
  size_t hl = (size_t)(colon - addr);
  if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
    addr++;
    hl -= 2;
  }
  *host = malloc(hl + 1);
  if (!*host) return -1;
  memcpy(*host, addr, hl);
  (*host)[hl] = '\0';
  *port = (int)p;
  return 0;
}

cruster_status sh_cluster_init(sh_sharding *sh, cruster_registry *reg, cruster_metrics *metrics,
                               cruster_error **err) {
  sh_cluster *cl = calloc(1, sizeof(*cl));
  if (!cl) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  sh->cl = cl;
  sh->single_node = 0;
  cl->sh = sh;
  cl->reg = reg;
  size_t total = n_shards(sh);
  cl->route = malloc(total * sizeof(int32_t));
  cl->locked = calloc((total + 63) / 64, sizeof(uint64_t));
  cl->let_go_at = calloc(total ? total : 1, sizeof(int64_t));
  cl->me = core_strdup(sh->cfg->runner_address);
  if (!cl->route || !cl->locked || !cl->let_go_at || !cl->me)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  for (size_t f = 0; f < total; f++) cl->route[f] = -1;
  if (split_hostport(cl->me, &cl->host, &cl->port) != 0)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "runner_address must be host:port with a port from 1 to 65535 in "
                          "cluster mode, got '%s'",
                          cl->me);
  cruster_metrics *m = metrics;
  cl->m_runners = core_metrics_get(m, CORE_GAUGE, "cluster_runners", "Runners registered in the cluster", NULL);
  cl->m_runners_healthy = core_metrics_get(m, CORE_GAUGE, "cluster_runners_healthy", "Registered runners marked healthy", NULL);
  cl->m_detached = core_metrics_get(m, CORE_GAUGE, "cluster_sharding_detached",
                                    "1 while this runner is detached (its lease cannot be proven)", NULL);
  cl->m_moves_in = core_metrics_get(m, CORE_COUNTER, "cluster_shards_acquired_total", "Shards this runner took", NULL);
  cl->m_moves_out = core_metrics_get(m, CORE_COUNTER, "cluster_shards_released_total", "Shards this runner let go", NULL);
  cl->m_forwarded = core_metrics_get(m, CORE_COUNTER, "cluster_calls_forwarded_total",
                                     "Calls sent to the runner that owns their shard", NULL);
  cl->m_remote_received = core_metrics_get(m, CORE_COUNTER, "cluster_calls_received_total",
                                           "Calls received from other runners", NULL);
  cl->m_retries = core_metrics_get(m, CORE_COUNTER, "cluster_calls_rerouted_total",
                                   "Calls routed again (no owner known, a move in progress)", NULL);
  cl->m_lease_uncertain = core_metrics_get(m, CORE_COUNTER, "cluster_detachments_total",
                                           "Times this runner detached because its lease was uncertain", NULL);
  tp_opts to;
  memset(&to, 0, sizeof(to));
  to.listen_address = sh->cfg->runner_listen_address ? sh->cfg->runner_listen_address : cl->me;
  to.max_message_size = core_config_max_message(sh->cfg);
  to.connect_timeout_ms = sh->cfg->grpc_connect_timeout;
  to.tls_cert = sh->cfg->transport_tls_cert;
  to.tls_key = sh->cfg->transport_tls_key;
  to.tls_ca = sh->cfg->transport_tls_ca;
  to.tls_require_client_cert = (int)sh->cfg->transport_tls_require_client_cert;
  tp_host th = sh_tp_host_template;
  th.ud = sh;
  cruster_status st = tp_new(sh->loop, &to, sh->lg, metrics, &th, &cl->tp, err);
  if (st != CRUSTER_OK) return st;
  tp_set_ping_handler(cl->tp, sh_health_on_ping, sh);
  rg_host rh;
  memset(&rh, 0, sizeof(rh));
  rh.loop = sh->loop;
  rh.lg = sh->lg;
  rh.metrics = metrics;
  rh.ud = sh;
  rh.on_runners = on_runners;
  rh.on_lease = on_lease;
  st = reg->ops->attach(reg, &rh, err);
  if (st != CRUSTER_OK) return st;
  uv_timer_init(&sh->loop->uv, &cl->rebalance_timer);
  uv_timer_init(&sh->loop->uv, &cl->refresh_timer);
  uv_timer_init(&sh->loop->uv, &cl->register_timer);
  uv_timer_init(&sh->loop->uv, &cl->retry_timer);
  uv_timer_init(&sh->loop->uv, &cl->waiters_timer);
  uv_timer_init(&sh->loop->uv, &cl->held_timer);
  cl->held_timer.data = sh;
  cl->waiters_timer.data = sh;
  cl->rebalance_timer.data = cl->refresh_timer.data = cl->register_timer.data = sh;
  cl->retry_timer.data = sh;
  sh_health_init(sh, metrics);
  cl->timers_init = 1;
  return CRUSTER_OK;
}

void sh_cluster_start(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  cruster_error *err = NULL;
  int bound = 0;
  if (tp_start(cl->tp, &bound, &err) != CRUSTER_OK) {
    /* Without a listening transport no call can reach this runner: it
     * does not register (it owns nothing), and says why. */
    core_log(sh->lg, CRUSTER_LOG_ERROR, "cluster", "the transport cannot listen: %s",
             err ? cruster_error_message(err) : "failed");
    cruster_error_free(err);
    return;
  }
  core_log(sh->lg, CRUSTER_LOG_INFO, "cluster", "runner %s listening (port %d)", cl->me, bound);
  do_register(sh);
}

void sh_cluster_stop(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  cl->leaving = 1;
  uv_timer_stop(&cl->rebalance_timer);
  uv_timer_stop(&cl->refresh_timer);
  uv_timer_stop(&cl->register_timer);
  uv_timer_stop(&cl->waiters_timer);
  uv_timer_stop(&cl->held_timer);
  sh_health_stop(sh);
  let_go_all(sh);
}

typedef struct leave_ctx {
  sh_sharding *sh;
} leave_ctx;

static void leave_finish(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  cl->reg->ops->stop(cl->reg);
  tp_stop(cl->tp);
  uv_timer_stop(&cl->retry_timer);
  void (*cb)(void *) = cl->leave_cb;
  cl->leave_cb = NULL;
  if (cb) cb(cl->leave_ud);
}

static void on_left(void *ud, int status, const char *msg) {
  sh_sharding *sh = ud;
  if (status != CRUSTER_OK && status != CRUSTER_E_SHUTTING_DOWN)
    core_log(sh->lg, CRUSTER_LOG_WARN, "cluster",
             "revoking the lease failed (%s): the shards move when it expires",
             msg ? msg : cruster_status_message(status));
  else
    core_log(sh->lg, CRUSTER_LOG_INFO, "cluster", "runner %s left the cluster", sh->cl->me);
  leave_finish(sh);
}

void sh_cluster_leave(sh_sharding *sh, void (*cb)(void *ud), void *ud) {
  sh_cluster *cl = sh->cl;
  cl->leave_cb = cb;
  cl->leave_ud = ud;
  cl->leaving = 1;
  cruster_error *err = NULL;
  if (cl->reg->ops->release_all(cl->reg, on_left, sh, &err) != CRUSTER_OK) {
    cruster_error_free(err);
    leave_finish(sh);
  }
}

void sh_cluster_free(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  if (!cl) return;
  if (cl->tp) tp_free(cl->tp);
  if (cl->timers_init) sh_health_free(sh);
  for (size_t i = 0; i < cl->n_runners; i++) free(cl->runners[i]);
  free(cl->runners);
  free(cl->weights);
  free(cl->route);
  free(cl->locked);
  free(cl->let_go_at);
  free(cl->me);
  free(cl->host);
  free(cl);
  sh->cl = NULL;
}
