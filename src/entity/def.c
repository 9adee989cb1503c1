/* Entity definitions and RPC groups (built by the user before registration). */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"

#define RPC_FLAGS_ALL \
  (CRUSTER_RPC_PERSISTED | CRUSTER_RPC_PROTECTED | CRUSTER_RPC_PRIVATE | CRUSTER_RPC_TRANSACTIONAL)

void em_rpc_list_free(em_rpc_list *l) {
  for (size_t i = 0; i < l->n; i++) {
    free(l->v[i].name);
    free(l->v[i].group);
  }
  free(l->v);
  memset(l, 0, sizeof(*l));
}

const em_rpc *em_rpc_list_find(const em_rpc_list *l, const char *name) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->v[i].name, name) == 0) return &l->v[i];
  return NULL;
}

int em_rpc_list_add(em_rpc_list *l, const char *name, const char *group, unsigned flags,
                    cruster_rpc_fn fn, void *user) {
  if (flags & CRUSTER_RPC_TRANSACTIONAL) flags |= CRUSTER_RPC_PERSISTED; /* implied */
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 8;
    em_rpc *v = realloc(l->v, cap * sizeof(*v));
    if (!v) return -1;
    l->v = v;
    l->cap = cap;
  }
  em_rpc *r = &l->v[l->n];
  r->name = core_strdup(name);
  r->group = group ? core_strdup(group) : NULL;
  if (!r->name || (group && !r->group)) {
    free(r->name);
    free(r->group);
    return -1;
  }
  r->flags = flags;
  r->fn = fn;
  r->user = user;
  l->n++;
  return 0;
}

static cruster_status check_rpc(const char *method, unsigned flags, cruster_rpc_fn fn,
                                cruster_error **err) {
  cruster_status st = core_check_name("method name", method, err);
  if (st != CRUSTER_OK) return st;
  if (flags & ~(unsigned)RPC_FLAGS_ALL)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "unknown RPC flags 0x%x for method '%s'",
                          flags & ~(unsigned)RPC_FLAGS_ALL, method);
  if ((flags & CRUSTER_RPC_PROTECTED) && (flags & CRUSTER_RPC_PRIVATE))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "method '%s' cannot be both protected and private", method);
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "method '%s' has no handler", method);
  return CRUSTER_OK;
}

cruster_status cruster_entity_def_new(const char *name, cruster_entity_def **out, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  *out = NULL;
  cruster_status st = core_check_name("entity type", name, err);
  if (st != CRUSTER_OK) return st;
  cruster_entity_def *d = calloc(1, sizeof(*d));
  if (!d || !(d->name = core_strdup(name)) || !(d->shard_group = core_strdup("default"))) {
    cruster_entity_def_free(d);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  d->max_idle_ms = d->mailbox = d->concurrency = -1;
  *out = d;
  return CRUSTER_OK;
}

void cruster_entity_def_free(cruster_entity_def *d) {
  if (!d) return;
  free(d->name);
  free(d->shard_group);
  em_rpc_list_free(&d->rpcs);
  free(d);
}

cruster_status cruster_entity_def_set_shard_group(cruster_entity_def *d, const char *group,
                                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "def must not be NULL");
  cruster_status st = core_check_name("shard group", group, err);
  if (st != CRUSTER_OK) return st;
  char *g = core_strdup(group);
  if (!g) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  free(d->shard_group);
  d->shard_group = g;
  return CRUSTER_OK;
}

cruster_status cruster_entity_def_set_max_idle_time(cruster_entity_def *d, int64_t ms,
                                                    cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "def must not be NULL");
  if (ms < 1 || ms > CORE_DURATION_MAX_MS)
    return core_error_set(
        err, CRUSTER_E_INVALID_ARGUMENT,
        "max idle time must be from 1 to %lld ms (as entity_max_idle_time), got %lld",
        (long long)CORE_DURATION_MAX_MS, (long long)ms);
  d->max_idle_ms = ms;
  return CRUSTER_OK;
}

cruster_status cruster_entity_def_set_mailbox_capacity(cruster_entity_def *d, int64_t capacity,
                                                       cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "def must not be NULL");
  if (capacity < 1)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "mailbox capacity must be >= 1, got %lld",
                          (long long)capacity);
  d->mailbox = capacity;
  return CRUSTER_OK;
}

cruster_status cruster_entity_def_set_concurrency(cruster_entity_def *d, int64_t n,
                                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "def must not be NULL");
  if (n < 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "concurrency must be >= 0 (0 = unlimited), got %lld", (long long)n);
  d->concurrency = n;
  return CRUSTER_OK;
}

cruster_status cruster_entity_def_add_rpc(cruster_entity_def *d, const char *method, unsigned flags,
                                          cruster_rpc_fn fn, void *user, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "def must not be NULL");
  cruster_status st = check_rpc(method, flags, fn, err);
  if (st != CRUSTER_OK) return st;
  if (em_rpc_list_find(&d->rpcs, method))
    return core_error_set(err, CRUSTER_E_ALREADY_EXISTS, "entity type '%s' already has a method '%s'",
                          d->name, method);
  if (em_rpc_list_add(&d->rpcs, method, NULL, flags, fn, user) != 0)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  return CRUSTER_OK;
}

cruster_status cruster_rpc_group_new(const char *name, cruster_rpc_group **out, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  *out = NULL;
  cruster_status st = core_check_name("RPC group name", name, err);
  if (st != CRUSTER_OK) return st;
  cruster_rpc_group *g = calloc(1, sizeof(*g));
  if (!g || !(g->name = core_strdup(name))) {
    free(g);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  *out = g;
  return CRUSTER_OK;
}

void cruster_rpc_group_free(cruster_rpc_group *g) {
  if (!g) return;
  free(g->name);
  em_rpc_list_free(&g->rpcs);
  free(g);
}

cruster_status cruster_rpc_group_add_rpc(cruster_rpc_group *g, const char *method, unsigned flags,
                                         cruster_rpc_fn fn, void *user, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!g) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "group must not be NULL");
  cruster_status st = check_rpc(method, flags, fn, err);
  if (st != CRUSTER_OK) return st;
  if (em_rpc_list_find(&g->rpcs, method))
    return core_error_set(err, CRUSTER_E_ALREADY_EXISTS, "RPC group '%s' already has a method '%s'",
                          g->name, method);
  if (em_rpc_list_add(&g->rpcs, method, g->name, flags, fn, user) != 0)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  return CRUSTER_OK;
}

cruster_status cruster_entity_def_add_group(cruster_entity_def *d, const cruster_rpc_group *g,
                                            cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d || !g) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "def and group must not be NULL");
  for (size_t i = 0; i < g->rpcs.n; i++) {
    const em_rpc *have = em_rpc_list_find(&d->rpcs, g->rpcs.v[i].name);
    if (have) {
      if (have->group)
        return core_error_set(err, CRUSTER_E_ALREADY_EXISTS,
                              "method '%s' of RPC group '%s' clashes with the same method of RPC group '%s' in entity type '%s'",
                              have->name, g->name, have->group, d->name);
      return core_error_set(err, CRUSTER_E_ALREADY_EXISTS,
                            "method '%s' of RPC group '%s' clashes with entity type '%s''s own method",
                            have->name, g->name, d->name);
    }
  }
  size_t before = d->rpcs.n;
  for (size_t i = 0; i < g->rpcs.n; i++) {
    const em_rpc *r = &g->rpcs.v[i];
    if (em_rpc_list_add(&d->rpcs, r->name, g->name, r->flags, r->fn, r->user) != 0) {
      while (d->rpcs.n > before) {
        d->rpcs.n--;
        free(d->rpcs.v[d->rpcs.n].name);
        free(d->rpcs.v[d->rpcs.n].group);
      }
      return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
    }
  }
  return CRUSTER_OK;
}
