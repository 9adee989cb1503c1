/* PostgreSQL storage: results. An operation's results (or its failure)
 * go to its callback, and to what the storage knows (pg_known.c). */
#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/util.h"
#include "storage/pg_store.h"

/* Builds an envelope from a PG_MSG_COLUMNS row. */
static core_env *row_env(const PGresult *r, int row, int64_t *attempts) {
  core_env *e = core_env_new(pg_get_text(r, row, 4), pg_get_text(r, row, 5), pg_get_text(r, row, 6),
                         PQgetvalue(r, row, 7), (size_t)PQgetlength(r, row, 7));
  if (!e) return NULL;
  e->request_id = pg_get_i64(r, row, 1);
  snprintf(e->group, sizeof(e->group), "%s", pg_get_text(r, row, 2));
  e->shard = pg_get_i32(r, row, 3);
  e->internal = (unsigned char)pg_get_bool(r, row, 8);
  e->is_request = (unsigned char)pg_get_bool(r, row, 9);
  e->keyed = (unsigned char)pg_get_bool(r, row, 10);
  e->deliver_at = pg_get_i64(r, row, 11);
  e->persisted = 1;
  if (attempts) *attempts = pg_get_i32(r, row, 12);
  return e;
}

/* Reports failure `status`/`msg` to the operation's callback. */
void pg_op_fail(pg_store *st, pg_op *o, int status, const char *msg) {
  switch (o->kind) {
  case OP_SAVE:
    /* The row may exist (a lost connection) and then waits for the poll. */
    if (o->tracked) pg_track_remove(st, o->env->request_id, o->env->group, o->env->shard, o->env->type, o->env->id);
    pg_unknown_add(st, o->env->group, o->env->shard, o->env->type, o->env->id);
    {
      st_saved out = {ST_SAVED, o->env->request_id, 0, NULL};
      o->cb.save(o->ud, status, msg, &out);
    }
    pg_save_landed(st, o);
    if (o->in_transit) pg_transit_end(st, o->env);
    break;
  case OP_ACQUIRE:
    pg_acquire_failed(st, o, status, msg); /* keeps or frees it */
    return;
  case OP_PARK:
    pg_transit_end(st, o->env);
    if (o->cb.done) o->cb.done(o->ud, status, msg);
    break;
  case OP_RELEASE:
    pg_transit_end(st, o->env);
    if (!st->closing)
      core_log(st->lg, CRUSTER_LOG_WARN, "storage", "giving back message %lld failed: %s",
               (long long)o->env->request_id, msg);
    break;
  case OP_SCAN:
    pg_scan_failed(st);
    break;
  case OP_REPLY:
    /* Not answered after all: the message is retried, after the ones in
     * memory would be delivered -- so its entity asks from now on. */
    pg_unknown_add(st, o->env->group, o->env->shard, o->env->type, o->env->id);
    if (o->cb.done) o->cb.done(o->ud, status, msg);
    break;
  case OP_REDELIVER:
    if (o->cb.done) o->cb.done(o->ud, status, msg);
    break;
  case OP_POLL:
    o->cb.poll(o->ud, status, msg, NULL, 0, NULL, 0);
    break;
  case OP_RECONCILE:
    pg_recon_failed(st);
    break;
  case OP_GET:
    o->cb.reply(o->ud, status, msg, 0, 0, NULL);
    break;
  case OP_GET_KEYED:
    o->cb.keyed(o->ud, status, msg, 0, 0, NULL);
    break;
  case OP_DEAD:
    o->cb.list(o->ud, status, msg, NULL);
    break;
  default:
    if (!st->closing)
      core_log(st->lg, CRUSTER_LOG_WARN, "storage", "a storage operation failed: %s", msg);
    break;
  }
  pg_op_free(o);
}

static int cmp_seq(const void *a, const void *b) {
  const int64_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The keyed insert's result (PG_SQL_INSERT). Returns 1 when the operation
 * was queued again (a concurrent insert took its free candidate id). */
#define PG_KEYED_TRIES 8
static int save_keyed_done(pg_store *st, pg_op *o, PGresult *r, st_saved *out) {
  st_save_cb cb = o->cb.save;
  int kind = PQntuples(r) > 0 ? pg_get_i32(r, 0, 0) : -1;
  if (kind == 0) {
    int64_t id = pg_get_i64(r, 0, 2);
    if (id != o->env->request_id) {
      /* Stored under another candidate: its PRID (tracked, if anything) is
       * another call's. Its entity is ordered by asking from now on. */
      if (o->tracked) pg_track_remove(st, o->env->request_id, o->env->group, o->env->shard, o->env->type, o->env->id);
      o->tracked = 0;
      pg_unknown_add(st, o->env->group, o->env->shard, o->env->type, o->env->id);
    }
    out->request_id = id;
    out->result = (o->claim && !pg_get_bool(r, 0, 1)) ? ST_SAVED_QUEUED : ST_SAVED;
    cb(o->ud, CRUSTER_OK, NULL, out);
    return 0;
  }
  /* Nothing new stored: nothing new to count. */
  if (o->tracked) pg_track_remove(st, o->env->request_id, o->env->group, o->env->shard, o->env->type, o->env->id);
  o->tracked = 0;
  if (kind == 1) {
    out->request_id = pg_get_i64(r, 0, 2);
    out->same_payload = pg_get_bool(r, 0, 7);
    if (pg_get_bool(r, 0, 6) && !PQgetisnull(r, 0, 3)) {
      st_reply rep = {pg_get_i32(r, 0, 3), PQgetvalue(r, 0, 4), (size_t)PQgetlength(r, 0, 4),
                      pg_get_text(r, 0, 5)};
      out->result = ST_DUPLICATE_REPLIED;
      out->existing = &rep;
      cb(o->ud, CRUSTER_OK, NULL, out);
    } else {
      out->result = ST_DUPLICATE_PENDING;
      cb(o->ud, CRUSTER_OK, NULL, out);
    }
    return 0;
  }
  if (kind == 2) {
    cb(o->ud, CRUSTER_E_CONFLICT,
       "every candidate request id of this idempotency key holds another call: use another key",
       out);
    return 0;
  }
  if (++o->retries < PG_KEYED_TRIES && !st->closing) {
    for (int i = 0; i < 3; i++) {
      PQclear(o->res[i]);
      o->res[i] = NULL;
    }
    pg_enqueue(st, pg_conn_for_entity(st, o->env), o);
    return 1;
  }
  cb(o->ud, CRUSTER_E_PERSISTENCE, "storing a keyed message lost every try to concurrent inserts",
     out);
  return 0;
}

void pg_op_complete(pg_store *st, pg_op *o) {
  PGresult *r = o->res[0];
  core_metric_observe(st->m_latency, (double)(core_mono_ns() - o->queued_ns) / 1e9);
  switch (o->kind) {
  case OP_SAVE: {
    st_save_cb cb = o->cb.save;
    st_saved out = {ST_SAVED, o->env->request_id, 0, NULL};
    if (o->fast) {
      /* A row of the job's fast insert, which succeeded: stored, claimed. */
      cb(o->ud, CRUSTER_OK, NULL, &out);
    } else if (!o->env->keyed) {
      /* A fresh id: a row back means stored; none means it was taken. */
      if (PQntuples(r) == 0) {
        if (o->tracked) pg_track_remove(st, o->env->request_id, o->env->group, o->env->shard, o->env->type, o->env->id);
        cb(o->ud, CRUSTER_E_PERSISTENCE,
           "request id already stored: two runtimes share this schema in single-node mode?",
           &out);
      } else {
        out.result = (o->claim && !pg_get_bool(r, 0, 0)) ? ST_SAVED_QUEUED : ST_SAVED;
        cb(o->ud, CRUSTER_OK, NULL, &out);
      }
    } else if (save_keyed_done(st, o, r, &out)) {
      return; /* queued again */
    }
    pg_save_landed(st, o);
    /* After the callback: it has handed the message over (or released it). */
    if (o->in_transit) pg_transit_end(st, o->env);
    break;
  }
  case OP_ACQUIRE:
    pg_acquire_done(st, o);
    break;
  case OP_REPLY:
    if (o->cb.done) o->cb.done(o->ud, CRUSTER_OK, NULL);
    break;
  case OP_RELEASE:
    pg_transit_end(st, o->env);
    break;
  case OP_PARK:
    pg_transit_end(st, o->env);
    if (o->cb.done) o->cb.done(o->ud, CRUSTER_OK, NULL);
    break;
  case OP_UNCLAIM:
    break;
  case OP_POLL: {
    int n = PQntuples(r), nd = 0;
    int64_t *dead_ids = calloc((size_t)n + 1, sizeof(int64_t));
    int64_t (*order)[2] = calloc((size_t)n + 1, sizeof(*order));
    core_env **msgs = calloc((size_t)n + 1, sizeof(*msgs));
    if (!dead_ids || !order || !msgs) {
      free(dead_ids);
      free(order);
      free(msgs);
      o->cb.poll(o->ud, CRUSTER_E_NOMEM, "out of memory", NULL, 0, NULL, 0);
      break;
    }
    /* Column 13: processed -- the claim made it a dead letter. */
    for (int i = 0; i < n; i++)
      if (pg_get_bool(r, i, 13)) {
        dead_ids[nd++] = pg_get_i64(r, i, 1);
        pg_track_remove(st, pg_get_i64(r, i, 1), pg_get_text(r, i, 2), pg_get_i32(r, i, 3),
                        pg_get_text(r, i, 4), pg_get_text(r, i, 5));
      }
    /* RETURNING has no order: sort the claimed rows by seq. */
    for (int i = 0; i < n; i++) {
      order[i][0] = pg_get_i64(r, i, 0);
      order[i][1] = i;
    }
    qsort(order, (size_t)n, sizeof(*order), cmp_seq);
    size_t nm = 0;
    for (int k = 0; k < n; k++) {
      int i = (int)order[k][1];
      if (pg_get_bool(r, i, 13)) continue;
      core_env *e = row_env(r, i, NULL);
      if (!e) continue;
      if (pg_in_transit(st, e->type, e->id)) {
        /* An older message of its entity may still be on its way: not now. */
        pg_op *u = pg_op_new(OP_UNCLAIM, NULL);
        if (u && (u->token = core_strdup(st->claimer))) {
          u->env = e;
          u->attempts_before = pg_get_i32(r, i, 14);
          pg_enqueue(st, &st->conns[0], u);
          continue;
        }
        free(u);
      }
      msgs[nm++] = e;
    }
    st->next_due = pg_get_i64(o->res[1], 0, 0);
    o->cb.poll(o->ud, CRUSTER_OK, NULL, msgs, nm, dead_ids, (size_t)nd);
    free(msgs);
    free(order);
    free(dead_ids);
    break;
  }
  case OP_GET: {
    st_reply_cb cb = o->cb.reply;
    if (PQntuples(r) == 0) {
      cb(o->ud, CRUSTER_OK, NULL, 0, 0, NULL);
    } else if (pg_get_bool(r, 0, 0) && !PQgetisnull(r, 0, 1)) {
      st_reply rep = {pg_get_i32(r, 0, 1), PQgetvalue(r, 0, 2), (size_t)PQgetlength(r, 0, 2),
                      pg_get_text(r, 0, 3)};
      cb(o->ud, CRUSTER_OK, NULL, 1, 1, &rep);
    } else {
      cb(o->ud, CRUSTER_OK, NULL, 1, 0, NULL);
    }
    break;
  }
  case OP_GET_KEYED: {
    st_keyed_cb cb = o->cb.keyed;
    if (PQntuples(r) == 0) {
      cb(o->ud, CRUSTER_OK, NULL, 0, 0, NULL);
    } else if (pg_get_bool(r, 0, 1) && !PQgetisnull(r, 0, 2)) {
      st_reply rep = {pg_get_i32(r, 0, 2), PQgetvalue(r, 0, 3), (size_t)PQgetlength(r, 0, 3),
                      pg_get_text(r, 0, 4)};
      cb(o->ud, CRUSTER_OK, NULL, pg_get_i64(r, 0, 0), 1, &rep);
    } else {
      cb(o->ud, CRUSTER_OK, NULL, pg_get_i64(r, 0, 0), 0, NULL);
    }
    break;
  }
  case OP_DEAD: {
    size_t cap = 0;
    cruster_message_list *l = st_list_new(0);
    for (int i = 0; l && i < PQntuples(r); i++) {
      int64_t attempts = 0;
      core_env *e = row_env(r, i, &attempts);
      if (!e || st_list_add(l, &cap, e, attempts) != 0) {
        cruster_message_list_free(l);
        l = NULL;
      }
    }
    if (l) o->cb.list(o->ud, CRUSTER_OK, NULL, l);
    else o->cb.list(o->ud, CRUSTER_E_NOMEM, "out of memory", NULL);
    break;
  }
  case OP_REDELIVER:
    if (PQntuples(r) == 0) {
      o->cb.done(o->ud, CRUSTER_E_NOT_FOUND, "no dead letter with that request id");
    } else {
      /* Unanswered again, and not in memory: newer messages of its entity
       * must be ordered by asking. */
      pg_unknown_add(st, pg_get_text(r, 0, 3), pg_get_i32(r, 0, 4), pg_get_text(r, 0, 1),
                     pg_get_text(r, 0, 2));
      o->cb.done(o->ud, CRUSTER_OK, NULL);
    }
    break;
  case OP_SCAN:
    pg_scan_done(st, r);
    break;
  case OP_CLEANUP:
    break;
  case OP_RECONCILE:
    pg_recon_done(st, o->epoch, r);
    break;
  }
  pg_op_free(o);
}
