/*
 * cruster/entity.h -- entity types, their RPCs, and the request handle.
 *
 * An entity type is a named set of RPC handlers. An instance (type + id) is
 * created on its first message on the runner that owns its shard, and
 * evicted after being idle for its max idle time. Instances hold no state of
 * their own: keep state in your database.
 *
 *   cruster_entity_def *d;
 *   cruster_entity_def_new("Counter", &d, &err);
 *   cruster_entity_def_add_rpc(d, "increment", CRUSTER_RPC_PERSISTED, on_increment, app, &err);
 *   cruster_entity_def_add_rpc(d, "get", 0, on_get, app, &err);
 *   cruster_runtime_register_entity(rt, d, &err);
 *   cruster_entity_def_free(d);
 *
 * Handlers run on the runtime's worker pool, never on its loop thread. A
 * handler answers through its request handle -- before it returns, or later
 * from any thread -- exactly once, with cruster_request_reply or
 * cruster_request_fail.
 *
 * Lifetime of a request handle. The handle a handler receives stays valid
 * until BOTH its handler function has returned AND the request has been
 * answered; then the runtime frees it. So:
 *  - inside the handler, the handle can be used to its end, also after the
 *    answer (accessors keep working); a second answer there is refused with
 *    CRUSTER_E_STATE and changes nothing -- always, whatever the timing;
 *  - a handler that returns without answering keeps the handle valid until
 *    it answers, from any thread; after that answer (outside the handler) the
 *    handle is gone, and touching it again -- a second answer included -- is
 *    undefined behaviour, like a double free.
 * Why not detect every late second answer? That needs handles that are never
 * reused: memory that grows with every request, or a process-wide handle
 * table (global state). Tying the lifetime to the handler's return catches
 * the usual mistake (answering twice in one handler, say on an error path)
 * deterministically, and frees every handle as soon as nobody may hold it.
 * Unanswered handles also stay valid after cruster_runtime_stop, until
 * cruster_runtime_free.
 */
#ifndef CRUSTER_ENTITY_H
#define CRUSTER_ENTITY_H

#include "common.h"
#include "runtime.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A definition of an entity type, built before registration. Opaque. */
typedef struct cruster_entity_def cruster_entity_def;
/** A reusable bundle of RPCs that several entity types can include. Opaque. */
typedef struct cruster_rpc_group cruster_rpc_group;
/** One incoming message, handed to a handler. Opaque. */
typedef struct cruster_request cruster_request;

/** RPC flags; combine with |. 0 = non-persisted and public. */
typedef enum cruster_rpc_flags {
  /** Calls are written to message storage first: at-least-once delivery. */
  CRUSTER_RPC_PERSISTED = 1u << 0,
  /** Callable from entities and workflows only, never from a public client. */
  CRUSTER_RPC_PROTECTED = 1u << 1,
  /** Never dispatchable (an internal helper, declared for completeness). */
  CRUSTER_RPC_PRIVATE = 1u << 2,
  /**
   * Persisted, and run inside a storage transaction: with PostgreSQL
   * storage the handler gets the connection of an open transaction
   * (cruster_request_pg, in pg.h), and its reply is stored in that same
   * transaction when it answers with cruster_request_reply -- so its SQL
   * takes effect exactly once, together with the stored reply, however
   * often the message is delivered. A failure (cruster_request_fail) rolls
   * the SQL back and stores the failure as the reply. A commit that fails
   * leaves neither: the message is delivered again. With memory storage
   * there is no transaction (cruster_request_pg returns NULL).
   */
  CRUSTER_RPC_TRANSACTIONAL = 1u << 3
} cruster_rpc_flags;

/*
 * cruster_rpc_fn
 *   A handler. `req` is valid until this function has returned and the
 *   request has been answered (reply or fail), whichever comes last -- see
 *   "Lifetime of a request handle" above. `user` is the pointer given with
 *   the RPC.
 * Threads: runs on a worker thread of the runtime.
 */
typedef void (*cruster_rpc_fn)(void *user, cruster_request *req);

/*
 * cruster_entity_def_new
 *   Starts a definition of entity type `name` (1..CRUSTER_MAX_NAME_LEN bytes
 *   of UTF-8, no control characters). Defaults: shard group "default"; max
 *   idle time, mailbox capacity and concurrency from the runtime's config
 *   ("entity_max_idle_time", "entity_mailbox_capacity",
 *   "entity_max_concurrent_requests").
 * Returns: CRUSTER_OK with *out set (free with cruster_entity_def_free);
 *   CRUSTER_E_INVALID_ARGUMENT (bad name, NULL out); CRUSTER_E_NOMEM.
 * Threads: any; a definition is used from one thread at a time.
 */
CRUSTER_API cruster_status cruster_entity_def_new(const char *name, cruster_entity_def **out,
                                                  cruster_error **err);

/** Frees a definition (registration copies it). NULL is a no-op. */
CRUSTER_API void cruster_entity_def_free(cruster_entity_def *def);

/*
 * cruster_entity_def_set_shard_group
 *   Sets the shard group (a name as for types). It must be one of the
 *   runtime's "shard_groups", or registration fails.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_entity_def_set_shard_group(cruster_entity_def *def,
                                                              const char *group,
                                                              cruster_error **err);

/*
 * cruster_entity_def_set_max_idle_time
 *   An instance with no message in its mailbox for `ms` milliseconds is
 *   evicted; its next message creates it again. 1 <= ms <= 9223372036854
 *   (INT64_MAX / 10^6, about 292 years: the cap of every duration setting,
 *   as for "entity_max_idle_time").
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (def NULL, ms out of
 *   range; the message gives the range).
 */
CRUSTER_API cruster_status cruster_entity_def_set_max_idle_time(cruster_entity_def *def,
                                                                int64_t ms, cruster_error **err);

/*
 * cruster_entity_def_set_mailbox_capacity
 *   At most `capacity` (>= 1) messages may be queued or running in one
 *   instance; further calls get CRUSTER_E_MAILBOX_FULL (persisted messages
 *   wait in storage instead and are delivered when room frees).
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (capacity < 1).
 */
CRUSTER_API cruster_status cruster_entity_def_set_mailbox_capacity(cruster_entity_def *def,
                                                                   int64_t capacity,
                                                                   cruster_error **err);

/*
 * cruster_entity_def_set_concurrency
 *   Up to `n` handlers of one instance run at once (0 = no limit). With 1,
 *   the default, messages run one at a time in arrival order.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (n < 0).
 */
CRUSTER_API cruster_status cruster_entity_def_set_concurrency(cruster_entity_def *def, int64_t n,
                                                              cruster_error **err);

/*
 * cruster_entity_def_add_rpc
 *   Adds RPC `method` (a name as for types) handled by `fn` with `user`,
 *   with `flags` from cruster_rpc_flags. `user` must stay valid while the
 *   runtime it is registered with lives.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (bad name or flags, fn
 *   NULL); CRUSTER_E_ALREADY_EXISTS (method already defined); CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_entity_def_add_rpc(cruster_entity_def *def, const char *method,
                                                      unsigned flags, cruster_rpc_fn fn,
                                                      void *user, cruster_error **err);

/*
 * cruster_rpc_group_new / cruster_rpc_group_free / cruster_rpc_group_add_rpc
 *   An RPC group is a named bundle of RPCs defined once and included in
 *   several entity types. Its methods behave exactly like the entity's own;
 *   handlers see the including entity's type and id in their request.
 *   add_rpc is as cruster_entity_def_add_rpc.
 */
CRUSTER_API cruster_status cruster_rpc_group_new(const char *name, cruster_rpc_group **out,
                                                 cruster_error **err);
CRUSTER_API void cruster_rpc_group_free(cruster_rpc_group *group);
CRUSTER_API cruster_status cruster_rpc_group_add_rpc(cruster_rpc_group *group, const char *method,
                                                     unsigned flags, cruster_rpc_fn fn, void *user,
                                                     cruster_error **err);

/*
 * cruster_entity_def_add_group
 *   Includes a copy of `group`'s RPCs in the definition (later changes of
 *   the group do not affect it).
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_ALREADY_EXISTS
 *   (a method of the group clashes with one already in the definition; the
 *   message names both); CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_entity_def_add_group(cruster_entity_def *def,
                                                        const cruster_rpc_group *group,
                                                        cruster_error **err);

/*
 * cruster_runtime_register_entity
 *   Registers a copy of `def` with the runtime (before or after start).
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (no RPCs, NULL);
 *   CRUSTER_E_INVALID_CONFIG (shard group not in "shard_groups");
 *   CRUSTER_E_ALREADY_EXISTS (type already registered);
 *   CRUSTER_E_SHUTTING_DOWN; CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_runtime_register_entity(cruster_runtime *rt,
                                                           const cruster_entity_def *def,
                                                           cruster_error **err);

/*
 * Request accessors. Usable while the handle is valid (see "Lifetime of a
 * request handle" above: inside the handler also after its answer); every
 * returned pointer lives as long as the handle. NULL `req` gives NULL, 0, or
 * -1 (shard). Any thread.
 */
/** The request payload (`*len` receives its size; the pointer may be NULL for 0 bytes). */
CRUSTER_API const void *cruster_request_payload(const cruster_request *req, size_t *len);
CRUSTER_API const char *cruster_request_entity_type(const cruster_request *req);
CRUSTER_API const char *cruster_request_entity_id(const cruster_request *req);
CRUSTER_API const char *cruster_request_method(const cruster_request *req);
CRUSTER_API const char *cruster_request_shard_group(const cruster_request *req);
CRUSTER_API int32_t cruster_request_shard(const cruster_request *req);
/**
 * The caller's W3C traceparent (cruster_call_opts.traceparent: 55
 * characters, checked), or NULL when the call carried none. Pass it on in
 * the options of the calls the handler makes to continue the trace.
 */
CRUSTER_API const char *cruster_request_traceparent(const cruster_request *req);
/** The request id: a snowflake; for a call with an idempotency key,
 *  cruster_persisted_request_id(type, id, method, key) -- or, when that id
 *  already holds a call of another identity (the hash collided), another id
 *  derived from the whole identity. Stable for the call's life in storage. */
CRUSTER_API int64_t cruster_request_id(const cruster_request *req);
/** 1 if the message came through message storage. */
CRUSTER_API int cruster_request_is_persisted(const cruster_request *req);
/** 1 if the caller is another entity or a workflow (not a public client):
 *  its call named, in opts.caller, a request its runtime was handling. */
CRUSTER_API int cruster_request_from_entity(const cruster_request *req);
/** The runtime that delivered the request. */
CRUSTER_API cruster_runtime *cruster_request_runtime(const cruster_request *req);

/*
 * cruster_request_cancelled
 *   Returns 1 once nobody needs the answer any more: the caller's deadline
 *   passed, the instance is being interrupted (shard moved away, runtime
 *   stopping). A long handler should check it and give up early. Any thread.
 */
CRUSTER_API int cruster_request_cancelled(const cruster_request *req);

/*
 * cruster_request_reply
 *   Answers with success and `len` bytes at `data` (copied; NULL allowed for
 *   len 0). Whatever the result (but CRUSTER_E_STATE) this is the request's
 *   one answer: its caller hears of it, and the handle is released as
 *   "Lifetime of a request handle" above describes.
 * Returns: CRUSTER_OK (also when the caller already gave up: the answer is
 *   then dropped); CRUSTER_E_PAYLOAD_TOO_LARGE (more than
 *   "max_payload_size" bytes -- any size_t value, SIZE_MAX included: the
 *   caller gets that error instead); CRUSTER_E_INVALID_ARGUMENT (data NULL
 *   with len > 0: the caller gets CRUSTER_E_HANDLER instead; or req NULL);
 *   CRUSTER_E_STATE (the request was answered already: this call changes
 *   nothing); CRUSTER_E_SHUTTING_DOWN (the runtime stopped first).
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_request_reply(cruster_request *req, const void *data,
                                                 size_t len);

/*
 * cruster_request_fail
 *   Answers with an error: `status` -- one of the codes of cruster_status or
 *   an application code <= CRUSTER_E_APPLICATION -- and `message` (copied;
 *   NULL = the code's standard message), which reach the caller unchanged.
 *   Any other status is a handler bug and is answered with
 *   CRUSTER_E_HANDLER: a status >= 0 with `message` as given; an unknown
 *   negative code (say -500) with a message that names the code and quotes
 *   `message`. The handle is released as for cruster_request_reply.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (status >= 0 or unknown,
 *   answered as above; or req NULL); CRUSTER_E_STATE (answered already:
 *   nothing changes); CRUSTER_E_SHUTTING_DOWN (the runtime stopped first).
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_request_fail(cruster_request *req, int status,
                                                const char *message);

/*
 * Streamed answers (cruster_send_stream in client.h).
 *
 * A call made with cruster_send_stream reaches the same handler as any call;
 * the handler may then send items before its answer:
 *
 *   for (...) if (cruster_request_yield(req, item, n) != CRUSTER_OK) break;
 *   cruster_request_reply(req, NULL, 0);                // the end
 *
 * The caller receives the items in order (sequence 0, 1, 2, ...), then the
 * end. The answer ends the stream: cruster_request_reply with no bytes is a
 * plain end; with bytes, those bytes are one more, final item (so a handler
 * that knows nothing of streams -- it only replies -- gives its reply as the
 * stream's single item); cruster_request_fail ends the stream with that
 * error (code and message reach the caller unchanged, also across runners),
 * after the items yielded before it.
 *
 * Backpressure: at most 16 items may wait between a handler and its caller
 * (yielded, not yet taken by the caller's item callback or iterator). A
 * yield beyond that blocks the handler's thread until the caller takes one,
 * the caller goes away (deadline, cancellation, a remote caller
 * disconnecting) or the runtime stops -- so memory stays bounded whatever the
 * speeds. While it blocks, the worker pool may start another worker.
 *
 * A streamed call is never persisted: a method declared CRUSTER_RPC_PERSISTED
 * (or TRANSACTIONAL) refuses cruster_send_stream with
 * CRUSTER_E_INVALID_ARGUMENT.
 */

/** 1 if the request is a streamed call (cruster_send_stream): it may yield items. Any thread. */
CRUSTER_API int cruster_request_is_stream(const cruster_request *req);

/*
 * cruster_request_yield
 *   Sends one item of `len` bytes at `data` (copied; NULL allowed for len 0;
 *   an empty item is an item) to the caller of a streamed call. Items keep
 *   the order of the yields (yields from several threads at once are
 *   ordered as they take the request's lock). May block while 16 items wait
 *   for the caller (see above).
 * Returns: CRUSTER_OK (the item will reach the caller unless it goes away);
 *   CRUSTER_E_CANCELLED (the caller went away -- deadline passed, the caller
 *   stopped the stream, a remote caller disconnected -- or the request was
 *   interrupted: stop producing and answer; the answer is then dropped);
 *   CRUSTER_E_STATE (not a streamed call -- cruster_send made it; see
 *   cruster_request_is_stream --, the request was answered already, or
 *   called on the runtime's loop thread); CRUSTER_E_PAYLOAD_TOO_LARGE (`len`
 *   over "max_payload_size" -- the item is not sent, the stream goes on --;
 *   or the stream already has 2147483647 items); CRUSTER_E_INVALID_ARGUMENT
 *   (req NULL, data NULL with len > 0); CRUSTER_E_SHUTTING_DOWN (the runtime
 *   stopped); CRUSTER_E_NOMEM. Across runners an item larger than
 *   "transport_max_message_size" ends the stream with
 *   CRUSTER_E_PAYLOAD_TOO_LARGE at the caller (the yield itself returned OK,
 *   its next one CRUSTER_E_CANCELLED).
 * Threads: any but the runtime's loop thread, while the handle is valid.
 */
CRUSTER_API cruster_status cruster_request_yield(cruster_request *req, const void *data,
                                                 size_t len);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_ENTITY_H */
