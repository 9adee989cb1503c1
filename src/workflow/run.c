/* One run of execute: the durable calls replay the journal loaded at the
 * start of the run, and what is new is journaled. Entries that nothing
 * durable depends on yet (a time read, a sleep's due time, an await, a
 * final activity failure) wait in `pending` and are written with the next
 * write: an activity's transaction, or the flush before a park. So a crash
 * can lose only entries whose calls a replay may make again. An activity's
 * own transaction (PostgreSQL) is held open after its SQL until that next
 * write (cruster_wf.held), so its COMMIT shares a round trip with the next
 * activity's BEGIN or with the execution's answer. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/error.h"
#include <cruster/pg.h>

#include "core/config_internal.h"
#include "core/util.h"
#include "workflow/workflow_internal.h"

struct cruster_activity {
  const wf_activity *a;
  cruster_wf *wf;
  const void *input;
  size_t len;
  int32_t attempt;
  void *pg; /* the open transaction's connection, or NULL */
  int answered;
  int status;
  void *reply;
  size_t reply_len;
  char *message;
};

static const char *kind_name(int32_t k) {
  switch (k) {
    case ST_J_ACTIVITY: return "activity";
    case ST_J_SLEEP: return "sleep";
    case ST_J_AWAIT: return "await";
    case ST_J_NOW: return "now";
    case ST_J_RANDOM: return "random";
    case ST_J_PATCH: return "patched";
    case ST_J_CALL: return "call";
    case ST_J_CHILD: return "child workflow";
    default: return "unknown";
  }
}

static void block(const wf_host *h, int enter);

void wf_run_init(cruster_wf *wf, const wf_host *host, const cruster_workflow_def *def,
                 const char *exec_id, int64_t request_id, const void *input, size_t len,
                 st_wf_state *st) {
  memset(wf, 0, sizeof(*wf));
  wf->host = host;
  wf->def = def;
  wf->exec_id = exec_id;
  wf->request_id = request_id;
  wf->input = input;
  wf->len = len;
  wf->st = *st;
  memset(st, 0, sizeof(*st));
  wf->wake_at = INT64_MAX;
  atomic_init(&wf->cancel_flag, 0);
}

void wf_run_done(cruster_wf *wf) {
  if (wf->held) { /* not written: as if the activity never ran */
    block(wf->host, 1);
    wf->host->ops->rollback(wf->host->impl, wf->held);
    block(wf->host, 0);
    wf->held = NULL;
  }
  st_wf_state_free(&wf->st);
  for (size_t i = 0; i < wf->npending; i++) st_jentry_clear(&wf->pending[i]);
  free(wf->pending);
  free(wf->stop_msg);
  free(wf->reply);
  free(wf->message);
  wf->pending = NULL;
  wf->npending = 0;
  wf->stop_msg = wf->reply = wf->message = NULL;
}

/* Stops the run with `code` (the first stop wins) and reports it. */
int wf_stop(cruster_wf *wf, int code, cruster_error **err, const char *fmt, ...) {
  if (!wf->stop) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    wf->stop = code;
    wf->stop_msg = core_strdup(buf);
  }
  return core_error_set(err, wf->stop, "%s", wf->stop_msg ? wf->stop_msg : "workflow stopped");
}

int wf_suspend(cruster_wf *wf, int64_t until, cruster_error **err) {
  if (until < wf->wake_at) wf->wake_at = until;
  return wf_stop(wf, CRUSTER_E_SUSPENDED, err, "the execution waits (suspended)");
}

/* Starts durable call number wf->seq of `kind`/`name`: CRUSTER_OK with *e
 * the journaled entry (NULL: a new call), or a stop. Version markers the
 * journal holds where the code asks for none are stepped over, so a marker
 * can be removed once no execution needs the old path. */
int wf_begin_call(cruster_wf *wf, int32_t kind, const char *name, const st_jentry **e,
                  cruster_error **err) {
  *e = NULL;
  if (wf->stop) return core_error_set(err, wf->stop, "%s", wf->stop_msg ? wf->stop_msg : "stopped");
  if (wf->st.cancelled || atomic_load(&wf->cancel_flag))
    return wf_stop(wf, CRUSTER_E_CANCELLED, err, "the execution was cancelled");
  while ((size_t)wf->seq < wf->st.n && wf->st.entries[wf->seq].kind == ST_J_PATCH &&
         kind != ST_J_PATCH)
    wf->seq++;
  if ((size_t)wf->seq < wf->st.n) {
    const st_jentry *j = &wf->st.entries[wf->seq];
    if (j->kind != kind || strcmp(j->name, name) != 0)
      return wf_stop(wf, CRUSTER_E_DETERMINISM, err,
                  "durable call #%ld of execution %s: the journal has %s \"%s\", execute made "
                  "%s \"%s\" (the code changed under a running execution, or it is not "
                  "deterministic)",
                  (long)wf->seq, wf->exec_id, kind_name(j->kind), j->name, kind_name(kind), name);
    *e = j;
  }
  wf->seq++;
  return CRUSTER_OK;
}

/* Queues a new entry for call number wf->seq - 1. Takes value/message. */
int wf_add_pending(cruster_wf *wf, int32_t kind, const char *name, int32_t status,
                   int32_t attempts, int64_t at, void *value, size_t len, char *message,
                   cruster_error **err) {
  if (wf->npending == wf->cappending) {
    size_t cap = wf->cappending ? wf->cappending * 2 : 4;
    st_jentry *p = realloc(wf->pending, cap * sizeof(*p));
    if (!p) goto oom;
    wf->pending = p;
    wf->cappending = cap;
  }
  char *nm = core_strdup(name);
  if (!nm) goto oom;
  st_jentry *e = &wf->pending[wf->npending++];
  e->seq = wf->seq - 1;
  e->kind = kind;
  e->name = nm;
  e->status = status;
  e->attempts = attempts;
  e->at = at;
  e->value = value;
  e->len = len;
  e->message = message;
  return CRUSTER_OK;
oom:
  free(value);
  free(message);
  return wf_stop(wf, CRUSTER_E_NOMEM, err, "out of memory");
}

static void clear_pending(cruster_wf *wf) {
  for (size_t i = 0; i < wf->npending; i++) st_jentry_clear(&wf->pending[i]);
  wf->npending = 0;
}

/* Calls into storage count as blocking for the worker pool. */
static void block(const wf_host *h, int enter) {
  if (enter && h->block_enter) h->block_enter(h->block_ud);
  if (!enter && h->block_leave) h->block_leave(h->block_ud);
}

int wf_run_flush(cruster_wf *wf, cruster_error **err) {
  st_tx *tx = wf->held;
  wf->held = NULL;
  if (!wf->npending && !tx) return CRUSTER_OK;
  block(wf->host, 1);
  int rc = wf->host->ops->commit(wf->host->impl, tx, wf->request_id, wf->pending, wf->npending,
                                 err);
  block(wf->host, 0);
  /* A held transaction that failed took its activity's result with it:
   * nothing of it may be written later on its own. */
  if (rc == CRUSTER_OK || tx) clear_pending(wf);
  return rc;
}

/* Copies a journaled value out (*out may be NULL: then nothing). */
int wf_give_value(const void *v, size_t len, void **out, size_t *out_len, cruster_error **err) {
  if (out_len) *out_len = len;
  if (!out) return CRUSTER_OK;
  *out = NULL;
  char *p = malloc(len + 1);
  if (!p) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  if (len) memcpy(p, v, len);
  p[len] = 0;
  *out = p;
  return CRUSTER_OK;
}

/* ---- accessors ---------------------------------------------------------- */

const void *cruster_wf_input(const cruster_wf *wf, size_t *len) {
  if (len) *len = wf ? wf->len : 0;
  return wf ? wf->input : NULL;
}
const char *cruster_wf_execution_id(const cruster_wf *wf) { return wf ? wf->exec_id : NULL; }
const char *cruster_wf_workflow(const cruster_wf *wf) { return wf ? wf->def->name : NULL; }
int cruster_wf_stopped(const cruster_wf *wf) { return wf && wf->stop != 0; }

/* ---- answers ------------------------------------------------------------ */

static int check_code(int code) {
  return code != CRUSTER_OK && (core_status_known(code) || code <= CRUSTER_E_APPLICATION);
}

/* An answer (execute's or an activity's) into its slots: a copy of the
 * data, or the code (checked) and a copy of the message. */
typedef struct answer_slots {
  int *answered, *status;
  void **reply;
  size_t *reply_len;
  char **message;
} answer_slots;

static cruster_status set_reply(answer_slots a, int64_t max_payload, const void *data, size_t len) {
  if (core_size_exceeds(len, max_payload)) return CRUSTER_E_PAYLOAD_TOO_LARGE;
  void *p = core_memdup(data, len);
  if (!p) return CRUSTER_E_NOMEM;
  *a.reply = p;
  *a.reply_len = len;
  *a.status = CRUSTER_OK;
  *a.answered = 1;
  return CRUSTER_OK;
}

static cruster_status set_failure(answer_slots a, int code, const char *message) {
  *a.message = core_strdup(message ? message : cruster_status_message(code));
  if (!*a.message) return CRUSTER_E_NOMEM;
  *a.status = code;
  *a.answered = 1;
  return CRUSTER_OK;
}

#define WF_SLOTS(x) ((answer_slots){&(x)->answered, &(x)->status, &(x)->reply, &(x)->reply_len, &(x)->message})

cruster_status cruster_wf_complete(cruster_wf *wf, const void *data, size_t len) {
  if (!wf || (len && !data)) return CRUSTER_E_INVALID_ARGUMENT;
  if (wf->answered || wf->stop) return CRUSTER_E_STATE;
  return set_reply(WF_SLOTS(wf), wf->host->max_payload, data, len);
}

cruster_status cruster_wf_fail(cruster_wf *wf, int code, const char *message) {
  if (!wf || !check_code(code)) return CRUSTER_E_INVALID_ARGUMENT;
  if (wf->answered || wf->stop) return CRUSTER_E_STATE;
  return set_failure(WF_SLOTS(wf), code, message);
}

/* ---- durable calls ------------------------------------------------------ */

cruster_status cruster_wf_sleep(cruster_wf *wf, int64_t ms, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!wf) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf is NULL");
  if (ms < 0 || ms > CORE_DURATION_MAX_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "sleep of %lld ms is not in 0..%lld",
                          (long long)ms, (long long)CORE_DURATION_MAX_MS);
  const st_jentry *e;
  int rc = wf_begin_call(wf, ST_J_SLEEP, "", &e, err);
  if (rc != CRUSTER_OK) return rc;
  int64_t now = core_now_ms(), due;
  if (e) {
    due = e->at;
  } else {
    /* `now` is the clock truncated to the millisecond: one more so the
     * sleep lasts at least `ms` of real time. */
    due = ms > INT64_MAX - 1 - now ? INT64_MAX - 1 : now + ms + 1;
    rc = wf_add_pending(wf, ST_J_SLEEP, "", CRUSTER_OK, 0, due, NULL, 0, NULL, err);
    if (rc != CRUSTER_OK) return rc;
  }
  if (now >= due) return CRUSTER_OK;
  return wf_suspend(wf, due, err);
}

cruster_status cruster_wf_await(cruster_wf *wf, const char *name, void **out, size_t *out_len,
                                cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!wf) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf is NULL");
  cruster_status rc = core_check_name("deferred name", name, err);
  if (rc != CRUSTER_OK) return rc;
  const st_jentry *e;
  rc = wf_begin_call(wf, ST_J_AWAIT, name, &e, err);
  if (rc != CRUSTER_OK) return rc;
  if (!e) {
    rc = wf_add_pending(wf, ST_J_AWAIT, name, CRUSTER_OK, 0, 0, NULL, 0, NULL, err);
    if (rc != CRUSTER_OK) return rc;
  }
  for (size_t i = 0; i < wf->st.nd; i++) {
    const st_deferred *d = &wf->st.deferreds[i];
    if (strcmp(d->name, name) != 0) continue;
    if (d->status != CRUSTER_OK)
      return core_error_set(err, d->status, "%s", d->message ? d->message : "deferred rejected");
    return wf_give_value(d->value, d->len, out, out_len, err);
  }
  return wf_suspend(wf, INT64_MAX, err);
}

cruster_status cruster_wf_now(cruster_wf *wf, int64_t *unix_ms, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!wf || !unix_ms) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf or out is NULL");
  const st_jentry *e;
  int rc = wf_begin_call(wf, ST_J_NOW, "", &e, err);
  if (rc != CRUSTER_OK) return rc;
  if (e) {
    *unix_ms = e->at;
    return CRUSTER_OK;
  }
  int64_t now = core_now_ms();
  rc = wf_add_pending(wf, ST_J_NOW, "", CRUSTER_OK, 0, now, NULL, 0, NULL, err);
  if (rc == CRUSTER_OK) *unix_ms = now;
  return rc;
}

cruster_status cruster_wf_random(cruster_wf *wf, void *out, size_t len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!wf || !out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf or out is NULL");
  if (len == 0 || len > WF_RANDOM_MAX)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "random length %zu is not in 1..%d", len,
                          WF_RANDOM_MAX);
  const st_jentry *e;
  int rc = wf_begin_call(wf, ST_J_RANDOM, "", &e, err);
  if (rc != CRUSTER_OK) return rc;
  if (e) {
    if (e->len != len)
      return wf_stop(wf, CRUSTER_E_DETERMINISM, err,
                  "durable call #%ld of execution %s: the journal has %zu random bytes, execute "
                  "asked for %zu",
                  (long)(wf->seq - 1), wf->exec_id, e->len, len);
    memcpy(out, e->value, len);
    return CRUSTER_OK;
  }
  void *v = malloc(len);
  if (!v) return wf_stop(wf, CRUSTER_E_NOMEM, err, "out of memory");
  if (uv_random(NULL, NULL, v, len, 0, NULL) != 0) {
    free(v);
    return wf_stop(wf, CRUSTER_E_INTERNAL, err, "no random bytes from the system");
  }
  memcpy(out, v, len);
  return wf_add_pending(wf, ST_J_RANDOM, "", CRUSTER_OK, 0, 0, v, len, NULL, err);
}

cruster_status cruster_wf_patched(cruster_wf *wf, const char *name, int *yes,
                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!wf || !yes) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf or yes is NULL");
  *yes = 0;
  cruster_status rc = core_check_name("patch name", name, err);
  if (rc != CRUSTER_OK) return rc;
  if (wf->stop) return core_error_set(err, wf->stop, "%s", wf->stop_msg ? wf->stop_msg : "stopped");
  if ((size_t)wf->seq < wf->st.n) {
    /* Journaled past here: by this code only if its marker is here. */
    const st_jentry *j = &wf->st.entries[wf->seq];
    if (j->kind == ST_J_PATCH && strcmp(j->name, name) == 0) {
      wf->seq++;
      *yes = 1;
    }
    return CRUSTER_OK;
  }
  const st_jentry *e;
  rc = wf_begin_call(wf, ST_J_PATCH, name, &e, err);
  if (rc != CRUSTER_OK) return rc;
  rc = wf_add_pending(wf, ST_J_PATCH, name, CRUSTER_OK, 0, 0, NULL, 0, NULL, err);
  if (rc == CRUSTER_OK) *yes = 1;
  return rc;
}

/* ---- activities --------------------------------------------------------- */

static int64_t backoff_ms(const wf_activity *a, int32_t attempt) {
  if (a->backoff == CRUSTER_BACKOFF_CONSTANT) return a->base_ms;
  int64_t d = a->base_ms;
  for (int32_t i = 1; i < attempt && d < a->max_ms; i++) d *= 2;
  return d < a->max_ms ? d : a->max_ms;
}

const void *cruster_activity_input(const cruster_activity *act, size_t *len) {
  if (len) *len = act ? act->len : 0;
  return act ? act->input : NULL;
}
const char *cruster_activity_name(const cruster_activity *act) { return act ? act->a->name : NULL; }
const char *cruster_activity_execution_id(const cruster_activity *act) {
  return act ? act->wf->exec_id : NULL;
}
int32_t cruster_activity_attempt(const cruster_activity *act) { return act ? act->attempt : 0; }
struct pg_conn *cruster_activity_pg(cruster_activity *act) {
  return act ? (struct pg_conn *)act->pg : NULL;
}

cruster_status cruster_activity_reply(cruster_activity *act, const void *data, size_t len) {
  if (!act || (len && !data)) return CRUSTER_E_INVALID_ARGUMENT;
  if (act->answered) return CRUSTER_E_STATE;
  return set_reply(WF_SLOTS(act), act->wf->host->max_payload, data, len);
}

cruster_status cruster_activity_fail(cruster_activity *act, int code, const char *message) {
  if (!act || !check_code(code)) return CRUSTER_E_INVALID_ARGUMENT;
  if (act->answered) return CRUSTER_E_STATE;
  return set_failure(WF_SLOTS(act), code, message);
}

/* Runs attempt `attempt` of `a`; on success its entry (with every pending
 * one) is committed in the activity's transaction -- held open until the
 * run's next write when there is one (PostgreSQL), at once otherwise. */
static int run_attempt(cruster_wf *wf, const wf_activity *a, const void *input, size_t len,
                       int32_t attempt, void **out, size_t *out_len, cruster_error **err) {
  const wf_host *h = wf->host;
  st_tx *tx = NULL;
  cruster_error *serr = NULL;
  int rc;
  if (wf->held && h->ops->commit_reopen) {
    /* The previous activity's COMMIT and this one's BEGIN, one round trip. */
    tx = wf->held;
    wf->held = NULL;
    block(h, 1);
    rc = h->ops->commit_reopen(h->impl, tx, wf->request_id, wf->pending, wf->npending, &serr);
    block(h, 0);
    clear_pending(wf); /* written, or gone with the failed transaction */
    if (rc != CRUSTER_OK) {
      rc = wf_stop(wf, CRUSTER_E_PERSISTENCE, err, "the activity before \"%s\" could not commit: %s",
                   a->name, serr ? serr->message : "commit failed");
      cruster_error_free(serr);
      return rc;
    }
  } else {
    if (wf->held && wf_run_flush(wf, &serr) != CRUSTER_OK) {
      rc = wf_stop(wf, CRUSTER_E_PERSISTENCE, err, "the activity before \"%s\" could not commit: %s",
                   a->name, serr ? serr->message : "commit failed");
      cruster_error_free(serr);
      return rc;
    }
    block(h, 1);
    rc = h->ops->begin(h->impl, &tx, &serr);
    block(h, 0);
    if (rc != CRUSTER_OK) {
      rc = wf_stop(wf, CRUSTER_E_PERSISTENCE, err, "activity \"%s\": %s", a->name,
                   serr ? serr->message : "cannot begin a transaction");
      cruster_error_free(serr);
      return rc;
    }
  }
  cruster_activity act = {a, wf, input, len, attempt, h->ops->tx_handle(tx), 0, 0, NULL, 0, NULL};
  a->fn(a->user, &act);
  if (!act.answered) {
    act.status = CRUSTER_E_HANDLER;
    act.message = core_strdup("the activity returned without an answer");
  }
  if (act.status == CRUSTER_OK) {
    /* The entry goes with the pending ones, in the activity's transaction. */
    size_t n = wf->npending;
    int frc = wf_add_pending(wf, ST_J_ACTIVITY, a->name, CRUSTER_OK, attempt, 0, act.reply,
                          act.reply_len, NULL, err);
    act.reply = NULL;
    if (frc != CRUSTER_OK) {
      block(h, 1);
      h->ops->rollback(h->impl, tx);
      block(h, 0);
      return frc;
    }
    if (tx && h->ops->try_hold && h->ops->try_hold(h->impl, tx)) {
      /* Committed with the next write (see cruster_wf.held). */
      wf->held = tx;
      return wf_give_value(wf->pending[n].value, wf->pending[n].len, out, out_len, err);
    }
    block(h, 1);
    rc = h->ops->commit(h->impl, tx, wf->request_id, wf->pending, wf->npending, &serr);
    block(h, 0);
    if (rc == CRUSTER_OK) {
      const st_jentry *mine = &wf->pending[n];
      rc = wf_give_value(mine->value, mine->len, out, out_len, err);
      clear_pending(wf);
      return rc;
    }
    /* Not committed: the attempt failed (its SQL is gone with it). */
    st_jentry_clear(&wf->pending[--wf->npending]);
    act.status = CRUSTER_E_PERSISTENCE;
    char buf[768];
    snprintf(buf, sizeof(buf), "activity \"%s\" could not commit: %s", a->name,
             serr ? serr->message : "commit failed");
    cruster_error_free(serr);
    serr = NULL;
    act.message = core_strdup(buf);
  } else {
    block(h, 1);
    h->ops->rollback(h->impl, tx);
    block(h, 0);
  }
  free(act.reply);
  /* A failed attempt: wait and retry, or give up (journaled either way). */
  int code = act.status;
  char *msg = act.message;
  if (attempt <= a->retries) {
    int64_t now = core_now_ms(), wait = backoff_ms(a, attempt);
    int64_t at = wait > INT64_MAX - now ? INT64_MAX - 1 : now + wait;
    core_log(h->lg, CRUSTER_LOG_INFO, "workflow",
             "execution %s: activity \"%s\" attempt %ld failed (%s); retry in %lld ms",
             wf->exec_id, a->name, (long)attempt, msg ? msg : "", (long long)wait);
    rc = wf_add_pending(wf, ST_J_ACTIVITY, a->name, code, attempt, at, NULL, 0, msg, err);
    if (rc != CRUSTER_OK) return rc;
    return wf_suspend(wf, at, err);
  }
  rc = wf_add_pending(wf, ST_J_ACTIVITY, a->name, code, attempt, 0, NULL, 0, msg, err);
  if (rc != CRUSTER_OK) return rc;
  return core_error_set(err, code, "%s", wf->pending[wf->npending - 1].message
                                             ? wf->pending[wf->npending - 1].message
                                             : cruster_status_message(code));
}

cruster_status cruster_wf_activity(cruster_wf *wf, const char *name, const void *input,
                                   size_t len, void **out, size_t *out_len,
                                   cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!wf || !name) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf or name is NULL");
  if (len && !input)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "input is NULL with length %zu", len);
  if (core_size_exceeds(len, wf->host->max_payload))
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "activity input of %zu bytes is over max_payload_size", len);
  cruster_error *ferr = NULL;
  const wf_activity *a = wf_activity_find(&wf->def->acts, name, &ferr);
  if (!a) {
    int frc = ferr ? ferr->status : CRUSTER_E_NOMEM;
    if (err) *err = ferr;
    else cruster_error_free(ferr);
    return frc;
  }
  const st_jentry *e;
  int rc = wf_begin_call(wf, ST_J_ACTIVITY, a->name, &e, err);
  if (rc != CRUSTER_OK) return rc;
  int32_t attempt = 1;
  if (e) {
    if (e->at == 0) { /* final */
      if (e->status == CRUSTER_OK) return wf_give_value(e->value, e->len, out, out_len, err);
      return core_error_set(err, e->status, "%s",
                            e->message ? e->message : cruster_status_message(e->status));
    }
    if (core_now_ms() < e->at) return wf_suspend(wf, e->at, err);
    attempt = e->attempts + 1;
  }
  return run_attempt(wf, a, input, len, attempt, out, out_len, err);
}
