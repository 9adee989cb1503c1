/* Pending calls: the deadline heap, completion, persisted-reply waiters. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/sharding_internal.h"

/* ---- deadline heap (min-heap on deadline_ms) ----------------------------- */

static void heap_swap(cruster_runtime *rt, size_t a, size_t b) {
  rt_call *t = rt->heap[a];
  rt->heap[a] = rt->heap[b];
  rt->heap[b] = t;
  rt->heap[a]->heap_idx = a;
  rt->heap[b]->heap_idx = b;
}

static void heap_up(cruster_runtime *rt, size_t i) {
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (rt->heap[p]->deadline_ms <= rt->heap[i]->deadline_ms) break;
    heap_swap(rt, p, i);
    i = p;
  }
}

static void heap_down(cruster_runtime *rt, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < rt->heap_len && rt->heap[l]->deadline_ms < rt->heap[m]->deadline_ms) m = l;
    if (r < rt->heap_len && rt->heap[r]->deadline_ms < rt->heap[m]->deadline_ms) m = r;
    if (m == i) return;
    heap_swap(rt, i, m);
    i = m;
  }
}

static void deadline_rearm(cruster_runtime *rt) {
  if (rt->heap_len == 0) {
    uv_timer_stop(&rt->deadline_timer);
    return;
  }
  int64_t delay = rt->heap[0]->deadline_ms - core_mono_ms();
  if (delay < 0) delay = 0;
  uv_timer_start(&rt->deadline_timer, rt_deadline_fire, (uint64_t)delay, 0);
}

int rt_heap_insert(cruster_runtime *rt, rt_call *c) {
  if (rt->heap_len == rt->heap_cap) {
    size_t cap = rt->heap_cap ? rt->heap_cap * 2 : 64;
    rt_call **h = realloc(rt->heap, cap * sizeof(*h));
    if (!h) return -1;
    rt->heap = h;
    rt->heap_cap = cap;
  }
  c->heap_idx = rt->heap_len;
  rt->heap[rt->heap_len++] = c;
  heap_up(rt, c->heap_idx);
  if (c->heap_idx == 0) deadline_rearm(rt);
  core_metric_add(rt->m.calls_inflight, 1);
  return 0;
}

static void heap_remove(cruster_runtime *rt, rt_call *c) {
  size_t i = c->heap_idx;
  if (i == SIZE_MAX) return;
  c->heap_idx = SIZE_MAX;
  core_metric_add(rt->m.calls_inflight, -1);
  rt->heap_len--;
  if (i != rt->heap_len) {
    rt->heap[i] = rt->heap[rt->heap_len];
    rt->heap[i]->heap_idx = i;
    heap_down(rt, i);
    heap_up(rt, rt->heap[i]->heap_idx);
  }
  if (i == 0) deadline_rearm(rt);
}

/* ---- waiters ------------------------------------------------------------- */

int rt_waiter_add(cruster_runtime *rt, rt_call *c) {
  rt_call *head = core_map_iget(&rt->waiters, c->request_id);
  c->wnext = head;
  if (core_map_iput(&rt->waiters, c->request_id, c) != 0) return -1;
  c->waiting = 1;
  return 0;
}

static void waiter_remove(cruster_runtime *rt, rt_call *c) {
  if (!c->waiting) return;
  c->waiting = 0;
  rt_call *head = core_map_iget(&rt->waiters, c->request_id);
  if (head == c) {
    if (c->wnext) core_map_iput(&rt->waiters, c->request_id, c->wnext);
    else core_map_idel(&rt->waiters, c->request_id);
  } else {
    for (rt_call *p = head; p; p = p->wnext)
      if (p->wnext == c) {
        p->wnext = c->wnext;
        break;
      }
  }
  c->wnext = NULL;
}

void rt_waiters_resolve(cruster_runtime *rt, int64_t request_id, int status, const void *data,
                        size_t len, const char *msg) {
  rt_call *c = core_map_idel(&rt->waiters, request_id);
  while (c) {
    rt_call *next = c->wnext;
    c->waiting = 0;
    c->wnext = NULL;
    rt_call_complete(rt, c, status, data, len, msg);
    c = next;
  }
}

/* ---- completion ---------------------------------------------------------- */

rt_call *rt_call_new(const char *type, const char *id, const char *method) {
  /* The strings were checked (names and ids are short): no overflow. */
  size_t lt = strlen(type) + 1, li = strlen(id) + 1, lm = strlen(method) + 1;
  rt_call *c = calloc(1, sizeof(*c) + lt + li + lm);
  if (!c) return NULL;
  char *p = c->names;
  memcpy(p, type, lt); c->type = p; p += lt;
  memcpy(p, id, li); c->id = p; p += li;
  memcpy(p, method, lm); c->method = p;
  return c;
}

void rt_call_free(rt_call *c) {
  if (!c) return;
  free(c->env);
  free(c->key);
  free(c);
}

void rt_call_complete(cruster_runtime *rt, rt_call *c, int status, const void *data, size_t len,
                      const char *msg) {
  heap_remove(rt, c);
  waiter_remove(rt, c);
  if (c->req) {
    em_request_withdraw(c->req);
    c->req = NULL;
  }
  if (c->save) {
    c->save->call = NULL;
    c->save = NULL;
  }
  rt_invoke_reply(&rt->loop, c->fn, c->user, (c->flags & CRUSTER_CALL_INLINE_CALLBACK) != 0, status, data,
                  len, msg);
  rt_call_free(c);
}

void rt_deadline_fire(uv_timer_t *t) {
  cruster_runtime *rt = t->data;
  int64_t now = core_mono_ms();
  while (rt->heap_len && rt->heap[0]->deadline_ms <= now) {
    rt_call *c = rt->heap[0];
    if (c->req) em_request_cancel(c->req);
    core_metric_add(rt->m.calls_timeout, 1);
    char msg[2 * CRUSTER_MAX_NAME_LEN + CRUSTER_MAX_ENTITY_ID_LEN + 64];
    snprintf(msg, sizeof(msg), "no answer from %s/%s (method '%s') before the call's deadline",
             c->type, c->id, c->method);
    rt_call_complete(rt, c, CRUSTER_E_TIMEOUT, NULL, 0, msg);
  }
  deadline_rearm(rt);
}

void rt_calls_fail_all(cruster_runtime *rt, int status, const char *msg) {
  while (rt->heap_len) rt_call_complete(rt, rt->heap[0], status, NULL, 0, msg);
}
