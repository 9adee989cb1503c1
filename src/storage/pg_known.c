/* PostgreSQL storage: knowing the entities.
 *
 * Per-entity order needs, for each new message, the answer to "is an older
 * unanswered message of this entity stored?". Asking PostgreSQL costs an
 * index probe inside every insert. In single-node mode this runtime writes
 * every row, so for the messages of its own life it knows the answer:
 * `tracked` holds the ids it stored (or is storing) and has not answered,
 * `pending` counts them per entity. Rows it cannot account for put their
 * entity in `unknown`, which is always asked: rows stored before it
 * attached (the scan), rows whose insert or answer failed (they may exist
 * and wait for a retry), and redelivered dead letters. Until the scan has
 * completed, every entity is asked. An entity with nothing tracked and not
 * unknown has no stored unanswered message: its new unkeyed message is
 * stored claimed by the fast insert and may be delivered at once. */

#include "core/log.h"
#include "core/map.h"
#include "storage/pg_store.h"

/* Retry delay of a failed attach scan. */
#define PG_SCAN_RETRY_MS 1000

/* Adds `delta` (+1 or -1) to the count of `k` in `m` (a count held as the
 * value, absent = 0); returns the new count. A count that cannot be stored
 * (OOM) makes every entity ask PostgreSQL. */
static uintptr_t count_add(pg_store *st, core_map *m, const core_ekey *k, int delta) {
  uintptr_t n = (uintptr_t)core_map_get(m, k->p, k->n);
  if (delta > 0) {
    if (core_map_put(m, k->p, k->n, (void *)(n + 1)) != 0) {
      st->all_unknown = 1;
      return n;
    }
    return n + 1;
  }
  if (n == 0) return 0;
  if (n == 1) core_map_del(m, k->p, k->n);
  else core_map_put(m, k->p, k->n, (void *)(n - 1)); /* replaces: no allocation */
  return n - 1;
}

void pg_unknown_add(pg_store *st, const char *type, const char *id) {
  core_ekey k;
  if (st->all_unknown) return;
  if (core_ekey_make(&k, type, id) != 0) {
    st->all_unknown = 1;
    return;
  }
  if (!core_map_get(&st->unknown, k.p, k.n) && core_map_put(&st->unknown, k.p, k.n, (void *)1) != 0)
    st->all_unknown = 1;
  core_ekey_done(&k);
}

/* 1 when `m` (unkeyed, due now) can take the fast insert. */
int pg_knows_clear(pg_store *st, const core_env *m) {
  if (!st->scanned || st->all_unknown || m->keyed || m->deliver_at != 0) return 0;
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return 0;
  int clear = !core_map_get(&st->pending, k.p, k.n) && !core_map_get(&st->unknown, k.p, k.n);
  core_ekey_done(&k);
  return clear;
}

/* How many tracked messages its entity has. */
uintptr_t pg_pending_of(pg_store *st, const core_env *m) {
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return 1;
  uintptr_t n = (uintptr_t)core_map_get(&st->pending, k.p, k.n);
  core_ekey_done(&k);
  return n;
}

/* Counts a message being stored; 1 if this call added it. */
int pg_track_add(pg_store *st, const core_env *m) {
  if (core_map_iget(&st->tracked, m->request_id)) return 0; /* a repeated key */
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) {
    st->all_unknown = 1; /* untracked: nobody may rely on memory */
    return 0;
  }
  int ok = core_map_iput(&st->tracked, m->request_id, (void *)1) == 0;
  if (!ok) {
    st->all_unknown = 1;
  } else {
    uintptr_t before = (uintptr_t)core_map_get(&st->pending, k.p, k.n);
    ok = count_add(st, &st->pending, &k, 1) > before; /* else all_unknown is set */
    if (!ok) core_map_idel(&st->tracked, m->request_id);
  }
  core_ekey_done(&k);
  return ok;
}

/* The message is answered (or was never stored): uncounts it. */
void pg_track_remove(pg_store *st, int64_t request_id, const char *type, const char *id) {
  if (!core_map_idel(&st->tracked, request_id)) return;
  core_ekey k;
  if (core_ekey_make(&k, type, id) != 0) {
    st->all_unknown = 1; /* its count can no longer be lowered */
    return;
  }
  count_add(st, &st->pending, &k, -1);
  core_ekey_done(&k);
}

/* A claimed message is "in transit" from a claiming insert's start until
 * its callback has handed it to the runtime, and from a release's start
 * until it committed. Results of different connections arrive in any
 * order: a poll may claim a younger message of the entity meanwhile, and
 * delivering that one first would break the entity's order. Such a message
 * is held back: its claim is undone, and the runtime polls again when the
 * entity's transits are over. */
void pg_transit_start(pg_store *st, const core_env *m) {
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) {
    st->all_unknown = 1;
    return;
  }
  count_add(st, &st->transit, &k, 1);
  core_ekey_done(&k);
}

void pg_transit_end(pg_store *st, const core_env *m) {
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return;
  if (count_add(st, &st->transit, &k, -1) == 0 && core_map_del(&st->held, k.p, k.n))
    st->host.wake(st->host.ud);
  core_ekey_done(&k);
}

int pg_in_transit(pg_store *st, const char *type, const char *id) {
  if (st->transit.count == 0) return 0;
  core_ekey k;
  if (core_ekey_make(&k, type, id) != 0) return 1;
  int n = core_map_get(&st->transit, k.p, k.n) != NULL;
  if (n && !core_map_get(&st->held, k.p, k.n) && core_map_put(&st->held, k.p, k.n, (void *)1) != 0)
    n = 0; /* cannot remember to poll again: deliver it rather than strand it */
  core_ekey_done(&k);
  return n;
}

/* ---- the attach scan --------------------------------------------------------------
 *
 * Lists the entities with stored unanswered messages when this runtime
 * attached (PG_SQL_SCAN): they are unknown. Until it has completed, every
 * entity is asked. */

static void on_scan_timer(uv_timer_t *t) { pg_scan_start(t->data); }

void pg_scan_start(pg_store *st) {
  pg_op *o = pg_op_new(OP_SCAN, NULL);
  if (o) pg_enqueue(st, &st->conns[0], o);
}

void pg_scan_done(pg_store *st, const PGresult *r) {
  if (PQntuples(r) > PG_SCAN_LIMIT) {
    st->all_unknown = 1;
    core_log(st->lg, CRUSTER_LOG_INFO, "storage",
             "more than %d entities have stored unanswered messages: every new message "
             "asks PostgreSQL for its entity's order",
             PG_SCAN_LIMIT);
  }
  for (int i = 0; i < PQntuples(r) && !st->all_unknown; i++)
    pg_unknown_add(st, pg_get_text(r, i, 0), pg_get_text(r, i, 1));
  st->scanned = 1;
}

void pg_scan_failed(pg_store *st) {
  /* Until it succeeds every entity asks PostgreSQL: run it again, later
   * (from a timer: never from inside pg_enqueue's own failure). */
  if (!st->closing && st->scan_timer_init)
    uv_timer_start(&st->scan_timer, on_scan_timer, PG_SCAN_RETRY_MS, 0);
}
