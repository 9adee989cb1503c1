/* Internal: the entity layer -- entity types, instances, mailboxes,
 * concurrency, idle eviction, the set of running requests and the request
 * (delivery) object, all owned by an em_manager. It runs on the loop layer
 * and knows nothing above it: a deliverer hands it an envelope with
 * callbacks (em_sink) and hears back through them; the layer that owns the
 * manager is told the rest through em_hooks. */
#ifndef EM_ENTITY_INTERNAL_H
#define EM_ENTITY_INTERNAL_H

#include "core/prefix.h"

#include <cruster/cruster.h>
#include <stdatomic.h>
#include <stddef.h>
#include <uv.h>

#include "core/config_internal.h"
#include "core/envelope.h"
#include "core/log.h"
#include "core/map.h"
#include "core/metrics_internal.h"
#include "loop/loop.h"

typedef struct em_type em_type;
typedef struct em_instance em_instance;
typedef struct em_manager em_manager;

typedef struct em_rpc {
  char *name;
  char *group; /* RPC group it came from, NULL for the entity's own */
  unsigned flags;
  cruster_rpc_fn fn;
  void *user;
} em_rpc;

typedef struct em_rpc_list {
  em_rpc *v;
  size_t n, cap;
} em_rpc_list;

struct cruster_entity_def {
  char *name;
  char *shard_group;
  int64_t max_idle_ms; /* -1 = config default */
  int64_t mailbox;     /* -1 = config default */
  int64_t concurrency; /* -1 = config default */
  em_rpc_list rpcs;
};

struct cruster_rpc_group {
  char *name;
  em_rpc_list rpcs;
};

struct em_type {
  char *name;
  char *shard_group;
  int64_t max_idle_ms, mailbox, concurrency;
  em_rpc_list rpcs;
  em_instance *idle_head, *idle_tail; /* instances with nothing to do, oldest first */
  core_metric *m_instances, *m_evictions, *m_mailbox_full, *m_ok, *m_err, *m_duration;
};

struct em_instance {
  em_type *type;
  char *key; /* "type\0id" (klen = key_len) */
  size_t key_len;
  const char *id;
  cruster_request *q_head, *q_tail; /* queued, not running */
  size_t queued, running;
  int64_t idle_since; /* monotonic ms */
  em_instance *idle_prev, *idle_next;
  int in_idle;
  int backlog; /* persisted messages for it wait in storage for room */
};

#define EM_REPLY_SMALL 64

/* Streamed calls (cruster_send_stream): at most this many items a handler
 * yielded wait for their caller; the next yield blocks until one is taken
 * (docs/architecture.md, "Streamed calls"). */
#define EM_STREAM_WINDOW 16

/* One yielded item (one allocation); whoever holds it frees it with free(). */
typedef struct em_item {
  struct em_item *next;
  int32_t seq;
  size_t len;
  unsigned char data[];
} em_item;

/* The producing side of a streamed call, in its request. `mu` guards
 * everything here, and -- for a streamed request -- the request's answer
 * (em_request_answer takes it), so an item is always posted before the
 * answer. */
typedef struct em_stream {
  uv_mutex_t mu;
  uv_cond_t cv;
  em_item *head, *tail; /* yielded, not yet taken by the loop */
  int32_t next_seq;     /* the next item's sequence number */
  int outstanding;      /* yielded and not yet taken by the caller (credits) */
  int closed;           /* nobody takes items any more */
  int posted;           /* `cmd` is queued on the loop */
  rt_cmd cmd;           /* moves the items to the deliverer (loop) */
  struct cruster_request *req;
} em_stream; /* bytes; a multiple of sizeof(max_align_t) */

/* How a deliverer hears of its delivery (em_deliver). `ud` is the
 * deliverer's, given with the delivery. */
typedef struct em_sink {
  /* The handler answered (a held delivery: and its hold ended ok), and the
   * delivery was not withdrawn. `r` is the deliverer's now: it reads the
   * answer (status, reply, reply_len, errmsg) and lets go of `r` with
   * em_request_free, at once or later. */
  void (*answered)(void *ud, cruster_request *r);
  /* Stop (em_interrupt_all): `r` was taken out of its mailbox unstarted. Not
   * for a withdrawn or held delivery, nor one whose hold failed. The
   * manager frees `r` afterwards. */
  void (*dropped)(void *ud, cruster_request *r);
  /* Streamed calls: an item the handler yielded, in order (seq 0, 1, ...),
   * always before the answer. `it` is the deliverer's (free it). The item
   * counts against the handler's window until the deliverer gives it back
   * with em_request_stream_credit. NULL: items are dropped (and the
   * handler's next yield fails). */
  void (*item)(void *ud, cruster_request *r, em_item *it);
  /* Optional: the manager freed `r` while it was still the deliverer's
   * (not withdrawn): drop any pointer to it. */
  void (*unbound)(void *ud, cruster_request *r);
  /* A held delivery was freed before its hold ended (em_hold_end): `hold`,
   * the token given to em_deliver, no longer refers to it. */
  void (*hold_dropped)(void *hold);
} em_sink;

/* What the manager tells the layer that owns it (all on the loop thread). */
typedef struct em_hooks {
  void *ud;
  /* Room was made in the mailbox of an instance that refused a persisted
   * message (em_deliver: CRUSTER_E_MAILBOX_FULL); such messages wait
   * elsewhere (in storage) and may be delivered again. */
  void (*room)(void *ud);
  /* A handler's answer was processed and no handler is running now. */
  void (*idle)(void *ud);
  /* Transactional handlers (CRUSTER_RPC_TRANSACTIONAL), on the handler's
   * or answering thread; all NULL: no transactions (the handler runs
   * without). begin opens one (*tx NULL: none to open) and returns
   * CRUSTER_OK or a failure; handle is what cruster_request_pg returns;
   * commit_reply stores the reply of persisted message `env` in `tx` and
   * commits (CRUSTER_OK, or a failure: nothing committed); rollback ends it.
   * Both finish `tx`. */
  int (*tx_begin)(void *ud, void **tx);
  void *(*tx_handle)(void *ud, void *tx);
  int (*tx_commit_reply)(void *ud, void *tx, const core_env *env, const void *data, size_t len);
  void (*tx_rollback)(void *ud, void *tx);
} em_hooks;

/* The entity manager. Everything under "loop-owned" is touched only on the
 * loop thread. */
struct em_manager {
  rt_loop *loop;
  const cruster_config *cfg;
  const core_logger *lg;
  cruster_metrics *metrics;
  /* What cruster_request_runtime returns: the owner's handle, never used
   * here. */
  cruster_runtime *owner;
  em_hooks hooks;
  core_metric *m_types; /* cluster_entity_types */

  /* ---- loop-owned ---- */
  uv_timer_t reaper_timer;
  core_map types;     /* name -> em_type* */
  core_map instances; /* "type\0id" -> em_instance* */
  cruster_request *live_head; /* every delivery not yet freed */
  /* The deliveries whose handler was started and whose answer the loop has
   * not processed yet: the only valid opts.caller values. An intrusive hash
   * set keyed by address. */
  cruster_request **run_buckets;
  size_t run_nbuckets, run_count;
  size_t running; /* handlers running */
  int stopping;   /* em_interrupt_all ran: nothing is delivered any more */
  int closed;     /* em_close: answers are dropped */
};

/* A delivery, and the handle its handler gets. Two owners hold it: the loop
 * (from em_deliver until em_request_free) and, while it runs, the handler
 * (run_handler, until the handler function returns); the last one to let go
 * frees it. So the handle stays valid until the handler has returned and the
 * answer has been processed, whichever comes last: a second answer in that
 * time is refused (CRUSTER_E_STATE), not a use after free. */
struct cruster_request {
  rt_job job;
  rt_cmd done;
  em_manager *em;
  em_instance *inst;
  const em_rpc *rpc;
  core_env *env;
  /* The deliverer's callbacks (NULL: nobody waits for the answer) and their
   * `ud` (NULL once withdrawn: em_request_withdraw). */
  const em_sink *sink;
  void *ud;
  cruster_request *next;                /* mailbox queue */
  cruster_request *live_prev, *live_next; /* manager's list of live deliveries */
  _Atomic int refs;      /* owners: the loop, the running handler */
  uint64_t started_ns;   /* the handler started (worker) */
  uint64_t answered_ns;  /* it answered (answering thread) */
  int running;           /* handed to the pool, answer not processed yet */
  cruster_request *run_next; /* in the manager's set of running requests */
  /* A held delivery: the deliverer's token until em_hold_end (NULL then);
   * the handler answered meanwhile; the hold ended in failure. */
  void *hold;
  int finished;
  int hold_failed;
  _Atomic int cancelled;
  _Atomic int answered;
  /* A streamed call's items (env->stream), NULL otherwise. */
  em_stream *stream;
  /* A transactional handler's open transaction (NULL when none or ended);
   * its reply was committed in it; the transaction failed (begin or commit:
   * the message must be delivered again, nothing was stored). */
  void *tx;
  int tx_committed;
  int tx_failed;
  /* A park instead of an answer (em_request_park): the message goes back to
   * storage unanswered, due at park_at unless woken since park_seq. */
  int parked;
  int park_progress;
  int64_t park_at, park_seq;
  /* the answer, written by the answering thread before posting `done` */
  int status;
  void *reply; /* reply_small, or malloc'ed when larger */
  size_t reply_len;
  char *errmsg;
  /* Small replies are copied here: no allocation on the answering thread
   * and no cross-thread free on the loop. */
  max_align_t reply_small[EM_REPLY_SMALL / sizeof(max_align_t)];
};

void em_rpc_list_free(em_rpc_list *l);
int em_rpc_list_add(em_rpc_list *l, const char *name, const char *group, unsigned flags,
                    cruster_rpc_fn fn, void *user);
const em_rpc *em_rpc_list_find(const em_rpc_list *l, const char *name);

/* ---- the manager (entity/manager.c) ---- */

/* Sets up `m` on `loop` (whose libuv loop exists; its thread may not run
 * yet). cfg, lg and metrics must outlive it. */
cruster_status em_init(em_manager *m, rt_loop *loop, const cruster_config *cfg,
                       const core_logger *lg, cruster_metrics *metrics, cruster_runtime *owner,
                       const em_hooks *hooks, cruster_error **err);
/* Frees every type, instance and delivery. The worker pool is joined and
 * the loop closed: no handler holds a request any more. */
void em_free(em_manager *m);

/* cruster_runtime_register_entity for this manager (m NULL: refused as the
 * runtime being NULL). Any thread but the loop. */
cruster_status em_register(em_manager *m, const cruster_entity_def *d, cruster_error **err);
em_type *em_type_find(em_manager *m, const char *name);
/* Finds the dispatchable RPC for a call; fills an error message on failure. */
int em_lookup_rpc(em_type *t, const char *method, int internal, char *msg, size_t msgsz);
/* 1 if `p` is the address of a request this manager is handling (its
 * handler started, its answer not processed yet). Compares addresses only:
 * `p` may be any value and is never read through. */
int em_request_is_running(const em_manager *m, const void *p);

/* Delivers `env` (ownership passes on success) to the instance of type `t`
 * for its id. `sink` (NULL: nobody waits for the answer) and `ud`: how the
 * deliverer hears back. `hold` (NULL: none): the delivery is held -- the
 * handler may run, but its answer waits for em_hold_end; `hold` is the
 * deliverer's token (em_sink.hold_dropped). `link` (may be NULL) receives
 * the delivery before its handler can start. Returns CRUSTER_OK,
 * CRUSTER_E_MAILBOX_FULL, or CRUSTER_E_SHUTTING_DOWN/NOMEM (env then still
 * the caller's). */
int em_deliver(em_manager *m, em_type *t, core_env *env, int rpc_index, const em_sink *sink,
               void *ud, void *hold, cruster_request **link);
/* The hold of a delivery ended: ok, its answer (if any yet) goes to its
 * sink; failed, the answer is discarded, and a delivery whose handler has
 * not started never runs (it may be freed at once). */
void em_hold_end(em_manager *m, cruster_request *r, int ok);
/* The deliverer no longer waits for the answer: a delivery not started yet
 * is dropped unstarted, a running one's answer is discarded. */
static inline void em_request_withdraw(cruster_request *r) { r->ud = NULL; }
/* The handler sees cruster_request_cancelled() = 1, and a yield waiting for
 * room returns (any thread while `r` is valid). */
void em_request_cancel(cruster_request *r);
/* A streamed call's caller took `n` items: the handler may yield as many
 * more (loop thread). */
void em_request_stream_credit(cruster_request *r, int n);
/* The loop lets go of a delivery (loop thread); it is freed once its
 * handler (if running) has returned too. */
void em_request_free(em_manager *m, cruster_request *r);

/* Ids of the persisted messages being handled here (malloc'd; NULL on OOM). */
int64_t *em_inflight_persisted(em_manager *m, size_t *n);
/* Stop: nothing new is delivered, idle instances stay; running handlers
 * are cancelled (flag), queued deliveries dropped (em_sink.dropped). */
void em_interrupt_all(em_manager *m);
/* The shard (`group`, `shard`) moved away: its running handlers are
 * cancelled (flag), its queued deliveries dropped (em_sink.dropped); new
 * deliveries are still taken (the caller routes them elsewhere first).
 * Returns how many were cancelled or dropped. */
size_t em_interrupt_shard(em_manager *m, const char *group, int32_t shard);
/* Handlers of shard (`group`, `shard`) running now. */
size_t em_running_in_shard(const em_manager *m, const char *group, int32_t shard);
/* Stop, once handlers had their time: later answers are dropped. */
void em_close(em_manager *m);

/* Answers a persisted delivery with a park: its message goes back to
 * storage unanswered, due again at `wake_at` (Unix ms; INT64_MAX = when
 * woken) -- or at once when woken after the run read `wake_seq` (< 0: no
 * check). `progress`: the attempt is not counted. The workflow engine's
 * answer for a suspended execution. Returns as em_request_answer. */
int em_request_park(cruster_request *r, int64_t wake_at, int64_t wake_seq, int progress);

/* Called from any thread by cruster_request_reply/fail: records the answer
 * and hands the request back to the loop. Returns CRUSTER_OK;
 * CRUSTER_E_STATE when the request was answered already (nothing changes);
 * CRUSTER_E_SHUTTING_DOWN when the loop is gone. */
int em_request_answer(cruster_request *r, int status, const void *data, size_t len,
                      const char *msg);

#endif
