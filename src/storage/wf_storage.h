/* Internal: the workflow storage -- journals, deferreds, cancellations and
 * the activities' transactions. Unlike the message storage (st_ops, on the
 * loop thread, asynchronous), these calls are synchronous and made from
 * worker threads (the execute and activity functions) and client threads:
 * the PostgreSQL backend uses its own pool of blocking connections, kept
 * apart from the loop's non-blocking ones; the memory backend runs each call
 * on the loop thread through st_host.run_on_loop.
 *
 * An execution is addressed by the request id of its execute message (a
 * keyed message, kept after its answer for "storage_retention"): its journal
 * and deferreds live under that id and go with the message. */
#ifndef ST_WF_STORAGE_H
#define ST_WF_STORAGE_H

#include "core/prefix.h"

#include <stddef.h>
#include <stdint.h>

#include <cruster/common.h>
#include <cruster/status.h>

/* Kinds of durable call (the journal's `kind`). Never renumbered: stored. */
enum {
  ST_J_ACTIVITY = 1,
  ST_J_SLEEP = 2,
  ST_J_AWAIT = 3,
  ST_J_NOW = 4,
  ST_J_RANDOM = 5,
  ST_J_PATCH = 6,
  ST_J_CALL = 7,
  ST_J_CHILD = 8
};

/* One journal entry: durable call number `seq` of an execution.
 *   ACTIVITY: status = the result (CRUSTER_OK + value, or the failure code +
 *             message); attempts = attempts made; at = 0 when final, else
 *             the Unix ms of the next attempt (a retry waits).
 *   SLEEP:    at = when it is due (Unix ms).
 *   AWAIT:    the execution reached await `name` (its outcome is the
 *             deferred's).
 *   NOW:      at = the time read.
 *   RANDOM:   value = the bytes.
 *   PATCH:    a version marker named `name`.
 *   CALL:     an entity call ("<type>/<method>"): status and value or
 *             message, its answer.
 *   CHILD:    a child workflow (its name): its answer, as CALL. */
typedef struct st_jentry {
  int32_t seq;
  int32_t kind;
  char *name;
  int32_t status;
  int32_t attempts;
  int64_t at;
  void *value;
  size_t len;
  char *message;
} st_jentry;

/* A resolved or rejected deferred. The empty name is the cancellation. */
typedef struct st_deferred {
  char *name;
  int32_t status;
  void *value;
  size_t len;
  char *message;
} st_deferred;

/* What a run of execute starts from, read in one snapshot. */
typedef struct st_wf_state {
  st_jentry *entries; /* ordered by seq: entries[i].seq == i */
  size_t n;
  st_deferred *deferreds;
  size_t nd;
  int64_t wake_seq; /* the execution's wake counter when read (see park) */
  int cancelled;
} st_wf_state;

void st_wf_state_free(st_wf_state *s);
void st_jentry_clear(st_jentry *e);

/* An execution found by its id (the execute messages of (type, id)). */
typedef struct st_exec_ref {
  int64_t request_id;
  int finished; /* its answer is stored */
  void *key;    /* its idempotency key (malloc'd: the caller frees) */
  size_t key_len;
} st_exec_ref;

/* Cron slots (ClusterCron): one row per (job, slot time), written before
 * the slot's handler runs. States are stored: never renumbered. */
enum { ST_CRON_RUNNING = 0, ST_CRON_DONE = 1, ST_CRON_FAILED = 2 };

typedef struct st_cron_slot {
  int64_t slot_ms;     /* the scheduled time, Unix ms */
  int32_t state;       /* ST_CRON_* */
  int64_t started_ms;  /* when it was recorded */
  int64_t finished_ms; /* 0 while running */
  char *error;         /* FAILED: why (malloc'd), else NULL */
} st_cron_slot;

void st_cron_slots_free(st_cron_slot *v, size_t n);

/* An activity's open transaction. */
typedef struct st_tx st_tx;

typedef struct st_wf_ops {
  /* Reads the journal, the deferreds and the wake counter of execution
   * `request_id`. */
  int (*load)(void *impl, int64_t request_id, st_wf_state *out, cruster_error **err);
  /* Opens a transaction for an activity (PostgreSQL: a pooled connection
   * with BEGIN sent). *tx = NULL with memory storage (no transaction). */
  int (*begin)(void *impl, st_tx **tx, cruster_error **err);
  /* The handle the activity sees: the PGconn *, or NULL. */
  void *(*tx_handle)(st_tx *tx);
  /* Writes `entries` (upserts by seq) for execution `request_id` in `tx`
   * (NULL: in its own transaction) and commits. On failure the transaction
   * is rolled back; either way `tx` is finished. */
  int (*commit)(void *impl, st_tx *tx, int64_t request_id, const st_jentry *entries, size_t n,
                cruster_error **err);
  /* Optional (NULL: none): writes `entries` in `tx`, commits, and opens the
   * next transaction on the same connection, all in one round trip. On
   * success `tx` stays open (the next one); on failure it is rolled back
   * and finished, and whether the write committed is unknown (the COMMIT
   * may have succeeded and the BEGIN failed). */
  int (*commit_reopen)(void *impl, st_tx *tx, int64_t request_id, const st_jentry *entries,
                       size_t n, cruster_error **err);
  /* Optional (NULL: never): 1 if `tx`, its activity's SQL done, may stay
   * open until its run's next write (commit_reopen, commit, commit_reply or
   * rollback ends the hold); 0: commit it now. Bounds the connections so
   * held. */
  int (*try_hold)(void *impl, st_tx *tx);
  void (*rollback)(void *impl, st_tx *tx);
  /* A transactional entity handler's reply: stores it as message
   * `request_id`'s answer in `tx` (keyed: kept with its reply; unkeyed:
   * deleted, as an answered unkeyed message is) and commits. The message
   * must be stored unanswered: else nothing commits and the result is
   * CRUSTER_E_ALREADY_EXISTS. `entries` (n may be 0) are journaled for
   * request_id in the same transaction (a workflow execution's answer in
   * its last activity's transaction). `wake_seq` >= 0 (a workflow
   * execution's answer): stored only if the message's wake counter is
   * still `wake_seq` (st_wf_state.wake_seq as its run read it), so an
   * answer never overtakes a cancellation stored meanwhile (by any runner);
   * else nothing commits, CRUSTER_E_ALREADY_EXISTS. -1: no such condition.
   * Either way `tx` is finished. NULL in backends without transactions. */
  int (*commit_reply)(void *impl, st_tx *tx, int64_t request_id, int keyed, int64_t wake_seq,
                      const void *data, size_t len, const st_jentry *entries, size_t n,
                      cruster_error **err);
  /* Executions of (type, id, method "execute"): up to `cap` into `out`
   * (each key the caller's to free), their count in *n (may exceed cap). */
  int (*find)(void *impl, const char *type, const char *id, st_exec_ref *out, size_t cap,
              size_t *n, cruster_error **err);
  /* Records deferred `name`'s outcome (first one wins: CRUSTER_E_ALREADY_EXISTS
   * after) and wakes the execution; the empty name cancels it.
   * CRUSTER_E_STATE when the execution has its answer; CRUSTER_E_NOT_FOUND
   * when it is gone. */
  int (*resolve)(void *impl, int64_t request_id, const char *name, int32_t status,
                 const void *value, size_t len, const char *message, cruster_error **err);
  /* Makes a failed or cancelled execution run again: removes its answer,
   * the failures of its journal (activities whose final result is a
   * failure, and everything after the first such entry) and its
   * cancellation. CRUSTER_E_STATE when it has no answer or succeeded. */
  int (*restart)(void *impl, int64_t request_id, cruster_error **err);
  /* Wakes execution `request_id` (something it waits for happened): its
   * wake counter moves and a parked message is due now. Gone or answered:
   * nothing happens (CRUSTER_OK). */
  int (*wake)(void *impl, int64_t request_id, cruster_error **err);
  /* Cron slots (all optional: NULL in a backend without them). Records
   * slot (job, slot_ms) as running at `now_ms` unless it is recorded:
   * *fresh = 1 when this call recorded it, else 0 and *state its stored
   * state. */
  int (*cron_begin)(void *impl, const char *job, int64_t slot_ms, int64_t now_ms, int *fresh,
                    int32_t *state, cruster_error **err);
  /* Finishes slot (job, slot_ms): `state` (DONE or FAILED, with `error`,
   * may be NULL) at `now_ms`; then removes the job's finished slots that
   * finished before `purge_before_ms` (0 = none), the newest slot of the job
   * excepted (it marks where the job got to). */
  int (*cron_finish)(void *impl, const char *job, int64_t slot_ms, int32_t state,
                     const char *error, int64_t now_ms, int64_t purge_before_ms,
                     cruster_error **err);
  /* Up to `limit` slots of `job` into *out (free with st_cron_slots_free),
   * their number in *n: newest first; with running_only, only those still
   * running, oldest first. */
  int (*cron_list)(void *impl, const char *job, size_t limit, int running_only,
                   st_cron_slot **out, size_t *n, cruster_error **err);
} st_wf_ops;

#endif
