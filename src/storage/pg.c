/* PostgreSQL message storage: its st_ops. A pool of non-blocking libpq
 * connections on the runtime's loop thread (pg_conn.c) runs the queued
 * operations in batched transactions (pg_batch.c); pg_store.h names the
 * files. This file: attach, the entry points (each queues an operation),
 * flush, detach, destroy and cruster_storage_pg_new. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "storage/pg_store.h"
#include "storage/pg_wf.h"

/* ---- st_ops --------------------------------------------------------------------------- */

static void on_cleanup_timer(uv_timer_t *t) {
  pg_store *st = t->data;
  pg_op *o = pg_op_new(OP_CLEANUP, NULL);
  if (o) pg_enqueue(st, &st->conns[0], o);
}

/* The configured shard groups as a PostgreSQL text[] literal (each element
 * quoted). NULL on OOM. */
static char *groups_literal(const cruster_config *cfg) {
  size_t cap = 3;
  for (size_t g = 0; g < cfg->n_shard_groups; g++) cap += 2 * strlen(cfg->shard_groups[g]) + 3;
  char *out = malloc(cap), *p = out;
  if (!out) return NULL;
  *p++ = '{';
  for (size_t g = 0; g < cfg->n_shard_groups; g++) {
    if (g) *p++ = ',';
    *p++ = '"';
    for (const char *c = cfg->shard_groups[g]; *c; c++) {
      if (*c == '"' || *c == '\\') *p++ = '\\';
      *p++ = *c;
    }
    *p++ = '"';
  }
  *p++ = '}';
  *p = 0;
  return out;
}

static cruster_status pg_attach(cruster_storage *s, const st_host *host, cruster_error **err) {
  pg_store *st = s->impl;
  const cruster_config *cfg = host->cfg;
  PGconn *check = pg_connect_blocking(st->conninfo, err);
  if (!check) return CRUSTER_E_PERSISTENCE;
  cruster_status rc = pg_check_schema(check, cfg->storage_migrations_table,
                                      (int)cfg->storage_auto_migrate, err);
  /* Single-node mode: a second runtime on this schema would take the first
   * one's claims and write beside it (the in-memory knowledge of pending
   * entities assumes one writer). The check connection keeps the lock.
   * Cluster mode shares the schema: each runner writes and claims its own
   * shards' messages (pg_known.c). */
  if (rc == CRUSTER_OK && !host->cluster) rc = pg_lock_schema(check, err);
  if (rc != CRUSTER_OK || host->cluster) PQfinish(check);
  if (rc != CRUSTER_OK) return rc;
  st->lock_conn = host->cluster ? NULL : check;
  st->host = *host;
  st->cluster = host->cluster != 0;
  if (pg_ks_init(st) != 0 || !(st->groups_lit = groups_literal(cfg)))
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  st->lg = host->lg;
  st->batch = cfg->storage_batch_size;
  st->backoff_ms = cfg->storage_retry_backoff;
  st->retention_ms = cfg->storage_retention;
  if (!st->wf && !(st->wf = pg_wf_new(st->conninfo, (size_t)cfg->workflow_pool_size)))
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  pg_life_new(st);
  pg_claimer_new(st);
  if (pg_fast_sql_build(st) != 0) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  st->conns = calloc((size_t)cfg->storage_pool_size, sizeof(*st->conns));
  if (!st->conns) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  st->nconns = (int)cfg->storage_pool_size;
  st->m_batches = core_metrics_get(host->metrics, CORE_COUNTER, "cluster_storage_transactions_total",
                                   "Transactions the PostgreSQL storage committed or tried", NULL);
  st->m_batch_ops = core_metrics_get(host->metrics, CORE_COUNTER, "cluster_storage_operations_total",
                                     "Storage operations sent to PostgreSQL (several share a transaction)", NULL);
  st->m_latency = core_metrics_get(host->metrics, CORE_HISTOGRAM, "cluster_storage_operation_seconds",
                                   "Time from queueing a storage operation to its result", NULL);
  st->m_reconnects = core_metrics_get(host->metrics, CORE_COUNTER, "cluster_storage_reconnects_total",
                                      "Times a PostgreSQL connection was lost and reopened", NULL);
  if (st->cluster) {
    st->m_taken_over = core_metrics_get(
        host->metrics, CORE_COUNTER, "cluster_storage_claims_taken_over_total",
        "Claims left by other runners on acquired shards, given back to be delivered again", NULL);
    st->m_known = core_metrics_get(host->metrics, CORE_GAUGE, "cluster_storage_shards_known",
                                   "Shards whose stored unanswered messages this runner has listed",
                                   NULL);
  }
  for (int i = 0; i < st->nconns; i++) {
    pg_conn *c = &st->conns[i];
    c->st = st;
    c->idx = i;
    c->fd = -1;
    uv_timer_init(host->loop, &c->timer);
    c->timer.data = c;
    pg_conn_connect(c);
  }
  uv_timer_init(host->loop, &st->done_timer);
  st->done_timer.data = st;
  st->done_timer_init = 1;
  uv_timer_init(host->loop, &st->scan_timer);
  st->scan_timer.data = st;
  st->scan_timer_init = 1;
  if (st->retention_ms > 0) {
    int64_t every = st->retention_ms / 2;
    if (every < 500) every = 500;
    if (every > 60000) every = 60000;
    uv_timer_init(host->loop, &st->cleanup_timer);
    st->cleanup_timer.data = st;
    st->cleanup_init = 1;
    uv_timer_start(&st->cleanup_timer, on_cleanup_timer, (uint64_t)every, (uint64_t)every);
  }
  uv_timer_init(host->loop, &st->recon_timer);
  st->recon_timer.data = st;
  st->recon_timer_init = 1;
  uv_timer_init(host->loop, &st->acq_timer);
  st->acq_timer.data = st;
  st->acq_timer_init = 1;
  /* Cluster mode: nothing is known until shards are acquired (each new
   * owner gives back what others left on its shards). */
  if (st->cluster) return CRUSTER_OK;
  /* Claims an earlier life left: given back once the first connection is
   * ready (the reconcile goes first), then what earlier lives left is
   * listed. */
  st->recon_need = st->recon_first = 1;
  pg_scan_start(st);
  return CRUSTER_OK;
}

static int pg_claims_now(cruster_storage *s, const core_env *m) {
  return pg_knows_clear(s->impl, m);
}

static void pg_save_request(cruster_storage *s, const core_env *m, const st_key *key, int claim,
                            st_save_cb cb, void *ud) {
  pg_store *st = s->impl;
  st_saved fail = {ST_SAVED, m->request_id, 0, NULL};
  if (m->keyed && (!key || !key->data || key->len == 0 || key->len > INT32_MAX)) {
    cb(ud, CRUSTER_E_INTERNAL, "a keyed message needs its key", &fail);
    return;
  }
  pg_op *o = pg_op_new(OP_SAVE, ud);
  if (o) {
    o->cb.save = cb;
    o->env = core_env_copy(m);
  }
  if (o && o->env && m->keyed) {
    o->key = core_memdup(key->data, key->len);
    o->key_len = key->len;
  }
  if (!o || !o->env || (m->keyed && !o->key)) {
    if (o) pg_op_free(o);
    pg_unknown_add(st, m->group, m->shard, m->type, m->id);
    cb(ud, CRUSTER_E_NOMEM, "out of memory", &fail);
    return;
  }
  o->claim = claim;
  o->now_ms = core_now_ms();
  o->fast = claim && pg_knows_clear(st, m);
  if (o->fast) o->nstmt = 0; /* a row of the job's fast insert */
  /* An older message of this runtime for the entity is unanswered: if the
   * probe does not see its row, that row is not committed yet (another
   * job) or its transaction failed and is being re-run -- claiming this one
   * would deliver it first. It waits for the poll (ST_SAVED_QUEUED). */
  o->behind = !o->fast && pg_pending_of(st, m) > 0;
  /* Only a save its insert may claim is on its way to the runtime. */
  o->in_transit = claim && !o->behind;
  if (o->in_transit) pg_transit_start(st, m);
  o->tracked = pg_track_add(st, o);
  pg_enqueue(st, pg_conn_for_entity(st, m), o);
}

/* A transactional handler's reply was committed on the workflow side's
 * connection: what save_reply would have learnt. */
static void pg_replied(cruster_storage *s, const core_env *m) {
  pg_track_remove(s->impl, m->request_id, m->group, m->shard, m->type, m->id);
}

static void pg_save_reply(cruster_storage *s, const core_env *m, const st_reply *r, st_done_cb cb,
                          void *ud) {
  pg_store *st = s->impl;
  /* Answered: newer messages of the entity no longer wait for it (should
   * storing the answer fail, pg_op_fail makes the entity ask). */
  pg_track_remove(st, m->request_id, m->group, m->shard, m->type, m->id);
  pg_op *o = pg_op_new(OP_REPLY, ud);
  if (o) {
    o->cb.done = cb;
    o->env = core_env_copy(m);
    o->status = r->status;
    o->len = r->len;
    o->data = r->status == CRUSTER_OK ? core_memdup(r->data, r->len) : NULL;
    /* reply_message is text: PostgreSQL refuses bytes that are not UTF-8,
     * and a refused reply is never durable (the handler would run again
     * until it became a dead letter). Handlers' failure texts are free-form. */
    o->message = r->message ? core_utf8_sanitize_dup(r->message) : NULL;
  }
  if (!o || !o->env || (r->status == CRUSTER_OK && !o->data) || (r->message && !o->message)) {
    if (o) pg_op_free(o);
    pg_unknown_add(st, m->group, m->shard, m->type, m->id);
    if (cb) cb(ud, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  pg_enqueue_reply(st, o);
}

static void pg_release(cruster_storage *s, const core_env *m, int attempt) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_RELEASE, NULL);
  if (o) o->env = core_env_copy(m);
  if (!o || !o->env) {
    free(o);
    core_log(st->lg, CRUSTER_LOG_ERROR, "storage", "out of memory releasing message %lld",
             (long long)m->request_id);
    return;
  }
  o->attempt = attempt;
  pg_transit_start(st, m);
  /* On the poll's connection: a later poll must see this message unclaimed,
   * or it would claim a younger message of the entity and deliver it first.
   * (Inserts do not look at claims, so they need no order with this.) */
  pg_enqueue(st, &st->conns[0], o);
}

static void pg_park(cruster_storage *s, const core_env *m, int64_t wake_at, int64_t wake_seq,
                    int progress, st_done_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_PARK, ud);
  if (o) o->env = core_env_copy(m);
  if (!o || !o->env) {
    free(o);
    if (cb) cb(ud, CRUSTER_E_NOMEM, "out of memory parking a message");
    return;
  }
  o->cb.done = cb;
  o->wake_at = wake_at;
  o->wake_seq = wake_seq;
  o->progress = progress;
  pg_transit_start(st, m);
  /* On the poll's connection, as a release: the poll after it sees it. */
  pg_enqueue(st, &st->conns[0], o);
}

static void *pg_wf_side(cruster_storage *s, const st_wf_ops **ops) {
  pg_store *st = s->impl;
  *ops = &pg_wf_ops;
  return st->wf;
}

/* The keys (PG_OWNED_BY, pg_sql.h) of the owned shards as an int8[]
 * literal in *out -- left NULL when every shard is owned. Returns the number
 * owned, or -1 on OOM. */
static int64_t owned_keys(pg_store *st, st_owned_fn owned, void *owned_ud, char **out) {
  const cruster_config *cfg = st->host.cfg;
  size_t per = (size_t)cfg->shards_per_group, total = cfg->n_shard_groups * per, n = 0;
  *out = NULL;
  if (!owned) return (int64_t)total;
  int64_t *keys = malloc((total + 1) * sizeof(*keys));
  if (!keys) return -1;
  for (size_t g = 0; g < cfg->n_shard_groups; g++)
    for (size_t k = 0; k < per; k++)
      if (owned(owned_ud, cfg->shard_groups[g], (int32_t)k)) keys[n++] = (int64_t)(g * per + k);
  if (n < total && n > 0 && !(*out = pg_int8_array(keys, n))) n = (size_t)-1;
  free(keys);
  return n == (size_t)-1 ? -1 : (int64_t)n;
}

static void pg_poll(cruster_storage *s, int64_t now_ms, size_t limit, int64_t max_retries,
                    st_owned_fn owned, void *owned_ud, st_poll_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_POLL, ud);
  int64_t nowned = o ? owned_keys(st, owned, owned_ud, &o->owned) : -1;
  if (nowned < 0) {
    if (o) pg_op_free(o);
    cb(ud, CRUSTER_E_NOMEM, "out of memory", NULL, 0, NULL, 0);
    return;
  }
  if (nowned == 0) { /* nothing of ours to claim, nothing due for us */
    pg_op_free(o);
    st->next_due = 0;
    cb(ud, CRUSTER_OK, NULL, NULL, 0, NULL, 0);
    return;
  }
  o->cb.poll = cb;
  o->now_ms = now_ms;
  o->limit = limit;
  o->max_retries = max_retries;
  pg_enqueue(st, &st->conns[0], o);
}

static void pg_shards_acquired(cruster_storage *s, const char *group, const int32_t *shards,
                               size_t n, st_done_cb cb, void *ud) {
  pg_store *st = s->impl;
  if (!st->cluster || n == 0) { /* single-node: every shard was known from the start */
    cb(ud, CRUSTER_OK, NULL);
    return;
  }
  if (!group || !shards) {
    cb(ud, CRUSTER_E_INVALID_ARGUMENT, "shards_acquired needs a group and shards");
    return;
  }
  for (size_t i = 0; i < n; i++)
    if (!pg_ks_of(st, group, shards[i])) {
      cb(ud, CRUSTER_E_INVALID_ARGUMENT, "shards_acquired: no such shard group or shard");
      return;
    }
  pg_op *o = pg_op_new(OP_ACQUIRE, ud);
  if (o) {
    o->env = core_env_new("", "", "", NULL, 0);
    o->shards = malloc(n * sizeof(*o->shards));
    o->gens = malloc(n * sizeof(*o->gens));
  }
  if (!o || !o->env || !o->shards || !o->gens || strlen(group) >= sizeof(o->env->group)) {
    if (o) pg_op_free(o);
    cb(ud, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  snprintf(o->env->group, sizeof(o->env->group), "%s", group);
  memcpy(o->shards, shards, n * sizeof(*shards));
  o->limit = n;
  o->cb.acquired = cb;
  pg_acquire_start(st, o);
}

static void pg_shards_released(cruster_storage *s, const char *group, const int32_t *shards,
                               size_t n) {
  if (shards) pg_ks_release(s->impl, group, shards, n);
}

static int64_t pg_next_due(cruster_storage *s) {
  pg_store *st = s->impl;
  return st->next_due;
}

static void pg_get_reply(cruster_storage *s, int64_t request_id, st_reply_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_GET, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory", 0, 0, NULL);
    return;
  }
  o->cb.reply = cb;
  o->request_id = request_id;
  pg_enqueue(st, &st->conns[0], o);
}

static void pg_get_keyed(cruster_storage *s, const char *type, const char *id, const char *method,
                         const st_key *key, st_keyed_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_GET_KEYED, ud);
  if (o) {
    o->cb.keyed = cb;
    o->env = core_env_new(type, id, method, NULL, 0);
    o->key = key->len <= INT32_MAX ? core_memdup(key->data, key->len) : NULL;
    o->key_len = key->len;
  }
  if (!o || !o->env || !o->key) {
    if (o) pg_op_free(o);
    cb(ud, CRUSTER_E_NOMEM, "out of memory", 0, 0, NULL);
    return;
  }
  /* On the entity's connection: behind its writes queued here. */
  pg_enqueue(st, pg_conn_for_entity(st, o->env), o);
}

static void pg_list_dead(cruster_storage *s, size_t limit, st_list_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_DEAD, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory", NULL);
    return;
  }
  o->cb.list = cb;
  o->limit = limit;
  pg_enqueue(st, &st->conns[0], o);
}

static void pg_redeliver(cruster_storage *s, int64_t request_id, st_done_cb cb, void *ud) {
  pg_store *st = s->impl;
  pg_op *o = pg_op_new(OP_REDELIVER, ud);
  if (!o) {
    cb(ud, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  o->cb.done = cb;
  o->request_id = request_id;
  pg_enqueue(st, &st->conns[0], o);
}

static void pg_flush(cruster_storage *s, void (*cb)(void *ud), void *ud) {
  pg_store *st = s->impl;
  pg_done_release(st);
  st->flush_cb = cb;
  st->flush_ud = ud;
  pg_check_flushed(st);
}

static void pg_detach(cruster_storage *s) {
  pg_store *st = s->impl;
  st->flush_cb = NULL;
  /* The schema is free for another runtime once this one stops. */
  if (st->lock_conn) PQfinish(st->lock_conn);
  st->lock_conn = NULL;
  if (st->closing) return; /* stop may detach early (flush timeout), then again at close */
  st->closing = 1;
  pg_done_release(st); /* fails them: closing */
  pg_acquire_close(st);
  if (st->done_timer_init) {
    uv_close((uv_handle_t *)&st->done_timer, NULL);
    st->done_timer_init = 0;
  }
  if (st->scan_timer_init) {
    uv_timer_stop(&st->scan_timer);
    uv_close((uv_handle_t *)&st->scan_timer, NULL);
    st->scan_timer_init = 0;
  }
  if (st->recon_timer_init) {
    uv_timer_stop(&st->recon_timer);
    uv_close((uv_handle_t *)&st->recon_timer, NULL);
    st->recon_timer_init = 0;
  }
  if (st->cleanup_init) {
    uv_timer_stop(&st->cleanup_timer);
    uv_close((uv_handle_t *)&st->cleanup_timer, NULL);
    st->cleanup_init = 0;
  }
  for (int i = 0; i < st->nconns; i++) {
    pg_conn *c = &st->conns[i];
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, NULL);
    if (c->pq) pg_conn_fail(c, "the runtime is shutting down");
    while (c->q_head) {
      pg_op *o = c->q_head;
      c->q_head = o->next;
      c->qlen--;
      pg_op_fail(st, o, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
    }
    c->q_tail = NULL;
  }
}

static void pg_destroy(cruster_storage *s) {
  pg_store *st = s->impl;
  if (st->lock_conn) PQfinish(st->lock_conn);
  pg_ks_free(st);
  free(st->groups_lit);
  core_map_clear(&st->transit);
  core_map_clear(&st->held);
  for (int i = 0; i < PG_FAST_SIZES; i++) free(st->fast_sql[i]);
  if (st->conns) {
    free(st->conns);
  }
  pg_wf_free(st->wf);
  free(st->conninfo);
  free(st);
  free(s);
}

static const st_ops pg_ops = {
    .name = "postgresql",
    .attach = pg_attach,
    .claims_now = pg_claims_now,
    .save_request = pg_save_request,
    .save_reply = pg_save_reply,
    .replied = pg_replied,
    .poll = pg_poll,
    .shards_acquired = pg_shards_acquired,
    .shards_released = pg_shards_released,
    .release = pg_release,
    .next_due = pg_next_due,
    .park = pg_park,
    .wf = pg_wf_side,
    .get_reply = pg_get_reply,
    .get_keyed = pg_get_keyed,
    .list_dead = pg_list_dead,
    .redeliver = pg_redeliver,
    .flush = pg_flush,
    .detach = pg_detach,
    .destroy = pg_destroy,
};

cruster_status cruster_storage_pg_new(const char *conninfo, cruster_storage **out,
                                      cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  *out = NULL;
  if (!conninfo) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "conninfo must not be NULL");
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
  if (!opts) {
    cruster_status rc = core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                                       "bad PostgreSQL connection string: %s",
                                       perr ? perr : "out of memory");
    PQfreemem(perr);
    return rc;
  }
  PQconninfoFree(opts);
  cruster_storage *s = calloc(1, sizeof(*s));
  pg_store *st = calloc(1, sizeof(*st));
  if (!s || !st || !(st->conninfo = core_strdup(conninfo))) {
    free(s);
    free(st);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  s->ops = &pg_ops;
  s->impl = st;
  *out = s;
  return CRUSTER_OK;
}
