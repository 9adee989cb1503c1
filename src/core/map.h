/* Internal: a chained hash map from byte-string keys or int64 keys to
 * pointers. Not thread-safe (used on the loop thread only). */
#ifndef CORE_MAP_H
#define CORE_MAP_H

#include "core/prefix.h"

#include <stddef.h>
#include <stdint.h>

typedef struct core_map_entry {
  struct core_map_entry *next;
  uint64_t hash;
  int64_t ikey;
  size_t klen;
  void *value;
  char key[]; /* klen bytes + NUL (string maps only) */
} core_map_entry;

typedef struct core_map {
  core_map_entry **buckets;
  size_t nbuckets; /* power of two, or 0 before the first insert */
  size_t count;
} core_map;

/* FNV-1a of `len` bytes, continuing from `h` (start with CORE_HASH_SEED). */
#define CORE_HASH_SEED 1469598103934665603ULL
uint64_t core_hash_bytes(uint64_t h, const void *key, size_t len);

/* The key of an entity instance, "type\0id" (n bytes), on the stack when
 * short. core_ekey_make returns -1 on OOM; core_ekey_done frees it. */
typedef struct core_ekey {
  char *p;
  size_t n;
  char buf[320];
} core_ekey;
int core_ekey_make(core_ekey *k, const char *type, const char *id);
void core_ekey_done(core_ekey *k);

void core_map_init(core_map *m);
/* Frees the entries (not the values). */
void core_map_clear(core_map *m);

void *core_map_get(const core_map *m, const void *key, size_t klen);
/* Inserts or replaces. Returns 0, or -1 on OOM. */
int core_map_put(core_map *m, const void *key, size_t klen, void *value);
/* Removes; returns the old value or NULL. */
void *core_map_del(core_map *m, const void *key, size_t klen);

void *core_map_iget(const core_map *m, int64_t key);
int core_map_iput(core_map *m, int64_t key, void *value);
void *core_map_idel(core_map *m, int64_t key);

/* Iteration: calls fn for every entry; fn must not modify the map. */
void core_map_each(const core_map *m, void (*fn)(void *ctx, core_map_entry *e), void *ctx);

#endif
