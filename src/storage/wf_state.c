/* Workflow storage values shared by the backends. */
#include <stdlib.h>
#include <string.h>

#include "storage/wf_storage.h"

void st_jentry_clear(st_jentry *e) {
  if (!e) return;
  free(e->name);
  free(e->value);
  free(e->message);
  memset(e, 0, sizeof(*e));
}

void st_wf_state_free(st_wf_state *s) {
  if (!s) return;
  for (size_t i = 0; i < s->n; i++) st_jentry_clear(&s->entries[i]);
  for (size_t i = 0; i < s->nd; i++) {
    free(s->deferreds[i].name);
    free(s->deferreds[i].value);
    free(s->deferreds[i].message);
  }
  free(s->entries);
  free(s->deferreds);
  memset(s, 0, sizeof(*s));
}

void st_cron_slots_free(st_cron_slot *v, size_t n) {
  if (!v) return;
  for (size_t i = 0; i < n; i++) free(v[i].error);
  free(v);
}
