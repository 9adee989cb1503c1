/* The request handle given to handlers: accessors and answers. */
#include <string.h>

#include "core/util.h"
#include "entity/entity_internal.h"

int em_request_answer(cruster_request *r, int status, const void *data, size_t len,
                      const char *msg);

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
int64_t cruster_request_id(const cruster_request *r) { return r ? r->env->request_id : 0; }
int cruster_request_is_persisted(const cruster_request *r) { return r ? r->env->persisted : 0; }
int cruster_request_from_entity(const cruster_request *r) { return r ? r->env->internal : 0; }
cruster_runtime *cruster_request_runtime(const cruster_request *r) { return r ? r->rt : NULL; }

int cruster_request_cancelled(const cruster_request *r) {
  return r ? atomic_load(&((cruster_request *)r)->cancelled) : 1;
}

cruster_status cruster_request_reply(cruster_request *r, const void *data, size_t len) {
  if (!r) return CRUSTER_E_INVALID_ARGUMENT;
  if (!data && len > 0) {
    em_request_answer(r, CRUSTER_E_HANDLER, NULL, 0,
                      "the handler replied with a NULL buffer of non-zero length");
    return CRUSTER_E_INVALID_ARGUMENT;
  }
  if ((int64_t)len > r->rt->cfg->max_payload_size) {
    char msg[160];
    snprintf(msg, sizeof(msg), "the reply of %zu bytes exceeds max_payload_size (%lld bytes)", len,
             (long long)r->rt->cfg->max_payload_size);
    int st = em_request_answer(r, CRUSTER_E_PAYLOAD_TOO_LARGE, NULL, 0, msg);
    return st == CRUSTER_OK ? CRUSTER_E_PAYLOAD_TOO_LARGE : st;
  }
  return em_request_answer(r, CRUSTER_OK, data, len, NULL);
}

cruster_status cruster_request_fail(cruster_request *r, int status, const char *message) {
  if (!r) return CRUSTER_E_INVALID_ARGUMENT;
  if (status >= 0) {
    em_request_answer(r, CRUSTER_E_HANDLER, NULL, 0,
                      message ? message : "the handler failed with a non-negative status");
    return CRUSTER_E_INVALID_ARGUMENT;
  }
  return em_request_answer(r, status, NULL, 0, message);
}
