/* Envelopes of addressed messages. */
#include <stdlib.h>
#include <string.h>

#include "core/envelope.h"

core_env *core_env_new(const char *type, const char *id, const char *method, const void *payload,
                   size_t len) {
  size_t lt = strlen(type) + 1, li = strlen(id) + 1, lm = strlen(method) + 1;
  /* Every term is checked before it is added: the payload length is the
   * caller's, and a wrapped sum would allocate too little and copy past it. */
  size_t size = sizeof(core_env) + 1;
  if (lt > SIZE_MAX - size) return NULL;
  size += lt;
  if (li > SIZE_MAX - size) return NULL;
  size += li;
  if (lm > SIZE_MAX - size) return NULL;
  size += lm;
  if (len > SIZE_MAX - size) return NULL;
  size += len;
  core_env *e = malloc(size);
  if (!e) return NULL;
  memset(e, 0, sizeof(*e));
  char *p = e->data;
  memcpy(p, type, lt); e->type = p; p += lt;
  memcpy(p, id, li); e->id = p; p += li;
  memcpy(p, method, lm); e->method = p; p += lm;
  if (len) memcpy(p, payload, len);
  p[len] = 0;
  e->payload = p;
  e->len = len;
  return e;
}

core_env *core_env_copy(const core_env *src) {
  core_env *e = core_env_new(src->type, src->id, src->method, src->payload, src->len);
  if (!e) return NULL;
  e->request_id = src->request_id;
  e->shard = src->shard;
  e->deliver_at = src->deliver_at;
  e->internal = src->internal;
  e->persisted = src->persisted;
  e->is_request = src->is_request;
  e->keyed = src->keyed;
  memcpy(e->group, src->group, sizeof(e->group));
  memcpy(e->traceparent, src->traceparent, sizeof(e->traceparent));
  return e;
}

static int lower_hex(const char *s, size_t n, int *all_zero) {
  *all_zero = 1;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    if (c != '0') *all_zero = 0;
  }
  return 1;
}

int core_traceparent_check(const char *s, const char **why) {
  const char *w = NULL;
  int zero = 0;
  size_t n = s ? strnlen(s, CORE_TRACEPARENT_LEN + 1) : 0;
  if (!s || n != CORE_TRACEPARENT_LEN)
    w = "a traceparent has 55 characters: version-traceid-parentid-flags (2-32-16-2 lowercase hex digits)";
  else if (s[2] != '-' || s[35] != '-' || s[52] != '-')
    w = "a traceparent's fields are separated by '-' (version-traceid-parentid-flags)";
  else if (!lower_hex(s, 2, &zero) || !lower_hex(s + 3, 32, &zero) || !lower_hex(s + 36, 16, &zero) ||
           !lower_hex(s + 53, 2, &zero))
    w = "a traceparent's fields are lowercase hex digits";
  else if (s[0] == 'f' && s[1] == 'f')
    w = "traceparent version ff is invalid";
  else if (lower_hex(s + 3, 32, &zero) && zero)
    w = "a traceparent's trace id must not be all zeros";
  else if (lower_hex(s + 36, 16, &zero) && zero)
    w = "a traceparent's parent id must not be all zeros";
  if (why) *why = w;
  return w == NULL;
}

