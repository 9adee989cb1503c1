/*
 * cruster/ids.h -- the id and hashing functions every runner must agree on.
 *
 * These are pure functions, exposed so tools and bindings compute the same
 * shard, owner and ids as the runtime. They reproduce the original system's
 * functions bit for bit (see docs/ids.md): the entity -> shard function, the
 * 64-bit mixing hash H64 (not xxHash), HEX128 (a 128-bit non-cryptographic
 * hash; NOT SHA-256), the persisted request id and rendezvous assignment.
 * All threads may call them at any time.
 */
#ifndef CRUSTER_IDS_H
#define CRUSTER_IDS_H

#include "common.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Snowflake epoch: 2025-01-01T00:00:00Z in Unix milliseconds. */
#define CRUSTER_SNOWFLAKE_EPOCH_MS INT64_C(1735689600000)

/*
 * cruster_shard_for
 *   Returns the 0-based shard number of entity id `id` (`len` bytes, UTF-8):
 *   djb2_32(id) mod shards_per_group. Returns -1 if shards_per_group < 1 or
 *   id is NULL with len > 0.
 */
CRUSTER_API int32_t cruster_shard_for(const char *id, size_t len, int32_t shards_per_group);

/*
 * cruster_hash64
 *   Returns H64 of `len` bytes at `data` (the mixing hash of rendezvous).
 */
CRUSTER_API uint64_t cruster_hash64(const void *data, size_t len);

/*
 * cruster_hex128
 *   Writes HEX128 of the bytes (32 lowercase hex digits and a NUL) to `out`,
 *   which must hold 33 bytes. Used for hashed workflow execution ids.
 */
CRUSTER_API void cruster_hex128(const void *data, size_t len, char out[33]);

/*
 * cruster_persisted_request_id
 *   Returns PRID, the request id of a persisted call made with an idempotency
 *   key: djb2_64 over type, 0, id, 0, tag, 0, key, with bit 63 cleared
 *   (always >= 0). `key` may be NULL when key_len is 0. A weak hash that
 *   collides ("Ab" and "BA" give the same value): cruster never deduplicates
 *   on it alone. A call whose PRID already holds another call's identity is
 *   stored under another id (docs/ids.md).
 */
CRUSTER_API int64_t cruster_persisted_request_id(const char *entity_type, const char *entity_id,
                                                 const char *tag, const void *key,
                                                 size_t key_len);

/*
 * cruster_rendezvous_owner
 *   Returns the index in `runners` of the runner that owns shard
 *   (`group`, `shard`) under rendezvous hashing, or -1 when no runner is a
 *   candidate (all weights <= 0, n == 0, n > INT_MAX, group or runners
 *   NULL). `runners` are "host:port" strings in etcd key order (NULL entries
 *   are skipped); `weights` their weights (NULL = all 1). Ties go to the
 *   last maximal runner, as in the original. The cost is one hash per unit
 *   of weight: linear in the sum of the weights.
 */
CRUSTER_API int cruster_rendezvous_owner(const char *group, int32_t shard,
                                         const char *const *runners, const int32_t *weights,
                                         size_t n);

/*
 * cruster_snowflake_parts
 *   Splits a snowflake id into its Unix time in ms, machine id (0..1023) and
 *   sequence (0..4095). Any out-pointer may be NULL.
 */
CRUSTER_API void cruster_snowflake_parts(int64_t id, int64_t *unix_ms, int32_t *machine_id,
                                         int32_t *sequence);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_IDS_H */
