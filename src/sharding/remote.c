/* Calls across runners. A call whose shard this runner does not own goes to
 * the runner the routing table names (the desired owner); that runner routes
 * it as its own call -- persisted ones are stored by the owner, so its
 * knowledge of its shards' messages stays true (docs/architecture.md) -- and
 * streams the answer back. A call that finds no owner (a move in progress,
 * the owner not yet holding the lock, a runner down) is routed again every
 * send_retry_interval until its deadline. A forwarded call carries its hop
 * count; past SH_MAX_HOPS it is answered CRUSTER_E_NOT_ASSIGNED, which the
 * first runner retries. Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "sharding/cluster.h"

/* A forward in flight: the call, until it completes first. */
typedef struct sh_fwd {
  sh_sharding *sh;
  sh_call *c;
  char to[]; /* the runner's address */
} sh_fwd;

/* ---- the retry list --------------------------------------------------------- */

static void sh_retry_fire(uv_timer_t *t);

static void retry_remove(sh_cluster *cl, sh_call *c) {
  if (!c->retrying) return;
  c->retrying = 0;
  if (c->rprev) c->rprev->rnext = c->rnext;
  else cl->retry_head = c->rnext;
  if (c->rnext) c->rnext->rprev = c->rprev;
  c->rnext = c->rprev = NULL;
}

void sh_retry_later(sh_sharding *sh, sh_call *c) {
  sh_cluster *cl = sh->cl;
  core_metric_add(cl->m_retries, 1);
  c->retrying = 1;
  c->rprev = NULL;
  c->rnext = cl->retry_head;
  if (cl->retry_head) cl->retry_head->rprev = c;
  cl->retry_head = c;
  if (!uv_is_active((uv_handle_t *)&cl->retry_timer))
    uv_timer_start(&cl->retry_timer, sh_retry_fire, (uint64_t)sh->cfg->send_retry_interval, 0);
}

static void sh_retry_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  sh_cluster *cl = sh->cl;
  sh_call *list = cl->retry_head;
  cl->retry_head = NULL;
  while (list) {
    sh_call *c = list;
    list = c->rnext;
    c->retrying = 0;
    c->rnext = c->rprev = NULL;
    if (sh->stopping) {
      sh_call_complete(sh, c, CRUSTER_E_SHUTTING_DOWN, NULL, 0, "the runtime is shutting down");
      continue;
    }
    if (sh_owns(sh, c->env->group, c->env->shard)) sh_route_owned(sh, c);
    else sh_route_remote(sh, c);
  }
}

void sh_remote_detach(sh_sharding *sh, sh_call *c) {
  if (!sh->cl) return;
  retry_remove(sh->cl, c);
  if (c->fwd) {
    sh_fwd *f = c->fwd;
    c->fwd = NULL;
    f->c = NULL; /* its exit frees it */
    if (c->fwd_call) {
      tp_call *tc = c->fwd_call;
      c->fwd_call = NULL;
      tp_call_cancel(tc);
    }
  }
}

void sh_remote_describe(const sh_call *c, char *buf, size_t cap) {
  if (!cap) return;
  buf[0] = 0;
  if (c->fwd_err) snprintf(buf, cap, "%s", c->fwd_err);
  else if (c->fwd) snprintf(buf, cap, "; the forward to runner %.100s had not answered", c->fwd->to);
}

/* ---- forwarding ------------------------------------------------------------- */

static int retryable(int status) {
  return status == CRUSTER_E_NOT_ASSIGNED || status == CRUSTER_E_RUNNER_UNAVAILABLE ||
         status == CRUSTER_E_SHUTTING_DOWN;
}

static void fwd_exit(void *ud, int status, const void *data, size_t len, const char *msg) {
  sh_fwd *f = ud;
  sh_sharding *sh = f->sh;
  sh_call *c = f->c;
  if (!c) {
    free(f);
    return; /* the call completed first (deadline) */
  }
  c->fwd = NULL;
  c->fwd_call = NULL;
  int32_t items = c->st ? sh_stream_received(c) : 0;
  if (retryable(status) && !sh->stopping && items == 0) {
    /* Kept for the deadline's message (the call fails with
     * CRUSTER_E_TIMEOUT if no forward succeeds before it). */
    char buf[640];
    snprintf(buf, sizeof(buf), "; the last forward failed: runner %.100s: %.400s (%s)", f->to,
             msg && *msg ? msg : cruster_status_message(status), cruster_status_name(status));
    char *why = core_strdup(buf);
    if (why) {
      free(c->fwd_err);
      c->fwd_err = why;
    }
    free(f);
    sh_retry_later(sh, c);
    return;
  }
  free(f);
  if (retryable(status) && items > 0) {
    /* A stream that broke after it delivered items is never sent again
     * (its handler would run twice): the caller gets the break. */
    char text[700];
    snprintf(text, sizeof(text), "the stream broke after %ld items: %s", (long)items,
             msg && *msg ? msg : cruster_status_message(status));
    sh_call_complete(sh, c, status, NULL, 0, text);
    return;
  }
  sh_call_complete(sh, c, status, data, len, msg && *msg ? msg : NULL);
}

/* A chunk of a streamed call's answer, from the owner (in order). */
static void fwd_chunk(void *ud, int32_t seq, const void *data, size_t len) {
  sh_fwd *f = ud;
  sh_call *c = f->c;
  (void)seq; /* the transport checked the order */
  if (!c || !c->st) return;
  em_item *it = malloc(sizeof(*it) + (len ? len : 1));
  if (!it) {
    sh_call_complete(f->sh, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory receiving an item");
    return;
  }
  it->next = NULL;
  it->len = len;
  if (len) memcpy(it->data, data, len);
  sh_stream_push(f->sh, c, it);
}

void sh_route_remote(sh_sharding *sh, sh_call *c) {
  sh_cluster *cl = sh->cl;
  core_env *env = c->env;
  size_t g = 0;
  for (; g < sh->cfg->n_shard_groups; g++)
    if (strcmp(sh->cfg->shard_groups[g], env->group) == 0) break;
  int32_t owner = -1;
  if (g < sh->cfg->n_shard_groups && env->shard >= 0 && env->shard < sh->cfg->shards_per_group)
    owner = cl->route[g * (size_t)sh->cfg->shards_per_group + (size_t)env->shard];
  if (owner < 0 || (size_t)owner >= cl->n_runners || cl->detached ||
      strcmp(cl->runners[owner], cl->me) == 0) {
    if (c->remote) {
      /* Sent here by a runner that thinks this one owns the shard: it does
       * not (yet, or any more). The sender routes it again. */
      char msg[CRUSTER_MAX_NAME_LEN + 128];
      snprintf(msg, sizeof(msg), "shard %s:%d is not owned by runner %s", env->group,
               (int)env->shard, cl->me);
      sh_call_complete(sh, c, CRUSTER_E_NOT_ASSIGNED, NULL, 0, msg);
      return;
    }
    /* Nobody, or this runner before its lock is held: later. */
    char buf[CRUSTER_MAX_NAME_LEN + 160];
    snprintf(buf, sizeof(buf), "; shard %s:%d had no owner to forward to (a move in progress%s)", env->group,
             (int)env->shard, cl->detached ? ", this runner detached from the registry" : "");
    char *why = core_strdup(buf);
    if (why) {
      free(c->fwd_err);
      c->fwd_err = why;
    }
    sh_retry_later(sh, c);
    return;
  }
  if (c->hops >= SH_MAX_HOPS) {
    char msg[CRUSTER_MAX_NAME_LEN + 128];
    snprintf(msg, sizeof(msg), "shard %s:%d is not owned here and the call was forwarded %d times",
             env->group, (int)env->shard, (int)c->hops);
    sh_call_complete(sh, c, CRUSTER_E_NOT_ASSIGNED, NULL, 0, msg);
    return;
  }
  size_t to_len = strlen(cl->runners[owner]);
  sh_fwd *f = calloc(1, sizeof(*f) + to_len + 1);
  if (!f) {
    sh_call_complete(sh, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
    return;
  }
  f->sh = sh;
  f->c = c;
  memcpy(f->to, cl->runners[owner], to_len + 1);
  c->fwd = f;
  int64_t remaining = c->deadline_ms - core_mono_ms();
  if (remaining < 1) remaining = 1;
  tp_meta meta;
  memset(&meta, 0, sizeof(meta));
  meta.hops = c->hops + 1;
  meta.timeout_ms = remaining;
  meta.key = c->key;
  meta.key_len = c->key_len;
  meta.traceparent = env->traceparent[0] ? env->traceparent : NULL;
  meta.stream = c->st != NULL;
  env->persisted = (c->flags & CRUSTER_CALL_PERSISTED) != 0;
  core_metric_add(cl->m_forwarded, 1);
  tp_call *tc = NULL;
  if (c->kind == SH_CALL_SEND)
    tp_call_send(cl->tp, cl->runners[owner], env, &meta, remaining, c->st ? fwd_chunk : NULL,
                 fwd_exit, f, &tc);
  else
    tp_call_notify(cl->tp, cl->runners[owner], env, &meta, remaining, fwd_exit, f, &tc);
  /* (The exit never fires inside the call.) */
  if (c->fwd == f) c->fwd_call = tc;
}

/* ---- calls from other runners ------------------------------------------------ */

/* The answer goes back over the call it came in. */
typedef struct sh_rmt {
  tp_reply *r;
  sh_call *c; /* NULL once answered */
} sh_rmt;

static void rmt_answer(void *user, int status, const void *data, size_t len, const char *msg) {
  sh_rmt *x = user;
  tp_reply_exit(x->r, status, data, len, msg);
  free(x);
}

/* An item of a streamed call received from another runner: a chunk back.
 * Its handler gets room for another once the chunk is sent (on_sent). */
static void rmt_item(sh_sharding *sh, sh_call *c, cruster_request *r, em_item *it) {
  (void)r;
  sh_rmt *x = c->rmt;
  size_t len = it->len;
  int st = tp_reply_chunk(x->r, it->data, len);
  free(it);
  if (st == CRUSTER_OK) return;
  char text[200];
  if (st == CRUSTER_E_PAYLOAD_TOO_LARGE)
    snprintf(text, sizeof(text),
             "an item of %zu bytes is over the transport's limit (transport_max_message_size %lld)",
             len, (long long)sh->cfg->transport_max_message_size);
  else
    snprintf(text, sizeof(text), "the stream's item could not be sent: %s",
             cruster_status_message(st));
  sh_call_complete(sh, c, st, NULL, 0, text);
}

static void received(sh_sharding *sh, int kind, core_env *env, const tp_meta *meta, tp_reply *r) {
  if (sh->cl) core_metric_add(sh->cl->m_remote_received, 1);
  sh_rmt *x = calloc(1, sizeof(*x));
  sh_call *c = x ? sh_call_new(env->type, env->id, env->method) : NULL;
  void *key = NULL;
  if (c && meta && meta->key && meta->key_len > 0 && meta->key_len <= CRUSTER_MAX_KEY_LEN) {
    key = malloc(meta->key_len);
    if (key) memcpy(key, meta->key, meta->key_len);
  }
  if (!x || !c || (meta && meta->key && meta->key_len > 0 && !key)) {
    free(x);
    free(key);
    if (c) sh_call_free(c);
    free(env);
    tp_reply_exit(r, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
    return;
  }
  if (meta && meta->key_len > CRUSTER_MAX_KEY_LEN) {
    free(x);
    sh_call_free(c);
    free(env);
    tp_reply_exit(r, CRUSTER_E_PAYLOAD_TOO_LARGE, NULL, 0, "idempotency key too long");
    return;
  }
  x->r = r;
  x->c = c;
  c->cmd.ud = sh;
  c->kind = kind;
  c->flags = CRUSTER_CALL_INLINE_CALLBACK | (env->persisted ? CRUSTER_CALL_PERSISTED : 0u);
  c->internal = env->internal;
  c->hops = meta ? meta->hops : 0;
  int64_t timeout = meta && meta->timeout_ms > 0 ? meta->timeout_ms : sh->cfg->default_call_timeout;
  c->deadline_ms = rt_deadline_after(core_mono_ms(), timeout);
  c->key = key;
  c->key_len = key ? meta->key_len : 0;
  c->fn = rmt_answer;
  c->user = x;
  c->remote = 1;
  c->env = env;
  /* The caller's trace context, when it is one (the wire checks only its
   * alphabet and length). */
  env->traceparent[0] = 0;
  if (meta && meta->traceparent && core_traceparent_check(meta->traceparent, NULL))
    memcpy(env->traceparent, meta->traceparent, CORE_TRACEPARENT_LEN + 1);
  c->rmt = x;
  tp_reply_set_host_ud(r, x);
  if (kind == SH_CALL_SEND && meta && meta->stream) {
    env->stream = 1;
    c->on_item = rmt_item;
  } else {
    env->stream = 0;
  }
  env->request_id = 0;
  env->keyed = 0;
  env->fresh = 0;
  sh_route(sh, &c->cmd);
}

static void on_send(void *ud, core_env *env, const tp_meta *meta, tp_reply *r) {
  received(ud, SH_CALL_SEND, env, meta, r);
}

static void on_notify(void *ud, core_env *env, const tp_meta *meta, tp_reply *r) {
  received(ud, SH_CALL_NOTIFY, env, meta, r);
}

static void on_interrupt(void *ud, const char *type, const char *id, const char *group,
                         int32_t shard, tp_reply *r) {
  (void)ud;
  (void)type;
  (void)id;
  (void)group;
  (void)shard;
  tp_reply_exit(r, CRUSTER_E_INVALID_ARGUMENT, NULL, 0,
                "interrupting a single entity from another runner is not supported");
}

/* The caller of a received call went away: its handler is cancelled (a
 * streamed one's yields fail); the exit is still given (rmt_answer). */
static void on_cancelled(void *ud, tp_reply *r) {
  sh_rmt *x = tp_reply_host_ud(r);
  if (!x || !x->c) return;
  sh_call_complete(ud, x->c, CRUSTER_E_CANCELLED, NULL, 0, "the remote caller went away");
}

/* A chunk went out: the handler may yield one more. */
static void on_sent(void *ud, tp_reply *r) {
  (void)ud;
  sh_rmt *x = tp_reply_host_ud(r);
  if (x && x->c && x->c->req) em_request_stream_credit(x->c->req, 1);
}

const tp_host sh_tp_host_template = {NULL,         on_send, on_notify, on_interrupt,
                                     on_cancelled, on_sent};
