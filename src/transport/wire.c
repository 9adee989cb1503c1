/* The wire mapping: proto/cruster.proto <-> core_env, replies, interrupts,
 * acks. Every field is checked on decode. */
#include "transport/wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "cruster.pb-c.h"

static int fail(char *why, size_t whysz, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *why, size_t whysz, int status, const char *fmt, ...) {
  if (why && whysz) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whysz, fmt, ap);
    va_end(ap);
  }
  return status;
}

/* A checked name or id: the error text of core_check_* goes to why. */
static int check_with(cruster_status (*fn)(const char *, const char *, cruster_error **),
                      const char *what, const char *s, char *why, size_t whysz) {
  cruster_error *e = NULL;
  int rc = fn(what, s, &e);
  if (rc == CRUSTER_OK) return CRUSTER_OK;
  rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "%s",
            e ? cruster_error_message(e) : "invalid name");
  cruster_error_free(e);
  return rc;
}
static int check_id(const char *s, char *why, size_t whysz) {
  cruster_error *e = NULL;
  int rc = core_check_entity_id(s, &e);
  if (rc == CRUSTER_OK) return CRUSTER_OK;
  rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "%s",
            e ? cruster_error_message(e) : "invalid entity id");
  cruster_error_free(e);
  return rc;
}

/* proto3 strings are "" when absent; protobuf-c gives NULL only for a
 * message built by hand. */
static const char *str_or_empty(const char *s) { return s ? s : ""; }

static uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return NULL;
  *len = protobuf_c_message_pack(m, buf);
  return buf;
}

/* ---- envelope ------------------------------------------------------------ */

uint8_t *tp_wire_encode_env(const core_env *env, const tp_meta *meta, size_t *len) {
  Cruster__V1__Envelope m = CRUSTER__V1__ENVELOPE__INIT;
  m.request_id = env->request_id;
  m.entity_type = (char *)env->type;
  m.entity_id = (char *)env->id;
  m.shard_group = (char *)env->group;
  m.shard = env->shard;
  m.method = (char *)env->method;
  m.payload.data = (uint8_t *)env->payload;
  m.payload.len = env->len;
  m.persisted = env->persisted != 0;
  m.is_request = env->is_request != 0;
  m.deliver_at_ms = env->deliver_at;
  m.internal = env->internal != 0;
  Cruster__V1__Envelope__HeadersEntry *entries = NULL, **ptrs = NULL;
  if (meta) {
    m.traceparent = (char *)(meta->traceparent ? meta->traceparent : "");
    m.hops = meta->hops;
    m.timeout_ms = meta->timeout_ms;
    m.stream = meta->stream != 0;
    if (meta->key) {
      m.idempotency_key.data = (uint8_t *)meta->key;
      m.idempotency_key.len = meta->key_len;
    }
    if (meta->n_headers) {
      entries = calloc(meta->n_headers, sizeof(*entries));
      ptrs = calloc(meta->n_headers, sizeof(*ptrs));
      if (!entries || !ptrs) {
        free(entries);
        free(ptrs);
        return NULL;
      }
      for (size_t i = 0; i < meta->n_headers; i++) {
        Cruster__V1__Envelope__HeadersEntry h = CRUSTER__V1__ENVELOPE__HEADERS_ENTRY__INIT;
        h.key = (char *)meta->header_names[i];
        h.value = (char *)meta->header_values[i];
        entries[i] = h;
        ptrs[i] = &entries[i];
      }
      m.n_headers = meta->n_headers;
      m.headers = ptrs;
    }
  }
  uint8_t *buf = pack(&m.base, len);
  free(entries);
  free(ptrs);
  return buf;
}

/* W3C traceparent: lowercase hex fields separated by dashes. Only the
 * alphabet and the length are checked, so later versions pass. */
static int traceparent_ok(const char *s) {
  size_t n = strlen(s);
  if (n > TP_MAX_TRACEPARENT) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || c == '-')) return 0;
  }
  return 1;
}

int tp_wire_decode_env(const uint8_t *buf, size_t len, int64_t max_len, tp_wire_env *out,
                       char *why, size_t whysz) {
  memset(out, 0, sizeof(*out));
  if (why && whysz) why[0] = 0;
  if (core_size_exceeds(len, max_len))
    return fail(why, whysz, CRUSTER_E_PAYLOAD_TOO_LARGE, "envelope of %zu bytes is over %lld", len,
                (long long)max_len);
  Cruster__V1__Envelope *m = cruster__v1__envelope__unpack(NULL, len, buf);
  if (!m) return fail(why, whysz, CRUSTER_E_MALFORMED, "undecodable envelope");
  int rc;
  const char *type = str_or_empty(m->entity_type), *id = str_or_empty(m->entity_id);
  const char *method = str_or_empty(m->method), *group = str_or_empty(m->shard_group);
  const char *tp = str_or_empty(m->traceparent);
  if ((rc = check_with(core_check_name, "entity type", type, why, whysz)) ||
      (rc = check_id(id, why, whysz)) ||
      (rc = check_with(core_check_name, "method", method, why, whysz)) ||
      (rc = check_with(core_check_name, "shard group", group, why, whysz)))
    goto bad;
  if (m->shard < 0) {
    rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "shard %d is negative", (int)m->shard);
    goto bad;
  }
  if (m->hops < 0 || m->timeout_ms < 0 || m->deliver_at_ms < 0) {
    rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "negative hops, timeout or deliver_at");
    goto bad;
  }
  if (core_size_exceeds(m->payload.len, max_len)) {
    rc = fail(why, whysz, CRUSTER_E_PAYLOAD_TOO_LARGE, "payload of %zu bytes is over %lld",
              m->payload.len, (long long)max_len);
    goto bad;
  }
  if (m->idempotency_key.len > CRUSTER_MAX_KEY_LEN) {
    rc = fail(why, whysz, CRUSTER_E_PAYLOAD_TOO_LARGE, "idempotency key of %zu bytes is over %d",
              m->idempotency_key.len, CRUSTER_MAX_KEY_LEN);
    goto bad;
  }
  if (!traceparent_ok(tp)) {
    rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "traceparent is not W3C trace context");
    goto bad;
  }
  if (m->n_headers > TP_MAX_HEADERS) {
    rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "%zu headers, at most %d", m->n_headers,
              TP_MAX_HEADERS);
    goto bad;
  }
  for (size_t i = 0; i < m->n_headers; i++) {
    const Cruster__V1__Envelope__HeadersEntry *h = m->headers[i];
    const char *k = h ? str_or_empty(h->key) : "", *v = h ? str_or_empty(h->value) : "";
    size_t kl = strlen(k), vl = strlen(v);
    if (kl == 0 || kl > TP_MAX_HEADER_NAME || vl > TP_MAX_HEADER_VALUE || !core_utf8_valid(k, kl) ||
        !core_utf8_valid(v, vl)) {
      rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT,
                "header %zu: empty, too long or not UTF-8", i);
      goto bad;
    }
  }
  out->env = core_env_new(type, id, method, m->payload.data, m->payload.len);
  if (m->n_headers) {
    out->names = calloc(m->n_headers, sizeof(char *));
    out->values = calloc(m->n_headers, sizeof(char *));
  }
  if (!out->env || (m->n_headers && (!out->names || !out->values))) {
    rc = fail(why, whysz, CRUSTER_E_NOMEM, "out of memory");
    goto bad;
  }
  core_env *e = out->env;
  e->request_id = m->request_id;
  e->shard = m->shard;
  e->deliver_at = m->deliver_at_ms;
  e->internal = m->internal != 0;
  e->persisted = m->persisted != 0;
  e->is_request = m->is_request != 0;
  e->keyed = m->idempotency_key.len > 0;
  memcpy(e->group, group, strlen(group) + 1); /* checked: <= CRUSTER_MAX_NAME_LEN */
  for (size_t i = 0; i < m->n_headers; i++) {
    out->names[i] = str_or_empty(m->headers[i]->key);
    out->values[i] = str_or_empty(m->headers[i]->value);
  }
  out->meta.traceparent = tp;
  out->meta.hops = m->hops;
  out->meta.timeout_ms = m->timeout_ms;
  out->meta.stream = m->stream != 0;
  out->meta.key = m->idempotency_key.len ? m->idempotency_key.data : NULL;
  out->meta.key_len = m->idempotency_key.len;
  out->meta.n_headers = m->n_headers;
  out->meta.header_names = out->names;
  out->meta.header_values = out->values;
  out->pb = m;
  return CRUSTER_OK;
bad:
  free(out->env);
  free(out->names);
  free(out->values);
  memset(out, 0, sizeof(*out));
  cruster__v1__envelope__free_unpacked(m, NULL);
  return rc;
}

void tp_wire_env_done(tp_wire_env *w) {
  if (!w) return;
  free(w->env);
  free(w->names);
  free(w->values);
  if (w->pb) cruster__v1__envelope__free_unpacked(w->pb, NULL);
  memset(w, 0, sizeof(*w));
}

/* ---- replies ------------------------------------------------------------- */

int tp_wire_status(int32_t status) {
  if (status <= CRUSTER_E_APPLICATION || core_status_known(status)) return status;
  return CRUSTER_E_HANDLER;
}

uint8_t *tp_wire_encode_reply(int kind, int64_t request_id, int32_t seq, int status,
                              const void *data, size_t len, const char *msg, size_t *out_len) {
  Cruster__V1__Reply m = CRUSTER__V1__REPLY__INIT;
  m.request_id = request_id;
  m.sequence = seq;
  m.kind = kind == TP_CHUNK ? CRUSTER__V1__REPLY_KIND__REPLY_KIND_CHUNK
                            : CRUSTER__V1__REPLY_KIND__REPLY_KIND_EXIT;
  m.value.data = (uint8_t *)data;
  m.value.len = len;
  m.status = status;
  m.message = (char *)(msg ? msg : "");
  return pack(&m.base, out_len);
}

int tp_wire_decode_reply(const uint8_t *buf, size_t len, int64_t max_len, tp_wire_reply *out,
                         char *why, size_t whysz) {
  memset(out, 0, sizeof(*out));
  if (why && whysz) why[0] = 0;
  if (core_size_exceeds(len, max_len))
    return fail(why, whysz, CRUSTER_E_PAYLOAD_TOO_LARGE, "reply of %zu bytes is over %lld", len,
                (long long)max_len);
  Cruster__V1__Reply *m = cruster__v1__reply__unpack(NULL, len, buf);
  if (!m) return fail(why, whysz, CRUSTER_E_MALFORMED, "undecodable reply");
  int rc;
  const char *msg = str_or_empty(m->message);
  if (m->kind != CRUSTER__V1__REPLY_KIND__REPLY_KIND_CHUNK &&
      m->kind != CRUSTER__V1__REPLY_KIND__REPLY_KIND_EXIT) {
    rc = fail(why, whysz, CRUSTER_E_MALFORMED, "reply kind %d is unknown", (int)m->kind);
    goto bad;
  }
  if (m->sequence < 0) {
    rc = fail(why, whysz, CRUSTER_E_MALFORMED, "negative reply sequence");
    goto bad;
  }
  if (!core_utf8_valid(msg, strlen(msg))) {
    rc = fail(why, whysz, CRUSTER_E_MALFORMED, "reply message is not UTF-8");
    goto bad;
  }
  if (m->kind == CRUSTER__V1__REPLY_KIND__REPLY_KIND_CHUNK && m->status != 0) {
    rc = fail(why, whysz, CRUSTER_E_MALFORMED, "a chunk carries a status");
    goto bad;
  }
  out->kind = m->kind == CRUSTER__V1__REPLY_KIND__REPLY_KIND_CHUNK ? TP_CHUNK : TP_EXIT;
  out->seq = m->sequence;
  out->request_id = m->request_id;
  out->status = tp_wire_status(m->status);
  out->data = m->value.data;
  out->len = m->value.len;
  out->msg = msg;
  out->pb = m;
  return CRUSTER_OK;
bad:
  cruster__v1__reply__free_unpacked(m, NULL);
  return rc;
}

void tp_wire_reply_done(tp_wire_reply *w) {
  if (w && w->pb) cruster__v1__reply__free_unpacked(w->pb, NULL);
  if (w) memset(w, 0, sizeof(*w));
}

/* ---- interrupts and acks ------------------------------------------------- */

uint8_t *tp_wire_encode_interrupt(const char *type, const char *id, const char *group,
                                  int32_t shard, size_t *len) {
  Cruster__V1__InterruptRequest m = CRUSTER__V1__INTERRUPT_REQUEST__INIT;
  m.entity_type = (char *)type;
  m.entity_id = (char *)id;
  m.shard_group = (char *)group;
  m.shard = shard;
  return pack(&m.base, len);
}

int tp_wire_decode_interrupt(const uint8_t *buf, size_t len, tp_wire_interrupt *out, char *why,
                             size_t whysz) {
  memset(out, 0, sizeof(*out));
  if (why && whysz) why[0] = 0;
  Cruster__V1__InterruptRequest *m = cruster__v1__interrupt_request__unpack(NULL, len, buf);
  if (!m) return fail(why, whysz, CRUSTER_E_MALFORMED, "undecodable interrupt");
  int rc;
  const char *type = str_or_empty(m->entity_type), *id = str_or_empty(m->entity_id);
  const char *group = str_or_empty(m->shard_group);
  if ((rc = check_with(core_check_name, "entity type", type, why, whysz)) ||
      (rc = check_id(id, why, whysz)) ||
      (rc = check_with(core_check_name, "shard group", group, why, whysz)))
    goto bad;
  if (m->shard < 0) {
    rc = fail(why, whysz, CRUSTER_E_INVALID_ARGUMENT, "shard %d is negative", (int)m->shard);
    goto bad;
  }
  out->type = type;
  out->id = id;
  out->group = group;
  out->shard = m->shard;
  out->pb = m;
  return CRUSTER_OK;
bad:
  cruster__v1__interrupt_request__free_unpacked(m, NULL);
  return rc;
}

void tp_wire_interrupt_done(tp_wire_interrupt *w) {
  if (w && w->pb) cruster__v1__interrupt_request__free_unpacked(w->pb, NULL);
  if (w) memset(w, 0, sizeof(*w));
}

uint8_t *tp_wire_encode_ack(int status, const char *msg, size_t *len) {
  Cruster__V1__Ack m = CRUSTER__V1__ACK__INIT;
  m.status = status;
  m.message = (char *)(msg ? msg : "");
  return pack(&m.base, len);
}

int tp_wire_decode_ack(const uint8_t *buf, size_t len, int *status, char **msg, char *why,
                       size_t whysz) {
  *msg = NULL;
  if (why && whysz) why[0] = 0;
  Cruster__V1__Ack *m = cruster__v1__ack__unpack(NULL, len, buf);
  if (!m) return fail(why, whysz, CRUSTER_E_MALFORMED, "undecodable ack");
  const char *text = str_or_empty(m->message);
  int rc = CRUSTER_OK;
  if (!core_utf8_valid(text, strlen(text))) {
    rc = fail(why, whysz, CRUSTER_E_MALFORMED, "ack message is not UTF-8");
  } else if (!(*msg = core_strdup(text))) {
    rc = fail(why, whysz, CRUSTER_E_NOMEM, "out of memory");
  } else {
    *status = tp_wire_status(m->status);
  }
  cruster__v1__ack__free_unpacked(m, NULL);
  return rc;
}

uint8_t *tp_wire_encode_ping_reply(const tp_health *h, size_t *len) {
  Cruster__V1__PingReply m = CRUSTER__V1__PING_REPLY__INIT;
  if (h) {
    m.stalled = h->stalled ? 1 : 0;
    m.waiting_ms = h->waiting_ms;
    m.queued = h->queued;
  }
  return pack(&m.base, len);
}

int tp_wire_decode_ping_reply(const uint8_t *buf, size_t len, tp_health *out, char *why,
                              size_t whysz) {
  memset(out, 0, sizeof(*out));
  if (why && whysz) why[0] = 0;
  if (len == 0) return CRUSTER_OK; /* an empty reply: every field at its default */
  Cruster__V1__PingReply *m = cruster__v1__ping_reply__unpack(NULL, len, buf);
  if (!m) return fail(why, whysz, CRUSTER_E_MALFORMED, "undecodable ping reply");
  int rc = CRUSTER_OK;
  if (m->waiting_ms < 0 || m->queued < 0) {
    rc = fail(why, whysz, CRUSTER_E_MALFORMED, "negative count in a ping reply");
  } else {
    out->stalled = m->stalled ? 1 : 0;
    out->waiting_ms = m->waiting_ms;
    out->queued = m->queued;
  }
  cruster__v1__ping_reply__free_unpacked(m, NULL);
  return rc;
}
