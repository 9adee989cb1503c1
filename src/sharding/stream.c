/* Streamed calls, the caller's side (cruster_send_stream, the blocking
 * reader cruster_stream_*): the items of a call -- from a local handler
 * (em_sink.item) or from the owner runner's chunks (remote.c) -- wait in
 * the call's sh_stream and reach the caller one at a time, in order, then
 * the end. An item leaves the queue when it is handed to the caller; only
 * then does the producer get room for another (a local handler's window,
 * em_request_stream_credit; a remote owner's chunks: this runner reads the
 * next one only while fewer than EM_STREAM_WINDOW wait). Loop thread unless
 * said (docs/architecture.md, "Streamed calls"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/cluster.h"
#include "sharding/sharding_internal.h"

/* The blocking reader (cruster_stream_open). Three holders, counted in
 * `refs` under `mu`: the user (until cruster_stream_close), the loop side
 * (until the stream's end reached it) and a queued `wake` command. */
struct cruster_stream {
  uv_mutex_t mu;
  uv_cond_t cv;
  rt_loop *loop;
  em_item *head, *tail; /* items not read yet */
  size_t n;
  int ended;
  int end_status;
  char *end_msg;
  int refs;
  int closed;      /* the user closed it */
  int wake_posted; /* `wake` is queued */
  rt_cmd wake;     /* room was made, or closed: to the loop */
  /* loop-owned */
  sh_stream *st; /* NULL once the stream's end reached the reader */
};

struct sh_stream {
  rt_cmd back; /* an item callback returned (worker -> loop) */
  rt_job job;
  sh_sharding *sh;
  sh_call *c; /* the call while it waits; NULL once it completed */
  cruster_stream_item_fn item_fn;
  cruster_reply_fn end_fn;
  void *user;
  int inline_cb;
  cruster_stream *reader; /* the blocking reader, or NULL */
  em_item *head, *tail;   /* items waiting for the caller */
  size_t n;
  int32_t next_seq; /* items received */
  int busy;         /* an item callback runs, or the reader is full */
  int pumping;
  em_item *cur; /* the item a worker is on */
  int cur_rc;
  int ended; /* the call completed: deliver the end after the items */
  int end_status;
  char *end_msg;
  int stopped; /* the caller stopped the stream: drop what is left */
};

static void pump(sh_stream *st);

/* ---- the reader's side ----------------------------------------------------- */

static void reader_unref(cruster_stream *s) {
  uv_mutex_lock(&s->mu);
  int last = --s->refs == 0;
  uv_mutex_unlock(&s->mu);
  if (!last) return;
  while (s->head) {
    em_item *it = s->head;
    s->head = it->next;
    free(it);
  }
  free(s->end_msg);
  uv_cond_destroy(&s->cv);
  uv_mutex_destroy(&s->mu);
  free(s);
}

/* Posts the reader's wake command unless queued already (under s->mu). */
static void reader_post_wake_locked(cruster_stream *s) {
  if (s->wake_posted) return;
  s->wake_posted = 1;
  s->refs++;
  if (rt_post(s->loop, &s->wake) != 0) {
    /* The loop is gone: every stream has ended. */
    s->wake_posted = 0;
    s->refs--;
  }
}

static void stop(sh_stream *st, const char *why);

/* Loop: the reader made room, or was closed. */
static void reader_wake(void *ud, rt_cmd *cmd) {
  (void)ud;
  cruster_stream *s = (cruster_stream *)((char *)cmd - offsetof(cruster_stream, wake));
  uv_mutex_lock(&s->mu);
  s->wake_posted = 0;
  int closed = s->closed;
  int room = s->n < EM_STREAM_WINDOW;
  uv_mutex_unlock(&s->mu);
  sh_stream *st = s->st;
  if (st) {
    if (closed) {
      stop(st, "the caller closed the stream");
    } else if (room && st->busy) {
      st->busy = 0;
      pump(st);
    }
  }
  reader_unref(s);
}

/* Gives the reader an item; 0 when its buffer is full now. */
static int reader_push(cruster_stream *s, em_item *it) {
  uv_mutex_lock(&s->mu);
  it->next = NULL;
  if (s->tail) s->tail->next = it;
  else s->head = it;
  s->tail = it;
  s->n++;
  int room = s->n < EM_STREAM_WINDOW;
  uv_cond_broadcast(&s->cv);
  uv_mutex_unlock(&s->mu);
  return room;
}

static void reader_end(cruster_stream *s, int status, const char *msg) {
  s->st = NULL;
  char *m = status != CRUSTER_OK ? core_strdup(msg ? msg : cruster_status_message(status)) : NULL;
  uv_mutex_lock(&s->mu);
  s->ended = 1;
  s->end_status = status;
  s->end_msg = m;
  uv_cond_broadcast(&s->cv);
  uv_mutex_unlock(&s->mu);
  reader_unref(s); /* the loop side's */
}

/* ---- delivering to the caller ------------------------------------------------ */

static void stream_free(sh_stream *st) {
  while (st->head) {
    em_item *it = st->head;
    st->head = it->next;
    free(it);
  }
  free(st->cur);
  free(st->end_msg);
  free(st);
}

/* An item left the queue for the caller: the producer may send another. */
static void credit(sh_stream *st) {
  sh_call *c = st->c;
  if (!c) return;
  if (c->req) em_request_stream_credit(c->req, 1);
  if (c->fwd_call && st->n < EM_STREAM_WINDOW) tp_call_resume(c->fwd_call);
}

static void deliver_end(sh_stream *st) {
  sh_sharding *sh = st->sh;
  int status = st->end_status;
  if (st->reader) reader_end(st->reader, status, st->end_msg);
  else
    rt_invoke_reply(sh->loop, st->end_fn, st->user, st->inline_cb, status, NULL, 0,
                    status == CRUSTER_OK ? NULL : st->end_msg);
  stream_free(st);
}

/* Worker: one item callback. */
static void item_job(void *arg) {
  sh_stream *st = arg;
  em_item *it = st->cur;
  st->cur_rc = st->item_fn(st->user, it->seq, it->data, it->len);
  if (rt_post(st->sh->loop, &st->back) != 0) {
    /* The loop is gone (it never is while the pool runs jobs). */
  }
}

static void item_back(void *ud, rt_cmd *cmd) {
  (void)ud;
  sh_stream *st = (sh_stream *)cmd;
  free(st->cur);
  st->cur = NULL;
  st->busy = 0;
  if (st->cur_rc != 0) {
    stop(st, "the caller's item callback stopped the stream"); /* may free st */
    return;
  }
  pump(st);
}

static void pump(sh_stream *st) {
  if (st->pumping) return;
  st->pumping = 1;
  for (;;) {
    if (st->busy) break;
    if (st->head) {
      em_item *it = st->head;
      st->head = it->next;
      if (!st->head) st->tail = NULL;
      st->n--;
      it->next = NULL;
      credit(st);
      if (st->stopped) {
        free(it);
        continue;
      }
      core_metric_add(st->sh->m.stream_items, 1);
      if (st->reader) {
        /* Full: wait until it reads one -- unless the call has ended (then
         * at most the window and a final item more go to the reader, and
         * its end needs no loop: the runtime may be stopping). */
        if (!reader_push(st->reader, it) && !st->ended) st->busy = 1;
        continue;
      }
      if (!st->inline_cb) {
        st->cur = it;
        st->busy = 1;
        st->job.fn = item_job;
        st->job.arg = st;
        if (rt_submit(st->sh->loop, &st->job) == CRUSTER_OK) continue;
        st->cur = NULL; /* the pool is gone: inline */
        st->busy = 0;
      }
      int rc = st->item_fn(st->user, it->seq, it->data, it->len);
      free(it);
      if (rc != 0) stop(st, "the caller's item callback stopped the stream");
      continue;
    }
    if (st->ended) {
      deliver_end(st); /* frees st */
      return;
    }
    break;
  }
  st->pumping = 0;
}

/* The caller wants no more items. May deliver the end (and free st)
 * unless called inside pump. */
static void stop(sh_stream *st, const char *why) {
  if (st->stopped) return;
  st->stopped = 1;
  while (st->head) {
    em_item *it = st->head;
    st->head = it->next;
    free(it);
  }
  st->tail = NULL;
  st->n = 0;
  if (st->c) {
    /* Ends the call: its handler is cancelled (sh_call_complete), and
     * sh_stream_finish records the end. */
    sh_call_complete(st->sh, st->c, CRUSTER_E_CANCELLED, NULL, 0, why);
  } else {
    if (st->ended) {
      st->end_status = CRUSTER_E_CANCELLED;
      free(st->end_msg);
      st->end_msg = core_strdup(why);
    }
    pump(st);
  }
}

void sh_stream_push(sh_sharding *sh, sh_call *c, em_item *it) {
  (void)sh;
  sh_stream *st = c->st;
  if (!st || st->stopped) {
    free(it);
    if (c->req) em_request_stream_credit(c->req, 1);
    return;
  }
  if (st->next_seq == INT32_MAX) {
    free(it);
    sh_call_complete(st->sh, c, CRUSTER_E_PAYLOAD_TOO_LARGE, NULL, 0,
                     "the stream reached 2147483647 items");
    return;
  }
  it->seq = st->next_seq++;
  it->next = NULL;
  if (st->tail) st->tail->next = it;
  else st->head = it;
  st->tail = it;
  st->n++;
  /* From another runner: read its next chunk only once there is room. */
  if (c->fwd_call && st->n >= EM_STREAM_WINDOW) tp_call_pause(c->fwd_call);
  pump(st);
}

void sh_stream_bind(sh_stream *st, sh_call *c) { st->c = c; }

size_t sh_stream_queued(const sh_call *c) { return c->st ? c->st->n : 0; }

int32_t sh_stream_received(const sh_call *c) { return c->st ? c->st->next_seq : 0; }

void sh_stream_finish(sh_sharding *sh, sh_call *c, int status, const void *data, size_t len,
                      const char *msg) {
  (void)sh;
  sh_stream *st = c->st;
  c->st = NULL;
  st->c = NULL;
  if (st->stopped) {
    status = CRUSTER_E_CANCELLED;
  } else if (status == CRUSTER_OK && len > 0) {
    /* A non-empty answer is the stream's final item (behaviour.md 4.7). */
    em_item *it = st->next_seq == INT32_MAX ? NULL : malloc(sizeof(*it) + len);
    if (!it) {
      status = st->next_seq == INT32_MAX ? CRUSTER_E_PAYLOAD_TOO_LARGE : CRUSTER_E_NOMEM;
      msg = st->next_seq == INT32_MAX ? "the stream reached 2147483647 items"
                                      : "out of memory copying the final item";
    } else {
      it->next = NULL;
      it->len = len;
      memcpy(it->data, data, len);
      it->seq = st->next_seq++;
      if (st->tail) st->tail->next = it;
      else st->head = it;
      st->tail = it;
      st->n++;
    }
  }
  st->ended = 1;
  if (st->reader) st->busy = 0; /* (the reader's room no longer matters) */
  st->end_status = status;
  if (status != CRUSTER_OK)
    st->end_msg = core_strdup(msg ? msg : cruster_status_message(status));
  pump(st);
}

/* em_sink.item of a call made here (c->on_item). */
static void local_item(sh_sharding *sh, sh_call *c, cruster_request *r, em_item *it) {
  (void)r;
  sh_stream_push(sh, c, it);
}

/* ---- the calls ------------------------------------------------------------------ */

/* Refuses what would make a streamed call persisted (up front). */
static int check_stream_opts(const cruster_call_opts *opts, cruster_error **err) {
  sh_call_opts o;
  int st = sh_call_opts_read(opts, &o, err);
  if (st != CRUSTER_OK) return st;
  if ((o.flags & CRUSTER_CALL_PERSISTED) || o.key || o.key_len || o.deliver_at_ms)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "a streamed call is never persisted: CRUSTER_CALL_PERSISTED, an "
                          "idempotency key and deliver_at_ms are not allowed");
  return CRUSTER_OK;
}

static cruster_status start(sh_sharding *sh, const char *type, const char *id,
                            const char *method, const void *payload, size_t len,
                            const cruster_call_opts *opts, sh_stream *st, cruster_error **err) {
  int rc = check_stream_opts(opts, err);
  if (rc != CRUSTER_OK) return rc;
  st->sh = sh;
  st->back.fn = item_back;
  st->back.ud = sh;
  rc = sh_submit_stream(sh, type, id, method, payload, len, opts,
                        st->reader ? CRUSTER_CALL_INLINE_CALLBACK : 0u, st, local_item, err);
  if (rc == CRUSTER_OK) core_metric_add(sh->m.streams, 1);
  return rc;
}

cruster_status sh_send_stream(sh_sharding *sh, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_stream_item_fn item_fn,
                              cruster_reply_fn end_fn, void *user, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!sh) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (!item_fn || !end_fn)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "a streamed call needs an item callback and an end callback");
  sh_stream *st = calloc(1, sizeof(*st));
  if (!st) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  st->item_fn = item_fn;
  st->end_fn = end_fn;
  st->user = user;
  sh_call_opts o;
  if (sh_call_opts_read(opts, &o, NULL) == CRUSTER_OK)
    st->inline_cb = (o.flags & CRUSTER_CALL_INLINE_CALLBACK) != 0;
  cruster_status rc = start(sh, type, id, method, payload, len, opts, st, err);
  if (rc != CRUSTER_OK) free(st);
  return rc;
}

static int never_called(void *user, int32_t seq, const void *data, size_t len) {
  (void)user;
  (void)seq;
  (void)data;
  (void)len;
  return 1;
}

static void never_ends(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)user;
  (void)status;
  (void)data;
  (void)len;
  (void)msg;
}

cruster_status sh_stream_open(sh_sharding *sh, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_stream **out,
                              cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (!sh) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  cruster_stream *s = calloc(1, sizeof(*s));
  sh_stream *st = s ? calloc(1, sizeof(*st)) : NULL;
  if (!st) {
    free(s);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  uv_mutex_init(&s->mu);
  uv_cond_init(&s->cv);
  s->loop = sh->loop;
  s->refs = 2; /* the user's, the loop side's */
  s->wake.fn = reader_wake;
  s->wake.ud = sh;
  s->st = st;
  st->reader = s;
  st->item_fn = never_called; /* (the reader takes the items) */
  st->end_fn = never_ends;
  st->inline_cb = 1;
  cruster_status rc = start(sh, type, id, method, payload, len, opts, st, err);
  if (rc != CRUSTER_OK) {
    free(st);
    uv_cond_destroy(&s->cv);
    uv_mutex_destroy(&s->mu);
    free(s);
    return rc;
  }
  *out = s;
  return CRUSTER_OK;
}

/* ---- the blocking reader's public functions ------------------------------------- */

cruster_status cruster_stream_next(cruster_stream *s, int64_t timeout_ms, void **item,
                                   size_t *len, int *done, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (item) *item = NULL;
  if (len) *len = 0;
  if (done) *done = 0;
  if (!s || !done)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "s and done must not be NULL");
  if (timeout_ms < 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "timeout_ms must be >= 0, got %lld",
                          (long long)timeout_ms);
  if (rt_on_loop(s->loop))
    return core_error_set(err, CRUSTER_E_STATE, "blocking calls are not allowed on the loop thread");
  int64_t until = timeout_ms > 0 ? rt_deadline_after(core_mono_ms(), timeout_ms) : 0;
  int blocked = 0;
  uv_mutex_lock(&s->mu);
  while (!s->head && !s->ended) {
    if (!blocked) {
      blocked = 1;
      uv_mutex_unlock(&s->mu);
      rt_pool_block_enter(s->loop->pool);
      uv_mutex_lock(&s->mu);
      continue;
    }
    if (!until) {
      uv_cond_wait(&s->cv, &s->mu);
      continue;
    }
    int64_t left = until - core_mono_ms();
    if (left <= 0) break;
    uv_cond_timedwait(&s->cv, &s->mu, (uint64_t)left * UINT64_C(1000000));
  }
  cruster_status rc;
  em_item *it = s->head;
  if (it) {
    s->head = it->next;
    if (!s->head) s->tail = NULL;
    s->n--;
    if (!s->ended && s->n == EM_STREAM_WINDOW - 1) reader_post_wake_locked(s);
    rc = CRUSTER_OK;
  } else if (s->ended) {
    *done = 1;
    rc = s->end_status;
    if (rc != CRUSTER_OK) core_error_set(err, rc, "%s", s->end_msg ? s->end_msg : cruster_status_message(rc));
  } else {
    rc = core_error_set(err, CRUSTER_E_TIMEOUT,
                        "no item within %lld ms (the stream goes on: call again)",
                        (long long)timeout_ms);
  }
  uv_mutex_unlock(&s->mu);
  if (blocked) rt_pool_block_leave(s->loop->pool);
  if (it) {
    void *copy = malloc(it->len + 1);
    if (!copy) {
      free(it);
      return core_error_set(err, CRUSTER_E_NOMEM, "out of memory copying the item");
    }
    if (it->len) memcpy(copy, it->data, it->len);
    ((char *)copy)[it->len] = 0;
    if (len) *len = it->len;
    if (item) *item = copy;
    else free(copy);
    free(it);
  }
  return rc;
}

void cruster_stream_close(cruster_stream *s) {
  if (!s) return;
  uv_mutex_lock(&s->mu);
  s->closed = 1;
  if (!s->ended) reader_post_wake_locked(s);
  uv_mutex_unlock(&s->mu);
  reader_unref(s);
}
