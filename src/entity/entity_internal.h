/* Internal: entity types, instances, and the request (delivery) object. */
#ifndef EM_ENTITY_INTERNAL_H
#define EM_ENTITY_INTERNAL_H

#include "core/prefix.h"

#include "runtime/runtime_internal.h"
#include <stddef.h>

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

#define EM_REPLY_SMALL 64 /* bytes; a multiple of sizeof(max_align_t) */

/* A delivery, and the handle its handler gets. Two owners hold it: the loop
 * (from em_deliver until em_request_free) and, while it runs, the handler
 * (run_handler, until the handler function returns); the last one to let go
 * frees it. So the handle stays valid until the handler has returned and the
 * answer has been processed, whichever comes last: a second answer in that
 * time is refused (CRUSTER_E_STATE), not a use after free. */
struct cruster_request {
  rt_job job;
  rt_cmd done;
  cruster_runtime *rt;
  em_instance *inst;
  const em_rpc *rpc;
  core_env *env;
  rt_call *call; /* waiting caller (non-persisted), or NULL */
  cruster_request *next;                /* mailbox queue */
  cruster_request *live_prev, *live_next; /* runtime's list of live deliveries */
  _Atomic int refs;      /* owners: the loop, the running handler */
  uint64_t started_ns;   /* the handler started (worker) */
  uint64_t answered_ns;  /* it answered (answering thread) */
  int running;           /* handed to the pool, answer not processed yet */
  cruster_request *run_next; /* in the runtime's set of running requests */
  /* A speculative persisted delivery: the save it waits for (NULL once
   * done); the handler answered meanwhile; the save failed. */
  struct rt_save *save;
  int finished;
  int save_failed;
  _Atomic int cancelled;
  _Atomic int answered;
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

/* The loop lets go of a delivery (loop thread); it is freed once its
 * handler (if running) has returned too. */
void em_request_free(cruster_runtime *rt, cruster_request *r);

/* Called from any thread by cruster_request_reply/fail: records the answer
 * and hands the request back to the loop. Returns CRUSTER_OK;
 * CRUSTER_E_STATE when the request was answered already (nothing changes);
 * CRUSTER_E_SHUTTING_DOWN when the loop is gone. */
int em_request_answer(cruster_request *r, int status, const void *data, size_t len,
                      const char *msg);

#endif
