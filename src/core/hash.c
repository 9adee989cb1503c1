/* Hash primitives (behaviour.md 1.2), the id functions of cruster/ids.h and
 * rendezvous assignment (behaviour.md 2). */
#include "core/hash.h"

#include <cruster/ids.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define H64_P1 UINT64_C(0x9E3779B185EBCA87)
#define H64_P2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define H64_P3 UINT64_C(0x165667B19E3779F9)
#define H64_P5 UINT64_C(0x27D4EB2F165667C5)
#define DJB2_SEED UINT64_C(5381)
#define HEX128_DJB2_SEED UINT64_C(0x517cc1b727220a95)

uint32_t core_djb2_32(const void *data, size_t len) {
  const unsigned char *p = data;
  uint32_t h = 5381u;
  for (size_t i = 0; i < len; i++) h = h * 33u + p[i];
  return h;
}

uint64_t core_djb2_64(uint64_t seed, const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t h = seed;
  for (size_t i = 0; i < len; i++) h = h * 33u + p[i];
  return h;
}

/* H64 is a byte-at-a-time function whose start value depends only on the
 * total length, so it can be fed in pieces without building the input. */
static inline uint64_t h64_start(size_t total_len) { return H64_P5 + (uint64_t)total_len; }

static inline uint64_t rotl64(uint64_t x, unsigned r) { return (x << r) | (x >> (64u - r)); }

static uint64_t h64_feed(uint64_t h, const void *data, size_t len) {
  const unsigned char *p = data;
  for (size_t i = 0; i < len; i++) {
    h ^= (uint64_t)p[i] * H64_P5;
    h = rotl64(h, 11) * H64_P1;
  }
  return h;
}

static uint64_t h64_finish(uint64_t h) {
  h ^= h >> 33;
  h *= H64_P2;
  h ^= h >> 29;
  h *= H64_P3;
  h ^= h >> 32;
  return h;
}

uint64_t core_h64(const void *data, size_t len) {
  return h64_finish(h64_feed(h64_start(len), data, len));
}

static void put_be64(unsigned char *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    p[i] = (unsigned char)(v & 0xFF);
    v >>= 8;
  }
}

static void put_be32(unsigned char *p, uint32_t v) {
  for (int i = 3; i >= 0; i--) {
    p[i] = (unsigned char)(v & 0xFF);
    v >>= 8;
  }
}

int64_t core_fallback_reply_id(int64_t request_id, int32_t seq) {
  unsigned char buf[12];
  put_be64(buf, (uint64_t)request_id);
  put_be32(buf + 8, (uint32_t)seq);
  return (int64_t)(core_djb2_64(DJB2_SEED, buf, sizeof buf) & UINT64_C(0x7FFFFFFFFFFFFFFF));
}

/* ---- public functions of cruster/ids.h ---------------------------------- */

int32_t cruster_shard_for(const char *id, size_t len, int32_t shards_per_group) {
  if (shards_per_group < 1) return -1;
  if (!id && len > 0) return -1;
  uint32_t h = core_djb2_32(id, id ? len : 0);
  return (int32_t)(h % (uint32_t)shards_per_group);
}

uint64_t cruster_hash64(const void *data, size_t len) {
  if (!data) len = 0;
  return core_h64(data, len);
}

void cruster_hex128(const void *data, size_t len, char out[33]) {
  if (!out) return;
  if (!data) len = 0;
  uint64_t a = core_h64(data, len);
  uint64_t b = core_djb2_64(HEX128_DJB2_SEED, data, len);
  snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, a, b);
}

int64_t cruster_persisted_request_id(const char *entity_type, const char *entity_id,
                                     const char *tag, const void *key, size_t key_len) {
  static const unsigned char zero = 0;
  const char *parts[3] = {entity_type, entity_id, tag};
  uint64_t h = DJB2_SEED;
  for (int i = 0; i < 3; i++) {
    if (parts[i]) h = core_djb2_64(h, parts[i], strlen(parts[i]));
    h = core_djb2_64(h, &zero, 1);
  }
  if (key && key_len > 0) h = core_djb2_64(h, key, key_len);
  return (int64_t)(h & UINT64_C(0x7FFFFFFFFFFFFFFF));
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
  x ^= x >> 30;
  x *= UINT64_C(0xBF58476D1CE4E5B9);
  x ^= x >> 27;
  x *= UINT64_C(0x94D049BB133111EB);
  x ^= x >> 31;
  return x;
}

void core_key_candidates(const char *type, const char *id, const char *method, const void *key,
                         size_t key_len, int64_t out[CORE_KEY_CANDIDATES]) {
  out[0] = cruster_persisted_request_id(type, id, method, key, key_len);
  /* Lengths go in first, so no two identities feed the same bytes. */
  const char *parts[3] = {type, id, method};
  size_t lens[4];
  for (int i = 0; i < 3; i++) lens[i] = parts[i] ? strlen(parts[i]) : 0;
  lens[3] = key ? key_len : 0;
  unsigned char hdr[4 * 8];
  for (int i = 0; i < 4; i++) put_be64(hdr + 8 * i, (uint64_t)lens[i]);
  size_t total = sizeof hdr + lens[0] + lens[1] + lens[2] + lens[3];
  uint64_t h = h64_feed(h64_start(total), hdr, sizeof hdr);
  for (int i = 0; i < 3; i++)
    if (lens[i]) h = h64_feed(h, parts[i], lens[i]);
  if (lens[3]) h = h64_feed(h, key, lens[3]);
  h = h64_finish(h);
  for (int k = 1; k < CORE_KEY_CANDIDATES; k++) {
    uint64_t v = mix64(h + (uint64_t)k * UINT64_C(0x9E3779B97F4A7C15));
    int64_t c;
    int again;
    do {
      c = (int64_t)(v & UINT64_C(0x7FFFFFFFFFFFFFFF));
      again = c == 0;
      for (int j = 0; j < k && !again; j++) again = out[j] == c;
      if (again) v = mix64(v + 1);
    } while (again);
    out[k] = c;
  }
}

/* Score of one runner for a shard: max over w in 0..weight-1 of
 * H64("<group>:<shard>\0<runner>\0<w>"). */
static uint64_t rendezvous_score(const char *shard_key, size_t shard_key_len, const char *runner,
                                 int32_t weight) {
  static const unsigned char zero = 0;
  size_t runner_len = strlen(runner);
  uint64_t best = 0;
  for (int32_t w = 0; w < weight; w++) {
    char wbuf[16];
    int wlen = snprintf(wbuf, sizeof wbuf, "%" PRId32, w);
    size_t total = shard_key_len + 1 + runner_len + 1 + (size_t)wlen;
    uint64_t h = h64_start(total);
    h = h64_feed(h, shard_key, shard_key_len);
    h = h64_feed(h, &zero, 1);
    h = h64_feed(h, runner, runner_len);
    h = h64_feed(h, &zero, 1);
    h = h64_feed(h, wbuf, (size_t)wlen);
    h = h64_finish(h);
    if (w == 0 || h > best) best = h;
  }
  return best;
}

int cruster_rendezvous_owner(const char *group, int32_t shard, const char *const *runners,
                             const int32_t *weights, size_t n) {
  /* The result is an int: a longer list could not be answered. */
  if (!group || !runners || n == 0 || n > (size_t)INT_MAX) return -1;
  /* "<group>:<shard>": the group part is fed directly, only the number is
   * formatted; both go through one H64 stream per candidate. */
  size_t group_len = strlen(group);
  char numbuf[16];
  int numlen = snprintf(numbuf, sizeof numbuf, ":%" PRId32, shard);
  char small[256];
  char *key = small;
  size_t key_len = group_len + (size_t)numlen;
  char *heap = NULL;
  if (key_len + 1 > sizeof small) {
    heap = malloc(key_len + 1);
    if (!heap) return -1;
    key = heap;
  }
  memcpy(key, group, group_len);
  memcpy(key + group_len, numbuf, (size_t)numlen + 1);

  int owner = -1;
  uint64_t best = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t weight = weights ? weights[i] : 1;
    if (weight <= 0 || !runners[i]) continue;
    uint64_t score = rendezvous_score(key, key_len, runners[i], weight);
    /* >= : ties go to the last maximal runner in list order. */
    if (owner < 0 || score >= best) {
      best = score;
      owner = (int)i;
    }
  }
  free(heap);
  return owner;
}

void cruster_snowflake_parts(int64_t id, int64_t *unix_ms, int32_t *machine_id,
                             int32_t *sequence) {
  uint64_t u = (uint64_t)id;
  if (unix_ms) *unix_ms = (int64_t)(u >> 22) + CRUSTER_SNOWFLAKE_EPOCH_MS;
  if (machine_id) *machine_id = (int32_t)((u >> 12) & 0x3FF);
  if (sequence) *sequence = (int32_t)(u & 0xFFF);
}
