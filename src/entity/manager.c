/* The entity manager: types, instances, mailboxes, concurrency, idle
 * eviction. Runs on the loop thread; handlers run on the worker pool. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"

static void reaper_fire(uv_timer_t *t);

/* ---- registration ------------------------------------------------------- */

static void type_free(em_type *t) {
  if (!t) return;
  free(t->name);
  free(t->shard_group);
  em_rpc_list_free(&t->rpcs);
  free(t);
}

static void register_on_loop(void *ud, rt_cmd *cmd) {
  em_manager *m = ud;
  rt_sync *r = (rt_sync *)cmd;
  em_type *t = r->arg;
  int st = CRUSTER_OK;
  if (atomic_load(&m->loop->state) >= RT_STOPPING || m->closed)
    st = CRUSTER_E_SHUTTING_DOWN;
  else if (core_map_get(&m->types, t->name, strlen(t->name)))
    st = CRUSTER_E_ALREADY_EXISTS;
  else if (core_map_put(&m->types, t->name, strlen(t->name), t) != 0)
    st = CRUSTER_E_NOMEM;
  else
    core_metric_set(m->m_types, (double)m->types.count);
  rt_sync_done(r, st);
}

static core_metric *type_metric(em_manager *m, core_metric_kind kind, const char *name,
                                const char *help, const char *type, const char *extra) {
  char esc[2 * CRUSTER_MAX_NAME_LEN + 2], labels[3 * CRUSTER_MAX_NAME_LEN];
  core_metrics_escape(type, esc, sizeof(esc));
  snprintf(labels, sizeof(labels), "entity_type=\"%s\"%s", esc, extra ? extra : "");
  return core_metrics_get(m->metrics, kind, name, help, labels);
}

cruster_status em_register(em_manager *m, const cruster_entity_def *d, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!m || !d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt and def must not be NULL");
  if (d->rpcs.n == 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "entity type '%s' has no RPCs", d->name);
  if (!core_config_has_group(m->cfg, d->shard_group))
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "entity type '%s' uses shard group '%s', which is not in shard_groups; "
                          "no runner would ever own it",
                          d->name, d->shard_group);
  if (atomic_load(&m->loop->state) >= RT_STOPPING)
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
  t->max_idle_ms = d->max_idle_ms >= 0 ? d->max_idle_ms : m->cfg->entity_max_idle_time;
  t->mailbox = d->mailbox >= 0 ? d->mailbox : m->cfg->entity_mailbox_capacity;
  t->concurrency = d->concurrency >= 0 ? d->concurrency : m->cfg->entity_max_concurrent_requests;
  t->m_instances = type_metric(m, CORE_GAUGE, "cluster_entities",
                               "Entity instances alive on this runner", t->name, NULL);
  t->m_evictions = type_metric(m, CORE_COUNTER, "cluster_entity_evictions_total",
                               "Entity instances evicted after their max idle time", t->name, NULL);
  t->m_mailbox_full = type_metric(m, CORE_COUNTER, "cluster_mailbox_full_total",
                                  "Messages refused because the instance's mailbox was full",
                                  t->name, NULL);
  t->m_ok = type_metric(m, CORE_COUNTER, "cluster_messages_handled_total",
                        "Messages answered by a handler, by outcome", t->name, ",outcome=\"ok\"");
  t->m_err = type_metric(m, CORE_COUNTER, "cluster_messages_handled_total",
                         "Messages answered by a handler, by outcome", t->name, ",outcome=\"error\"");
  t->m_duration = type_metric(m, CORE_HISTOGRAM, "cluster_handler_duration_seconds",
                              "Time from a handler's start to its answer", t->name, NULL);
  rt_sync r;
  memset(&r, 0, sizeof(r));
  r.arg = t;
  int st = rt_run_sync(m->loop, &r, register_on_loop, m, NULL);
  if (st != CRUSTER_OK) {
    type_free(t);
    if (st == CRUSTER_E_ALREADY_EXISTS)
      return core_error_set(err, st, "entity type '%s' is already registered", d->name);
    if (st == CRUSTER_E_SHUTTING_DOWN)
      return core_error_set(err, st, "the runtime is shutting down");
    return core_error_set(err, st, "out of memory");
  }
  core_log(m->lg, CRUSTER_LOG_DEBUG, "entity", "registered entity type '%s' (%zu RPCs)", d->name,
           d->rpcs.n);
  return CRUSTER_OK;
}

em_type *em_type_find(em_manager *m, const char *name) {
  return core_map_get(&m->types, name, strlen(name));
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

static void reaper_arm(em_manager *m, int64_t due_mono) {
  int64_t delay = due_mono - core_mono_ms();
  if (delay < 0) delay = 0;
  if (uv_is_active((uv_handle_t *)&m->reaper_timer) &&
      (int64_t)uv_timer_get_due_in(&m->reaper_timer) <= delay)
    return;
  uv_timer_start(&m->reaper_timer, reaper_fire, (uint64_t)delay, 0);
}

static void idle_append(em_manager *m, em_instance *in) {
  em_type *t = in->type;
  in->idle_since = core_mono_ms();
  in->idle_prev = t->idle_tail;
  in->idle_next = NULL;
  if (t->idle_tail) t->idle_tail->idle_next = in; else t->idle_head = in;
  t->idle_tail = in;
  in->in_idle = 1;
  if (!m->stopping && !m->closed)
    reaper_arm(m, rt_deadline_after(in->idle_since, t->max_idle_ms));
}

static void instance_free(em_manager *m, em_instance *in) {
  idle_remove(in);
  core_map_del(&m->instances, in->key, in->key_len);
  core_metric_add(in->type->m_instances, -1);
  free(in->key);
  free(in);
}

static em_instance *instance_get(em_manager *m, em_type *t, const char *id, int create) {
  core_ekey key;
  if (core_ekey_make(&key, t->name, id) != 0) return NULL;
  em_instance *in = core_map_get(&m->instances, key.p, key.n);
  if (!in && create) {
    in = calloc(1, sizeof(*in));
    char *k = in ? malloc(key.n + 1) : NULL;
    if (!k || (memcpy(k, key.p, key.n), k[key.n] = 0,
               core_map_put(&m->instances, k, key.n, in) != 0)) {
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

static void reaper_fire(uv_timer_t *timer) {
  em_manager *m = timer->data;
  int64_t now = core_mono_ms(), next = 0;
  for (size_t b = 0; b < m->types.nbuckets; b++) {
    for (core_map_entry *e = m->types.buckets[b]; e; e = e->next) {
      em_type *t = e->value;
      while (t->idle_head && now - t->idle_head->idle_since >= t->max_idle_ms) {
        em_instance *in = t->idle_head;
        core_log(m->lg, CRUSTER_LOG_TRACE, "entity", "evicting idle %s/%s", t->name, in->id);
        core_metric_add(t->m_evictions, 1);
        instance_free(m, in);
      }
      if (t->idle_head) {
        int64_t due = rt_deadline_after(t->idle_head->idle_since, t->max_idle_ms);
        if (next == 0 || due < next) next = due;
      }
    }
  }
  if (next) reaper_arm(m, next);
}

/* ---- delivery ------------------------------------------------------------- */

static void live_link(em_manager *m, cruster_request *r) {
  r->live_prev = NULL;
  r->live_next = m->live_head;
  if (m->live_head) m->live_head->live_prev = r;
  m->live_head = r;
}

static void live_unlink(em_manager *m, cruster_request *r) {
  if (r->live_prev) r->live_prev->live_next = r->live_next; else m->live_head = r->live_next;
  if (r->live_next) r->live_next->live_prev = r->live_prev;
  r->live_prev = r->live_next = NULL;
}

/* ---- the set of running requests (valid opts.caller values) ---------------- */

static size_t run_bucket(const em_manager *m, const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 31;
  x *= UINT64_C(0x9e3779b97f4a7c15);
  x ^= x >> 29;
  return (size_t)(x & (m->run_nbuckets - 1));
}

/* Doubles the bucket array; on OOM the chains just get longer. */
static void run_set_grow(em_manager *m) {
  size_t nb = m->run_nbuckets ? m->run_nbuckets * 2 : 64;
  cruster_request **b = calloc(nb, sizeof(*b));
  if (!b) return;
  cruster_request **old = m->run_buckets;
  size_t onb = m->run_nbuckets;
  m->run_buckets = b;
  m->run_nbuckets = nb;
  for (size_t i = 0; i < onb; i++) {
    cruster_request *x = old[i];
    while (x) {
      cruster_request *next = x->run_next;
      size_t j = run_bucket(m, x);
      x->run_next = b[j];
      b[j] = x;
      x = next;
    }
  }
  free(old);
}

static void run_set_add(em_manager *m, cruster_request *r) {
  r->running = 1;
  if (m->run_count >= m->run_nbuckets) run_set_grow(m);
  if (!m->run_nbuckets) return; /* (em_init made some) */
  size_t j = run_bucket(m, r);
  r->run_next = m->run_buckets[j];
  m->run_buckets[j] = r;
  m->run_count++;
}

static void run_set_remove(em_manager *m, cruster_request *r) {
  if (!r->running) return;
  r->running = 0;
  if (!m->run_nbuckets) return;
  for (cruster_request **pp = &m->run_buckets[run_bucket(m, r)]; *pp; pp = &(*pp)->run_next) {
    if (*pp != r) continue;
    *pp = r->run_next;
    r->run_next = NULL;
    m->run_count--;
    return;
  }
}

int em_request_is_running(const em_manager *m, const void *p) {
  if (!p || !m->run_nbuckets) return 0;
  for (const cruster_request *x = m->run_buckets[run_bucket(m, p)]; x; x = x->run_next)
    if ((const void *)x == p) return 1;
  return 0;
}

/* ---- lifetime ------------------------------------------------------------- */

/* Drops one owner's hold; the last one frees the handle (any thread). */
static void request_unref(cruster_request *r) {
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) return;
  if (r->tx) {
    /* Never answered (a stop): its SQL does not take effect. Nobody else
     * holds the request, so nobody uses the connection. */
    r->em->hooks.tx_rollback(r->em->hooks.ud, r->tx);
    r->tx = NULL;
  }
  if (r->stream) {
    em_stream *st = r->stream;
    while (st->head) {
      em_item *it = st->head;
      st->head = it->next;
      free(it);
    }
    uv_cond_destroy(&st->cv);
    uv_mutex_destroy(&st->mu);
    free(st);
  }
  free(r->env);
  free(r);
}

/* ---- streamed calls ---------------------------------------------------------- */

/* Wakes a yield waiting for room (and makes it re-check its state). */
static void stream_wake(em_stream *st, int close) {
  uv_mutex_lock(&st->mu);
  if (close) st->closed = 1;
  uv_cond_broadcast(&st->cv);
  uv_mutex_unlock(&st->mu);
}

void em_request_cancel(cruster_request *r) {
  atomic_store(&r->cancelled, 1);
  if (r->stream) stream_wake(r->stream, 0);
}

void em_request_stream_credit(cruster_request *r, int n) {
  em_stream *st = r->stream;
  if (!st || n <= 0) return;
  uv_mutex_lock(&st->mu);
  st->outstanding = st->outstanding > n ? st->outstanding - n : 0;
  uv_cond_broadcast(&st->cv);
  uv_mutex_unlock(&st->mu);
}

/* Hands the items yielded so far to the deliverer, in order (loop thread).
 * `from_cmd`: called by the stream's own command, which is no longer
 * queued. */
static void stream_drain(em_manager *m, cruster_request *r, int from_cmd) {
  em_stream *st = r->stream;
  uv_mutex_lock(&st->mu);
  if (from_cmd) st->posted = 0;
  em_item *list = st->head;
  st->head = st->tail = NULL;
  uv_mutex_unlock(&st->mu);
  while (list) {
    em_item *it = list;
    list = it->next;
    it->next = NULL;
    if (!m->closed && r->sink && r->ud && r->sink->item) {
      r->sink->item(r->ud, r, it);
    } else {
      /* Nobody takes items: the handler's next yield fails. */
      free(it);
      stream_wake(st, 1);
    }
  }
}

/* The command a yield posts (it holds a reference on r). */
static void stream_cmd(void *ud, rt_cmd *cmd) {
  em_manager *m = ud;
  em_stream *st = (em_stream *)((char *)cmd - offsetof(em_stream, cmd));
  cruster_request *r = st->req;
  stream_drain(m, r, 1);
  request_unref(r);
}

void em_request_free(em_manager *m, cruster_request *r) {
  live_unlink(m, r);
  run_set_remove(m, r);
  if (r->hold) {
    void *hold = r->hold;
    r->hold = NULL;
    r->sink->hold_dropped(hold);
  }
  if (r->ud && r->sink && r->sink->unbound) r->sink->unbound(r->ud, r);
  r->sink = NULL;
  r->ud = NULL;
  /* Nobody takes this stream's items any more. */
  if (r->stream) stream_wake(r->stream, 1);
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
  em_manager *m = r->em;
  if ((r->rpc->flags & CRUSTER_RPC_TRANSACTIONAL) && r->env->persisted && m->hooks.tx_begin) {
    void *tx = NULL;
    rt_pool_block_enter(m->loop->pool);
    int st = m->hooks.tx_begin(m->hooks.ud, &tx);
    rt_pool_block_leave(m->loop->pool);
    if (st != CRUSTER_OK) {
      /* Not run: nothing was stored, so it is delivered again. */
      r->tx_failed = 1;
      em_request_answer(r, CRUSTER_E_PERSISTENCE, NULL, 0,
                        "cannot open the transactional handler's transaction");
      request_unref(r);
      return;
    }
    r->tx = tx;
  }
  r->rpc->fn(r->rpc->user, r);
  /* Until here the handle was the handler's to use, answered or not. */
  request_unref(r);
}

static void request_done(void *ud, rt_cmd *cmd);

static void pump(em_manager *m, em_instance *in) {
  int64_t limit = in->type->concurrency;
  while (in->q_head && (limit == 0 || (int64_t)in->running < limit)) {
    cruster_request *r = in->q_head;
    in->q_head = r->next;
    if (!in->q_head) in->q_tail = NULL;
    in->queued--;
    r->next = NULL;
    if (r->sink && !r->ud) {
      /* Withdrawn before it started (its caller gave up): nobody wants the
       * answer. */
      em_request_free(m, r);
      continue;
    }
    run_set_add(m, r);
    in->running++;
    m->running++;
    r->job.fn = run_handler;
    r->job.arg = r;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed); /* the handler's */
    if (rt_submit(m->loop, &r->job) != CRUSTER_OK) {
      atomic_fetch_sub_explicit(&r->refs, 1, memory_order_relaxed); /* never ran */
      r->started_ns = r->answered_ns = core_mono_ns();
      r->status = CRUSTER_E_SHUTTING_DOWN;
      r->errmsg = core_strdup("the runtime is shutting down");
      atomic_store(&r->answered, 1);
      request_done(m, &r->done);
    }
  }
  if (in->running == 0 && in->queued == 0 && !in->in_idle) idle_append(m, in);
}

int em_deliver(em_manager *m, em_type *t, core_env *env, int rpc_index, const em_sink *sink,
               void *ud, void *hold, cruster_request **link) {
  if (m->stopping || m->closed) return CRUSTER_E_SHUTTING_DOWN;
  em_instance *in = instance_get(m, t, env->id, 1);
  if (!in) return CRUSTER_E_NOMEM;
  if ((int64_t)(in->queued + in->running) >= t->mailbox) {
    core_metric_add(t->m_mailbox_full, 1);
    if (env->persisted) in->backlog = 1;
    if (in->running == 0 && in->queued == 0 && !in->in_idle) idle_append(m, in);
    return CRUSTER_E_MAILBOX_FULL;
  }
  cruster_request *r = calloc(1, sizeof(*r));
  if (!r) return CRUSTER_E_NOMEM;
  if (env->stream) {
    r->stream = calloc(1, sizeof(*r->stream));
    if (!r->stream) {
      free(r);
      return CRUSTER_E_NOMEM;
    }
    uv_mutex_init(&r->stream->mu);
    uv_cond_init(&r->stream->cv);
    r->stream->cmd.fn = stream_cmd;
    r->stream->cmd.ud = m;
    r->stream->req = r;
  }
  atomic_init(&r->refs, 1); /* the loop's */
  r->em = m;
  r->inst = in;
  r->rpc = &t->rpcs.v[rpc_index];
  r->env = env;
  r->sink = sink;
  r->ud = ud;
  r->hold = hold;
  r->done.fn = request_done;
  r->done.ud = m;
  if (link) *link = r;
  live_link(m, r);
  idle_remove(in);
  if (in->q_tail) in->q_tail->next = r; else in->q_head = r;
  in->q_tail = r;
  in->queued++;
  pump(m, in);
  return CRUSTER_OK;
}

/* ---- completion ------------------------------------------------------------ */

/* A delivery's answer, its hold (if any) ended: to its deliverer, unless the
 * hold failed or nobody waits. */
static void finish(em_manager *m, cruster_request *r) {
  if (!r->hold_failed && r->sink && r->ud) r->sink->answered(r->ud, r);
  else em_request_free(m, r);
}

/* The mailbox has room again: persisted messages that found it full wait
 * elsewhere (the owner's hook looks for them); run what is queued (or let
 * it idle). */
static void room_made(em_manager *m, em_instance *in) {
  if (in->backlog && (int64_t)(in->queued + in->running) < in->type->mailbox) {
    in->backlog = 0;
    if (m->hooks.room) m->hooks.room(m->hooks.ud);
  }
  pump(m, in);
}

/* Takes a queued (not started) delivery out of its instance's mailbox; 0 if
 * it is not there. */
static int mailbox_remove(em_manager *m, cruster_request *r) {
  em_instance *in = r->inst;
  cruster_request *prev = NULL;
  for (cruster_request *x = in->q_head; x; prev = x, x = x->next) {
    if (x != r) continue;
    if (prev) prev->next = x->next; else in->q_head = x->next;
    if (in->q_tail == x) in->q_tail = prev;
    x->next = NULL;
    in->queued--;
    room_made(m, in);
    return 1;
  }
  return 0;
}

void em_hold_end(em_manager *m, cruster_request *r, int ok) {
  r->hold = NULL;
  if (!ok) {
    r->hold_failed = 1;
    /* Not accepted (its caller was told so): if its handler has not
     * started, it never will. */
    if (!r->running && !r->finished && mailbox_remove(m, r)) {
      em_request_free(m, r);
      return;
    }
  }
  if (r->finished) finish(m, r);
}

static void request_done(void *ud, rt_cmd *cmd) {
  em_manager *m = ud;
  cruster_request *r = (cruster_request *)((char *)cmd - offsetof(cruster_request, done));
  if (m->closed) {
    em_request_free(m, r);
    return;
  }
  /* Every item the handler yielded reaches its deliverer before the answer
   * (they were posted first; this takes any not taken yet). */
  if (r->stream) stream_drain(m, r, 0);
  em_instance *in = r->inst;
  em_type *t = in->type;
  run_set_remove(m, r);
  in->running--;
  m->running--;
  core_metric_add(r->status == CRUSTER_OK ? t->m_ok : t->m_err, 1);
  /* From the handler's start to its answer, both taken on the threads that
   * did them: the time the answer then waited for the loop is not the
   * handler's. */
  uint64_t took = r->answered_ns > r->started_ns ? r->answered_ns - r->started_ns : 0;
  core_metric_observe(t->m_duration, (double)took / 1e9);
  /* Held: nobody hears of the answer before the hold ends (em_hold_end). */
  if (r->hold) r->finished = 1;
  else finish(m, r);
  room_made(m, in);
  if (m->running == 0 && m->hooks.idle) m->hooks.idle(m->hooks.ud);
}

/* A transactional handler answers: its reply commits with its SQL; a
 * failure rolls the SQL back (and is stored as any failure). Runs on the
 * answering thread, which owns the transaction until here. */
static int answer_locked(cruster_request *r, int status, const void *data, size_t len,
                         const char *msg);

static void tx_end(cruster_request *r, int status, const void *data, size_t len) {
  em_manager *m = r->em;
  void *tx = r->tx;
  r->tx = NULL;
  rt_pool_block_enter(m->loop->pool);
  if (status == CRUSTER_OK) {
    if (m->hooks.tx_commit_reply(m->hooks.ud, tx, r->env, data, len) == CRUSTER_OK)
      r->tx_committed = 1;
    else
      r->tx_failed = 1;
  } else {
    m->hooks.tx_rollback(m->hooks.ud, tx);
  }
  rt_pool_block_leave(m->loop->pool);
}

int em_request_answer(cruster_request *r, int status, const void *data, size_t len,
                      const char *msg) {
  em_stream *st = r->stream;
  if (!st) return answer_locked(r, status, data, len, msg);
  /* A streamed request answers under its stream's lock: a yield either
   * posted its item before the answer or sees it answered. */
  uv_mutex_lock(&st->mu);
  int rc = answer_locked(r, status, data, len, msg);
  uv_cond_broadcast(&st->cv);
  uv_mutex_unlock(&st->mu);
  return rc;
}

static int answer_locked(cruster_request *r, int status, const void *data, size_t len,
                         const char *msg) {
  if (atomic_exchange(&r->answered, 1)) return CRUSTER_E_STATE;
  if (r->tx) tx_end(r, status, data, len);
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
  if (rt_post(r->em->loop, &r->done) != 0) return CRUSTER_E_SHUTTING_DOWN;
  return CRUSTER_OK;
}

/* The request ids of the persisted messages handed to this runner's
 * instances and not answered yet. *n gets the count; NULL on OOM. */
int64_t *em_inflight_persisted(em_manager *m, size_t *n) {
  size_t k = 0;
  for (cruster_request *r = m->live_head; r; r = r->live_next)
    k += r->env->persisted && !r->hold_failed;
  int64_t *ids = malloc((k ? k : 1) * sizeof(*ids));
  if (!ids) return NULL;
  *n = 0;
  for (cruster_request *r = m->live_head; r; r = r->live_next)
    if (r->env->persisted && !r->hold_failed) ids[(*n)++] = r->env->request_id;
  return ids;
}

/* ---- setup and stop ------------------------------------------------------------ */

cruster_status em_init(em_manager *m, rt_loop *loop, const cruster_config *cfg,
                       const core_logger *lg, cruster_metrics *metrics, cruster_runtime *owner,
                       const em_hooks *hooks, cruster_error **err) {
  memset(m, 0, sizeof(*m));
  m->loop = loop;
  m->cfg = cfg;
  m->lg = lg;
  m->metrics = metrics;
  m->owner = owner;
  if (hooks) m->hooks = *hooks;
  core_map_init(&m->types);
  core_map_init(&m->instances);
  run_set_grow(m);
  if (!m->run_nbuckets) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  m->m_types = core_metrics_get(metrics, CORE_GAUGE, "cluster_entity_types",
                                "Entity types registered on this runner", NULL);
  uv_timer_init(&loop->uv, &m->reaper_timer);
  m->reaper_timer.data = m;
  return CRUSTER_OK;
}

void em_interrupt_all(em_manager *m) {
  m->stopping = 1;
  uv_timer_stop(&m->reaper_timer);
  for (cruster_request *r = m->live_head; r; r = r->live_next)
    if (r->running) em_request_cancel(r);
  for (size_t b = 0; b < m->instances.nbuckets; b++) {
    for (core_map_entry *e = m->instances.buckets[b]; e; e = e->next) {
      em_instance *in = e->value;
      while (in->q_head) {
        cruster_request *r = in->q_head;
        in->q_head = r->next;
        in->queued--;
        /* (A held one is the hold's business; one whose hold failed was
         * never accepted.) */
        if (r->sink && r->ud && !r->hold && !r->hold_failed && r->sink->dropped)
          r->sink->dropped(r->ud, r);
        em_request_free(m, r);
      }
      in->q_tail = NULL;
    }
  }
}

size_t em_interrupt_shard(em_manager *m, const char *group, int32_t shard) {
  size_t n = 0;
  for (cruster_request *r = m->live_head; r; r = r->live_next)
    if (r->running && r->env && r->env->shard == shard && strcmp(r->env->group, group) == 0) {
      em_request_cancel(r);
      n++;
    }
  for (size_t b = 0; b < m->instances.nbuckets; b++) {
    for (core_map_entry *e = m->instances.buckets[b]; e; e = e->next) {
      em_instance *in = e->value;
      if (!in->q_head || strcmp(in->type->shard_group, group) != 0 ||
          cruster_shard_for(in->id, strlen(in->id), (int32_t)m->cfg->shards_per_group) != shard)
        continue;
      while (in->q_head) {
        cruster_request *r = in->q_head;
        in->q_head = r->next;
        in->queued--;
        if (r->sink && r->ud && !r->hold && !r->hold_failed && r->sink->dropped)
          r->sink->dropped(r->ud, r);
        em_request_free(m, r);
        n++;
      }
      in->q_tail = NULL;
    }
  }
  return n;
}

size_t em_running_in_shard(const em_manager *m, const char *group, int32_t shard) {
  size_t n = 0;
  for (const cruster_request *r = m->live_head; r; r = r->live_next)
    if (r->running && r->env && r->env->shard == shard && strcmp(r->env->group, group) == 0) n++;
  return n;
}

void em_close(em_manager *m) { m->closed = 1; }

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

void em_free(em_manager *m) {
  /* The pool is joined: no handler holds a request any more. */
  while (m->live_head) {
    cruster_request *r = m->live_head;
    r->ud = NULL;
    em_request_free(m, r);
  }
  free(m->run_buckets);
  m->run_buckets = NULL;
  m->run_nbuckets = m->run_count = 0;
  core_map_each(&m->instances, free_instance_entry, NULL);
  core_map_clear(&m->instances);
  core_map_each(&m->types, free_type_entry, NULL);
  core_map_clear(&m->types);
}
