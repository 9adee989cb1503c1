/* Internal: the bounded worker pool on which user code runs.
 *
 * FIFO queue of intrusive jobs; `min_threads` workers always; while workers
 * are blocked inside cruster (rt_pool_block_enter/leave around a wait), the
 * pool adds workers so that queued jobs still run, up to `max_threads` in
 * total. Extra workers exit again once they are idle and not needed.
 * Every function is thread-safe. */
#ifndef RT_POOL_H
#define RT_POOL_H

#include "core/prefix.h"

#include <cruster/status.h>
#include "core/log.h"
#include "core/metrics_internal.h"

typedef struct rt_pool rt_pool;
typedef void (*rt_job_fn)(void *arg);

/* A job. Storage is the submitter's; it must stay valid until fn starts. */
typedef struct rt_job {
  rt_job_fn fn;
  void *arg;
  struct rt_job *next; /* owned by the pool while queued */
} rt_job;

/* Creates the pool and starts min_threads workers (1 <= min <= max).
 * `metrics` may be NULL; otherwise the pool keeps the gauges
 * cluster_worker_threads, cluster_worker_threads_busy,
 * cluster_worker_threads_blocked and cluster_worker_queue_depth up to date.
 * `lg` must outlive the pool. */
cruster_status rt_pool_new(int min_threads, int max_threads, const core_logger *lg,
                           cruster_metrics *metrics, rt_pool **out);

/* Queues a job (FIFO). Returns CRUSTER_OK, or CRUSTER_E_SHUTTING_DOWN once
 * rt_pool_shutdown has finished (the job is then not queued). Jobs submitted
 * while shutdown is draining the queue still run. */
cruster_status rt_pool_submit(rt_pool *p, rt_job *job);

/* Queues a job like rt_pool_submit but wakes no idle worker: the caller
 * batches jobs and must call rt_pool_wake afterwards (workers that are busy
 * take it meanwhile). Returns as rt_pool_submit. */
cruster_status rt_pool_submit_deferred(rt_pool *p, rt_job *job);

/* Wakes idle workers for queued jobs that no worker is heading for yet (one
 * per job, as rt_pool_submit would have), and compensates blocked workers. */
void rt_pool_wake(rt_pool *p);

/* 1 if the calling thread is one of this pool's workers. */
int rt_pool_is_worker(rt_pool *p);

/* Mark the calling worker as blocked / no longer blocked. No-ops when the
 * caller is not a worker of this pool. While blocked workers exist and jobs
 * wait with no idle worker, a new worker is started (total <= max). */
void rt_pool_block_enter(rt_pool *p);
void rt_pool_block_leave(rt_pool *p);

/* Raises (n > 0) or lowers the maximum number of workers by n (never below
 * the minimum): a caller that keeps a worker for a long time (a singleton)
 * reserves room for it, so that compensation still serves other jobs. */
void rt_pool_add_max(rt_pool *p, int n);

/* Progress (the runner's progress-based health): *queued = jobs waiting for
 * a worker; *waiting_ms = while some wait, ms since a worker last took a job
 * or since the queue became non-empty, whichever is later (0 when none
 * wait). A pool whose workers all hang with work queued shows a growing
 * *waiting_ms; a busy pool that keeps taking jobs keeps it small, however
 * deep its queue. Either pointer may be NULL; p NULL gives zeros. */
void rt_pool_progress(rt_pool *p, int64_t *queued, int64_t *waiting_ms);

/* Runs every queued job (including ones submitted meanwhile) to completion,
 * then joins all workers. Afterwards rt_pool_submit refuses. Must not be
 * called from a worker. Idempotent. */
void rt_pool_shutdown(rt_pool *p);

/* Shuts down if needed and frees. NULL is a no-op. */
void rt_pool_free(rt_pool *p);

#endif
