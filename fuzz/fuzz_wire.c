/*
 * fuzz_wire -- a libFuzzer target for the transport's wire decoder
 * (src/transport/wire.c): the bytes a peer sends, decoded as every message
 * the transport reads. The first byte picks the decoder (envelope, reply,
 * interrupt, ack); the rest is the message. Besides ASan and UBSan it checks
 * the decoder's promises and aborts when one breaks:
 *   - a decoded envelope has names within CRUSTER_MAX_NAME_LEN, a shard
 *     >= 0, a payload within the limit, and re-encodes to bytes that decode
 *     again to the same fields (the mapping is one-to-one on what it
 *     accepts);
 *   - a decoded reply has a known kind, a sequence >= 0 and a status that is
 *     a defined code or an application code;
 *   - refusals carry a reason.
 *
 * Built with clang only (scripts/dev build --sanitize); ctest runs it briefly
 * (test "fuzz_wire"). By hand:
 *   build-asan/fuzz/fuzz_wire -max_total_time=60 fuzz/corpus_wire
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "transport/wire.h"

#define LIMIT (64 * 1024)

#define CHECK(c) \
  do {           \
    if (!(c)) abort(); \
  } while (0)

static void check_env(const uint8_t *data, size_t len) {
  tp_wire_env w;
  char why[256];
  int rc = tp_wire_decode_env(data, len, LIMIT, &w, why, sizeof why);
  if (rc != CRUSTER_OK) {
    CHECK(why[0] != 0);
    CHECK(w.env == NULL && w.pb == NULL);
    return;
  }
  const core_env *e = w.env;
  CHECK(strlen(e->type) >= 1 && strlen(e->type) <= CRUSTER_MAX_NAME_LEN);
  CHECK(strlen(e->method) >= 1 && strlen(e->method) <= CRUSTER_MAX_NAME_LEN);
  CHECK(strlen(e->group) >= 1 && strlen(e->group) <= CRUSTER_MAX_NAME_LEN);
  CHECK(strlen(e->id) >= 1 && strlen(e->id) <= CRUSTER_MAX_ENTITY_ID_LEN);
  CHECK(e->shard >= 0 && e->len <= LIMIT);
  CHECK(w.meta.hops >= 0 && w.meta.timeout_ms >= 0 && w.meta.key_len <= CRUSTER_MAX_KEY_LEN);
  size_t n;
  uint8_t *again = tp_wire_encode_env(e, &w.meta, &n);
  CHECK(again != NULL);
  tp_wire_env v;
  /* The re-encoding may be a little larger than the input (defaults). */
  CHECK(tp_wire_decode_env(again, n, LIMIT, &v, why, sizeof why) == CRUSTER_OK);
  CHECK(strcmp(v.env->type, e->type) == 0 && strcmp(v.env->id, e->id) == 0);
  CHECK(strcmp(v.env->method, e->method) == 0 && strcmp(v.env->group, e->group) == 0);
  CHECK(v.env->len == e->len && memcmp(v.env->payload, e->payload, e->len) == 0);
  CHECK(v.env->request_id == e->request_id && v.env->shard == e->shard);
  CHECK(v.env->deliver_at == e->deliver_at && v.env->keyed == e->keyed);
  CHECK(v.meta.n_headers == w.meta.n_headers && v.meta.stream == w.meta.stream);
  CHECK(strcmp(v.meta.traceparent, w.meta.traceparent) == 0);
  tp_wire_env_done(&v);
  free(again);
  tp_wire_env_done(&w);
}

static void check_reply(const uint8_t *data, size_t len) {
  tp_wire_reply w;
  char why[256];
  int rc = tp_wire_decode_reply(data, len, LIMIT, &w, why, sizeof why);
  if (rc != CRUSTER_OK) {
    CHECK(why[0] != 0);
    return;
  }
  CHECK(w.kind == TP_CHUNK || w.kind == TP_EXIT);
  CHECK(w.seq >= 0 && w.msg != NULL);
  CHECK(w.status <= CRUSTER_E_APPLICATION || core_status_known(w.status));
  tp_wire_reply_done(&w);
}

static void check_interrupt(const uint8_t *data, size_t len) {
  tp_wire_interrupt w;
  char why[256];
  if (tp_wire_decode_interrupt(data, len, &w, why, sizeof why) != CRUSTER_OK) {
    CHECK(why[0] != 0);
    return;
  }
  CHECK(w.shard >= 0 && strlen(w.type) <= CRUSTER_MAX_NAME_LEN);
  tp_wire_interrupt_done(&w);
}

static void check_ack(const uint8_t *data, size_t len) {
  int status = 0;
  char *msg = NULL, why[256];
  if (tp_wire_decode_ack(data, len, &status, &msg, why, sizeof why) != CRUSTER_OK) {
    CHECK(why[0] != 0 && msg == NULL);
    return;
  }
  CHECK(msg != NULL);
  CHECK(status <= CRUSTER_E_APPLICATION || core_status_known(status));
  free(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  switch (data[0] % 4) {
    case 0: check_env(data + 1, size - 1); break;
    case 1: check_reply(data + 1, size - 1); break;
    case 2: check_interrupt(data + 1, size - 1); break;
    default: check_ack(data + 1, size - 1); break;
  }
  return 0;
}
