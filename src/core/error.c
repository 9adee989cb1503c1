/* Error objects and the names and descriptions of status codes. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cruster_error *error_vnew(int status, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) n = 0;
  cruster_error *e = malloc(sizeof *e);
  if (!e) return NULL;
  e->status = status;
  e->message = malloc((size_t)n + 1);
  if (!e->message) {
    free(e);
    return NULL;
  }
  if (n > 0)
    vsnprintf(e->message, (size_t)n + 1, fmt, ap);
  else
    e->message[0] = '\0';
  return e;
}

cruster_error *core_error_new(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  cruster_error *e = error_vnew(status, fmt, ap);
  va_end(ap);
  return e;
}

int core_error_set(cruster_error **err, int status, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    *err = error_vnew(status, fmt, ap);
    va_end(ap);
  }
  return status;
}

int cruster_error_status(const cruster_error *err) { return err ? err->status : CRUSTER_OK; }

const char *cruster_error_message(const cruster_error *err) {
  return err && err->message ? err->message : "";
}

void cruster_error_free(cruster_error *err) {
  if (!err) return;
  free(err->message);
  free(err);
}

/* Indexed by -status for CRUSTER_OK .. CRUSTER_E_INTERNAL. */
static const struct {
  const char *name;
  const char *message;
} status_table[] = {
    {"CRUSTER_OK", "success"},
    {"CRUSTER_E_INVALID_ARGUMENT", "invalid argument"},
    {"CRUSTER_E_INVALID_CONFIG", "invalid configuration"},
    {"CRUSTER_E_NOMEM", "out of memory"},
    {"CRUSTER_E_UNKNOWN_ENTITY_TYPE", "unknown entity type"},
    {"CRUSTER_E_UNKNOWN_METHOD", "unknown method"},
    {"CRUSTER_E_FORBIDDEN", "method may only be called by entities and workflows"},
    {"CRUSTER_E_MAILBOX_FULL", "entity mailbox is full"},
    {"CRUSTER_E_TIMEOUT", "timed out"},
    {"CRUSTER_E_SHUTTING_DOWN", "runtime is shutting down"},
    {"CRUSTER_E_PAYLOAD_TOO_LARGE", "payload or id too large"},
    {"CRUSTER_E_NOT_ASSIGNED", "shard is not assigned to any runner"},
    {"CRUSTER_E_RUNNER_UNAVAILABLE", "runner unavailable"},
    {"CRUSTER_E_PERSISTENCE", "message storage failed"},
    {"CRUSTER_E_MALFORMED", "malformed message"},
    {"CRUSTER_E_ALREADY_PROCESSING", "request is already being processed"},
    {"CRUSTER_E_CLOCK_DRIFT", "clock moved backwards by more than 5 s"},
    {"CRUSTER_E_INTERRUPTED", "entity was interrupted before it answered"},
    {"CRUSTER_E_DEAD_LETTER", "message was moved to the dead letters"},
    {"CRUSTER_E_NOT_FOUND", "not found"},
    {"CRUSTER_E_ALREADY_EXISTS", "already exists"},
    {"CRUSTER_E_STATE", "wrong state for this operation"},
    {"CRUSTER_E_CANCELLED", "cancelled"},
    {"CRUSTER_E_HANDLER", "handler failed"},
    {"CRUSTER_E_INTERNAL", "internal error"},
};

#define STATUS_COUNT (sizeof status_table / sizeof status_table[0])

int core_status_known(int status) {
  return status <= 0 && status > CRUSTER_E_APPLICATION && (size_t)(-(long)status) < STATUS_COUNT;
}

const char *cruster_status_name(int status) {
  if (status <= CRUSTER_E_APPLICATION) return "CRUSTER_E_APPLICATION";
  if (status <= 0 && (size_t)(-(long)status) < STATUS_COUNT) return status_table[-status].name;
  return "CRUSTER_E_UNKNOWN";
}

const char *cruster_status_message(int status) {
  if (status <= CRUSTER_E_APPLICATION) return "application error";
  if (status <= 0 && (size_t)(-(long)status) < STATUS_COUNT) return status_table[-status].message;
  return "unknown status code";
}
