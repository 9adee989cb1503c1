/* PostgreSQL message storage against the real server of scripts/dev:
 * migrations, bad environment and bad input, persisted send/notify,
 * idempotency keys across restarts, delayed delivery, per-entity order,
 * poll/join by key, dead letters, retention, handler errors, concurrency and
 * commit sharing. Each test runs in its own schema. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include "pg_support.h"

/* ---- handlers ------------------------------------------------------------ */

typedef struct counter {
  atomic_long calls;
} counter;

/* Replies "<id>/<persisted>:<payload>" and counts. */
static void h_id(void *user, cruster_request *req) {
  counter *c = user;
  if (c) atomic_fetch_add(&c->calls, 1);
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  char buf[600];
  int n = snprintf(buf, sizeof(buf), "%lld/%d:%.*s", (long long)cruster_request_id(req),
                   cruster_request_is_persisted(req), (int)len, p ? (const char *)p : "");
  cruster_request_reply(req, buf, (size_t)n);
}

static void h_echo(void *user, cruster_request *req) {
  counter *c = user;
  if (c) atomic_fetch_add(&c->calls, 1);
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

static void h_fail_app(void *user, cruster_request *req) {
  counter *c = user;
  if (c) atomic_fetch_add(&c->calls, 1);
  cruster_request_fail(req, -1042, "insufficient funds: balance 3, wanted 5");
}

static void h_big_reply(void *user, cruster_request *req) {
  (void)user;
  static char big[4096];
  memset(big, 'r', sizeof(big));
  cruster_request_reply(req, big, sizeof(big));
}

/* Records when it ran. */
typedef struct stamp {
  atomic_llong at;
  atomic_int calls;
} stamp;
static void h_stamp(void *user, cruster_request *req) {
  stamp *s = user;
  atomic_store(&s->at, (long long)pgt_now_ms());
  atomic_fetch_add(&s->calls, 1);
  cruster_request_reply(req, "ok", 2);
}

/* Parks requests until the gate opens; mode 1 = never answer at all. */
typedef struct gate {
  uv_mutex_t mu;
  uv_cond_t cv;
  int open;
  atomic_int entered;
  atomic_int never; /* 1: keep the request without answering */
  cruster_request *held[256];
  atomic_int nheld;
} gate;
static void gate_init(gate *g) {
  memset(g, 0, sizeof(*g));
  uv_mutex_init(&g->mu);
  uv_cond_init(&g->cv);
}
static void gate_open(gate *g) {
  uv_mutex_lock(&g->mu);
  g->open = 1;
  uv_cond_broadcast(&g->cv);
  uv_mutex_unlock(&g->mu);
}
static void gate_destroy(gate *g) {
  uv_cond_destroy(&g->cv);
  uv_mutex_destroy(&g->mu);
}
static void h_gated(void *user, cruster_request *req) {
  gate *g = user;
  atomic_fetch_add(&g->entered, 1);
  if (atomic_load(&g->never)) {
    int i = atomic_fetch_add(&g->nheld, 1);
    if (i < 256) g->held[i] = req;
    return;
  }
  uv_mutex_lock(&g->mu);
  while (!g->open && !cruster_request_cancelled(req)) {
    uv_mutex_unlock(&g->mu);
    ts_sleep_ms(2);
    uv_mutex_lock(&g->mu);
  }
  uv_mutex_unlock(&g->mu);
  h_echo(NULL, req);
}

/* Appends the payload to a sequence (order checks). */
typedef struct seq_log {
  uv_mutex_t mu;
  char buf[8192];
  size_t len;
  atomic_int n;
} seq_log;
static void h_seq(void *user, cruster_request *req) {
  seq_log *l = user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  uv_mutex_lock(&l->mu);
  if (l->len + len + 1 < sizeof(l->buf)) {
    memcpy(l->buf + l->len, p, len);
    l->len += len;
    l->buf[l->len++] = ',';
    l->buf[l->len] = 0;
  }
  uv_mutex_unlock(&l->mu);
  atomic_fetch_add(&l->n, 1);
  cruster_request_reply(req, NULL, 0);
}

/* ---- reply capture -------------------------------------------------------- */



static cruster_call_opts keyed(const char *key) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = key;
  o.idempotency_key_len = strlen(key);
  return o;
}

/* A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
static int closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t l = sizeof(a);
  getsockname(fd, (struct sockaddr *)&a, &l);
  close(fd);
  return ntohs(a.sin_port);
}

/* ---- migrations ------------------------------------------------------------ */

static void migrate_applies_all_then_nothing(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  int version = cruster_storage_pg_schema_version();
  assert_true(version >= 1);
  cruster_error *err = NULL;
  int applied = -1;
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, NULL, &applied, &err), CRUSTER_OK);
  assert_true(applied >= 1);
  assert_true(applied <= version);
  printf("  migrations applied on a fresh schema: %d (schema version %d)\n", applied, version);
  /* The framework tables and the default migrations table are in our schema. */
  assert_true(pgt_table_exists(&s, "cruster_migrations"));
  assert_true(pgt_table_exists(&s, "cruster_messages"));
  /* answers live in the message row: no second table */
  assert_false(pgt_table_exists(&s, "cruster_replies"));
  /* framework tables only */
  assert_int_equal(
      pgt_scalarf(s.admin, -1, PGT_RELATION_IN_SCHEMA "AND c.relname NOT LIKE 'cruster\\_%%'", s.name),
      0);
  /* Nothing leaked into public. */
  assert_int_equal(
      pgt_scalarf(s.admin, -1, PGT_RELATION_IN_SCHEMA "AND c.relname = 'cruster_migrations'", "public"),
      0);
  /* Second run: nothing to do. */
  applied = -1;
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, NULL, &applied, &err), CRUSTER_OK);
  assert_int_equal(applied, 0);
  /* applied may be NULL */
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, NULL, NULL, &err), CRUSTER_OK);
  pgt_schema_drop(&s);
}

static void migrate_uses_custom_table_name(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  cruster_error *err = NULL;
  int applied = -1;
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, "app_schema_versions", &applied, &err),
                   CRUSTER_OK);
  assert_true(applied >= 1);
  assert_true(pgt_table_exists(&s, "app_schema_versions"));
  assert_false(pgt_table_exists(&s, "cruster_migrations"));
  assert_true(pgt_table_exists(&s, "cruster_messages"));
  /* The runtime, told the same table name, finds the schema migrated. */
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  int st = pgt_runtime_try(s.conninfo, "storage_migrations_table=app_schema_versions", &rt, &msg);
  if (st != CRUSTER_OK) fail_msg("runtime_new: %s: %s", cruster_status_name(st), msg);
  cruster_runtime_free(rt);
  /* A bad table name is refused before anything happens. */
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, "bad name; drop table x", &applied, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  printf("  bad table name: %s\n", cruster_error_message(err));
  cruster_error_free(err);
  err = NULL;
  pgt_schema_drop(&s);
}

static void auto_migrate_from_config(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Auto");
  add(d, "run", CRUSTER_RPC_PERSISTED, h_echo, &c);
  cruster_runtime *rt = pgt_runtime(
      &s, "storage_auto_migrate=true;storage_migrations_table=auto_migs", &d, 1);
  assert_true(pgt_table_exists(&s, "auto_migs"));
  assert_false(pgt_table_exists(&s, "cruster_migrations"));
  assert_true(pgt_table_exists(&s, "cruster_messages"));
  char *out = NULL;
  assert_int_equal(send_str(rt, "Auto", "a", "run", "hello", NULL, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "hello");
  cruster_free(out);
  cruster_runtime_free(rt);
  /* Everything is applied now: an explicit migrate has nothing left to do. */
  int applied = -1;
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, "auto_migs", &applied, NULL), CRUSTER_OK);
  assert_int_equal(applied, 0);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

static void unmigrated_database_is_refused(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  int st = pgt_runtime_try(s.conninfo, NULL, &rt, &msg);
  assert_int_equal(st, CRUSTER_E_PERSISTENCE);
  assert_null(rt);
  printf("  unmigrated: %s\n", msg);
  assert_true(pgt_contains(msg, "migrat"));
  free(msg);
  /* nothing was created behind our back */
  assert_false(pgt_table_exists(&s, "cruster_messages"));
  pgt_schema_drop(&s);
}

static void newer_schema_is_refused_and_left_alone(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  int version = cruster_storage_pg_schema_version();
  /* Record a version newer than this library knows (copy the newest row). */
  pgt_exec(s.admin,
           "CREATE TEMP TABLE newer AS SELECT * FROM cruster_migrations "
           "WHERE version = (SELECT max(version) FROM cruster_migrations)");
  pgt_execf(s.admin, "UPDATE newer SET version = %d", version + 1);
  pgt_exec(s.admin, "INSERT INTO cruster_migrations SELECT * FROM newer");
  long long rows = pgt_count(&s, "cruster_migrations");

  cruster_error *err = NULL;
  int applied = -1;
  assert_int_equal(cruster_storage_pg_migrate(s.conninfo, NULL, &applied, &err),
                   CRUSTER_E_PERSISTENCE);
  printf("  migrate on newer schema: %s\n", cruster_error_message(err));
  assert_true(pgt_contains(cruster_error_message(err), "newer"));
  cruster_error_free(err);
  err = NULL;
  assert_int_equal(pgt_count(&s, "cruster_migrations"), rows);

  cruster_runtime *rt = NULL;
  char *msg = NULL;
  for (int autom = 0; autom < 2; autom++) {
    int st = pgt_runtime_try(s.conninfo, autom ? "storage_auto_migrate=true" : NULL, &rt, &msg);
    assert_int_equal(st, CRUSTER_E_PERSISTENCE);
    printf("  runtime_new on newer schema (auto_migrate=%d): %s\n", autom, msg);
    assert_true(pgt_contains(msg, "newer"));
    free(msg);
  }
  assert_int_equal(pgt_count(&s, "cruster_migrations"), rows);
  pgt_schema_drop(&s);
}

/* ---- bad environment / input ------------------------------------------------ */

static void unreachable_server_fails_fast_and_clearly(void **state) {
  (void)state;
  pgt_base_conninfo();
  char ci[256];
  int port = closed_port();
  snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d user=postgres dbname=cruster_test", port);
  int64_t t0 = pgt_mono_ms();
  cruster_runtime *rt = NULL;
  char *msg = NULL;
  int st = pgt_runtime_try(ci, "storage_auto_migrate=false", &rt, &msg);
  assert_int_equal(st, CRUSTER_E_PERSISTENCE);
  assert_null(rt);
  printf("  unreachable (runtime_new): %s\n", msg);
  assert_non_null(msg);
  assert_true(strlen(msg) > 0);
  /* The message must say what failed: a connection, to which server. */
  assert_true(pgt_contains(msg, "connect") || pgt_contains(msg, "refused"));
  free(msg);
  cruster_error *err = NULL;
  assert_int_equal(cruster_storage_pg_migrate(ci, NULL, NULL, &err), CRUSTER_E_PERSISTENCE);
  printf("  unreachable (migrate): %s\n", cruster_error_message(err));
  assert_true(pgt_contains(cruster_error_message(err), "connect") ||
              pgt_contains(cruster_error_message(err), "refused"));
  cruster_error_free(err);
  /* not a hang (generous bound: a refused TCP connect is immediate) */
  assert_true(pgt_mono_ms() - t0 < 60000);
}

static void wrong_database_and_role_give_the_servers_reason(void **state) {
  (void)state;
  const char *base = pgt_base_conninfo();
  char ci[1536];
  const char *bad[2] = {"dbname=cruster_no_such_db_q7", "user=cruster_no_such_role_q7"};
  const char *needle[2] = {"cruster_no_such_db_q7", "cruster_no_such_role_q7"};
  for (int i = 0; i < 2; i++) {
    snprintf(ci, sizeof(ci), "%s %s", base, bad[i]);
    cruster_runtime *rt = NULL;
    char *msg = NULL;
    int st = pgt_runtime_try(ci, NULL, &rt, &msg);
    assert_int_equal(st, CRUSTER_E_PERSISTENCE);
    assert_null(rt);
    printf("  %s (runtime_new): %s\n", bad[i], msg);
    assert_true(pgt_contains(msg, needle[i]));
    assert_true(pgt_contains(msg, "does not exist"));
    free(msg);
    cruster_error *err = NULL;
    assert_int_equal(cruster_storage_pg_migrate(ci, NULL, NULL, &err), CRUSTER_E_PERSISTENCE);
    assert_true(pgt_contains(cruster_error_message(err), needle[i]));
    cruster_error_free(err);
  }
}

static void bad_conninfo_is_invalid_argument(void **state) {
  (void)state;
  const char *bad[] = {"host=127.0.0.1 port", "no_such_option=1", "host='unterminated",
                       "postgresql://[::1"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    cruster_storage *st = NULL;
    cruster_error *err = NULL;
    assert_int_equal(cruster_storage_pg_new(bad[i], &st, &err), CRUSTER_E_INVALID_ARGUMENT);
    assert_null(st);
    printf("  conninfo \"%s\": %s\n", bad[i], cruster_error_message(err));
    assert_true(strlen(cruster_error_message(err)) > 0);
    cruster_error_free(err);
    err = NULL;
    assert_int_equal(cruster_storage_pg_migrate(bad[i], NULL, NULL, &err),
                     CRUSTER_E_INVALID_ARGUMENT);
    cruster_error_free(err);
  }
  cruster_storage *st = NULL;
  assert_int_equal(cruster_storage_pg_new(NULL, &st, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_storage_pg_new("host=127.0.0.1", NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_storage_pg_migrate(NULL, NULL, NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  /* A syntactically fine string is accepted without contacting anything. */
  assert_int_equal(cruster_storage_pg_new("host=127.0.0.1 port=1 dbname=x", &st, NULL), CRUSTER_OK);
  cruster_storage_free(st);
}

/* ---- persisted calls ----------------------------------------------------------- */

static int one_row_left(void *arg) { return pgt_count((pgt_schema *)arg, "cruster_messages") == 1; }

static void persisted_send_round_trip_is_stored(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Acct");
  add(d, "deposit", CRUSTER_RPC_PERSISTED, h_id, &c);
  add(d, "peek", 0, h_id, &c);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  char *out = NULL;
  assert_int_equal(send_str(rt, "Acct", "a-1", "deposit", "5", NULL, &out, NULL), CRUSTER_OK);
  assert_non_null(strstr(out, "/1:5"));
  cruster_free(out);
  /* An unkeyed message is deleted once answered (nobody can ask for its
   * answer again); a keyed one keeps its answer in its row. */
  cruster_call_opts k = keyed("dep-1");
  assert_int_equal(send_str(rt, "Acct", "a-1", "deposit", "6", &k, &out, NULL), CRUSTER_OK);
  assert_non_null(strstr(out, "/1:6"));
  cruster_free(out);
  assert_true(pgt_eventually(one_row_left, &s, PGT_DEADLINE_MS));
  assert_int_equal(pgt_scalarf(s.admin, -1,
                               "SELECT count(*) FROM %s.cruster_messages WHERE processed AND "
                               "reply_status = 0 AND convert_from(reply_payload, 'UTF8') LIKE '%%/1:6'",
                               s.name),
                   1);
  /* a non-persisted method does not touch storage */
  long long before = pgt_count(&s, "cruster_messages");
  assert_int_equal(send_str(rt, "Acct", "a-1", "peek", "x", NULL, &out, NULL), CRUSTER_OK);
  assert_non_null(strstr(out, "/0:x"));
  cruster_free(out);
  assert_int_equal(pgt_count(&s, "cruster_messages"), before);
  /* ...unless the call asks for it */
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_PERSISTED;
  assert_int_equal(send_str(rt, "Acct", "a-1", "peek", "y", &o, &out, NULL), CRUSTER_OK);
  assert_non_null(strstr(out, "/1:y"));
  cruster_free(out);
  assert_true(pgt_eventually(one_row_left, &s, PGT_DEADLINE_MS));
  /* empty payload */
  assert_int_equal(send_str(rt, "Acct", "a-2", "deposit", NULL, NULL, &out, NULL), CRUSTER_OK);
  assert_non_null(strstr(out, "/1:"));
  cruster_free(out);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

static void fresh_request_id_per_call(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Acct");
  add(d, "reset", CRUSTER_RPC_PERSISTED, h_id, &c);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  char *a = NULL, *b = NULL;
  assert_int_equal(send_str(rt, "Acct", "x", "reset", "same", NULL, &a, NULL), CRUSTER_OK);
  assert_int_equal(send_str(rt, "Acct", "x", "reset", "same", NULL, &b, NULL), CRUSTER_OK);
  assert_string_not_equal(a, b);
  assert_int_equal(atomic_load(&c.calls), 2);
  cruster_free(a);
  cruster_free(b);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

static void idempotency_key_returns_stored_reply_across_restarts(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Acct");
  add(d, "charge", CRUSTER_RPC_PERSISTED, h_id, &c);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  cruster_call_opts o = keyed("order-4711");
  char *k1 = NULL, *k2 = NULL, *k3 = NULL;
  assert_int_equal(send_str(rt, "Acct", "x", "charge", "p1", &o, &k1, NULL), CRUSTER_OK);
  assert_int_equal(send_str(rt, "Acct", "x", "charge", "p2", &o, &k2, NULL), CRUSTER_OK);
  assert_string_equal(k1, k2);
  assert_int_equal(atomic_load(&c.calls), 1);
  char expect[128];
  snprintf(expect, sizeof(expect), "%lld/1:p1",
           (long long)cruster_persisted_request_id("Acct", "x", "charge", "order-4711", 10));
  assert_string_equal(k1, expect);
  /* notify with the same key: accepted, not run again */
  assert_int_equal(cruster_notify_sync(rt, "Acct", "x", "charge", "p3", 2, &o, NULL), CRUSTER_OK);
  ts_sleep_ms(200);
  assert_int_equal(atomic_load(&c.calls), 1);
  cruster_runtime_free(rt);

  /* A new runtime (think: new process) on the same schema: the stored reply
   * comes back, the handler does not run. */
  counter c2 = {0};
  cruster_entity_def *d2 = def_new("Acct");
  add(d2, "charge", CRUSTER_RPC_PERSISTED, h_id, &c2);
  rt = pgt_runtime(&s, NULL, &d2, 1);
  assert_int_equal(send_str(rt, "Acct", "x", "charge", "p4", &o, &k3, NULL), CRUSTER_OK);
  assert_string_equal(k3, k1);
  assert_int_equal(atomic_load(&c2.calls), 0);
  /* and poll_reply reads it */
  int ready = -1;
  void *rep = NULL;
  size_t rlen = 0;
  cruster_error *err = NULL;
  assert_int_equal(cruster_poll_reply(rt, "Acct", "x", "charge", "order-4711", 10, &ready, &rep,
                                      &rlen, &err),
                   CRUSTER_OK);
  assert_int_equal(ready, 1);
  assert_int_equal(rlen, strlen(k1));
  assert_memory_equal(rep, k1, rlen);
  cruster_free(rep);
  /* the same key on another entity is another message */
  char *k4 = NULL;
  assert_int_equal(send_str(rt, "Acct", "y", "charge", "p5", &o, &k4, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&c2.calls), 1);
  assert_string_not_equal(k4, k1);
  cruster_free(k1);
  cruster_free(k2);
  cruster_free(k3);
  cruster_free(k4);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  cruster_entity_def_free(d2);
  pgt_schema_drop(&s);
}

typedef struct wait_calls {
  atomic_long *calls;
  long want;
} wait_calls;
static int calls_reached(void *arg) {
  wait_calls *w = arg;
  return atomic_load(w->calls) >= w->want;
}

static void notify_is_persisted_and_delivered(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Mail");
  add(d, "drop", CRUSTER_RPC_PERSISTED, h_echo, &c);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  cruster_error *err = NULL;
  for (int i = 0; i < 5; i++)
    assert_int_equal(cruster_notify_sync(rt, "Mail", "m", "drop", "letter", 6, NULL, &err),
                     CRUSTER_OK);
  /* accepted means stored: every message is a row until handled (then the
   * unkeyed row is deleted), so rows + handled is never below 5 */
  assert_true(pgt_count(&s, "cruster_messages") + atomic_load(&c.calls) >= 5);
  wait_calls w = {&c.calls, 5};
  assert_true(pgt_eventually(calls_reached, &w, PGT_DEADLINE_MS));
  ts_sleep_ms(200);
  assert_int_equal(atomic_load(&c.calls), 5);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

static int stamp_ran(void *arg) { return atomic_load(&((stamp *)arg)->calls) >= 1; }

static void send_at_is_never_delivered_early(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  stamp st1 = {0}, st2 = {0};
  cruster_entity_def *d = def_new("Later");
  add(d, "ping", 0, h_stamp, &st1);
  add(d, "pong", 0, h_stamp, &st2);
  cruster_runtime *rt = pgt_runtime(&s, "storage_poll_interval=100ms", &d, 1);
  /* send_at: the answer comes, and the handler did not run before its time */
  int64_t now = pgt_now_ms();
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.deliver_at_ms = now + 1500;
  o.timeout_ms = PGT_DEADLINE_MS;
  char *out = NULL;
  assert_int_equal(send_str(rt, "Later", "l", "ping", NULL, &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "ok");
  cruster_free(out);
  assert_true(atomic_load(&st1.at) >= now + 1500);
  /* notify_at: stored at once, not run while its time has not come */
  now = pgt_now_ms();
  o.deliver_at_ms = now + 2000;
  assert_int_equal(cruster_notify_sync(rt, "Later", "l2", "pong", "z", 1, &o, NULL), CRUSTER_OK);
  assert_int_equal(pgt_scalarf(s.admin, -1,
                               "SELECT count(*) FROM %s.cruster_messages WHERE tag = 'pong' AND NOT processed",
                               s.name),
                   1);
  while (pgt_now_ms() < now + 1900) {
    assert_int_equal(atomic_load(&st2.calls), 0);
    ts_sleep_ms(20);
  }
  assert_true(pgt_eventually(stamp_ran, &st2, PGT_DEADLINE_MS));
  assert_true(atomic_load(&st2.at) >= now + 2000);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

typedef struct nwait {
  atomic_int ok, failed;
} nwait;
static void on_notified(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)data;
  (void)len;
  nwait *w = user;
  if (status == CRUSTER_OK) atomic_fetch_add(&w->ok, 1);
  else {
    fprintf(stderr, "  notify failed: %s %s\n", cruster_status_name(status), msg);
    atomic_fetch_add(&w->failed, 1);
  }
}

static int seq_reached(void *arg) { return atomic_load(&((seq_log *)arg)->n) >= 200; }
static int notifies_reported(void *arg) {
  nwait *w = arg;
  return atomic_load(&w->ok) + atomic_load(&w->failed) >= 100;
}

static void per_entity_order_is_send_order(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  seq_log l;
  memset(&l, 0, sizeof(l));
  uv_mutex_init(&l.mu);
  cruster_entity_def *d = def_new("Fifo");
  add(d, "step", CRUSTER_RPC_PERSISTED, h_seq, &l);
  cruster_entity_def_set_mailbox_capacity(d, 4, NULL);
  cruster_runtime *rt = pgt_runtime(&s, "storage_poll_interval=50ms", &d, 1);
  /* 100 notifies one after the other, then 100 issued back to back (async,
   * so that concurrent writes may share commits) -- all from this thread, so
   * send order is call order. */
  char expect[2048] = "";
  nwait w = {0};
  for (int i = 0; i < 200; i++) {
    char p[8];
    snprintf(p, sizeof(p), "%03d", i);
    strcat(expect, p);
    strcat(expect, ",");
    if (i < 100)
      assert_int_equal(cruster_notify_sync(rt, "Fifo", "f", "step", p, 3, NULL, NULL), CRUSTER_OK);
    else
      assert_int_equal(cruster_notify(rt, "Fifo", "f", "step", p, 3, NULL, on_notified, &w, NULL),
                       CRUSTER_OK);
  }
  assert_true(pgt_eventually(seq_reached, &l, PGT_DEADLINE_MS));
  /* every async notify reported back (accepted or not) */
  assert_true(pgt_eventually(notifies_reported, &w, PGT_DEADLINE_MS));
  ts_sleep_ms(200); /* a duplicate delivery would show here */
  assert_int_equal(atomic_load(&w.failed), 0);
  uv_mutex_lock(&l.mu);
  assert_string_equal(l.buf, expect);
  uv_mutex_unlock(&l.mu);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  uv_mutex_destroy(&l.mu);
  pgt_schema_drop(&s);
}

static int gate_entered(void *arg) { return atomic_load(&((gate *)arg)->entered) >= 1; }

static void poll_reply_reports_not_found_pending_and_ready(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  gate g;
  gate_init(&g);
  cruster_entity_def *d = def_new("Job");
  add(d, "run", CRUSTER_RPC_PERSISTED, h_gated, &g);
  add(d, "bad", CRUSTER_RPC_PERSISTED, h_fail_app, NULL);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  int ready = -1;
  void *rep = NULL;
  size_t rlen = 0;
  cruster_error *err = NULL;
  /* never sent */
  assert_int_equal(
      cruster_poll_reply(rt, "Job", "j", "run", "k-1", 3, &ready, &rep, &rlen, &err),
      CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  err = NULL;
  /* sent, not answered */
  cruster_call_opts o = keyed("k-1");
  reply r;
  reply_init(&r);
  assert_int_equal(cruster_send(rt, "Job", "j", "run", "result!", 7, &o, on_reply, &r, NULL), CRUSTER_OK);
  assert_true(pgt_eventually(gate_entered, &g, PGT_DEADLINE_MS));
  ready = -1;
  assert_int_equal(
      cruster_poll_reply(rt, "Job", "j", "run", "k-1", 3, &ready, &rep, &rlen, &err), CRUSTER_OK);
  assert_int_equal(ready, 0);
  /* answered */
  gate_open(&g);
  assert_true(reply_wait_ms(&r, PGT_DEADLINE_MS));
  assert_int_equal(r.status, CRUSTER_OK);
  ready = -1;
  rep = NULL;
  assert_int_equal(
      cruster_poll_reply(rt, "Job", "j", "run", "k-1", 3, &ready, &rep, &rlen, &err), CRUSTER_OK);
  assert_int_equal(ready, 1);
  assert_int_equal(rlen, 7);
  assert_memory_equal(rep, "result!", 7);
  cruster_free(rep);
  /* another method with the same key is not the same message */
  assert_int_equal(
      cruster_poll_reply(rt, "Job", "j", "bad", "k-1", 3, &ready, &rep, &rlen, &err),
      CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  err = NULL;
  /* a failed answer: its status and message */
  cruster_call_opts ob = keyed("k-2");
  assert_int_equal(send_str(rt, "Job", "j", "bad", "x", &ob, NULL, NULL), -1042);
  ready = -1;
  rep = NULL;
  assert_int_equal(
      cruster_poll_reply(rt, "Job", "j", "bad", "k-2", 3, &ready, &rep, &rlen, &err), -1042);
  assert_int_equal(ready, 1);
  assert_string_equal(cruster_error_message(err), "insufficient funds: balance 3, wanted 5");
  cruster_error_free(err);
  reply_destroy(&r);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  gate_destroy(&g);
  pgt_schema_drop(&s);
}

static void join_reply_waits_for_the_answer(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  gate g;
  gate_init(&g);
  cruster_entity_def *d = def_new("Job");
  add(d, "run", CRUSTER_RPC_PERSISTED, h_gated, &g);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  cruster_call_opts o = keyed("join-1");
  assert_int_equal(cruster_notify_sync(rt, "Job", "j", "run", "joined", 6, &o, NULL), CRUSTER_OK);
  assert_true(pgt_eventually(gate_entered, &g, PGT_DEADLINE_MS));
  reply r;
  reply_init(&r);
  cruster_call_opts jo = CRUSTER_CALL_OPTS_INIT;
  jo.timeout_ms = PGT_DEADLINE_MS;
  assert_int_equal(cruster_join_reply(rt, "Job", "j", "run", "join-1", 6, &jo, on_reply, &r, NULL),
                   CRUSTER_OK);
  ts_sleep_ms(300);
  assert_false(reply_done(&r)); /* the handler has not answered yet */
  gate_open(&g);
  assert_true(reply_wait_ms(&r, PGT_DEADLINE_MS));
  assert_int_equal(r.status, CRUSTER_OK);
  assert_string_equal(r.data, "joined");
  /* already answered: reported at once */
  reply r2;
  reply_init(&r2);
  assert_int_equal(cruster_join_reply(rt, "Job", "j", "run", "join-1", 6, &jo, on_reply, &r2, NULL),
                   CRUSTER_OK);
  assert_true(reply_wait_ms(&r2, PGT_DEADLINE_MS));
  assert_int_equal(r2.status, CRUSTER_OK);
  assert_string_equal(r2.data, "joined");
  /* unknown key */
  reply r3;
  reply_init(&r3);
  assert_int_equal(cruster_join_reply(rt, "Job", "j", "run", "nope", 4, &jo, on_reply, &r3, NULL),
                   CRUSTER_OK);
  assert_true(reply_wait_ms(&r3, PGT_DEADLINE_MS));
  assert_int_equal(r3.status, CRUSTER_E_NOT_FOUND);
  assert_true(strlen(r3.msg) > 0);
  reply_destroy(&r);
  reply_destroy(&r2);
  reply_destroy(&r3);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  gate_destroy(&g);
  pgt_schema_drop(&s);
}

typedef struct dl_ctx {
  cruster_runtime *rt;
  int64_t id;
} dl_ctx;

static int dead_listed(void *arg) {
  dl_ctx *c = arg;
  cruster_message_list *l = NULL;
  if (cruster_dead_letters(c->rt, 100, &l, NULL) != CRUSTER_OK) return 0;
  int found = 0;
  for (size_t i = 0; i < cruster_message_list_count(l); i++)
    if (cruster_message_list_request_id(l, i) == c->id) found = 1;
  cruster_message_list_free(l);
  return found;
}

/* A message whose handler never answers is interrupted at every stop; after
 * storage_message_max_retries deliveries it is a dead letter: listed, joined
 * as CRUSTER_E_DEAD_LETTER, and redelivered on request. */
static void dead_letters_are_listed_and_redelivered(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  const char *cfg =
      "storage_message_max_retries=2;storage_retry_backoff=50ms;storage_poll_interval=100ms;"
      "entity_termination_timeout=200ms";
  gate g;
  gate_init(&g);
  atomic_store(&g.never, 1);
  cruster_entity_def *d = def_new("Poison");
  add(d, "eat", CRUSTER_RPC_PERSISTED, h_gated, &g);
  cruster_call_opts o = keyed("dl-1");
  int64_t id = cruster_persisted_request_id("Poison", "p", "eat", "dl-1", 4);
  int dead = 0, runs = 0;
  cruster_runtime *rt = NULL;
  for (runs = 0; runs < 8 && !dead; runs++) {
    /* Counted before the runtime starts: it may deliver at once. */
    int before = atomic_load(&g.entered);
    rt = pgt_runtime(&s, cfg, &d, 1);
    if (runs == 0) {
      assert_int_equal(cruster_notify_sync(rt, "Poison", "p", "eat", "apple", 5, &o, NULL),
                       CRUSTER_OK);
      /* A healthy message to another entity is processed normally. */
    }
    /* Wait for a delivery, or for the message to turn dead. */
    dl_ctx c = {rt, id};
    int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
    while (pgt_mono_ms() < end) {
      if (atomic_load(&g.entered) > before) break;
      if (dead_listed(&c)) {
        dead = 1;
        break;
      }
      ts_sleep_ms(20);
    }
    if (!dead) {
      cruster_runtime_free(rt); /* interrupts the handler: a failed delivery */
      rt = NULL;
    }
  }
  printf("  deliveries before dead letter: %d (runtimes: %d)\n", atomic_load(&g.entered), runs);
  assert_true(dead);
  assert_true(atomic_load(&g.entered) >= 1);
  assert_true(atomic_load(&g.entered) <= 3); /* max_retries + 1 at most */

  cruster_message_list *l = NULL;
  cruster_error *err = NULL;
  assert_int_equal(cruster_dead_letters(rt, 10, &l, &err), CRUSTER_OK);
  assert_int_equal(cruster_message_list_count(l), 1);
  assert_int_equal(cruster_message_list_request_id(l, 0), id);
  assert_string_equal(cruster_message_list_entity_type(l, 0), "Poison");
  assert_string_equal(cruster_message_list_entity_id(l, 0), "p");
  assert_string_equal(cruster_message_list_method(l, 0), "eat");
  size_t plen = 0;
  const void *p = cruster_message_list_payload(l, 0, &plen);
  assert_int_equal(plen, 5);
  assert_memory_equal(p, "apple", 5);
  assert_true(cruster_message_list_attempts(l, 0) >= 2);
  cruster_message_list_free(l);

  /* Its caller learns it is dead. */
  reply r;
  reply_init(&r);
  assert_int_equal(cruster_join_reply(rt, "Poison", "p", "eat", "dl-1", 4, NULL, on_reply, &r, NULL),
                   CRUSTER_OK);
  assert_true(reply_wait_ms(&r, PGT_DEADLINE_MS));
  printf("  join of the dead letter: %s %s\n", cruster_status_name(r.status), r.msg);
  assert_int_equal(r.status, CRUSTER_E_DEAD_LETTER);
  reply_destroy(&r);
  int ready = -1;
  void *rep = NULL;
  size_t rlen;
  assert_int_equal(
      cruster_poll_reply(rt, "Poison", "p", "eat", "dl-1", 4, &ready, &rep, &rlen, &err),
      CRUSTER_E_DEAD_LETTER);
  assert_int_equal(ready, 1);
  cruster_error_free(err);
  err = NULL;

  /* Redeliver: the handler is fixed now and answers. */
  assert_int_equal(cruster_dead_letter_redeliver(rt, id + 1, &err), CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  err = NULL;
  atomic_store(&g.never, 0);
  gate_open(&g);
  int before = atomic_load(&g.entered);
  reply_init(&r);
  cruster_call_opts jo = CRUSTER_CALL_OPTS_INIT;
  jo.timeout_ms = PGT_DEADLINE_MS;
  assert_int_equal(cruster_dead_letter_redeliver(rt, id, &err), CRUSTER_OK);
  assert_int_equal(cruster_join_reply(rt, "Poison", "p", "eat", "dl-1", 4, &jo, on_reply, &r, NULL),
                   CRUSTER_OK);
  assert_true(reply_wait_ms(&r, PGT_DEADLINE_MS));
  assert_int_equal(r.status, CRUSTER_OK);
  assert_string_equal(r.data, "apple");
  assert_true(atomic_load(&g.entered) > before);
  reply_destroy(&r);
  assert_int_equal(cruster_dead_letters(rt, 10, &l, &err), CRUSTER_OK);
  assert_int_equal(cruster_message_list_count(l), 0);
  cruster_message_list_free(l);
  /* not a dead letter any more */
  assert_int_equal(cruster_dead_letter_redeliver(rt, id, &err), CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  gate_destroy(&g);
  pgt_schema_drop(&s);
}

typedef struct ret_ctx {
  pgt_schema *s;
  cruster_runtime *rt;
} ret_ctx;
static int processed_gone(void *arg) {
  ret_ctx *c = arg;
  int ready;
  void *rep = NULL;
  size_t rlen;
  int st = cruster_poll_reply(c->rt, "Ret", "r", "run", "old", 3, &ready, &rep, &rlen, NULL);
  cruster_free(rep);
  return st == CRUSTER_E_NOT_FOUND && pgt_count(c->s, "cruster_messages") == 1;
}

static void retention_deletes_processed_messages_only(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Ret");
  add(d, "run", CRUSTER_RPC_PERSISTED, h_echo, &c);
  cruster_runtime *rt =
      pgt_runtime(&s, "storage_retention=1s;storage_poll_interval=100ms", &d, 1);
  cruster_call_opts o = keyed("old");
  assert_int_equal(send_str(rt, "Ret", "r", "run", "done", &o, NULL, NULL), CRUSTER_OK);
  assert_int_equal(send_str(rt, "Ret", "r2", "run", "done too", NULL, NULL, NULL), CRUSTER_OK);
  /* unprocessed: due in an hour */
  cruster_call_opts later = keyed("future");
  later.deliver_at_ms = pgt_now_ms() + 3600 * 1000;
  assert_int_equal(cruster_notify_sync(rt, "Ret", "r", "run", "wait", 4, &later, NULL), CRUSTER_OK);
  /* The future one is stored, unprocessed. (The keyed answered one is stored
   * too, until retention deletes it: 1 s after its answer, which a busy
   * machine may have passed already, so its row is not required here. The
   * unkeyed one is deleted once answered.) */
  assert_int_equal(
      pgt_scalarf(s.admin, -1,
                  "SELECT count(*) FROM %s.cruster_messages WHERE keyed AND NOT processed", s.name),
      1);
  ret_ctx rc = {&s, rt};
  int gone = pgt_eventually(processed_gone, &rc, PGT_DEADLINE_MS);
  printf("  after retention: messages=%lld\n", pgt_count(&s, "cruster_messages"));
  assert_true(gone);
  /* the unprocessed one is still there and still pending */
  int ready = -1;
  void *rep = NULL;
  size_t rlen;
  assert_int_equal(
      cruster_poll_reply(rt, "Ret", "r", "run", "future", 6, &ready, &rep, &rlen, NULL), CRUSTER_OK);
  assert_int_equal(ready, 0);
  assert_int_equal(atomic_load(&c.calls), 2);
  /* the key is forgotten: the same key runs again */
  assert_int_equal(send_str(rt, "Ret", "r", "run", "again", &o, NULL, NULL), CRUSTER_OK);
  assert_int_equal(atomic_load(&c.calls), 3);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

static void oversized_payloads_are_refused(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Big");
  add(d, "in", CRUSTER_RPC_PERSISTED, h_echo, &c);
  add(d, "out", CRUSTER_RPC_PERSISTED, h_big_reply, NULL);
  cruster_runtime *rt = pgt_runtime(&s, "max_payload_size=1024", &d, 1);
  char big[2048];
  memset(big, 'x', sizeof(big));
  cruster_error *err = NULL;
  assert_int_equal(cruster_send_sync(rt, "Big", "b", "in", big, sizeof(big), NULL, NULL, NULL, &err),
                   CRUSTER_E_PAYLOAD_TOO_LARGE);
  printf("  oversized request: %s\n", cruster_error_message(err));
  cruster_error_free(err);
  err = NULL;
  assert_int_equal(cruster_notify_sync(rt, "Big", "b", "in", big, sizeof(big), NULL, &err),
                   CRUSTER_E_PAYLOAD_TOO_LARGE);
  cruster_error_free(err);
  err = NULL;
  assert_int_equal(pgt_count(&s, "cruster_messages"), 0);
  assert_int_equal(atomic_load(&c.calls), 0);
  /* exactly at the limit is fine */
  void *rep = NULL;
  size_t rlen = 0;
  assert_int_equal(cruster_send_sync(rt, "Big", "b", "in", big, 1024, NULL, &rep, &rlen, &err),
                   CRUSTER_OK);
  assert_int_equal(rlen, 1024);
  cruster_free(rep);
  /* an oversized reply reaches the caller as an error */
  char *msg = NULL;
  assert_int_equal(send_str(rt, "Big", "b", "out", "x", NULL, NULL, &msg), CRUSTER_E_PAYLOAD_TOO_LARGE);
  free(msg);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

static void handler_error_survives_storage(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Bank");
  add(d, "withdraw", CRUSTER_RPC_PERSISTED, h_fail_app, &c);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  char *msg = NULL;
  assert_int_equal(send_str(rt, "Bank", "b", "withdraw", "5", NULL, NULL, &msg), -1042);
  assert_string_equal(msg, "insufficient funds: balance 3, wanted 5");
  free(msg);
  cruster_call_opts o = keyed("w-1");
  assert_int_equal(send_str(rt, "Bank", "b", "withdraw", "5", &o, NULL, &msg), -1042);
  free(msg);
  assert_int_equal(atomic_load(&c.calls), 2);
  cruster_runtime_free(rt);
  /* restart: the stored failure comes back unchanged, without running */
  counter c2 = {0};
  cruster_entity_def *d2 = def_new("Bank");
  add(d2, "withdraw", CRUSTER_RPC_PERSISTED, h_fail_app, &c2);
  rt = pgt_runtime(&s, NULL, &d2, 1);
  assert_int_equal(send_str(rt, "Bank", "b", "withdraw", "5", &o, NULL, &msg), -1042);
  assert_string_equal(msg, "insufficient funds: balance 3, wanted 5");
  free(msg);
  assert_int_equal(atomic_load(&c2.calls), 0);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  cruster_entity_def_free(d2);
  pgt_schema_drop(&s);
}

/* ---- concurrency ----------------------------------------------------------------- */

typedef struct many {
  cruster_runtime *rt;
  atomic_int ok, failed, done;
  atomic_int next;
  int total;
} many;

static void many_issue(many *m);
static int no_rows_left(void *arg) { return pgt_count((pgt_schema *)arg, "cruster_messages") == 0; }
static void on_many(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)data;
  (void)len;
  many *m = user;
  if (status == CRUSTER_OK) atomic_fetch_add(&m->ok, 1);
  else {
    atomic_fetch_add(&m->failed, 1);
    fprintf(stderr, "  call failed: %s %s\n", cruster_status_name(status), msg);
  }
  atomic_fetch_add(&m->done, 1);
}

static int many_done(void *arg) {
  many *m = arg;
  return atomic_load(&m->done) >= m->total;
}

static void many_issue(many *m) {
  int i = atomic_fetch_add(&m->next, 1);
  char id[32], p[32];
  snprintf(id, sizeof(id), "c-%d", i % 64);
  snprintf(p, sizeof(p), "m-%d", i);
  int st = cruster_send(m->rt, "Conc", id, "run", p, strlen(p), NULL, on_many, m, NULL);
  if (st != CRUSTER_OK) {
    atomic_fetch_add(&m->failed, 1);
    atomic_fetch_add(&m->done, 1);
  }
}

static long long xact_commit(PGconn *c) {
  PQclear(PQexec(c, "SELECT pg_stat_clear_snapshot()"));
  return pgt_scalar(c, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                    -1);
}

static void many_concurrent_callers_all_get_answers(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  counter c = {0};
  cruster_entity_def *d = def_new("Conc");
  add(d, "run", CRUSTER_RPC_PERSISTED, h_echo, &c);
  cruster_runtime *rt = pgt_runtime(&s, NULL, &d, 1);
  /* warm up (connections, prepared statements) */
  assert_int_equal(send_str(rt, "Conc", "w", "run", "w", NULL, NULL, NULL), CRUSTER_OK);
  ts_sleep_ms(1200);
  long long x0 = xact_commit(s.admin);
  many m;
  memset(&m, 0, sizeof(m));
  m.rt = rt;
  m.total = 64 * 20;
  /* 64 in flight at a time, 20 waves */
  for (int wave = 0; wave < 20; wave++) {
    int target = (wave + 1) * 64;
    for (int i = 0; i < 64; i++) many_issue(&m);
    int64_t end = pgt_mono_ms() + 60000;
    while (atomic_load(&m.done) < target && pgt_mono_ms() < end) ts_sleep_ms(1);
  }
  assert_true(pgt_eventually(many_done, &m, PGT_DEADLINE_MS));
  assert_int_equal(atomic_load(&m.failed), 0);
  assert_int_equal(atomic_load(&m.ok), m.total);
  assert_int_equal(atomic_load(&c.calls), m.total + 1);
  /* every message was stored and answered: unkeyed rows are gone once their
   * answers are recorded (in the background, after the callers got them) */
  assert_true(pgt_eventually(no_rows_left, &s, PGT_DEADLINE_MS));
  /* Commits per message: an observation (other test programs share the
   * database, so the delta is an upper bound). Closing the runtime's
   * connections flushes their statistics. */
  cruster_runtime_free(rt);
  ts_sleep_ms(1200);
  long long x1 = xact_commit(s.admin);
  printf("  commits per message under 64 concurrent callers: %.3f (%lld commits, %d messages)\n",
         (double)(x1 - x0) / m.total, x1 - x0, m.total);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

int main(void) {
  pgt_main_start();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(migrate_applies_all_then_nothing),
      cmocka_unit_test(migrate_uses_custom_table_name),
      cmocka_unit_test(auto_migrate_from_config),
      cmocka_unit_test(unmigrated_database_is_refused),
      cmocka_unit_test(newer_schema_is_refused_and_left_alone),
      cmocka_unit_test(unreachable_server_fails_fast_and_clearly),
      cmocka_unit_test(wrong_database_and_role_give_the_servers_reason),
      cmocka_unit_test(bad_conninfo_is_invalid_argument),
      cmocka_unit_test(persisted_send_round_trip_is_stored),
      cmocka_unit_test(fresh_request_id_per_call),
      cmocka_unit_test(idempotency_key_returns_stored_reply_across_restarts),
      cmocka_unit_test(notify_is_persisted_and_delivered),
      cmocka_unit_test(send_at_is_never_delivered_early),
      cmocka_unit_test(per_entity_order_is_send_order),
      cmocka_unit_test(poll_reply_reports_not_found_pending_and_ready),
      cmocka_unit_test(join_reply_waits_for_the_answer),
      cmocka_unit_test(dead_letters_are_listed_and_redelivered),
      cmocka_unit_test(retention_deletes_processed_messages_only),
      cmocka_unit_test(oversized_payloads_are_refused),
      cmocka_unit_test(handler_error_survives_storage),
      cmocka_unit_test(many_concurrent_callers_all_get_answers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
