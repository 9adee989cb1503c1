/* PostgreSQL storage: knowing the entities.
 *
 * Per-entity order needs, for each new message, the answer to "is an older
 * unanswered message of this entity stored?". Asking PostgreSQL costs an
 * index probe inside every insert. Where this runtime writes every row, it
 * knows the answer for the messages of its own life: `tracked` holds the
 * ids it stored (or is storing) and has not answered, `pending` counts them
 * per entity. Rows it cannot account for put their entity in `unknown`,
 * which is always asked: rows stored before it knew the shard (the scan),
 * rows whose insert or answer failed (they may exist and wait for a retry),
 * and redelivered dead letters. Until the scan has completed, every entity
 * is asked. An entity with nothing tracked and not unknown has no stored
 * unanswered message: its new unkeyed message is stored claimed by the fast
 * insert and may be delivered at once.
 *
 * Single-node mode: this runtime writes every row; one slot (pg_ks) holds
 * it all, scanned at attach. Cluster mode (docs/architecture.md, "Persisted
 * messages in a cluster"): the owner of a shard writes its new messages, so
 * this knowledge is true per shard -- one slot each -- from the moment the
 * shard was acquired and its stored unanswered messages listed
 * (pg_acquire_*: KS_KNOWN) until it is released (KS_NONE: forgotten).
 * Saves still in flight when their shard was released ("stale") may commit
 * after a new acquire's scan has looked: their entities become unknown when
 * they land, and the slot is not known while any is in flight. */

#include <stdlib.h>

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

int pg_ks_init(pg_store *st) {
  const cruster_config *cfg = st->host.cfg;
  size_t n = 1;
  if (st->cluster) {
    if (cfg->n_shard_groups == 0 || cfg->shards_per_group <= 0 ||
        (uint64_t)cfg->shards_per_group > SIZE_MAX / sizeof(pg_ks) / cfg->n_shard_groups)
      return -1;
    n = cfg->n_shard_groups * (size_t)cfg->shards_per_group;
  }
  st->ks = calloc(n, sizeof(*st->ks));
  if (!st->ks) return -1;
  st->nks = n;
  for (size_t i = 0; i < n; i++) {
    core_map_init(&st->ks[i].pending);
    core_map_init(&st->ks[i].tracked);
    core_map_init(&st->ks[i].unknown);
  }
  return 0;
}

void pg_ks_free(pg_store *st) {
  for (size_t i = 0; st->ks && i < st->nks; i++) {
    core_map_clear(&st->ks[i].pending);
    core_map_clear(&st->ks[i].tracked);
    core_map_clear(&st->ks[i].unknown);
  }
  free(st->ks);
  st->ks = NULL;
  st->nks = 0;
}

pg_ks *pg_ks_of(pg_store *st, const char *group, int32_t shard) {
  if (!st->cluster) return st->ks;
  const cruster_config *cfg = st->host.cfg;
  if (!group || shard < 0 || (int64_t)shard >= cfg->shards_per_group) return NULL;
  for (size_t g = 0; g < cfg->n_shard_groups; g++)
    if (strcmp(cfg->shard_groups[g], group) == 0)
      return &st->ks[g * (size_t)cfg->shards_per_group + (size_t)shard];
  return NULL;
}

void pg_unknown_add(pg_store *st, const char *group, int32_t shard, const char *type,
                    const char *id) {
  core_ekey k;
  pg_ks *ks = pg_ks_of(st, group, shard);
  if (st->all_unknown || !ks) return; /* nothing of it is known anyway */
  if (core_ekey_make(&k, type, id) != 0) {
    st->all_unknown = 1;
    return;
  }
  if (!core_map_get(&ks->unknown, k.p, k.n) && core_map_put(&ks->unknown, k.p, k.n, (void *)1) != 0)
    st->all_unknown = 1;
  core_ekey_done(&k);
}

/* 1 when `m` (unkeyed, due now) can take the fast insert. */
int pg_knows_clear(pg_store *st, const core_env *m) {
  if (st->all_unknown || m->keyed || m->deliver_at != 0) return 0;
  pg_ks *ks = pg_ks_of(st, m->group, m->shard);
  if (!ks || ks->state != KS_KNOWN || ks->stale) return 0;
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return 0;
  int clear = !core_map_get(&ks->pending, k.p, k.n) && !core_map_get(&ks->unknown, k.p, k.n);
  core_ekey_done(&k);
  return clear;
}

/* How many tracked messages its entity has. */
uintptr_t pg_pending_of(pg_store *st, const core_env *m) {
  pg_ks *ks = pg_ks_of(st, m->group, m->shard);
  if (!ks) return 0;
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) return 1;
  uintptr_t n = (uintptr_t)core_map_get(&ks->pending, k.p, k.n);
  core_ekey_done(&k);
  return n;
}

/* Counts a message being stored; 1 if this call added it. */
int pg_track_add(pg_store *st, pg_op *o) {
  const core_env *m = o->env;
  pg_ks *ks = pg_ks_of(st, m->group, m->shard);
  if (!ks) return 0;
  o->gen = ks->gen;
  ks->saving++;
  if (core_map_iget(&ks->tracked, m->request_id)) return 0; /* a repeated key */
  core_ekey k;
  if (core_ekey_make(&k, m->type, m->id) != 0) {
    st->all_unknown = 1; /* untracked: nobody may rely on memory */
    return 0;
  }
  int ok = core_map_iput(&ks->tracked, m->request_id, (void *)1) == 0;
  if (!ok) {
    st->all_unknown = 1;
  } else {
    uintptr_t before = (uintptr_t)core_map_get(&ks->pending, k.p, k.n);
    ok = count_add(st, &ks->pending, &k, 1) > before; /* else all_unknown is set */
    if (!ok) core_map_idel(&ks->tracked, m->request_id);
  }
  core_ekey_done(&k);
  return ok;
}

void pg_save_landed(pg_store *st, pg_op *o) {
  const core_env *m = o->env;
  pg_ks *ks = pg_ks_of(st, m->group, m->shard);
  if (!ks) return;
  if (o->gen == ks->gen) {
    if (ks->saving > 0) ks->saving--;
    return;
  }
  /* Started before its shard was released: it may have committed after a
   * new acquire's scan looked. Its entity asks from now on. */
  if (ks->stale > 0) ks->stale--;
  if (ks->state != KS_NONE) pg_unknown_add(st, m->group, m->shard, m->type, m->id);
}

/* The message is answered (or was never stored): uncounts it. */
void pg_track_remove(pg_store *st, int64_t request_id, const char *group, int32_t shard,
                     const char *type, const char *id) {
  pg_ks *ks = pg_ks_of(st, group, shard);
  if (!ks || !core_map_idel(&ks->tracked, request_id)) return;
  core_ekey k;
  if (core_ekey_make(&k, type, id) != 0) {
    st->all_unknown = 1; /* its count can no longer be lowered */
    return;
  }
  count_add(st, &ks->pending, &k, -1);
  core_ekey_done(&k);
}

void pg_ks_release(pg_store *st, const char *group, const int32_t *shards, size_t n) {
  if (!st->cluster) return;
  size_t forgot = 0;
  for (size_t i = 0; i < n; i++) {
    pg_ks *ks = pg_ks_of(st, group, shards[i]);
    if (!ks) continue;
    forgot += ks->pending.count + ks->unknown.count;
    if (ks->state == KS_KNOWN) core_metric_add(st->m_known, -1);
    core_map_clear(&ks->pending);
    core_map_clear(&ks->tracked);
    core_map_clear(&ks->unknown);
    ks->state = KS_NONE;
    ks->gen++; /* an acquire's scan still on its way is void */
    ks->stale += ks->saving;
    ks->saving = 0;
  }
  core_log(st->lg, CRUSTER_LOG_DEBUG, "storage",
           "released %zu shard(s) of group %s: forgot %zu entities", n, group ? group : "?",
           forgot);
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
    pg_unknown_add(st, NULL, 0, pg_get_text(r, i, 0), pg_get_text(r, i, 1));
  st->ks[0].state = KS_KNOWN;
}

void pg_scan_failed(pg_store *st) {
  /* Until it succeeds every entity asks PostgreSQL: run it again, later
   * (from a timer: never from inside pg_enqueue's own failure). */
  if (!st->closing && st->scan_timer_init)
    uv_timer_start(&st->scan_timer, on_scan_timer, PG_SCAN_RETRY_MS, 0);
}

/* ---- acquired shards (cluster mode) ------------------------------------------------
 *
 * One operation per shards_acquired call, on the first connection (behind
 * the polls and releases sent before it), in one transaction: the give-back
 * of the claims others left on the shards (PG_SQL_ACQUIRE_UNCLAIM), then the
 * list of their entities with stored unanswered messages
 * (PG_SQL_ACQUIRE_SCAN): unknown. Then the shards are known -- unless one
 * was released meanwhile (its generation moved: that part of the result is
 * void). A failed one runs again after PG_ACQUIRE_RETRY_MS until it
 * succeeds or the storage detaches. */

#define PG_ACQUIRE_RETRY_MS 200

void pg_acquire_start(pg_store *st, pg_op *o) {
  for (size_t i = 0; i < o->limit; i++) {
    pg_ks *ks = pg_ks_of(st, o->env->group, o->shards[i]);
    o->gens[i] = ks ? ks->gen : -1;
    if (ks && ks->state == KS_KNOWN) core_metric_add(st->m_known, -1);
    if (ks) ks->state = KS_SCANNING;
  }
  pg_enqueue(st, &st->conns[0], o);
}

void pg_acquire_done(pg_store *st, pg_op *o) {
  const PGresult *scan = o->res[1];
  int rows = PQntuples(scan);
  int too_many = rows > PG_SCAN_LIMIT;
  size_t known = 0;
  if (too_many)
    core_log(st->lg, CRUSTER_LOG_INFO, "storage",
             "more than %d entities of the %zu shard(s) acquired in group %s have stored "
             "unanswered messages: their new messages ask PostgreSQL for their entity's order",
             PG_SCAN_LIMIT, o->limit, o->env->group);
  for (int i = 0; i < rows && !too_many; i++) {
    int32_t shard = pg_get_i32(scan, i, 2);
    pg_ks *ks = pg_ks_of(st, o->env->group, shard);
    if (ks && ks->state == KS_SCANNING)
      pg_unknown_add(st, o->env->group, shard, pg_get_text(scan, i, 0), pg_get_text(scan, i, 1));
  }
  for (size_t i = 0; i < o->limit && !too_many; i++) {
    pg_ks *ks = pg_ks_of(st, o->env->group, o->shards[i]);
    if (ks && ks->gen == o->gens[i] && ks->state == KS_SCANNING) {
      ks->state = KS_KNOWN;
      known++;
    }
  }
  core_metric_add(st->m_known, (double)known);
  const char *n = PQcmdTuples(o->res[0]);
  int gave_back = n && *n && strcmp(n, "0") != 0;
  if (gave_back) core_metric_add(st->m_taken_over, atof(n));
  if (gave_back)
    core_log(st->lg, CRUSTER_LOG_INFO, "storage",
             "%s message(s) claimed by an earlier owner of %zu acquired shard(s) of group %s will "
             "be delivered again",
             n, o->limit, o->env->group);
  core_log(st->lg, CRUSTER_LOG_DEBUG, "storage",
           "acquired %zu shard(s) of group %s: %d entities with stored unanswered messages, "
           "%zu shard(s) known",
           o->limit, o->env->group, rows, known);
  if (gave_back) st->host.wake(st->host.ud);
  o->cb.acquired(o->ud, CRUSTER_OK, NULL);
}

static void on_acquire_timer(uv_timer_t *t) {
  pg_store *st = t->data;
  pg_op *o = st->acq_wait;
  st->acq_wait = NULL;
  while (o) {
    pg_op *next = o->next;
    o->next = NULL;
    pg_enqueue(st, &st->conns[0], o);
    o = next;
  }
}

void pg_acquire_failed(pg_store *st, pg_op *o, int status, const char *msg) {
  if (st->closing || !st->acq_timer_init) {
    o->cb.acquired(o->ud, status == CRUSTER_OK ? CRUSTER_E_SHUTTING_DOWN : status, msg);
    pg_op_free(o);
    return;
  }
  core_log(st->lg, CRUSTER_LOG_WARN, "storage",
           "taking over %zu shard(s) of group %s failed (tried again): %s", o->limit,
           o->env->group, msg);
  for (int i = 0; i < 3; i++) {
    PQclear(o->res[i]);
    o->res[i] = NULL;
  }
  o->next = st->acq_wait;
  st->acq_wait = o;
  uv_timer_start(&st->acq_timer, on_acquire_timer, PG_ACQUIRE_RETRY_MS, 0);
}

void pg_acquire_close(pg_store *st) {
  if (st->acq_timer_init) {
    uv_timer_stop(&st->acq_timer);
    uv_close((uv_handle_t *)&st->acq_timer, NULL);
    st->acq_timer_init = 0;
  }
  while (st->acq_wait) {
    pg_op *o = st->acq_wait;
    st->acq_wait = o->next;
    o->cb.acquired(o->ud, CRUSTER_E_SHUTTING_DOWN, "the runtime is shutting down");
    pg_op_free(o);
  }
}
