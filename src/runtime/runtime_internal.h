/* Internal: the runtime object, its loop-thread command queue, envelopes and
 * calls. Everything below "loop-owned" is touched only on the loop thread. */
#ifndef RT_RUNTIME_INTERNAL_H
#define RT_RUNTIME_INTERNAL_H

#include "core/prefix.h"

#include <cruster/cruster.h>
#include <stdatomic.h>
#include <uv.h>

#include "core/config_internal.h"
#include "core/envelope.h"
#include "core/log.h"
#include "core/metrics_internal.h"
#include "core/snowflake.h"
#include "core/map.h"
#include "entity/entity_internal.h"
#include "loop/loop.h"

typedef struct rt_call rt_call;

enum { RT_CALL_SEND = 0, RT_CALL_NOTIFY = 1 };

/* A caller waiting for an answer (send) or an acceptance (notify). */
struct rt_call {
  rt_cmd cmd;
  int kind;
  unsigned flags;
  core_env *env; /* owned until handed to a delivery */
  int64_t deadline_ms; /* monotonic */
  void *key;
  size_t key_len;
  cruster_reply_fn fn;
  void *user;
  /* loop-owned */
  size_t heap_idx;            /* index in the deadline heap, SIZE_MAX if none */
  int64_t request_id;
  cruster_request *req;       /* local delivery answering this call */
  struct rt_save *save;       /* storage write this call waits for */
  rt_call *wnext;             /* next waiter on the same persisted request id */
  int waiting;                /* listed in rt->waiters */
  int internal;               /* made by an entity/workflow (opts->caller) */
  /* opts->caller as the caller passed it: untrusted, compared as an address
   * with the requests being handled (rt_route), never read through. */
  const cruster_request *caller;
  /* The call's address, for messages (the envelope moves on) */
  const char *type, *id, *method;
  char names[];
};

/* Per-runtime metric series the hot paths update. */
typedef struct rt_metrics {
  core_metric *shards, *runners, *runners_healthy, *singletons, *detached;
  core_metric *calls_timeout, *calls_rejected, *calls_inflight;
  core_metric *st_polls, *st_queued, *st_saved, *st_duplicates, *st_replies, *st_dead_letters, *st_errors;
} rt_metrics;

struct cruster_runtime {
  cruster_config *cfg;
  const core_logger *lg;
  cruster_metrics *metrics;
  rt_metrics m;
  core_snowflake snowflake;
  cruster_storage *storage;
  cruster_registry *registry;
  char *runner_address;
  rt_loop loop;
  em_manager em;

  /* ---- loop-owned ---- */
  uv_timer_t deadline_timer;
  uv_timer_t poll_timer;
  uv_timer_t stop_timer;
  rt_call **heap;
  size_t heap_len, heap_cap;
  core_map waiters;   /* persisted request id -> rt_call* list */
  int closed;                 /* stop finished its drain: answers are dropped */
  int poll_scheduled;          /* a storage poll is in flight */
  int64_t poll_again_at;       /* asked for while one was in flight: monotonic ms, 0 = none */
  struct rt_stop_ctx *stopping;
  struct rt_sync *stop_sync; /* stop waits for the storage to flush */
};

/* ---- calls (sharding/calls.c, sharding/client.c) ---- */
/* A zeroed call that keeps a copy of its address (type, id, method). NULL
 * on OOM. Free with rt_call_free. */
rt_call *rt_call_new(const char *type, const char *id, const char *method);
void rt_call_complete(cruster_runtime *rt, rt_call *c, int status, const void *data, size_t len,
                      const char *msg);
void rt_call_free(rt_call *c);
void rt_deadline_fire(uv_timer_t *t);
/* Resolves every waiter of a persisted request id. */
void rt_waiters_resolve(cruster_runtime *rt, int64_t request_id, int status, const void *data,
                        size_t len, const char *msg);
/* Stop: fails every waiting call with `status`. */
void rt_calls_fail_all(cruster_runtime *rt, int status, const char *msg);

/* ---- persisted delivery (sharding/dispatch.c) ---- */
void rt_poll_schedule(cruster_runtime *rt, int64_t delay_ms);
void rt_poll_fire(uv_timer_t *t);
#endif
