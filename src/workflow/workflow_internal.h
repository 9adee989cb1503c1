/* Internal: the workflow layer -- definitions, the replay of one run of
 * execute (run.c), and the engine that turns executions into entities
 * (engine.c). It sits above the entity and sharding layers and below the
 * runner; it reaches storage through wf_storage.h. */
#ifndef WF_WORKFLOW_INTERNAL_H
#define WF_WORKFLOW_INTERNAL_H

#include "core/prefix.h"

#include <cruster/workflow.h>
#include <stdatomic.h>

#include "core/log.h"
#include "storage/wf_storage.h"

/* Executions are entities of type WF_TYPE_PREFIX + name. */
#define WF_TYPE_PREFIX "Workflow/"
#define WF_TYPE_PREFIX_LEN 9
#define WF_METHOD "execute"
/* Most random bytes one durable call may ask for. */
#define WF_RANDOM_MAX 4096
/* Most retries an activity may declare. */
#define WF_RETRIES_MAX 1000
/* Longest backoff, ms (a day). */
#define WF_BACKOFF_MAX_MS 86400000

typedef struct wf_activity {
  char *name; /* full: "act", or "Group/act" for a group's */
  const char *bare; /* the part after the group's '/' (into name) */
  cruster_activity_fn fn;
  void *user;
  int32_t retries;
  int32_t backoff;
  int64_t base_ms, max_ms;
} wf_activity;

typedef struct wf_activity_list {
  wf_activity *v;
  size_t n, cap;
} wf_activity_list;

struct cruster_workflow_def {
  char *name;
  cruster_workflow_fn fn;
  void *user;
  cruster_workflow_key_fn key_fn;
  void *key_user;
  int hash;
  wf_activity_list acts;
  char **groups; /* names of the included groups */
  size_t ngroups;
};

struct cruster_activity_group {
  char *name;
  wf_activity_list acts;
};

void wf_activity_list_free(wf_activity_list *l);
/* Appends a copy of `a` with its name `prefix/` + a->name (prefix NULL:
 * as is). 0, -1 on OOM. */
int wf_activity_list_add(wf_activity_list *l, const char *prefix, const wf_activity *a);
/* Checks opts and fills the activity's retry fields. */
cruster_status wf_activity_opts_read(const cruster_activity_opts *opts, wf_activity *a,
                                     cruster_error **err);
/* The activity a durable call names: a full name, or a bare name only one
 * activity has. NULL with *err: CRUSTER_E_NOT_FOUND, or
 * CRUSTER_E_INVALID_ARGUMENT (ambiguous bare name). */
const wf_activity *wf_activity_find(const wf_activity_list *l, const char *name,
                                    cruster_error **err);
/* A deep copy of a definition. NULL on OOM. */
cruster_workflow_def *wf_def_copy(const cruster_workflow_def *d);

/* What a run needs from the engine that started it. */
typedef struct wf_host {
  const st_wf_ops *ops;
  void *impl;
  const core_logger *lg;
  /* The calling worker waits for storage: lets the pool add a worker
   * meanwhile (may be NULL). */
  void (*block_enter)(void *ud);
  void (*block_leave)(void *ud);
  void *block_ud;
  int64_t max_payload; /* "max_payload_size" */
} wf_host;

/* One run of execute. */
struct cruster_wf {
  const wf_host *host;
  const cruster_workflow_def *def;
  const char *exec_id;
  int64_t request_id;
  const void *input;
  size_t len;
  st_wf_state st;  /* the journal as loaded */
  int32_t seq;     /* the next durable call's number */
  st_jentry *pending; /* new entries not written yet, in seq order */
  size_t npending, cappending;
  /* The last activity's transaction, its SQL done and its entry in
   * `pending`, not committed yet: committed with the next write (the next
   * activity's BEGIN, a flush, or the execution's answer), so that write
   * costs no round trip of its own. Every durable call with an effect
   * outside this run (an activity, a call, a child) and every end of the
   * run writes it first. */
  st_tx *held;
  int stop;        /* 0, or SUSPENDED / CANCELLED / DETERMINISM / PERSISTENCE */
  char *stop_msg;
  int64_t wake_at; /* SUSPENDED: Unix ms of the earliest wake-up; INT64_MAX = when woken */
  _Atomic int cancel_flag; /* set by a cancellation made while it runs */
  int answered;
  int status;
  void *reply;
  size_t reply_len;
  char *message;
  struct cruster_wf *run_next; /* the engine's list of running executions */
  cruster_request *req;        /* the execute delivery (the caller of its calls) */
  struct wf_engine *engine;
};

/* The durable-call steps (run.c), for the calls made in engine.c. */
int wf_stop(cruster_wf *wf, int code, cruster_error **err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int wf_suspend(cruster_wf *wf, int64_t until, cruster_error **err);
int wf_begin_call(cruster_wf *wf, int32_t kind, const char *name, const st_jentry **e,
                  cruster_error **err);
int wf_add_pending(cruster_wf *wf, int32_t kind, const char *name, int32_t status,
                   int32_t attempts, int64_t at, void *value, size_t len, char *message,
                   cruster_error **err);
int wf_give_value(const void *v, size_t len, void **out, size_t *out_len, cruster_error **err);

/* Prepares a run over `st` (taken: freed by wf_run_done). */
void wf_run_init(cruster_wf *wf, const wf_host *host, const cruster_workflow_def *def,
                 const char *exec_id, int64_t request_id, const void *input, size_t len,
                 st_wf_state *st);
/* Writes the pending entries: in the held transaction (committing it),
 * else in their own (before a park, a call, a failure). */
int wf_run_flush(cruster_wf *wf, cruster_error **err);
void wf_run_done(cruster_wf *wf);

/* ---- the engine (engine.c): one per runtime ---------------------------- */

typedef struct wf_engine wf_engine;

/* What the engine needs from the layers below, filled by the runner. */
typedef struct wf_engine_hooks {
  void *ud;
  /* The calling worker blocks on storage (the pool may add a worker). */
  void (*block_enter)(void *ud);
  void (*block_leave)(void *ud);
  /* 1 on the runtime's loop thread (where blocking is refused). */
  int (*on_loop)(void *ud);
  /* Stored messages became due: poll the storage now. Any thread. */
  void (*poll_now)(void *ud);
} wf_engine_hooks;

/* `ops`/`impl`: the storage's workflow side (NULL: no storage, workflows
 * refused). `cfg` and `lg` outlive the engine. NULL on OOM. */
struct sh_sharding;
struct em_manager;
/* The engine of one runtime: executions become entities of `em`, starts
 * and joins go through `sh`. */
wf_engine *wf_engine_new(const wf_engine_hooks *hooks, struct sh_sharding *sh,
                         struct em_manager *em, const st_wf_ops *ops, void *impl,
                         const struct cruster_config *cfg, const core_logger *lg);
void wf_engine_free(wf_engine *e);

/* The public functions of workflow.h taking a runtime, on its engine. */
cruster_status wf_register(wf_engine *e, const cruster_workflow_def *def, cruster_error **err);
cruster_status wf_execution_id(wf_engine *e, const char *workflow, const void *input, size_t len,
                               const cruster_workflow_opts *opts, char **id, cruster_error **err);
cruster_status wf_start(wf_engine *e, const char *workflow, const void *input, size_t len,
                        const cruster_workflow_opts *opts, char **id, cruster_error **err);
/* fn NULL: waits, the answer into out/out_len. */
cruster_status wf_execute(wf_engine *e, const char *workflow, const void *input, size_t len,
                          const cruster_workflow_opts *opts, cruster_reply_fn fn, void *user,
                          void **out, size_t *out_len, cruster_error **err);
cruster_status wf_poll(wf_engine *e, const char *workflow, const char *id, int *ready, void **out,
                       size_t *out_len, cruster_error **err);
/* fn NULL: waits, the answer into out/out_len. */
cruster_status wf_join(wf_engine *e, const char *workflow, const char *id, int64_t timeout_ms,
                       cruster_reply_fn fn, void *user, void **out, size_t *out_len,
                       cruster_error **err);
cruster_status wf_resolve(wf_engine *e, const char *workflow, const char *id, const char *name,
                          int32_t status, const void *value, size_t len, const char *message,
                          cruster_error **err);
cruster_status wf_restart(wf_engine *e, const char *workflow, const char *id, cruster_error **err);

#endif
