/*
 * cruster/pg.h -- PostgreSQL message storage.
 *
 * Persisted messages and their replies live in PostgreSQL, so they survive a
 * crash of the runner: a message stored but not answered is delivered again
 * when a runner owning its shard starts (at-least-once).
 *
 * The state model: cruster stores the message and its answer, your handler
 * writes your tables. If the runner dies after the handler's write but
 * before its answer is stored, the message runs again -- so a persisted
 * handler must make its own write idempotent, or the stored answer and your
 * tables can disagree after a crash. Key the write by cruster_request_id()
 * (the same for every delivery of one call), e.g. INSERT ... ON CONFLICT
 * (request_id) DO NOTHING: examples/payments/payments.c.
 *
 * The storage talks to the server with libpq in non-blocking
 * mode on the runtime's loop thread (a small pool of connections, prepared
 * statements, pipelined batches so that concurrent writes share commits).
 *
 * One runtime per schema: in single-node mode cruster_runtime_new refuses
 * (CRUSTER_E_STATE, naming the other runtime's backend) a second runtime on
 * a schema another live runtime uses; it holds a PostgreSQL advisory lock on
 * one extra connection until it stops.
 *
 * Schema: framework tables only (cruster_messages, which also holds each
 * message's answer and a keyed call's idempotency key), created
 * by versioned migrations embedded in the library and recorded in the table
 * named by the "storage_migrations_table" setting. Apply them with
 * cruster_storage_pg_migrate, or let the runtime do it at creation with
 * "storage_auto_migrate" = true. Put several applications (or tests) in one
 * database by giving each its own schema: "options=-csearch_path=myschema" in
 * the connection string.
 */
#ifndef CRUSTER_PG_H
#define CRUSTER_PG_H

#include "common.h"
#include "status.h"
#include "storage.h"
#include "entity.h"
#include "workflow.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * cruster_storage_pg_new
 *   Creates a PostgreSQL message storage for `conninfo` (a libpq connection
 *   string or URI, copied). Only the string's syntax is checked here; the
 *   server is contacted by cruster_runtime_new, which takes ownership of the
 *   storage and fails with a clear message when the server is unreachable,
 *   refuses the credentials, is not migrated, or was migrated by a newer
 *   version of cruster.
 * Returns: CRUSTER_OK with *out set; CRUSTER_E_INVALID_ARGUMENT (NULL, or a
 *   connection string that does not parse -- the message says why);
 *   CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_storage_pg_new(const char *conninfo, cruster_storage **out,
                                                  cruster_error **err);

/*
 * cruster_storage_pg_migrate
 *   Connects to `conninfo` and applies every migration not yet recorded in
 *   table `migrations_table` (NULL = "cruster_migrations"), each in its own
 *   transaction, under an advisory lock so that concurrent callers apply
 *   each migration once. Blocks until done. `applied` (may be NULL)
 *   receives how many were applied now.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (bad connection string or
 *   table name); CRUSTER_E_PERSISTENCE (unreachable server, bad credentials,
 *   SQL error -- the message carries the server's text; or a schema newer
 *   than this library, which is then left untouched).
 * Threads: any; it does not use a runtime.
 */
CRUSTER_API cruster_status cruster_storage_pg_migrate(const char *conninfo,
                                                      const char *migrations_table, int *applied,
                                                      cruster_error **err);

/*
 * cruster_activity_pg
 *   The connection of the open transaction an activity runs in (a PGconn *:
 *   include <libpq-fe.h> and use it as one). Do the activity's SQL on it
 *   with ordinary blocking libpq calls; never COMMIT, ROLLBACK or close it:
 *   the engine writes the activity's journal row on it and commits when the
 *   activity answers, or rolls back when it fails. NULL with memory
 *   storage (activities then run without a transaction) and for NULL.
 *   Valid until the activity function returns.
 * Threads: the activity's own.
 */
struct pg_conn;
CRUSTER_API struct pg_conn *cruster_activity_pg(cruster_activity *act);

/*
 * cruster_request_pg
 *   The connection of the open transaction a CRUSTER_RPC_TRANSACTIONAL
 *   handler runs in, used as cruster_activity_pg's: the handler's SQL on
 *   it commits with the stored reply when it answers with
 *   cruster_request_reply, and is rolled back when it fails. Never COMMIT,
 *   ROLLBACK or close it. NULL for other methods, with memory storage, and
 *   for NULL. Valid until the request is answered.
 * Threads: the one that answers the request (one at a time).
 */
CRUSTER_API struct pg_conn *cruster_request_pg(cruster_request *req);

/*
 * cruster_storage_pg_schema_version
 *   Returns the newest migration version this library knows.
 */
CRUSTER_API int cruster_storage_pg_schema_version(void);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_PG_H */
