/*
 * cruster/storage.h -- message storage backends.
 *
 * Persisted RPCs (CRUSTER_RPC_PERSISTED methods, CRUSTER_CALL_PERSISTED
 * calls, delayed deliveries) are written to message storage before they are
 * delivered and their replies are kept there, so that a call with an
 * idempotency key returns the stored reply instead of running again.
 *
 * Backends:
 *  - memory: at-least-once within one process (lost when the process ends);
 *    for single-runner programs and tests.
 *  - PostgreSQL: see cruster/pg.h (survives crashes; shared by a cluster).
 */
#ifndef CRUSTER_STORAGE_H
#define CRUSTER_STORAGE_H

#include "common.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A message storage backend. Opaque. */
typedef struct cruster_storage cruster_storage;

/*
 * cruster_storage_memory_new
 *   Creates an in-memory message storage. Hand it to cruster_runtime_new,
 *   which takes ownership of it.
 * Returns: CRUSTER_OK with *out set; CRUSTER_E_INVALID_ARGUMENT (out NULL);
 *   CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_storage_memory_new(cruster_storage **out, cruster_error **err);

/*
 * cruster_storage_free
 *   Frees a storage that was never handed to a runtime. NULL is a no-op.
 *   Never call it on a storage a runtime owns.
 */
CRUSTER_API void cruster_storage_free(cruster_storage *storage);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_STORAGE_H */
