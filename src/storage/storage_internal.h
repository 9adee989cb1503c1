/* Internal: the message-storage interface. Backends implement st_ops; the
 * runtime calls them on its loop thread only (attach excepted). A backend may complete a call
 * synchronously (inside the call) or later on the loop thread; callers must
 * accept both. */
#ifndef ST_STORAGE_INTERNAL_H
#define ST_STORAGE_INTERNAL_H

#include "core/prefix.h"

#include <cruster/client.h>
#include <cruster/storage.h>

#include <uv.h>

#include "core/config_internal.h"
#include "core/envelope.h"
#include "core/map.h"
#include "core/log.h"
#include "core/metrics_internal.h"
#include "core/snowflake.h"

typedef enum st_save_result {
  ST_SAVED = 0,             /* new message stored (and claimed when asked) */
  ST_SAVED_QUEUED = 3,      /* stored unclaimed: older messages for the same
                               entity wait in storage, so it must follow them */
  ST_DUPLICATE_PENDING = 1, /* same request id stored, no exit reply yet */
  ST_DUPLICATE_REPLIED = 2  /* same request id stored, with its exit reply */
} st_save_result;

/* An exit reply. */
typedef struct st_reply {
  int status; /* CRUSTER_OK or the failure code */
  const void *data;
  size_t len;
  const char *message; /* failure text, NULL on success */
} st_reply;

/* What save_request did or found (valid during the callback only). */
typedef struct st_saved {
  st_save_result result;
  /* The stored message's id. For a keyed call it is the first candidate
   * (core_key_candidates) whose row holds this call's identity, or was free:
   * a call whose PRID is taken by another identity gets another id. */
  int64_t request_id;
  int same_payload;         /* duplicates: the stored payload equals this one */
  const st_reply *existing; /* ST_DUPLICATE_REPLIED: the stored answer */
} st_saved;

/* `r` is never NULL; on failure (status != OK) only r->request_id means
 * anything. */
typedef void (*st_save_cb)(void *ud, int status, const char *errmsg, const st_saved *r);
typedef void (*st_done_cb)(void *ud, int status, const char *errmsg);
/* `msgs` (owned by the callee: free each with free()) are claimed messages to
 * deliver; `dead` are request ids that just became dead letters. */
typedef void (*st_poll_cb)(void *ud, int status, const char *errmsg, core_env **msgs, size_t n,
                           const int64_t *dead, size_t ndead);
/* 1 if this runner owns the shard right now. */
typedef int (*st_owned_fn)(void *ud, const char *group, int32_t shard);

/* found = a message with that id is stored; processed = it has its exit reply (r). */
typedef void (*st_reply_cb)(void *ud, int status, const char *errmsg, int found, int processed,
                            const st_reply *r);
/* The same for a keyed call looked up by its identity: request_id is the id
 * it is stored under (0 when not found). */
typedef void (*st_keyed_cb)(void *ud, int status, const char *errmsg, int64_t request_id,
                            int processed, const st_reply *r);

/* A keyed call's identity: the idempotency key (the type, entity id and
 * method are the message's). */
typedef struct st_key {
  const void *data;
  size_t len;
} st_key;

/* A dead letter, as listed. */
typedef struct st_dead {
  core_env *env; /* owned */
  int64_t attempts;
} st_dead;

struct cruster_message_list {
  size_t n;
  st_dead *v;
};

/* `list` is the callee's (free with cruster_message_list_free). */
typedef void (*st_list_cb)(void *ud, int status, const char *errmsg, cruster_message_list *list);

cruster_message_list *st_list_new(size_t cap);
/* Appends (takes env); returns 0 or -1 on OOM (env then freed). */
int st_list_add(cruster_message_list *l, size_t *cap, core_env *env, int64_t attempts);

/* What a backend gets from the layer that attaches it: the loop it runs on,
 * settings, and the two things it needs from above, as callbacks (storage
 * never calls up). Valid from attach until detach. */
typedef struct st_host {
  uv_loop_t *loop;
  const cruster_config *cfg;
  const core_logger *lg;
  cruster_metrics *metrics;
  core_snowflake *snowflake;
  void *ud; /* passed to the callbacks */
  /* Ids of the persisted messages being handled on this runner right now
   * (malloc'd, the storage frees it). NULL only on OOM: none is a non-NULL
   * array with *n = 0. */
  int64_t *(*inflight)(void *ud, size_t *n);
  /* Messages became claimable sooner than the poll expected: poll now.
   * Loop thread only (run_sync's fn runs there). */
  void (*wake)(void *ud);
  /* Runs fn(arg) on the loop thread and returns when it has run (at once
   * when called there): CRUSTER_OK, or CRUSTER_E_SHUTTING_DOWN when the
   * loop is gone (fn did not run). Any thread; a worker counts as blocked
   * meanwhile. */
  int (*run_sync)(void *ud, void (*fn)(void *arg), void *arg);
  /* 0: single-node -- this runtime is the storage's only user and owns
   * every shard from attach to detach (the PostgreSQL storage locks its
   * schema). 1: cluster -- several runners share the storage; each writes
   * and claims the messages of the shards it owns, which the sharding layer
   * tells it of (shards_acquired, shards_released): until a shard is
   * acquired, nothing of it is known. */
  int cluster;
} st_host;

struct st_wf_ops;

typedef struct st_ops {
  const char *name;
  /* Called once by cruster_runtime_new, on its caller's thread before the
   * loop thread starts (it may block). */
  cruster_status (*attach)(cruster_storage *s, const st_host *host, cruster_error **err);
  /* Optional (NULL: never). 1 when a save_request(m, claim=1) made now is
   * sure, if it succeeds, to store `m` claimed (ST_SAVED): no older
   * unanswered message of its entity is stored. The runtime may then hand
   * `m` to its handler before the save completes; it acts on the handler's
   * answer only after. */
  int (*claims_now)(cruster_storage *s, const core_env *m);
  /* Stores a request. Unkeyed (key NULL): m->request_id is fresh; a stored
   * row with that id is an error, never a duplicate. Keyed (m->keyed, key
   * given): deduplicated on the full identity -- type, entity id, method and
   * the key's bytes, compared as such -- over the candidate ids of
   * core_key_candidates: a stored call with this identity is a duplicate
   * (ST_DUPLICATE_*); otherwise the message takes the first free candidate
   * (reported in r->request_id), or CRUSTER_E_CONFLICT when every candidate
   * holds another call. With claim=1 a new message is marked as being
   * delivered by this runner (not returned by poll) -- unless an older
   * unclaimed message for the same entity (deliver_at 0) is still stored:
   * then it is stored unclaimed (ST_SAVED_QUEUED), which keeps per-entity
   * send order. */
  void (*save_request)(cruster_storage *s, const core_env *m, const st_key *key, int claim,
                       st_save_cb cb, void *ud);
  /* Optional: the reply of claimed message `m` was stored and committed
   * elsewhere (a transactional handler's transaction, wf_storage.h
   * commit_reply): the backend updates what it knows, nothing is written. */
  void (*replied)(cruster_storage *s, const core_env *m);
  /* Stores the exit reply (first one wins) and marks the message processed. */
  void (*save_reply)(cruster_storage *s, const core_env *m, const st_reply *r, st_done_cb cb,
                     void *ud);
  /* Claims up to `limit` due, unprocessed, unclaimed messages of owned
   * shards (owned(owned_ud, group, shard) = 1; owned NULL: every shard),
   * oldest first (FIFO per entity). A message of a shard not owned is never
   * claimed, however old. Each claim is one delivery
   * attempt; a message claimed more than `max_retries` times (> 0) becomes a
   * dead letter (exit reply CRUSTER_E_DEAD_LETTER) and is reported in dead. */
  void (*poll)(cruster_storage *s, int64_t now_ms, size_t limit, int64_t max_retries,
               st_owned_fn owned, void *owned_ud, st_poll_cb cb, void *ud);
  /* Optional (NULL: nothing to do). Cluster mode: this runner has just
   * taken the locks of `shards` (n of them, each in 0..shards_per_group-1)
   * of `group`. The backend gives back the claims on their messages that
   * another runner (or an earlier life of this one) left -- its owner died
   * or let go, so they are stale -- except those of messages being handled
   * here (host inflight); then it learns which of their entities have
   * stored unanswered messages. Until that is done, new messages of those
   * shards are ordered by asking the storage. cb(ud, CRUSTER_OK, NULL) once
   * done (then poll: the given-back messages are due), possibly at once;
   * CRUSTER_E_SHUTTING_DOWN when the storage is detached first. A failed
   * attempt is retried by the backend. Single-node mode: cb at once. */
  void (*shards_acquired)(cruster_storage *s, const char *group, const int32_t *shards, size_t n,
                          st_done_cb cb, void *ud);
  /* Optional. Cluster mode: this runner no longer owns `shards` of `group`
   * (it let them go or lost them). What it knew of their entities is
   * forgotten: their new messages are ordered by asking the storage until
   * the shards are acquired again. Single-node mode: nothing. */
  void (*shards_released)(cruster_storage *s, const char *group, const int32_t *shards, size_t n);
  /* Gives a claimed message back without an answer. attempt=0 when it was
   * never handed to a handler (mailbox full): then it does not count. */
  void (*release)(cruster_storage *s, const core_env *m, int attempt);
  /* Gives claimed message `m` back unanswered (a workflow execution that
   * suspended): due again at `wake_at` (Unix ms; INT64_MAX = only when
   * woken) -- or at once when its wake counter moved since the run read it
   * (`wake_seq` >= 0; see wf_storage.h). progress=1: the delivery did not
   * fail, its attempt is not counted (attempts start again at 0). */
  void (*park)(cruster_storage *s, const core_env *m, int64_t wake_at, int64_t wake_seq,
               int progress, st_done_cb cb, void *ud);
  /* The workflow side (wf_storage.h): sets *ops, returns its impl. */
  void *(*wf)(cruster_storage *s, const struct st_wf_ops **ops);
  /* Earliest deliver_at (Unix ms) among unprocessed unclaimed messages, 0 if
   * none (parked messages waiting to be woken, INT64_MAX, do not count). */
  int64_t (*next_due)(cruster_storage *s);
  /* Looks up a message and its exit reply. */
  void (*get_reply)(cruster_storage *s, int64_t request_id, st_reply_cb cb, void *ud);
  /* Looks up the keyed call (type, id, method, key) by its identity. */
  void (*get_keyed)(cruster_storage *s, const char *type, const char *id, const char *method,
                    const st_key *key, st_keyed_cb cb, void *ud);
  /* Lists up to `limit` dead letters, oldest first. */
  void (*list_dead)(cruster_storage *s, size_t limit, st_list_cb cb, void *ud);
  /* Turns dead letter `request_id` back into an undelivered message with no
   * attempts; CRUSTER_E_NOT_FOUND when it is not a dead letter. */
  void (*redeliver)(cruster_storage *s, int64_t request_id, st_done_cb cb, void *ud);
  /* Calls cb(ud) once every queued operation has completed (graceful stop).
   * May call it at once. After detach it is never called. */
  void (*flush)(cruster_storage *s, void (*cb)(void *ud), void *ud);
  /* Called when the runtime stops, on the loop thread -- possibly twice
   * (early when the flush times out, then at close) -- or by
   * cruster_runtime_new when it fails, attach included; before destroy. */
  void (*detach)(cruster_storage *s);
  void (*destroy)(cruster_storage *s);
} st_ops;

struct cruster_storage {
  const st_ops *ops;
  void *impl;
};

#endif
