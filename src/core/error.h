/* Internal: building cruster_error objects and status helpers. */
#ifndef CORE_ERROR_H
#define CORE_ERROR_H

#include "core/prefix.h"

#include <cruster/status.h>

struct cruster_error {
  int status;
  char *message; /* never NULL */
};

/* Allocates an error with `status` and a printf-formatted message. Returns
 * NULL when out of memory. */
cruster_error *core_error_new(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* If `err` is not NULL, stores a new error there (freeing nothing: *err must
 * be NULL or garbage the caller does not own). Always returns `status`, so
 * callers can write `return core_error_set(err, CRUSTER_E_X, "...")`. */
/* The first statement of every public function taking `cruster_error
 * **err`: the contract of status.h (cleared on entry, set on failure). */
#define CORE_ERR_CLEAR(err) \
  do {                      \
    if (err) *(err) = NULL; \
  } while (0)

int core_error_set(cruster_error **err, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1 if `status` is CRUSTER_OK or one of the defined cruster error codes
 * (not an application code, not an unknown value). */
int core_status_known(int status);

#endif
