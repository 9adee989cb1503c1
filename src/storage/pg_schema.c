/* PostgreSQL schema: versioned migrations embedded in the library. Runs on
 * a blocking connection of its own (cruster_storage_pg_migrate, or the check
 * cruster_runtime_new makes on the caller's thread). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "storage/pg_internal.h"

typedef struct migration {
  int version;
  const char *name;
  const char *sql;
} migration;

/* Framework tables only. Never edit a released migration: add a new one. */
static const migration migrations[] = {
    {1, "messages",
     /* One row per persisted message; its exit reply lives in the same row
      * (one write to answer). Unkeyed messages are deleted once answered:
      * nobody can ask for their reply again. No CHECK constraints: the
      * server re-reads them on every write of this hot table. */
     "CREATE TABLE cruster_messages ("
     "  seq BIGINT GENERATED ALWAYS AS IDENTITY,"
     "  request_id BIGINT PRIMARY KEY,"
     "  shard_group TEXT NOT NULL,"
     "  shard_id INT NOT NULL,"
     "  entity_type TEXT NOT NULL,"
     "  entity_id TEXT NOT NULL,"
     "  tag TEXT NOT NULL,"
     "  payload BYTEA NOT NULL,"
     "  internal BOOLEAN NOT NULL DEFAULT FALSE,"
     "  is_request BOOLEAN NOT NULL DEFAULT TRUE,"
     "  keyed BOOLEAN NOT NULL DEFAULT FALSE,"
     "  deliver_at TIMESTAMPTZ,"
     "  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
     "  claimed_by TEXT,"
     "  claimed_at TIMESTAMPTZ,"
     "  attempts INT NOT NULL DEFAULT 0,"
     "  retry_at TIMESTAMPTZ,"
     "  processed BOOLEAN NOT NULL DEFAULT FALSE,"
     "  processed_at TIMESTAMPTZ,"
     "  reply_status INT,"
     "  reply_payload BYTEA,"
     "  reply_message TEXT"
     ");"
     "CREATE INDEX cruster_messages_pending ON cruster_messages (seq) WHERE NOT processed;"
     "CREATE INDEX cruster_messages_entity_pending ON cruster_messages (entity_type, entity_id, seq)"
     "  WHERE NOT processed;"
     "CREATE INDEX cruster_messages_processed_at ON cruster_messages (processed_at) WHERE processed;"
     "CREATE INDEX cruster_messages_dead ON cruster_messages (seq) WHERE reply_status = -18;"},
    {2, "plans that do not depend on statistics",
     /* The table is mostly empty whenever it was analyzed, and our plans
      * are generic and made when a connection opens: with "1 row"
      * estimates everywhere, a partial index scanned whole costs the same
      * as a lookup, and the planner took it (O(backlog) per operation).
      * The per-entity probes now test processed_at IS NULL (the same rows,
      * see the statements), which no partial index's predicate follows
      * from, on an index that is not partial: a lookup is its only use. */
     "DROP INDEX cruster_messages_entity_pending;"
     "CREATE INDEX cruster_messages_entity ON cruster_messages (entity_type, entity_id, seq);"
     /* Only what a poll may claim: a message stored claimed for direct
      * delivery (most of them) costs no entry here. */
     "DROP INDEX cruster_messages_pending;"
     "CREATE INDEX cruster_messages_claimable ON cruster_messages (seq)"
     "  WHERE NOT processed AND claimed_by IS NULL;"
     /* "Does an older message of this entity wait for a retry?" -- asked
      * for every message a poll claims: without this small index it walked
      * all the entity's older rows (and the dead ones of its deleted
      * history), quadratic for a busy entity: a poll took seconds. */
     "CREATE INDEX cruster_messages_retrying ON cruster_messages (entity_type, entity_id, seq)"
     "  WHERE retry_at IS NOT NULL;"},
    {3, "idempotency keys stored and compared",
     /* A keyed call's request id is a weak hash of its identity (PRID):
      * different calls can share it. The key is stored, and repeats compare
      * the whole identity. Rows stored before have no key: they keep
      * matching on type, entity id and method at their PRID, until
      * storage_retention removes them. No rewrite of the table: a nullable
      * column without a default is added in place. */
     "ALTER TABLE cruster_messages ADD COLUMN idem_key BYTEA;"},
    {4, "claims record whether they charged an attempt",
     /* A claim charges an attempt only to the head of an entity's queue.
      * A claim given back unused (mailbox full, stop) undoes its charge:
      * it must know whether there was one, or it takes an attempt from a
      * message claimed behind the head -- erasing an earlier delivery, so
      * the message could be delivered more than max_retries + 1 times.
      * Rows claimed by their insert charged one: the default. A constant
      * default costs no table rewrite. */
     "ALTER TABLE cruster_messages ADD COLUMN IF NOT EXISTS claim_charged BOOLEAN NOT NULL"
     "  DEFAULT TRUE;"},
    {5, "workflow journals and deferreds",
     /* An execution is its keyed execute message: its journal and deferreds
      * live under that message's request id and are deleted with it
      * (storage_retention). No foreign key: it would cost every delete of an
      * answered message a probe here. wake_seq counts the wake-ups (a
      * deferred resolved, a cancellation): a park made from an older read
      * leaves the message due at once instead of asleep. Parked messages
      * wait on deliver_at: the index finds the next one due without
      * walking the sleepers. */
     "ALTER TABLE cruster_messages ADD COLUMN IF NOT EXISTS wake_seq BIGINT NOT NULL DEFAULT 0;"
     "CREATE TABLE cruster_journal ("
     "  request_id BIGINT NOT NULL,"
     "  seq INT NOT NULL,"
     "  kind INT NOT NULL,"
     "  name TEXT NOT NULL,"
     "  status INT NOT NULL,"
     "  attempts INT NOT NULL DEFAULT 0,"
     "  at_ms BIGINT NOT NULL DEFAULT 0,"
     "  value BYTEA,"
     "  message TEXT,"
     "  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
     "  PRIMARY KEY (request_id, seq)"
     ");"
     "CREATE TABLE cruster_deferreds ("
     "  request_id BIGINT NOT NULL,"
     "  name TEXT NOT NULL,"
     "  status INT NOT NULL,"
     "  value BYTEA,"
     "  message TEXT,"
     "  resolved_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
     "  PRIMARY KEY (request_id, name)"
     ");"
     "CREATE INDEX cruster_messages_due ON cruster_messages (deliver_at)"
     "  WHERE NOT processed AND claimed_by IS NULL AND deliver_at IS NOT NULL;"
     /* What a poll claims now is found apart from what waits for a time:
      * the sleepers are not walked by every poll. */
     "CREATE INDEX cruster_messages_claimable_now ON cruster_messages (seq)"
     "  WHERE NOT processed AND claimed_by IS NULL AND deliver_at IS NULL;"
     "DROP INDEX cruster_messages_claimable;"},
    {6, "cron slots",
     /* ClusterCron: one row per (job, slot time), written before the slot's
      * handler runs, so each slot runs once across failover and restarts
      * (state 0 running, 1 done, 2 failed). The newest row of a job is where
      * the job got to (the missed-slot policy starts from it); finished rows
      * older than storage_retention are removed as slots finish. */
     "CREATE TABLE cruster_cron_slots ("
     "  job TEXT NOT NULL,"
     "  slot_ms BIGINT NOT NULL,"
     "  state INT NOT NULL DEFAULT 0,"
     "  started_ms BIGINT NOT NULL,"
     "  finished_ms BIGINT NOT NULL DEFAULT 0,"
     "  error TEXT,"
     "  PRIMARY KEY (job, slot_ms)"
     ");"
     "CREATE INDEX cruster_cron_slots_running ON cruster_cron_slots (job, slot_ms) WHERE state = 0;"},
};
#define N_MIGRATIONS (sizeof migrations / sizeof migrations[0])

int cruster_storage_pg_schema_version(void) { return PG_SCHEMA_VERSION; }

int pg_quote_table(PGconn *c, const char *table, char *out, size_t outsz) {
  const char *dot = strchr(table, '.');
  char *a = NULL, *b = NULL;
  int rc = -1;
  if (dot) {
    char schema[128];
    size_t n = (size_t)(dot - table);
    if (n >= sizeof(schema)) return -1;
    memcpy(schema, table, n);
    schema[n] = 0;
    a = PQescapeIdentifier(c, schema, n);
    b = PQescapeIdentifier(c, dot + 1, strlen(dot + 1));
    if (a && b && (size_t)snprintf(out, outsz, "%s.%s", a, b) < outsz) rc = 0;
  } else {
    a = PQescapeIdentifier(c, table, strlen(table));
    if (a && (size_t)snprintf(out, outsz, "%s", a) < outsz) rc = 0;
  }
  PQfreemem(a);
  PQfreemem(b);
  return rc;
}

PGconn *pg_connect_blocking(const char *conninfo, cruster_error **err) {
  const char *keys[] = {"dbname", "connect_timeout", NULL};
  const char *vals[] = {conninfo, "5", NULL};
  /* expand_dbname: conninfo's own settings win over the defaults above. */
  PGconn *c = PQconnectdbParams(keys, vals, 1);
  if (!c) {
    core_error_set(err, CRUSTER_E_NOMEM, "out of memory connecting to PostgreSQL");
    return NULL;
  }
  if (PQstatus(c) != CONNECTION_OK) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
    core_text_one_line(msg); /* libpq: trailing newline, may span lines */
    core_error_set(err, CRUSTER_E_PERSISTENCE, "cannot connect to PostgreSQL: %s", msg);
    PQfinish(c);
    return NULL;
  }
  return c;
}

static cruster_status exec_ok(PGconn *c, const char *sql, cruster_error **err, const char *what) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    core_text_one_line(msg); /* libpq: trailing newline, may span lines */
    PQclear(r);
    return core_error_set(err, CRUSTER_E_PERSISTENCE, "%s failed: %s", what, msg);
  }
  PQclear(r);
  return CRUSTER_OK;
}

/* Reads the highest applied version (0 when none); -1 on error. */
static int current_version(PGconn *c, const char *qtable, int *missing, cruster_error **err) {
  char sql[512];
  *missing = 0;
  snprintf(sql, sizeof(sql), "SELECT coalesce(max(version), 0) FROM %s", qtable);
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state && strcmp(state, "42P01") == 0) { /* undefined_table */
      *missing = 1;
      PQclear(r);
      return 0;
    }
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    core_text_one_line(msg); /* libpq: trailing newline, may span lines */
    PQclear(r);
    core_error_set(err, CRUSTER_E_PERSISTENCE, "reading the migrations table failed: %s", msg);
    return -1;
  }
  int v = atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

cruster_status pg_migrate_conn(PGconn *c, const char *table, int *applied, cruster_error **err) {
  char qtable[300], sql[1024];
  if (applied) *applied = 0;
  if (pg_quote_table(c, table, qtable, sizeof(qtable)) != 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "bad migrations table name \"%s\"", table);
  /* Serialise concurrent migrators (several runners starting together). */
  cruster_status st = exec_ok(c, "SELECT pg_advisory_lock(7306001)", err, "taking the migration lock");
  if (st != CRUSTER_OK) return st;
  snprintf(sql, sizeof(sql),
           "CREATE TABLE IF NOT EXISTS %s (version INT PRIMARY KEY, name TEXT NOT NULL, "
           "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
           qtable);
  st = exec_ok(c, sql, err, "creating the migrations table");
  int missing = 0;
  int v = st == CRUSTER_OK ? current_version(c, qtable, &missing, err) : -1;
  if (st == CRUSTER_OK && v < 0) st = CRUSTER_E_PERSISTENCE;
  if (st == CRUSTER_OK && v > PG_SCHEMA_VERSION)
    st = core_error_set(err, CRUSTER_E_PERSISTENCE,
                        "the database schema is at version %d, newer than this cruster supports (%d): "
                        "upgrade cruster",
                        v, PG_SCHEMA_VERSION);
  for (size_t i = 0; st == CRUSTER_OK && i < N_MIGRATIONS; i++) {
    const migration *m = &migrations[i];
    if (m->version <= v) continue;
    st = exec_ok(c, "BEGIN", err, "starting a migration");
    if (st == CRUSTER_OK) {
      char what[128];
      snprintf(what, sizeof(what), "migration %d (%s)", m->version, m->name);
      st = exec_ok(c, m->sql, err, what);
    }
    if (st == CRUSTER_OK) {
      char *name = PQescapeLiteral(c, m->name, strlen(m->name));
      snprintf(sql, sizeof(sql), "INSERT INTO %s (version, name) VALUES (%d, %s)", qtable,
               m->version, name ? name : "''");
      PQfreemem(name);
      st = exec_ok(c, sql, err, "recording a migration");
    }
    if (st == CRUSTER_OK) st = exec_ok(c, "COMMIT", err, "committing a migration");
    if (st != CRUSTER_OK) {
      PGresult *r = PQexec(c, "ROLLBACK");
      PQclear(r);
    } else if (applied) {
      (*applied)++;
    }
  }
  PGresult *r = PQexec(c, "SELECT pg_advisory_unlock(7306001)");
  PQclear(r);
  return st;
}

cruster_status pg_check_schema(PGconn *c, const char *table, int auto_migrate, cruster_error **err) {
  char qtable[300];
  if (pg_quote_table(c, table, qtable, sizeof(qtable)) != 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "bad migrations table name \"%s\"", table);
  int missing = 0;
  int v = current_version(c, qtable, &missing, err);
  if (v < 0) return CRUSTER_E_PERSISTENCE;
  if (v > PG_SCHEMA_VERSION)
    return core_error_set(err, CRUSTER_E_PERSISTENCE,
                          "the database schema is at version %d, newer than this cruster supports "
                          "(%d): upgrade cruster",
                          v, PG_SCHEMA_VERSION);
  if (v == PG_SCHEMA_VERSION) return CRUSTER_OK;
  if (auto_migrate) return pg_migrate_conn(c, table, NULL, err);
  return core_error_set(err, CRUSTER_E_PERSISTENCE,
                        "the database is not migrated (schema version %d, %s needs %d): call "
                        "cruster_storage_pg_migrate or set storage_auto_migrate",
                        v, missing ? "no migrations table;" : "cruster", PG_SCHEMA_VERSION);
}

/* The advisory lock's key: a constant in the high 32 bits ("crus"), the
 * oid of this schema's cruster_messages in the low ones. */
#define PG_LOCK_KEY "(1668445555::int8 * 4294967296 + 'cruster_messages'::regclass::oid::int8)"

cruster_status pg_lock_schema(PGconn *c, cruster_error **err) {
  PGresult *r = PQexec(c, "SELECT pg_try_advisory_lock(" PG_LOCK_KEY ")");
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    core_text_one_line(msg); /* libpq: trailing newline, may span lines */
    PQclear(r);
    return core_error_set(err, CRUSTER_E_PERSISTENCE, "taking the schema's lock failed: %s", msg);
  }
  int got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
  PQclear(r);
  if (got) return CRUSTER_OK;
  /* Who has it (best effort: the holder may be gone by now). */
  char who[256] = "another session";
  r = PQexec(c, "SELECT format('process %s of %s (%s, connected %s)', a.pid,"
                " coalesce(host(a.client_addr), 'a local client'),"
                " coalesce(nullif(a.application_name, ''), 'no application_name'),"
                " date_trunc('second', a.backend_start))"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND l.classid = 1668445555"
                " AND l.objid = 'cruster_messages'::regclass::oid LIMIT 1");
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    snprintf(who, sizeof(who), "PostgreSQL backend %s", PQgetvalue(r, 0, 0));
  PQclear(r);
  return core_error_set(err, CRUSTER_E_STATE,
                        "another cruster runtime already uses this database schema (its lock is "
                        "held by %s): in single-node mode one runtime owns a schema; give each "
                        "its own schema (options=-csearch_path=...), or stop the other one",
                        who);
}

cruster_status cruster_storage_pg_migrate(const char *conninfo, const char *table, int *applied,
                                          cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (applied) *applied = 0;
  if (!conninfo) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "conninfo must not be NULL");
  if (!table) table = "cruster_migrations";
  cruster_config *probe = cruster_config_new();
  if (!probe) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  cruster_status st = cruster_config_set(probe, "storage_migrations_table", table, err);
  cruster_config_free(probe);
  if (st != CRUSTER_OK) {
    if (err && *err) (*err)->status = CRUSTER_E_INVALID_ARGUMENT;
    return CRUSTER_E_INVALID_ARGUMENT;
  }
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
  if (!opts) {
    st = core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "bad PostgreSQL connection string: %s",
                        perr ? perr : "out of memory");
    PQfreemem(perr);
    return st;
  }
  PQconninfoFree(opts);
  PGconn *c = pg_connect_blocking(conninfo, err);
  if (!c) return CRUSTER_E_PERSISTENCE;
  st = pg_migrate_conn(c, table, applied, err);
  PQfinish(c);
  return st;
}
