/* Singletons (see singleton_internal.h and cruster/singleton.h).
 *
 * Each registered singleton is an sg_one in the registry's list (loop-owned,
 * never removed before sg_free). A run is a cruster_singleton_ctx: a pool
 * job that calls the function and then posts itself back to the loop. On the
 * loop:
 *   gained(shard)  -> try_start each singleton of that shard
 *   lost(shard)    -> cancel its run (flag + condition), drop a due restart
 *   run returned   -> count it; while still owned, schedule the next start
 *                     (base after a success, base * 2^min(n-1,10) after the
 *                     n-th consecutive failure) on the registry's one timer.
 * Times are the loop's monotonic clock (uv_now after uv_update_time), so a
 * restart is never earlier than the backoff after the return. */
#include <stdatomic.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "singleton/singleton_internal.h"

typedef struct sg_one {
  char *name;
  char *group;
  int32_t shard;
  cruster_singleton_fn fn;
  void *user;
  struct cruster_singleton_ctx *run; /* the run on a worker, NULL when none */
  int pending;                       /* a start waits for due_ms */
  uint64_t due_ms;
  uint64_t ended_ms;  /* when the last run returned (loop clock) */
  int64_t failures;   /* consecutive */
  int ran;            /* has run once: the next start is a restart */
  /* A same-named registration waiting for `run` (cancelled) to return:
   * applied then (see replace()). Never runs before that. */
  struct sg_one *repl;
  struct sg_one *next;
} sg_one;

struct cruster_singleton_ctx {
  rt_job job;
  rt_cmd done; /* posted back to the loop when the function returned */
  sg_registry *r;
  sg_one *s;
  int64_t failures;
  int result;
  _Atomic int managed;
  _Atomic int cancelled;
  uv_mutex_t mu;
  uv_cond_t cv;
};

struct sg_registry {
  rt_loop *loop;
  sh_sharding *sh;
  const cruster_config *cfg;
  const core_logger *lg;
  sg_hooks hooks;
  void *rt_handle;
  uv_timer_t timer;
  int timer_inited;
  sg_one *list;
  size_t count, running;
  core_metric *m_running, *m_runs, *m_restarts, *m_failures;
  const st_wf_ops *wops;
  void *wimpl;
  uv_mutex_t keep_mu; /* guards kept */
  struct sg_kept *kept;
};

typedef struct sg_kept {
  void *p;
  void (*free_fn)(void *p);
  struct sg_kept *next;
} sg_kept;

#define SG_COMPONENT "singleton"

/* ---- starting and stopping runs (loop thread) ------------------------------ */

static uint64_t loop_now(sg_registry *r) {
  uv_update_time(&r->loop->uv);
  return uv_now(&r->loop->uv);
}

static uint64_t backoff_ms(const sg_registry *r, int64_t failures) {
  uint64_t base = (uint64_t)(r->cfg->singleton_crash_backoff_base > 0 ? r->cfg->singleton_crash_backoff_base : 1);
  if (failures <= 0) return base;
  int64_t e = failures - 1 > 10 ? 10 : failures - 1;
  uint64_t mul = (uint64_t)1 << e;
  return base > UINT64_MAX / mul ? UINT64_MAX : base * mul;
}

static void arm_timer(sg_registry *r);

static void run_job(void *arg);

static int should_run(sg_registry *r, const sg_one *s) {
  return atomic_load(&r->loop->state) == RT_STARTED && sh_owns(r->sh, s->group, s->shard);
}

static void spawn(sg_registry *r, sg_one *s) {
  struct cruster_singleton_ctx *c = calloc(1, sizeof(*c));
  if (!c) goto retry;
  if (uv_mutex_init(&c->mu) != 0) {
    free(c);
    goto retry;
  }
  if (uv_cond_init(&c->cv) != 0) {
    uv_mutex_destroy(&c->mu);
    free(c);
    goto retry;
  }
  c->r = r;
  c->s = s;
  c->failures = s->failures;
  c->job.fn = run_job;
  c->job.arg = c;
  s->run = c;
  /* Counted before the function can run (and return): a reader that saw it
   * return sees it counted. */
  r->running++;
  core_metric_set(r->m_running, (double)r->running);
  core_metric_add(r->m_runs, 1);
  if (s->ran) core_metric_add(r->m_restarts, 1);
  s->ran = 1;
  if (rt_submit(r->loop, &c->job) != CRUSTER_OK) {
    s->run = NULL;
    r->running--;
    core_metric_set(r->m_running, (double)r->running);
    uv_cond_destroy(&c->cv);
    uv_mutex_destroy(&c->mu);
    free(c);
    return; /* the pool is gone: the runtime stops (never while it runs) */
  }
  core_log(r->lg, CRUSTER_LOG_DEBUG, SG_COMPONENT, "singleton \"%s\" started (shard %s/%d)",
           s->name, s->group, (int)s->shard);
  return;
retry:
  core_log(r->lg, CRUSTER_LOG_ERROR, SG_COMPONENT,
           "out of memory starting singleton \"%s\"; trying again later", s->name);
  s->pending = 1;
  s->due_ms = loop_now(r) + backoff_ms(r, 1);
  arm_timer(r);
}

/* Starts `s` now, or when its backoff has passed, if it should run. */
static void try_start(sg_registry *r, sg_one *s) {
  if (s->run || !should_run(r, s)) return;
  uint64_t now = loop_now(r);
  if (s->ran) {
    uint64_t wait = backoff_ms(r, s->failures);
    uint64_t due = s->ended_ms > UINT64_MAX - wait ? UINT64_MAX : s->ended_ms + wait;
    if (due > now) {
      s->pending = 1;
      s->due_ms = due;
      arm_timer(r);
      return;
    }
  }
  s->pending = 0;
  spawn(r, s);
}

static void cancel_run(struct cruster_singleton_ctx *c) {
  uv_mutex_lock(&c->mu);
  atomic_store(&c->cancelled, 1);
  uv_cond_broadcast(&c->cv);
  uv_mutex_unlock(&c->mu);
}

static void on_timer(uv_timer_t *t) {
  sg_registry *r = t->data;
  uint64_t now = loop_now(r);
  for (sg_one *s = r->list; s; s = s->next) {
    if (s->pending && s->due_ms <= now) {
      s->pending = 0;
      try_start(r, s);
    }
  }
  arm_timer(r);
}

static void arm_timer(sg_registry *r) {
  if (!r->timer_inited || uv_is_closing((uv_handle_t *)&r->timer)) return;
  uint64_t earliest = UINT64_MAX;
  for (sg_one *s = r->list; s; s = s->next)
    if (s->pending && s->due_ms < earliest) earliest = s->due_ms;
  uv_timer_stop(&r->timer);
  if (earliest == UINT64_MAX) return;
  uint64_t now = loop_now(r);
  uv_timer_start(&r->timer, on_timer, earliest > now ? earliest - now : 0, 0);
}

/* sh_own_fn: the ownership of (group, shard) changed. */
static void on_own(void *ud, const char *group, int32_t shard, int owned) {
  sg_registry *r = ud;
  for (sg_one *s = r->list; s; s = s->next) {
    if ((shard != -1 && s->shard != shard) || strcmp(s->group, group) != 0) continue;
    if (owned) {
      try_start(r, s);
    } else {
      s->pending = 0;
      if (s->run) {
        core_log(r->lg, CRUSTER_LOG_DEBUG, SG_COMPONENT, "singleton \"%s\" cancelled (shard %s/%d lost)",
                 s->name, s->group, (int)s->shard);
        cancel_run(s->run);
      }
    }
  }
  arm_timer(r);
}

static void one_free(sg_one *s);

/* Loop: `s` takes the function, options and shard of the registration `n`
 * (freed) and starts afresh (no failures, not a restart). Only while `s`
 * has no run: its shard is the one a running function counts against. */
static void replace(sg_one *s, sg_one *n) {
  char *g = s->group;
  s->group = n->group;
  n->group = g;
  s->shard = n->shard;
  s->fn = n->fn;
  s->user = n->user;
  s->failures = 0;
  s->ran = 0;
  s->pending = 0;
  one_free(n);
}

/* Loop: the function of run `c` returned. */
static void run_done(void *ud, rt_cmd *cmd) {
  (void)ud;
  struct cruster_singleton_ctx *c = (struct cruster_singleton_ctx *)((char *)cmd - offsetof(struct cruster_singleton_ctx, done));
  sg_registry *r = c->r;
  sg_one *s = c->s;
  int cancelled = atomic_load(&c->cancelled);
  s->run = NULL;
  s->ended_ms = loop_now(r);
  if (c->result == CRUSTER_OK || cancelled) {
    s->failures = 0;
  } else if (s->repl) {
    s->failures++; /* counted; its replacement starts anyway */
    core_metric_add(r->m_failures, 1);
  } else {
    s->failures++;
    core_metric_add(r->m_failures, 1);
    core_log(r->lg, CRUSTER_LOG_WARN, SG_COMPONENT,
             "singleton \"%s\" failed (%d, %" PRId64 " in a row); restarting after %llu ms", s->name,
             c->result, s->failures, (unsigned long long)backoff_ms(r, s->failures));
  }
  uv_cond_destroy(&c->cv);
  uv_mutex_destroy(&c->mu);
  free(c);
  r->running--;
  core_metric_set(r->m_running, (double)r->running);
  if (s->repl) { /* the replaced function has returned: its replacement goes on */
    sg_one *n = s->repl;
    s->repl = NULL;
    replace(s, n);
    core_log(r->lg, CRUSTER_LOG_DEBUG, SG_COMPONENT,
             "singleton \"%s\": the replaced function returned; its replacement takes over", s->name);
  }
  try_start(r, s);
  arm_timer(r);
  if (r->running == 0 && r->hooks.idle) r->hooks.idle(r->hooks.ud);
}

/* A worker: runs the function, then hands the run back to the loop. The
 * worker counts as blocked while it runs, so the pool compensates. */
static void run_job(void *arg) {
  struct cruster_singleton_ctx *c = arg;
  sg_registry *r = c->r;
  rt_pool_block_enter(r->loop->pool);
  c->result = c->s->fn(c->s->user, c);
  rt_pool_block_leave(r->loop->pool);
  c->done.fn = run_done;
  c->done.ud = r;
  if (rt_post(r->loop, &c->done) != 0) {
    /* The loop is gone (it closes only after the pool drained, so this does
     * not happen): free the run, nothing else can be updated. */
    uv_cond_destroy(&c->cv);
    uv_mutex_destroy(&c->mu);
    free(c);
  }
}

/* ---- the context (the function's thread) ----------------------------------- */

int cruster_singleton_cancelled(cruster_singleton_ctx *ctx) {
  if (!ctx) return 1;
  atomic_store(&ctx->managed, 1);
  return atomic_load(&ctx->cancelled);
}

int cruster_singleton_wait(cruster_singleton_ctx *ctx, int64_t timeout_ms) {
  if (!ctx) return 1;
  atomic_store(&ctx->managed, 1);
  if (timeout_ms < 0) timeout_ms = 0;
  if (timeout_ms > 86400000) timeout_ms = 86400000;
  uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
  uv_mutex_lock(&ctx->mu);
  while (!atomic_load(&ctx->cancelled)) {
    uint64_t now = uv_hrtime();
    if (now >= deadline) break;
    uv_cond_timedwait(&ctx->cv, &ctx->mu, deadline - now);
  }
  int c = atomic_load(&ctx->cancelled);
  uv_mutex_unlock(&ctx->mu);
  return c;
}

const char *cruster_singleton_name(const cruster_singleton_ctx *ctx) {
  return ctx ? ctx->s->name : NULL;
}

int64_t cruster_singleton_failures(const cruster_singleton_ctx *ctx) {
  return ctx ? ctx->failures : 0;
}

cruster_runtime *cruster_singleton_runtime(const cruster_singleton_ctx *ctx) {
  return ctx ? (cruster_runtime *)ctx->r->rt_handle : NULL;
}

/* ---- registration ----------------------------------------------------------- */

typedef struct sg_reg {
  rt_sync s; /* first */
  sg_one *one;
} sg_reg;

static void register_on_loop(void *ud, rt_cmd *cmd) {
  sg_registry *r = ud;
  sg_reg *g = (sg_reg *)cmd;
  int state = atomic_load(&r->loop->state);
  if (state == RT_STOPPING || state == RT_STOPPED) {
    g->s.err = core_error_new(CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
    rt_sync_done(&g->s, CRUSTER_E_SHUTTING_DOWN);
    return;
  }
  for (sg_one *s = r->list; s; s = s->next) {
    if (strcmp(s->name, g->one->name) != 0) continue;
    /* Same name: the new registration replaces this one (singleton.h). */
    sg_one *n = g->one;
    g->one = NULL;
    s->pending = 0; /* no restart of the replaced function */
    if (s->run) {
      /* Cancel the running function and start the new one only when it has
       * returned (run_done): the two never run at once. A registration that
       * was itself waiting is superseded without ever running. */
      if (s->repl) one_free(s->repl);
      s->repl = n;
      core_log(r->lg, CRUSTER_LOG_INFO, SG_COMPONENT,
               "singleton \"%s\" replaced by a new registration: cancelling the running function "
               "(the new one starts when it has returned)",
               s->name);
      cancel_run(s->run);
    } else {
      replace(s, n);
      core_log(r->lg, CRUSTER_LOG_INFO, SG_COMPONENT, "singleton \"%s\" replaced by a new registration",
               s->name);
      try_start(r, s);
    }
    arm_timer(r);
    rt_sync_done(&g->s, CRUSTER_OK);
    return;
  }
  sg_one **tail = &r->list;
  while (*tail) tail = &(*tail)->next;
  *tail = g->one;
  r->count++;
  /* Its worker: the pool may grow by one more (see singleton.h). */
  rt_pool_add_max(r->loop->pool, 1);
  sg_one *s = g->one;
  g->one = NULL;
  try_start(r, s);
  rt_sync_done(&g->s, CRUSTER_OK);
}

static void one_free(sg_one *s) {
  if (!s) return;
  one_free(s->repl);
  free(s->name);
  free(s->group);
  free(s);
}

cruster_status sg_register(sg_registry *r, const char *name, cruster_singleton_fn fn, void *user,
                           const cruster_singleton_opts *opts, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!r) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  cruster_status st = core_check_name("singleton name", name, err);
  if (st != CRUSTER_OK) return st;
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "fn must not be NULL");
  cruster_singleton_opts o = CRUSTER_SINGLETON_OPTS_INIT;
  if (opts) {
    st = core_opts_read("cruster_singleton_opts", "CRUSTER_SINGLETON_OPTS_INIT", opts, opts->size,
                        CRUSTER_SINGLETON_OPTS_SIZE_V1, sizeof(o), &o, err);
    if (st != CRUSTER_OK) return st;
  }
  const char *group = o.group ? o.group : "default";
  st = core_check_name("shard group", group, err);
  if (st != CRUSTER_OK) return st;
  if (!core_config_has_group(r->cfg, group))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "singleton \"%s\": shard group \"%s\" is not in shard_groups", name,
                          group);
  if (rt_on_own_thread(r->loop) && atomic_load(&r->loop->state) >= RT_STOPPING)
    return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
  sg_one *s = calloc(1, sizeof(*s));
  if (!s) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  s->name = core_strdup(name);
  s->group = core_strdup(group);
  if (!s->name || !s->group) {
    one_free(s);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  s->shard = cruster_shard_for(name, strlen(name), (int32_t)r->cfg->shards_per_group);
  s->fn = fn;
  s->user = user;
  sg_reg g;
  memset(&g, 0, sizeof(g));
  g.one = s;
  if (rt_on_loop(r->loop)) { /* a registration from a callback on the loop thread */
    uv_mutex_init(&g.s.mu);
    uv_cond_init(&g.s.cv);
    register_on_loop(r, &g.s.cmd);
    uv_cond_destroy(&g.s.cv);
    uv_mutex_destroy(&g.s.mu);
    st = g.s.status;
    if (err && g.s.err) *err = g.s.err;
    else cruster_error_free(g.s.err);
  } else {
    st = rt_run_sync(r->loop, &g.s, register_on_loop, r, err);
  }
  one_free(g.one); /* refused (or never run): still ours */
  return st;
}

/* ---- the registry ------------------------------------------------------------- */

sg_registry *sg_new(rt_loop *loop, sh_sharding *sh, const cruster_config *cfg,
                    const core_logger *lg, cruster_metrics *metrics, const sg_hooks *hooks,
                    void *rt_handle, const st_wf_ops *wops, void *wimpl) {
  sg_registry *r = calloc(1, sizeof(*r));
  if (!r) return NULL;
  if (uv_mutex_init(&r->keep_mu) != 0) {
    free(r);
    return NULL;
  }
  r->wops = wops;
  r->wimpl = wimpl;
  r->loop = loop;
  r->sh = sh;
  r->cfg = cfg;
  r->lg = lg;
  if (hooks) r->hooks = *hooks;
  r->rt_handle = rt_handle;
  r->m_running = core_metrics_get(metrics, CORE_GAUGE, "cluster_singletons",
                                  "Singletons running on this runner", NULL);
  r->m_runs = core_metrics_get(metrics, CORE_COUNTER, "cluster_singleton_runs_total",
                               "Singleton functions started on this runner", NULL);
  r->m_restarts = core_metrics_get(metrics, CORE_COUNTER, "cluster_singleton_restarts_total",
                                   "Singleton functions started again after a return", NULL);
  r->m_failures = core_metrics_get(metrics, CORE_COUNTER, "cluster_singleton_failures_total",
                                   "Singleton functions that returned a failure", NULL);
  if (sh_own_listen(sh, on_own, r) != 0) {
    uv_mutex_destroy(&r->keep_mu);
    free(r);
    return NULL;
  }
  uv_timer_init(&loop->uv, &r->timer);
  r->timer.data = r;
  r->timer_inited = 1;
  return r;
}

void sg_free(sg_registry *r) {
  if (!r) return;
  sg_one *s = r->list;
  while (s) {
    sg_one *next = s->next;
    one_free(s);
    s = next;
  }
  sg_kept *k = r->kept;
  while (k) {
    sg_kept *next = k->next;
    k->free_fn(k->p);
    free(k);
    k = next;
  }
  uv_mutex_destroy(&r->keep_mu);
  free(r);
}

int sg_keep(sg_registry *r, void *p, void (*free_fn)(void *p)) {
  sg_kept *k = calloc(1, sizeof(*k));
  if (!k) return -1;
  k->p = p;
  k->free_fn = free_fn;
  uv_mutex_lock(&r->keep_mu);
  k->next = r->kept;
  r->kept = k;
  uv_mutex_unlock(&r->keep_mu);
  return 0;
}

const st_wf_ops *sg_wf(const sg_registry *r, void **impl) {
  *impl = r->wimpl;
  return r->wimpl ? r->wops : NULL;
}
const cruster_config *sg_cfg(const sg_registry *r) { return r->cfg; }
const core_logger *sg_lg(const sg_registry *r) { return r->lg; }

size_t sg_running(const sg_registry *r) { return r ? r->running : 0; }

size_t sg_running_in_shard(const sg_registry *r, const char *group, int32_t shard) {
  size_t n = 0;
  for (const sg_one *s = r ? r->list : NULL; s; s = s->next)
    if (s->run && s->shard == shard && strcmp(s->group, group) == 0) n++;
  return n;
}

void sg_report_running(const sg_registry *r) {
  if (!r) return;
  for (const sg_one *s = r->list; s; s = s->next) {
    if (!s->run) continue;
    core_log(r->lg, CRUSTER_LOG_ERROR, SG_COMPONENT,
             "singleton \"%s\" (%s) has not returned within entity_termination_timeout of its "
             "cancellation; the stop waits for it (a thread cannot be stopped)",
             s->name, atomic_load(&s->run->managed) ? "managed" : "unmanaged");
  }
}
