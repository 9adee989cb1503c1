/* Internal: the sharding layer -- calls and their deadlines, routing
 * (single-node: every shard is local), the persisted path (store first,
 * then deliver; answers stored, waiters resolved), the storage poll loop,
 * reply lookup and dead letters. Its state is an sh_sharding; it uses the
 * entity manager, the storage, the loop and core, and calls nothing above
 * it: the layer that owns it drives its start and stop. */
#ifndef SH_SHARDING_INTERNAL_H
#define SH_SHARDING_INTERNAL_H

#include "core/prefix.h"

#include <cruster/cruster.h>
#include <stdatomic.h>
#include <uv.h>

#include "core/config_internal.h"
#include "core/envelope.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics_internal.h"
#include "core/snowflake.h"
#include "entity/entity_internal.h"
#include "loop/loop.h"
#include "storage/storage_internal.h"

typedef struct sh_call sh_call;
typedef struct sh_save sh_save;
typedef struct sh_stream sh_stream;
typedef struct sh_sharding sh_sharding;

/* Told of every change of ownership (loop thread): `owned` 1 = gained,
 * 0 = lost. `group` is the configuration's string (lives as long as it).
 * `shard` -1: every shard of the group at once (single-node start/stop). */
typedef void (*sh_own_fn)(void *ud, const char *group, int32_t shard, int owned);
typedef struct sh_own_listener {
  sh_own_fn fn;
  void *ud;
} sh_own_listener;

enum { SH_CALL_SEND = 0, SH_CALL_NOTIFY = 1 };

/* A caller waiting for an answer (send) or an acceptance (notify). */
struct sh_call {
  rt_cmd cmd; /* cmd.ud: the sh_sharding the call belongs to */
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
  sh_save *save;              /* storage write this call waits for */
  sh_call *wnext;             /* next waiter on the same persisted request id */
  int waiting;                /* listed in sh->waiters */
  int internal;               /* made by an entity/workflow (opts->caller) */
  /* opts->caller as the caller passed it: untrusted, compared as an address
   * with the requests being handled (sh_route), never read through. */
  const cruster_request *caller;
  /* The call's address, for messages (the envelope moves on) */
  const char *type, *id, *method;
  /* Cluster mode (remote.c) */
  int32_t hops;               /* times this call was forwarded before it came here */
  int remote;                 /* received from another runner */
  struct sh_fwd *fwd;         /* a forward to the owner in flight */
  struct tp_call *fwd_call;   /* its transport call */
  int retrying;               /* in the retry list */
  sh_call *rnext, *rprev;
  /* What the last routing attempt met ("; the last forward failed: runner
   * ADDR: message", "; shard G:S had no owner ..."), for the deadline's
   * message; NULL = nothing yet. */
  char *fwd_err;
  /* Streamed calls (stream.c). `st`: this runner's caller takes the items
   * (cruster_send_stream); freed by the stream once its end is delivered.
   * `on_item`: where the items of a streamed call go (the caller's stream,
   * or the transport for a call received from another runner); takes `it`. */
  sh_stream *st;
  void (*on_item)(sh_sharding *sh, sh_call *c, cruster_request *r, em_item *it);
  void *rmt;                  /* a received call: its sh_rmt (remote.c) */
  char names[];
};

/* The metric series the hot paths update. */
typedef struct sh_metrics {
  core_metric *calls_timeout, *calls_rejected, *calls_inflight;
  core_metric *st_polls, *st_queued, *st_saved, *st_duplicates, *st_replies, *st_dead_letters, *st_errors;
  core_metric *streams, *stream_items;
} sh_metrics;

/* Everything under "loop-owned" is touched only on the loop thread. */
struct sh_sharding {
  rt_loop *loop;
  em_manager *em;
  cruster_storage *storage; /* attached by the owner; NULL: none */
  const cruster_config *cfg;
  const core_logger *lg;
  core_snowflake *snowflake;
  sh_metrics m;

  /* ---- loop-owned ---- */
  int stopping; /* sh_stop ran: nothing is routed, polled or delivered */
  uv_timer_t deadline_timer;
  uv_timer_t poll_timer;
  sh_call **heap; /* pending calls, a min-heap on deadline_ms */
  size_t heap_len, heap_cap;
  core_map waiters;       /* persisted request id -> sh_call* list */
  int poll_scheduled;     /* a storage poll is in flight */
  int64_t poll_again_at;  /* asked for while one was in flight: monotonic ms, 0 = none */
  /* The shards owned (owner.c): per configured group, shards_per_group bits. */
  uint64_t *owned_bits;
  size_t owned_words; /* per group */
  size_t owned_count;
  int all_owned; /* single-node: every shard of every group, no bits */
  sh_own_listener *own_listeners;
  size_t n_own_listeners;
  int single_node; /* every shard is owned from start to stop */
  struct sh_cluster *cl; /* cluster mode (cluster.h); NULL: single-node */
  /* Work of a shard still running here (handlers, singletons): its lock is
   * released only once none is, or after entity_termination_timeout. Set
   * by the owner; NULL = nothing. */
  size_t (*shard_busy)(void *ud, const char *group, int32_t shard);
  void *shard_busy_ud;
};

/* A storage write a call (or a poll) waits for. */
struct sh_save {
  sh_sharding *sh;
  core_env *env;    /* owned */
  em_type *type;
  int rpc_index;
  int claim;
  sh_call *call;  /* NULL once the call completed (timeout) */
  /* Speculative delivery: handed to its handler before the save completed,
   * held (em_deliver's hold) until it did. */
  int spec;
  int spec_status;      /* what em_deliver said */
  cruster_request *req; /* the delivery, until bound off */
};

/* ---- setup and stop (the owner; loop thread unless said) ---- */

/* Sets up `sh` on `loop` (whose libuv loop exists; its thread may not run
 * yet) over the entity manager `em` and the attached `storage` (may be
 * NULL). Everything given must outlive it. */
int sh_init(sh_sharding *sh, rt_loop *loop, em_manager *em, cruster_storage *storage,
            const cruster_config *cfg, const core_logger *lg, cruster_metrics *metrics,
            core_snowflake *snowflake);
/* Returns 0, or -1 on OOM (then sh_free frees what was made).
 * The loop's state became RT_STARTED: in single-node mode every shard
 * becomes owned (listeners told); look at the storage. */
void sh_start(sh_sharding *sh);
/* The stop began: nothing new is routed or polled; in single-node mode
 * every shard is let go (listeners told). */
void sh_stop(sh_sharding *sh);
/* Fails every waiting call with `status`. */
void sh_calls_fail_all(sh_sharding *sh, int status, const char *msg);
/* After the loop closed: frees what is left. */
void sh_free(sh_sharding *sh);
/* Polls the storage in `delay_ms` (or sooner, if one is due sooner). */
void sh_poll_schedule(sh_sharding *sh, int64_t delay_ms);

/* ---- ownership (owner.c; loop thread) ---- */

/* Makes the (empty) ownership set; -1 on OOM or overflow. sh_init calls it. */
int sh_owner_init(sh_sharding *sh);
void sh_owner_free(sh_sharding *sh);
/* 1 if this runner owns shard `shard` of `group` now (0 for an unknown group
 * or a shard out of range). */
int sh_owns(const sh_sharding *sh, const char *group, int32_t shard);
/* Adds a listener of ownership changes (for the runtime's life). -1 on OOM. */
int sh_own_listen(sh_sharding *sh, sh_own_fn fn, void *ud);
/* Marks the shard owned or not; tells the listeners when that changes.
 * Returns 1 if it changed, 0 if not, -1 for an unknown group or shard. */
int sh_own_set(sh_sharding *sh, const char *group, int32_t shard, int owned);
/* Single-node: every shard of every configured group owned (1) or not (0),
 * in O(1); listeners get one call per group with shard -1. */
void sh_own_all(sh_sharding *sh, int owned);
size_t sh_owned_count(const sh_sharding *sh);

/* ---- the public calls, for this sharding object (`sh` NULL: refused as
 * the runtime being NULL). As cruster_<name> in cruster/client.h. ---- */
cruster_status sh_send(sh_sharding *sh, const char *type, const char *id, const char *method,
                       const void *payload, size_t len, const cruster_call_opts *opts,
                       cruster_reply_fn fn, void *user, cruster_error **err);
cruster_status sh_notify(sh_sharding *sh, const char *type, const char *id, const char *method,
                         const void *payload, size_t len, const cruster_call_opts *opts,
                         cruster_reply_fn fn, void *user, cruster_error **err);
cruster_status sh_send_sync(sh_sharding *sh, const char *type, const char *id,
                            const char *method, const void *payload, size_t len,
                            const cruster_call_opts *opts, void **reply, size_t *reply_len,
                            cruster_error **err);
cruster_status sh_notify_sync(sh_sharding *sh, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_error **err);
cruster_status sh_poll_reply(sh_sharding *sh, const char *type, const char *id,
                             const char *method, const void *key, size_t key_len, int *ready,
                             void **reply, size_t *reply_len, cruster_error **err);
cruster_status sh_join_reply(sh_sharding *sh, const char *type, const char *id,
                             const char *method, const void *key, size_t key_len,
                             const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                             cruster_error **err);
cruster_status sh_send_stream(sh_sharding *sh, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_stream_item_fn item_fn,
                              cruster_reply_fn end_fn, void *user, cruster_error **err);
cruster_status sh_stream_open(sh_sharding *sh, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_stream **out,
                              cruster_error **err);
cruster_status sh_dead_letters(sh_sharding *sh, size_t limit, cruster_message_list **out,
                               cruster_error **err);
cruster_status sh_dead_letter_redeliver(sh_sharding *sh, int64_t request_id,
                                        cruster_error **err);

/* ---- inside the layer ---- */

/* A zeroed call that keeps a copy of its address (type, id, method). NULL
 * on OOM. Free with sh_call_free. */
sh_call *sh_call_new(const char *type, const char *id, const char *method);
void sh_call_complete(sh_sharding *sh, sh_call *c, int status, const void *data, size_t len,
                      const char *msg);
void sh_call_free(sh_call *c);
/* Resolves every waiter of a persisted request id. */
void sh_waiters_resolve(sh_sharding *sh, int64_t request_id, int status, const void *data,
                        size_t len, const char *msg);

/* cruster_call_opts as read under its growth rule (client.h): the fields the
 * caller's size covers, defaults for the others. */
typedef struct sh_call_opts {
  unsigned flags;
  int64_t timeout_ms;
  const void *key;
  size_t key_len;
  int64_t deliver_at_ms;
  const cruster_request *caller;
  const char *traceparent; /* unchecked: submit checks it */
} sh_call_opts;
int sh_call_opts_read(const cruster_call_opts *opts, sh_call_opts *out, cruster_error **err);

int sh_heap_insert(sh_sharding *sh, sh_call *c);
int sh_waiter_add(sh_sharding *sh, sh_call *c);
/* ---- streamed calls (stream.c; loop thread) ---- */

/* sh_send's submission for a streamed call (client.c): the call gets `st`
 * and `on_item`. */
int sh_submit_stream(sh_sharding *sh, const char *type, const char *id, const char *method,
                     const void *payload, size_t len, const cruster_call_opts *opts,
                     unsigned extra_flags, sh_stream *st,
                     void (*on_item)(sh_sharding *, sh_call *, cruster_request *, em_item *),
                     cruster_error **err);
/* Ties the stream to its call (at submission). */
void sh_stream_bind(sh_stream *st, sh_call *c);
/* The caller-side item of a streamed call `c` (c->st): `it` is taken. */
void sh_stream_push(sh_sharding *sh, sh_call *c, em_item *it);
/* The call completed (sh_call_complete): the end, after the items queued;
 * non-empty success data is one more, final item. Detaches c->st. */
void sh_stream_finish(sh_sharding *sh, sh_call *c, int status, const void *data, size_t len,
                      const char *msg);
/* Items waiting in the caller's stream of `c` (0 without one). */
size_t sh_stream_queued(const sh_call *c);
/* Items the caller's stream of `c` received so far (0 without one). */
int32_t sh_stream_received(const sh_call *c);

/* Routes a call posted by sh_send/sh_notify (loop thread). */
void sh_route(void *ud, rt_cmd *cmd);
/* Routes a call (in the deadline heap, addressed) to this runner's entity. */
void sh_route_owned(sh_sharding *sh, sh_call *c);

#endif
