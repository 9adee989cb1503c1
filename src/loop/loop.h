/* Internal: the loop layer. One libuv loop thread, the command queue other
 * threads post to (rt_post, rt_run_sync), the worker pool that runs user
 * code (rt_submit), the lifecycle state, reply callbacks and deadline
 * arithmetic. It knows nothing of the layers above it: a command carries its
 * own context (rt_cmd.ud), and what must happen when the loop closes is a
 * hook its owner registers (rt_loop_set_close_hook).
 *
 * Everything under "loop-owned" is touched only on the loop thread. */
#ifndef RT_LOOP_H
#define RT_LOOP_H

#include "core/prefix.h"

#include <cruster/client.h>
#include <cruster/status.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "core/metrics_internal.h"
#include "loop/pool.h"

/* A command executed on the loop thread, fn(ud, cmd). Embedded in a larger
 * struct; the poster fills fn and ud. */
typedef struct rt_cmd rt_cmd;
typedef void (*rt_cmd_fn)(void *ud, rt_cmd *cmd);
struct rt_cmd {
  rt_cmd_fn fn;
  void *ud;
  rt_cmd *next;
};

/* The lifecycle of the work on a loop. The owner moves it (new -> started
 * -> stopping -> stopped); every layer reads it. */
enum { RT_NEW = 0, RT_STARTED = 1, RT_STOPPING = 2, RT_STOPPED = 3 };

typedef struct rt_loop {
  rt_pool *pool;
  const core_logger *lg;
  _Atomic int state; /* RT_* */
  uv_thread_t thread;
  int started; /* the loop thread runs */
  uv_mutex_t cmd_mu;
  rt_cmd *cmd_head, *cmd_tail;
  int cmd_closed;   /* under cmd_mu: the loop no longer takes commands */
  int cmd_draining; /* under cmd_mu: the loop is in drain_commands and will
                     * look at the queue again before it sleeps */
  /* Runs on the loop thread when the loop closes (rt_loop_shutdown), after
   * the last commands and before every handle is closed. */
  void (*on_close)(void *ud);
  void *on_close_ud;

  /* ---- loop-owned ---- */
  uv_loop_t uv;
  uv_async_t async;
  int defer_wakes;  /* in drain_commands: pool wakes wait for the batch end */
  int wake_pending; /* jobs were queued with their wake deferred */
} rt_loop;

/* Makes the worker pool and the libuv loop (the thread starts with
 * rt_loop_run). On failure nothing is left to free. */
cruster_status rt_loop_init(rt_loop *l, int min_workers, int max_workers, const core_logger *lg,
                            cruster_metrics *metrics, cruster_error **err);
void rt_loop_set_close_hook(rt_loop *l, void (*fn)(void *ud), void *ud);
/* Starts the loop thread. */
cruster_status rt_loop_run(rt_loop *l, cruster_error **err);
/* The loop thread never started (a failed setup): closes every handle of
 * the loop and frees what rt_loop_init made. */
void rt_loop_abandon(rt_loop *l);
/* Drains and joins the worker pool (queued jobs run), then closes the loop
 * on its thread (no more commands; those already queued run; the close hook;
 * every handle closed) and joins the thread. Not from the loop or a worker. */
void rt_loop_shutdown(rt_loop *l);
/* After rt_loop_shutdown: frees the loop and the pool. */
void rt_loop_done(rt_loop *l);

/* Posts a command to the loop. Returns 0, or -1 if the loop is gone. */
int rt_post(rt_loop *l, rt_cmd *cmd);
/* Loop thread only: queues a job on the pool. Inside a command batch the
 * worker wake-ups are deferred to the batch end (one pass, no wake-preempt
 * ping-pong between the loop and workers per job). */
cruster_status rt_submit(rt_loop *l, rt_job *job);
/* Loop thread only: a batch of work that does not come through the command
 * queue (e.g. the transport's completions) defers its rt_submit wake-ups the
 * same way. rt_defer_begin returns the state to hand to rt_defer_end, which
 * wakes the pool once if jobs were queued (unless inside an outer batch,
 * whose end wakes it). */
int rt_defer_begin(rt_loop *l);
void rt_defer_end(rt_loop *l, int outer);
/* 1 if the calling thread is the loop thread. */
int rt_on_loop(const rt_loop *l);
/* 1 if the calling thread is the loop thread or one of the pool's workers. */
int rt_on_own_thread(const rt_loop *l);

/* CRUSTER_OK when the state is RT_STARTED; else CRUSTER_E_STATE (not
 * started) or CRUSTER_E_SHUTTING_DOWN, with *err set. Any thread. */
int rt_check_started(rt_loop *l, cruster_error **err);

/* A command that a thread outside the loop waits for. Embed it first in a
 * larger struct to carry arguments and results. */
typedef struct rt_sync {
  rt_cmd cmd;
  uv_mutex_t mu;
  uv_cond_t cv;
  int done;
  int status;
  cruster_error *err; /* set by the loop side on failure (optional) */
  void *arg;
} rt_sync;

/* Posts fn(ud, &s->cmd) (`s` zeroed and filled by the caller) to the loop
 * and waits until the loop calls rt_sync_done; a worker counts as blocked
 * meanwhile. Returns the status; *err receives s->err (or a message). */
int rt_run_sync(rt_loop *l, rt_sync *s, rt_cmd_fn fn, void *ud, cruster_error **err);
/* Loop side: finishes `s` with `status` (s->err may be set before). */
void rt_sync_done(rt_sync *s, int status);

/* Runs a user callback: inline on the loop when `inline_cb`, else on the
 * pool (falling back to inline when the pool is gone). Copies data/msg. */
void rt_invoke_reply(rt_loop *l, cruster_reply_fn fn, void *user, int inline_cb, int status,
                     const void *data, size_t len, const char *msg);

/* `base` + `ms` (both >= 0), saturating at INT64_MAX: a huge timeout means
 * "no deadline in practice", never an overflowed (past) one. */
static inline int64_t rt_deadline_after(int64_t base, int64_t ms) {
  return ms > INT64_MAX - base ? INT64_MAX : base + ms;
}

#endif
