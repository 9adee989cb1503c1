/* Internal: the envelope of an addressed message, shared by every layer
 * that moves messages (entity, sharding, storage, transport). */
#ifndef CORE_ENVELOPE_H
#define CORE_ENVELOPE_H

#include "core/prefix.h"

#include <cruster/common.h>
#include <stddef.h>
#include <stdint.h>

/* An addressed message: one allocation holding strings and payload. */
/* The length of a W3C traceparent ("vv-<32 hex>-<16 hex>-ff"). */
#define CORE_TRACEPARENT_LEN 55

/* Checks a W3C trace context traceparent (version-traceid-parentid-flags,
 * lowercase hex: 2-32-16-2 digits; version ff, an all-zero trace id or
 * parent id are invalid). 1 when valid; otherwise 0 and *why (when not
 * NULL) says what is wrong. */
int core_traceparent_check(const char *s, const char **why);

typedef struct core_env {
  int64_t request_id;
  const char *type, *id, *method;
  const void *payload;
  size_t len;
  int32_t shard;
  int64_t deliver_at; /* Unix ms, 0 = now */
  unsigned char internal;   /* sent by an entity/workflow */
  unsigned char persisted;  /* went through message storage */
  unsigned char is_request; /* 1 = send (a caller waits), 0 = notify */
  unsigned char keyed;      /* request id derived from an idempotency key */
  unsigned char fresh;      /* delivered straight after its own insert stored
                             * it (a first delivery; not copied) */
  unsigned char stream;     /* the caller takes a stream of items
                             * (cruster_send_stream); never persisted */
  char group[CRUSTER_MAX_NAME_LEN + 1];
  /* W3C traceparent of the call ("" = none; checked by
   * core_traceparent_check). */
  char traceparent[CORE_TRACEPARENT_LEN + 1];
  char data[];
} core_env;

/* One allocation: strings and payload copied in. NULL on OOM or when the
 * sizes overflow. Free with free(). */
core_env *core_env_new(const char *type, const char *id, const char *method, const void *payload,
                   size_t len);
core_env *core_env_copy(const core_env *e);

#endif
