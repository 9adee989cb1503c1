/*
 * cruster/status.h -- status codes and error objects.
 *
 * Every fallible function returns a cruster_status: 0 (CRUSTER_OK) on
 * success, a negative code on failure. Codes are never renumbered. Detail
 * (a human-readable message) comes through an optional `cruster_error **`
 * out-parameter or through the error argument of a completion callback.
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

typedef enum cruster_status {
  CRUSTER_OK = 0,
  /** A parameter is invalid (NULL where not allowed, empty id, bad UTF-8...). */
  CRUSTER_E_INVALID_ARGUMENT = -1,
  /** A configuration field has an invalid value; the message names the field. */
  CRUSTER_E_INVALID_CONFIG = -2,
  /** Out of memory. */
  CRUSTER_E_NOMEM = -3,
  /** No entity type of that name is registered. */
  CRUSTER_E_UNKNOWN_ENTITY_TYPE = -4,
  /** The entity type has no dispatchable method of that name (also: private methods). */
  CRUSTER_E_UNKNOWN_METHOD = -5,
  /** The method is protected: only entities and workflows may call it. */
  CRUSTER_E_FORBIDDEN = -6,
  /** The entity's mailbox holds its capacity of messages. */
  CRUSTER_E_MAILBOX_FULL = -7,
  /** The call's deadline passed before an answer arrived. */
  CRUSTER_E_TIMEOUT = -8,
  /** The runtime is stopping or stopped. */
  CRUSTER_E_SHUTTING_DOWN = -9,
  /** A payload or id is larger than the configured or fixed limit. */
  CRUSTER_E_PAYLOAD_TOO_LARGE = -10,
  /** No runner owns the entity's shard (yet). */
  CRUSTER_E_NOT_ASSIGNED = -11,
  /** The runner that owns the shard cannot be reached. */
  CRUSTER_E_RUNNER_UNAVAILABLE = -12,
  /** Message storage failed, or a persisted call has no storage. */
  CRUSTER_E_PERSISTENCE = -13,
  /** A message could not be decoded. */
  CRUSTER_E_MALFORMED = -14,
  /** A request with the same id is already being processed. */
  CRUSTER_E_ALREADY_PROCESSING = -15,
  /** The clock moved backwards by more than 5 s. */
  CRUSTER_E_CLOCK_DRIFT = -16,
  /** The entity was interrupted (shard moved, shutdown) before it answered. */
  CRUSTER_E_INTERRUPTED = -17,
  /** The message failed too often and was moved to the dead letters. */
  CRUSTER_E_DEAD_LETTER = -18,
  /** The thing asked for does not exist. */
  CRUSTER_E_NOT_FOUND = -19,
  /** Something of that name is already registered. */
  CRUSTER_E_ALREADY_EXISTS = -20,
  /** The object is in the wrong state for this call (e.g. start twice). */
  CRUSTER_E_STATE = -21,
  /** The operation was cancelled. */
  CRUSTER_E_CANCELLED = -22,
  /** A handler failed without giving a more specific code. */
  CRUSTER_E_HANDLER = -23,
  /** A bug in cruster; the message says more. */
  CRUSTER_E_INTERNAL = -24,
  /** First code reserved for applications; every code <= this one is theirs. */
  CRUSTER_E_APPLICATION = -1000
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
