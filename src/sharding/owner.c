/* The shards this runner owns: one bit per shard of each configured group,
 * and the listeners told of every change (singletons, the storage poll,
 * metrics). Single-node mode owns every shard from the start to the stop;
 * in cluster mode the shard locks move the bits. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include "sharding/sharding_internal.h"

static int group_index(const sh_sharding *sh, const char *group) {
  if (!group) return -1;
  for (size_t i = 0; i < sh->cfg->n_shard_groups; i++)
    if (strcmp(sh->cfg->shard_groups[i], group) == 0) return (int)i;
  return -1;
}

/* The bits are made on first use (cluster mode): single-node mode owns
 * everything through `all_owned`, in O(1) whatever shards_per_group is. */
static int bits_make(sh_sharding *sh) {
  if (sh->owned_bits) return 0;
  size_t groups = sh->cfg->n_shard_groups;
  size_t per = (size_t)sh->cfg->shards_per_group;
  size_t words = (per + 63) / 64;
  if (groups == 0 || words == 0 || words > SIZE_MAX / sizeof(uint64_t) / groups) return -1;
  sh->owned_bits = calloc(groups * words, sizeof(uint64_t));
  if (!sh->owned_bits) return -1;
  sh->owned_words = words;
  return 0;
}

int sh_owner_init(sh_sharding *sh) {
  sh->owned_count = 0;
  sh->all_owned = 0;
  return 0;
}

void sh_owner_free(sh_sharding *sh) {
  free(sh->owned_bits);
  sh->owned_bits = NULL;
  free(sh->own_listeners);
  sh->own_listeners = NULL;
  sh->n_own_listeners = 0;
}

int sh_owns(const sh_sharding *sh, const char *group, int32_t shard) {
  int g = group_index(sh, group);
  if (g < 0 || shard < 0 || (int64_t)shard >= sh->cfg->shards_per_group) return 0;
  if (sh->all_owned) return 1;
  if (!sh->owned_bits) return 0;
  const uint64_t *w = sh->owned_bits + (size_t)g * sh->owned_words;
  return (int)((w[(size_t)shard / 64] >> ((size_t)shard % 64)) & 1u);
}

int sh_own_listen(sh_sharding *sh, sh_own_fn fn, void *ud) {
  if (!fn) return -1;
  sh_own_listener *v = realloc(sh->own_listeners, (sh->n_own_listeners + 1) * sizeof(*v));
  if (!v) return -1;
  v[sh->n_own_listeners].fn = fn;
  v[sh->n_own_listeners].ud = ud;
  sh->own_listeners = v;
  sh->n_own_listeners++;
  return 0;
}

int sh_own_set(sh_sharding *sh, const char *group, int32_t shard, int owned) {
  int g = group_index(sh, group);
  if (g < 0 || shard < 0 || (int64_t)shard >= sh->cfg->shards_per_group) return -1;
  if (sh->all_owned) {
    if (owned) return 0;
    /* One shard of "all" let go (a test hook, or cluster mode some day):
     * the bits take over, every shard set. */
    if (bits_make(sh) != 0) return -1;
    size_t per = (size_t)sh->cfg->shards_per_group;
    for (size_t gi = 0; gi < sh->cfg->n_shard_groups; gi++)
      for (size_t n = 0; n < per; n++)
        sh->owned_bits[gi * sh->owned_words + n / 64] |= (uint64_t)1 << (n % 64);
    sh->all_owned = 0;
  } else if (bits_make(sh) != 0) {
    return -1;
  }
  uint64_t *w = sh->owned_bits + (size_t)g * sh->owned_words + (size_t)shard / 64;
  uint64_t bit = (uint64_t)1 << ((size_t)shard % 64);
  int was = (*w & bit) != 0;
  if (was == (owned != 0)) return 0;
  if (owned) {
    *w |= bit;
    sh->owned_count++;
  } else {
    *w &= ~bit;
    sh->owned_count--;
  }
  /* A listener may add listeners: read the count each time round. */
  for (size_t i = 0; i < sh->n_own_listeners; i++)
    sh->own_listeners[i].fn(sh->own_listeners[i].ud, sh->cfg->shard_groups[g], shard, owned != 0);
  return 1;
}

void sh_own_all(sh_sharding *sh, int owned) {
  if ((sh->all_owned != 0) == (owned != 0) && !(owned == 0 && sh->owned_count)) return;
  sh->all_owned = owned != 0;
  if (sh->owned_bits) {
    size_t words = sh->owned_words * sh->cfg->n_shard_groups;
    memset(sh->owned_bits, 0, words * sizeof(uint64_t));
  }
  sh->owned_count = owned ? sh->cfg->n_shard_groups * (size_t)sh->cfg->shards_per_group : 0;
  /* One call per group, shard -1: every shard of the group. */
  for (size_t g = 0; g < sh->cfg->n_shard_groups; g++)
    for (size_t i = 0; i < sh->n_own_listeners; i++)
      sh->own_listeners[i].fn(sh->own_listeners[i].ud, sh->cfg->shard_groups[g], -1, owned != 0);
}

size_t sh_owned_count(const sh_sharding *sh) { return sh->owned_count; }
