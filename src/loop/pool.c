/* The worker pool on which user code runs (see pool.h).
 *
 * One mutex guards all pool state; jobs run without it. Accounting:
 *   total    live worker threads (started, not yet exited)
 *   starting workers created but not yet at their first look at the queue
 *   idle     workers waiting for work that no submitter has claimed yet
 *   wakeups  claims: signals sent to idle workers and not yet consumed
 *   busy     workers running a job (blocked ones included)
 *   blocked  workers between rt_pool_block_enter and rt_pool_block_leave
 *
 * Submit claims one idle worker per job (idle--, wakeups++) and signals the
 * condition once: no broadcast, no herd. A worker that finds a claim consumes
 * it whoever it was meant for; workers are interchangeable, so the counts stay
 * exact even with spurious wake-ups.
 *
 * Compensation: while blocked > 0, no worker is idle and more jobs are queued
 * than workers are already heading for the queue (wakeups + starting), a
 * worker is started, up to max_threads. Checked when a job is queued and when
 * a worker blocks; those are the only events that can make the condition true.
 *
 * Extra workers linger: an idle worker waits at most POOL_LINGER_NS whenever
 * total > min; when that wait times out with nothing queued and more than
 * min_threads workers are not blocked, it exits. The linger avoids creating
 * and destroying a thread for every hop of a synchronous call chain. Spawning
 * requires idle == 0, so no worker ever waits without a timeout while
 * total > min, and every surplus worker eventually exits.
 *
 * An exiting worker is joined by the next worker that exits (or by shutdown),
 * so at most one finished-but-unjoined thread exists at any time. */
#include "loop/pool.h"

#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#define POOL_LINGER_NS (200ull * 1000ull * 1000ull)
#define POOL_COMPONENT "pool"

typedef struct pool_worker {
  rt_pool *pool;
  uv_thread_t tid;
  int block_depth;          /* nesting of block_enter; touched by its own thread only */
  struct pool_worker *next; /* in rt_pool.zombies once exited */
} pool_worker;

typedef enum pool_state {
  POOL_RUNNING,  /* accepting */
  POOL_DRAINING, /* shutdown waits for queue and jobs to finish; still accepting */
  POOL_STOPPING, /* refusing; workers are exiting */
  POOL_STOPPED   /* workers joined */
} pool_state;

struct rt_pool {
  uv_mutex_t mu;
  uv_cond_t work_cv;  /* idle workers wait here */
  uv_cond_t state_cv; /* shutdown progress: drained, workers gone, stopped */
  uv_key_t self;      /* the calling thread's pool_worker, NULL on other threads */
  int min, max;
  const core_logger *lg;

  rt_job *head, *tail;
  int depth;
  int total, starting, idle, wakeups, busy, blocked;
  int saturated; /* compensation hit max_threads; logged once per episode */
  uint64_t progress_ns; /* uv_hrtime() of the last job taken, or of the queue becoming
                         * non-empty, whichever is later (rt_pool_progress) */
  pool_state state;
  pool_worker *zombies; /* exited, not yet joined */

  core_metric *m_threads, *m_busy, *m_blocked, *m_depth;
};

static void gauge(core_metric *m, int v) {
  if (m) core_metric_set(m, (double)v);
}

static void join_workers(pool_worker *w) {
  while (w) {
    pool_worker *next = w->next;
    uv_thread_join(&w->tid);
    free(w);
    w = next;
  }
}

/* Exits the calling worker. Called with mu held; returns with it released. */
static void worker_exit(rt_pool *p, pool_worker *w) {
  pool_worker *reap = p->zombies;
  w->next = NULL;
  p->zombies = w;
  p->total--;
  gauge(p->m_threads, p->total);
  if (p->total == 0 && p->state >= POOL_STOPPING) uv_cond_broadcast(&p->state_cv);
  uv_mutex_unlock(&p->mu);
  /* Those exited before us: they no longer take the lock, so joining is quick
   * and touches nothing of the pool. */
  join_workers(reap);
}

static void worker_main(void *arg) {
  pool_worker *w = arg;
  rt_pool *p = w->pool;
  uv_key_set(&p->self, w);

  uv_mutex_lock(&p->mu);
  p->starting--;
  for (;;) {
    rt_job *job = p->head;
    if (job) {
      p->head = job->next;
      if (!p->head) p->tail = NULL;
      p->depth--;
      p->busy++;
      p->progress_ns = uv_hrtime();
      gauge(p->m_depth, p->depth);
      gauge(p->m_busy, p->busy);
      uv_mutex_unlock(&p->mu);

      job->fn(job->arg); /* may free the job: do not touch it again */

      uv_mutex_lock(&p->mu);
      p->busy--;
      gauge(p->m_busy, p->busy);
      if (p->state == POOL_DRAINING && p->depth == 0 && p->busy == 0)
        uv_cond_broadcast(&p->state_cv);
      continue;
    }
    if (p->state >= POOL_STOPPING) break;

    int timed_out = 0;
    p->idle++;
    while (p->wakeups == 0 && p->state < POOL_STOPPING) {
      if (p->total > p->min) {
        if (uv_cond_timedwait(&p->work_cv, &p->mu, POOL_LINGER_NS) == UV_ETIMEDOUT) {
          timed_out = 1;
          break;
        }
      } else {
        uv_cond_wait(&p->work_cv, &p->mu);
      }
    }
    if (p->wakeups > 0) {
      p->wakeups--; /* the submitter already took us off idle */
      continue;
    }
    p->idle--;
    if (timed_out && !p->head && p->total - p->blocked > p->min) break;
  }
  worker_exit(p, w);
}

/* Starts one worker. mu held (the new thread waits for it). 0 or a UV error. */
static int spawn_worker(rt_pool *p) {
  pool_worker *w = calloc(1, sizeof *w);
  if (!w) return UV_ENOMEM;
  w->pool = p;
  int rc = uv_thread_create(&w->tid, worker_main, w);
  if (rc != 0) {
    free(w);
    return rc;
  }
  p->total++;
  p->starting++;
  gauge(p->m_threads, p->total);
  return 0;
}

static void pool_log(rt_pool *p, cruster_log_level level, const char *what, int a, int b) {
  if (p->lg && core_log_enabled(p->lg, level))
    core_log(p->lg, level, POOL_COMPONENT, "%s (workers %d, blocked %d, queued %d)", what, a, b,
             p->depth);
}

/* mu held. Starts workers while blocked workers leave queued jobs unserved. */
static void compensate(rt_pool *p) {
  while (p->blocked > 0 && p->idle == 0 && p->depth > p->wakeups + p->starting) {
    if (p->total >= p->max) {
      if (!p->saturated) {
        p->saturated = 1;
        pool_log(p, CRUSTER_LOG_WARN, "all workers busy or blocked at max_threads; jobs wait",
                 p->total, p->blocked);
      }
      return;
    }
    int rc = spawn_worker(p);
    if (rc != 0) {
      if (p->lg)
        core_log(p->lg, CRUSTER_LOG_ERROR, POOL_COMPONENT, "cannot start a compensating worker: %s",
                 uv_strerror(rc));
      return;
    }
    pool_log(p, CRUSTER_LOG_DEBUG, "started a worker for a blocked one", p->total, p->blocked);
  }
}

cruster_status rt_pool_new(int min_threads, int max_threads, const core_logger *lg,
                           cruster_metrics *metrics, rt_pool **out) {
  if (!out) return CRUSTER_E_INVALID_ARGUMENT;
  *out = NULL;
  if (min_threads < 1 || max_threads < min_threads) return CRUSTER_E_INVALID_ARGUMENT;

  rt_pool *p = calloc(1, sizeof *p);
  if (!p) return CRUSTER_E_NOMEM;
  p->min = min_threads;
  p->max = max_threads;
  p->lg = lg;
  p->state = POOL_RUNNING;

  int inited = 0;
  if (uv_mutex_init(&p->mu) != 0) goto fail;
  inited++;
  if (uv_cond_init(&p->work_cv) != 0) goto fail;
  inited++;
  if (uv_cond_init(&p->state_cv) != 0) goto fail;
  inited++;
  if (uv_key_create(&p->self) != 0) goto fail;
  inited++;

  if (metrics) {
    p->m_threads = core_metrics_get(metrics, CORE_GAUGE, "cluster_worker_threads",
                                    "Worker threads alive in the pool that runs user code", NULL);
    p->m_busy = core_metrics_get(metrics, CORE_GAUGE, "cluster_worker_threads_busy",
                                 "Worker threads running a job (blocked ones included)", NULL);
    p->m_blocked =
        core_metrics_get(metrics, CORE_GAUGE, "cluster_worker_threads_blocked",
                         "Worker threads blocked waiting inside cruster (compensated)", NULL);
    p->m_depth = core_metrics_get(metrics, CORE_GAUGE, "cluster_worker_queue_depth",
                                  "Jobs queued for the worker pool, not yet started", NULL);
    gauge(p->m_busy, 0);
    gauge(p->m_blocked, 0);
    gauge(p->m_depth, 0);
    gauge(p->m_threads, 0);
  }

  uv_mutex_lock(&p->mu);
  for (int i = 0; i < min_threads; i++) {
    int rc = spawn_worker(p);
    if (rc != 0) {
      uv_mutex_unlock(&p->mu);
      if (lg)
        core_log(lg, CRUSTER_LOG_ERROR, POOL_COMPONENT, "cannot start worker: %s", uv_strerror(rc));
      rt_pool_free(p);
      return (rc == UV_ENOMEM || rc == UV_EAGAIN) ? CRUSTER_E_NOMEM : CRUSTER_E_INTERNAL;
    }
  }
  uv_mutex_unlock(&p->mu);
  *out = p;
  return CRUSTER_OK;

fail:
  if (inited > 2) uv_cond_destroy(&p->state_cv);
  if (inited > 1) uv_cond_destroy(&p->work_cv);
  if (inited > 0) uv_mutex_destroy(&p->mu);
  free(p);
  return CRUSTER_E_NOMEM;
}

/* Queues a job; mu held. CRUSTER_OK or CRUSTER_E_SHUTTING_DOWN. */
static cruster_status enqueue(rt_pool *p, rt_job *job) {
  if (p->state >= POOL_STOPPING) return CRUSTER_E_SHUTTING_DOWN;
  if (p->depth == 0) p->progress_ns = uv_hrtime();
  if (p->tail)
    p->tail->next = job;
  else
    p->head = job;
  p->tail = job;
  p->depth++;
  gauge(p->m_depth, p->depth);
  return CRUSTER_OK;
}

cruster_status rt_pool_submit(rt_pool *p, rt_job *job) {
  if (!p || !job || !job->fn) return CRUSTER_E_INVALID_ARGUMENT;
  job->next = NULL;

  uv_mutex_lock(&p->mu);
  if (enqueue(p, job) != CRUSTER_OK) {
    uv_mutex_unlock(&p->mu);
    return CRUSTER_E_SHUTTING_DOWN;
  }
  int wake = 0;
  if (p->idle > 0) {
    p->idle--;
    p->wakeups++;
    wake = 1;
  } else if (p->blocked > 0) {
    compensate(p);
  }
  uv_mutex_unlock(&p->mu);
  /* The claim was recorded under the lock, so signalling after unlocking
   * loses nothing and spares the woken worker a collision on the mutex.
   * (The pool outlives this call: freeing it concurrently is not allowed.) */
  if (wake) uv_cond_signal(&p->work_cv);
  return CRUSTER_OK;
}

cruster_status rt_pool_submit_deferred(rt_pool *p, rt_job *job) {
  if (!p || !job || !job->fn) return CRUSTER_E_INVALID_ARGUMENT;
  job->next = NULL;
  uv_mutex_lock(&p->mu);
  cruster_status st = enqueue(p, job);
  uv_mutex_unlock(&p->mu);
  return st;
}

void rt_pool_wake(rt_pool *p) {
  if (!p) return;
  int n = 0;
  uv_mutex_lock(&p->mu);
  /* As many claims as queued jobs, at most: busy workers drain the rest. */
  while (p->idle > 0 && p->wakeups < p->depth) {
    p->idle--;
    p->wakeups++;
    n++;
  }
  if (p->blocked > 0) compensate(p);
  uv_mutex_unlock(&p->mu);
  while (n-- > 0) uv_cond_signal(&p->work_cv);
}

int rt_pool_is_worker(rt_pool *p) { return p && uv_key_get(&p->self) != NULL; }

void rt_pool_block_enter(rt_pool *p) {
  if (!p) return;
  pool_worker *w = uv_key_get(&p->self);
  if (!w || w->block_depth++ > 0) return;
  uv_mutex_lock(&p->mu);
  p->blocked++;
  gauge(p->m_blocked, p->blocked);
  compensate(p);
  uv_mutex_unlock(&p->mu);
}

void rt_pool_block_leave(rt_pool *p) {
  if (!p) return;
  pool_worker *w = uv_key_get(&p->self);
  if (!w || w->block_depth == 0 || --w->block_depth > 0) return;
  uv_mutex_lock(&p->mu);
  p->blocked--;
  if (p->blocked == 0) p->saturated = 0;
  gauge(p->m_blocked, p->blocked);
  uv_mutex_unlock(&p->mu);
}

void rt_pool_add_max(rt_pool *p, int n) {
  if (!p) return;
  uv_mutex_lock(&p->mu);
  int64_t m = (int64_t)p->max + n;
  if (m < p->min) m = p->min;
  if (m > INT32_MAX) m = INT32_MAX;
  p->max = (int)m;
  if (p->blocked > 0) compensate(p);
  uv_mutex_unlock(&p->mu);
}

void rt_pool_progress(rt_pool *p, int64_t *queued, int64_t *waiting_ms) {
  int64_t q = 0, w = 0;
  if (p) {
    uv_mutex_lock(&p->mu);
    q = p->depth;
    if (q > 0) {
      uint64_t now = uv_hrtime();
      w = now > p->progress_ns ? (int64_t)((now - p->progress_ns) / 1000000u) : 0;
    }
    uv_mutex_unlock(&p->mu);
  }
  if (queued) *queued = q;
  if (waiting_ms) *waiting_ms = w;
}

void rt_pool_shutdown(rt_pool *p) {
  if (!p) return;
  if (rt_pool_is_worker(p)) {
    /* Waiting for ourselves would never end. */
    if (p->lg)
      core_log(p->lg, CRUSTER_LOG_ERROR, POOL_COMPONENT,
               "rt_pool_shutdown called from a worker; ignored");
    return;
  }
  uv_mutex_lock(&p->mu);
  if (p->state != POOL_RUNNING) {
    /* Another caller is shutting down (or has): wait until it is done. */
    while (p->state != POOL_STOPPED) uv_cond_wait(&p->state_cv, &p->mu);
    uv_mutex_unlock(&p->mu);
    return;
  }
  p->state = POOL_DRAINING;
  /* Jobs (also those queued meanwhile) run to completion; workers that block
   * are still compensated, so this ends whenever the jobs themselves end. */
  while (p->depth > 0 || p->busy > 0) uv_cond_wait(&p->state_cv, &p->mu);

  /* Nothing queued and nothing running means nothing can submit from inside
   * the pool any more; refuse from now on. */
  p->state = POOL_STOPPING;
  uv_cond_broadcast(&p->work_cv);
  while (p->total > 0) uv_cond_wait(&p->state_cv, &p->mu);
  pool_worker *reap = p->zombies;
  p->zombies = NULL;
  uv_mutex_unlock(&p->mu);

  join_workers(reap);

  uv_mutex_lock(&p->mu);
  p->state = POOL_STOPPED;
  uv_cond_broadcast(&p->state_cv);
  uv_mutex_unlock(&p->mu);
}

void rt_pool_free(rt_pool *p) {
  if (!p) return;
  if (rt_pool_is_worker(p)) {
    if (p->lg)
      core_log(p->lg, CRUSTER_LOG_ERROR, POOL_COMPONENT,
               "rt_pool_free called from a worker; pool leaked");
    return;
  }
  rt_pool_shutdown(p);
  uv_key_delete(&p->self);
  uv_cond_destroy(&p->state_cv);
  uv_cond_destroy(&p->work_cv);
  uv_mutex_destroy(&p->mu);
  free(p);
}
