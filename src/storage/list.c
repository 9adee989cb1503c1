/* Message lists (dead letters) handed to users. */
#include <stdlib.h>

#include "storage/storage_internal.h"

cruster_message_list *st_list_new(size_t cap) {
  cruster_message_list *l = calloc(1, sizeof(*l));
  if (l && cap) {
    l->v = calloc(cap, sizeof(*l->v));
    if (!l->v) {
      free(l);
      return NULL;
    }
  }
  return l;
}

int st_list_add(cruster_message_list *l, size_t *cap, core_env *env, int64_t attempts) {
  if (l->n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    st_dead *v = realloc(l->v, c * sizeof(*v));
    if (!v) {
      free(env);
      return -1;
    }
    l->v = v;
    *cap = c;
  }
  l->v[l->n].env = env;
  l->v[l->n].attempts = attempts;
  l->n++;
  return 0;
}

void cruster_message_list_free(cruster_message_list *l) {
  if (!l) return;
  for (size_t i = 0; i < l->n; i++) free(l->v[i].env);
  free(l->v);
  free(l);
}

size_t cruster_message_list_count(const cruster_message_list *l) { return l ? l->n : 0; }

#define ITEM(l, i) ((l) && (i) < (l)->n ? &(l)->v[i] : NULL)

int64_t cruster_message_list_request_id(const cruster_message_list *l, size_t i) {
  const st_dead *d = ITEM(l, i);
  return d ? d->env->request_id : 0;
}
const char *cruster_message_list_entity_type(const cruster_message_list *l, size_t i) {
  const st_dead *d = ITEM(l, i);
  return d ? d->env->type : NULL;
}
const char *cruster_message_list_entity_id(const cruster_message_list *l, size_t i) {
  const st_dead *d = ITEM(l, i);
  return d ? d->env->id : NULL;
}
const char *cruster_message_list_method(const cruster_message_list *l, size_t i) {
  const st_dead *d = ITEM(l, i);
  return d ? d->env->method : NULL;
}
const void *cruster_message_list_payload(const cruster_message_list *l, size_t i, size_t *len) {
  const st_dead *d = ITEM(l, i);
  if (len) *len = d ? d->env->len : 0;
  return d && d->env->len ? d->env->payload : NULL;
}
int64_t cruster_message_list_attempts(const cruster_message_list *l, size_t i) {
  const st_dead *d = ITEM(l, i);
  return d ? d->attempts : 0;
}
