/* Internal: a chained hash map from byte-string keys or int64 keys to
 * pointers. Not thread-safe (used on the loop thread only). */
#ifndef RT_MAP_H
#define RT_MAP_H

#include "core/prefix.h"

#include <stddef.h>
#include <stdint.h>

typedef struct rt_map_entry {
  struct rt_map_entry *next;
  uint64_t hash;
  int64_t ikey;
  size_t klen;
  void *value;
  char key[]; /* klen bytes + NUL (string maps only) */
} rt_map_entry;

typedef struct rt_map {
  rt_map_entry **buckets;
  size_t nbuckets; /* power of two, or 0 before the first insert */
  size_t count;
} rt_map;

/* FNV-1a of `len` bytes, continuing from `h` (start with RT_HASH_SEED). */
#define RT_HASH_SEED 1469598103934665603ULL
uint64_t rt_hash_bytes(uint64_t h, const void *key, size_t len);

/* The key of an entity instance, "type\0id" (n bytes), on the stack when
 * short. rt_ekey_make returns -1 on OOM; rt_ekey_done frees it. */
typedef struct rt_ekey {
  char *p;
  size_t n;
  char buf[320];
} rt_ekey;
int rt_ekey_make(rt_ekey *k, const char *type, const char *id);
void rt_ekey_done(rt_ekey *k);

void rt_map_init(rt_map *m);
/* Frees the entries (not the values). */
void rt_map_clear(rt_map *m);

void *rt_map_get(const rt_map *m, const void *key, size_t klen);
/* Inserts or replaces. Returns 0, or -1 on OOM. */
int rt_map_put(rt_map *m, const void *key, size_t klen, void *value);
/* Removes; returns the old value or NULL. */
void *rt_map_del(rt_map *m, const void *key, size_t klen);

void *rt_map_iget(const rt_map *m, int64_t key);
int rt_map_iput(rt_map *m, int64_t key, void *value);
void *rt_map_idel(rt_map *m, int64_t key);

/* Iteration: calls fn for every entry; fn must not modify the map. */
void rt_map_each(const rt_map *m, void (*fn)(void *ctx, rt_map_entry *e), void *ctx);

#endif
