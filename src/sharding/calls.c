/* Pending calls: the deadline heap, completion, persisted-reply waiters. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/cluster.h"
#include "sharding/sharding_internal.h"

/* ---- deadline heap (min-heap on deadline_ms) ----------------------------- */

static void deadline_fire(uv_timer_t *t);

static void heap_swap(sh_sharding *sh, size_t a, size_t b) {
  sh_call *t = sh->heap[a];
  sh->heap[a] = sh->heap[b];
  sh->heap[b] = t;
  sh->heap[a]->heap_idx = a;
  sh->heap[b]->heap_idx = b;
}

static void heap_up(sh_sharding *sh, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (sh->heap[p]->deadline_ms <= sh->heap[i]->deadline_ms) break;
    heap_swap(sh, p, i);
    i = p;
  }
}

static void heap_down(sh_sharding *sh, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < sh->heap_len && sh->heap[l]->deadline_ms < sh->heap[m]->deadline_ms) m = l;
    if (r < sh->heap_len && sh->heap[r]->deadline_ms < sh->heap[m]->deadline_ms) m = r;
    if (m == i) return;
    heap_swap(sh, i, m);
    i = m;
  }
}

static void deadline_rearm(sh_sharding *sh) {
  if (sh->heap_len == 0) {
    uv_timer_stop(&sh->deadline_timer);
    return;
  }
  int64_t delay = sh->heap[0]->deadline_ms - core_mono_ms();
  if (delay < 0) delay = 0;
  uv_timer_start(&sh->deadline_timer, deadline_fire, (uint64_t)delay, 0);
}

int sh_heap_insert(sh_sharding *sh, sh_call *c) {
  if (sh->heap_len == sh->heap_cap) {
    size_t cap = sh->heap_cap ? sh->heap_cap * 2 : 64;
    sh_call **h = realloc(sh->heap, cap * sizeof(*h));
    if (!h) return -1;
    sh->heap = h;
    sh->heap_cap = cap;
  }
  c->heap_idx = sh->heap_len;
  sh->heap[sh->heap_len++] = c;
  heap_up(sh, c->heap_idx);
  if (c->heap_idx == 0) deadline_rearm(sh);
  core_metric_add(sh->m.calls_inflight, 1);
  return 0;
}

static void heap_remove(sh_sharding *sh, sh_call *c) {
  size_t i = c->heap_idx;
  if (i == SIZE_MAX) return;
  c->heap_idx = SIZE_MAX;
  core_metric_add(sh->m.calls_inflight, -1);
  sh->heap_len--;
  if (i != sh->heap_len) {
    sh->heap[i] = sh->heap[sh->heap_len];
    sh->heap[i]->heap_idx = i;
    heap_down(sh, i);
    heap_up(sh, sh->heap[i]->heap_idx);
  }
  if (i == 0) deadline_rearm(sh);
}

/* ---- waiters ------------------------------------------------------------- */

int sh_waiter_add(sh_sharding *sh, sh_call *c) {
  sh_call *head = core_map_iget(&sh->waiters, c->request_id);
  c->wnext = head;
  if (core_map_iput(&sh->waiters, c->request_id, c) != 0) return -1;
  c->waiting = 1;
  return 0;
}

static void waiter_remove(sh_sharding *sh, sh_call *c) {
  if (!c->waiting) return;
  c->waiting = 0;
  sh_call *head = core_map_iget(&sh->waiters, c->request_id);
  if (head == c) {
    if (c->wnext) core_map_iput(&sh->waiters, c->request_id, c->wnext);
    else core_map_idel(&sh->waiters, c->request_id);
  } else {
    for (sh_call *p = head; p; p = p->wnext)
      if (p->wnext == c) {
        p->wnext = c->wnext;
        break;
      }
  }
  c->wnext = NULL;
}

void sh_waiters_resolve(sh_sharding *sh, int64_t request_id, int status, const void *data,
                        size_t len, const char *msg) {
  sh_call *c = core_map_idel(&sh->waiters, request_id);
  while (c) {
    sh_call *next = c->wnext;
    c->waiting = 0;
    c->wnext = NULL;
    sh_call_complete(sh, c, status, data, len, msg);
    c = next;
  }
}

/* ---- completion ---------------------------------------------------------- */

sh_call *sh_call_new(const char *type, const char *id, const char *method) {
  /* The strings were checked (names and ids are short): no overflow. */
  size_t lt = strlen(type) + 1, li = strlen(id) + 1, lm = strlen(method) + 1;
  sh_call *c = calloc(1, sizeof(*c) + lt + li + lm);
  if (!c) return NULL;
  char *p = c->names;
  memcpy(p, type, lt); c->type = p; p += lt;
  memcpy(p, id, li); c->id = p; p += li;
  memcpy(p, method, lm); c->method = p;
  return c;
}

void sh_call_free(sh_call *c) {
  if (!c) return;
  free(c->env);
  free(c->key);
  free(c->fwd_err);
  free(c);
}

void sh_call_complete(sh_sharding *sh, sh_call *c, int status, const void *data, size_t len,
                      const char *msg) {
  heap_remove(sh, c);
  waiter_remove(sh, c);
  sh_remote_detach(sh, c);
  if (c->req) {
    /* A streamed call's handler stops producing when its caller is gone
     * (its yields fail); after its own answer this changes nothing. */
    if (c->on_item) em_request_cancel(c->req);
    em_request_withdraw(c->req);
    c->req = NULL;
  }
  if (c->save) {
    c->save->call = NULL;
    c->save = NULL;
  }
  if (c->st) {
    /* The stream delivers its items, then this end. */
    sh_stream_finish(sh, c, status, data, len, msg);
    sh_call_free(c);
    return;
  }
  rt_invoke_reply(sh->loop, c->fn, c->user, (c->flags & CRUSTER_CALL_INLINE_CALLBACK) != 0, status, data,
                  len, msg);
  sh_call_free(c);
}

static void deadline_fire(uv_timer_t *t) {
  sh_sharding *sh = t->data;
  int64_t now = core_mono_ms();
  while (sh->heap_len && sh->heap[0]->deadline_ms <= now) {
    sh_call *c = sh->heap[0];
    if (c->req) em_request_cancel(c->req);
    core_metric_add(sh->m.calls_timeout, 1);
    /* A call refused by the runners it was forwarded to (unreachable, TLS
     * refused, ...) says why the last one was refused. */
    char why[640];
    sh_remote_describe(c, why, sizeof(why));
    char msg[2 * CRUSTER_MAX_NAME_LEN + CRUSTER_MAX_ENTITY_ID_LEN + 704];
    snprintf(msg, sizeof(msg), "no answer from %s/%s (method '%s') before the call's deadline%s", c->type,
             c->id, c->method, why);
    sh_call_complete(sh, c, CRUSTER_E_TIMEOUT, NULL, 0, msg);
  }
  deadline_rearm(sh);
}

void sh_calls_fail_all(sh_sharding *sh, int status, const char *msg) {
  while (sh->heap_len) sh_call_complete(sh, sh->heap[0], status, NULL, 0, msg);
}
