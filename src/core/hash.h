/* Internal: hash primitives of behaviour.md section 1.2 (all wrap modulo 2^n). */
#ifndef CORE_HASH_H
#define CORE_HASH_H

#include "core/prefix.h"

#include <stddef.h>
#include <stdint.h>

uint32_t core_djb2_32(const void *data, size_t len);
uint64_t core_djb2_64(uint64_t seed, const void *data, size_t len);
uint64_t core_h64(const void *data, size_t len);
/* djb2_64(5381, BE64(request_id) || BE32(seq)) with bit 63 cleared. */
int64_t core_fallback_reply_id(int64_t request_id, int32_t seq);

/* Candidate request ids of a keyed persisted call, in probe order: [0] is
 * PRID (cruster_persisted_request_id); the others are derived from a
 * 64-bit mix of the whole identity (type, id, method, key, each with its
 * length) and the index, all >= 0 and distinct. A call whose identity is not
 * the one stored under [0] takes the first free candidate; lookups compare
 * the stored identity, never only the id. */
#define CORE_KEY_CANDIDATES 8
void core_key_candidates(const char *type, const char *id, const char *method, const void *key,
                         size_t key_len, int64_t out[CORE_KEY_CANDIDATES]);

#endif
