/* PostgreSQL storage: the queues. A connection sends jobs: the statements
 * of up to storage_batch_size queued operations pipelined up to one Sync
 * (one implicit transaction), so concurrent writes share one commit. Two
 * jobs may be in flight, so the server never waits for us; each job first
 * checks that the one before it committed (the job guard, below), so jobs
 * commit in the order they were sent even when one fails. Writes for one
 * entity always use the same connection, which keeps them in order.
 * Operations queue while a connection reconnects. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/util.h"
#include "storage/pg_store.h"

/* Answers of unkeyed messages (deletes) wait up to this long, so that they
 * share a statement and a commit even when calls come one at a time. The
 * caller has its answer already; a crash in between runs them again, as
 * at-least-once allows. */
#define PG_DONE_DELAY_MS 2

/* ---- the queue ---------------------------------------------------------------------- */

pg_conn *pg_conn_for_entity(pg_store *st, const core_env *e) {
  /* type, a zero byte, id: as the instance keys */
  uint64_t h = core_hash_bytes(CORE_HASH_SEED, e->type, strlen(e->type) + 1);
  h = core_hash_bytes(h, e->id, strlen(e->id));
  return &st->conns[h % (uint64_t)st->nconns];
}

void pg_enqueue(pg_store *st, pg_conn *c, pg_op *o) {
  if (st->closing) {
    pg_op_fail(st, o, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
    return;
  }
  if (c->state != C_READY && c->qlen >= MAX_QUEUED) {
    pg_op_fail(st, o, CRUSTER_E_PERSISTENCE,
               "PostgreSQL is unreachable and too many storage operations are waiting");
    return;
  }
  o->next = NULL;
  o->queued_ns = core_mono_ns();
  if (c->q_tail) c->q_tail->next = o; else c->q_head = o;
  c->q_tail = o;
  c->qlen++;
  pg_conn_pump(c);
}

/* Graceful stop: the flush callback runs once nothing is waiting. */
void pg_check_flushed(pg_store *st) {
  if (!st->flush_cb || st->done_head) return;
  for (int i = 0; i < st->nconns; i++)
    if (st->conns[i].jobs_head || st->conns[i].q_head) return;
  void (*cb)(void *) = st->flush_cb;
  st->flush_cb = NULL;
  cb(st->flush_ud);
}

/* ---- deletes of answered messages --------------------------------------------------- */

/* Sends the waiting deletes, each on its entity's connection (behind that
 * entity's writes: a delete that overtook a younger message's insert would
 * let that insert's probe find the entity clear and claim it while a poll
 * may claim a still younger one), where they share one statement per job. */
void pg_done_release(pg_store *st) {
  if (st->done_timer_init) uv_timer_stop(&st->done_timer);
  if (!st->done_head) return;
  pg_op *o = st->done_head;
  st->done_head = st->done_tail = NULL;
  st->ndone = 0;
  if (st->closing) {
    while (o) {
      pg_op *n = o->next;
      pg_op_fail(st, o, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
      o = n;
    }
    return;
  }
  uint64_t now = core_mono_ns();
  while (o) {
    pg_op *n = o->next;
    pg_conn *c = pg_conn_for_entity(st, o->env);
    o->next = NULL;
    o->queued_ns = now;
    if (c->q_tail) c->q_tail->next = o; else c->q_head = o;
    c->q_tail = o;
    c->qlen++;
    o = n;
  }
  for (int i = 0; i < st->nconns; i++) pg_conn_pump(&st->conns[i]);
}

static void on_done_timer(uv_timer_t *t) { pg_done_release(t->data); }

void pg_enqueue_reply(pg_store *st, pg_op *o) {
  if (!o->env->keyed && !st->closing && !st->flush_cb) {
    /* Nobody waits for it (the caller has the answer): it waits a moment
     * for company. */
    o->next = NULL;
    if (st->done_tail) st->done_tail->next = o; else st->done_head = o;
    st->done_tail = o;
    if (++st->ndone >= (size_t)st->batch) pg_done_release(st);
    else if (st->ndone == 1) uv_timer_start(&st->done_timer, on_done_timer, PG_DONE_DELAY_MS, 0);
    return;
  }
  pg_enqueue(st, pg_conn_for_entity(st, o->env), o);
}

/* ---- jobs ------------------------------------------------------------------------------ */

/* Operations of which a job sends one statement over all their ids, in
 * place of one each: answered unkeyed messages (deleted: they were all
 * answered before the job was built) and claims given back unused (full
 * mailboxes, stop: a poll can claim far more of one entity than its
 * mailbox takes). */
enum { SHARED_DONE, SHARED_RELEASE, SHARED_KINDS };
static const char *const shared_stmt[SHARED_KINDS] = {"cr_done_many", "cr_rel_many"};

static int shared_kind(const pg_op *o) {
  if (o->kind == OP_REPLY && !o->env->keyed) return SHARED_DONE;
  if (o->kind == OP_RELEASE && !o->attempt) return SHARED_RELEASE;
  return -1;
}

/* ---- the job guard ----------------------------------------------------------
 *
 * Up to MAX_JOBS_IN_FLIGHT jobs are on their way, each its own transaction.
 * When an operation makes a job fail, its other operations run again (each
 * alone, so only the bad one fails) -- but the next job, already in the
 * server's input, would commit before them: a message of that job could be
 * stored before an older message of its entity that was in the failed job,
 * and since the poll delivers in storage order (seq), be delivered first.
 * So every job starts with the guard (PG_SQL_JOB_GUARD): it fails unless
 * the job sent before it on this session committed. A failed job's
 * successors in flight then fail too, without changing anything; their
 * operations are kept, in order, behind the failed job's (redo), and
 * nothing new is sent until every job in flight has come back. Then the
 * redo list goes back to the head of the queue. Jobs thus commit in the
 * order their operations were queued. */

/* The statements an operation sends by itself (undoing what a job's
 * grouping changed: shared ids, a fast insert's row). */
static void op_reset_nstmt(pg_op *o) {
  o->nstmt = o->kind == OP_POLL || o->kind == OP_ACQUIRE ? 2 : o->fast ? 0 : 1;
}

static void redo_add(pg_conn *c, pg_op *o, int solo) {
  o->solo = o->solo || solo;
  op_reset_nstmt(o);
  o->next = NULL;
  if (c->redo_tail) c->redo_tail->next = o; else c->redo_head = o;
  c->redo_tail = o;
}

/* Once no job is in flight: the redo list goes back to the queue's head. */
void pg_redo_requeue(pg_conn *c) {
  if (!c->redo_head || c->jobs_head) return;
  size_t n = 0;
  for (pg_op *o = c->redo_head; o; o = o->next) n++;
  c->redo_tail->next = c->q_head;
  if (!c->q_head) c->q_tail = c->redo_tail;
  c->q_head = c->redo_head;
  c->qlen += n;
  c->redo_head = c->redo_tail = NULL;
}

/* Sends queued operations while fewer than MAX_JOBS_IN_FLIGHT jobs are out
 * (and no failed job's operations wait to run again). */
void pg_conn_pump(pg_conn *c) {
  pg_store *st = c->st;
  int sent = 0;
  while (c->state == C_READY && !c->redo_head && c->njobs < MAX_JOBS_IN_FLIGHT && c->q_head) {
    size_t max = (size_t)st->batch, nops = 0, nfast = 0, nsh[SHARED_KINDS] = {0};
    int solo = c->q_head->solo, stmts_n = 0;
    for (pg_op *o = c->q_head; o && nops < max && (nops == 0 || (!solo && !o->solo)); o = o->next) {
      nops++;
      stmts_n += o->nstmt;
      if (shared_kind(o) >= 0) nsh[shared_kind(o)]++;
      nfast += o->fast;
    }
    /* Shared statements come first: those over ids (when two or more share
     * one), then the fast inserts -- rows of a few multi-row statements,
     * whose entities have no other stored unanswered message, so no
     * operation of the job touches them and moving them first keeps every
     * order. */
    int nshared = 0, fail = 0;
    int64_t *ids[SHARED_KINDS] = {NULL};
    for (int k = 0; k < SHARED_KINDS; k++) {
      if (nsh[k] < 2) continue;
      stmts_n = stmts_n - (int)nsh[k] + 1;
      nshared++;
      fail |= !(ids[k] = malloc(nsh[k] * sizeof(int64_t)));
    }
    int nchunks = pg_fast_split(nfast, NULL);
    stmts_n += nchunks + 1; /* and the guard */
    pg_job *j = pg_job_new(stmts_n, nops);
    pg_op **fast = nfast ? malloc(nfast * sizeof(*fast)) : NULL;
    size_t *sizes = nchunks ? malloc((size_t)nchunks * sizeof(*sizes)) : NULL;
    if (!j || fail || (nfast && (!fast || !sizes))) {
      if (j) pg_job_free(j);
      for (int k = 0; k < SHARED_KINDS; k++) free(ids[k]);
      free(fast);
      free(sizes);
      pg_conn_fail(c, "out of memory");
      return;
    }
    j->shared = nshared + nchunks;
    size_t nid[SHARED_KINDS] = {0}, nf = 0;
    for (size_t i = 0; i < nops; i++) {
      pg_op *o = c->q_head;
      c->q_head = o->next;
      if (!c->q_head) c->q_tail = NULL;
      c->qlen--;
      o->next = NULL;
      int k = shared_kind(o);
      if (k >= 0 && ids[k]) {
        o->nstmt = 0; /* its result is the job's shared statement */
        ids[k][nid[k]++] = o->env->request_id;
      }
      if (o->fast) fast[nf++] = o;
      j->ops[j->nops++] = o;
    }
    /* The guard: the job before this one, if still in flight, must commit. */
    char prev[24], mine[24];
    snprintf(prev, sizeof prev, "%lld",
             (long long)(c->jobs_tail ? c->jobs_tail->id : c->committed));
    j->id = ++c->job_seq;
    j->behind = c->jobs_tail != NULL;
    j->epoch = st->epoch;
    snprintf(mine, sizeof mine, "%lld", (long long)j->id);
    pg_job_push(c, j);
    /* No BEGIN/COMMIT: everything up to a Sync is one implicit transaction. */
    const char *gv[2] = {prev, mine};
    int ok = pg_send_stmt(c, "cr_guard", 2, gv, NULL, NULL);
    for (int k = 0; k < SHARED_KINDS; k++) {
      if (ok && ids[k]) {
        char *arr = pg_int8_array(ids[k], nid[k]);
        const char *v[1] = {arr};
        ok = arr && pg_send_stmt(c, shared_stmt[k], 1, v, NULL, NULL);
        free(arr);
      }
      free(ids[k]);
    }
    if (nchunks) pg_fast_split(nfast, sizes);
    for (int k = 0, at = 0; ok && k < nchunks; at += (int)sizes[k], k++)
      ok = pg_send_fast(c, fast + at, sizes[k]);
    free(fast);
    free(sizes);
    for (size_t i = 0; ok && i < j->nops; i++)
      if (j->ops[i]->nstmt) ok = pg_op_send(c, j->ops[i]);
    if (!ok || !PQpipelineSync(c->pq)) {
      pg_conn_fail(c, PQerrorMessage(c->pq));
      return;
    }
    core_metric_add(st->m_batches, 1);
    core_metric_add(st->m_batch_ops, (double)j->nops);
    sent = 1;
  }
  if (sent) pg_conn_flush(c);
  if (!c->jobs_head && !c->q_head && !c->redo_head) pg_check_flushed(st);
}

/* A job's Sync arrived: hand results to its operations. */
void pg_job_done(pg_conn *c, pg_job *j) {
  pg_store *st = c->st;
  const char *err = NULL;
  int failed = 0;
  for (int i = 0; i < j->nq; i++) {
    PGresult *r = j->slots[i];
    ExecStatusType s = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) continue;
    failed = 1;
    if (!err && r && s != PGRES_PIPELINE_ABORTED) err = PQresultErrorMessage(r);
  }
  /* The guard (slot 0) failed: the job before this one did not commit, and
   * this one changed nothing -- its operations run again after that one's. */
  int guard_failed = failed && PQresultStatus(j->slots[0]) != PGRES_TUPLES_OK && j->behind;
  if (!failed) c->committed = j->id;
  char msg[512] = "";
  if (failed) {
    snprintf(msg, sizeof(msg), "%s", err ? err : "the transaction was aborted");
    core_text_one_line(msg); /* libpq's text ends with a newline, may span lines */
  } else {
    /* Move each operation's results to it (after the guard and the shared
     * statements). */
    int k = 1 + j->shared;
    for (size_t i = 0; i < j->nops; i++)
      for (int x = 0; x < j->ops[i]->nstmt; x++) {
        j->ops[i]->res[x] = j->slots[k];
        j->slots[k++] = NULL;
      }
  }
  pg_op **ops = j->ops;
  size_t nops = j->nops;
  j->ops = NULL;
  j->nops = 0;
  pg_job_free(j);
  /* Callbacks may queue more work: the job is already off the connection. */
  if (guard_failed || (failed && nops > 1)) {
    /* One bad operation aborted the batch: run each alone, in order (after
     * the jobs in flight behind it have failed too: see the job guard). */
    for (size_t i = 0; i < nops; i++) {
      if (ops[i]->kind == OP_RECONCILE) {
        /* Sent again by pg_recon_kick, under its barrier (which held when this
         * one was sent, not necessarily when the redo list runs). */
        st->recon_busy = 0;
        pg_op_free(ops[i]);
        continue;
      }
      redo_add(c, ops[i], !guard_failed);
    }
  } else {
    int reclaim = 0;
    for (size_t i = 0; i < nops; i++) {
      /* A claim that could not be given back would be held forever:
       * reconcile under a new token (what is not being handled goes back). */
      reclaim |= failed && (ops[i]->kind == OP_RELEASE || ops[i]->kind == OP_UNCLAIM ||
                            ops[i]->kind == OP_PARK);
      if (failed) pg_op_fail(st, ops[i], CRUSTER_E_PERSISTENCE, msg);
      else pg_op_complete(st, ops[i]);
    }
    if (reclaim && !st->closing) pg_new_claim_token(st);
  }
  free(ops);
  pg_redo_requeue(c);
  pg_recon_kick(st); /* a job under an earlier token may have been the last */
  if (c->pq) pg_conn_pump(c);
}
