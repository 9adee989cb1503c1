/*
 * cruster/client.h -- calling entities.
 *
 * A call addresses (entity type, entity id, method) and carries a payload of
 * bytes. The runtime routes it to the runner owning the entity's shard.
 *
 *   send    waits for the handler's answer (callback, or _sync blocking)
 *   notify  fire-and-forget: completes once the message is accepted (in the
 *           entity's mailbox, or durably stored when persisted)
 *
 * Delivery classes: a call is persisted (at-least-once, through message
 * storage) when the method is declared CRUSTER_RPC_PERSISTED on this runner,
 * when the call sets CRUSTER_CALL_PERSISTED, or when it has a deliver_at
 * time. Otherwise it is at-most-once. A persisted call gets a fresh request
 * id each time. With an idempotency key, the call is identified by its whole
 * identity -- entity type, entity id, method and the key's bytes -- and a
 * later call with the same identity gets the stored reply (or waits for it)
 * without running the handler again, for as long as "storage_retention"
 * keeps it. The identity is compared as such, never only through a hash: two
 * different identities are two calls, each with its own reply, even when
 * their derived ids (cruster_persisted_request_id, a weak hash) collide --
 * the second then gets another id (see cruster_request_id).
 *
 * The same key with a different payload: by default the repeat is answered
 * like any repeat (the stored reply), as the original system does; with
 * "idempotency_strict_payload" = true it is refused with CRUSTER_E_CONFLICT
 * (nothing runs, nothing is stored). A key should name one operation: put
 * what makes it unique (an order id, a transfer id) in the key.
 *
 * Every call has a deadline: "default_call_timeout" unless the options say
 * otherwise. When it passes the caller gets CRUSTER_E_TIMEOUT, the handler
 * sees cruster_request_cancelled() == 1, and a late answer is dropped.
 */
#ifndef CRUSTER_CLIENT_H
#define CRUSTER_CLIENT_H

#include "common.h"
#include "entity.h"
#include "runtime.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Call flags; combine with |. */
typedef enum cruster_call_flags {
  /** Deliver through message storage (at-least-once). */
  CRUSTER_CALL_PERSISTED = 1u << 0,
  /**
   * Run the completion callback on the runtime's loop thread instead of a
   * worker. Only for callbacks that are short and never block (setting a
   * promise, signalling a condition variable): it saves a thread hop.
   */
  CRUSTER_CALL_INLINE_CALLBACK = 1u << 1
} cruster_call_flags;

/*
 * Per-call options. Initialise with CRUSTER_CALL_OPTS_INIT (which sets
 * `size`), then set what you need; pass NULL for all defaults. The struct
 * and what it points to are only read during the call.
 *
 * How it grows (the rule for every options struct of this API): fields are
 * only ever appended. `size` says how much of the struct the caller has:
 *   - at least CRUSTER_CALL_OPTS_SIZE_V1 (the first version) is required;
 *   - a struct smaller than this header's (an older caller) is read only as
 *     far as its size goes: the fields it does not have take their defaults;
 *   - a larger one (a caller compiled against a newer cruster) is accepted
 *     when every byte this library does not know is zero, and refused with
 *     CRUSTER_E_INVALID_ARGUMENT otherwise (a newer option this library
 *     cannot honour is never ignored silently).
 */
typedef struct cruster_call_opts {
  /** sizeof(cruster_call_opts) as compiled by the caller: lets the struct grow. */
  size_t size;
  /** cruster_call_flags. */
  unsigned flags;
  /** Deadline in milliseconds from now; 0 = "default_call_timeout". */
  int64_t timeout_ms;
  /** Idempotency key bytes (1..CRUSTER_MAX_KEY_LEN); NULL = none. A key makes
   *  the call persisted and deduplicated on (type, id, method, key). */
  const void *idempotency_key;
  size_t idempotency_key_len;
  /**
   * Do not deliver before this Unix time in ms; 0 = now. Implies persisted.
   * At most 253402300799999 (9999-12-31T23:59:59.999Z).
   */
  int64_t deliver_at_ms;
  /**
   * The request being handled when an entity calls another entity: marks
   * the call as internal, so protected methods may be called. NULL for a
   * public client.
   *
   * The runtime believes it only if it is a request this runtime is handling
   * when it routes the call: its handler was started and its answer has not
   * been processed yet (so a call made before the handler answers, on the
   * same thread, always qualifies). Anything else -- a made-up or stale
   * pointer, an answered request, a request of another runtime -- makes the
   * call fail with CRUSTER_E_FORBIDDEN, whatever the method's visibility.
   * The pointer is only compared with the runtime's own, never read through.
   * What this does not promise: protection from code in the same process.
   * Code that handles a request, or can read the process's memory, can pass
   * a live handle and reach protected methods; visibility guards against
   * mistakes and public clients, it is not a security boundary in-process.
   */
  const cruster_request *caller;
  /**
   * (Version 2.) W3C trace context of the call: a NUL-terminated
   * traceparent, "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
   * (lowercase; 55 characters; version ff and all-zero ids are invalid),
   * or NULL for none. It reaches the handler (cruster_request_traceparent),
   * on this runner or across runners. A handler that calls another entity
   * passes it on by setting this field to cruster_request_traceparent(req)
   * (with its own span id as parent id if it traces). A persisted call
   * carries it to a delivery that follows its storage write directly; with
   * PostgreSQL storage a delivery read back from storage later (a retry, a
   * restart, a move to another runner, a deliver_at time) has none (it is
   * not stored).
   */
  const char *traceparent;
} cruster_call_opts;

#define CRUSTER_CALL_OPTS_INIT {sizeof(cruster_call_opts), 0u, 0, NULL, 0u, 0, NULL, NULL}
/** The size of the first version of cruster_call_opts (through `caller`). */
#define CRUSTER_CALL_OPTS_SIZE_V1 \
  (offsetof(cruster_call_opts, caller) + sizeof(const cruster_request *))

/*
 * cruster_reply_fn
 *   Completion of a call. `status` is CRUSTER_OK or an error (a cruster
 *   code, or the application code the handler failed with). On success
 *   `data`/`len` is the answer; on error `message` says why (never NULL on
 *   error, NULL on success). Pointers are valid only during the callback.
 * Threads: a worker thread of the runtime, or its loop thread with
 *   CRUSTER_CALL_INLINE_CALLBACK. It must not call cruster_runtime_stop or
 *   cruster_runtime_free.
 */
typedef void (*cruster_reply_fn)(void *user, int status, const void *data, size_t len,
                                 const char *message);

/*
 * cruster_send
 *   Calls `method` on entity (`type`, `id`) with `len` bytes at `payload`
 *   (copied; NULL allowed for len 0) and reports the answer to `fn`.
 *   Strings must be NUL-terminated UTF-8 names / ids (see common.h limits).
 * Returns: CRUSTER_OK: the call was accepted and `fn` will be called exactly
 *   once, later, with the outcome (CRUSTER_E_UNKNOWN_ENTITY_TYPE,
 *   CRUSTER_E_UNKNOWN_METHOD, CRUSTER_E_FORBIDDEN (a protected method
 *   without opts.caller, or an opts.caller that is not a request this
 *   runtime is handling), CRUSTER_E_MAILBOX_FULL,
 *   CRUSTER_E_TIMEOUT, CRUSTER_E_INTERRUPTED, CRUSTER_E_SHUTTING_DOWN,
 *   CRUSTER_E_PERSISTENCE, the handler's own error, ...).
 *   Any other value: nothing happened, `fn` is never called, and `*err` (when
 *   err is not NULL) says why --
 *   CRUSTER_E_INVALID_ARGUMENT (NULL, empty or invalid name or id -- see
 *   common.h --, or bad options: opts.size too small, unknown flags (the
 *   message names them and the flags as passed), negative timeout_ms,
 *   deliver_at_ms out of range, a NULL key with a length or an empty one,
 *   a traceparent that is not W3C trace context -- the message says why),
 *   CRUSTER_E_PAYLOAD_TOO_LARGE (`len` over "max_payload_size" -- any
 *   size_t value, SIZE_MAX included --, a key over 65536 bytes, or an id
 *   over CRUSTER_MAX_ENTITY_ID_LEN), CRUSTER_E_STATE (not started),
 *   CRUSTER_E_SHUTTING_DOWN, CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_send(cruster_runtime *rt, const char *type, const char *id,
                                        const char *method, const void *payload, size_t len,
                                        const cruster_call_opts *opts, cruster_reply_fn fn,
                                        void *user, cruster_error **err);

/*
 * cruster_notify
 *   Like cruster_send, but completes as soon as the message is accepted
 *   (queued in the instance's mailbox, or stored when persisted); the
 *   handler's answer is discarded. `fn` may be NULL; otherwise it receives
 *   CRUSTER_OK (with no data) or the reason the message was not accepted.
 * Returns: as cruster_send.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_notify(cruster_runtime *rt, const char *type, const char *id,
                                          const char *method, const void *payload, size_t len,
                                          const cruster_call_opts *opts, cruster_reply_fn fn,
                                          void *user, cruster_error **err);

/*
 * cruster_send_sync
 *   Blocking cruster_send. On CRUSTER_OK, `*reply` receives the answer (a
 *   buffer with a NUL byte after the last one, release with cruster_free;
 *   may be NULL when `reply` is NULL) and `*reply_len` its size. On failure
 *   the status is returned and `*err` (if err is not NULL) says why.
 * Threads: any, including handlers (the pool grows while one blocks); not
 *   the loop thread (returns CRUSTER_E_STATE there).
 */
CRUSTER_API cruster_status cruster_send_sync(cruster_runtime *rt, const char *type,
                                             const char *id, const char *method,
                                             const void *payload, size_t len,
                                             const cruster_call_opts *opts, void **reply,
                                             size_t *reply_len, cruster_error **err);

/*
 * cruster_notify_sync
 *   Blocking cruster_notify: returns once the message is accepted or
 *   refused.
 * Threads: as cruster_send_sync.
 */
CRUSTER_API cruster_status cruster_notify_sync(cruster_runtime *rt, const char *type,
                                               const char *id, const char *method,
                                               const void *payload, size_t len,
                                               const cruster_call_opts *opts,
                                               cruster_error **err);

/*
 * Streamed calls (behaviour.md 4.2, 4.7). cruster_send_stream calls a
 * method whose handler may yield items before it answers (entity.h,
 * "Streamed answers"): the caller gets every item in order, then exactly one
 * end -- CRUSTER_OK, or the error with its code and message. A handler that
 * only replies gives its (non-empty) reply as the stream's single item.
 *
 * A streamed call is at-most-once and never persisted: it gets a snowflake
 * request id; options that would persist it (CRUSTER_CALL_PERSISTED, an
 * idempotency key, deliver_at_ms) are refused up front, and a method
 * declared persisted refuses it (CRUSTER_E_INVALID_ARGUMENT at the end
 * callback). Its deadline (timeout_ms, else "default_call_timeout") bounds
 * the whole stream: when it passes, the end is CRUSTER_E_TIMEOUT and the
 * handler's next yield returns CRUSTER_E_CANCELLED. Across runners the
 * items travel as chunks of the transport's streamed Send; if the owner dies
 * mid-stream the end is CRUSTER_E_RUNNER_UNAVAILABLE (a stream that already
 * delivered items is never sent again).
 *
 * Memory is bounded: at most 16 items wait for the caller's callback (the
 * handler's yield blocks beyond that), across runners as well (this runner
 * stops reading the owner's chunks while 16 wait).
 */

/*
 * cruster_stream_item_fn
 *   One item of a streamed answer: `seq` is 0, 1, 2, ... in order; `data`
 *   and `len` are valid only during the callback. Return 0 to go on; any
 *   other value stops the stream: no further item comes, the handler sees
 *   cruster_request_cancelled() == 1 (its next yield fails), and the end
 *   callback gets CRUSTER_E_CANCELLED.
 * Threads: as cruster_reply_fn (a worker thread, or the loop thread with
 *   CRUSTER_CALL_INLINE_CALLBACK). The callbacks of one stream -- its items
 *   and then its end -- never overlap and run in order (each returns before
 *   the next starts, possibly on another worker).
 */
typedef int (*cruster_stream_item_fn)(void *user, int32_t seq, const void *data, size_t len);

/*
 * cruster_send_stream
 *   Calls `method` on entity (`type`, `id`) with `len` bytes at `payload`
 *   (copied) and reports each item to `item_fn`, then the end to `end_fn`
 *   (status CRUSTER_OK with len 0, or the error and its message), both
 *   with `user`.
 * Returns: CRUSTER_OK: the call was accepted; `end_fn` will be called
 *   exactly once, after every item (the outcomes are those of cruster_send,
 *   plus CRUSTER_E_CANCELLED when `item_fn` stopped the stream and
 *   CRUSTER_E_INVALID_ARGUMENT for a persisted method).
 *   Any other value: nothing happened, no callback is ever called, and
 *   `*err` says why: as cruster_send, and CRUSTER_E_INVALID_ARGUMENT for a
 *   NULL item_fn or end_fn, or options that would persist the call.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_send_stream(cruster_runtime *rt, const char *type,
                                               const char *id, const char *method,
                                               const void *payload, size_t len,
                                               const cruster_call_opts *opts,
                                               cruster_stream_item_fn item_fn,
                                               cruster_reply_fn end_fn, void *user,
                                               cruster_error **err);

/** A streamed call read by a blocking iterator. Opaque; close with cruster_stream_close. */
typedef struct cruster_stream cruster_stream;

/*
 * cruster_stream_open
 *   Starts a streamed call as cruster_send_stream does, to be read with
 *   cruster_stream_next. Up to 16 items are buffered for the reader; the
 *   handler waits while they are not read.
 * Returns: CRUSTER_OK with *out set; otherwise as cruster_send_stream
 *   (out NULL: CRUSTER_E_INVALID_ARGUMENT).
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_stream_open(cruster_runtime *rt, const char *type,
                                               const char *id, const char *method,
                                               const void *payload, size_t len,
                                               const cruster_call_opts *opts,
                                               cruster_stream **out, cruster_error **err);

/*
 * cruster_stream_next
 *   Waits for the stream's next item or its end, at most `timeout_ms`
 *   milliseconds (0 = until the call's own deadline, which always ends the
 *   stream).
 *   - an item: CRUSTER_OK, *done = 0, *item (release with cruster_free;
 *     a NUL byte follows its last byte; may be NULL when `item` is NULL) and
 *     *len;
 *   - the end: CRUSTER_OK, *done = 1, *item NULL;
 *   - the stream's error: its status, *done = 1, *err says why (the same
 *     answer for every later call);
 *   - `timeout_ms` passed first: CRUSTER_E_TIMEOUT with *done = 0 -- the
 *     stream goes on; call again.
 *   CRUSTER_E_INVALID_ARGUMENT (s or done NULL, timeout_ms < 0; *done = 0);
 *   CRUSTER_E_STATE on the runtime's loop thread.
 * Threads: any but the loop thread; one thread at a time per stream.
 */
CRUSTER_API cruster_status cruster_stream_next(cruster_stream *s, int64_t timeout_ms,
                                               void **item, size_t *len, int *done,
                                               cruster_error **err);

/*
 * cruster_stream_close
 *   Releases the stream. One not ended yet is stopped: the handler sees
 *   cruster_request_cancelled() == 1. NULL is a no-op. Close every opened
 *   stream; closing after cruster_runtime_stop or cruster_runtime_free is
 *   fine (the stop ended every stream; only the reader's memory is left).
 * Threads: any but the loop thread; not while another thread is in
 *   cruster_stream_next on it.
 */
CRUSTER_API void cruster_stream_close(cruster_stream *s);

/*
 * cruster_poll_reply
 *   Reads, without waiting, the stored reply of the persisted call made to
 *   (`type`, `id`, `method`) with idempotency key `key` (`key_len` bytes).
 *   `*ready` becomes 1 when the call has been answered: then the return
 *   value is the answer's status, with `*reply`/`*reply_len` (release with
 *   cruster_free; may be NULL) on success and `*err` saying why on failure.
 *   `*ready` is 0 while the message is stored but not answered yet.
 * Returns: the answer's status when ready; CRUSTER_OK when pending;
 *   CRUSTER_E_NOT_FOUND when no call with that identity (type, id, method,
 *   key bytes) is stored (never sent, or removed after "storage_retention");
 *   CRUSTER_E_PERSISTENCE; CRUSTER_E_INVALID_ARGUMENT;
 *   CRUSTER_E_PAYLOAD_TOO_LARGE (key over CRUSTER_MAX_KEY_LEN); CRUSTER_E_STATE;
 *   CRUSTER_E_SHUTTING_DOWN.
 * Threads: any but the loop thread.
 */
CRUSTER_API cruster_status cruster_poll_reply(cruster_runtime *rt, const char *type,
                                              const char *id, const char *method,
                                              const void *key, size_t key_len, int *ready,
                                              void **reply, size_t *reply_len,
                                              cruster_error **err);

/*
 * cruster_join_reply
 *   Waits for the answer of the persisted call identified as for
 *   cruster_poll_reply and reports it to `fn` (as cruster_send does), within
 *   the options' deadline. An answer already stored is reported at once.
 *   Of the options only timeout_ms and CRUSTER_CALL_INLINE_CALLBACK are
 *   used (the call's own options may be passed again).
 * Returns: as cruster_send (CRUSTER_E_NOT_FOUND reaches `fn` when no such
 *   message is stored; a refusal up front is explained in `*err`).
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_join_reply(cruster_runtime *rt, const char *type,
                                              const char *id, const char *method,
                                              const void *key, size_t key_len,
                                              const cruster_call_opts *opts, cruster_reply_fn fn,
                                              void *user, cruster_error **err);

/** A list of stored messages (dead letters). Opaque; free with cruster_message_list_free. */
typedef struct cruster_message_list cruster_message_list;

/*
 * cruster_dead_letters
 *   Lists up to `limit` dead letters (persisted messages that failed
 *   delivery more than "storage_message_max_retries" times), oldest first.
 * Returns: CRUSTER_OK with *out set (possibly empty); CRUSTER_E_PERSISTENCE
 *   (no storage, or it failed); CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_STATE.
 * Threads: any but the loop thread.
 */
CRUSTER_API cruster_status cruster_dead_letters(cruster_runtime *rt, size_t limit,
                                                cruster_message_list **out, cruster_error **err);

/*
 * cruster_dead_letter_redeliver
 *   Makes dead letter `request_id` deliverable again, with its attempt
 *   count reset; it is delivered promptly. A caller waiting on its key (join)
 *   then gets the new answer.
 * Returns: CRUSTER_OK; CRUSTER_E_NOT_FOUND (no dead letter with that id);
 *   CRUSTER_E_PERSISTENCE; CRUSTER_E_STATE.
 * Threads: any but the loop thread.
 */
CRUSTER_API cruster_status cruster_dead_letter_redeliver(cruster_runtime *rt, int64_t request_id,
                                                         cruster_error **err);

/*
 * Message list accessors. `i` < cruster_message_list_count(list); strings and
 * payloads live as long as the list. Any thread.
 */
CRUSTER_API size_t cruster_message_list_count(const cruster_message_list *list);
CRUSTER_API int64_t cruster_message_list_request_id(const cruster_message_list *list, size_t i);
CRUSTER_API const char *cruster_message_list_entity_type(const cruster_message_list *list, size_t i);
CRUSTER_API const char *cruster_message_list_entity_id(const cruster_message_list *list, size_t i);
CRUSTER_API const char *cruster_message_list_method(const cruster_message_list *list, size_t i);
CRUSTER_API const void *cruster_message_list_payload(const cruster_message_list *list, size_t i,
                                                     size_t *len);
/** Delivery attempts made. */
CRUSTER_API int64_t cruster_message_list_attempts(const cruster_message_list *list, size_t i);
CRUSTER_API void cruster_message_list_free(cruster_message_list *list);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_CLIENT_H */
