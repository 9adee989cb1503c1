/* The runtime: loop thread, command queue, lifecycle (new/start/stop/free). */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"
#include "registry/registry_internal.h"
#include "runtime/runtime_internal.h"
#include "storage/storage_internal.h"

/* ---- the command queue -------------------------------------------------- */

int rt_post(cruster_runtime *rt, rt_cmd *cmd) {
  cmd->next = NULL;
  uv_mutex_lock(&rt->cmd_mu);
  if (rt->cmd_closed) {
    uv_mutex_unlock(&rt->cmd_mu);
    return -1;
  }
  int was_empty = rt->cmd_head == NULL;
  if (rt->cmd_tail) rt->cmd_tail->next = cmd; else rt->cmd_head = cmd;
  rt->cmd_tail = cmd;
  /* The loop drains the whole queue per wake-up, so one wake per batch, and
   * none while it is draining: it checks the queue again (under this lock)
   * before it returns to sleep. That spares the eventfd write and libuv's
   * spin in uv__async_io when the loop wakes mid-send.
   * Sent under the lock: close_on_loop closes the handle under it too. */
  if (was_empty && !rt->cmd_draining) uv_async_send(&rt->async);
  uv_mutex_unlock(&rt->cmd_mu);
  return 0;
}

cruster_status rt_submit(cruster_runtime *rt, rt_job *job) {
  if (!rt->defer_wakes) return rt_pool_submit(rt->pool, job);
  cruster_status st = rt_pool_submit_deferred(rt->pool, job);
  if (st == CRUSTER_OK) rt->wake_pending = 1;
  return st;
}

static void drain_commands(cruster_runtime *rt) {
  int outer = rt->defer_wakes; /* close_on_loop drains from inside a drain */
  rt->defer_wakes = 1;
  for (;;) {
    uv_mutex_lock(&rt->cmd_mu);
    rt_cmd *c = rt->cmd_head;
    rt->cmd_head = rt->cmd_tail = NULL;
    rt->cmd_draining = c != NULL;
    uv_mutex_unlock(&rt->cmd_mu);
    if (!c) break;
    while (c) {
      rt_cmd *next = c->next;
      c->fn(rt, c);
      c = next;
    }
    if (rt->wake_pending) {
      rt->wake_pending = 0;
      rt_pool_wake(rt->pool);
    }
  }
  rt->defer_wakes = outer;
}

static void on_async(uv_async_t *a) { drain_commands(a->data); }

int rt_check_started(cruster_runtime *rt, cruster_error **err) {
  int state = atomic_load(&rt->state);
  if (state == RT_NEW) return core_error_set(err, CRUSTER_E_STATE, "the runtime is not started");
  if (state != RT_STARTED)
    return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
  return CRUSTER_OK;
}

int rt_on_loop(cruster_runtime *rt) {
  if (!rt->loop_started) return 0;
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &rt->loop_thread);
}

static void loop_main(void *arg) {
  cruster_runtime *rt = arg;
  uv_run(&rt->loop, UV_RUN_DEFAULT);
}

/* ---- commands that a caller waits for ----------------------------------- */

void rt_sync_done(rt_sync *s, int status) {
  uv_mutex_lock(&s->mu);
  s->status = status;
  s->done = 1;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
}

int rt_run_sync(cruster_runtime *rt, rt_sync *s, rt_cmd_fn fn, cruster_error **err) {
  uv_mutex_init(&s->mu);
  uv_cond_init(&s->cv);
  s->cmd.fn = fn;
  int st;
  if (rt_post(rt, &s->cmd) != 0) {
    cruster_error_free(s->err);
    st = core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime has stopped");
  } else {
    rt_pool_block_enter(rt->pool);
    uv_mutex_lock(&s->mu);
    while (!s->done) uv_cond_wait(&s->cv, &s->mu);
    uv_mutex_unlock(&s->mu);
    rt_pool_block_leave(rt->pool);
    st = s->status;
    if (st != CRUSTER_OK && !s->err) s->err = core_error_new(st, "%s", cruster_status_message(st));
    if (err) *err = s->err; else cruster_error_free(s->err);
  }
  s->err = NULL;
  uv_cond_destroy(&s->cv);
  uv_mutex_destroy(&s->mu);
  return st;
}

/* Runs fn on the loop with `arg` and waits until it calls rt_sync_done. */
static int run_sync(cruster_runtime *rt, rt_cmd_fn fn, void *arg, cruster_error **err) {
  rt_sync s;
  memset(&s, 0, sizeof(s));
  s.arg = arg;
  return rt_run_sync(rt, &s, fn, err);
}

/* ---- reply callbacks ----------------------------------------------------- */

typedef struct rt_cb_job {
  rt_job job;
  cruster_reply_fn fn;
  void *user;
  int status;
  size_t len;
  char *msg;
  void *data;
} rt_cb_job;

static void cb_job_run(void *arg) {
  rt_cb_job *j = arg;
  j->fn(j->user, j->status, j->status == CRUSTER_OK ? j->data : NULL,
        j->status == CRUSTER_OK ? j->len : 0, j->msg);
  free(j->data);
  free(j->msg);
  free(j);
}

void rt_invoke_reply(cruster_runtime *rt, cruster_reply_fn fn, void *user, int inline_cb,
                     int status, const void *data, size_t len, const char *msg) {
  if (!fn) return;
  if (status != CRUSTER_OK && !msg) msg = cruster_status_message(status);
  if (status == CRUSTER_OK) msg = NULL;
  if (!inline_cb) {
    rt_cb_job *j = calloc(1, sizeof(*j));
    if (j) {
      j->fn = fn;
      j->user = user;
      j->status = status;
      j->len = len;
      j->data = status == CRUSTER_OK ? core_memdup(data, len) : NULL;
      j->msg = msg ? core_strdup(msg) : NULL;
      j->job.fn = cb_job_run;
      j->job.arg = j;
      if ((status != CRUSTER_OK || j->data) && (!msg || j->msg) &&
          rt_submit(rt, &j->job) == CRUSTER_OK)
        return;
      free(j->data);
      free(j->msg);
      free(j);
    }
  }
  /* Inline: asked for, or the pool is gone / out of memory. */
  fn(user, status, status == CRUSTER_OK ? data : NULL, status == CRUSTER_OK ? len : 0, msg);
}

/* ---- metrics -------------------------------------------------------------- */

static void init_metrics(cruster_runtime *rt) {
  cruster_metrics *m = rt->metrics;
  rt_metrics *x = &rt->m;
  x->entity_types = core_metrics_get(m, CORE_GAUGE, "cluster_entity_types",
                                     "Entity types registered on this runner", NULL);
  x->shards = core_metrics_get(m, CORE_GAUGE, "cluster_shards", "Shards owned by this runner", NULL);
  x->runners = core_metrics_get(m, CORE_GAUGE, "cluster_runners", "Runners known to this runner", NULL);
  x->runners_healthy = core_metrics_get(m, CORE_GAUGE, "cluster_runners_healthy",
                                        "Known runners that are healthy", NULL);
  x->singletons = core_metrics_get(m, CORE_GAUGE, "cluster_singletons",
                                   "Singletons running on this runner", NULL);
  x->detached = core_metrics_get(m, CORE_GAUGE, "cluster_sharding_detached",
                                 "1 while this runner is detached from the cluster", NULL);
  x->calls_timeout = core_metrics_get(m, CORE_COUNTER, "cluster_calls_timed_out_total",
                                      "Calls whose deadline passed before an answer", NULL);
  x->calls_rejected = core_metrics_get(m, CORE_COUNTER, "cluster_calls_rejected_total",
                                       "Calls refused before delivery (unknown type or method, forbidden, full)", NULL);
  x->calls_inflight = core_metrics_get(m, CORE_GAUGE, "cluster_calls_in_flight",
                                       "Calls made on this runner still waiting for an answer", NULL);
  x->st_polls = core_metrics_get(m, CORE_COUNTER, "cluster_storage_polls_total",
                                 "Polls of message storage for messages to deliver", NULL);
  x->st_queued = core_metrics_get(m, CORE_COUNTER, "cluster_storage_messages_queued_total",
                                  "Persisted messages stored behind older ones of their entity (delivered by a poll)", NULL);
  x->st_saved = core_metrics_get(m, CORE_COUNTER, "cluster_storage_messages_saved_total",
                                 "Persisted messages written to message storage", NULL);
  x->st_duplicates = core_metrics_get(m, CORE_COUNTER, "cluster_storage_duplicates_total",
                                      "Persisted calls that found their request id already stored", NULL);
  x->st_replies = core_metrics_get(m, CORE_COUNTER, "cluster_storage_replies_saved_total",
                                   "Exit replies written to message storage", NULL);
  x->st_dead_letters = core_metrics_get(m, CORE_COUNTER, "cluster_storage_dead_letters_total",
                                        "Persisted messages moved to the dead letters", NULL);
  x->st_errors = core_metrics_get(m, CORE_COUNTER, "cluster_storage_errors_total",
                                  "Failed message-storage operations", NULL);
  core_metrics_get(m, CORE_COUNTER, "cluster_lease_keepalive_failures_total",
                   "Failed lease keep-alives", NULL);
  core_metrics_get(m, CORE_GAUGE, "cluster_lease_keepalive_failure_streak",
                   "Consecutive failed lease keep-alives", NULL);
}

/* ---- new ------------------------------------------------------------------ */

static void destroy_partial(cruster_runtime *rt) {
  if (rt->pool) rt_pool_free(rt->pool);
  if (rt->storage) cruster_storage_free(rt->storage);
  if (rt->registry) cruster_registry_free(rt->registry);
  if (rt->metrics) core_metrics_free(rt->metrics);
  cruster_config_free(rt->cfg);
  free(rt->heap);
  free(rt->run_buckets);
  free(rt);
}

/* The storage's callbacks up (st_host). */
static int64_t *host_inflight(void *ud, size_t *n) { return em_inflight_persisted(ud, n); }
static void host_wake(void *ud) { rt_poll_schedule(ud, 0); }

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
  if (registry) {
    cruster_storage_free(storage);
    cruster_registry_free(registry);
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cluster registries are not available in this build; pass NULL for single-node mode");
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
  core_map_init(&rt->types);
  core_map_init(&rt->instances);
  core_map_init(&rt->waiters);
  if (em_run_set_init(rt) != 0) {
    destroy_partial(rt);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  st = rt_pool_new((int)rt->cfg->worker_threads, (int)rt->cfg->worker_threads_max, rt->lg,
                   rt->metrics, &rt->pool);
  if (st != CRUSTER_OK) {
    destroy_partial(rt);
    return core_error_set(err, st, "cannot start the worker pool");
  }
  if (uv_loop_init(&rt->loop) != 0) {
    destroy_partial(rt);
    return core_error_set(err, CRUSTER_E_INTERNAL, "cannot create the event loop");
  }
  uv_mutex_init(&rt->cmd_mu);
  uv_async_init(&rt->loop, &rt->async, on_async);
  rt->async.data = rt;
  uv_timer_init(&rt->loop, &rt->deadline_timer);
  uv_timer_init(&rt->loop, &rt->reaper_timer);
  uv_timer_init(&rt->loop, &rt->poll_timer);
  uv_timer_init(&rt->loop, &rt->stop_timer);
  rt->deadline_timer.data = rt->reaper_timer.data = rt->poll_timer.data = rt->stop_timer.data = rt;
  if (rt->storage) {
    st_host host = {&rt->loop, rt->cfg, rt->lg, rt->metrics, &rt->snowflake, rt,
                    host_inflight, host_wake, NULL};
    st = rt->storage->ops->attach(rt->storage, &host, err);
    if (st != CRUSTER_OK) goto fail_loop;
  }
  if (uv_thread_create(&rt->loop_thread, loop_main, rt) != 0) {
    st = core_error_set(err, CRUSTER_E_INTERNAL, "cannot start the loop thread");
    goto fail_loop;
  }
  rt->loop_started = 1;
  atomic_store(&rt->state, RT_NEW);
  core_log(rt->lg, CRUSTER_LOG_DEBUG, "runtime", "single-node runtime created");
  *out = rt;
  return CRUSTER_OK;

fail_loop:
  if (rt->storage) rt->storage->ops->detach(rt->storage);
  uv_close((uv_handle_t *)&rt->async, NULL);
  uv_close((uv_handle_t *)&rt->deadline_timer, NULL);
  uv_close((uv_handle_t *)&rt->reaper_timer, NULL);
  uv_close((uv_handle_t *)&rt->poll_timer, NULL);
  uv_close((uv_handle_t *)&rt->stop_timer, NULL);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  uv_loop_close(&rt->loop);
  uv_mutex_destroy(&rt->cmd_mu);
  destroy_partial(rt);
  return st;
}

/* ---- start ------------------------------------------------------------------ */

static void start_on_loop(cruster_runtime *rt, rt_cmd *cmd) {
  rt_sync *s = (rt_sync *)cmd;
  /* Single-node mode: this runner owns every shard of every group. */
  core_metric_set(rt->m.shards, (double)(rt->cfg->shards_per_group * (int64_t)rt->cfg->n_shard_groups));
  core_metric_set(rt->m.runners, 1);
  core_metric_set(rt->m.runners_healthy, 1);
  core_metric_set(rt->m.detached, 0);
  int expected = RT_NEW;
  if (!atomic_compare_exchange_strong(&rt->state, &expected, RT_STARTED)) {
    /* A stop began between the caller's check and now. */
    s->err = core_error_new(CRUSTER_E_STATE, "the runtime was stopped while starting");
    rt_sync_done(s, CRUSTER_E_STATE);
    return;
  }
  if (rt->storage) rt_poll_schedule(rt, 0);
  /* Single-node: nothing listens on runner_address, so the line does not
   * name it. */
  core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", "single-node runner started (%lld shards)",
           (long long)(rt->cfg->shards_per_group * (int64_t)rt->cfg->n_shard_groups));
  rt_sync_done(s, CRUSTER_OK);
}

cruster_status cruster_runtime_start(cruster_runtime *rt, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (rt_on_loop(rt) || rt_pool_is_worker(rt->pool))
    return core_error_set(err, CRUSTER_E_STATE, "cruster_runtime_start called from the runtime's own thread");
  int expected = RT_NEW;
  if (atomic_load(&rt->state) != expected)
    return core_error_set(err, CRUSTER_E_STATE, "the runtime was already started or stopped");
  return run_sync(rt, start_on_loop, NULL, err);
}

/* ---- stop ------------------------------------------------------------------- */

typedef struct rt_stop_ctx {
  rt_sync *sync;
} rt_stop_ctx;

static void stop_flushed(void *ud) {
  cruster_runtime *rt = ud;
  uv_timer_stop(&rt->stop_timer);
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
  rt_stop_ctx *ctx = rt->stopping;
  if (!ctx) return;
  rt->stopping = NULL;
  uv_timer_stop(&rt->stop_timer);
  rt->closed = 1;
  rt_calls_fail_all(rt, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
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

void rt_stop_check(cruster_runtime *rt) {
  if (rt->stopping && rt->running == 0) stop_finish(rt);
}

static void on_stop_timeout(uv_timer_t *t) {
  cruster_runtime *rt = t->data;
  if (rt->stopping)
    core_log(rt->lg, CRUSTER_LOG_WARN, "runtime",
             "%zu handler(s) still running after entity_termination_timeout; their answers will be dropped",
             rt->running);
  stop_finish(rt);
}

static void stop_on_loop(cruster_runtime *rt, rt_cmd *cmd) {
  rt_sync *s = (rt_sync *)cmd;
  rt_stop_ctx *ctx = s->arg;
  ctx->sync = s;
  rt->stopping = ctx;
  uv_timer_stop(&rt->poll_timer);
  uv_timer_stop(&rt->reaper_timer);
  em_interrupt_all(rt);
  if (rt->running == 0) {
    stop_finish(rt);
    return;
  }
  uv_timer_start(&rt->stop_timer, on_stop_timeout, (uint64_t)rt->cfg->entity_termination_timeout, 0);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void close_on_loop(cruster_runtime *rt, rt_cmd *cmd) {
  rt_sync *s = (rt_sync *)cmd;
  uv_mutex_lock(&rt->cmd_mu);
  rt->cmd_closed = 1;
  uv_mutex_unlock(&rt->cmd_mu);
  drain_commands(rt); /* whatever arrived meanwhile sees a closed runtime */
  if (rt->storage) rt->storage->ops->detach(rt->storage);
  uv_walk(&rt->loop, close_walk, NULL);
  rt_sync_done(s, CRUSTER_OK);
}

cruster_status cruster_runtime_stop(cruster_runtime *rt, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (rt_on_loop(rt) || rt_pool_is_worker(rt->pool))
    return core_error_set(err, CRUSTER_E_STATE, "cruster_runtime_stop called from the runtime's own thread");
  int st = atomic_load(&rt->state);
  for (;;) {
    if (st == RT_STOPPING || st == RT_STOPPED) {
      /* Another thread stops it (or did): wait until the loop is gone. */
      if (st == RT_STOPPING) {
        while (atomic_load(&rt->state) != RT_STOPPED) uv_sleep(1);
      }
      return CRUSTER_OK;
    }
    if (atomic_compare_exchange_weak(&rt->state, &st, RT_STOPPING)) break;
  }
  core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", "single-node runner stopping");
  rt_stop_ctx ctx = {NULL};
  run_sync(rt, stop_on_loop, &ctx, NULL);
  /* Handlers and callbacks still queued run now; their answers are dropped. */
  rt_pool_shutdown(rt->pool);
  run_sync(rt, close_on_loop, NULL, NULL);
  uv_thread_join(&rt->loop_thread);
  rt->loop_started = 0;
  atomic_store(&rt->state, RT_STOPPED);
  core_log(rt->lg, CRUSTER_LOG_INFO, "runtime", "single-node runner stopped");
  return CRUSTER_OK;
}

void cruster_runtime_free(cruster_runtime *rt) {
  if (!rt) return;
  if (rt_on_loop(rt) || rt_pool_is_worker(rt->pool)) {
    core_log(rt->lg, CRUSTER_LOG_ERROR, "runtime",
             "cruster_runtime_free called from the runtime's own thread: ignored (leak)");
    return;
  }
  cruster_runtime_stop(rt, NULL);
  uv_loop_close(&rt->loop);
  uv_mutex_destroy(&rt->cmd_mu);
  em_free_all(rt);
  core_map_clear(&rt->waiters);
  rt->pool = (rt_pool_free(rt->pool), NULL);
  destroy_partial(rt);
}

const cruster_metrics *cruster_runtime_metrics(const cruster_runtime *rt) {
  return rt ? rt->metrics : NULL;
}

const char *cruster_runtime_runner_address(const cruster_runtime *rt) {
  return rt ? rt->runner_address : NULL;
}
