/* PostgreSQL storage: claim tokens and the reconcile.
 *
 * Claims carry the runtime's current token, "address#life.epoch": the
 * runner's address, a snowflake id taken at attach (this life), and the
 * count of tokens this life has switched to (st->epoch). It is unique per
 * runner and per life across a cluster; "address#life." (st->life) prefixes
 * every token of this life. A claim under any other token of this life is
 * stale: made by a statement whose connection broke before its result came
 * back -- it may have committed, so the storage switched to a new token
 * (pg_new_claim_token). Single-node, so is every claim under any other
 * token at all (an earlier life of this runner left it). The reconcile
 * gives those claims back -- single-node PG_SQL_RECONCILE, every claim not
 * under the current token; cluster mode PG_SQL_RECONCILE_OWN, only this
 * life's own earlier tokens (other runners' claims are theirs; what a dead
 * one left, the new owner of its shards gives back: pg_acquire_*) --
 * except those of messages being handled here: at start (single-node) and
 * after every such loss. It is sent only once no
 * job sent under an earlier token is still in flight on any connection --
 * their claims are then either delivered (being handled: kept) or failed
 * (in doubt: given back); sent earlier, it would give back claims whose
 * messages are about to be delivered. It runs again until it succeeds (a
 * dropped one would hold stale claims, and the claim never passes an older
 * message of an entity, for good), and one covers every loss before it. It
 * goes to the head of the first connection's queue, sent at once. */
#include <stdio.h>

#include "core/log.h"
#include "core/util.h"
#include "storage/pg_store.h"

/* Retry delay of a reconcile that failed or could not be queued. */
#define PG_RECON_RETRY_MS 100

static void recon_kick_timer(uv_timer_t *t) { pg_recon_kick(t->data); }

void pg_recon_kick(pg_store *st) {
  if (st->closing || !st->recon_need || st->recon_busy || !st->conns) return;
  pg_conn *c0 = &st->conns[0];
  /* Sent now or not at all: the barrier below holds only now. */
  if (c0->state != C_READY || c0->redo_head || c0->njobs >= MAX_JOBS_IN_FLIGHT) return;
  for (int i = 0; i < st->nconns; i++)
    for (struct pg_job *j = st->conns[i].jobs_head; j; j = j->next)
      if (!j->prepare && j->epoch < st->epoch) return;
  pg_op *o = pg_op_new(OP_RECONCILE, NULL);
  if (!o) {
    core_log(st->lg, CRUSTER_LOG_ERROR, "storage", "out of memory reconciling claims");
    if (st->recon_timer_init)
      uv_timer_start(&st->recon_timer, recon_kick_timer, PG_RECON_RETRY_MS, 0);
    return;
  }
  o->epoch = st->epoch; /* the losses it covers */
  st->recon_busy = 1;
  o->queued_ns = core_mono_ns();
  o->next = c0->q_head;
  c0->q_head = o;
  if (!c0->q_tail) c0->q_tail = o;
  c0->qlen++;
  pg_conn_pump(c0);
}

void pg_recon_done(pg_store *st, int64_t epoch, PGresult *r) {
  st->recon_busy = 0;
  if (epoch == st->epoch) st->recon_need = 0; /* else: a newer loss */
  const char *n = PQcmdTuples(r);
  if (n && *n && strcmp(n, "0") != 0) {
    core_log(st->lg, CRUSTER_LOG_INFO, "storage",
             st->recon_first
                 ? "%s message(s) claimed by an earlier run will be delivered again"
                 : "%s message(s) claimed just before a lost connection will be delivered again",
             n);
    /* Their entities' younger messages waited for them. */
    st->host.wake(st->host.ud);
  }
  st->recon_first = 0;
}

void pg_recon_failed(pg_store *st) {
  /* Never dropped: stale claims would hold their messages (and, as the
   * claim never passes an older message, their entities) for good. It
   * runs again, later (from a timer: never from inside pg_enqueue's own
   * failure). */
  st->recon_busy = 0;
  if (!st->closing && st->recon_timer_init)
    uv_timer_start(&st->recon_timer, recon_kick_timer, PG_RECON_RETRY_MS, 0);
}

void pg_life_new(pg_store *st) {
  int64_t life = 0;
  if (core_snowflake_next(st->host.snowflake, &life) != CRUSTER_OK || life == 0)
    life = (int64_t)core_now_ms(); /* a clock far behind: still unique enough per address */
  snprintf(st->life, sizeof(st->life), "%s#%llx.", st->host.cfg->runner_address,
           (unsigned long long)life);
}

void pg_claimer_new(pg_store *st) {
  snprintf(st->claimer, sizeof(st->claimer), "%s%llx", st->life, (unsigned long long)st->epoch);
}

/* A claiming statement was in flight when its connection broke (it may have
 * committed), or a statement that gives a claim back was lost: claim under
 * a new token from now on, and reconcile. */
void pg_new_claim_token(pg_store *st) {
  st->epoch++;
  pg_claimer_new(st);
  st->recon_need = 1;
  pg_recon_kick(st);
}
