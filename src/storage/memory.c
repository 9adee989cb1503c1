/* In-memory message storage: at-least-once within one process. Used on the
 * loop thread only, so it needs no lock; every operation completes inline. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/hash.h"
#include "core/util.h"
#include "storage/storage_internal.h"
#include "storage/wf_storage.h"

typedef struct mem_msg {
  core_env *env;
  struct mem_msg *prev, *next; /* unprocessed FIFO */
  int processed, claimed;
  int64_t attempts;
  int64_t seq;
  int status; /* exit reply, once processed */
  void *data;
  size_t len;
  char *message;
  void *key; /* keyed calls: the idempotency key, compared on repeats */
  size_t key_len;
  /* A workflow execution's journal and deferreds, and its wake counter. */
  st_jentry *journal;
  size_t njournal;
  st_deferred *deferreds;
  size_t ndeferreds;
  int64_t wake_seq;
} mem_msg;

typedef struct mem_store {
  core_map msgs;    /* request id -> mem_msg */
  core_map waiting; /* "type\0id" -> count of unclaimed unprocessed immediate messages */
  mem_msg *head, *tail;
  int64_t next_seq;
  st_host host; /* from attach: the workflow side runs its calls on the loop */
  int attached;
  /* Cron slots: an array, under its own mutex (any thread). */
  uv_mutex_t cron_mu;
  struct mem_cron *cron;
  size_t ncron, capcron;
} mem_store;

typedef struct mem_cron {
  char *job;
  st_cron_slot s;
} mem_cron;

/* Per-entity count of stored immediate messages nobody is delivering. */
static intptr_t waiting_add(mem_store *m, const core_env *e, intptr_t delta) {
  if (e->deliver_at > 0) return 0;
  char key[2 * (CRUSTER_MAX_ENTITY_ID_LEN + 2)];
  size_t lt = strlen(e->type), li = strlen(e->id);
  memcpy(key, e->type, lt + 1);
  memcpy(key + lt + 1, e->id, li);
  intptr_t n = (intptr_t)core_map_get(&m->waiting, key, lt + 1 + li) + delta;
  if (n <= 0) core_map_del(&m->waiting, key, lt + 1 + li);
  else if (core_map_put(&m->waiting, key, lt + 1 + li, (void *)n) != 0) return -1;
  return n;
}

static void unlink_fifo(mem_store *m, mem_msg *x) {
  if (x->prev) x->prev->next = x->next; else m->head = x->next;
  if (x->next) x->next->prev = x->prev; else m->tail = x->prev;
  x->prev = x->next = NULL;
}

static void msg_free(mem_msg *x) {
  st_wf_state st = {x->journal, x->njournal, x->deferreds, x->ndeferreds, 0, 0};
  st_wf_state_free(&st);
  free(x->key);
  free(x->env);
  free(x->data);
  free(x->message);
  free(x);
}

static cruster_status mem_attach(cruster_storage *s, const st_host *host, cruster_error **err) {
  (void)err;
  mem_store *m = s->impl;
  m->host = *host;
  m->attached = 1;
  return CRUSTER_OK;
}

/* 1 when stored message `x` is the keyed call (e's type, id, method; key). */
static int same_identity(const mem_msg *x, const core_env *e, const st_key *key) {
  const core_env *y = x->env;
  return y->keyed && x->key && x->key_len == key->len && strcmp(y->type, e->type) == 0 &&
         strcmp(y->id, e->id) == 0 && strcmp(y->method, e->method) == 0 &&
         memcmp(x->key, key->data, key->len) == 0;
}

/* The stored message with e's identity, or (*found = 0) the first free
 * candidate id in *id (0 when none is free). */
static mem_msg *find_keyed(mem_store *m, const core_env *e, const st_key *key, int64_t *id) {
  int64_t cand[CORE_KEY_CANDIDATES];
  core_key_candidates(e->type, e->id, e->method, key->data, key->len, cand);
  *id = 0;
  for (int k = 0; k < CORE_KEY_CANDIDATES; k++) {
    mem_msg *x = core_map_iget(&m->msgs, cand[k]);
    if (!x) {
      if (*id == 0) *id = cand[k];
    } else if (same_identity(x, e, key)) {
      *id = cand[k];
      return x;
    }
  }
  return NULL;
}

static void mem_save_request(cruster_storage *s, const core_env *e, const st_key *key, int claim,
                             st_save_cb cb, void *ud) {
  mem_store *m = s->impl;
  st_saved out = {ST_SAVED, e->request_id, 0, NULL};
  int64_t id = e->request_id;
  mem_msg *x;
  if (e->keyed && key) {
    x = find_keyed(m, e, key, &id);
    if (x) {
      out.request_id = id;
      out.same_payload = x->env->len == e->len && (e->len == 0 || memcmp(x->env->payload, e->payload, e->len) == 0);
      st_reply r = {x->status, x->data, x->len, x->message};
      out.result = x->processed ? ST_DUPLICATE_REPLIED : ST_DUPLICATE_PENDING;
      out.existing = x->processed ? &r : NULL;
      cb(ud, CRUSTER_OK, NULL, &out);
      return;
    }
    if (id == 0) {
      cb(ud, CRUSTER_E_CONFLICT,
         "every candidate request id of this idempotency key holds another call: use another key",
         &out);
      return;
    }
  } else if (core_map_iget(&m->msgs, id)) {
    cb(ud, CRUSTER_E_PERSISTENCE, "request id already stored for another message", &out);
    return;
  }
  out.request_id = id;
  x = calloc(1, sizeof(*x));
  core_env *copy = x ? core_env_copy(e) : NULL;
  if (x && e->keyed && key) x->key = core_memdup(key->data, key->len);
  if (!copy || (e->keyed && key && !x->key) || core_map_iput(&m->msgs, id, x) != 0) {
    free(copy);
    if (x) free(x->key);
    free(x);
    cb(ud, CRUSTER_E_NOMEM, "out of memory storing a message", &out);
    return;
  }
  x->key_len = x->key ? key->len : 0;
  copy->request_id = id;
  x->env = copy;
  x->seq = ++m->next_seq;
  int queued = claim && waiting_add(m, e, 0) > 0;
  if (queued) claim = 0;
  if (!claim && waiting_add(m, e, 1) < 0) {
    core_map_idel(&m->msgs, id);
    msg_free(x);
    cb(ud, CRUSTER_E_NOMEM, "out of memory storing a message", &out);
    return;
  }
  x->claimed = claim;
  x->attempts = claim ? 1 : 0;
  x->prev = m->tail;
  if (m->tail) m->tail->next = x; else m->head = x;
  m->tail = x;
  out.result = queued ? ST_SAVED_QUEUED : ST_SAVED;
  cb(ud, CRUSTER_OK, NULL, &out);
}

static void mem_save_reply(cruster_storage *s, const core_env *e, const st_reply *r, st_done_cb cb,
                           void *ud) {
  mem_store *m = s->impl;
  int64_t request_id = e->request_id;
  mem_msg *x = core_map_iget(&m->msgs, request_id);
  if (!x || x->processed) { /* first exit reply wins */
    if (cb) cb(ud, CRUSTER_OK, NULL);
    return;
  }
  unlink_fifo(m, x);
  if (!x->claimed) waiting_add(m, x->env, -1);
  if (!x->env->keyed && r->status != CRUSTER_E_DEAD_LETTER) {
    /* Nobody can ask for this reply again: its id was fresh. */
    core_map_idel(&m->msgs, request_id);
    msg_free(x);
    if (cb) cb(ud, CRUSTER_OK, NULL);
    return;
  }
  x->processed = 1;
  x->claimed = 0;
  x->status = r->status;
  x->len = r->len;
  x->data = core_memdup(r->data, r->len);
  x->message = r->message ? core_strdup(r->message) : NULL;
  if (cb) cb(ud, CRUSTER_OK, NULL);
}

static void mem_poll(cruster_storage *s, int64_t now_ms, size_t limit, int64_t max_retries,
                     st_owned_fn owned, void *owned_ud, st_poll_cb cb, void *ud) {
  mem_store *m = s->impl;
  size_t n = 0, nd = 0, cap = 16, dcap = 4;
  core_env **out = malloc(cap * sizeof(*out));
  int64_t *dead = malloc(dcap * sizeof(*dead));
  if (!out || !dead) {
    free(out);
    free(dead);
    cb(ud, CRUSTER_E_NOMEM, "out of memory polling messages", NULL, 0, NULL, 0);
    return;
  }
  mem_msg *x = m->head;
  while (x && n < limit) {
    mem_msg *next = x->next;
    core_env *e = x->env;
    if (!x->claimed && (e->deliver_at <= now_ms) && (!owned || owned(owned_ud, e->group, e->shard))) {
      if (max_retries > 0 && x->attempts > max_retries) {
        if (nd == dcap) {
          int64_t *d2 = realloc(dead, (dcap *= 2) * sizeof(*dead));
          if (!d2) break;
          dead = d2;
        }
        dead[nd++] = e->request_id;
        st_reply r = {CRUSTER_E_DEAD_LETTER, NULL, 0, "max retries exceeded"};
        mem_save_reply(s, e, &r, NULL, NULL);
      } else {
        core_env *copy = core_env_copy(e);
        if (!copy) break;
        if (n == cap) {
          core_env **o2 = realloc(out, (cap *= 2) * sizeof(*out));
          if (!o2) { free(copy); break; }
          out = o2;
        }
        x->claimed = 1;
        x->attempts++;
        waiting_add(m, e, -1);
        out[n++] = copy;
      }
    }
    x = next;
  }
  cb(ud, CRUSTER_OK, NULL, out, n, dead, nd);
  free(out);
  free(dead);
}

/* One process, one runtime: every claim was made here, and what is
 * stored is all in memory -- nothing to give back or to learn. */
static void mem_shards_acquired(cruster_storage *s, const char *group, const int32_t *shards,
                                size_t n, st_done_cb cb, void *ud) {
  (void)s;
  (void)group;
  (void)shards;
  (void)n;
  cb(ud, CRUSTER_OK, NULL);
}

static void mem_shards_released(cruster_storage *s, const char *group, const int32_t *shards,
                                size_t n) {
  (void)s;
  (void)group;
  (void)shards;
  (void)n;
}

static void mem_release(cruster_storage *s, const core_env *e, int attempt) {
  mem_store *m = s->impl;
  mem_msg *x = core_map_iget(&m->msgs, e->request_id);
  if (!x || x->processed || !x->claimed) return;
  x->claimed = 0;
  waiting_add(m, x->env, 1);
  if (!attempt && x->attempts > 0) x->attempts--;
}

static int64_t mem_next_due(cruster_storage *s) {
  mem_store *m = s->impl;
  int64_t best = 0;
  /* INT64_MAX: parked until woken, never due by time. */
  for (mem_msg *x = m->head; x; x = x->next)
    if (!x->claimed && x->env->deliver_at > 0 && x->env->deliver_at < INT64_MAX &&
        (best == 0 || x->env->deliver_at < best))
      best = x->env->deliver_at;
  return best;
}

/* Gives a claimed message back unanswered, due at `wake_at` -- or now when
 * woken since the run read `wake_seq`. */
static void mem_park(cruster_storage *s, const core_env *e, int64_t wake_at, int64_t wake_seq,
                     int progress, st_done_cb cb, void *ud) {
  mem_store *m = s->impl;
  mem_msg *x = core_map_iget(&m->msgs, e->request_id);
  if (!x || x->processed || !x->claimed) {
    if (cb) cb(ud, CRUSTER_E_NOT_FOUND, "no claimed message to park");
    return;
  }
  x->claimed = 0;
  x->env->deliver_at = wake_seq >= 0 && x->wake_seq != wake_seq ? 0 : wake_at;
  if (progress) x->attempts = 0;
  waiting_add(m, x->env, 1); /* counts it only when due now */
  if (cb) cb(ud, CRUSTER_OK, NULL);
}

/* ---- the workflow side: each call runs on the loop thread -------------- */

typedef struct mwf_call {
  mem_store *m;
  int rc;
  cruster_error *err;
  int64_t request_id;
  st_wf_state *state;
  const st_jentry *entries;
  size_t n;
  const char *type, *id;
  st_exec_ref *refs;
  size_t cap, *count;
  const char *name;
  int32_t status;
  const void *value;
  size_t len;
  const char *message;
  int woke;
} mwf_call;

static int mwf_run(mem_store *m, void (*fn)(void *), mwf_call *c, cruster_error **err) {
  c->m = m;
  c->rc = CRUSTER_OK;
  c->err = NULL;
  if (!m->attached || !m->host.run_sync)
    return core_error_set(err, CRUSTER_E_STATE, "the memory storage is not attached to a runtime");
  int rc = m->host.run_sync(m->host.ud, fn, c);
  if (rc != CRUSTER_OK) {
    cruster_error_free(c->err);
    return core_error_set(err, rc, "the runtime's loop is gone");
  }
  if (c->err) {
    if (err) *err = c->err;
    else cruster_error_free(c->err);
  }
  return c->rc;
}

static mem_msg *mwf_msg(mwf_call *c) {
  mem_msg *x = core_map_iget(&c->m->msgs, c->request_id);
  if (!x) c->rc = core_error_set(&c->err, CRUSTER_E_NOT_FOUND, "the execution is not stored");
  return x;
}

static int copy_bytes(void **dst, size_t *dlen, const void *src, size_t len) {
  *dst = NULL;
  *dlen = len;
  if (!src && !len) return 0;
  *dst = core_memdup(src, len);
  return *dst ? 0 : -1;
}

static int copy_entry(st_jentry *d, const st_jentry *e) {
  memset(d, 0, sizeof(*d));
  d->seq = e->seq;
  d->kind = e->kind;
  d->status = e->status;
  d->attempts = e->attempts;
  d->at = e->at;
  d->name = core_strdup(e->name ? e->name : "");
  if (e->message) d->message = core_strdup(e->message);
  if (!d->name || (e->message && !d->message) ||
      copy_bytes(&d->value, &d->len, e->value, e->len) != 0) {
    st_jentry_clear(d);
    return -1;
  }
  return 0;
}

static void mwf_load_on_loop(void *arg) {
  mwf_call *c = arg;
  mem_msg *x = mwf_msg(c);
  if (!x) return;
  st_wf_state *o = c->state;
  memset(o, 0, sizeof(*o));
  o->entries = x->njournal ? calloc(x->njournal, sizeof(*o->entries)) : NULL;
  o->deferreds = x->ndeferreds ? calloc(x->ndeferreds, sizeof(*o->deferreds)) : NULL;
  int oom = (x->njournal && !o->entries) || (x->ndeferreds && !o->deferreds);
  for (size_t i = 0; !oom && i < x->njournal; i++) {
    oom = copy_entry(&o->entries[i], &x->journal[i]) != 0;
    if (!oom) o->n++;
  }
  for (size_t i = 0; !oom && i < x->ndeferreds; i++) {
    const st_deferred *s = &x->deferreds[i];
    st_deferred *d = &o->deferreds[i];
    d->name = core_strdup(s->name);
    d->status = s->status;
    if (s->message) d->message = core_strdup(s->message);
    oom = !d->name || (s->message && !d->message) ||
          copy_bytes(&d->value, &d->len, s->value, s->len) != 0;
    o->nd++;
    if (!*s->name) o->cancelled = 1;
  }
  o->wake_seq = x->wake_seq;
  if (oom) {
    st_wf_state_free(o);
    c->rc = core_error_set(&c->err, CRUSTER_E_NOMEM, "out of memory");
  }
}

static int mwf_load(void *impl, int64_t request_id, st_wf_state *out, cruster_error **err) {
  mwf_call c = {0};
  c.request_id = request_id;
  c.state = out;
  memset(out, 0, sizeof(*out));
  return mwf_run(impl, mwf_load_on_loop, &c, err);
}

/* No transactions in memory: an activity runs without one. */
static int mwf_begin(void *impl, st_tx **tx, cruster_error **err) {
  (void)impl;
  (void)err;
  *tx = NULL;
  return CRUSTER_OK;
}
static void *mwf_tx_handle(st_tx *tx) {
  (void)tx;
  return NULL;
}
static void mwf_rollback(void *impl, st_tx *tx) {
  (void)impl;
  (void)tx;
}

static void mwf_commit_on_loop(void *arg) {
  mwf_call *c = arg;
  mem_msg *x = mwf_msg(c);
  if (!x) return;
  for (size_t i = 0; i < c->n; i++) {
    const st_jentry *e = &c->entries[i];
    if (e->seq < 0 || (size_t)e->seq > x->njournal) {
      c->rc = core_error_set(&c->err, CRUSTER_E_INTERNAL, "journal entry %ld would leave a gap",
                             (long)e->seq);
      return;
    }
    st_jentry copy;
    if (copy_entry(&copy, e) != 0) {
      c->rc = core_error_set(&c->err, CRUSTER_E_NOMEM, "out of memory");
      return;
    }
    if ((size_t)e->seq == x->njournal) {
      st_jentry *v = realloc(x->journal, (x->njournal + 1) * sizeof(*v));
      if (!v) {
        st_jentry_clear(&copy);
        c->rc = core_error_set(&c->err, CRUSTER_E_NOMEM, "out of memory");
        return;
      }
      x->journal = v;
      x->journal[x->njournal++] = copy;
    } else {
      st_jentry_clear(&x->journal[e->seq]);
      x->journal[e->seq] = copy;
    }
  }
}

static int mwf_commit(void *impl, st_tx *tx, int64_t request_id, const st_jentry *entries,
                      size_t n, cruster_error **err) {
  (void)tx;
  if (n == 0) return CRUSTER_OK;
  mwf_call c = {0};
  c.request_id = request_id;
  c.entries = entries;
  c.n = n;
  return mwf_run(impl, mwf_commit_on_loop, &c, err);
}

static void mwf_find_on_loop(void *arg) {
  mwf_call *c = arg;
  *c->count = 0;
  /* Every stored message: processed ones left the FIFO list. */
  mem_store *m = c->m;
  for (size_t b = 0; b < m->msgs.nbuckets; b++) {
    for (core_map_entry *en = m->msgs.buckets[b]; en; en = en->next) {
      mem_msg *x = en->value;
      const core_env *e = x->env;
      if (strcmp(e->type, c->type) != 0 || strcmp(e->id, c->id) != 0 ||
          strcmp(e->method, "execute") != 0)
        continue;
      size_t i = (*c->count)++;
      if (i >= c->cap) continue;
      c->refs[i].request_id = e->request_id;
      c->refs[i].finished = x->processed;
      if (copy_bytes(&c->refs[i].key, &c->refs[i].key_len, x->key, x->key_len) != 0 ||
          !c->refs[i].key) {
        c->refs[i].key = core_memdup("", 0);
        if (!c->refs[i].key) c->rc = core_error_set(&c->err, CRUSTER_E_NOMEM, "out of memory");
      }
    }
  }
}

static int mwf_find(void *impl, const char *type, const char *id, st_exec_ref *out, size_t cap,
                    size_t *n, cruster_error **err) {
  mwf_call c = {0};
  c.type = type;
  c.id = id;
  c.refs = out;
  c.cap = cap;
  c.count = n;
  int rc = mwf_run(impl, mwf_find_on_loop, &c, err);
  if (rc != CRUSTER_OK)
    for (size_t i = 0; i < *n && i < cap; i++) free(out[i].key);
  return rc;
}

/* Wakes a parked execution: due now, and a run deciding to park from an
 * older read finds the counter moved. */
static void mwf_wake(mwf_call *c, mem_msg *x) {
  x->wake_seq++;
  if (!x->claimed && !x->processed && x->env->deliver_at > 0) {
    x->env->deliver_at = 0;
    waiting_add(c->m, x->env, 1);
  }
  c->woke = 1;
  /* On the loop thread (where the poll scheduler lives): poll now. */
  if (c->m->host.wake) c->m->host.wake(c->m->host.ud);
}

static void mwf_resolve_on_loop(void *arg) {
  mwf_call *c = arg;
  mem_msg *x = mwf_msg(c);
  if (!x) return;
  if (x->processed) {
    c->rc = core_error_set(&c->err, CRUSTER_E_STATE, "the execution has finished");
    return;
  }
  for (size_t i = 0; i < x->ndeferreds; i++)
    if (strcmp(x->deferreds[i].name, c->name) == 0) {
      c->rc = core_error_set(&c->err, CRUSTER_E_ALREADY_EXISTS,
                             *c->name ? "deferred \"%s\" was resolved or rejected already"
                                      : "the execution was cancelled already%s",
                             c->name);
      return;
    }
  st_deferred *v = realloc(x->deferreds, (x->ndeferreds + 1) * sizeof(*v));
  if (!v) {
    c->rc = core_error_set(&c->err, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  x->deferreds = v;
  st_deferred *d = &v[x->ndeferreds];
  memset(d, 0, sizeof(*d));
  d->name = core_strdup(c->name);
  d->status = c->status;
  if (c->message) d->message = core_strdup(c->message);
  if (!d->name || (c->message && !d->message) ||
      copy_bytes(&d->value, &d->len, c->value, c->len) != 0) {
    free(d->name);
    free(d->message);
    c->rc = core_error_set(&c->err, CRUSTER_E_NOMEM, "out of memory");
    return;
  }
  x->ndeferreds++;
  mwf_wake(c, x);
}

static int mwf_resolve(void *impl, int64_t request_id, const char *name, int32_t status,
                       const void *value, size_t len, const char *message, cruster_error **err) {
  mwf_call c = {0};
  c.request_id = request_id;
  c.name = name;
  c.status = status;
  c.value = value;
  c.len = len;
  c.message = message;
  return mwf_run(impl, mwf_resolve_on_loop, &c, err);
}

static void mwf_restart_on_loop(void *arg) {
  mwf_call *c = arg;
  mem_msg *x = mwf_msg(c);
  if (!x) return;
  if (!x->processed) {
    c->rc = core_error_set(&c->err, CRUSTER_E_STATE, "the execution has not finished");
    return;
  }
  if (x->status == CRUSTER_OK) {
    c->rc = core_error_set(&c->err, CRUSTER_E_STATE, "the execution succeeded: nothing to restart");
    return;
  }
  /* The journal from its first final activity failure on goes, and the
   * cancellation. */
  size_t keep = x->njournal;
  for (size_t i = 0; i < x->njournal; i++)
    if (x->journal[i].kind == ST_J_ACTIVITY && x->journal[i].status != CRUSTER_OK &&
        x->journal[i].at == 0) {
      keep = i;
      break;
    }
  while (x->njournal > keep) st_jentry_clear(&x->journal[--x->njournal]);
  for (size_t i = 0; i < x->ndeferreds; i++)
    if (!*x->deferreds[i].name) {
      free(x->deferreds[i].name);
      free(x->deferreds[i].value);
      free(x->deferreds[i].message);
      x->deferreds[i] = x->deferreds[--x->ndeferreds];
      break;
    }
  free(x->data);
  free(x->message);
  x->data = NULL;
  x->message = NULL;
  x->len = 0;
  x->status = 0;
  x->processed = 0;
  x->claimed = 0;
  x->attempts = 0;
  x->env->deliver_at = 0;
  x->wake_seq++;
  x->seq = ++c->m->next_seq;
  x->prev = c->m->tail;
  x->next = NULL;
  if (c->m->tail) c->m->tail->next = x; else c->m->head = x;
  c->m->tail = x;
  waiting_add(c->m, x->env, 1);
  c->woke = 1;
  if (c->m->host.wake) c->m->host.wake(c->m->host.ud);
}

static int mwf_restart(void *impl, int64_t request_id, cruster_error **err) {
  mwf_call c = {0};
  c.request_id = request_id;
  return mwf_run(impl, mwf_restart_on_loop, &c, err);
}

static void mwf_wake_on_loop(void *arg) {
  mwf_call *c = arg;
  mem_msg *x = core_map_iget(&c->m->msgs, c->request_id);
  if (x && !x->processed) mwf_wake(c, x);
}

static int mwf_wake_op(void *impl, int64_t request_id, cruster_error **err) {
  mwf_call c = {0};
  c.request_id = request_id;
  return mwf_run(impl, mwf_wake_on_loop, &c, err);
}

/* ---- cron slots (any thread, under cron_mu) ---------------------------- */

static mem_cron *mcron_find(mem_store *m, const char *job, int64_t slot_ms) {
  for (size_t i = 0; i < m->ncron; i++)
    if (m->cron[i].s.slot_ms == slot_ms && strcmp(m->cron[i].job, job) == 0) return &m->cron[i];
  return NULL;
}

static int mcron_begin(void *impl, const char *job, int64_t slot_ms, int64_t now_ms, int *fresh,
                       int32_t *state, cruster_error **err) {
  mem_store *m = impl;
  int rc = CRUSTER_OK;
  *fresh = 0;
  *state = ST_CRON_RUNNING;
  uv_mutex_lock(&m->cron_mu);
  mem_cron *c = mcron_find(m, job, slot_ms);
  if (c) {
    *state = c->s.state;
  } else {
    if (m->ncron == m->capcron) {
      size_t cap = m->capcron ? m->capcron * 2 : 16;
      mem_cron *v = cap <= SIZE_MAX / sizeof(*v) ? realloc(m->cron, cap * sizeof(*v)) : NULL;
      if (!v) {
        rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
        goto out;
      }
      m->cron = v;
      m->capcron = cap;
    }
    c = &m->cron[m->ncron];
    memset(c, 0, sizeof(*c));
    c->job = core_strdup(job);
    if (!c->job) {
      rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      goto out;
    }
    c->s.slot_ms = slot_ms;
    c->s.state = ST_CRON_RUNNING;
    c->s.started_ms = now_ms;
    m->ncron++;
    *fresh = 1;
  }
out:
  uv_mutex_unlock(&m->cron_mu);
  return rc;
}

static int mcron_finish(void *impl, const char *job, int64_t slot_ms, int32_t state,
                        const char *error, int64_t now_ms, int64_t purge_before_ms,
                        cruster_error **err) {
  mem_store *m = impl;
  int rc = CRUSTER_OK;
  uv_mutex_lock(&m->cron_mu);
  mem_cron *c = mcron_find(m, job, slot_ms);
  if (!c) {
    rc = core_error_set(err, CRUSTER_E_NOT_FOUND, "cron slot %lld of \"%s\" is not recorded",
                        (long long)slot_ms, job);
    goto out;
  }
  free(c->s.error);
  c->s.error = error ? core_strdup(error) : NULL;
  c->s.state = state;
  c->s.finished_ms = now_ms;
  if (purge_before_ms > 0) {
    int64_t newest = INT64_MIN;
    for (size_t i = 0; i < m->ncron; i++)
      if (strcmp(m->cron[i].job, job) == 0 && m->cron[i].s.slot_ms > newest) newest = m->cron[i].s.slot_ms;
    size_t w = 0;
    for (size_t i = 0; i < m->ncron; i++) {
      mem_cron *x = &m->cron[i];
      if (strcmp(x->job, job) == 0 && x->s.state != ST_CRON_RUNNING && x->s.slot_ms != newest &&
          x->s.finished_ms < purge_before_ms) {
        free(x->job);
        free(x->s.error);
        continue;
      }
      m->cron[w++] = *x;
    }
    m->ncron = w;
  }
out:
  uv_mutex_unlock(&m->cron_mu);
  return rc;
}

static int cmp_slot_desc(const void *a, const void *b) {
  int64_t x = ((const st_cron_slot *)a)->slot_ms, y = ((const st_cron_slot *)b)->slot_ms;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int mcron_list(void *impl, const char *job, size_t limit, int running_only,
                      st_cron_slot **out, size_t *n, cruster_error **err) {
  mem_store *m = impl;
  *out = NULL;
  *n = 0;
  uv_mutex_lock(&m->cron_mu);
  size_t cnt = 0;
  for (size_t i = 0; i < m->ncron; i++)
    if (strcmp(m->cron[i].job, job) == 0 && (!running_only || m->cron[i].s.state == ST_CRON_RUNNING))
      cnt++;
  st_cron_slot *v = calloc(cnt ? cnt : 1, sizeof(*v));
  if (!v) {
    uv_mutex_unlock(&m->cron_mu);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  size_t k = 0;
  int oom = 0;
  for (size_t i = 0; i < m->ncron; i++) {
    const mem_cron *c = &m->cron[i];
    if (strcmp(c->job, job) != 0 || (running_only && c->s.state != ST_CRON_RUNNING)) continue;
    v[k] = c->s;
    v[k].error = c->s.error ? core_strdup(c->s.error) : NULL;
    if (c->s.error && !v[k].error) oom = 1;
    k++;
  }
  uv_mutex_unlock(&m->cron_mu);
  if (oom) {
    st_cron_slots_free(v, k);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  qsort(v, k, sizeof(*v), cmp_slot_desc);
  if (running_only) /* oldest first */
    for (size_t i = 0; i < k / 2; i++) {
      st_cron_slot t = v[i];
      v[i] = v[k - 1 - i];
      v[k - 1 - i] = t;
    }
  if (k > limit) {
    for (size_t i = limit; i < k; i++) free(v[i].error);
    k = limit;
  }
  *out = v;
  *n = k;
  return CRUSTER_OK;
}

static const st_wf_ops mem_wf_ops = {
    .load = mwf_load,
    .begin = mwf_begin,
    .tx_handle = mwf_tx_handle,
    .commit = mwf_commit,
    .rollback = mwf_rollback,
    .find = mwf_find,
    .resolve = mwf_resolve,
    .restart = mwf_restart,
    .wake = mwf_wake_op,
    .cron_begin = mcron_begin,
    .cron_finish = mcron_finish,
    .cron_list = mcron_list,
};

static void *mem_wf(cruster_storage *s, const st_wf_ops **ops) {
  *ops = &mem_wf_ops;
  return s->impl;
}

static void mem_get_reply(cruster_storage *s, int64_t request_id, st_reply_cb cb, void *ud) {
  mem_store *m = s->impl;
  mem_msg *x = core_map_iget(&m->msgs, request_id);
  if (!x) {
    cb(ud, CRUSTER_OK, NULL, 0, 0, NULL);
    return;
  }
  st_reply r = {x->status, x->data, x->len, x->message};
  cb(ud, CRUSTER_OK, NULL, 1, x->processed, x->processed ? &r : NULL);
}

static void mem_get_keyed(cruster_storage *s, const char *type, const char *id,
                          const char *method, const st_key *key, st_keyed_cb cb, void *ud) {
  mem_store *m = s->impl;
  core_env probe;
  memset(&probe, 0, sizeof(probe));
  probe.type = type;
  probe.id = id;
  probe.method = method;
  int64_t rid;
  mem_msg *x = find_keyed(m, &probe, key, &rid);
  if (!x) {
    cb(ud, CRUSTER_OK, NULL, 0, 0, NULL);
    return;
  }
  st_reply r = {x->status, x->data, x->len, x->message};
  cb(ud, CRUSTER_OK, NULL, rid, x->processed, x->processed ? &r : NULL);
}

typedef struct dead_ctx {
  mem_msg **v;
  size_t n, cap;
  int oom;
} dead_ctx;

static void collect_dead(void *ctx, core_map_entry *e) {
  dead_ctx *d = ctx;
  mem_msg *x = e->value;
  if (!x->processed || x->status != CRUSTER_E_DEAD_LETTER || d->oom) return;
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 16;
    mem_msg **v = realloc(d->v, cap * sizeof(*v));
    if (!v) {
      d->oom = 1;
      return;
    }
    d->v = v;
    d->cap = cap;
  }
  d->v[d->n++] = x;
}

static int by_seq(const void *a, const void *b) {
  int64_t x = (*(mem_msg *const *)a)->seq, y = (*(mem_msg *const *)b)->seq;
  return x < y ? -1 : x > y;
}

static void mem_list_dead(cruster_storage *s, size_t limit, st_list_cb cb, void *ud) {
  mem_store *m = s->impl;
  dead_ctx d = {NULL, 0, 0, 0};
  core_map_each(&m->msgs, collect_dead, &d);
  size_t cap = 0;
  cruster_message_list *l = d.oom ? NULL : st_list_new(0);
  if (l) {
    if (d.n) qsort(d.v, d.n, sizeof(*d.v), by_seq);
    for (size_t i = 0; i < d.n && i < limit; i++) {
      core_env *e = core_env_copy(d.v[i]->env);
      if (!e || st_list_add(l, &cap, e, d.v[i]->attempts) != 0) {
        cruster_message_list_free(l);
        l = NULL;
        break;
      }
    }
  }
  free(d.v);
  if (!l) cb(ud, CRUSTER_E_NOMEM, "out of memory listing dead letters", NULL);
  else cb(ud, CRUSTER_OK, NULL, l);
}

static void mem_redeliver(cruster_storage *s, int64_t request_id, st_done_cb cb, void *ud) {
  mem_store *m = s->impl;
  mem_msg *x = core_map_iget(&m->msgs, request_id);
  if (!x || !x->processed || x->status != CRUSTER_E_DEAD_LETTER) {
    cb(ud, CRUSTER_E_NOT_FOUND, "no dead letter with that request id");
    return;
  }
  free(x->data);
  free(x->message);
  x->data = NULL;
  x->message = NULL;
  x->processed = 0;
  x->claimed = 0;
  x->attempts = 0;
  x->status = 0;
  x->seq = ++m->next_seq;
  x->prev = m->tail;
  x->next = NULL;
  if (m->tail) m->tail->next = x; else m->head = x;
  m->tail = x;
  waiting_add(m, x->env, 1);
  cb(ud, CRUSTER_OK, NULL);
}

static void mem_flush(cruster_storage *s, void (*cb)(void *ud), void *ud) {
  (void)s;
  cb(ud); /* every operation completes inline */
}

static void mem_detach(cruster_storage *s) { (void)s; }

static void free_entry(void *ctx, core_map_entry *e) {
  (void)ctx;
  msg_free(e->value);
}

static void mem_destroy(cruster_storage *s) {
  mem_store *m = s->impl;
  core_map_each(&m->msgs, free_entry, NULL);
  core_map_clear(&m->msgs);
  core_map_clear(&m->waiting);
  for (size_t i = 0; i < m->ncron; i++) {
    free(m->cron[i].job);
    free(m->cron[i].s.error);
  }
  free(m->cron);
  uv_mutex_destroy(&m->cron_mu);
  free(m);
  free(s);
}

static const st_ops mem_ops = {
    .name = "memory",
    .attach = mem_attach,
    .save_request = mem_save_request,
    .save_reply = mem_save_reply,
    .poll = mem_poll,
    .shards_acquired = mem_shards_acquired,
    .shards_released = mem_shards_released,
    .release = mem_release,
    .next_due = mem_next_due,
    .park = mem_park,
    .wf = mem_wf,
    .get_reply = mem_get_reply,
    .get_keyed = mem_get_keyed,
    .list_dead = mem_list_dead,
    .redeliver = mem_redeliver,
    .flush = mem_flush,
    .detach = mem_detach,
    .destroy = mem_destroy,
};

cruster_status cruster_storage_memory_new(cruster_storage **out, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  *out = NULL;
  cruster_storage *s = calloc(1, sizeof(*s));
  mem_store *m = calloc(1, sizeof(*m));
  if (!s || !m) {
    free(s);
    free(m);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  if (uv_mutex_init(&m->cron_mu) != 0) {
    free(s);
    free(m);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  core_map_init(&m->msgs);
  core_map_init(&m->waiting);
  s->ops = &mem_ops;
  s->impl = m;
  *out = s;
  return CRUSTER_OK;
}

void cruster_storage_free(cruster_storage *s) {
  if (s) s->ops->destroy(s);
}
