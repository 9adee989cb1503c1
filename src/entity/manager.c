/* The entity manager: types, instances, mailboxes, concurrency, idle
 * eviction. Runs on the loop thread; handlers run on the worker pool. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/sharding_internal.h"
#include "storage/storage_internal.h"

/* ---- registration ------------------------------------------------------- */

static void type_free(em_type *t) {
  if (!t) return;
  free(t->name);
  free(t->shard_group);
  em_rpc_list_free(&t->rpcs);
  free(t);
}

static void register_on_loop(void *ud, rt_cmd *cmd) {
  cruster_runtime *rt = ud;
  rt_sync *r = (rt_sync *)cmd;
  em_type *t = r->arg;
  int st = CRUSTER_OK;
  if (atomic_load(&rt->loop.state) >= RT_STOPPING || rt->closed)
    st = CRUSTER_E_SHUTTING_DOWN;
  else if (core_map_get(&rt->types, t->name, strlen(t->name)))
    st = CRUSTER_E_ALREADY_EXISTS;
  else if (core_map_put(&rt->types, t->name, strlen(t->name), t) != 0)
    st = CRUSTER_E_NOMEM;
  else
    core_metric_set(rt->m.entity_types, (double)rt->types.count);
  rt_sync_done(r, st);
}

static core_metric *type_metric(cruster_runtime *rt, core_metric_kind kind, const char *name,
                                const char *help, const char *type, const char *extra) {
  char esc[2 * CRUSTER_MAX_NAME_LEN + 2], labels[3 * CRUSTER_MAX_NAME_LEN];
  core_metrics_escape(type, esc, sizeof(esc));
  snprintf(labels, sizeof(labels), "entity_type=\"%s\"%s", esc, extra ? extra : "");
  return core_metrics_get(rt->metrics, kind, name, help, labels);
}

cruster_status cruster_runtime_register_entity(cruster_runtime *rt, const cruster_entity_def *d,
                                               cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt || !d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt and def must not be NULL");
  if (d->rpcs.n == 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "entity type '%s' has no RPCs", d->name);
  if (!core_config_has_group(rt->cfg, d->shard_group))
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "entity type '%s' uses shard group '%s', which is not in shard_groups; "
                          "no runner would ever own it",
                          d->name, d->shard_group);
  if (atomic_load(&rt->loop.state) >= RT_STOPPING)
    return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
  em_type *t = calloc(1, sizeof(*t));
  if (!t) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  t->name = core_strdup(d->name);
  t->shard_group = core_strdup(d->shard_group);
  int oom = !t->name || !t->shard_group;
  for (size_t i = 0; !oom && i < d->rpcs.n; i++) {
    const em_rpc *x = &d->rpcs.v[i];
    oom = em_rpc_list_add(&t->rpcs, x->name, x->group, x->flags, x->fn, x->user) != 0;
  }
  if (oom) {
    type_free(t);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  t->max_idle_ms = d->max_idle_ms >= 0 ? d->max_idle_ms : rt->cfg->entity_max_idle_time;
  t->mailbox = d->mailbox >= 0 ? d->mailbox : rt->cfg->entity_mailbox_capacity;
  t->concurrency = d->concurrency >= 0 ? d->concurrency : rt->cfg->entity_max_concurrent_requests;
  t->m_instances = type_metric(rt, CORE_GAUGE, "cluster_entities",
                               "Entity instances alive on this runner", t->name, NULL);
  t->m_evictions = type_metric(rt, CORE_COUNTER, "cluster_entity_evictions_total",
                               "Entity instances evicted after their max idle time", t->name, NULL);
  t->m_mailbox_full = type_metric(rt, CORE_COUNTER, "cluster_mailbox_full_total",
                                  "Messages refused because the instance's mailbox was full",
                                  t->name, NULL);
  t->m_ok = type_metric(rt, CORE_COUNTER, "cluster_messages_handled_total",
                        "Messages answered by a handler, by outcome", t->name, ",outcome=\"ok\"");
  t->m_err = type_metric(rt, CORE_COUNTER, "cluster_messages_handled_total",
                         "Messages answered by a handler, by outcome", t->name, ",outcome=\"error\"");
  t->m_duration = type_metric(rt, CORE_HISTOGRAM, "cluster_handler_duration_seconds",
                              "Time from a handler's start to its answer", t->name, NULL);
  rt_sync r;
  memset(&r, 0, sizeof(r));
  r.arg = t;
  int st = rt_run_sync(&rt->loop, &r, register_on_loop, rt, NULL);
  if (st != CRUSTER_OK) {
    type_free(t);
    if (st == CRUSTER_E_ALREADY_EXISTS)
      return core_error_set(err, st, "entity type '%s' is already registered", d->name);
    if (st == CRUSTER_E_SHUTTING_DOWN)
      return core_error_set(err, st, "the runtime is shutting down");
    return core_error_set(err, st, "out of memory");
  }
  core_log(rt->lg, CRUSTER_LOG_DEBUG, "entity", "registered entity type '%s' (%zu RPCs)", d->name,
           d->rpcs.n);
  return CRUSTER_OK;
}

em_type *em_type_find(cruster_runtime *rt, const char *name) {
  return core_map_get(&rt->types, name, strlen(name));
}

int em_lookup_rpc(em_type *t, const char *method, int internal, char *msg, size_t msgsz) {
  for (size_t i = 0; i < t->rpcs.n; i++) {
    const em_rpc *r = &t->rpcs.v[i];
    if (strcmp(r->name, method) != 0) continue;
    if (r->flags & CRUSTER_RPC_PRIVATE) {
      snprintf(msg, msgsz, "method '%s' of entity type '%s' is private and cannot be called",
               method, t->name);
      return CRUSTER_E_UNKNOWN_METHOD;
    }
    if ((r->flags & CRUSTER_RPC_PROTECTED) && !internal) {
      snprintf(msg, msgsz,
               "method '%s' of entity type '%s' is protected: only entities and workflows may call it",
               method, t->name);
      return CRUSTER_E_FORBIDDEN;
    }
    return (int)i;
  }
  snprintf(msg, msgsz, "entity type '%s' has no method '%s'", t->name, method);
  return CRUSTER_E_UNKNOWN_METHOD;
}

/* ---- instances ------------------------------------------------------------ */

static void idle_remove(em_instance *in) {
  if (!in->in_idle) return;
  em_type *t = in->type;
  if (in->idle_prev) in->idle_prev->idle_next = in->idle_next; else t->idle_head = in->idle_next;
  if (in->idle_next) in->idle_next->idle_prev = in->idle_prev; else t->idle_tail = in->idle_prev;
  in->idle_prev = in->idle_next = NULL;
  in->in_idle = 0;
}

static void reaper_arm(cruster_runtime *rt, int64_t due_mono) {
  int64_t delay = due_mono - core_mono_ms();
  if (delay < 0) delay = 0;
  if (uv_is_active((uv_handle_t *)&rt->reaper_timer) &&
      (int64_t)uv_timer_get_due_in(&rt->reaper_timer) <= delay)
    return;
  uv_timer_start(&rt->reaper_timer, em_reaper_fire, (uint64_t)delay, 0);
}

static void idle_append(cruster_runtime *rt, em_instance *in) {
  em_type *t = in->type;
  in->idle_since = core_mono_ms();
  in->idle_prev = t->idle_tail;
  in->idle_next = NULL;
  if (t->idle_tail) t->idle_tail->idle_next = in; else t->idle_head = in;
  t->idle_tail = in;
  in->in_idle = 1;
  if (!rt->stopping && !rt->closed)
    reaper_arm(rt, rt_deadline_after(in->idle_since, t->max_idle_ms));
}

static void instance_free(cruster_runtime *rt, em_instance *in) {
  idle_remove(in);
  core_map_del(&rt->instances, in->key, in->key_len);
  core_metric_add(in->type->m_instances, -1);
  free(in->key);
  free(in);
}

static em_instance *instance_get(cruster_runtime *rt, em_type *t, const char *id, int create) {
  core_ekey key;
  if (core_ekey_make(&key, t->name, id) != 0) return NULL;
  em_instance *in = core_map_get(&rt->instances, key.p, key.n);
  if (!in && create) {
    in = calloc(1, sizeof(*in));
    char *k = in ? malloc(key.n + 1) : NULL;
    if (!k || (memcpy(k, key.p, key.n), k[key.n] = 0,
               core_map_put(&rt->instances, k, key.n, in) != 0)) {
      free(k);
      free(in);
      in = NULL;
    } else {
      in->type = t;
      in->key = k;
      in->key_len = key.n;
      in->id = k + strlen(t->name) + 1;
      core_metric_add(t->m_instances, 1);
    }
  }
  core_ekey_done(&key);
  return in;
}

void em_reaper_fire(uv_timer_t *timer) {
  cruster_runtime *rt = timer->data;
  int64_t now = core_mono_ms(), next = 0;
  for (size_t b = 0; b < rt->types.nbuckets; b++) {
    for (core_map_entry *e = rt->types.buckets[b]; e; e = e->next) {
      em_type *t = e->value;
      while (t->idle_head && now - t->idle_head->idle_since >= t->max_idle_ms) {
        em_instance *in = t->idle_head;
        core_log(rt->lg, CRUSTER_LOG_TRACE, "entity", "evicting idle %s/%s", t->name, in->id);
        core_metric_add(t->m_evictions, 1);
        instance_free(rt, in);
      }
      if (t->idle_head) {
        int64_t due = rt_deadline_after(t->idle_head->idle_since, t->max_idle_ms);
        if (next == 0 || due < next) next = due;
      }
    }
  }
  if (next) reaper_arm(rt, next);
}

/* ---- delivery ------------------------------------------------------------- */

static void live_link(cruster_runtime *rt, cruster_request *r) {
  r->live_prev = NULL;
  r->live_next = rt->live_head;
  if (rt->live_head) rt->live_head->live_prev = r;
  rt->live_head = r;
}

static void live_unlink(cruster_runtime *rt, cruster_request *r) {
  if (r->live_prev) r->live_prev->live_next = r->live_next; else rt->live_head = r->live_next;
  if (r->live_next) r->live_next->live_prev = r->live_prev;
  r->live_prev = r->live_next = NULL;
}

/* ---- the set of running requests (valid opts.caller values) ---------------- */

static size_t run_bucket(const cruster_runtime *rt, const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 31;
  x *= UINT64_C(0x9e3779b97f4a7c15);
  x ^= x >> 29;
  return (size_t)(x & (rt->run_nbuckets - 1));
}

/* Doubles the bucket array; on OOM the chains just get longer. */
static void run_set_grow(cruster_runtime *rt) {
  size_t nb = rt->run_nbuckets ? rt->run_nbuckets * 2 : 64;
  cruster_request **b = calloc(nb, sizeof(*b));
  if (!b) return;
  cruster_request **old = rt->run_buckets;
  size_t onb = rt->run_nbuckets;
  rt->run_buckets = b;
  rt->run_nbuckets = nb;
  for (size_t i = 0; i < onb; i++) {
    cruster_request *x = old[i];
    while (x) {
      cruster_request *next = x->run_next;
      size_t j = run_bucket(rt, x);
      x->run_next = b[j];
      b[j] = x;
      x = next;
    }
  }
  free(old);
}

int em_run_set_init(cruster_runtime *rt) {
  run_set_grow(rt);
  return rt->run_nbuckets ? 0 : -1;
}

static void run_set_add(cruster_runtime *rt, cruster_request *r) {
  r->running = 1;
  if (rt->run_count >= rt->run_nbuckets) run_set_grow(rt);
  if (!rt->run_nbuckets) return; /* (em_run_set_init made some) */
  size_t j = run_bucket(rt, r);
  r->run_next = rt->run_buckets[j];
  rt->run_buckets[j] = r;
  rt->run_count++;
}

static void run_set_remove(cruster_runtime *rt, cruster_request *r) {
  if (!r->running) return;
  r->running = 0;
  if (!rt->run_nbuckets) return;
  for (cruster_request **pp = &rt->run_buckets[run_bucket(rt, r)]; *pp; pp = &(*pp)->run_next) {
    if (*pp != r) continue;
    *pp = r->run_next;
    r->run_next = NULL;
    rt->run_count--;
    return;
  }
}

int em_request_is_running(const cruster_runtime *rt, const void *p) {
  if (!p || !rt->run_nbuckets) return 0;
  for (const cruster_request *x = rt->run_buckets[run_bucket(rt, p)]; x; x = x->run_next)
    if ((const void *)x == p) return 1;
  return 0;
}

/* ---- lifetime ------------------------------------------------------------- */

/* Drops one owner's hold; the last one frees the handle (any thread). */
static void request_unref(cruster_request *r) {
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) return;
  free(r->env);
  free(r);
}

void em_request_free(cruster_runtime *rt, cruster_request *r) {
  live_unlink(rt, r);
  run_set_remove(rt, r);
  if (r->save) rt_save_unbind(r->save);
  if (r->call) r->call->req = NULL;
  r->save = NULL;
  r->call = NULL;
  /* The answer is consumed: a later (refused) answer never writes it. */
  if (r->reply != (void *)r->reply_small) free(r->reply);
  r->reply = NULL;
  free(r->errmsg);
  r->errmsg = NULL;
  request_unref(r);
}

static void run_handler(void *arg) {
  cruster_request *r = arg;
  r->started_ns = core_mono_ns();
  r->rpc->fn(r->rpc->user, r);
  /* Until here the handle was the handler's to use, answered or not. */
  request_unref(r);
}

static void request_done(void *ud, rt_cmd *cmd);

static void pump(cruster_runtime *rt, em_instance *in) {
  int64_t limit = in->type->concurrency;
  while (in->q_head && (limit == 0 || (int64_t)in->running < limit)) {
    cruster_request *r = in->q_head;
    in->q_head = r->next;
    if (!in->q_head) in->q_tail = NULL;
    in->queued--;
    r->next = NULL;
    if (!r->env->persisted && r->env->is_request && !r->call) {
      /* Its caller gave up before it started: nobody wants the answer. */
      em_request_free(rt, r);
      continue;
    }
    run_set_add(rt, r);
    in->running++;
    rt->running++;
    r->job.fn = run_handler;
    r->job.arg = r;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed); /* the handler's */
    if (rt_submit(&rt->loop, &r->job) != CRUSTER_OK) {
      atomic_fetch_sub_explicit(&r->refs, 1, memory_order_relaxed); /* never ran */
      r->started_ns = r->answered_ns = core_mono_ns();
      r->status = CRUSTER_E_SHUTTING_DOWN;
      r->errmsg = core_strdup("the runtime is shutting down");
      atomic_store(&r->answered, 1);
      request_done(rt, &r->done);
    }
  }
  if (in->running == 0 && in->queued == 0 && !in->in_idle) idle_append(rt, in);
}

int em_deliver(cruster_runtime *rt, em_type *t, core_env *env, int rpc_index, rt_call *call,
               struct rt_save *save, int *backlogged) {
  if (backlogged) *backlogged = 0;
  if (rt->stopping || rt->closed) return CRUSTER_E_SHUTTING_DOWN;
  em_instance *in = instance_get(rt, t, env->id, 1);
  if (!in) return CRUSTER_E_NOMEM;
  if ((int64_t)(in->queued + in->running) >= t->mailbox) {
    core_metric_add(t->m_mailbox_full, 1);
    if (env->persisted) in->backlog = 1;
    if (backlogged) *backlogged = 1;
    if (in->running == 0 && in->queued == 0 && !in->in_idle) idle_append(rt, in);
    return CRUSTER_E_MAILBOX_FULL;
  }
  cruster_request *r = calloc(1, sizeof(*r));
  if (!r) return CRUSTER_E_NOMEM;
  atomic_init(&r->refs, 1); /* the loop's */
  r->rt = rt;
  r->inst = in;
  r->rpc = &t->rpcs.v[rpc_index];
  r->env = env;
  r->call = call;
  r->save = save;
  if (save) save->req = r;
  r->done.fn = request_done;
  r->done.ud = rt;
  if (call) call->req = r;
  live_link(rt, r);
  idle_remove(in);
  if (in->q_tail) in->q_tail->next = r; else in->q_head = r;
  in->q_tail = r;
  in->queued++;
  pump(rt, in);
  return CRUSTER_OK;
}

/* ---- completion ------------------------------------------------------------ */

static void persist_done(void *ud, int status, const char *errmsg) {
  cruster_request *r = ud;
  cruster_runtime *rt = r->rt;
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
  em_request_free(rt, r);
}

/* Records a persisted delivery's answer; its save (if speculative) is done. */
static void persisted_answer(cruster_runtime *rt, cruster_request *r) {
  if (r->save_failed) {
    /* The message was not stored (its caller was told): no answer to keep. */
    em_request_free(rt, r);
    return;
  }
  /* An unkeyed message's answer can never be asked for again, so its
   * caller need not wait for it to be stored: the stored request is what
   * makes it at-least-once (a crash before the answer is recorded runs it
   * again). A keyed one's answer must be durable first: repeats return it. */
  if (!r->env->keyed)
    rt_waiters_resolve(rt, r->env->request_id, r->status, r->reply, r->reply_len, r->errmsg);
  st_reply rep = {r->status, r->reply, r->reply_len, r->errmsg};
  rt->storage->ops->save_reply(rt->storage, r->env, &rep, persist_done, r);
}

/* The mailbox has room again: persisted messages that found it full wait in
 * storage, so poll for them; run what is queued (or let it idle). */
static void room_made(cruster_runtime *rt, em_instance *in) {
  if (in->backlog && (int64_t)(in->queued + in->running) < in->type->mailbox) {
    in->backlog = 0;
    rt_poll_schedule(rt, 0);
  }
  pump(rt, in);
}

/* Takes a queued (not started) delivery out of its instance's mailbox; 0 if
 * it is not there. */
static int mailbox_remove(cruster_runtime *rt, cruster_request *r) {
  em_instance *in = r->inst;
  cruster_request *prev = NULL;
  for (cruster_request *x = in->q_head; x; prev = x, x = x->next) {
    if (x != r) continue;
    if (prev) prev->next = x->next; else in->q_head = x->next;
    if (in->q_tail == x) in->q_tail = prev;
    x->next = NULL;
    in->queued--;
    room_made(rt, in);
    return 1;
  }
  return 0;
}

void em_saved(cruster_runtime *rt, cruster_request *r, int ok) {
  r->save = NULL;
  if (!ok) {
    r->save_failed = 1;
    /* Not accepted (its caller was told so): if its handler has not
     * started, it never will. */
    if (!r->running && !r->finished && mailbox_remove(rt, r)) {
      em_request_free(rt, r);
      return;
    }
  }
  if (r->finished) persisted_answer(rt, r);
}

static void request_done(void *ud, rt_cmd *cmd) {
  cruster_runtime *rt = ud;
  cruster_request *r = (cruster_request *)((char *)cmd - offsetof(cruster_request, done));
  if (rt->closed) {
    em_request_free(rt, r);
    return;
  }
  em_instance *in = r->inst;
  em_type *t = in->type;
  run_set_remove(rt, r);
  in->running--;
  rt->running--;
  core_metric_add(r->status == CRUSTER_OK ? t->m_ok : t->m_err, 1);
  /* From the handler's start to its answer, both taken on the threads that
   * did them: the time the answer then waited for the loop is not the
   * handler's. */
  uint64_t took = r->answered_ns > r->started_ns ? r->answered_ns - r->started_ns : 0;
  core_metric_observe(t->m_duration, (double)took / 1e9);
  if (r->env->persisted && rt->storage) {
    /* Speculative and not stored yet: nobody hears of the answer before the
     * message is durable (em_saved). */
    if (r->save) r->finished = 1;
    else persisted_answer(rt, r);
  } else {
    if (r->call)
      rt_call_complete(rt, r->call, r->status, r->reply, r->reply_len, r->errmsg);
    em_request_free(rt, r);
  }
  room_made(rt, in);
  rt_stop_check(rt);
}

int em_request_answer(cruster_request *r, int status, const void *data, size_t len,
                      const char *msg) {
  if (atomic_exchange(&r->answered, 1)) return CRUSTER_E_STATE;
  r->answered_ns = core_mono_ns();
  r->status = status;
  if (status == CRUSTER_OK) {
    if (len <= sizeof(r->reply_small)) {
      if (len) memcpy(r->reply_small, data, len);
      r->reply = r->reply_small;
    } else {
      r->reply = core_memdup(data, len);
    }
    r->reply_len = len;
    if (!r->reply) {
      r->status = CRUSTER_E_NOMEM;
      r->errmsg = core_strdup("out of memory copying the reply");
    }
  } else {
    r->errmsg = core_strdup(msg ? msg : cruster_status_message(status));
  }
  if (rt_post(&r->rt->loop, &r->done) != 0) return CRUSTER_E_SHUTTING_DOWN;
  return CRUSTER_OK;
}

/* The request ids of the persisted messages handed to this runner's
 * instances and not answered yet. *n gets the count; NULL on OOM. */
int64_t *em_inflight_persisted(cruster_runtime *rt, size_t *n) {
  size_t k = 0;
  for (cruster_request *r = rt->live_head; r; r = r->live_next)
    k += r->env->persisted && !r->save_failed;
  int64_t *ids = malloc((k ? k : 1) * sizeof(*ids));
  if (!ids) return NULL;
  *n = 0;
  for (cruster_request *r = rt->live_head; r; r = r->live_next)
    if (r->env->persisted && !r->save_failed) ids[(*n)++] = r->env->request_id;
  return ids;
}

/* ---- stop ------------------------------------------------------------------ */

void em_interrupt_all(cruster_runtime *rt) {
  for (cruster_request *r = rt->live_head; r; r = r->live_next)
    if (r->running) atomic_store(&r->cancelled, 1);
  for (size_t b = 0; b < rt->instances.nbuckets; b++) {
    for (core_map_entry *e = rt->instances.buckets[b]; e; e = e->next) {
      em_instance *in = e->value;
      while (in->q_head) {
        cruster_request *r = in->q_head;
        in->q_head = r->next;
        in->queued--;
        /* (A speculative one is given back once stored: on_saved.) */
        if (r->env->persisted && rt->storage && !r->save && !r->save_failed)
          rt->storage->ops->release(rt->storage, r->env, 0);
        if (r->call)
          rt_call_complete(rt, r->call, CRUSTER_E_INTERRUPTED,
                           NULL, 0, "entity interrupted due to shard movement or shutdown");
        em_request_free(rt, r);
      }
      in->q_tail = NULL;
    }
  }
}

static void free_instance_entry(void *ctx, core_map_entry *e) {
  (void)ctx;
  em_instance *in = e->value;
  free(in->key);
  free(in);
}

static void free_type_entry(void *ctx, core_map_entry *e) {
  (void)ctx;
  type_free(e->value);
}

void em_free_all(cruster_runtime *rt) {
  /* The pool is joined: no handler holds a request any more. */
  while (rt->live_head) {
    cruster_request *r = rt->live_head;
    r->call = NULL;
    em_request_free(rt, r);
  }
  free(rt->run_buckets);
  rt->run_buckets = NULL;
  rt->run_nbuckets = rt->run_count = 0;
  core_map_each(&rt->instances, free_instance_entry, NULL);
  core_map_clear(&rt->instances);
  core_map_each(&rt->types, free_type_entry, NULL);
  core_map_clear(&rt->types);
}
