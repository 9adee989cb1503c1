/* Internal: hash primitives of behaviour.md section 1.2 (all wrap modulo 2^n). */
#ifndef CORE_HASH_H
#define CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

uint32_t core_djb2_32(const void *data, size_t len);
uint64_t core_djb2_64(uint64_t seed, const void *data, size_t len);
uint64_t core_h64(const void *data, size_t len);
/* djb2_64(5381, BE64(request_id) || BE32(seq)) with bit 63 cleared. */
int64_t core_fallback_reply_id(int64_t request_id, int32_t seq);

#endif
