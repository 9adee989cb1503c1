/* Shared helpers for the PostgreSQL integration tests (header-only, static
 * functions). Include after <cmocka.h>: failures use fail_msg.
 *
 * Every test isolates itself in its own schema t_<pid>_<n>_<random>: created
 * with a plain libpq connection, handed to cruster through
 * "options=-csearch_path=<schema>" (so the migrations table lives there too),
 * and dropped at the end. */
#ifndef PG_SUPPORT_H
#define PG_SUPPORT_H

/* Not every test program uses every helper. */
#pragma GCC diagnostic ignored "-Wunused-function"

#include <cruster/cruster.h>
#include <cruster/pg.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "test_support.h"

/* How long a test waits for something that must happen (an answer, a
 * delivery, a row going away) before failing: generous, so that only what
 * never happens fails, however loaded the machine. Never a rate. */
#define PGT_DEADLINE_MS TS_DEADLINE_MS

/* The connection string of the test server: the test FAILS (never skips)
 * when it is missing. */
static const char *pgt_base_conninfo(void) {
  const char *c = getenv("CRUSTER_TEST_PG");
  if (!c || !*c)
    fail_msg("CRUSTER_TEST_PG is not set: integration tests need the PostgreSQL of "
             "`scripts/dev services start` (then `source .dev/env`)");
  return c;
}

static int64_t pgt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t pgt_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void pgt_no_notice(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static PGconn *pgt_connect(const char *conninfo) {
  PGconn *c = PQconnectdb(conninfo);
  if (PQstatus(c) != CONNECTION_OK) {
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
    PQfinish(c);
    fail_msg("cannot connect to the test PostgreSQL (%s): %s", conninfo, msg);
  }
  PQsetNoticeProcessor(c, pgt_no_notice, NULL);
  return c;
}

/* Runs sql; fails the test on error. */
static void pgt_exec(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType s = PQresultStatus(r);
  if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    PQclear(r);
    fail_msg("SQL failed: %s\n  %s", sql, msg);
  }
  PQclear(r);
}

/* Runs a query returning one value; NULL -> def. Fails the test on error. */
static long long pgt_scalar(PGconn *c, const char *sql, long long def) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    PQclear(r);
    fail_msg("SQL failed: %s\n  %s", sql, msg);
  }
  long long v = def;
  if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* Like pgt_scalar but with a formatted query. */
static long long pgt_scalarf(PGconn *c, long long def, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static long long pgt_scalarf(PGconn *c, long long def, const char *fmt, ...) {
  char sql[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof(sql), fmt, ap);
  va_end(ap);
  return pgt_scalar(c, sql, def);
}

static void pgt_execf(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pgt_execf(PGconn *c, const char *fmt, ...) {
  char sql[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof(sql), fmt, ap);
  va_end(ap);
  pgt_exec(c, sql);
}

/* A per-test schema. */
typedef struct pgt_schema {
  char name[64];
  char conninfo[1536]; /* base conninfo + search_path = name */
  PGconn *admin;       /* plain connection, search_path = name */
} pgt_schema;

static void pgt_schema_create(pgt_schema *s) {
  static atomic_int seq;
  const char *base = pgt_base_conninfo();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  srand((unsigned)(ts.tv_nsec ^ (long)getpid()));
  snprintf(s->name, sizeof(s->name), "t_%ld_%d_%d", (long)getpid(), atomic_fetch_add(&seq, 1),
           rand() % 1000000);
  snprintf(s->conninfo, sizeof(s->conninfo), "%s options=-csearch_path=%s", base, s->name);
  PGconn *c = pgt_connect(base);
  pgt_execf(c, "CREATE SCHEMA %s", s->name);
  PQfinish(c);
  s->admin = pgt_connect(s->conninfo);
}

static void pgt_schema_drop(pgt_schema *s) {
  if (s->admin) PQfinish(s->admin);
  s->admin = NULL;
  PGconn *c = PQconnectdb(pgt_base_conninfo());
  if (PQstatus(c) == CONNECTION_OK) {
    PQsetNoticeProcessor(c, pgt_no_notice, NULL);
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP SCHEMA IF EXISTS %s CASCADE", s->name);
    PQclear(PQexec(c, sql));
  }
  PQfinish(c);
}

/* Catalog checks read pg_class / pg_namespace (plain MVCC scans). Views
 * such as information_schema.tables or pg_indexes call functions
 * (privilege checks, pg_get_indexdef) on every object of the database,
 * including those of other test programs' schemas, which they may be
 * dropping at that moment: "could not open relation with OID ...". */
#define PGT_RELATION_IN_SCHEMA                                                                     \
  "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "                 \
  "WHERE n.nspname = '%s' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "

/* 1 if table `name` exists in the schema. */
static int pgt_table_exists(pgt_schema *s, const char *name) {
  return pgt_scalarf(s->admin, 0, PGT_RELATION_IN_SCHEMA "AND c.relname = '%s'", s->name, name) > 0;
}

static long long pgt_count(pgt_schema *s, const char *table) {
  return pgt_scalarf(s->admin, -1, "SELECT count(*) FROM %s.%s", s->name, table);
}

static void pgt_migrate(pgt_schema *s) {
  cruster_error *err = NULL;
  int applied = -1;
  if (cruster_storage_pg_migrate(s->conninfo, NULL, &applied, &err) != CRUSTER_OK)
    fail_msg("cruster_storage_pg_migrate: %s", cruster_error_message(err));
  cruster_error_free(err);
}

/* A config with the quiet logger and `extra` ("name=value;..."). */
static cruster_config *pgt_config(const char *extra) { return ts_config(extra); }

/* Creates a runtime with PG storage on `conninfo`; returns the status of
 * cruster_runtime_new (and *errmsg, malloc'ed, on failure). */
static int pgt_runtime_try(const char *conninfo, const char *extra, cruster_runtime **out,
                           char **errmsg) {
  cruster_config *cfg = pgt_config(extra);
  cruster_storage *st = NULL;
  cruster_error *err = NULL;
  *out = NULL;
  if (errmsg) *errmsg = NULL;
  int s = cruster_storage_pg_new(conninfo, &st, &err);
  if (s == CRUSTER_OK) s = cruster_runtime_new(cfg, st, NULL, out, &err);
  if (s != CRUSTER_OK && errmsg) *errmsg = strdup(cruster_error_message(err));
  cruster_error_free(err);
  cruster_config_free(cfg);
  return s;
}

/* A started runtime on the schema with the given entity definitions. */
static cruster_runtime *pgt_runtime(pgt_schema *s, const char *extra, cruster_entity_def **defs,
                                    size_t ndefs) {
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  int st = pgt_runtime_try(s->conninfo, extra, &rt, &msg);
  if (st != CRUSTER_OK) fail_msg("runtime_new (%s): %s", cruster_status_name(st), msg);
  cruster_error *err = NULL;
  for (size_t i = 0; i < ndefs; i++)
    if (cruster_runtime_register_entity(rt, defs[i], &err) != CRUSTER_OK)
      fail_msg("register: %s", cruster_error_message(err));
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK)
    fail_msg("start: %s", cruster_error_message(err));
  return rt;
}

/* Case-insensitive substring. */
static int pgt_contains(const char *hay, const char *needle) {
  if (!hay) return 0;
  size_t n = strlen(needle);
  for (const char *p = hay; *p; p++)
    if (strncasecmp(p, needle, n) == 0) return 1;
  return 0;
}

/* The start of a test program's main: it never hangs (ctest's timeout is
 * 300 s), and says at once when the server's address is missing. */
static void pgt_main_start(void) {
  alarm(280);
  if (!getenv("CRUSTER_TEST_PG") || !*getenv("CRUSTER_TEST_PG"))
    fprintf(stderr, "CRUSTER_TEST_PG is not set: every test will fail. Run `scripts/dev services "
                    "start` and `source .dev/env`.\n");
}

/* Waits up to `ms` until fn(arg) is true. */
static int pgt_eventually(int (*fn)(void *), void *arg, long ms) {
  int64_t end = pgt_mono_ms() + ms;
  while (pgt_mono_ms() < end) {
    if (fn(arg)) return 1;
    ts_sleep_ms(10);
  }
  return fn(arg);
}

#endif
