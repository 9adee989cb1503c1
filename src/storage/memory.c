/* In-memory message storage: at-least-once within one process. Used on the
 * loop thread only, so it needs no lock; every operation completes inline. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/hash.h"
#include "core/util.h"
#include "storage/storage_internal.h"

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
} mem_msg;

typedef struct mem_store {
  core_map msgs;    /* request id -> mem_msg */
  core_map waiting; /* "type\0id" -> count of unclaimed unprocessed immediate messages */
  mem_msg *head, *tail;
  int64_t next_seq;
} mem_store;

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
  free(x->key);
  free(x->env);
  free(x->data);
  free(x->message);
  free(x);
}

static cruster_status mem_attach(cruster_storage *s, const st_host *host, cruster_error **err) {
  (void)s; (void)host; (void)err;
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
  for (mem_msg *x = m->head; x; x = x->next)
    if (!x->claimed && x->env->deliver_at > 0 && (best == 0 || x->env->deliver_at < best))
      best = x->env->deliver_at;
  return best;
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
  free(m);
  free(s);
}

static const st_ops mem_ops = {
    .name = "memory",
    .attach = mem_attach,
    .save_request = mem_save_request,
    .save_reply = mem_save_reply,
    .poll = mem_poll,
    .release = mem_release,
    .next_due = mem_next_due,
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
