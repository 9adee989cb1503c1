/* Internal: PostgreSQL message storage. */
#ifndef ST_PG_INTERNAL_H
#define ST_PG_INTERNAL_H

#include "core/prefix.h"

#include <cruster/pg.h>
#include <libpq-fe.h>

#include "storage/storage_internal.h"

#define PG_SCHEMA_VERSION 6

/* Quotes "name" or "schema.name" as identifiers into out. 0 or -1. */
int pg_quote_table(PGconn *c, const char *table, char *out, size_t outsz);

/* Opens a blocking connection (connect_timeout 5 s unless conninfo sets
 * one). NULL with *err set on failure. */
PGconn *pg_connect_blocking(const char *conninfo, cruster_error **err);

/* Applies pending migrations (advisory lock held). */
cruster_status pg_migrate_conn(PGconn *c, const char *table, int *applied, cruster_error **err);

/* Checks that the schema is at PG_SCHEMA_VERSION; migrates first when
 * auto_migrate. */
cruster_status pg_check_schema(PGconn *c, const char *table, int auto_migrate, cruster_error **err);
/* Single-node mode: one runtime per schema. Takes a session advisory lock
 * keyed by the cruster_messages table of `c`'s schema and keeps it while `c`
 * stays open; CRUSTER_E_STATE (naming the holder) when another session has
 * it. */
cruster_status pg_lock_schema(PGconn *c, cruster_error **err);

#endif
