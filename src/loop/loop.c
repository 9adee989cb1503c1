/* The loop layer: the loop thread, its command queue, the worker pool, the
 * lifecycle state, reply callbacks. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "loop/loop.h"

/* ---- the command queue -------------------------------------------------- */

int rt_post(rt_loop *l, rt_cmd *cmd) {
  cmd->next = NULL;
  uv_mutex_lock(&l->cmd_mu);
  if (l->cmd_closed) {
    uv_mutex_unlock(&l->cmd_mu);
    return -1;
  }
  int was_empty = l->cmd_head == NULL;
  if (l->cmd_tail) l->cmd_tail->next = cmd; else l->cmd_head = cmd;
  l->cmd_tail = cmd;
  /* The loop drains the whole queue per wake-up, so one wake per batch, and
   * none while it is draining: it checks the queue again (under this lock)
   * before it returns to sleep. That spares the eventfd write and libuv's
   * spin in uv__async_io when the loop wakes mid-send.
   * Sent under the lock: close_on_loop closes the handle under it too. */
  if (was_empty && !l->cmd_draining) uv_async_send(&l->async);
  uv_mutex_unlock(&l->cmd_mu);
  return 0;
}

cruster_status rt_submit(rt_loop *l, rt_job *job) {
  if (!l->defer_wakes) return rt_pool_submit(l->pool, job);
  cruster_status st = rt_pool_submit_deferred(l->pool, job);
  if (st == CRUSTER_OK) l->wake_pending = 1;
  return st;
}

int rt_defer_begin(rt_loop *l) {
  int outer = l->defer_wakes;
  l->defer_wakes = 1;
  return outer;
}

void rt_defer_end(rt_loop *l, int outer) {
  if (!outer && l->wake_pending) {
    l->wake_pending = 0;
    rt_pool_wake(l->pool);
  }
  l->defer_wakes = outer;
}

static void drain_commands(rt_loop *l) {
  int outer = l->defer_wakes; /* close_on_loop drains from inside a drain */
  l->defer_wakes = 1;
  for (;;) {
    uv_mutex_lock(&l->cmd_mu);
    rt_cmd *c = l->cmd_head;
    l->cmd_head = l->cmd_tail = NULL;
    l->cmd_draining = c != NULL;
    uv_mutex_unlock(&l->cmd_mu);
    if (!c) break;
    while (c) {
      rt_cmd *next = c->next;
      c->fn(c->ud, c);
      c = next;
    }
    if (l->wake_pending) {
      l->wake_pending = 0;
      rt_pool_wake(l->pool);
    }
  }
  l->defer_wakes = outer;
}

static void on_async(uv_async_t *a) { drain_commands(a->data); }

int rt_check_started(rt_loop *l, cruster_error **err) {
  int state = atomic_load(&l->state);
  if (state == RT_NEW) return core_error_set(err, CRUSTER_E_STATE, "the runtime is not started");
  if (state != RT_STARTED)
    return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
  return CRUSTER_OK;
}

int rt_on_loop(const rt_loop *l) {
  if (!l->started) return 0;
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &l->thread);
}

int rt_on_own_thread(const rt_loop *l) { return rt_on_loop(l) || rt_pool_is_worker(l->pool); }

static void loop_main(void *arg) {
  rt_loop *l = arg;
  uv_run(&l->uv, UV_RUN_DEFAULT);
}

/* ---- commands that a caller waits for ----------------------------------- */

void rt_sync_done(rt_sync *s, int status) {
  uv_mutex_lock(&s->mu);
  s->status = status;
  s->done = 1;
  uv_cond_signal(&s->cv);
  uv_mutex_unlock(&s->mu);
}

int rt_run_sync(rt_loop *l, rt_sync *s, rt_cmd_fn fn, void *ud, cruster_error **err) {
  uv_mutex_init(&s->mu);
  uv_cond_init(&s->cv);
  s->cmd.fn = fn;
  s->cmd.ud = ud;
  int st;
  if (rt_post(l, &s->cmd) != 0) {
    cruster_error_free(s->err);
    st = core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime has stopped");
  } else {
    rt_pool_block_enter(l->pool);
    uv_mutex_lock(&s->mu);
    while (!s->done) uv_cond_wait(&s->cv, &s->mu);
    uv_mutex_unlock(&s->mu);
    rt_pool_block_leave(l->pool);
    st = s->status;
    if (st != CRUSTER_OK && !s->err) s->err = core_error_new(st, "%s", cruster_status_message(st));
    if (err) *err = s->err; else cruster_error_free(s->err);
  }
  s->err = NULL;
  uv_cond_destroy(&s->cv);
  uv_mutex_destroy(&s->mu);
  return st;
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

void rt_invoke_reply(rt_loop *l, cruster_reply_fn fn, void *user, int inline_cb, int status,
                     const void *data, size_t len, const char *msg) {
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
          rt_submit(l, &j->job) == CRUSTER_OK)
        return;
      free(j->data);
      free(j->msg);
      free(j);
    }
  }
  /* Inline: asked for, or the pool is gone / out of memory. */
  fn(user, status, status == CRUSTER_OK ? data : NULL, status == CRUSTER_OK ? len : 0, msg);
}

/* ---- lifecycle -------------------------------------------------------------- */

cruster_status rt_loop_init(rt_loop *l, int min_workers, int max_workers, const core_logger *lg,
                            cruster_metrics *metrics, cruster_error **err) {
  memset(l, 0, sizeof(*l));
  l->lg = lg;
  atomic_init(&l->state, RT_NEW);
  cruster_status st = rt_pool_new(min_workers, max_workers, lg, metrics, &l->pool);
  if (st != CRUSTER_OK) return core_error_set(err, st, "cannot start the worker pool");
  if (uv_loop_init(&l->uv) != 0) {
    l->pool = (rt_pool_free(l->pool), NULL);
    return core_error_set(err, CRUSTER_E_INTERNAL, "cannot create the event loop");
  }
  uv_mutex_init(&l->cmd_mu);
  uv_async_init(&l->uv, &l->async, on_async);
  l->async.data = l;
  return CRUSTER_OK;
}

void rt_loop_set_close_hook(rt_loop *l, void (*fn)(void *ud), void *ud) {
  l->on_close = fn;
  l->on_close_ud = ud;
}

cruster_status rt_loop_run(rt_loop *l, cruster_error **err) {
  if (uv_thread_create(&l->thread, loop_main, l) != 0)
    return core_error_set(err, CRUSTER_E_INTERNAL, "cannot start the loop thread");
  l->started = 1;
  return CRUSTER_OK;
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void rt_loop_abandon(rt_loop *l) {
  uv_walk(&l->uv, close_walk, NULL);
  uv_run(&l->uv, UV_RUN_DEFAULT);
  uv_loop_close(&l->uv);
  uv_mutex_destroy(&l->cmd_mu);
  l->pool = (rt_pool_free(l->pool), NULL);
}

static void close_on_loop(void *ud, rt_cmd *cmd) {
  rt_loop *l = ud;
  rt_sync *s = (rt_sync *)cmd;
  uv_mutex_lock(&l->cmd_mu);
  l->cmd_closed = 1;
  uv_mutex_unlock(&l->cmd_mu);
  drain_commands(l); /* whatever arrived meanwhile sees a closed runtime */
  if (l->on_close) l->on_close(l->on_close_ud);
  uv_walk(&l->uv, close_walk, NULL);
  rt_sync_done(s, CRUSTER_OK);
}

void rt_loop_shutdown(rt_loop *l) {
  /* Handlers and callbacks still queued run now; their answers are dropped. */
  rt_pool_shutdown(l->pool);
  rt_sync s;
  memset(&s, 0, sizeof(s));
  rt_run_sync(l, &s, close_on_loop, l, NULL);
  uv_thread_join(&l->thread);
  l->started = 0;
}

void rt_loop_done(rt_loop *l) {
  uv_loop_close(&l->uv);
  uv_mutex_destroy(&l->cmd_mu);
  l->pool = (rt_pool_free(l->pool), NULL);
}
