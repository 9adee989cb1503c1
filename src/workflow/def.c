/* Workflow definitions and activity groups. */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "workflow/workflow_internal.h"

void wf_activity_list_free(wf_activity_list *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i].name);
  free(l->v);
  memset(l, 0, sizeof(*l));
}

int wf_activity_list_add(wf_activity_list *l, const char *prefix, const wf_activity *a) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 4;
    wf_activity *v = realloc(l->v, cap * sizeof(*v));
    if (!v) return -1;
    l->v = v;
    l->cap = cap;
  }
  const char *bare = a->bare ? a->bare : a->name;
  size_t lp = prefix ? strlen(prefix) + 1 : 0, lb = strlen(bare);
  char *name = malloc(lp + lb + 1);
  if (!name) return -1;
  if (prefix) {
    memcpy(name, prefix, lp - 1);
    name[lp - 1] = '/';
  }
  memcpy(name + lp, bare, lb + 1);
  wf_activity *c = &l->v[l->n++];
  *c = *a;
  c->name = name;
  c->bare = name + lp;
  return 0;
}

cruster_status wf_activity_opts_read(const cruster_activity_opts *opts, wf_activity *a,
                                     cruster_error **err) {
  a->retries = 0;
  a->backoff = CRUSTER_BACKOFF_EXPONENTIAL;
  a->base_ms = 1000;
  a->max_ms = 60000;
  if (!opts) return CRUSTER_OK;
  cruster_activity_opts o = CRUSTER_ACTIVITY_OPTS_INIT;
  cruster_status rc = core_opts_read("cruster_activity_opts", "CRUSTER_ACTIVITY_OPTS_INIT", opts,
                                     opts->size, CRUSTER_ACTIVITY_OPTS_SIZE_V1, sizeof(o), &o, err);
  if (rc != CRUSTER_OK) return rc;
  opts = &o;
  if (opts->retries < 0 || opts->retries > WF_RETRIES_MAX)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "activity options: retries %ld is not in 0..%d", (long)opts->retries,
                          WF_RETRIES_MAX);
  if (opts->backoff != CRUSTER_BACKOFF_EXPONENTIAL && opts->backoff != CRUSTER_BACKOFF_CONSTANT)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "activity options: backoff %ld is neither CRUSTER_BACKOFF_EXPONENTIAL "
                          "nor CRUSTER_BACKOFF_CONSTANT",
                          (long)opts->backoff);
  if (opts->backoff_base_ms < 0 || opts->backoff_base_ms > WF_BACKOFF_MAX_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "activity options: backoff_base_ms %lld is not in 0..%d",
                          (long long)opts->backoff_base_ms, WF_BACKOFF_MAX_MS);
  if (opts->backoff_max_ms < 0 || opts->backoff_max_ms > WF_BACKOFF_MAX_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "activity options: backoff_max_ms %lld is not in 0..%d",
                          (long long)opts->backoff_max_ms, WF_BACKOFF_MAX_MS);
  a->retries = opts->retries;
  a->backoff = opts->backoff;
  if (opts->backoff_base_ms) a->base_ms = opts->backoff_base_ms;
  if (opts->backoff_max_ms) a->max_ms = opts->backoff_max_ms;
  if (a->max_ms < a->base_ms)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "activity options: backoff_max_ms %lld is below the base %lld",
                          (long long)a->max_ms, (long long)a->base_ms);
  return CRUSTER_OK;
}

const wf_activity *wf_activity_find(const wf_activity_list *l, const char *name,
                                    cruster_error **err) {
  const wf_activity *bare = NULL;
  size_t nbare = 0;
  for (size_t i = 0; i < l->n; i++) {
    if (strcmp(l->v[i].name, name) == 0) return &l->v[i];
    if (strcmp(l->v[i].bare, name) == 0) {
      bare = &l->v[i];
      nbare++;
    }
  }
  if (nbare == 1) return bare;
  if (nbare > 1) {
    core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                   "activity \"%s\" is ambiguous: %zu included groups define it; call it as "
                   "\"<group>/%s\"",
                   name, nbare, name);
    return NULL;
  }
  core_error_set(err, CRUSTER_E_NOT_FOUND, "the workflow has no activity \"%s\"", name);
  return NULL;
}

/* A name without '/' (activities and groups: '/' joins them). */
static cruster_status check_part(const char *what, const char *s, cruster_error **err) {
  cruster_status rc = core_check_name(what, s, err);
  if (rc != CRUSTER_OK) return rc;
  if (strchr(s, '/'))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "%s \"%s\" contains '/'", what, s);
  return CRUSTER_OK;
}

cruster_status cruster_workflow_def_new(const char *name, cruster_workflow_fn fn, void *user,
                                        cruster_workflow_def **out, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out is NULL");
  *out = NULL;
  cruster_status rc = core_check_name("workflow name", name, err);
  if (rc != CRUSTER_OK) return rc;
  if (strlen(name) > CRUSTER_MAX_NAME_LEN - WF_TYPE_PREFIX_LEN)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "workflow name is %zu bytes: at most %d, as its entity type "
                          "\"" WF_TYPE_PREFIX "<name>\" is a name too",
                          strlen(name), CRUSTER_MAX_NAME_LEN - WF_TYPE_PREFIX_LEN);
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "execute function is NULL");
  cruster_workflow_def *d = calloc(1, sizeof(*d));
  if (!d || !(d->name = core_strdup(name))) {
    free(d);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  d->fn = fn;
  d->user = user;
  d->hash = 1;
  *out = d;
  return CRUSTER_OK;
}

void cruster_workflow_def_free(cruster_workflow_def *d) {
  if (!d) return;
  free(d->name);
  wf_activity_list_free(&d->acts);
  for (size_t i = 0; i < d->ngroups; i++) free(d->groups[i]);
  free(d->groups);
  free(d);
}

cruster_status cruster_workflow_def_set_key(cruster_workflow_def *d, cruster_workflow_key_fn fn,
                                            void *user, int hash, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "definition is NULL");
  if (hash != 0 && hash != 1)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "hash is %d: 1 or 0", hash);
  d->key_fn = fn;
  d->key_user = fn ? user : NULL;
  d->hash = hash;
  return CRUSTER_OK;
}

static cruster_status add_activity(wf_activity_list *l, const char *name, cruster_activity_fn fn,
                                   void *user, const cruster_activity_opts *opts,
                                   cruster_error **err) {
  cruster_status rc = check_part("activity name", name, err);
  if (rc != CRUSTER_OK) return rc;
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "activity function is NULL");
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->v[i].name, name) == 0)
      return core_error_set(err, CRUSTER_E_ALREADY_EXISTS, "activity \"%s\" is already defined",
                            name);
  wf_activity a = {0};
  rc = wf_activity_opts_read(opts, &a, err);
  if (rc != CRUSTER_OK) return rc;
  a.name = (char *)name;
  a.fn = fn;
  a.user = user;
  if (wf_activity_list_add(l, NULL, &a) != 0)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  return CRUSTER_OK;
}

cruster_status cruster_workflow_def_add_activity(cruster_workflow_def *d, const char *name,
                                                 cruster_activity_fn fn, void *user,
                                                 const cruster_activity_opts *opts,
                                                 cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "definition is NULL");
  return add_activity(&d->acts, name, fn, user, opts, err);
}

cruster_status cruster_activity_group_new(const char *name, cruster_activity_group **out,
                                          cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out is NULL");
  *out = NULL;
  cruster_status rc = check_part("activity group name", name, err);
  if (rc != CRUSTER_OK) return rc;
  cruster_activity_group *g = calloc(1, sizeof(*g));
  if (!g || !(g->name = core_strdup(name))) {
    free(g);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  *out = g;
  return CRUSTER_OK;
}

void cruster_activity_group_free(cruster_activity_group *g) {
  if (!g) return;
  free(g->name);
  wf_activity_list_free(&g->acts);
  free(g);
}

cruster_status cruster_activity_group_add_activity(cruster_activity_group *g, const char *name,
                                                   cruster_activity_fn fn, void *user,
                                                   const cruster_activity_opts *opts,
                                                   cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!g) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "group is NULL");
  return add_activity(&g->acts, name, fn, user, opts, err);
}

cruster_status cruster_workflow_def_add_group(cruster_workflow_def *d,
                                              const cruster_activity_group *g,
                                              cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!d || !g) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "definition or group is NULL");
  for (size_t i = 0; i < d->ngroups; i++)
    if (strcmp(d->groups[i], g->name) == 0)
      return core_error_set(err, CRUSTER_E_ALREADY_EXISTS, "activity group \"%s\" is already included",
                            g->name);
  char **groups = realloc(d->groups, (d->ngroups + 1) * sizeof(*groups));
  if (!groups) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  d->groups = groups;
  if (!(groups[d->ngroups] = core_strdup(g->name)))
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  size_t before = d->acts.n;
  for (size_t i = 0; i < g->acts.n; i++) {
    if (wf_activity_list_add(&d->acts, g->name, &g->acts.v[i]) != 0) {
      while (d->acts.n > before) free(d->acts.v[--d->acts.n].name);
      free(groups[d->ngroups]);
      return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
    }
  }
  d->ngroups++;
  return CRUSTER_OK;
}

cruster_workflow_def *wf_def_copy(const cruster_workflow_def *s) {
  cruster_workflow_def *d = calloc(1, sizeof(*d));
  if (!d) return NULL;
  d->name = core_strdup(s->name);
  d->fn = s->fn;
  d->user = s->user;
  d->key_fn = s->key_fn;
  d->key_user = s->key_user;
  d->hash = s->hash;
  int ok = d->name != NULL;
  for (size_t i = 0; ok && i < s->acts.n; i++) {
    wf_activity a = s->acts.v[i];
    a.bare = NULL; /* keep the full name as is */
    ok = wf_activity_list_add(&d->acts, NULL, &a) == 0;
    if (ok) d->acts.v[d->acts.n - 1].bare = d->acts.v[d->acts.n - 1].name +
                                            (s->acts.v[i].bare - s->acts.v[i].name);
  }
  if (ok && s->ngroups) {
    d->groups = calloc(s->ngroups, sizeof(*d->groups));
    ok = d->groups != NULL;
    for (size_t i = 0; ok && i < s->ngroups; i++) {
      ok = (d->groups[i] = core_strdup(s->groups[i])) != NULL;
      if (ok) d->ngroups++;
    }
  }
  if (!ok) {
    cruster_workflow_def_free(d);
    return NULL;
  }
  return d;
}
