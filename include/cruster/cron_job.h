/*
 * cruster/cron_job.h -- ClusterCron: durable cron jobs run by one runner of
 * the cluster.
 *
 *   static int nightly(void *app, int64_t slot_ms, const char *slot_id) {
 *     // slot_id ("<job>/<slot_ms>") is an idempotency key for effects
 *     return CRUSTER_OK;
 *   }
 *   cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
 *   o.tz = "Europe/Berlin";
 *   cruster_runtime_register_cron_job(rt, "nightly", "0 0 3 * * *", nightly, app, &o, &err);
 *
 * The model.
 *  - A job runs as the singleton "ClusterCron/<name>" in shard group
 *    "default" (cruster/singleton.h): on the runner that owns that shard,
 *    failing over with it. Its scheduler is managed: on shard loss or stop it
 *    stops waiting at once; a handler that runs is waited for (its slot is
 *    finished, not abandoned, when it returns within the grace).
 *  - Each slot (a fire time of the expression, cruster/cron.h) is durable:
 *    the slot is recorded in storage (the table cruster_cron_slots with
 *    PostgreSQL) BEFORE its handler runs, and marked done or failed after.
 *    A recorded slot is never started again by a scheduler: each slot runs
 *    once across failover and restarts. A slot whose handler was interrupted
 *    by a crash (recorded, never finished) is run again by the next
 *    scheduler to start, before anything else: the handler may therefore
 *    see a slot twice when the process died in the middle of it -- make its
 *    effects idempotent with the slot id, which is the same both times.
 *  - The loop (as the original's): reference = now at (re)start; the next
 *    slot is the first fire time strictly after the reference; the
 *    scheduler sleeps until then. A slot older than skip_if_older_than when
 *    its time comes is skipped; else its handler runs (a failure is
 *    recorded with the slot, logged, and not retried). The new reference is
 *    the slot's time with calculate_next_from_previous, else the time after
 *    the handler returned (slots that passed while a handler overran are
 *    then skipped).
 *  - Missed slots: slots between the newest recorded slot of the job and
 *    now when a scheduler starts (no runner ran it meanwhile, or the shard
 *    moved) follow `missed`: CRUSTER_CRON_MISSED_LATEST (the default) runs
 *    the latest missed slot once and skips older ones,
 *    CRUSTER_CRON_MISSED_ALL runs each in order, CRUSTER_CRON_MISSED_NONE
 *    runs none. skip_if_older_than applies to them as well. A job never run
 *    before has nothing missed.
 *  - History: finished slots are kept "storage_retention" (the newest slot
 *    of a job is always kept) and listed by cruster_cron_slots.
 *  - With memory storage the slots live as long as the storage object.
 *
 * Threads: the handler runs on a worker thread (the singleton's); the other
 * functions from any thread.
 */
#ifndef CRUSTER_CRON_JOB_H
#define CRUSTER_CRON_JOB_H

#include "common.h"
#include "runtime.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * cruster_cron_job_fn
 *   A job's handler for the slot scheduled at `slot_ms` (Unix ms, whole
 *   seconds). `slot_id` ("<job>/<slot_ms>", valid during the call) is the
 *   same for every run of that slot: use it as an idempotency key. Returns
 *   CRUSTER_OK, or a failure code (recorded with the slot; not retried).
 */
typedef int (*cruster_cron_job_fn)(void *user, int64_t slot_ms, const char *slot_id);

/** What happens to slots missed while no runner ran the job. */
typedef enum cruster_cron_missed {
  /** Run the latest missed slot once, skip the older ones (the default). */
  CRUSTER_CRON_MISSED_LATEST = 0,
  /** Run every missed slot, oldest first. */
  CRUSTER_CRON_MISSED_ALL = 1,
  /** Run none. */
  CRUSTER_CRON_MISSED_NONE = 2
} cruster_cron_missed;

/*
 * Job options (the growth rule of cruster_call_opts: initialise with
 * CRUSTER_CRON_JOB_OPTS_INIT, fields are only appended). NULL = defaults.
 */
typedef struct cruster_cron_job_opts {
  size_t size;
  /** IANA time zone of the expression (cruster_cron_parse); NULL = UTC. */
  const char *tz;
  /** 1: the next slot is computed from the previous slot's time; 0 (the
   *  default): from the time its handler returned. */
  int calculate_next_from_previous;
  /** A slot older than this (ms) when it comes to run is skipped; 0 = one
   *  day (the default); at most ~292 years. */
  int64_t skip_if_older_than_ms;
  /** cruster_cron_missed. */
  int32_t missed;
} cruster_cron_job_opts;

#define CRUSTER_CRON_JOB_OPTS_INIT {sizeof(cruster_cron_job_opts), NULL, 0, 0, 0}
/** The size of the first version of cruster_cron_job_opts. */
#define CRUSTER_CRON_JOB_OPTS_SIZE_V1 \
  (offsetof(cruster_cron_job_opts, missed) + sizeof(int32_t))

/*
 * cruster_runtime_register_cron_job
 *   Registers job `name` (a name as for entity types, at most
 *   CRUSTER_MAX_NAME_LEN - 12 bytes) firing at `expr` (cruster/cron.h) and
 *   running fn(user, slot, slot id), before or after start. `user` must stay
 *   valid until cruster_runtime_free (also after a replacement).
 *   Same name: the registration REPLACES the job of that name (or a
 *   singleton "ClusterCron/<name>"), as a singleton registration does
 *   (cruster/singleton.h): the running scheduler is cancelled -- a handler
 *   that runs finishes and its slot is recorded as finished -- and the new
 *   expression, handler and options take over only after it has returned.
 *   The slots recorded for the job (by name) stay: a slot the old job ran
 *   is not run again, an interrupted one is resumed, and the slots between
 *   the job's newest recorded slot and the new scheduler's start follow the
 *   NEW options' `missed` policy, computed with the NEW expression.
 * Returns: CRUSTER_OK (registered, or replacing); CRUSTER_E_INVALID_ARGUMENT
 *   (a NULL argument, a bad name, bad options, or an invalid expression --
 *   the message gives the position and the reason; nothing is replaced);
 *   CRUSTER_E_NOT_FOUND (unknown time zone); CRUSTER_E_INVALID_CONFIG (the
 *   runtime has no storage, or a storage without cron slots);
 *   CRUSTER_E_SHUTTING_DOWN; CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_runtime_register_cron_job(cruster_runtime *rt,
                                                             const char *name, const char *expr,
                                                             cruster_cron_job_fn fn, void *user,
                                                             const cruster_cron_job_opts *opts,
                                                             cruster_error **err);

/** A slot's state in storage. */
typedef enum cruster_cron_slot_state {
  /** Recorded, its handler running (or interrupted by a crash: it runs
   *  again when a scheduler starts). */
  CRUSTER_CRON_SLOT_RUNNING = 0,
  /** Its handler returned CRUSTER_OK. */
  CRUSTER_CRON_SLOT_DONE = 1,
  /** Its handler returned a failure (`error` says which). */
  CRUSTER_CRON_SLOT_FAILED = 2
} cruster_cron_slot_state;

/** One slot of a job, as listed. */
typedef struct cruster_cron_slot {
  int64_t slot_ms;     /**< the scheduled time, Unix ms */
  int32_t state;       /**< cruster_cron_slot_state */
  int64_t started_ms;  /**< when it was recorded, Unix ms */
  int64_t finished_ms; /**< when its handler returned; 0 while running */
  char *error;         /**< FAILED: the failure; else NULL */
} cruster_cron_slot;

/*
 * cruster_cron_slots
 *   Lists up to `limit` (1..100000) recorded slots of job `job`, newest
 *   first, into *out (an array of *n, free with cruster_cron_slots_free).
 *   The job need not be registered on this runtime (it reads storage).
 * Returns: CRUSTER_OK (*n may be 0); CRUSTER_E_INVALID_ARGUMENT;
 *   CRUSTER_E_INVALID_CONFIG (no storage with cron slots);
 *   CRUSTER_E_PERSISTENCE; CRUSTER_E_NOMEM.
 * Threads: any, not the loop thread.
 */
CRUSTER_API cruster_status cruster_cron_slots(cruster_runtime *rt, const char *job, size_t limit,
                                              cruster_cron_slot **out, size_t *n,
                                              cruster_error **err);

/** Frees a list from cruster_cron_slots (`n` its length). NULL is a no-op. */
CRUSTER_API void cruster_cron_slots_free(cruster_cron_slot *slots, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_CRON_JOB_H */
