/*
 * cruster/workflow.h -- durable workflows.
 *
 * A workflow is a function, `execute`, whose durable calls -- activities,
 * sleeps, deferreds, the current time, random bytes -- are journaled in
 * storage, so that an execution survives crashes: after a restart it runs
 * `execute` again from the top, every durable call already journaled returns
 * its recorded result at once, and the execution goes on from where it was.
 *
 *   cruster_workflow_def *d;
 *   cruster_workflow_def_new("Transfer", on_execute, app, &d, &err);
 *   cruster_workflow_def_add_activity(d, "debit", on_debit, app, NULL, &err);
 *   cruster_workflow_def_add_activity(d, "credit", on_credit, app, NULL, &err);
 *   cruster_runtime_register_workflow(rt, d, &err);
 *   cruster_workflow_def_free(d);
 *
 *   static void on_execute(void *app, cruster_wf *wf) {
 *     size_t len;
 *     const void *in = cruster_wf_input(wf, &len);
 *     int rc = cruster_wf_activity(wf, "debit", in, len, NULL, NULL, NULL);
 *     if (rc == CRUSTER_OK) rc = cruster_wf_sleep(wf, 60000, NULL);
 *     if (rc == CRUSTER_OK) rc = cruster_wf_activity(wf, "credit", in, len, NULL, NULL, NULL);
 *     if (rc == CRUSTER_OK) cruster_wf_complete(wf, "done", 4);
 *     else if (!cruster_wf_stopped(wf)) cruster_wf_fail(wf, rc, "transfer failed");
 *   }                      // after SUSPENDED/CANCELLED/DETERMINISM: just return
 *
 * The execution model.
 *  - An execution is addressed by its execution id: HEX128 of its key
 *    (cruster_hex128), or the key itself ("raw"). The key is the one the
 *    client gives, else the definition's key function's, else the input's
 *    bytes. An execution is an entity of type "Workflow/<name>" whose id is
 *    the execution id; starting it is a persisted message to that entity, so
 *    executions survive crashes and run on whichever runner owns their shard.
 *    The execution is identified by its whole identity (name, execution id,
 *    key bytes), compared as such: two keys whose HEX128 collide are two
 *    executions.
 *  - The same identity always gets the same execution and, once it has
 *    finished, its answer -- a failure too -- without running again
 *    (cruster_workflow_restart runs a failed one again). A second start with
 *    another input is answered as the first (the input is not compared).
 *  - `execute` runs on a worker thread. Each durable call it makes gets the
 *    next sequence number; the journal is keyed by (execution, sequence
 *    number). Replaying, a durable call whose kind or name differs from the
 *    journal at its position fails the execution with
 *    CRUSTER_E_DETERMINISM, the message naming both. So `execute` must make
 *    the same durable calls in the same order on every run given the same
 *    results: branch only on its input and on durable calls' results (use
 *    cruster_wf_now and cruster_wf_random, never the clock or rand()).
 *    Code may change under running executions only behind
 *    cruster_wf_patched (docs/workflows.md says how).
 *  - Suspension. A durable call that cannot finish now (a sleep not yet due,
 *    a deferred not resolved, a retry's wait) records what it waits for and
 *    returns CRUSTER_E_SUSPENDED. `execute` must then return promptly,
 *    making no other durable call (they would return CRUSTER_E_SUSPENDED
 *    too). The execution then holds no thread: it is its rows and its
 *    message's due time in storage (plus its idle entity instance, well under
 *    1 KB, until "entity_max_idle_time" evicts it), and the engine runs
 *    `execute` again, from the top, when the wait ends. Local variables do not survive a
 *    suspension; durable calls' results do.
 *  - `execute` answers with cruster_wf_complete or cruster_wf_fail. Returning
 *    without an answer and without a stop (below) fails the execution with
 *    CRUSTER_E_HANDLER.
 *  - A stop: once a durable call has returned CRUSTER_E_SUSPENDED,
 *    CRUSTER_E_CANCELLED (the execution was cancelled: that is its answer)
 *    or CRUSTER_E_DETERMINISM (its answer), cruster_wf_stopped() is 1, every
 *    later durable call returns the same code, and cruster_wf_complete/fail
 *    are refused (CRUSTER_E_STATE) and change nothing.
 *
 * Activities run inside one storage transaction with their journal row: with
 * PostgreSQL storage the activity gets the connection of an open transaction
 * (cruster_activity_pg, in pg.h), does its SQL on it, and the engine writes
 * the journal row on the same connection and commits -- so the activity's
 * SQL takes effect exactly once, with its recorded result. A failed activity
 * (cruster_activity_fail, or a failed commit) leaves neither its SQL nor a
 * journal row. Effects outside that transaction (an HTTP call, a file) may
 * repeat after a crash: make them idempotent. With memory storage there is
 * no transaction (cruster_activity_pg returns NULL) and the journal lives
 * as long as the process.
 *
 * Threads: definitions are used from one thread at a time; client functions
 * from any thread; the cruster_wf and cruster_activity handles only inside
 * the execute or activity function they were given to, on its thread.
 */
#ifndef CRUSTER_WORKFLOW_H
#define CRUSTER_WORKFLOW_H

#include "client.h"
#include "common.h"
#include "runtime.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A workflow's definition, built before registration. Opaque. */
typedef struct cruster_workflow_def cruster_workflow_def;
/** A named bundle of activities included in several workflows. Opaque. */
typedef struct cruster_activity_group cruster_activity_group;
/** One run of `execute` of one execution. Opaque. */
typedef struct cruster_wf cruster_wf;
/** One attempt of one activity. Opaque. */
typedef struct cruster_activity cruster_activity;

/*
 * cruster_workflow_fn
 *   A workflow's `execute`: reads its input with cruster_wf_input, makes
 *   durable calls, answers with cruster_wf_complete/cruster_wf_fail, and
 *   returns (at once after a stop, see above). `user` is the definition's.
 * Threads: a worker thread of the runtime.
 */
typedef void (*cruster_workflow_fn)(void *user, cruster_wf *wf);

/*
 * cruster_activity_fn
 *   An activity: reads its input, does its work (with PostgreSQL storage,
 *   its SQL on cruster_activity_pg's connection, in the open transaction),
 *   answers with cruster_activity_reply or cruster_activity_fail, and
 *   returns. Returning without an answer fails the attempt with
 *   CRUSTER_E_HANDLER. It must not commit or roll back the transaction.
 * Threads: the worker thread running `execute`, inside the durable call.
 */
typedef void (*cruster_activity_fn)(void *user, cruster_activity *act);

/*
 * cruster_workflow_key_fn
 *   Derives an execution's key from its input (`len` bytes at `input`):
 *   writes 1..`cap` bytes (cap = CRUSTER_MAX_KEY_LEN) to `out`, sets
 *   `*out_len`, and returns CRUSTER_OK; any other value refuses the start
 *   with that status. Called on the thread that starts the execution.
 */
typedef int (*cruster_workflow_key_fn)(void *user, const void *input, size_t len, void *out,
                                       size_t cap, size_t *out_len);

/** Backoff between an activity's attempts. */
typedef enum cruster_backoff {
  /** base * 2^(attempt-1), at most max: 1 s, 2 s, 4 s, ... 60 s by default. */
  CRUSTER_BACKOFF_EXPONENTIAL = 0,
  /** base every time: 1 s by default. */
  CRUSTER_BACKOFF_CONSTANT = 1
} cruster_backoff;

/*
 * Activity options (the growth rule of cruster_call_opts: initialise with
 * CRUSTER_ACTIVITY_OPTS_INIT, fields are only appended, `size` says how
 * much of the struct the caller has). NULL = no retries.
 */
typedef struct cruster_activity_opts {
  size_t size;
  /** Attempts after the first one when an attempt fails (0..1000). The
   *  attempts are journaled, so a crash does not reset the count; the wait
   *  between two attempts is a durable sleep (no thread is held). */
  int32_t retries;
  /** cruster_backoff. */
  int32_t backoff;
  /** The first wait, in ms (1..86400000); 0 = 1000. */
  int64_t backoff_base_ms;
  /** The longest wait, in ms (>= base, at most 86400000); 0 = 60000. */
  int64_t backoff_max_ms;
} cruster_activity_opts;

#define CRUSTER_ACTIVITY_OPTS_INIT {sizeof(cruster_activity_opts), 0, 0, 0, 0}
/** The size of the first version of cruster_activity_opts. */
#define CRUSTER_ACTIVITY_OPTS_SIZE_V1 \
  (offsetof(cruster_activity_opts, backoff_max_ms) + sizeof(int64_t))

/* ---- definitions -------------------------------------------------------- */

/*
 * cruster_workflow_def_new
 *   Starts the definition of workflow `name` (a name as for entity types;
 *   its executions are entities of type "Workflow/<name>", so `name` is at
 *   most CRUSTER_MAX_NAME_LEN - 9 bytes) with `execute` = fn(user, ...).
 *   `user` must stay valid while a runtime it is registered with lives.
 * Returns: CRUSTER_OK with *out set (free with cruster_workflow_def_free);
 *   CRUSTER_E_INVALID_ARGUMENT (bad name, fn or out NULL); CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_workflow_def_new(const char *name, cruster_workflow_fn fn,
                                                    void *user, cruster_workflow_def **out,
                                                    cruster_error **err);

/** Frees a definition (registration copies it). NULL is a no-op. */
CRUSTER_API void cruster_workflow_def_free(cruster_workflow_def *def);

/*
 * cruster_workflow_def_set_key
 *   Sets how an execution's key is derived when the client gives none:
 *   `fn` (NULL = the input's bytes, the default) and whether the execution
 *   id is HEX128 of the key (`hash` = 1, the default) or the key itself
 *   (`hash` = 0: the key must then be a valid entity id). A client's key
 *   (cruster_workflow_opts) always wins.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (def NULL, hash not 0/1).
 */
CRUSTER_API cruster_status cruster_workflow_def_set_key(cruster_workflow_def *def,
                                                        cruster_workflow_key_fn fn, void *user,
                                                        int hash, cruster_error **err);

/*
 * cruster_workflow_def_add_activity
 *   Adds activity `name` (a name as for methods, without '/') run by
 *   fn(user, ...), with `opts` (NULL = no retries; copied).
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (bad name, fn NULL, bad
 *   options -- the message names the field); CRUSTER_E_ALREADY_EXISTS;
 *   CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_workflow_def_add_activity(cruster_workflow_def *def,
                                                             const char *name,
                                                             cruster_activity_fn fn, void *user,
                                                             const cruster_activity_opts *opts,
                                                             cruster_error **err);

/*
 * cruster_activity_group_new / _free / _add_activity
 *   An activity group is a named bundle of activities defined once and
 *   included in several workflows (each registration gives its own `user`
 *   pointers, so one group can serve two workflows with different
 *   instances). add_activity is as cruster_workflow_def_add_activity.
 */
CRUSTER_API cruster_status cruster_activity_group_new(const char *name,
                                                      cruster_activity_group **out,
                                                      cruster_error **err);
CRUSTER_API void cruster_activity_group_free(cruster_activity_group *group);
CRUSTER_API cruster_status cruster_activity_group_add_activity(cruster_activity_group *group,
                                                               const char *name,
                                                               cruster_activity_fn fn,
                                                               void *user,
                                                               const cruster_activity_opts *opts,
                                                               cruster_error **err);

/*
 * cruster_workflow_def_add_group
 *   Includes a copy of `group`'s activities. Inside `execute` they are
 *   called as "<group>/<activity>", or by the bare activity name when no
 *   other activity of the workflow has it; the journal always records the
 *   full name, so two groups' same-named activities never collide.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_ALREADY_EXISTS
 *   (a group of that name is already included); CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_workflow_def_add_group(cruster_workflow_def *def,
                                                          const cruster_activity_group *group,
                                                          cruster_error **err);

/*
 * cruster_runtime_register_workflow
 *   Registers a copy of `def` with the runtime (before or after start): the
 *   entity type "Workflow/<name>" in shard group "default".
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (NULL);
 *   CRUSTER_E_ALREADY_EXISTS (a workflow or entity type of that name);
 *   CRUSTER_E_INVALID_CONFIG (the runtime has no storage: workflows need
 *   one); CRUSTER_E_SHUTTING_DOWN; CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_runtime_register_workflow(cruster_runtime *rt,
                                                             const cruster_workflow_def *def,
                                                             cruster_error **err);

/* ---- inside execute ----------------------------------------------------- */

/*
 * Accessors of the running execution; pointers live as long as `wf`.
 */
/** The execution's input (`*len` receives its size). */
CRUSTER_API const void *cruster_wf_input(const cruster_wf *wf, size_t *len);
/** The execution id. */
CRUSTER_API const char *cruster_wf_execution_id(const cruster_wf *wf);
/** The workflow's name. */
CRUSTER_API const char *cruster_wf_workflow(const cruster_wf *wf);
/** 1 once a durable call returned SUSPENDED, CANCELLED or DETERMINISM (see above). */
CRUSTER_API int cruster_wf_stopped(const cruster_wf *wf);

/*
 * cruster_wf_activity
 *   Runs activity `name` with `len` bytes of `input` (copied) -- or returns
 *   its journaled result. On CRUSTER_OK `*out`/`*out_len` (both may be
 *   NULL) receive the activity's answer (release with cruster_free). When
 *   the activity's last attempt failed, its code is returned (and journaled:
 *   a replay returns it again) and `*err` carries its message.
 * Returns: CRUSTER_OK; the activity's failure code; CRUSTER_E_SUSPENDED
 *   (waiting before a retry); CRUSTER_E_CANCELLED; CRUSTER_E_DETERMINISM;
 *   CRUSTER_E_NOT_FOUND (no activity of that name -- the execution goes
 *   on); CRUSTER_E_INVALID_ARGUMENT / CRUSTER_E_PAYLOAD_TOO_LARGE (bad
 *   input, nothing journaled); CRUSTER_E_PERSISTENCE (storage failed: return
 *   from execute, the execution runs again later).
 */
CRUSTER_API cruster_status cruster_wf_activity(cruster_wf *wf, const char *name,
                                               const void *input, size_t len, void **out,
                                               size_t *out_len, cruster_error **err);

/*
 * cruster_wf_sleep
 *   A durable sleep of `ms` (0..CORE duration cap, ~292 years) from the
 *   first time this call was reached: returns CRUSTER_OK once that time has
 *   passed (never earlier), else records the timer and returns
 *   CRUSTER_E_SUSPENDED; the execution is run again when it is due, on
 *   whichever runner owns it then. Every sleep of an execution is its own
 *   timer.
 * Returns: CRUSTER_OK; CRUSTER_E_SUSPENDED; CRUSTER_E_CANCELLED;
 *   CRUSTER_E_DETERMINISM; CRUSTER_E_INVALID_ARGUMENT (ms < 0 or too
 *   large); CRUSTER_E_PERSISTENCE.
 */
CRUSTER_API cruster_status cruster_wf_sleep(cruster_wf *wf, int64_t ms, cruster_error **err);

/*
 * cruster_wf_await
 *   Waits for deferred `name` (a name as for methods) of this execution,
 *   resolved or rejected by any client (cruster_workflow_resolve/_reject).
 *   Resolved: CRUSTER_OK with its value in `*out`/`*out_len` (release with
 *   cruster_free; may be NULL). Rejected: the rejection's code, `*err` its
 *   message. Not yet: CRUSTER_E_SUSPENDED (run again when it is). A deferred
 *   is resolved once; several awaits of one name see the same outcome.
 * Returns: as above; CRUSTER_E_CANCELLED; CRUSTER_E_DETERMINISM;
 *   CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_PERSISTENCE.
 */
CRUSTER_API cruster_status cruster_wf_await(cruster_wf *wf, const char *name, void **out,
                                            size_t *out_len, cruster_error **err);

/*
 * cruster_wf_now
 *   The current Unix time in ms, journaled: every replay sees the value of
 *   the first run.
 * Returns: CRUSTER_OK; CRUSTER_E_CANCELLED; CRUSTER_E_DETERMINISM;
 *   CRUSTER_E_SUSPENDED (after a stop); CRUSTER_E_INVALID_ARGUMENT.
 */
CRUSTER_API cruster_status cruster_wf_now(cruster_wf *wf, int64_t *unix_ms, cruster_error **err);

/*
 * cruster_wf_random
 *   `len` (1..4096) random bytes into `out`, journaled like cruster_wf_now.
 */
CRUSTER_API cruster_status cruster_wf_random(cruster_wf *wf, void *out, size_t len,
                                             cruster_error **err);

/*
 * cruster_wf_patched
 *   Version marker for changing `execute` under running executions. `*yes`
 *   becomes 1 when this execution reached this point with the new code (a
 *   new execution, or one whose journal already holds the marker `name`
 *   here), 0 when it was journaled past this point by code without the
 *   marker: branch on it to keep old executions on the old path. The marker
 *   itself is a durable call only in new executions.
 * Returns: CRUSTER_OK; CRUSTER_E_CANCELLED; CRUSTER_E_DETERMINISM;
 *   CRUSTER_E_SUSPENDED (after a stop); CRUSTER_E_INVALID_ARGUMENT.
 */
CRUSTER_API cruster_status cruster_wf_patched(cruster_wf *wf, const char *name, int *yes,
                                              cruster_error **err);

/*
 * cruster_wf_call
 *   A durable call of `method` on entity (`type`, `id`) with `len` bytes of
 *   `payload` (copied), as a persisted call keyed by this execution and
 *   this call's position: however often execute runs, the entity gets it
 *   once, and a replay returns the journaled answer without sending again.
 *   Protected methods may be called (the execution is an entity). The
 *   calling worker waits for the answer ("default_call_timeout"); the pool
 *   adds a worker meanwhile. `*out`/`*out_len` (may be NULL) receive the
 *   answer (release with cruster_free); the entity's failure is returned,
 *   with `*err`, and journaled as well.
 * Returns: CRUSTER_OK; the entity's failure code; CRUSTER_E_CANCELLED;
 *   CRUSTER_E_DETERMINISM; CRUSTER_E_SUSPENDED (after a stop);
 *   CRUSTER_E_INVALID_ARGUMENT / CRUSTER_E_PAYLOAD_TOO_LARGE (bad input,
 *   nothing sent); CRUSTER_E_PERSISTENCE (no answer in time, or storage
 *   failed: return from execute; the execution runs again later and the
 *   call is joined, not sent twice).
 */
CRUSTER_API cruster_status cruster_wf_call(cruster_wf *wf, const char *type, const char *id,
                                           const char *method, const void *payload, size_t len,
                                           void **out, size_t *out_len, cruster_error **err);

/*
 * cruster_wf_child
 *   Runs workflow `workflow` with `len` bytes of `input` as a child of this
 *   execution and waits for its answer, suspended (no thread held). Its key
 *   is `key` (`key_len` bytes, NULL = "<this execution id>/<position>"),
 *   hashed into its execution id; it is started once, however often execute
 *   runs or the runner restarts, and its answer is journaled. The child is
 *   an execution of its own: clients can poll, join, resolve and cancel it.
 * Returns: CRUSTER_OK with `*out`/`*out_len` (may be NULL) the child's
 *   answer; the child's failure code (journaled); CRUSTER_E_SUSPENDED
 *   (it runs: return from execute; this execution runs again when it has
 *   finished); CRUSTER_E_CANCELLED; CRUSTER_E_DETERMINISM;
 *   CRUSTER_E_INVALID_ARGUMENT / CRUSTER_E_PAYLOAD_TOO_LARGE;
 *   CRUSTER_E_PERSISTENCE.
 */
CRUSTER_API cruster_status cruster_wf_child(cruster_wf *wf, const char *workflow,
                                            const void *input, size_t len, const void *key,
                                            size_t key_len, void **out, size_t *out_len,
                                            cruster_error **err);

/*
 * cruster_wf_complete / cruster_wf_fail
 *   The execution's answer: `len` bytes of `data` (copied), or failure
 *   `code` (a cruster code < 0 other than CRUSTER_OK, or an application code
 *   <= -1000) with `message` (copied; NULL allowed). Stored as the
 *   execution's answer for its key.
 * Returns: CRUSTER_OK; CRUSTER_E_STATE (already answered, or stopped);
 *   CRUSTER_E_PAYLOAD_TOO_LARGE; CRUSTER_E_INVALID_ARGUMENT (code).
 */
CRUSTER_API cruster_status cruster_wf_complete(cruster_wf *wf, const void *data, size_t len);
CRUSTER_API cruster_status cruster_wf_fail(cruster_wf *wf, int code, const char *message);

/* ---- inside an activity ------------------------------------------------- */

/** The activity's input (`*len` its size), valid during the activity. */
CRUSTER_API const void *cruster_activity_input(const cruster_activity *act, size_t *len);
/** The activity's full name ("<group>/<name>" for a group's). */
CRUSTER_API const char *cruster_activity_name(const cruster_activity *act);
/** The execution id of the workflow running it. */
CRUSTER_API const char *cruster_activity_execution_id(const cruster_activity *act);
/** 1 for the first attempt, 2 for the first retry, ... */
CRUSTER_API int32_t cruster_activity_attempt(const cruster_activity *act);

/*
 * cruster_activity_reply / cruster_activity_fail
 *   The attempt's answer, as cruster_wf_complete / cruster_wf_fail. A
 *   failure rolls the transaction back; a reply is committed with the
 *   journal row when the activity function returns.
 * Returns: CRUSTER_OK; CRUSTER_E_STATE (answered already);
 *   CRUSTER_E_PAYLOAD_TOO_LARGE; CRUSTER_E_INVALID_ARGUMENT.
 */
CRUSTER_API cruster_status cruster_activity_reply(cruster_activity *act, const void *data,
                                                  size_t len);
CRUSTER_API cruster_status cruster_activity_fail(cruster_activity *act, int code,
                                                 const char *message);

/* ---- clients ------------------------------------------------------------ */

/*
 * Options of the client calls (growth rule of cruster_call_opts). NULL =
 * defaults.
 */
typedef struct cruster_workflow_opts {
  size_t size;
  /** The execution's key (1..CRUSTER_MAX_KEY_LEN bytes); NULL = the
   *  definition's key function, else the input. */
  const void *key;
  size_t key_len;
  /** 1: the execution id is the key itself (it must be a valid entity id);
   *  0: HEX128 of the key (the default; for a key from the definition,
   *  the definition's choice). */
  int raw_key;
  /** Deadline in ms for the waiting forms; 0 = "default_call_timeout". */
  int64_t timeout_ms;
} cruster_workflow_opts;

#define CRUSTER_WORKFLOW_OPTS_INIT {sizeof(cruster_workflow_opts), NULL, 0u, 0, 0}
#define CRUSTER_WORKFLOW_OPTS_SIZE_V1 \
  (offsetof(cruster_workflow_opts, timeout_ms) + sizeof(int64_t))

/*
 * cruster_workflow_execution_id
 *   Computes the execution id the options and input give for workflow
 *   `workflow` (registered on this runtime when no key is given: its key
 *   function is used) into a string at `*id` (release with cruster_free).
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_PAYLOAD_TOO_LARGE
 *   (no key and an input over CRUSTER_MAX_KEY_LEN: give a key);
 *   CRUSTER_E_NOT_FOUND (no key given and the workflow is not registered
 *   here); the key function's status; CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_workflow_execution_id(cruster_runtime *rt, const char *workflow,
                                                         const void *input, size_t len,
                                                         const cruster_workflow_opts *opts,
                                                         char **id, cruster_error **err);

/*
 * cruster_workflow_start
 *   Starts an execution of `workflow` with `len` bytes of `input` (copied)
 *   and returns once it is durably stored (or found stored: a start of an
 *   existing execution changes nothing). `*id` (may be NULL) receives its
 *   execution id (release with cruster_free).
 * Returns: CRUSTER_OK; the errors of cruster_workflow_execution_id;
 *   CRUSTER_E_UNKNOWN_ENTITY_TYPE (not registered on the owning runner);
 *   CRUSTER_E_CONFLICT (every candidate id of its identity holds another
 *   call); CRUSTER_E_PERSISTENCE; CRUSTER_E_TIMEOUT; CRUSTER_E_STATE;
 *   CRUSTER_E_SHUTTING_DOWN.
 * Threads: any, not the loop thread.
 */
CRUSTER_API cruster_status cruster_workflow_start(cruster_runtime *rt, const char *workflow,
                                                  const void *input, size_t len,
                                                  const cruster_workflow_opts *opts, char **id,
                                                  cruster_error **err);

/*
 * cruster_workflow_execute / cruster_workflow_execute_sync
 *   Starts (as cruster_workflow_start) and waits, within the deadline, for
 *   the execution's answer, reported to `fn` as cruster_send reports one
 *   (the sync form: `*out`/`*out_len` on success, release with
 *   cruster_free). A finished execution answers at once.
 * Returns: as cruster_send / cruster_send_sync; the answer is the
 *   workflow's, or CRUSTER_E_CANCELLED / CRUSTER_E_DETERMINISM /
 *   CRUSTER_E_TIMEOUT (the execution goes on: join it later).
 * Threads: any (the sync form: not the loop thread).
 */
CRUSTER_API cruster_status cruster_workflow_execute(cruster_runtime *rt, const char *workflow,
                                                    const void *input, size_t len,
                                                    const cruster_workflow_opts *opts,
                                                    cruster_reply_fn fn, void *user,
                                                    cruster_error **err);
CRUSTER_API cruster_status cruster_workflow_execute_sync(cruster_runtime *rt,
                                                         const char *workflow, const void *input,
                                                         size_t len,
                                                         const cruster_workflow_opts *opts,
                                                         void **out, size_t *out_len,
                                                         cruster_error **err);

/*
 * cruster_workflow_poll
 *   Reads the answer of execution `id` without waiting: `*ready` = 1 and
 *   the return value is the answer's status (with `*out`/`*out_len` on
 *   success, release with cruster_free; `*err` saying why on failure);
 *   `*ready` = 0 while it runs or waits.
 * Returns: as above; CRUSTER_E_NOT_FOUND (no such execution, or removed
 *   after "storage_retention"); CRUSTER_E_CONFLICT (two executions share
 *   this id -- their keys' HEX128 collide); CRUSTER_E_PERSISTENCE;
 *   CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_STATE.
 * Threads: any, not the loop thread.
 */
CRUSTER_API cruster_status cruster_workflow_poll(cruster_runtime *rt, const char *workflow,
                                                 const char *id, int *ready, void **out,
                                                 size_t *out_len, cruster_error **err);

/*
 * cruster_workflow_join / cruster_workflow_join_sync
 *   Waits for the answer of execution `id`, started anywhere, within
 *   `timeout_ms` (0 = "default_call_timeout"), reported as by
 *   cruster_workflow_execute.
 * Returns: as cruster_send; CRUSTER_E_NOT_FOUND and CRUSTER_E_CONFLICT as
 *   for cruster_workflow_poll.
 * Threads: any (the sync form: not the loop thread).
 */
CRUSTER_API cruster_status cruster_workflow_join(cruster_runtime *rt, const char *workflow,
                                                 const char *id, int64_t timeout_ms,
                                                 cruster_reply_fn fn, void *user,
                                                 cruster_error **err);
CRUSTER_API cruster_status cruster_workflow_join_sync(cruster_runtime *rt, const char *workflow,
                                                      const char *id, int64_t timeout_ms,
                                                      void **out, size_t *out_len,
                                                      cruster_error **err);

/*
 * cruster_workflow_resolve / cruster_workflow_reject
 *   Resolves deferred `name` of execution `id` with `len` bytes of `value`
 *   (copied), or rejects it with `code` (as for cruster_wf_fail) and
 *   `message`. Durable before it returns; the execution, when it waits for
 *   it, is run again. The first outcome wins: a later one changes nothing
 *   and returns CRUSTER_E_ALREADY_EXISTS. Works while the execution runs,
 *   waits, or has not reached its await yet.
 * Returns: CRUSTER_OK; CRUSTER_E_ALREADY_EXISTS; CRUSTER_E_NOT_FOUND /
 *   CRUSTER_E_CONFLICT (as for poll); CRUSTER_E_STATE (the execution has
 *   finished); CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_PAYLOAD_TOO_LARGE;
 *   CRUSTER_E_PERSISTENCE.
 * Threads: any, not the loop thread.
 */
CRUSTER_API cruster_status cruster_workflow_resolve(cruster_runtime *rt, const char *workflow,
                                                    const char *id, const char *name,
                                                    const void *value, size_t len,
                                                    cruster_error **err);
CRUSTER_API cruster_status cruster_workflow_reject(cruster_runtime *rt, const char *workflow,
                                                   const char *id, const char *name, int code,
                                                   const char *message, cruster_error **err);

/*
 * cruster_workflow_cancel
 *   Cancels execution `id`: durable before it returns; the execution stops
 *   at its next durable call (at once when it waits), and its answer is
 *   CRUSTER_E_CANCELLED. A finished execution is left as it is.
 * Returns: CRUSTER_OK; CRUSTER_E_STATE (already finished);
 *   CRUSTER_E_NOT_FOUND / CRUSTER_E_CONFLICT (as for poll);
 *   CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_PERSISTENCE.
 * Threads: any, not the loop thread.
 */
CRUSTER_API cruster_status cruster_workflow_cancel(cruster_runtime *rt, const char *workflow,
                                                   const char *id, cruster_error **err);

/*
 * cruster_workflow_restart
 *   Runs a failed (or cancelled) execution `id` again under its key: its
 *   answer is removed, its successful activities' results are kept (they
 *   committed), its recorded failures and cancellation are dropped, and
 *   `execute` runs again from the top.
 * Returns: CRUSTER_OK; CRUSTER_E_STATE (it has not finished, or it
 *   succeeded); CRUSTER_E_NOT_FOUND / CRUSTER_E_CONFLICT (as for poll);
 *   CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_PERSISTENCE.
 * Threads: any, not the loop thread.
 */
CRUSTER_API cruster_status cruster_workflow_restart(cruster_runtime *rt, const char *workflow,
                                                    const char *id, cruster_error **err);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_WORKFLOW_H */
