/* ClusterCron (cruster/cron_job.h): a job is the singleton
 * "ClusterCron/<name>" whose function is the scheduler below; each slot is a
 * row of the storage's cron slots (st_wf_ops.cron_*), recorded before the
 * handler runs and finished after it. The scheduler, on a worker:
 *   1. runs again the slots recorded but never finished (a crash in the
 *      middle of their handler), oldest first;
 *   2. applies the missed-slot policy to the slots between the job's newest
 *      recorded slot and now;
 *   3. loops: next slot after the reference, a cancellable sleep until then,
 *      skip when older than skip_if_older_than, else record + run + finish.
 * Only the ownership of the singleton's shard decides where it runs, so it
 * fails over with the shard; the slot rows make a slot run once whoever
 * runs the scheduler. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cruster/cron.h>

#include "core/error.h"
#include "core/util.h"
#include "singleton/singleton_internal.h"

#define CRON_PREFIX "ClusterCron/"
#define CRON_DAY_MS 86400000
#define CRON_COMPONENT "cron"
#define CRON_RESUME_BATCH 1000

typedef struct cron_job {
  sg_registry *r;
  char *name;
  cruster_cron *cron;
  cruster_cron_job_fn fn;
  void *user;
  int from_prev;
  int64_t skip_ms;
  int32_t missed;
} cron_job;

static void job_free(void *p) {
  cron_job *j = p;
  if (!j) return;
  free(j->name);
  cruster_cron_free(j->cron);
  free(j);
}

static void log_err(const cron_job *j, const char *what, int st, cruster_error *e) {
  core_log(sg_lg(j->r), CRUSTER_LOG_WARN, CRON_COMPONENT, "cron job \"%s\": %s: %s", j->name, what,
           e ? cruster_error_message(e) : cruster_status_message(st));
  cruster_error_free(e);
}

/* Runs slot `slot_ms`: records it first (unless `resume`: it is recorded
 * and unfinished), runs the handler, finishes it. CRUSTER_OK also when the
 * slot was recorded already (someone ran or runs it); a storage failure
 * otherwise (the scheduler then returns it and is restarted with backoff). */
static int run_slot(cron_job *j, int64_t slot_ms, int resume) {
  void *impl;
  const st_wf_ops *ops = sg_wf(j->r, &impl);
  cruster_error *e = NULL;
  int st;
  if (!resume) {
    int fresh = 0;
    int32_t state = 0;
    st = ops->cron_begin(impl, j->name, slot_ms, core_now_ms(), &fresh, &state, &e);
    if (st != CRUSTER_OK) {
      log_err(j, "recording a slot failed", st, e);
      return st;
    }
    if (!fresh) {
      core_log(sg_lg(j->r), CRUSTER_LOG_DEBUG, CRON_COMPONENT,
               "cron job \"%s\": slot %" PRId64 " is recorded already (state %d): not run again",
               j->name, slot_ms, (int)state);
      return CRUSTER_OK;
    }
  }
  char id[CRUSTER_MAX_NAME_LEN + 32];
  snprintf(id, sizeof(id), "%s/%" PRId64, j->name, slot_ms);
  int rc = j->fn(j->user, slot_ms, id);
  char msg[96];
  if (rc != CRUSTER_OK) {
    snprintf(msg, sizeof(msg), "the handler returned %d", rc);
    core_log(sg_lg(j->r), CRUSTER_LOG_WARN, CRON_COMPONENT, "cron job \"%s\": slot %s failed: %s",
             j->name, id, msg);
  }
  int64_t now = core_now_ms();
  int64_t keep = sg_cfg(j->r)->storage_retention;
  int64_t purge = keep > 0 && now > keep ? now - keep : 0;
  st = ops->cron_finish(impl, j->name, slot_ms, rc == CRUSTER_OK ? ST_CRON_DONE : ST_CRON_FAILED,
                        rc == CRUSTER_OK ? NULL : msg, now, purge, &e);
  if (st != CRUSTER_OK) log_err(j, "finishing a slot failed (it runs again at the next start)", st, e);
  return st;
}

/* Step 1: the slots recorded and never finished. */
static int resume_slots(cron_job *j, cruster_singleton_ctx *ctx) {
  void *impl;
  const st_wf_ops *ops = sg_wf(j->r, &impl);
  for (;;) {
    st_cron_slot *v = NULL;
    size_t n = 0;
    cruster_error *e = NULL;
    int st = ops->cron_list(impl, j->name, CRON_RESUME_BATCH, 1, &v, &n, &e);
    if (st != CRUSTER_OK) {
      log_err(j, "reading unfinished slots failed", st, e);
      return st;
    }
    for (size_t i = 0; i < n && st == CRUSTER_OK; i++) {
      if (cruster_singleton_cancelled(ctx)) break;
      core_log(sg_lg(j->r), CRUSTER_LOG_INFO, CRON_COMPONENT,
               "cron job \"%s\": slot %" PRId64 " was interrupted: running it again", j->name,
               v[i].slot_ms);
      st = run_slot(j, v[i].slot_ms, 1);
    }
    st_cron_slots_free(v, n);
    if (st != CRUSTER_OK) return st;
    if (n < CRON_RESUME_BATCH || cruster_singleton_cancelled(ctx)) return CRUSTER_OK;
  }
}

/* Step 2: slots missed since the newest recorded one. */
static int missed_slots(cron_job *j, cruster_singleton_ctx *ctx, int64_t now) {
  if (j->missed == CRUSTER_CRON_MISSED_NONE) return CRUSTER_OK;
  void *impl;
  const st_wf_ops *ops = sg_wf(j->r, &impl);
  st_cron_slot *v = NULL;
  size_t n = 0;
  cruster_error *e = NULL;
  int st = ops->cron_list(impl, j->name, 1, 0, &v, &n, &e);
  if (st != CRUSTER_OK) {
    log_err(j, "reading the newest slot failed", st, e);
    return st;
  }
  int64_t last = n ? v[0].slot_ms : 0;
  st_cron_slots_free(v, n);
  if (!n || last >= now) return CRUSTER_OK; /* never ran: nothing missed */
  /* Slots older than skip_if_older_than are skipped: start the walk there. */
  int64_t from = last;
  if (now - j->skip_ms - 1 > from) from = now - j->skip_ms - 1;
  int64_t latest = -1, t = from;
  for (;;) {
    int64_t s;
    if (cruster_cron_next(j->cron, t, &s, NULL) != CRUSTER_OK || s > now) break;
    t = s;
    if (now - s > j->skip_ms) continue;
    if (j->missed == CRUSTER_CRON_MISSED_ALL) {
      if (cruster_singleton_cancelled(ctx)) return CRUSTER_OK;
      st = run_slot(j, s, 0);
      if (st != CRUSTER_OK) return st;
    } else {
      latest = s;
    }
  }
  if (latest >= 0) {
    core_log(sg_lg(j->r), CRUSTER_LOG_INFO, CRON_COMPONENT,
             "cron job \"%s\": running the latest missed slot %" PRId64 " (older ones skipped)",
             j->name, latest);
    return run_slot(j, latest, 0);
  }
  return CRUSTER_OK;
}

/* The singleton's function. */
static int scheduler(void *user, cruster_singleton_ctx *ctx) {
  cron_job *j = user;
  int st = resume_slots(j, ctx);
  if (st != CRUSTER_OK || cruster_singleton_cancelled(ctx)) return st;
  int64_t ref = core_now_ms();
  st = missed_slots(j, ctx, ref);
  if (st != CRUSTER_OK) return st;
  for (;;) {
    if (cruster_singleton_cancelled(ctx)) return CRUSTER_OK;
    int64_t next;
    if (cruster_cron_next(j->cron, ref, &next, NULL) != CRUSTER_OK) {
      core_log(sg_lg(j->r), CRUSTER_LOG_INFO, CRON_COMPONENT,
               "cron job \"%s\": no fire time after %" PRId64 ": the job is over", j->name, ref);
      while (!cruster_singleton_wait(ctx, CRON_DAY_MS)) {
      }
      return CRUSTER_OK;
    }
    int64_t now;
    while ((now = core_now_ms()) < next)
      if (cruster_singleton_wait(ctx, next - now)) return CRUSTER_OK;
    if (now - next > j->skip_ms) {
      core_log(sg_lg(j->r), CRUSTER_LOG_INFO, CRON_COMPONENT,
               "cron job \"%s\": slot %" PRId64 " skipped (older than skip_if_older_than)", j->name,
               next);
    } else {
      st = run_slot(j, next, 0);
      if (st != CRUSTER_OK) return st;
    }
    ref = j->from_prev ? next : core_now_ms();
  }
}

/* ---- registration and listing ------------------------------------------ */

cruster_status sg_cron_register(sg_registry *r, const char *name, const char *expr,
                                cruster_cron_job_fn fn, void *user,
                                const cruster_cron_job_opts *opts, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!r) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  cruster_status st = core_check_name("cron job name", name, err);
  if (st != CRUSTER_OK) return st;
  if (strlen(name) > CRUSTER_MAX_NAME_LEN - strlen(CRON_PREFIX))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cron job name is longer than %d bytes",
                          (int)(CRUSTER_MAX_NAME_LEN - strlen(CRON_PREFIX)));
  if (!expr) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "expr must not be NULL");
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "fn must not be NULL");
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  if (opts) {
    st = core_opts_read("cruster_cron_job_opts", "CRUSTER_CRON_JOB_OPTS_INIT", opts, opts->size,
                        CRUSTER_CRON_JOB_OPTS_SIZE_V1, sizeof(o), &o, err);
    if (st != CRUSTER_OK) return st;
  }
  if (o.calculate_next_from_previous != 0 && o.calculate_next_from_previous != 1)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_cron_job_opts.calculate_next_from_previous must be 0 or 1");
  if (o.skip_if_older_than_ms < 0 || o.skip_if_older_than_ms > CORE_DURATION_MAX_MS)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_cron_job_opts.skip_if_older_than_ms must be 0..%" PRId64,
                          (int64_t)CORE_DURATION_MAX_MS);
  if (o.missed < CRUSTER_CRON_MISSED_LATEST || o.missed > CRUSTER_CRON_MISSED_NONE)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_cron_job_opts.missed must be a cruster_cron_missed, got %d",
                          (int)o.missed);
  void *impl;
  const st_wf_ops *ops = sg_wf(r, &impl);
  if (!ops || !ops->cron_begin || !ops->cron_finish || !ops->cron_list)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "cron jobs need a storage (their slots are recorded there)");
  cruster_cron *c = NULL;
  cruster_error *pe = NULL;
  st = cruster_cron_parse(expr, o.tz, &c, &pe);
  if (st != CRUSTER_OK) {
    st = core_error_set(err, st, "cron job \"%s\": %s", name,
                        pe ? cruster_error_message(pe) : cruster_status_message(st));
    cruster_error_free(pe);
    return st;
  }
  cron_job *j = calloc(1, sizeof(*j));
  if (!j || !(j->name = core_strdup(name))) {
    free(j);
    cruster_cron_free(c);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  j->r = r;
  j->cron = c;
  j->fn = fn;
  j->user = user;
  j->from_prev = o.calculate_next_from_previous;
  j->skip_ms = o.skip_if_older_than_ms ? o.skip_if_older_than_ms : CRON_DAY_MS;
  j->missed = o.missed;
  /* Kept before it can start: the scheduler uses it until sg_free. */
  if (sg_keep(r, j, job_free) != 0) {
    job_free(j);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  char sname[CRUSTER_MAX_NAME_LEN + 1];
  snprintf(sname, sizeof(sname), "%s%s", CRON_PREFIX, name);
  st = sg_register(r, sname, scheduler, j, NULL, err);
  if (st == CRUSTER_OK)
    core_log(sg_lg(r), CRUSTER_LOG_DEBUG, CRON_COMPONENT, "cron job \"%s\" registered: %s%s%s",
             name, cruster_cron_expr(c), o.tz ? " in " : "", o.tz ? o.tz : "");
  /* Refused, or replaced later by a same-named registration: j stays kept
   * (freed with the registry; a replaced scheduler may still be using it
   * until it returns). */
  return st;
}

cruster_status sg_cron_slots(sg_registry *r, const char *job, size_t limit,
                             cruster_cron_slot **out, size_t *n, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (n) *n = 0;
  if (!r || !out || !n)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt, out and n must not be NULL");
  cruster_status st = core_check_name("cron job name", job, err);
  if (st != CRUSTER_OK) return st;
  if (limit < 1 || limit > 100000)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "limit must be 1..100000, got %zu", limit);
  void *impl;
  const st_wf_ops *ops = sg_wf(r, &impl);
  if (!ops || !ops->cron_list)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "the runtime has no storage with cron slots");
  st_cron_slot *v = NULL;
  size_t k = 0;
  st = ops->cron_list(impl, job, limit, 0, &v, &k, err);
  if (st != CRUSTER_OK) return st;
  cruster_cron_slot *res = calloc(k ? k : 1, sizeof(*res));
  if (!res) {
    st_cron_slots_free(v, k);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  for (size_t i = 0; i < k; i++) {
    res[i].slot_ms = v[i].slot_ms;
    res[i].state = v[i].state;
    res[i].started_ms = v[i].started_ms;
    res[i].finished_ms = v[i].finished_ms;
    res[i].error = v[i].error; /* moved */
    v[i].error = NULL;
  }
  st_cron_slots_free(v, k);
  *out = res;
  *n = k;
  return CRUSTER_OK;
}

void cruster_cron_slots_free(cruster_cron_slot *slots, size_t n) {
  if (!slots) return;
  for (size_t i = 0; i < n; i++) free(slots[i].error);
  free(slots);
}
