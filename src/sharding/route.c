/* Routing calls to entities (single-node: every shard is local) and the
 * persisted path: store first, then push to the owner; the poll loop is the
 * safety net that redelivers what was not answered. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/sharding_internal.h"
#include "storage/storage_internal.h"

static void reject(cruster_runtime *rt, rt_call *c, int status, const char *msg) {
  core_metric_add(rt->m.calls_rejected, 1);
  rt_call_complete(rt, c, status, NULL, 0, msg);
}

/* ---- persisted ------------------------------------------------------------ */

/* The speculative delivery learns how its save went (it may free itself). */
static void spec_saved(cruster_runtime *rt, rt_save *s, int ok) {
  cruster_request *r = s->req;
  if (!r) return;
  s->req = NULL;
  em_hold_end(&rt->em, r, ok);
}

static void save_free(rt_save *s) {
  if (s->call) s->call->save = NULL;
  /* (A speculative delivery still held here -- none is: they are unkeyed,
   * and only keyed saves end without spec_saved -- is not accepted.) */
  spec_saved(s->rt, s, 0);
  free(s->env);
  free(s);
}

/* ---- what the entity manager tells a deliverer (em_sink) --------------------- */

/* A non-persisted send: the delivery answers its call (cmd.ud: the runtime). */
static void call_answered(void *ud, cruster_request *r) {
  rt_call *c = ud;
  cruster_runtime *rt = c->cmd.ud;
  rt_call_complete(rt, c, r->status, r->reply, r->reply_len, r->errmsg);
  em_request_free(&rt->em, r);
}

static void call_dropped(void *ud, cruster_request *r) {
  rt_call *c = ud;
  (void)r;
  rt_call_complete(c->cmd.ud, c, CRUSTER_E_INTERRUPTED, NULL, 0,
                   "entity interrupted due to shard movement or shutdown");
}

static void call_unbound(void *ud, cruster_request *r) {
  rt_call *c = ud;
  (void)r;
  c->req = NULL;
}

static const em_sink call_sink = {call_answered, call_dropped, call_unbound, NULL};

static void persist_done(void *ud, int status, const char *errmsg) {
  cruster_request *r = ud;
  cruster_runtime *rt = r->ud;
  if (status != CRUSTER_OK) {
    /* The reply is not durable: give the message back so it runs again. */
    core_metric_add(rt->m.st_errors, 1);
    core_log(rt->lg, CRUSTER_LOG_ERROR, "storage", "saving the reply of request %lld failed: %s",
             (long long)r->env->request_id, errmsg ? errmsg : cruster_status_message(status));
    rt->storage->ops->release(rt->storage, r->env, 1);
    rt_poll_schedule(rt, rt->cfg->send_retry_interval);
  } else {
    core_metric_add(rt->m.st_replies, 1);
    rt_waiters_resolve(rt, r->env->request_id, r->status, r->reply, r->reply_len, r->errmsg);
  }
  em_request_free(&rt->em, r);
}

/* A persisted delivery answered (and its message is stored): record the
 * answer. The delivery stays ours until the answer is stored. */
static void persisted_answered(void *ud, cruster_request *r) {
  cruster_runtime *rt = ud;
  /* An unkeyed message's answer can never be asked for again, so its
   * caller need not wait for it to be stored: the stored request is what
   * makes it at-least-once (a crash before the answer is recorded runs it
   * again). A keyed one's answer must be durable first: repeats return it. */
  if (!r->env->keyed)
    rt_waiters_resolve(rt, r->env->request_id, r->status, r->reply, r->reply_len, r->errmsg);
  st_reply rep = {r->status, r->reply, r->reply_len, r->errmsg};
  rt->storage->ops->save_reply(rt->storage, r->env, &rep, persist_done, r);
}

/* Stop: a claimed message that never reached its handler goes back. */
static void persisted_dropped(void *ud, cruster_request *r) {
  cruster_runtime *rt = ud;
  rt->storage->ops->release(rt->storage, r->env, 0);
}

/* The speculative delivery bound to `hold` (an rt_save) is gone. */
static void save_unbound(void *hold) {
  rt_save *s = hold;
  s->req = NULL;
}

static const em_sink persisted_sink = {persisted_answered, persisted_dropped, NULL, save_unbound};

/* A claimed message em_deliver refused (status `st`) stays in storage for
 * the poll loop. A full mailbox asks for a poll itself when it has room. */
static void give_back(cruster_runtime *rt, const core_env *env, int st) {
  rt->storage->ops->release(rt->storage, env, 0);
  if (st != CRUSTER_E_MAILBOX_FULL && st != CRUSTER_E_SHUTTING_DOWN)
    rt_poll_schedule(rt, rt->cfg->send_retry_interval);
}

static void deliver_persisted(cruster_runtime *rt, em_type *t, int rpc_index, core_env *env) {
  int st = em_deliver(&rt->em, t, env, rpc_index, &persisted_sink, rt, NULL, NULL);
  if (st == CRUSTER_OK) return;
  give_back(rt, env, st);
  free(env);
}

static void on_saved(void *ud, int status, const char *errmsg, const st_saved *saved) {
  rt_save *s = ud;
  cruster_runtime *rt = s->rt;
  rt_call *c = s->call;
  st_save_result r = saved->result;
  const st_reply *existing = saved->existing;
  if (status == CRUSTER_E_CONFLICT) {
    if (c) rt_call_complete(rt, c, status, NULL, 0, errmsg);
    save_free(s);
    return;
  }
  if (status != CRUSTER_OK) {
    core_metric_add(rt->m.st_errors, 1);
    core_log(rt->lg, CRUSTER_LOG_ERROR, "storage", "storing a message for %s/%s failed: %s",
             s->env->type, s->env->id, errmsg ? errmsg : cruster_status_message(status));
    if (c) {
      char msg[512];
      snprintf(msg, sizeof(msg), "message storage failed: %s",
               errmsg ? errmsg : cruster_status_message(status));
      rt_call_complete(rt, c, CRUSTER_E_PERSISTENCE, NULL, 0, msg);
    }
    spec_saved(rt, s, 0);
    save_free(s);
    return;
  }
  /* A keyed call's id is known now: its PRID, or another candidate when the
   * PRID holds another call's identity. Its caller waits on it from here:
   * before, the id could still be another call's, whose answer it must
   * never get. (An answer to this identity completes on the entity's
   * storage connection after this result, or this result saw it.) */
  s->env->request_id = saved->request_id;
  if (c && s->env->keyed && c->kind == RT_CALL_SEND) {
    c->request_id = saved->request_id;
    if (rt_waiter_add(rt, c) != 0) {
      rt_call_complete(rt, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
      c = NULL;
    }
  }
  if ((r == ST_DUPLICATE_PENDING || r == ST_DUPLICATE_REPLIED) && !saved->same_payload &&
      rt->cfg->idempotency_strict_payload) {
    core_metric_add(rt->m.st_duplicates, 1);
    if (c) {
      char msg[CRUSTER_MAX_NAME_LEN * 2 + CRUSTER_MAX_ENTITY_ID_LEN + 160];
      snprintf(msg, sizeof(msg),
               "idempotency key already used for a call to %s/%s '%s' with a different payload "
               "(idempotency_strict_payload)",
               s->env->type, s->env->id, s->env->method);
      rt_call_complete(rt, c, CRUSTER_E_CONFLICT, NULL, 0, msg);
    }
    save_free(s);
    return;
  }
  /* Count first: a caller woken by the acceptance may read the metrics. */
  if (r == ST_SAVED || r == ST_SAVED_QUEUED) core_metric_add(rt->m.st_saved, 1);
  else core_metric_add(rt->m.st_duplicates, 1);
  if (r == ST_SAVED_QUEUED) core_metric_add(rt->m.st_queued, 1);
  /* Stored (now or before): a notify is accepted. */
  if (c && c->kind == RT_CALL_NOTIFY) rt_call_complete(rt, c, CRUSTER_OK, NULL, 0, NULL);
  if (s->spec && s->req) {
    /* Handed to its handler already; its answer may now be acted on. */
    spec_saved(rt, s, 1);
  } else if (s->spec) {
    /* Stored claimed, but not handled here (no room, stop, or dropped from
     * the mailbox at stop): give it back to the poll. */
    give_back(rt, s->env, s->spec_status);
  } else if (r == ST_SAVED && s->claim && !rt->stopping && !rt->closed) {
    core_env *env = s->env;
    s->env = NULL;
    deliver_persisted(rt, s->type, s->rpc_index, env);
  } else if (r == ST_SAVED && s->claim) {
    rt->storage->ops->release(rt->storage, s->env, 0);
  } else if (r == ST_SAVED) {
    int64_t delay = s->env->deliver_at - core_now_ms();
    rt_poll_schedule(rt, delay > 0 ? delay : 0);
  } else if (r == ST_DUPLICATE_REPLIED && existing) {
    /* Idempotency: the stored answer, without running again. */
    rt_waiters_resolve(rt, s->env->request_id, existing->status, existing->data, existing->len,
                       existing->message);
  } else {
    /* Queued behind older messages of its entity, or a pending duplicate:
     * the poll delivers it in order. */
    rt_poll_schedule(rt, 0);
  }
  save_free(s);
}

static void route_persisted(cruster_runtime *rt, rt_call *c, em_type *t, int rpc_index) {
  core_env *env = c->env;
  if (!rt->storage) {
    reject(rt, c, CRUSTER_E_PERSISTENCE,
           "this call is persisted but the runtime has no message storage");
    return;
  }
  env->persisted = 1;
  if (c->key) {
    env->request_id = cruster_persisted_request_id(env->type, env->id, env->method, c->key, c->key_len);
    env->keyed = 1;
  } else if (core_snowflake_next(&rt->snowflake, &env->request_id) != CRUSTER_OK) {
    reject(rt, c, CRUSTER_E_CLOCK_DRIFT, "the clock moved backwards by more than 5 s");
    return;
  }
  c->request_id = env->request_id;
  rt_save *s = calloc(1, sizeof(*s));
  /* An unkeyed call's id is fresh: its caller waits on it at once. A keyed
   * one waits once the storage said which id holds it (on_saved). */
  if (!s || (c->kind == RT_CALL_SEND && !c->key && rt_waiter_add(rt, c) != 0)) {
    free(s);
    reject(rt, c, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  s->rt = rt;
  s->env = env;
  c->env = NULL;
  s->type = t;
  s->rpc_index = rpc_index;
  s->claim = env->deliver_at <= core_now_ms();
  s->call = c;
  c->save = s;
  /* When the storage knows the message will be stored claimed (nothing older
   * of its entity waits), its handler may run while it is being stored; the
   * answer is acted on only once it is (on_saved). */
  if (s->claim && !rt->stopping && rt->storage->ops->claims_now &&
      rt->storage->ops->claims_now(rt->storage, s->env)) {
    core_env *copy = core_env_copy(s->env);
    if (copy) {
      s->spec = 1;
      s->spec_status = em_deliver(&rt->em, t, copy, rpc_index, &persisted_sink, rt, s, &s->req);
      if (s->spec_status != CRUSTER_OK) free(copy); /* else s->req is the delivery */
    }
  }
  st_key key = {c->key, c->key_len};
  rt->storage->ops->save_request(rt->storage, s->env, c->key ? &key : NULL, s->claim, on_saved, s);
}

/* ---- routing --------------------------------------------------------------- */

void rt_route(void *ud, rt_cmd *cmd) {
  cruster_runtime *rt = ud;
  rt_call *c = (rt_call *)cmd;
  c->heap_idx = SIZE_MAX;
  if (atomic_load(&rt->loop.state) != RT_STARTED || rt->stopping || rt->closed) {
    rt_call_complete(rt, c, CRUSTER_E_SHUTTING_DOWN, NULL, 0, "the runtime is shutting down");
    return;
  }
  if (rt_heap_insert(rt, c) != 0) {
    rt_call_complete(rt, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
    return;
  }
  core_env *env = c->env;
  em_type *t = em_type_find(&rt->em, env->type);
  char msg[CRUSTER_MAX_NAME_LEN * 2 + 128];
  if (!t) {
    snprintf(msg, sizeof(msg), "no entity type '%s' is registered", env->type);
    reject(rt, c, CRUSTER_E_UNKNOWN_ENTITY_TYPE, msg);
    return;
  }
  if (c->caller && !em_request_is_running(&rt->em, c->caller)) {
    /* Only a request this runtime is handling makes a call internal: a made
     * up, stale or foreign pointer must not open protected methods. */
    reject(rt, c, CRUSTER_E_FORBIDDEN,
           "opts.caller is not a request this runtime is handling (not a request handle, "
           "already answered, or of another runtime)");
    return;
  }
  int idx = em_lookup_rpc(t, env->method, c->internal, msg, sizeof(msg));
  if (idx < 0) {
    reject(rt, c, idx, msg);
    return;
  }
  const em_rpc *rpc = &t->rpcs.v[idx];
  snprintf(env->group, sizeof(env->group), "%s", t->shard_group);
  env->shard = cruster_shard_for(env->id, strlen(env->id), (int32_t)rt->cfg->shards_per_group);
  env->internal = (unsigned char)c->internal;
  env->is_request = c->kind == RT_CALL_SEND;
  if ((rpc->flags & CRUSTER_RPC_PERSISTED) || (c->flags & CRUSTER_CALL_PERSISTED) ||
      env->deliver_at > 0 || c->key) {
    route_persisted(rt, c, t, idx);
    return;
  }
  if (core_snowflake_next(&rt->snowflake, &env->request_id) != CRUSTER_OK) {
    reject(rt, c, CRUSTER_E_CLOCK_DRIFT, "the clock moved backwards by more than 5 s");
    return;
  }
  c->request_id = env->request_id;
  int st = c->kind == RT_CALL_SEND ? em_deliver(&rt->em, t, env, idx, &call_sink, c, NULL, &c->req)
                                    : em_deliver(&rt->em, t, env, idx, NULL, NULL, NULL, NULL);
  if (st != CRUSTER_OK) {
    if (st == CRUSTER_E_MAILBOX_FULL)
      snprintf(msg, sizeof(msg), "the mailbox of %s/%s is full (capacity %lld)", env->type, env->id,
               (long long)t->mailbox);
    else
      snprintf(msg, sizeof(msg), "%s", cruster_status_message(st));
    reject(rt, c, st, msg);
    return;
  }
  c->env = NULL; /* the delivery owns it now */
  if (c->kind == RT_CALL_NOTIFY) rt_call_complete(rt, c, CRUSTER_OK, NULL, 0, NULL);
}

/* ---- the poll loop ---------------------------------------------------------- */

void rt_poll_schedule(cruster_runtime *rt, int64_t delay_ms) {
  if (!rt->storage || atomic_load(&rt->loop.state) != RT_STARTED || rt->stopping || rt->closed) return;
  if (delay_ms < 0) delay_ms = 0;
  if (uv_is_active((uv_handle_t *)&rt->poll_timer) &&
      (int64_t)uv_timer_get_due_in(&rt->poll_timer) <= delay_ms)
    return;
  if (rt->poll_scheduled) {
    /* A poll is running and may have read storage before what this wake-up
     * is about: remember it, the poll honours it when it ends. */
    int64_t at = rt_deadline_after(core_mono_ms(), delay_ms);
    if (rt->poll_again_at == 0 || at < rt->poll_again_at) rt->poll_again_at = at;
    return;
  }
  uv_timer_start(&rt->poll_timer, rt_poll_fire, (uint64_t)delay_ms, 0);
}

static void on_polled(void *ud, int status, const char *errmsg, core_env **msgs, size_t n,
                      const int64_t *dead, size_t ndead) {
  cruster_runtime *rt = ud;
  rt->poll_scheduled = 0;
  /* Wake-ups asked for while this poll ran (it may not have seen their
   * messages) */
  int64_t again = rt->poll_again_at;
  rt->poll_again_at = 0;
  if (again) rt_poll_schedule(rt, again - core_mono_ms());
  if (status == CRUSTER_E_SHUTTING_DOWN) return;
  if (status != CRUSTER_OK) {
    core_metric_add(rt->m.st_errors, 1);
    core_log(rt->lg, CRUSTER_LOG_WARN, "storage", "polling message storage failed: %s",
             errmsg ? errmsg : cruster_status_message(status));
    rt_poll_schedule(rt, rt->cfg->storage_poll_interval);
    return;
  }
  for (size_t i = 0; i < ndead; i++) {
    core_metric_add(rt->m.st_dead_letters, 1);
    char msg[160];
    snprintf(msg, sizeof(msg), "message %lld became a dead letter after %lld delivery attempts",
             (long long)dead[i], (long long)rt->cfg->storage_message_max_retries + 1);
    core_log(rt->lg, CRUSTER_LOG_WARN, "storage", "%s", msg);
    rt_waiters_resolve(rt, dead[i], CRUSTER_E_DEAD_LETTER, NULL, 0, msg);
  }
  for (size_t i = 0; i < n; i++) {
    core_env *env = msgs[i];
    em_type *t = em_type_find(&rt->em, env->type);
    if (!t || rt->stopping || rt->closed) {
      if (!t)
        core_log(rt->lg, CRUSTER_LOG_WARN, "storage",
                 "stored message %lld is for entity type '%s', which is not registered here",
                 (long long)env->request_id, env->type);
      rt->storage->ops->release(rt->storage, env, 0);
      free(env);
      continue;
    }
    char msg[CRUSTER_MAX_NAME_LEN * 2 + 128];
    int idx = em_lookup_rpc(t, env->method, env->internal, msg, sizeof(msg));
    if (idx < 0) {
      st_reply rep = {idx, NULL, 0, msg};
      rt->storage->ops->save_reply(rt->storage, env, &rep, NULL, NULL);
      rt_waiters_resolve(rt, env->request_id, idx, NULL, 0, msg);
      free(env);
      continue;
    }
    deliver_persisted(rt, t, idx, env);
  }
  if (n > 0 && n >= (size_t)rt->cfg->storage_inbox_size) {
    rt_poll_schedule(rt, 0);
    return;
  }
  int64_t delay = rt->cfg->storage_poll_interval;
  int64_t due = rt->storage->ops->next_due(rt->storage);
  if (due > 0 && due - core_now_ms() < delay) delay = due - core_now_ms();
  rt_poll_schedule(rt, delay);
}

void rt_poll_fire(uv_timer_t *t) {
  cruster_runtime *rt = t->data;
  if (!rt->storage || rt->stopping || rt->closed) return;
  rt->poll_scheduled = 1;
  core_metric_add(rt->m.st_polls, 1);
  rt->storage->ops->poll(rt->storage, core_now_ms(), (size_t)rt->cfg->storage_inbox_size,
                         rt->cfg->storage_message_max_retries, NULL, NULL, on_polled, rt);
}
