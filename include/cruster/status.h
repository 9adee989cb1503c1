/*
 * cruster/status.h -- status codes and error objects.
 *
 * Every fallible function returns a cruster_status: 0 (CRUSTER_OK) on
 * success, a negative code on failure. Codes are never renumbered. Detail
 * (a human-readable message) comes through an optional `cruster_error **`
 * out-parameter or through the error argument of a completion callback.
 *
 * The `cruster_error **err` contract, the same for every function that takes
 * one: `err` may be NULL (no detail wanted). Otherwise `*err` is set to NULL
 * on entry and, when the function fails, to a new error object carrying the
 * returned status and a message; the caller owns it and frees it with
 * cruster_error_free (on success there is nothing to free). An asynchronous
 * function's `*err` explains only a refusal up front; what happens later
 * reaches its callback. Read `*err` after the call returns -- never in the
 * same expression as the call (C leaves the order of argument evaluation
 * open: check(f(&err), err) may read err before f sets it).
 *
 * Application errors: a handler may fail a request with any code at or below
 * CRUSTER_E_APPLICATION (-1000); such codes travel to the caller unchanged
 * (also across runners) and are named "CRUSTER_E_APPLICATION" by
 * cruster_status_name(). A handler failing with any other code that is not
 * listed below (say -500) is answered with CRUSTER_E_HANDLER instead (see
 * cruster_request_fail): callers only ever see the codes below and
 * application codes.
 */
#ifndef CRUSTER_STATUS_H
#define CRUSTER_STATUS_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * CRUSTER_STATUS_CODES(X) -- the one table of status codes: for each, X(name
 * suffix, value, message). The enum below, cruster_status_name() and
 * cruster_status_message() are all generated from it, so they cannot drift.
 * Codes are never renumbered; new ones are appended.
 */
#define CRUSTER_STATUS_CODES(X)                                                                    \
  X(OK, 0, "success")                                                                              \
  /* A parameter is invalid (NULL where not allowed, empty id, bad UTF-8...). */                   \
  X(E_INVALID_ARGUMENT, -1, "invalid argument")                                                    \
  /* A configuration field has an invalid value; the message names the field. */                   \
  X(E_INVALID_CONFIG, -2, "invalid configuration")                                                 \
  X(E_NOMEM, -3, "out of memory")                                                                  \
  /* No entity type of that name is registered. */                                                 \
  X(E_UNKNOWN_ENTITY_TYPE, -4, "unknown entity type")                                              \
  /* The entity type has no dispatchable method of that name (also: private methods). */           \
  X(E_UNKNOWN_METHOD, -5, "unknown method")                                                        \
  /* The method is protected: only entities and workflows may call it. */                          \
  X(E_FORBIDDEN, -6, "method may only be called by entities and workflows")                        \
  /* The entity's mailbox holds its capacity of messages. */                                       \
  X(E_MAILBOX_FULL, -7, "entity mailbox is full")                                                  \
  /* The call's deadline passed before an answer arrived. */                                       \
  X(E_TIMEOUT, -8, "timed out")                                                                    \
  /* The runtime is stopping or stopped. */                                                        \
  X(E_SHUTTING_DOWN, -9, "runtime is shutting down")                                               \
  /* A payload, key or id is larger than the configured or fixed limit. */                         \
  X(E_PAYLOAD_TOO_LARGE, -10, "payload or id too large")                                           \
  /* No runner owns the entity's shard (yet). */                                                   \
  X(E_NOT_ASSIGNED, -11, "shard is not assigned to any runner")                                    \
  /* The runner that owns the shard cannot be reached. */                                          \
  X(E_RUNNER_UNAVAILABLE, -12, "runner unavailable")                                               \
  /* Message storage failed, or a persisted call has no storage. */                                \
  X(E_PERSISTENCE, -13, "message storage failed")                                                  \
  /* A message could not be decoded. */                                                            \
  X(E_MALFORMED, -14, "malformed message")                                                         \
  /* A request with the same id is already being processed. */                                     \
  X(E_ALREADY_PROCESSING, -15, "request is already being processed")                               \
  /* The clock moved backwards by more than 5 s. */                                                \
  X(E_CLOCK_DRIFT, -16, "clock moved backwards by more than 5 s")                                  \
  /* The entity was interrupted (shard moved, shutdown) before it answered. */                     \
  X(E_INTERRUPTED, -17, "entity was interrupted before it answered")                               \
  /* The message failed too often and was moved to the dead letters. */                            \
  X(E_DEAD_LETTER, -18, "message was moved to the dead letters")                                   \
  /* The thing asked for does not exist. */                                                        \
  X(E_NOT_FOUND, -19, "not found")                                                                 \
  /* Something of that name is already registered. */                                              \
  X(E_ALREADY_EXISTS, -20, "already exists")                                                       \
  /* The object is in the wrong state for this call (e.g. start twice). */                         \
  X(E_STATE, -21, "wrong state for this operation")                                                \
  /* The operation was cancelled. */                                                               \
  X(E_CANCELLED, -22, "cancelled")                                                                 \
  /* A handler failed without giving a more specific code. */                                      \
  X(E_HANDLER, -23, "handler failed")                                                              \
  /* A bug in cruster; the message says more. */                                                   \
  X(E_INTERNAL, -24, "internal error")                                                             \
  /* The idempotency key is taken by a call it cannot share: the same key with a different        \
   * payload (with "idempotency_strict_payload"), or a key whose every candidate request id       \
   * holds another call. */                                                                        \
  X(E_CONFLICT, -25, "idempotency key conflicts with a stored call")                             \
  /* A workflow's durable call cannot finish now (a timer, a deferred, a retry's wait): return    \
   * from execute; it runs again when the wait ends. */                                          \
  X(E_SUSPENDED, -26, "workflow execution suspended")                                             \
  /* A workflow's execute made a durable call that differs from its journal at that position. */ \
  X(E_DETERMINISM, -27, "workflow execution is not deterministic")                              \
  /* The runner registry (etcd) could not be reached or answered with an error. */               \
  X(E_REGISTRY, -28, "runner registry failed")

#define CRUSTER_STATUS_ENUM_(suffix, value, message) CRUSTER_##suffix = (value),

typedef enum cruster_status {
  CRUSTER_STATUS_CODES(CRUSTER_STATUS_ENUM_)
  /** First code reserved for applications; every code <= this one is theirs. */
  CRUSTER_E_APPLICATION = -1000,
  /** Not a code: makes the enum's range cover every int, so an application
   *  code (<= CRUSTER_E_APPLICATION) held in a cruster_status is well defined
   *  in C and in C++. */
  CRUSTER_STATUS_INT_MIN_ = -2147483647 - 1,
  CRUSTER_STATUS_INT_MAX_ = 2147483647
} cruster_status;

/*
 * cruster_status_name
 *   Returns the constant's name ("CRUSTER_E_TIMEOUT"); "CRUSTER_E_APPLICATION"
 *   for application codes; "CRUSTER_E_UNKNOWN" for any other unknown value.
 *   Static string; never free it.
 * Threads: any.
 */
CRUSTER_API const char *cruster_status_name(int status);

/*
 * cruster_status_message
 *   Returns a one-line English description of the code. Static string.
 * Threads: any.
 */
CRUSTER_API const char *cruster_status_message(int status);

/** An error: a status code and a message. Opaque. */
typedef struct cruster_error cruster_error;

/*
 * cruster_error_status / cruster_error_message
 *   Read an error's code and message. The message lives as long as the error.
 *   Both accept NULL (returning CRUSTER_OK and "").
 * Threads: any (an error object belongs to whoever received it).
 */
CRUSTER_API int cruster_error_status(const cruster_error *err);
CRUSTER_API const char *cruster_error_message(const cruster_error *err);

/*
 * cruster_error_free
 *   Frees an error received through an out-parameter. NULL is a no-op.
 * Threads: any.
 */
CRUSTER_API void cruster_error_free(cruster_error *err);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_STATUS_H */
