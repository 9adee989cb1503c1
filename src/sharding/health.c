/* Runner health (behaviour.md §3.7, docs/architecture.md "Runner health").
 *
 * - Progress: every runner watches its own worker pool. It is *stalled*
 *   when jobs have waited for a worker for runner_stall_threshold with no
 *   worker taking any meanwhile (rt_pool_progress): every worker hangs
 *   while work waits. A busy pool that keeps taking jobs is not stalled,
 *   however deep its queue; an idle one never is. A timer keeps the gauge
 *   cluster_runner_stalled and logs a WARN on the stalled runner itself;
 *   every Ping is answered with the state of that moment (PingReply).
 * - The health loop (the internal singleton "cluster/RunnerHealth" of group
 *   "default"): every runner_poll_interval the runner that owns that shard
 *   reads the runner list, pings every other runner (at most 10 at once,
 *   each within runner_ping_timeout; itself it judges locally), and writes
 *   the changes with set_runner_health: healthy = answered and not stalled.
 *   It never marks a runner unhealthy if that would leave no healthy runner
 *   (counting this pass's decisions), and when no runner is fit it keeps
 *   itself healthy. Unhealthy runners keep their key and locks; the
 *   rendezvous leaves them out, so their shards move once their locks go
 *   (a stalled runner lets go of them itself).
 * - It is a loop timer, not a pool job, so it runs on a runner whose
 *   workers all hang. Every wait is bounded (the registry's request
 *   timeout, the ping timeout); a pass in flight is cancelled when the
 *   shard is lost or the runner stops (its results are dropped), and the
 *   shard's lock is kept while its writes are out. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "sharding/cluster.h"

#define SH_HEALTH_NAME "cluster/RunnerHealth"
#define SH_HEALTH_GROUP "default"
#define SH_HEALTH_CONCURRENCY 10

typedef struct sh_health_pass {
  sh_sharding *sh;
  int cancelled;
  size_t n;
  char **addrs;
  sh_health_in *in;
  int *out;
  size_t next_ping, pinging; /* pings started / in flight */
  size_t writing;            /* set_runner_health in flight */
  int listing;               /* get_runners in flight */
  int pumping;               /* in pings_pump (a ping answered inline, out of memory) */
} sh_health_pass;

typedef struct ping_ctx {
  sh_health_pass *p;
  size_t i;
} ping_ctx;

/* ---- the decision (pure) ------------------------------------------------- */

size_t sh_health_decide(const sh_health_in *in, size_t n, int *out, size_t *kept) {
  size_t healthy = 0, writes = 0, fit = 0, self = SIZE_MAX;
  if (kept) *kept = 0;
  for (size_t i = 0; i < n; i++) {
    out[i] = -1;
    if (in[i].healthy) healthy++;
    if (in[i].alive && !in[i].stalled) fit++;
    if (in[i].self && self == SIZE_MAX) self = i;
  }
  /* No runner fit: this one stays (or becomes) healthy, whatever it is. */
  if (fit == 0 && self != SIZE_MAX && !in[self].healthy) {
    out[self] = 1;
    healthy++;
    writes++;
  }
  for (size_t i = 0; i < n; i++) {
    if (in[i].healthy || !in[i].alive || in[i].stalled) continue;
    out[i] = 1;
    healthy++;
    writes++;
  }
  for (size_t i = 0; i < n; i++) {
    if (!in[i].healthy || (in[i].alive && !in[i].stalled)) continue;
    if ((fit == 0 && i == self) || healthy <= 1) {
      if (kept) (*kept)++;
      continue;
    }
    out[i] = 0;
    healthy--;
    writes++;
  }
  return writes;
}

/* ---- progress ------------------------------------------------------------- */

/* This runner's progress now; updates the gauge and logs a change. */
static void progress_eval(sh_sharding *sh, tp_health *h) {
  sh_cluster *cl = sh->cl;
  int64_t queued = 0, waiting = 0;
  rt_pool_progress(sh->loop->pool, &queued, &waiting);
  int64_t thr = sh->cfg->runner_stall_threshold;
  int stalled = thr > 0 && queued > 0 && waiting >= thr;
  if (stalled != cl->stalled) {
    cl->stalled = stalled;
    core_metric_set(cl->m_stalled, stalled);
    if (stalled) {
      core_metric_add(cl->m_stalls, 1);
      core_log(sh->lg, CRUSTER_LOG_WARN, "health",
               "runner %s is stalled: %lld job(s) have waited %lld ms for a worker and no worker "
               "took any (runner_stall_threshold %lld ms); the health check reports it unhealthy",
               cl->me, (long long)queued, (long long)waiting, (long long)thr);
    } else {
      core_log(sh->lg, CRUSTER_LOG_INFO, "health", "runner %s makes progress again", cl->me);
    }
  }
  if (h) {
    h->stalled = stalled;
    h->waiting_ms = waiting;
    h->queued = queued;
  }
}

static void progress_fire(uv_timer_t *t) { progress_eval(t->data, NULL); }

void sh_health_on_ping(void *ud, tp_health *out) {
  sh_sharding *sh = ud;
  if (sh->cl) progress_eval(sh, out);
}

/* ---- the health loop ------------------------------------------------------- */

static int health_mine(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  return cl->health_shard >= 0 && cl->registered && !cl->detached && !cl->leaving &&
         !sh->stopping && sh_owns(sh, SH_HEALTH_GROUP, cl->health_shard);
}

static void pass_free(sh_health_pass *p) {
  for (size_t i = 0; i < p->n; i++) free(p->addrs[i]);
  free(p->addrs);
  free(p->in);
  free(p->out);
  free(p);
}

/* Frees the pass once nothing of it is out. */
static void pass_maybe_end(sh_health_pass *p) {
  if (p->listing || p->pinging || p->writing) return;
  if (p->next_ping < p->n && !p->cancelled) return; /* more pings to start */
  sh_sharding *sh = p->sh;
  if (sh->cl && sh->cl->pass == p) sh->cl->pass = NULL;
  pass_free(p);
}

static void on_written(void *ud, int status, const char *msg) {
  ping_ctx *x = ud;
  sh_health_pass *p = x->p;
  sh_sharding *sh = p->sh;
  sh_cluster *cl = sh->cl;
  size_t i = x->i;
  free(x);
  p->writing--;
  if (status == CRUSTER_OK) {
    core_metric_add(p->out[i] ? cl->m_marked_healthy : cl->m_marked_unhealthy, 1);
    if (p->out[i])
      core_log(sh->lg, CRUSTER_LOG_INFO, "health", "runner %s marked healthy", p->addrs[i]);
    else
      core_log(sh->lg, CRUSTER_LOG_WARN, "health", "runner %s marked unhealthy (%s)", p->addrs[i],
               !p->in[i].alive ? "no answer to ping" : "stalled: its work waits, no worker takes any");
  } else if (status != CRUSTER_E_SHUTTING_DOWN) {
    core_log(sh->lg, CRUSTER_LOG_WARN, "health", "marking runner %s %s failed: %s", p->addrs[i],
             p->out[i] ? "healthy" : "unhealthy", msg ? msg : cruster_status_message(status));
  }
  pass_maybe_end(p);
}

static void pass_decide(sh_health_pass *p) {
  sh_sharding *sh = p->sh;
  sh_cluster *cl = sh->cl;
  if (p->cancelled || !health_mine(sh)) return;
  size_t kept = 0;
  sh_health_decide(p->in, p->n, p->out, &kept);
  core_metric_add(cl->m_passes, 1);
  if (kept) core_metric_add(cl->m_kept, (double)kept);
  if (kept != cl->kept_last) /* logged when it changes, not every pass */
    core_log(sh->lg, kept ? CRUSTER_LOG_WARN : CRUSTER_LOG_INFO, "health",
             "%zu unfit runner(s) kept healthy: marking them would leave no healthy runner", kept);
  cl->kept_last = kept;
  for (size_t i = 0; i < p->n; i++) {
    if (p->out[i] < 0) continue;
    ping_ctx *x = malloc(sizeof(*x));
    if (!x) break;
    x->p = p;
    x->i = i;
    cruster_error *err = NULL;
    p->writing++;
    if (cl->reg->ops->set_runner_health(cl->reg, p->addrs[i], p->out[i], on_written, x, &err) !=
        CRUSTER_OK) {
      p->writing--;
      free(x);
      core_log(sh->lg, CRUSTER_LOG_WARN, "health", "marking runner %s: %s", p->addrs[i],
               err ? cruster_error_message(err) : "failed");
      cruster_error_free(err);
    }
  }
}

static void pings_pump(sh_health_pass *p);

static void on_pinged(void *ud, int status, const tp_health *h) {
  ping_ctx *x = ud;
  sh_health_pass *p = x->p;
  sh_cluster *cl = p->sh->cl;
  size_t i = x->i;
  free(x);
  p->pinging--;
  if (status == CRUSTER_OK && h) {
    p->in[i].alive = 1;
    p->in[i].stalled = h->stalled;
    core_metric_add(cl->m_pings_ok, 1);
  } else {
    core_metric_add(cl->m_pings_failed, 1);
  }
  pings_pump(p);
}

/* Keeps up to SH_HEALTH_CONCURRENCY pings out; decides when all answered. */
static void pings_pump(sh_health_pass *p) {
  sh_sharding *sh = p->sh;
  sh_cluster *cl = sh->cl;
  if (p->pumping) return; /* the outer call goes on */
  p->pumping = 1;
  if (p->cancelled || !health_mine(sh)) p->cancelled = 1;
  while (!p->cancelled && p->next_ping < p->n && p->pinging < SH_HEALTH_CONCURRENCY) {
    size_t i = p->next_ping++;
    if (p->in[i].self) {
      tp_health h;
      progress_eval(sh, &h);
      p->in[i].alive = 1;
      p->in[i].stalled = h.stalled;
      continue;
    }
    ping_ctx *x = malloc(sizeof(*x));
    if (!x) { /* counted as no answer */
      core_metric_add(cl->m_pings_failed, 1);
      continue;
    }
    x->p = p;
    x->i = i;
    p->pinging++;
    tp_ping_health(cl->tp, p->addrs[i], sh->cfg->runner_ping_timeout, on_pinged, x);
  }
  p->pumping = 0;
  if (!p->cancelled && p->next_ping == p->n && p->pinging == 0 && !p->writing) pass_decide(p);
  pass_maybe_end(p);
}

static void on_listed(void *ud, int status, const char *msg, const rg_runner *rs, size_t n) {
  sh_health_pass *p = ud;
  sh_sharding *sh = p->sh;
  p->listing = 0;
  if (status != CRUSTER_OK) {
    if (status != CRUSTER_E_SHUTTING_DOWN)
      core_log(sh->lg, CRUSTER_LOG_WARN, "health", "reading the runners failed: %s",
               msg ? msg : cruster_status_message(status));
    p->cancelled = 1;
  } else if (!p->cancelled) {
    p->addrs = calloc(n ? n : 1, sizeof(char *));
    p->in = calloc(n ? n : 1, sizeof(sh_health_in));
    p->out = calloc(n ? n : 1, sizeof(int));
    if (!p->addrs || !p->in || !p->out) {
      p->cancelled = 1;
    } else {
      for (size_t i = 0; i < n; i++) {
        p->addrs[i] = core_strdup(rs[i].addr);
        if (!p->addrs[i]) {
          p->cancelled = 1;
          break;
        }
        p->n = i + 1;
        p->in[i].healthy = rs[i].healthy;
        p->in[i].self = strcmp(rs[i].addr, sh->cl->me) == 0;
      }
    }
  }
  pings_pump(p);
}

static void health_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  sh_cluster *cl = sh->cl;
  if (cl->pass || !health_mine(sh)) return;
  sh_health_pass *p = calloc(1, sizeof(*p));
  if (!p) return;
  p->sh = sh;
  p->listing = 1;
  cl->pass = p;
  cruster_error *err = NULL;
  if (cl->reg->ops->get_runners(cl->reg, on_listed, p, &err) != CRUSTER_OK) {
    cruster_error_free(err);
    cl->pass = NULL;
    pass_free(p);
  }
}

/* ---- setup ------------------------------------------------------------------- */

void sh_health_init(sh_sharding *sh, cruster_metrics *m) {
  sh_cluster *cl = sh->cl;
  cl->health_shard = core_config_has_group(sh->cfg, SH_HEALTH_GROUP)
                         ? cruster_shard_for(SH_HEALTH_NAME, strlen(SH_HEALTH_NAME),
                                             (int32_t)sh->cfg->shards_per_group)
                         : -1;
  cl->m_stalled = core_metrics_get(m, CORE_GAUGE, "cluster_runner_stalled",
                                   "1 while this runner is stalled (work waits, no worker takes any)", NULL);
  core_metric_set(cl->m_stalled, 0);
  cl->m_stalls = core_metrics_get(m, CORE_COUNTER, "cluster_runner_stalls_total",
                                  "Times this runner became stalled", NULL);
  cl->m_pings_ok = core_metrics_get(m, CORE_COUNTER, "cluster_health_pings_total",
                                    "Health-check pings of other runners", "outcome=\"ok\"");
  cl->m_pings_failed = core_metrics_get(m, CORE_COUNTER, "cluster_health_pings_total",
                                        "Health-check pings of other runners", "outcome=\"failed\"");
  cl->m_marked_unhealthy = core_metrics_get(m, CORE_COUNTER, "cluster_health_marked_total",
                                            "Runners this runner marked (un)healthy in etcd",
                                            "health=\"unhealthy\"");
  cl->m_marked_healthy = core_metrics_get(m, CORE_COUNTER, "cluster_health_marked_total",
                                          "Runners this runner marked (un)healthy in etcd",
                                          "health=\"healthy\"");
  cl->m_passes = core_metrics_get(m, CORE_COUNTER, "cluster_health_checks_total",
                                  "Health-check passes this runner completed", NULL);
  cl->m_kept = core_metrics_get(m, CORE_COUNTER, "cluster_health_kept_healthy_total",
                                "Unfit runners left healthy so that one healthy runner remains", NULL);
  uv_timer_init(&sh->loop->uv, &cl->health_timer);
  uv_timer_init(&sh->loop->uv, &cl->progress_timer);
  cl->health_timer.data = cl->progress_timer.data = sh;
}

void sh_health_start(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  int64_t thr = sh->cfg->runner_stall_threshold;
  if (thr > 0 && !uv_is_active((uv_handle_t *)&cl->progress_timer)) {
    uint64_t every = (uint64_t)(thr / 4 < 100 ? 100 : thr / 4 > 1000 ? 1000 : thr / 4);
    uv_timer_start(&cl->progress_timer, progress_fire, every, every);
  }
  if (!uv_is_active((uv_handle_t *)&cl->health_timer)) {
    uint64_t poll = (uint64_t)sh->cfg->runner_poll_interval;
    uv_timer_start(&cl->health_timer, health_fire, poll, poll);
  }
}

void sh_health_stop(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  uv_timer_stop(&cl->health_timer);
  uv_timer_stop(&cl->progress_timer);
  if (cl->pass) cl->pass->cancelled = 1;
}

int sh_health_busy(const sh_sharding *sh, size_t flat) {
  const sh_cluster *cl = sh->cl;
  size_t per = (size_t)sh->cfg->shards_per_group;
  if (!cl->pass || !cl->pass->writing || cl->health_shard < 0) return 0;
  return strcmp(sh->cfg->shard_groups[flat / per], SH_HEALTH_GROUP) == 0 &&
         (int32_t)(flat % per) == cl->health_shard;
}

void sh_health_free(sh_sharding *sh) {
  sh_cluster *cl = sh->cl;
  if (cl->pass) {
    pass_free(cl->pass);
    cl->pass = NULL;
  }
}
