/* The runner: the public cruster_runtime and the one place that composes
 * the layers -- it makes the loop, the entity manager, the sharding object
 * and attaches the storage, wires the callbacks that go up, and runs the
 * lifecycle (new/start/stop/free). */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "registry/registry_internal.h"
#include "sharding/cluster.h"
#include "runner/runner_internal.h"

/* ---- metrics -------------------------------------------------------------- */

static void init_metrics(cruster_runtime *rt) {
  cruster_metrics *m = rt->metrics;
  rn_metrics *x = &rt->m;
  x->shards = core_metrics_get(m, CORE_GAUGE, "cluster_shards", "Shards owned by this runner", NULL);
  x->runners = core_metrics_get(m, CORE_GAUGE, "cluster_runners", "Runners known to this runner", NULL);
  x->runners_healthy = core_metrics_get(m, CORE_GAUGE, "cluster_runners_healthy",
                                        "Known runners that are healthy", NULL);
  x->singletons = core_metrics_get(m, CORE_GAUGE, "cluster_singletons",
                                   "Singletons running on this runner", NULL);
  x->detached = core_metrics_get(m, CORE_GAUGE, "cluster_sharding_detached",
                                 "1 while this runner is detached from the cluster", NULL);
  core_metrics_get(m, CORE_COUNTER, "cluster_lease_keepalive_failures_total",
                   "Failed lease keep-alives", NULL);
  core_metrics_get(m, CORE_GAUGE, "cluster_lease_keepalive_failure_streak",
                   "Consecutive failed lease keep-alives", NULL);
}

static void destroy_partial(cruster_runtime *rt) {
  if (rt->storage) cruster_storage_free(rt->storage);
  if (rt->registry) cruster_registry_free(rt->registry);
  if (rt->metrics) core_metrics_free(rt->metrics);
  cruster_config_free(rt->cfg);
  free(rt);
}

static void on_loop_close(void *ud);

/* ---- the callbacks that go up ---------------------------------------------- */

/* The storage's (st_host): the ids being handled come from the entity
 * manager; a wake-up polls. */
static int64_t *host_inflight(void *ud, size_t *n) {
  cruster_runtime *rt = ud;
  return em_inflight_persisted(&rt->em, n);
}
static void host_wake(void *ud) {
  cruster_runtime *rt = ud;
  sh_poll_schedule(&rt->sh, 0);
}

/* st_host.run_sync: fn(arg) on the loop thread (inline when there). */
typedef struct rn_run {
  rt_sync s; /* first: the loop's command */
  void (*fn)(void *arg);
  void *arg;
} rn_run;

static void run_on_loop(void *ud, rt_cmd *cmd) {
  (void)ud;
  rn_run *r = (rn_run *)cmd;
  r->fn(r->arg);
  rt_sync_done(&r->s, CRUSTER_OK);
}

static int host_run_sync(void *ud, void (*fn)(void *arg), void *arg) {
  cruster_runtime *rt = ud;
  if (rt_on_loop(&rt->loop)) {
    fn(arg);
    return CRUSTER_OK;
  }
  rn_run r;
  memset(&r, 0, sizeof(r));
  r.fn = fn;
  r.arg = arg;
  return rt_run_sync(&rt->loop, &r.s, run_on_loop, rt, NULL);
}

/* The workflow engine's (wf_engine_hooks). */
static void wf_block_enter(void *ud) {
  cruster_runtime *rt = ud;
  rt_pool_block_enter(rt->loop.pool);
}
static void wf_block_leave(void *ud) {
  cruster_runtime *rt = ud;
  rt_pool_block_leave(rt->loop.pool);
}
static int wf_on_loop(void *ud) {
  cruster_runtime *rt = ud;
  return rt_on_loop(&rt->loop);
}
static void poll_now_on_loop(void *ud, rt_cmd *cmd) {
  cruster_runtime *rt = ud;
  free(cmd);
  sh_poll_schedule(&rt->sh, 0);
}
/* Any thread: stored messages became due (a wake-up), poll now. */
static void wf_poll_now(void *ud) {
  cruster_runtime *rt = ud;
  if (rt_on_loop(&rt->loop)) {
    sh_poll_schedule(&rt->sh, 0);
    return;
  }
  rt_cmd *c = calloc(1, sizeof(*c));
  if (!c) return; /* the poll interval finds it */
  c->fn = poll_now_on_loop;
  c->ud = rt;
  if (rt_post(&rt->loop, c) != 0) free(c);
}

/* The entity manager's transactions (em_hooks.tx_*): the storage's
 * workflow side, when it has transactions. */
static int tx_begin(void *ud, void **tx) {
  cruster_runtime *rt = ud;
  *tx = NULL;
  const st_wf_ops *ops = NULL;
  void *impl = rt->storage && rt->storage->ops->wf ? rt->storage->ops->wf(rt->storage, &ops) : NULL;
  if (!impl || !ops->commit_reply) return CRUSTER_OK; /* none: runs without */
  cruster_error *err = NULL;
  int st = ops->begin(impl, (st_tx **)tx, &err);
  if (st != CRUSTER_OK)
    core_log(rt->lg, CRUSTER_LOG_WARN, "storage", "cannot open a handler's transaction: %s",
             err ? err->message : cruster_status_message(st));
  cruster_error_free(err);
  return st;
}
static void *tx_handle(void *ud, void *tx) {
  cruster_runtime *rt = ud;
  const st_wf_ops *ops = NULL;
  if (!tx) return NULL;
  rt->storage->ops->wf(rt->storage, &ops);
  return ops->tx_handle(tx);
}
static int tx_commit_reply(void *ud, void *tx, const core_env *env, const void *data, size_t len) {
  cruster_runtime *rt = ud;
  const st_wf_ops *ops = NULL;
  void *impl = rt->storage->ops->wf(rt->storage, &ops);
  cruster_error *err = NULL;
  int st = ops->commit_reply(impl, tx, env->request_id, env->keyed, -1, data, len, NULL, 0, &err);
  if (st != CRUSTER_OK)
    core_log(rt->lg, st == CRUSTER_E_ALREADY_EXISTS ? CRUSTER_LOG_INFO : CRUSTER_LOG_WARN, "storage",
             "the transaction of request %lld did not commit: %s", (long long)env->request_id,
             err ? err->message : cruster_status_message(st));
  cruster_error_free(err);
  return st;
}
static void tx_rollback(void *ud, void *tx) {
  cruster_runtime *rt = ud;
  const st_wf_ops *ops = NULL;
  void *impl = rt->storage->ops->wf(rt->storage, &ops);
  ops->rollback(impl, tx);
}

/* The entity manager's (em_hooks): room for messages that wait in storage
 * polls for them; no handler running lets a stop go on. */
static void em_room(void *ud) {
  cruster_runtime *rt = ud;
  sh_poll_schedule(&rt->sh, 0);
}
static void stop_check(void *ud);

/* Work of one shard still running here (cluster mode holds its lock until
 * there is none). */
static size_t shard_busy(void *ud, const char *group, int32_t shard) {
  cruster_runtime *rt = ud;
  return em_running_in_shard(&rt->em, group, shard) + sg_running_in_shard(rt->sg, group, shard);
}

/* The shards-owned gauge follows the ownership set. */
static void on_ownership(void *ud, const char *group, int32_t shard, int owned) {
  cruster_runtime *rt = ud;
  (void)group;
  (void)shard;
  (void)owned;
  core_metric_set(rt->m.shards, (double)sh_owned_count(&rt->sh));
}

/* ---- new ------------------------------------------------------------------ */

cruster_status cruster_runtime_new(const cruster_config *cfg, cruster_storage *storage,
                                   cruster_registry *registry, cruster_runtime **out,
                                   cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (!cfg || !out) {
    cruster_storage_free(storage);
    cruster_registry_free(registry);
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "cfg and out must not be NULL");
  }
  cruster_status st = cruster_config_validate(cfg, err);
  if (st != CRUSTER_OK) {
    cruster_storage_free(storage);
    cruster_registry_free(registry);
    return st;
  }
  cruster_runtime *rt = calloc(1, sizeof(*rt));
  if (!rt) {
    cruster_storage_free(storage);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  rt->storage = storage;
  rt->registry = registry;
  rt->cfg = cruster_config_copy(cfg);
  rt->metrics = core_metrics_new();
  if (!rt->cfg || !rt->metrics) {
    destroy_partial(rt);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  rt->lg = &rt->cfg->logger;
  /* CRUSTER_LOG=<level> in the environment overrides the configured level
   * (an operator's switch: no rebuild to see debug records). */
  const char *env_level = getenv("CRUSTER_LOG");
  if (env_level && *env_level) {
    cruster_log_level lvl;
    if (core_log_parse_level(env_level, &lvl) == 0) rt->cfg->logger.min_level = lvl;
    else
      core_log(rt->lg, CRUSTER_LOG_WARN, "runtime",
               "CRUSTER_LOG=%.32s is not a level (trace, debug, info, warn, error, off): ignored",
               env_level);
  }
  rt->runner_address = rt->cfg->runner_address;
  init_metrics(rt);
  core_snowflake_init(&rt->snowflake, 0);
  st = rt_loop_init(&rt->loop, (int)rt->cfg->worker_threads, (int)rt->cfg->worker_threads_max,
                    rt->lg, rt->metrics, err);
  if (st != CRUSTER_OK) {
    destroy_partial(rt);
    return st;
  }
  rt_loop_set_close_hook(&rt->loop, on_loop_close, rt);
  em_hooks hooks = {rt, em_room, stop_check, tx_begin, tx_handle, tx_commit_reply, tx_rollback};
  st = em_init(&rt->em, &rt->loop, rt->cfg, rt->lg, rt->metrics, rt, &hooks, err);
  if (st != CRUSTER_OK) {
    rt_loop_abandon(&rt->loop);
    em_free(&rt->em);
    destroy_partial(rt);
    return st;
  }
  int sh_ok = sh_init(&rt->sh, &rt->loop, &rt->em, rt->storage, rt->cfg, rt->lg, rt->metrics,
                      &rt->snowflake);
  uv_timer_init(&rt->loop.uv, &rt->stop_timer);
  rt->stop_timer.data = rt;
  if (sh_ok != 0 || sh_own_listen(&rt->sh, on_ownership, rt) != 0) {
    st = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
    rt_loop_abandon(&rt->loop);
    sh_free(&rt->sh);
    em_free(&rt->em);
    destroy_partial(rt);
    return st;
  }
  if (rt->registry) {
    st = sh_cluster_init(&rt->sh, rt->registry, rt->metrics, err);
    if (st != CRUSTER_OK) {
      if (rt->sh.cl && rt->sh.cl->reg) rt->registry->ops->stop(rt->registry);
      rt_loop_abandon(&rt->loop);
      sh_free(&rt->sh);
      em_free(&rt->em);
      destroy_partial(rt);
      return st;
    }
  }
  if (rt->storage) {
    st_host host = {&rt->loop.uv, rt->cfg, rt->lg, rt->metrics, &rt->snowflake, rt,
                    host_inflight, host_wake, host_run_sync, rt->registry != NULL /* cluster mode */};
    st = rt->storage->ops->attach(rt->storage, &host, err);
    if (st != CRUSTER_OK) goto fail_loop;
  }
  {
    const st_wf_ops *wops = NULL;
    void *wimpl = rt->storage && rt->storage->ops->wf ? rt->storage->ops->wf(rt->storage, &wops) : NULL;
    wf_engine_hooks wh = {rt, wf_block_enter, wf_block_leave, wf_on_loop, wf_poll_now};
    rt->wf = wf_engine_new(&wh, &rt->sh, &rt->em, wimpl ? wops : NULL, wimpl, rt->cfg, rt->lg);
    if (!rt->wf) {
      st = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      goto fail_loop;
    }
  }
  {
    sg_hooks sgh = {rt, stop_check};
    const st_wf_ops *wops = NULL;
    void *wimpl = rt->storage && rt->storage->ops->wf ? rt->storage->ops->wf(rt->storage, &wops) : NULL;
    rt->sg = sg_new(&rt->loop, &rt->sh, rt->cfg, rt->lg, rt->metrics, &sgh, rt, wimpl ? wops : NULL,
                    wimpl);
    if (!rt->sg) {
      st = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      goto fail_loop;
    }
    rt->sh.shard_busy = shard_busy;
    rt->sh.shard_busy_ud = rt;
  }
  st = rt_loop_run(&rt->loop, err);
  if (st != CRUSTER_OK) goto fail_loop;
  core_log(rt->lg, CRUSTER_LOG_DEBUG, "runtime", "single-node runtime created");
  *out = rt;
  return CRUSTER_OK;

fail_loop:
  if (rt->storage) rt->storage->ops->detach(rt->storage);
  /* The registry closes its handles before the loop closes the rest. */
  if (rt->sh.cl) rt->registry->ops->stop(rt->registry);
  rt_loop_abandon(&rt->loop);
  sg_free(rt->sg);
  wf_engine_free(rt->wf);
  sh_free(&rt->sh);
  em_free(&rt->em);
  destroy_partial(rt);
  return st;
}

/* ---- start ------------------------------------------------------------------ */

static void start_on_loop(void *ud, rt_cmd *cmd) {
  cruster_runtime *rt = ud;
  rt_sync *s = (rt_sync *)cmd;
  if (!rt->registry) {
    /* Single-node mode: this runner owns every shard of every group. */
    core_metric_set(rt->m.runners, 1);
    core_metric_set(rt->m.runners_healthy, 1);
    core_metric_set(rt->m.detached, 0);
  }
  int expected = RT_NEW;
  if (!atomic_compare_exchange_strong(&rt->loop.state, &expected, RT_STARTED)) {
    /* A stop began between the caller's check and now. */
    s->err = core_error_new(CRUSTER_E_STATE, "the runtime was stopped while starting");
    rt_sync_done(s, CRUSTER_E_STATE);
    return;
  }
  sh_start(&rt->sh);
  if (rt->registry)
    core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", "runner %s started (cluster mode)",
             rt->cfg->runner_address);
  else
    /* Single-node: nothing listens on runner_address, so the line does not
     * name it. */
    core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", "single-node runner started (%lld shards)",
             (long long)(rt->cfg->shards_per_group * (int64_t)rt->cfg->n_shard_groups));
  rt_sync_done(s, CRUSTER_OK);
}

cruster_status cruster_runtime_start(cruster_runtime *rt, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (rt_on_own_thread(&rt->loop))
    return core_error_set(err, CRUSTER_E_STATE, "cruster_runtime_start called from the runtime's own thread");
  int expected = RT_NEW;
  if (atomic_load(&rt->loop.state) != expected)
    return core_error_set(err, CRUSTER_E_STATE, "the runtime was already started or stopped");
  rt_sync s;
  memset(&s, 0, sizeof(s));
  return rt_run_sync(&rt->loop, &s, start_on_loop, rt, err);
}

/* ---- stop ------------------------------------------------------------------- */

typedef struct rn_stop_ctx {
  rt_sync *sync;
} rn_stop_ctx;

static void stop_left(void *ud) {
  cruster_runtime *rt = ud;
  rt_sync *s = rt->stop_sync;
  rt->stop_sync = NULL;
  if (s) rt_sync_done(s, CRUSTER_OK);
}

static void stop_flushed(void *ud) {
  cruster_runtime *rt = ud;
  uv_timer_stop(&rt->stop_timer);
  if (rt->sh.cl && rt->stop_sync) {
    /* Last: revoke the lease, so the others take the shards at once. */
    sh_cluster_leave(&rt->sh, stop_left, rt);
    return;
  }
  rt_sync *s = rt->stop_sync;
  rt->stop_sync = NULL;
  if (s) rt_sync_done(s, CRUSTER_OK);
}

static void on_flush_timeout(uv_timer_t *t) {
  cruster_runtime *rt = t->data;
  core_log(rt->lg, CRUSTER_LOG_WARN, "storage",
           "storage writes still pending after entity_termination_timeout; the messages they "
           "concern will be delivered again after a restart");
  /* Fail what is still queued, so that a handler blocked on storage (say in
   * cruster_poll_reply while the server is unreachable) returns and the
   * worker pool can be joined. */
  rt->storage->ops->detach(rt->storage);
  stop_flushed(rt);
}

static void stop_finish(cruster_runtime *rt) {
  rn_stop_ctx *ctx = rt->stopping;
  if (!ctx) return;
  rt->stopping = NULL;
  uv_timer_stop(&rt->stop_timer);
  em_close(&rt->em);
  sh_calls_fail_all(&rt->sh, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
  rt->stop_sync = ctx->sync;
  if (!rt->storage) {
    stop_flushed(rt);
    return;
  }
  /* Answers already given may still be on their way to storage: let them
   * land (bounded), so a graceful stop does not make them run again. */
  uv_timer_start(&rt->stop_timer, on_flush_timeout, (uint64_t)rt->cfg->entity_termination_timeout, 0);
  rt->storage->ops->flush(rt->storage, stop_flushed, rt);
}

/* No handler and no singleton function runs any more (em_hooks.idle,
 * sg_hooks.idle): a stop waiting for them goes on. */
static void stop_check(void *ud) {
  cruster_runtime *rt = ud;
  if (rt->stopping && rt->em.running == 0 && sg_running(rt->sg) == 0) stop_finish(rt);
}

static void on_stop_timeout(uv_timer_t *t) {
  cruster_runtime *rt = t->data;
  if (rt->stopping && rt->em.running > 0)
    core_log(rt->lg, CRUSTER_LOG_WARN, "runtime",
             "%zu handler(s) still running after entity_termination_timeout; their answers will be dropped",
             rt->em.running);
  /* Singleton functions still running are waited for when the pool drains
   * (rt_loop_shutdown): a thread cannot be stopped. */
  if (rt->stopping) sg_report_running(rt->sg);
  stop_finish(rt);
}

static void stop_on_loop(void *ud, rt_cmd *cmd) {
  cruster_runtime *rt = ud;
  rt_sync *s = (rt_sync *)cmd;
  rn_stop_ctx *ctx = s->arg;
  ctx->sync = s;
  rt->stopping = ctx;
  sh_stop(&rt->sh); /* every shard lost: singletons are cancelled */
  em_interrupt_all(&rt->em);
  if (rt->em.running == 0 && sg_running(rt->sg) == 0) {
    stop_finish(rt);
    return;
  }
  uv_timer_start(&rt->stop_timer, on_stop_timeout, (uint64_t)rt->cfg->entity_termination_timeout, 0);
}

/* The loop closes (rt_loop_shutdown): the storage lets go of its handles. */
static void on_loop_close(void *ud) {
  cruster_runtime *rt = ud;
  if (rt->sh.cl) {
    /* (After a graceful stop both are stopped already: idempotent.) */
    rt->registry->ops->stop(rt->registry);
    tp_stop(rt->sh.cl->tp);
  }
  if (rt->storage) rt->storage->ops->detach(rt->storage);
}

cruster_status cruster_runtime_stop(cruster_runtime *rt, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (rt_on_own_thread(&rt->loop))
    return core_error_set(err, CRUSTER_E_STATE, "cruster_runtime_stop called from the runtime's own thread");
  int st = atomic_load(&rt->loop.state);
  for (;;) {
    if (st == RT_STOPPING || st == RT_STOPPED) {
      /* Another thread stops it (or did): wait until the loop is gone. */
      if (st == RT_STOPPING) {
        while (atomic_load(&rt->loop.state) != RT_STOPPED) uv_sleep(1);
      }
      return CRUSTER_OK;
    }
    if (atomic_compare_exchange_weak(&rt->loop.state, &st, RT_STOPPING)) break;
  }
  core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", rt->registry ? "runner stopping" : "single-node runner stopping");
  rn_stop_ctx ctx = {NULL};
  rt_sync s;
  memset(&s, 0, sizeof(s));
  s.arg = &ctx;
  rt_run_sync(&rt->loop, &s, stop_on_loop, rt, NULL);
  rt_loop_shutdown(&rt->loop);
  atomic_store(&rt->loop.state, RT_STOPPED);
  core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", rt->registry ? "runner stopped" : "single-node runner stopped");
  return CRUSTER_OK;
}

void cruster_runtime_free(cruster_runtime *rt) {
  if (!rt) return;
  if (rt_on_own_thread(&rt->loop)) {
    core_log(rt->lg, CRUSTER_LOG_ERROR, "runtime",
             "cruster_runtime_free called from the runtime's own thread: ignored (leak)");
    return;
  }
  cruster_runtime_stop(rt, NULL);
  em_free(&rt->em);
  sh_free(&rt->sh);
  wf_engine_free(rt->wf); /* after the entities: their handlers used its types */
  rt_loop_done(&rt->loop);
  sg_free(rt->sg);
  destroy_partial(rt);
}

const cruster_metrics *cruster_runtime_metrics(const cruster_runtime *rt) {
  return rt ? rt->metrics : NULL;
}

const char *cruster_runtime_runner_address(const cruster_runtime *rt) {
  return rt ? rt->runner_address : NULL;
}
