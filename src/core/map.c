/* Chained hash map; FNV-1a for byte keys, a 64-bit mixer for int keys. */
#include "core/map.h"

#include <stdlib.h>
#include <string.h>

uint64_t core_hash_bytes(uint64_t h, const void *key, size_t len) {
  const unsigned char *p = key;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static uint64_t hash_int(int64_t k) {
  uint64_t x = (uint64_t)k;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

int core_ekey_make(core_ekey *k, const char *type, const char *id) {
  size_t lt = strlen(type), li = strlen(id);
  k->n = lt + 1 + li;
  k->p = k->n <= sizeof(k->buf) ? k->buf : malloc(k->n);
  if (!k->p) return -1;
  memcpy(k->p, type, lt + 1);
  memcpy(k->p + lt + 1, id, li);
  return 0;
}

void core_ekey_done(core_ekey *k) {
  if (k->p != k->buf) free(k->p);
}

void core_map_init(core_map *m) { memset(m, 0, sizeof(*m)); }

void core_map_clear(core_map *m) {
  for (size_t i = 0; i < m->nbuckets; i++) {
    core_map_entry *e = m->buckets[i];
    while (e) {
      core_map_entry *n = e->next;
      free(e);
      e = n;
    }
  }
  free(m->buckets);
  core_map_init(m);
}

static int grow(core_map *m) {
  size_t nb = m->nbuckets ? m->nbuckets * 2 : 16;
  core_map_entry **b = calloc(nb, sizeof(*b));
  if (!b) return -1;
  for (size_t i = 0; i < m->nbuckets; i++) {
    core_map_entry *e = m->buckets[i];
    while (e) {
      core_map_entry *n = e->next;
      size_t j = e->hash & (nb - 1);
      e->next = b[j];
      b[j] = e;
      e = n;
    }
  }
  free(m->buckets);
  m->buckets = b;
  m->nbuckets = nb;
  return 0;
}

static core_map_entry **find(const core_map *m, uint64_t h, const void *key, size_t klen, int ikey_mode,
                           int64_t ikey) {
  if (!m->nbuckets) return NULL;
  core_map_entry **pp = &m->buckets[h & (m->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next) {
    core_map_entry *e = *pp;
    if (e->hash != h) continue;
    if (ikey_mode ? e->ikey == ikey : (e->klen == klen && memcmp(e->key, key, klen) == 0))
      return pp;
  }
  return NULL;
}

static int put(core_map *m, uint64_t h, const void *key, size_t klen, int64_t ikey, int ikey_mode,
               void *value) {
  core_map_entry **pp = find(m, h, key, klen, ikey_mode, ikey);
  if (pp) {
    (*pp)->value = value;
    return 0;
  }
  if ((m->count + 1) * 4 > m->nbuckets * 3 && grow(m) != 0) return -1;
  core_map_entry *e = malloc(sizeof(*e) + (ikey_mode ? 0 : klen + 1));
  if (!e) return -1;
  e->hash = h;
  e->ikey = ikey;
  e->klen = ikey_mode ? 0 : klen;
  e->value = value;
  if (!ikey_mode) {
    if (klen) memcpy(e->key, key, klen);
    e->key[klen] = 0;
  }
  size_t j = h & (m->nbuckets - 1);
  e->next = m->buckets[j];
  m->buckets[j] = e;
  m->count++;
  return 0;
}

static void *del(core_map *m, core_map_entry **pp) {
  if (!pp) return NULL;
  core_map_entry *e = *pp;
  void *v = e->value;
  *pp = e->next;
  free(e);
  m->count--;
  return v;
}

void *core_map_get(const core_map *m, const void *key, size_t klen) {
  core_map_entry **pp = find(m, core_hash_bytes(CORE_HASH_SEED, key, klen), key, klen, 0, 0);
  return pp ? (*pp)->value : NULL;
}
int core_map_put(core_map *m, const void *key, size_t klen, void *value) {
  return put(m, core_hash_bytes(CORE_HASH_SEED, key, klen), key, klen, 0, 0, value);
}
void *core_map_del(core_map *m, const void *key, size_t klen) {
  return del(m, find(m, core_hash_bytes(CORE_HASH_SEED, key, klen), key, klen, 0, 0));
}
void *core_map_iget(const core_map *m, int64_t key) {
  core_map_entry **pp = find(m, hash_int(key), NULL, 0, 1, key);
  return pp ? (*pp)->value : NULL;
}
int core_map_iput(core_map *m, int64_t key, void *value) {
  return put(m, hash_int(key), NULL, 0, key, 1, value);
}
void *core_map_idel(core_map *m, int64_t key) { return del(m, find(m, hash_int(key), NULL, 0, 1, key)); }

void core_map_each(const core_map *m, void (*fn)(void *ctx, core_map_entry *e), void *ctx) {
  for (size_t i = 0; i < m->nbuckets; i++)
    for (core_map_entry *e = m->buckets[i]; e; e = e->next) fn(ctx, e);
}
