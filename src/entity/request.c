/* The request handle given to handlers: accessors and answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"

const void *cruster_request_payload(const cruster_request *r, size_t *len) {
  if (!r) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = r->env->len;
  return r->env->len ? r->env->payload : NULL;
}

const char *cruster_request_entity_type(const cruster_request *r) { return r ? r->env->type : NULL; }
const char *cruster_request_entity_id(const cruster_request *r) { return r ? r->env->id : NULL; }
const char *cruster_request_method(const cruster_request *r) { return r ? r->env->method : NULL; }
const char *cruster_request_shard_group(const cruster_request *r) { return r ? r->env->group : NULL; }
int32_t cruster_request_shard(const cruster_request *r) { return r ? r->env->shard : -1; }
const char *cruster_request_traceparent(const cruster_request *r) {
  return r && r->env->traceparent[0] ? r->env->traceparent : NULL;
}
int64_t cruster_request_id(const cruster_request *r) { return r ? r->env->request_id : 0; }
int cruster_request_is_persisted(const cruster_request *r) { return r ? r->env->persisted : 0; }
int cruster_request_from_entity(const cruster_request *r) { return r ? r->env->internal : 0; }
cruster_runtime *cruster_request_runtime(const cruster_request *r) { return r ? r->em->owner : NULL; }

int cruster_request_cancelled(const cruster_request *r) {
  return r ? atomic_load(&((cruster_request *)r)->cancelled) : 1;
}

/* The handler misused an answer: its caller gets `status` with `msg` instead
 * (nobody waits forever), and the handler learns CRUSTER_E_INVALID_ARGUMENT
 * -- or CRUSTER_E_STATE when the request was answered already, which then
 * stands unchanged. */
static cruster_status answer_misuse(cruster_request *r, int status, const char *msg) {
  int st = em_request_answer(r, status, NULL, 0, msg);
  return st == CRUSTER_E_STATE ? st : CRUSTER_E_INVALID_ARGUMENT;
}

cruster_status cruster_request_reply(cruster_request *r, const void *data, size_t len) {
  if (!r) return CRUSTER_E_INVALID_ARGUMENT;
  if (!data && len > 0) {
    char msg[128];
    snprintf(msg, sizeof(msg), "the handler replied with a NULL buffer of %zu bytes", len);
    return answer_misuse(r, CRUSTER_E_HANDLER, msg);
  }
  if (core_size_exceeds(len, r->em->cfg->max_payload_size)) {
    char msg[160];
    snprintf(msg, sizeof(msg), "the reply of %zu bytes exceeds max_payload_size (%lld bytes)", len,
             (long long)r->em->cfg->max_payload_size);
    int st = em_request_answer(r, CRUSTER_E_PAYLOAD_TOO_LARGE, NULL, 0, msg);
    return st == CRUSTER_OK ? CRUSTER_E_PAYLOAD_TOO_LARGE : st;
  }
  return em_request_answer(r, CRUSTER_OK, data, len, NULL);
}

/* A failure status that is neither a cruster code nor an application code
 * (-999..-28, say): the caller could not tell what it means
 * (cruster_status_name would say "CRUSTER_E_UNKNOWN"). The caller gets
 * CRUSTER_E_HANDLER with a message that names the code. */
#define FAIL_UNKNOWN_FMT                                                                     \
  "the handler failed with status %d, which is neither a cruster status nor an application " \
  "code (<= %d): %s"
static cruster_status fail_unknown(cruster_request *r, int status, const char *message) {
  const char *text = message ? message : "(no message)";
  int n = snprintf(NULL, 0, FAIL_UNKNOWN_FMT, status, (int)CRUSTER_E_APPLICATION, text);
  char *msg = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (msg) snprintf(msg, (size_t)n + 1, FAIL_UNKNOWN_FMT, status, (int)CRUSTER_E_APPLICATION, text);
  cruster_status st = answer_misuse(r, CRUSTER_E_HANDLER,
                                    msg ? msg : "the handler failed with an unknown status code");
  free(msg);
  return st;
}

cruster_status cruster_request_fail(cruster_request *r, int status, const char *message) {
  if (!r) return CRUSTER_E_INVALID_ARGUMENT;
  if (status >= 0)
    return answer_misuse(r, CRUSTER_E_HANDLER,
                         message ? message : "the handler failed with a non-negative status");
  if (status > CRUSTER_E_APPLICATION && !core_status_known(status))
    return fail_unknown(r, status, message);
  return em_request_answer(r, status, NULL, 0, message);
}

int em_request_park(cruster_request *r, int64_t wake_at, int64_t wake_seq, int progress) {
  if (!r) return CRUSTER_E_INVALID_ARGUMENT;
  if (!r->env->persisted) return CRUSTER_E_STATE; /* nothing stored to park */
  if (atomic_load(&r->answered)) return CRUSTER_E_STATE;
  /* Written before the answer publishes the request to the loop (only the
   * engine answers its own deliveries: nothing races with it). */
  r->park_at = wake_at;
  r->park_seq = wake_seq;
  r->park_progress = progress;
  r->parked = 1;
  return em_request_answer(r, CRUSTER_E_SUSPENDED, NULL, 0, "parked");
}

struct pg_conn *cruster_request_pg(cruster_request *req) {
  if (!req || !req->tx || !req->em->hooks.tx_handle) return NULL;
  return (struct pg_conn *)req->em->hooks.tx_handle(req->em->hooks.ud, req->tx);
}

/* ---- streamed calls ---------------------------------------------------------- */

int cruster_request_is_stream(const cruster_request *r) { return r && r->stream ? 1 : 0; }

cruster_status cruster_request_yield(cruster_request *r, const void *data, size_t len) {
  if (!r || (!data && len > 0)) return CRUSTER_E_INVALID_ARGUMENT;
  em_stream *st = r->stream;
  if (!st) return CRUSTER_E_STATE; /* not a streamed call */
  em_manager *m = r->em;
  if (rt_on_loop(m->loop)) return CRUSTER_E_STATE; /* it may have to wait */
  if (core_size_exceeds(len, m->cfg->max_payload_size)) return CRUSTER_E_PAYLOAD_TOO_LARGE;
  /* len <= max_payload_size, far below SIZE_MAX - sizeof(em_item). */
  em_item *it = malloc(sizeof(*it) + (len ? len : 1));
  if (!it) return CRUSTER_E_NOMEM;
  it->next = NULL;
  it->len = len;
  if (len) memcpy(it->data, data, len);
  int st_code = CRUSTER_OK, blocked = 0;
  uv_mutex_lock(&st->mu);
  for (;;) {
    if (atomic_load(&r->answered)) {
      st_code = CRUSTER_E_STATE;
      break;
    }
    if (atomic_load(&r->cancelled) || st->closed) {
      st_code = CRUSTER_E_CANCELLED;
      break;
    }
    if (st->next_seq == INT32_MAX) {
      st_code = CRUSTER_E_PAYLOAD_TOO_LARGE; /* sequence numbers end at 2^31 - 2 */
      break;
    }
    if (st->outstanding < EM_STREAM_WINDOW) break;
    if (!blocked) {
      /* The worker waits for its caller: the pool may add one meanwhile. */
      blocked = 1;
      uv_mutex_unlock(&st->mu);
      rt_pool_block_enter(m->loop->pool);
      uv_mutex_lock(&st->mu);
      continue;
    }
    /* Woken by a credit, the answer, a cancellation or the caller going
     * away; the timeout only re-checks (no wake-up is ever needed from it). */
    uv_cond_timedwait(&st->cv, &st->mu, UINT64_C(1000000000));
  }
  if (st_code == CRUSTER_OK) {
    it->seq = st->next_seq++;
    st->outstanding++;
    if (st->tail) st->tail->next = it;
    else st->head = it;
    st->tail = it;
    it = NULL;
    if (!st->posted) {
      /* The command holds a reference: the request outlives it. */
      atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
      st->posted = 1;
      if (rt_post(m->loop, &st->cmd) != 0) {
        st->posted = 0;
        atomic_fetch_sub_explicit(&r->refs, 1, memory_order_relaxed);
        st_code = CRUSTER_E_SHUTTING_DOWN;
      }
    }
  }
  uv_mutex_unlock(&st->mu);
  if (blocked) rt_pool_block_leave(m->loop->pool);
  free(it);
  return st_code;
}
