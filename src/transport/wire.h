/* Internal: the one mapping between the wire messages (proto/cruster.proto)
 * and the runtime's types. Every decoded field is checked: names against
 * CRUSTER_MAX_NAME_LEN and UTF-8, entity ids as the C API checks them,
 * lengths against the configured maximum, numbers against their ranges.
 * Decoding never trusts the bytes: garbage gives an error and a reason. */
#ifndef TP_WIRE_H
#define TP_WIRE_H

#include "core/prefix.h"

#include <stddef.h>
#include <stdint.h>

#include "core/envelope.h"
#include "transport/transport.h"

/* Most headers an envelope may carry, and their sizes. */
#define TP_MAX_HEADERS 64
#define TP_MAX_HEADER_NAME 255
#define TP_MAX_HEADER_VALUE 8192
#define TP_MAX_TRACEPARENT 512

/* Reply kinds (ReplyKind). */
enum { TP_CHUNK = 1, TP_EXIT = 2 };

/* A decoded envelope: env (owned by whoever takes it: set it to NULL then)
 * and meta, whose strings point into the decoded message. */
typedef struct tp_wire_env {
  core_env *env;
  tp_meta meta;
  void *pb; /* the unpacked message */
  const char **names, **values;
} tp_wire_env;

/* A decoded reply; data and msg point into the unpacked message. */
typedef struct tp_wire_reply {
  int kind; /* TP_CHUNK or TP_EXIT */
  int32_t seq;
  int64_t request_id;
  int status;
  const void *data;
  size_t len;
  const char *msg; /* never NULL */
  void *pb;
} tp_wire_reply;

typedef struct tp_wire_interrupt {
  const char *type, *id, *group;
  int32_t shard;
  void *pb;
} tp_wire_interrupt;

/* Encoders: a malloc'd buffer (*len bytes), NULL on OOM (or a length that
 * does not fit the wire: payloads over 4 GiB). */
uint8_t *tp_wire_encode_env(const core_env *env, const tp_meta *meta, size_t *len);
uint8_t *tp_wire_encode_reply(int kind, int64_t request_id, int32_t seq, int status,
                              const void *data, size_t len, const char *msg, size_t *out_len);
uint8_t *tp_wire_encode_interrupt(const char *type, const char *id, const char *group,
                                  int32_t shard, size_t *len);
uint8_t *tp_wire_encode_ack(int status, const char *msg, size_t *len);

/* Decoders: CRUSTER_OK and *out filled (free with the matching _done), or
 * CRUSTER_E_MALFORMED (undecodable), CRUSTER_E_INVALID_ARGUMENT (a field out
 * of range), CRUSTER_E_PAYLOAD_TOO_LARGE (over max_len), CRUSTER_E_NOMEM,
 * with the reason in why (always NUL-terminated). */
int tp_wire_decode_env(const uint8_t *buf, size_t len, int64_t max_len, tp_wire_env *out,
                       char *why, size_t whysz);
void tp_wire_env_done(tp_wire_env *w);
int tp_wire_decode_reply(const uint8_t *buf, size_t len, int64_t max_len, tp_wire_reply *out,
                         char *why, size_t whysz);
void tp_wire_reply_done(tp_wire_reply *w);
int tp_wire_decode_interrupt(const uint8_t *buf, size_t len, tp_wire_interrupt *out, char *why,
                             size_t whysz);
void tp_wire_interrupt_done(tp_wire_interrupt *w);
/* An Ack: *status and a malloc'd message (never NULL on OK). */
int tp_wire_decode_ack(const uint8_t *buf, size_t len, int *status, char **msg, char *why,
                       size_t whysz);
/* PingReply <-> tp_health. An empty message decodes as "not stalled". */
uint8_t *tp_wire_encode_ping_reply(const tp_health *h, size_t *len);
int tp_wire_decode_ping_reply(const uint8_t *buf, size_t len, tp_health *out, char *why,
                              size_t whysz);
/* A status as received: known codes and application codes pass; any other
 * value becomes CRUSTER_E_HANDLER (callers only see defined codes). */
int tp_wire_status(int32_t status);

#endif
