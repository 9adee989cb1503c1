/* The call API: sh_send / sh_notify and their blocking forms (the public
 * cruster_send & co. are runner/api.c's wrappers of these). Validates on the
 * caller's thread, then hands the call to the loop. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/sharding_internal.h"

/* The latest deliver_at_ms accepted: 9999-12-31T23:59:59.999Z. Every storage
 * can represent it (PostgreSQL timestamps end in 294276), and the deadline
 * and poll arithmetic on it cannot overflow. */
#define MAX_DELIVER_AT_MS INT64_C(253402300799999)

/* Fields of cruster_call_opts present in the caller's struct. */
#define OPT_HAS(o, field) ((o)->size >= offsetof(cruster_call_opts, field) + sizeof((o)->field))

int sh_call_opts_read(const cruster_call_opts *opts, sh_call_opts *out, cruster_error **err) {
  memset(out, 0, sizeof(*out));
  if (!opts) return CRUSTER_OK;
  int rc = core_opts_read("cruster_call_opts", "CRUSTER_CALL_OPTS_INIT", opts, opts->size,
                          CRUSTER_CALL_OPTS_SIZE_V1, sizeof(cruster_call_opts), NULL, err);
  if (rc != CRUSTER_OK) return rc;
  if (OPT_HAS(opts, flags)) out->flags = opts->flags;
  if (OPT_HAS(opts, timeout_ms)) out->timeout_ms = opts->timeout_ms;
  if (OPT_HAS(opts, idempotency_key)) out->key = opts->idempotency_key;
  if (OPT_HAS(opts, idempotency_key_len)) out->key_len = opts->idempotency_key_len;
  if (OPT_HAS(opts, deliver_at_ms)) out->deliver_at_ms = opts->deliver_at_ms;
  if (OPT_HAS(opts, caller)) out->caller = opts->caller;
  if (OPT_HAS(opts, traceparent)) out->traceparent = opts->traceparent;
  return CRUSTER_OK;
}

/* `extra_flags`: flags the library adds itself (the blocking forms' inline
 * callback); they are not the caller's, so they are never reported as such. */
static int submit_ex(sh_sharding *sh, int kind, const char *type, const char *id,
                     const char *method, const void *payload, size_t len,
                     const cruster_call_opts *opts, unsigned extra_flags, cruster_reply_fn fn,
                     void *user, sh_stream *stream,
                     void (*on_item)(sh_sharding *, sh_call *, cruster_request *, em_item *),
                     cruster_error **err) {
  if (!sh) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (kind == SH_CALL_SEND && !fn && !stream)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "a send needs a reply callback");
  int st;
  if ((st = core_check_name("entity type", type, err)) != CRUSTER_OK) return st;
  if ((st = core_check_entity_id(id, err)) != CRUSTER_OK) return st;
  if ((st = core_check_name("method name", method, err)) != CRUSTER_OK) return st;
  if (!payload && len > 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "payload is NULL but len is %zu", len);
  if (core_size_exceeds(len, sh->cfg->max_payload_size))
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "payload of %zu bytes exceeds max_payload_size (%lld bytes)", len,
                          (long long)sh->cfg->max_payload_size);
  sh_call_opts o;
  if ((st = sh_call_opts_read(opts, &o, err)) != CRUSTER_OK) return st;
  unsigned flags = o.flags;
  int64_t timeout = o.timeout_ms, deliver_at = o.deliver_at_ms;
  const void *key = o.key;
  size_t key_len = o.key_len;
  const cruster_request *caller = o.caller;
  const unsigned known = CRUSTER_CALL_PERSISTED | CRUSTER_CALL_INLINE_CALLBACK;
  if (flags & ~known)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "unknown call flags 0x%x in opts.flags 0x%x", flags & ~known, flags);
  if (timeout < 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "timeout_ms must be >= 0, got %lld",
                          (long long)timeout);
  if (deliver_at < 0 || deliver_at > MAX_DELIVER_AT_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "deliver_at_ms must be a Unix time in ms from 0 to %lld "
                          "(9999-12-31T23:59:59.999Z), got %lld",
                          (long long)MAX_DELIVER_AT_MS, (long long)deliver_at);
  if (!key && key_len > 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "idempotency_key is NULL but its length is %zu", key_len);
  if (key && key_len == 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "idempotency_key must not be empty");
  if (key_len > CRUSTER_MAX_KEY_LEN)
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "idempotency key of %zu bytes exceeds %d bytes", key_len, CRUSTER_MAX_KEY_LEN);
  const char *why = NULL;
  if (o.traceparent && !core_traceparent_check(o.traceparent, &why))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "opts.traceparent is not W3C trace context: %s",
                          why);
  if ((st = rt_check_started(sh->loop, err)) != CRUSTER_OK) return st;

  sh_call *c = sh_call_new(type, id, method);
  if (!c) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  c->env = core_env_new(type, id, method, payload, len);
  c->key = key ? core_memdup(key, key_len) : NULL;
  if (!c->env || (key && !c->key)) {
    sh_call_free(c);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  c->key_len = key_len;
  c->kind = kind;
  c->flags = flags | extra_flags;
  c->fn = fn;
  c->user = user;
  /* Only remembered here: the loop checks that it is a request it is
   * handling before it believes it (sh_route), and never reads through it. */
  c->caller = caller;
  c->internal = caller != NULL;
  c->env->deliver_at = deliver_at;
  if (o.traceparent) memcpy(c->env->traceparent, o.traceparent, CORE_TRACEPARENT_LEN + 1);
  /* A streamed call (stream.c): the stream stays the caller's until the
   * call is posted. */
  c->st = stream;
  if (stream) sh_stream_bind(stream, c);
  c->on_item = on_item;
  c->env->stream = stream != NULL;
  c->deadline_ms = rt_deadline_after(core_mono_ms(), timeout > 0 ? timeout : sh->cfg->default_call_timeout);
  if (deliver_at > 0 && timeout == 0) {
    /* A delayed call's default deadline counts from its delivery time. */
    int64_t wait = deliver_at - core_now_ms();
    if (wait > 0) c->deadline_ms = rt_deadline_after(c->deadline_ms, wait);
  }
  c->cmd.fn = sh_route;
  c->cmd.ud = sh;
  if (rt_post(sh->loop, &c->cmd) != 0) {
    sh_call_free(c);
    return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime has stopped");
  }
  return CRUSTER_OK;
}

static int submit(sh_sharding *sh, int kind, const char *type, const char *id,
                  const char *method, const void *payload, size_t len,
                  const cruster_call_opts *opts, unsigned extra_flags, cruster_reply_fn fn,
                  void *user, cruster_error **err) {
  return submit_ex(sh, kind, type, id, method, payload, len, opts, extra_flags, fn, user, NULL,
                   NULL, err);
}

int sh_submit_stream(sh_sharding *sh, const char *type, const char *id, const char *method,
                     const void *payload, size_t len, const cruster_call_opts *opts,
                     unsigned extra_flags, sh_stream *st,
                     void (*on_item)(sh_sharding *, sh_call *, cruster_request *, em_item *),
                     cruster_error **err) {
  return submit_ex(sh, SH_CALL_SEND, type, id, method, payload, len, opts, extra_flags, NULL,
                   NULL, st, on_item, err);
}

cruster_status sh_send(sh_sharding *sh, const char *type, const char *id,
                            const char *method, const void *payload, size_t len,
                            const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                            cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return submit(sh, SH_CALL_SEND, type, id, method, payload, len, opts, 0, fn, user, err);
}

cruster_status sh_notify(sh_sharding *sh, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                              cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return submit(sh, SH_CALL_NOTIFY, type, id, method, payload, len, opts, 0, fn, user, err);
}

/* ---- blocking forms ------------------------------------------------------- */

typedef struct sync_wait {
  uv_mutex_t mu;
  uv_cond_t cv;
  int done;
  int status;
  void *data;
  size_t len;
  char *msg;
} sync_wait;

static void sync_cb(void *user, int status, const void *data, size_t len, const char *msg) {
  sync_wait *w = user;
  void *copy = NULL;
  char *m = NULL;
  if (status == CRUSTER_OK) {
    copy = len < SIZE_MAX ? malloc(len + 1) : NULL;
    if (copy) {
      if (len) memcpy(copy, data, len);
      ((char *)copy)[len] = 0;
    } else {
      status = CRUSTER_E_NOMEM;
    }
  }
  if (status != CRUSTER_OK) m = core_strdup(msg ? msg : cruster_status_message(status));
  uv_mutex_lock(&w->mu);
  w->status = status;
  w->data = copy;
  w->len = len;
  w->msg = m;
  w->done = 1;
  uv_cond_signal(&w->cv);
  uv_mutex_unlock(&w->mu);
}

static int call_sync(sh_sharding *sh, int kind, const char *type, const char *id,
                     const char *method, const void *payload, size_t len,
                     const cruster_call_opts *opts, void **reply, size_t *reply_len,
                     cruster_error **err) {
  if (reply) *reply = NULL;
  if (reply_len) *reply_len = 0;
  if (err) *err = NULL;
  if (sh && rt_on_loop(sh->loop))
    return core_error_set(err, CRUSTER_E_STATE, "blocking calls are not allowed on the loop thread");
  sync_wait w;
  memset(&w, 0, sizeof(w));
  uv_mutex_init(&w.mu);
  uv_cond_init(&w.cv);
  /* The callback only signals this thread: run it on the loop. */
  int st = submit(sh, kind, type, id, method, payload, len, opts, CRUSTER_CALL_INLINE_CALLBACK,
                  sync_cb, &w, err);
  if (st == CRUSTER_OK) {
    rt_pool_block_enter(sh->loop->pool);
    uv_mutex_lock(&w.mu);
    while (!w.done) uv_cond_wait(&w.cv, &w.mu);
    uv_mutex_unlock(&w.mu);
    rt_pool_block_leave(sh->loop->pool);
    st = w.status;
    if (st == CRUSTER_OK) {
      if (reply) *reply = w.data; else free(w.data);
      if (reply_len) *reply_len = w.len;
    } else {
      core_error_set(err, st, "%s", w.msg ? w.msg : cruster_status_message(st));
      free(w.data);
    }
    free(w.msg);
  }
  uv_cond_destroy(&w.cv);
  uv_mutex_destroy(&w.mu);
  return st;
}

cruster_status sh_send_sync(sh_sharding *sh, const char *type, const char *id,
                                 const char *method, const void *payload, size_t len,
                                 const cruster_call_opts *opts, void **reply, size_t *reply_len,
                                 cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return call_sync(sh, SH_CALL_SEND, type, id, method, payload, len, opts, reply, reply_len, err);
}

cruster_status sh_notify_sync(sh_sharding *sh, const char *type, const char *id,
                                   const char *method, const void *payload, size_t len,
                                   const cruster_call_opts *opts, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return call_sync(sh, SH_CALL_NOTIFY, type, id, method, payload, len, opts, NULL, NULL, err);
}
