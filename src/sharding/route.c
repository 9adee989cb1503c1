/* Routing calls to entities (single-node: every shard is local) and the
 * persisted path: store first, then push to the owner; the poll loop is the
 * safety net that redelivers what was not answered. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/cluster.h"
#include "sharding/sharding_internal.h"
#include "storage/storage_internal.h"

static void reject(sh_sharding *sh, sh_call *c, int status, const char *msg) {
  core_metric_add(sh->m.calls_rejected, 1);
  sh_call_complete(sh, c, status, NULL, 0, msg);
}

/* ---- persisted ------------------------------------------------------------ */

/* The speculative delivery learns how its save went (it may free itself). */
static void spec_saved(sh_sharding *sh, sh_save *s, int ok) {
  cruster_request *r = s->req;
  if (!r) return;
  s->req = NULL;
  em_hold_end(sh->em, r, ok);
}

static void save_free(sh_save *s) {
  if (s->call) s->call->save = NULL;
  /* (A speculative delivery still held here -- none is: they are unkeyed,
   * and only keyed saves end without spec_saved -- is not accepted.) */
  spec_saved(s->sh, s, 0);
  free(s->env);
  free(s);
}

/* ---- what the entity manager tells a deliverer (em_sink) --------------------- */

/* A non-persisted send: the delivery answers its call (cmd.ud: its sh_sharding). */
static void call_answered(void *ud, cruster_request *r) {
  sh_call *c = ud;
  sh_sharding *sh = c->cmd.ud;
  sh_call_complete(sh, c, r->status, r->reply, r->reply_len, r->errmsg);
  em_request_free(sh->em, r);
}

static void call_dropped(void *ud, cruster_request *r) {
  sh_call *c = ud;
  (void)r;
  sh_call_complete(c->cmd.ud, c, CRUSTER_E_INTERRUPTED, NULL, 0,
                   "entity interrupted due to shard movement or shutdown");
}

static void call_unbound(void *ud, cruster_request *r) {
  sh_call *c = ud;
  (void)r;
  c->req = NULL;
}

/* A streamed call's item: to the caller's stream or the remote caller. */
static void call_item(void *ud, cruster_request *r, em_item *it) {
  sh_call *c = ud;
  if (c->on_item) c->on_item(c->cmd.ud, c, r, it);
  else free(it);
}

static const em_sink call_sink = {call_answered, call_dropped, call_item, call_unbound, NULL};

static void persist_done(void *ud, int status, const char *errmsg) {
  cruster_request *r = ud;
  sh_sharding *sh = r->ud;
  if (status != CRUSTER_OK) {
    /* The reply is not durable: give the message back so it runs again. */
    core_metric_add(sh->m.st_errors, 1);
    core_log(sh->lg, CRUSTER_LOG_ERROR, "storage", "saving the reply of request %lld failed: %s",
             (long long)r->env->request_id, errmsg ? errmsg : cruster_status_message(status));
    sh->storage->ops->release(sh->storage, r->env, 1);
    sh_poll_schedule(sh, sh->cfg->send_retry_interval);
  } else {
    core_metric_add(sh->m.st_replies, 1);
    sh_waiters_resolve(sh, r->env->request_id, r->status, r->reply, r->reply_len, r->errmsg);
  }
  em_request_free(sh->em, r);
}

/* A persisted delivery answered (and its message is stored): record the
 * answer. The delivery stays ours until the answer is stored. */
static void park_done(void *ud, int status, const char *errmsg) {
  cruster_request *r = ud;
  sh_sharding *sh = r->ud;
  if (status != CRUSTER_OK) {
    /* Still claimed: the reconcile after the storage's trouble gives it
     * back, and the poll delivers it again. */
    core_metric_add(sh->m.st_errors, 1);
    core_log(sh->lg, CRUSTER_LOG_WARN, "storage", "parking message %lld failed: %s",
             (long long)r->env->request_id, errmsg ? errmsg : cruster_status_message(status));
  }
  sh_poll_schedule(sh, 0); /* when it is due: the next poll's timer follows next_due */
  em_request_free(sh->em, r);
}

static void persisted_answered(void *ud, cruster_request *r) {
  sh_sharding *sh = ud;
  if (r->tx_failed) {
    /* A transactional handler's transaction did not commit: neither its
     * SQL nor a reply is stored; the message runs again. */
    core_metric_add(sh->m.st_errors, 1);
    core_log(sh->lg, CRUSTER_LOG_WARN, "storage",
             "the transaction of request %lld did not commit (%s); it runs again",
             (long long)r->env->request_id, r->errmsg ? r->errmsg : "commit failed");
    sh->storage->ops->release(sh->storage, r->env, 1);
    sh_poll_schedule(sh, sh->cfg->send_retry_interval);
    em_request_free(sh->em, r);
    return;
  }
  if (r->tx_committed) {
    /* Its reply is stored and committed with its SQL. */
    if (sh->storage->ops->replied) sh->storage->ops->replied(sh->storage, r->env);
    core_metric_add(sh->m.st_replies, 1);
    sh_waiters_resolve(sh, r->env->request_id, r->status, r->reply, r->reply_len, r->errmsg);
    em_request_free(sh->em, r);
    return;
  }
  if (r->parked) {
    /* No answer: a suspended workflow execution gives its message back,
     * due again when its wait ends. Nobody is answered. */
    sh->storage->ops->park(sh->storage, r->env, r->park_at, r->park_seq, r->park_progress,
                           park_done, r);
    return;
  }
  /* An unkeyed message's answer can never be asked for again, so its
   * caller need not wait for it to be stored: the stored request is what
   * makes it at-least-once (a crash before the answer is recorded runs it
   * again). A keyed one's answer must be durable first: repeats return it. */
  if (!r->env->keyed)
    sh_waiters_resolve(sh, r->env->request_id, r->status, r->reply, r->reply_len, r->errmsg);
  st_reply rep = {r->status, r->reply, r->reply_len, r->errmsg};
  sh->storage->ops->save_reply(sh->storage, r->env, &rep, persist_done, r);
}

/* Stop: a claimed message that never reached its handler goes back. */
static void persisted_dropped(void *ud, cruster_request *r) {
  sh_sharding *sh = ud;
  sh->storage->ops->release(sh->storage, r->env, 0);
}

/* The speculative delivery bound to `hold` (an sh_save) is gone. */
static void save_unbound(void *hold) {
  sh_save *s = hold;
  s->req = NULL;
}

static const em_sink persisted_sink = {persisted_answered, persisted_dropped, NULL, NULL,
                                       save_unbound};

/* A claimed message em_deliver refused (status `st`) stays in storage for
 * the poll loop. A full mailbox asks for a poll itself when it has room. */
static void give_back(sh_sharding *sh, const core_env *env, int st) {
  sh->storage->ops->release(sh->storage, env, 0);
  if (st != CRUSTER_E_MAILBOX_FULL && st != CRUSTER_E_SHUTTING_DOWN)
    sh_poll_schedule(sh, sh->cfg->send_retry_interval);
}

static void deliver_persisted(sh_sharding *sh, em_type *t, int rpc_index, core_env *env) {
  /* Cluster mode: the shard may have been let go while the save or the poll
   * that brought this message was in flight. Only the holder of its lock
   * runs it: give the claim back for the next owner. */
  if (sh->cl && !sh_owns(sh, env->group, env->shard)) {
    sh->storage->ops->release(sh->storage, env, 0);
    free(env);
    return;
  }
  int st = em_deliver(sh->em, t, env, rpc_index, &persisted_sink, sh, NULL, NULL);
  if (st == CRUSTER_OK) return;
  give_back(sh, env, st);
  free(env);
}

static void on_saved(void *ud, int status, const char *errmsg, const st_saved *saved) {
  sh_save *s = ud;
  sh_sharding *sh = s->sh;
  sh_call *c = s->call;
  st_save_result r = saved->result;
  const st_reply *existing = saved->existing;
  if (status == CRUSTER_E_CONFLICT) {
    if (c) sh_call_complete(sh, c, status, NULL, 0, errmsg);
    save_free(s);
    return;
  }
  if (status != CRUSTER_OK) {
    core_metric_add(sh->m.st_errors, 1);
    core_log(sh->lg, CRUSTER_LOG_ERROR, "storage", "storing a message for %s/%s failed: %s",
             s->env->type, s->env->id, errmsg ? errmsg : cruster_status_message(status));
    if (c) {
      char msg[512];
      snprintf(msg, sizeof(msg), "message storage failed: %s",
               errmsg ? errmsg : cruster_status_message(status));
      sh_call_complete(sh, c, CRUSTER_E_PERSISTENCE, NULL, 0, msg);
    }
    spec_saved(sh, s, 0);
    save_free(s);
    return;
  }
  /* A keyed call's id is known now: its PRID, or another candidate when the
   * PRID holds another call's identity. Its caller waits on it from here:
   * before, the id could still be another call's, whose answer it must
   * never get. (An answer to this identity completes on the entity's
   * storage connection after this result, or this result saw it.) */
  s->env->request_id = saved->request_id;
  if (c && s->env->keyed && c->kind == SH_CALL_SEND) {
    c->request_id = saved->request_id;
    if (sh_waiter_add(sh, c) != 0) {
      sh_call_complete(sh, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
      c = NULL;
    }
  }
  if ((r == ST_DUPLICATE_PENDING || r == ST_DUPLICATE_REPLIED) && !saved->same_payload &&
      sh->cfg->idempotency_strict_payload) {
    core_metric_add(sh->m.st_duplicates, 1);
    if (c) {
      char msg[CRUSTER_MAX_NAME_LEN * 2 + CRUSTER_MAX_ENTITY_ID_LEN + 160];
      snprintf(msg, sizeof(msg),
               "idempotency key already used for a call to %s/%s '%s' with a different payload "
               "(idempotency_strict_payload)",
               s->env->type, s->env->id, s->env->method);
      sh_call_complete(sh, c, CRUSTER_E_CONFLICT, NULL, 0, msg);
    }
    save_free(s);
    return;
  }
  /* Count first: a caller woken by the acceptance may read the metrics. */
  if (r == ST_SAVED || r == ST_SAVED_QUEUED) core_metric_add(sh->m.st_saved, 1);
  else core_metric_add(sh->m.st_duplicates, 1);
  if (r == ST_SAVED_QUEUED) core_metric_add(sh->m.st_queued, 1);
  /* Stored (now or before): a notify is accepted. */
  if (c && c->kind == SH_CALL_NOTIFY) sh_call_complete(sh, c, CRUSTER_OK, NULL, 0, NULL);
  if (s->spec && s->req) {
    /* Handed to its handler already; its answer may now be acted on. */
    spec_saved(sh, s, 1);
  } else if (s->spec) {
    /* Stored claimed, but not handled here (no room, stop, or dropped from
     * the mailbox at stop): give it back to the poll. */
    give_back(sh, s->env, s->spec_status);
  } else if (r == ST_SAVED && s->claim && !sh->stopping) {
    core_env *env = s->env;
    s->env = NULL;
    env->fresh = 1; /* a new row: nothing was stored for it before */
    deliver_persisted(sh, s->type, s->rpc_index, env);
  } else if (r == ST_SAVED && s->claim) {
    sh->storage->ops->release(sh->storage, s->env, 0);
  } else if (r == ST_SAVED) {
    int64_t delay = s->env->deliver_at - core_now_ms();
    sh_poll_schedule(sh, delay > 0 ? delay : 0);
  } else if (r == ST_DUPLICATE_REPLIED && existing) {
    /* Idempotency: the stored answer, without running again. */
    sh_waiters_resolve(sh, s->env->request_id, existing->status, existing->data, existing->len,
                       existing->message);
  } else {
    /* Queued behind older messages of its entity, or a pending duplicate:
     * the poll delivers it in order. */
    sh_poll_schedule(sh, 0);
  }
  save_free(s);
}

static void route_persisted(sh_sharding *sh, sh_call *c, em_type *t, int rpc_index) {
  core_env *env = c->env;
  if (!sh->storage) {
    reject(sh, c, CRUSTER_E_PERSISTENCE,
           "this call is persisted but the runtime has no message storage");
    return;
  }
  env->persisted = 1;
  if (c->key) {
    env->request_id = cruster_persisted_request_id(env->type, env->id, env->method, c->key, c->key_len);
    env->keyed = 1;
  } else if (core_snowflake_next(sh->snowflake, &env->request_id) != CRUSTER_OK) {
    reject(sh, c, CRUSTER_E_CLOCK_DRIFT, "the clock moved backwards by more than 5 s");
    return;
  }
  c->request_id = env->request_id;
  sh_save *s = calloc(1, sizeof(*s));
  /* An unkeyed call's id is fresh: its caller waits on it at once. A keyed
   * one waits once the storage said which id holds it (on_saved). */
  if (!s || (c->kind == SH_CALL_SEND && !c->key && sh_waiter_add(sh, c) != 0)) {
    free(s);
    reject(sh, c, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  s->sh = sh;
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
  /* A transactional handler stores its reply in its own transaction, which
   * must find the message's row: never before the row is committed. */
  if (s->claim && !sh->stopping && sh->storage->ops->claims_now &&
      !(t->rpcs.v[rpc_index].flags & CRUSTER_RPC_TRANSACTIONAL) &&
      sh->storage->ops->claims_now(sh->storage, s->env)) {
    core_env *copy = core_env_copy(s->env);
    if (copy) {
      s->spec = 1;
      s->spec_status = em_deliver(sh->em, t, copy, rpc_index, &persisted_sink, sh, s, &s->req);
      if (s->spec_status != CRUSTER_OK) free(copy); /* else s->req is the delivery */
    }
  }
  st_key key = {c->key, c->key_len};
  sh->storage->ops->save_request(sh->storage, s->env, c->key ? &key : NULL, s->claim, on_saved, s);
}

/* ---- routing --------------------------------------------------------------- */

static void route_owned(sh_sharding *sh, sh_call *c, em_type *t, int idx);

void sh_route_owned(sh_sharding *sh, sh_call *c) {
  em_type *t = em_type_find(sh->em, c->env->type);
  char msg[CRUSTER_MAX_NAME_LEN * 2 + 128];
  if (!t) {
    snprintf(msg, sizeof(msg), "no entity type '%s' is registered", c->env->type);
    reject(sh, c, CRUSTER_E_UNKNOWN_ENTITY_TYPE, msg);
    return;
  }
  int idx = em_lookup_rpc(t, c->env->method, c->internal, msg, sizeof(msg));
  if (idx < 0) {
    reject(sh, c, idx, msg);
    return;
  }
  route_owned(sh, c, t, idx);
}

void sh_route(void *ud, rt_cmd *cmd) {
  sh_sharding *sh = ud;
  sh_call *c = (sh_call *)cmd;
  c->heap_idx = SIZE_MAX;
  if (atomic_load(&sh->loop->state) != RT_STARTED || sh->stopping) {
    sh_call_complete(sh, c, CRUSTER_E_SHUTTING_DOWN, NULL, 0, "the runtime is shutting down");
    return;
  }
  if (sh_heap_insert(sh, c) != 0) {
    sh_call_complete(sh, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
    return;
  }
  core_env *env = c->env;
  em_type *t = em_type_find(sh->em, env->type);
  char msg[CRUSTER_MAX_NAME_LEN * 2 + 128];
  if (!t) {
    snprintf(msg, sizeof(msg), "no entity type '%s' is registered", env->type);
    reject(sh, c, CRUSTER_E_UNKNOWN_ENTITY_TYPE, msg);
    return;
  }
  if (c->caller && !em_request_is_running(sh->em, c->caller)) {
    /* Only a request this runtime is handling makes a call internal: a made
     * up, stale or foreign pointer must not open protected methods. */
    reject(sh, c, CRUSTER_E_FORBIDDEN,
           "opts.caller is not a request this runtime is handling (not a request handle, "
           "already answered, or of another runtime)");
    return;
  }
  int idx = em_lookup_rpc(t, env->method, c->internal, msg, sizeof(msg));
  if (idx < 0) {
    reject(sh, c, idx, msg);
    return;
  }
  if (env->stream &&
      ((t->rpcs.v[idx].flags & (CRUSTER_RPC_PERSISTED | CRUSTER_RPC_TRANSACTIONAL)) ||
       (c->flags & CRUSTER_CALL_PERSISTED) || env->persisted || env->deliver_at > 0 || c->key)) {
    snprintf(msg, sizeof(msg),
             "method '%s' of entity type '%s' is persisted: a streamed call is never persisted "
             "(call it with cruster_send)",
             env->method, t->name);
    reject(sh, c, CRUSTER_E_INVALID_ARGUMENT, msg);
    return;
  }
  snprintf(env->group, sizeof(env->group), "%s", t->shard_group);
  env->shard = cruster_shard_for(env->id, strlen(env->id), (int32_t)sh->cfg->shards_per_group);
  env->internal = (unsigned char)c->internal;
  env->is_request = c->kind == SH_CALL_SEND;
  if (sh->cl && !sh_owns(sh, env->group, env->shard)) {
    sh_route_remote(sh, c);
    return;
  }
  route_owned(sh, c, t, idx);
}

/* A call whose shard this runner owns (or single-node). */
static void route_owned(sh_sharding *sh, sh_call *c, em_type *t, int idx) {
  core_env *env = c->env;
  char msg[CRUSTER_MAX_NAME_LEN * 2 + 128];
  const em_rpc *rpc = &t->rpcs.v[idx];
  if ((rpc->flags & CRUSTER_RPC_PERSISTED) || (c->flags & CRUSTER_CALL_PERSISTED) ||
      env->deliver_at > 0 || c->key) {
    route_persisted(sh, c, t, idx);
    return;
  }
  if (core_snowflake_next(sh->snowflake, &env->request_id) != CRUSTER_OK) {
    reject(sh, c, CRUSTER_E_CLOCK_DRIFT, "the clock moved backwards by more than 5 s");
    return;
  }
  c->request_id = env->request_id;
  int st = c->kind == SH_CALL_SEND ? em_deliver(sh->em, t, env, idx, &call_sink, c, NULL, &c->req)
                                    : em_deliver(sh->em, t, env, idx, NULL, NULL, NULL, NULL);
  if (st != CRUSTER_OK) {
    if (st == CRUSTER_E_MAILBOX_FULL)
      snprintf(msg, sizeof(msg), "the mailbox of %s/%s is full (capacity %lld)", env->type, env->id,
               (long long)t->mailbox);
    else
      snprintf(msg, sizeof(msg), "%s", cruster_status_message(st));
    reject(sh, c, st, msg);
    return;
  }
  c->env = NULL; /* the delivery owns it now */
  if (c->kind == SH_CALL_NOTIFY) sh_call_complete(sh, c, CRUSTER_OK, NULL, 0, NULL);
}

/* ---- the poll loop ---------------------------------------------------------- */

static void poll_fire(uv_timer_t *t);

void sh_poll_schedule(sh_sharding *sh, int64_t delay_ms) {
  if (!sh->storage || atomic_load(&sh->loop->state) != RT_STARTED || sh->stopping) return;
  if (delay_ms < 0) delay_ms = 0;
  if (uv_is_active((uv_handle_t *)&sh->poll_timer) &&
      (int64_t)uv_timer_get_due_in(&sh->poll_timer) <= delay_ms)
    return;
  if (sh->poll_scheduled) {
    /* A poll is running and may have read storage before what this wake-up
     * is about: remember it, the poll honours it when it ends. */
    int64_t at = rt_deadline_after(core_mono_ms(), delay_ms);
    if (sh->poll_again_at == 0 || at < sh->poll_again_at) sh->poll_again_at = at;
    return;
  }
  uv_timer_start(&sh->poll_timer, poll_fire, (uint64_t)delay_ms, 0);
}

static void on_polled(void *ud, int status, const char *errmsg, core_env **msgs, size_t n,
                      const int64_t *dead, size_t ndead) {
  sh_sharding *sh = ud;
  sh->poll_scheduled = 0;
  /* Wake-ups asked for while this poll ran (it may not have seen their
   * messages) */
  int64_t again = sh->poll_again_at;
  sh->poll_again_at = 0;
  if (again) sh_poll_schedule(sh, again - core_mono_ms());
  if (status == CRUSTER_E_SHUTTING_DOWN) return;
  if (status != CRUSTER_OK) {
    core_metric_add(sh->m.st_errors, 1);
    core_log(sh->lg, CRUSTER_LOG_WARN, "storage", "polling message storage failed: %s",
             errmsg ? errmsg : cruster_status_message(status));
    sh_poll_schedule(sh, sh->cfg->storage_poll_interval);
    return;
  }
  for (size_t i = 0; i < ndead; i++) {
    core_metric_add(sh->m.st_dead_letters, 1);
    char msg[160];
    snprintf(msg, sizeof(msg), "message %lld became a dead letter after %lld delivery attempts",
             (long long)dead[i], (long long)sh->cfg->storage_message_max_retries + 1);
    core_log(sh->lg, CRUSTER_LOG_WARN, "storage", "%s", msg);
    sh_waiters_resolve(sh, dead[i], CRUSTER_E_DEAD_LETTER, NULL, 0, msg);
  }
  for (size_t i = 0; i < n; i++) {
    core_env *env = msgs[i];
    em_type *t = em_type_find(sh->em, env->type);
    if (!t || sh->stopping) {
      if (!t)
        core_log(sh->lg, CRUSTER_LOG_WARN, "storage",
                 "stored message %lld is for entity type '%s', which is not registered here",
                 (long long)env->request_id, env->type);
      sh->storage->ops->release(sh->storage, env, 0);
      free(env);
      continue;
    }
    char msg[CRUSTER_MAX_NAME_LEN * 2 + 128];
    int idx = em_lookup_rpc(t, env->method, env->internal, msg, sizeof(msg));
    if (idx < 0) {
      st_reply rep = {idx, NULL, 0, msg};
      sh->storage->ops->save_reply(sh->storage, env, &rep, NULL, NULL);
      sh_waiters_resolve(sh, env->request_id, idx, NULL, 0, msg);
      free(env);
      continue;
    }
    deliver_persisted(sh, t, idx, env);
  }
  if (n > 0 && n >= (size_t)sh->cfg->storage_inbox_size) {
    sh_poll_schedule(sh, 0);
    return;
  }
  int64_t delay = sh->cfg->storage_poll_interval;
  int64_t due = sh->storage->ops->next_due(sh->storage);
  if (due > 0 && due - core_now_ms() < delay) delay = due - core_now_ms();
  sh_poll_schedule(sh, delay);
}

/* The poll claims messages of owned shards only. */
static int poll_owns(void *ud, const char *group, int32_t shard) {
  return sh_owns((const sh_sharding *)ud, group, shard);
}

static void poll_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  if (!sh->storage || sh->stopping) return;
  sh->poll_scheduled = 1;
  core_metric_add(sh->m.st_polls, 1);
  sh->storage->ops->poll(sh->storage, core_now_ms(), (size_t)sh->cfg->storage_inbox_size,
                         sh->cfg->storage_message_max_retries, poll_owns, sh, on_polled, sh);
}
