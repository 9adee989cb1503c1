/* Internal: routing of calls and persisted delivery. */
#ifndef SH_SHARDING_INTERNAL_H
#define SH_SHARDING_INTERNAL_H

#include "core/prefix.h"

#include "runtime/runtime_internal.h"

/* A storage write a call (or a poll) waits for. */
typedef struct rt_save {
  cruster_runtime *rt;
  core_env *env;    /* owned */
  em_type *type;
  int rpc_index;
  int claim;
  rt_call *call;  /* NULL once the call completed (timeout) */
  /* Speculative delivery: handed to its handler before the save completed. */
  int spec;
  int spec_status;      /* what em_deliver said */
  cruster_request *req; /* the delivery, until bound off */
} rt_save;

/* cruster_call_opts as read under its growth rule (client.h): the fields the
 * caller's size covers, defaults for the others. */
typedef struct rt_call_opts {
  unsigned flags;
  int64_t timeout_ms;
  const void *key;
  size_t key_len;
  int64_t deliver_at_ms;
  const cruster_request *caller;
} rt_call_opts;
int rt_call_opts_read(const cruster_call_opts *opts, rt_call_opts *out, cruster_error **err);

int rt_heap_insert(cruster_runtime *rt, rt_call *c);
int rt_waiter_add(cruster_runtime *rt, rt_call *c);
/* Routes a call posted by cruster_send/notify (loop thread). */
void rt_route(void *ud, rt_cmd *cmd);

#endif
