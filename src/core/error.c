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

/* Indexed by -status, from the one table in status.h. */
#define STATUS_ROW_(suffix, value, message) [-(value)] = {"CRUSTER_" #suffix, message},
static const struct {
  const char *name;
  const char *message;
} status_table[] = {CRUSTER_STATUS_CODES(STATUS_ROW_)};

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
