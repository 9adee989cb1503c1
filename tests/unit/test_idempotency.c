/* Exactly-once replies that cannot be confused: a keyed call is deduplicated
 * on its whole identity (type, entity id, method, key), never on its request
 * id alone. PRID is djb2: "Ab" and "BA" collide, so keys "dep-Ab" and
 * "dep-BA" -- or entities "acct-Ab" and "acct-BA" -- share a PRID. Each such
 * call must run and get its own reply. Also the policy for a repeated key
 * with another payload. Run with memory storage here and with PostgreSQL by
 * tests/integration/test_idempotency_pg.c (which adds restart, migration and
 * exhaustion tests). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <uv.h>

/* Not every helper of the support headers is used here. */
#pragma GCC diagnostic ignored "-Wunused-function"

#ifdef TS_STORAGE_PG
#include "../integration/pg_support.h"
#else
#include "test_support.h"
#endif
#include "core/hash.h"

/* Runs of the deposit handler, and the request ids it saw. */
typedef struct runs {
  atomic_int n;
  uv_mutex_t mu;
  int64_t ids[64];
  int nids;
} runs;

static void runs_init(runs *r) {
  memset(r, 0, sizeof(*r));
  uv_mutex_init(&r->mu);
}

static void runs_destroy(runs *r) { uv_mutex_destroy(&r->mu); }

/* Replies "<payload> into <entity id>". */
static void h_deposit(void *user, cruster_request *req) {
  runs *r = user;
  atomic_fetch_add(&r->n, 1);
  uv_mutex_lock(&r->mu);
  if (r->nids < 64) r->ids[r->nids++] = cruster_request_id(req);
  uv_mutex_unlock(&r->mu);
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char out[512];
  int n = snprintf(out, sizeof(out), "%.*s into %s", (int)len, p, cruster_request_entity_id(req));
  cruster_request_reply(req, out, (size_t)n);
}

static cruster_runtime *bank(const char *extra, runs *r) {
  cruster_entity_def *d = def_new("Acct");
  add(d, "deposit", CRUSTER_RPC_PERSISTED, h_deposit, r);
  cruster_runtime *rt = ts_runtime(extra, &d, 1);
  cruster_entity_def_free(d);
  return rt;
}

/* A keyed deposit; returns its status, its reply in out (when OK). */
static int deposit(cruster_runtime *rt, const char *acct, const char *key, const char *body,
                   char *out, size_t outsz) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = key;
  o.idempotency_key_len = strlen(key);
  o.timeout_ms = 20000;
  char *rep = NULL, *msg = NULL;
  int st = send_str(rt, "Acct", acct, "deposit", body, &o, &rep, &msg);
  if (out) snprintf(out, outsz, "%s", st == CRUSTER_OK ? (rep ? rep : "") : (msg ? msg : ""));
  cruster_free(rep);
  free(msg);
  return st;
}

static void keys_do_collide(void **state) {
  (void)state;
  /* The premise of this suite: the weak hash collides on swapped pairs. */
  assert_true(cruster_persisted_request_id("Acct", "a-1", "deposit", "dep-Ab", 6) ==
              cruster_persisted_request_id("Acct", "a-1", "deposit", "dep-BA", 6));
  assert_true(cruster_persisted_request_id("Acct", "acct-Ab", "deposit", "k1", 2) ==
              cruster_persisted_request_id("Acct", "acct-BA", "deposit", "k1", 2));
  /* The other candidates differ for the two identities. */
  int64_t a[CORE_KEY_CANDIDATES], b[CORE_KEY_CANDIDATES];
  core_key_candidates("Acct", "a-1", "deposit", "dep-Ab", 6, a);
  core_key_candidates("Acct", "a-1", "deposit", "dep-BA", 6, b);
  assert_true(a[0] == b[0]);
  for (int i = 1; i < CORE_KEY_CANDIDATES; i++) {
    assert_true(a[i] > 0);
    assert_true(a[i] != b[i]);
    for (int j = 0; j < i; j++) assert_true(a[i] != a[j]);
  }
}

/* Two keys of one account whose PRIDs collide: both deposits run, each gets
 * its own reply, and repeats get their own stored reply. */
static void colliding_keys_on_one_entity_each_run(void **state) {
  (void)state;
  runs r;
  runs_init(&r);
  cruster_runtime *rt = bank(NULL, &r);
  char out[512];
  assert_int_equal(deposit(rt, "a-1", "dep-Ab", "10", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "10 into a-1");
  assert_int_equal(deposit(rt, "a-1", "dep-BA", "20", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "20 into a-1"); /* before the fix: "10 into a-1", unrun */
  assert_int_equal(atomic_load(&r.n), 2);
  assert_true(r.ids[0] != r.ids[1]);
  /* Repeats: each its own stored reply, nothing runs. */
  assert_int_equal(deposit(rt, "a-1", "dep-BA", "20", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "20 into a-1");
  assert_int_equal(deposit(rt, "a-1", "dep-Ab", "10", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "10 into a-1");
  assert_int_equal(atomic_load(&r.n), 2);
  cruster_runtime_free(rt);
  runs_destroy(&r);
}

/* The same key on two entities whose PRIDs collide. */
static void colliding_entities_each_run(void **state) {
  (void)state;
  runs r;
  runs_init(&r);
  cruster_runtime *rt = bank(NULL, &r);
  char out[512];
  assert_int_equal(deposit(rt, "acct-Ab", "k1", "5", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "5 into acct-Ab");
  assert_int_equal(deposit(rt, "acct-BA", "k1", "0", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "0 into acct-BA"); /* before: "5 into acct-Ab" */
  assert_int_equal(atomic_load(&r.n), 2);
  assert_int_equal(deposit(rt, "acct-Ab", "k1", "5", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "5 into acct-Ab");
  assert_int_equal(atomic_load(&r.n), 2);
  cruster_runtime_free(rt);
  runs_destroy(&r);
}

/* Four keys on one PRID ("AbAb", "AbBA", "BAAb", "BABA"), sent at once
 * without waiting: each runs once and gets its own reply. */
static void four_identities_on_one_prid(void **state) {
  (void)state;
  static const char *keys[4] = {"AbAb", "AbBA", "BAAb", "BABA"};
  int64_t prid = cruster_persisted_request_id("Acct", "a-4", "deposit", keys[0], 4);
  for (int i = 1; i < 4; i++)
    assert_true(cruster_persisted_request_id("Acct", "a-4", "deposit", keys[i], 4) == prid);
  runs r;
  runs_init(&r);
  cruster_runtime *rt = bank(NULL, &r);
  reply rep[4];
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < 4; i++) {
      reply_init(&rep[i]);
      cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
      o.idempotency_key = keys[i];
      o.idempotency_key_len = 4;
      o.timeout_ms = 20000;
      assert_int_equal(cruster_send(rt, "Acct", "a-4", "deposit", keys[i], 4, &o, on_reply, &rep[i], NULL),
                       CRUSTER_OK);
    }
    for (int i = 0; i < 4; i++) {
      reply_wait(&rep[i]);
      assert_int_equal(rep[i].status, CRUSTER_OK);
      char want[64];
      snprintf(want, sizeof want, "%s into a-4", keys[i]);
      assert_string_equal(rep[i].data, want);
      reply_destroy(&rep[i]);
    }
    assert_int_equal(atomic_load(&r.n), 4); /* the second round ran nothing */
  }
  cruster_runtime_free(rt);
  runs_destroy(&r);
}

/* cruster_poll_reply and cruster_join_reply find each colliding call's own
 * answer, and "not found" for a colliding key never sent. */
static void poll_and_join_compare_the_key(void **state) {
  (void)state;
  runs r;
  runs_init(&r);
  cruster_runtime *rt = bank(NULL, &r);
  char out[512];
  assert_int_equal(deposit(rt, "a-2", "dep-Ab", "7", out, sizeof out), CRUSTER_OK);
  int ready = 0;
  void *data = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  /* dep-BA was never sent: its PRID holds dep-Ab's call. */
  assert_int_equal(cruster_poll_reply(rt, "Acct", "a-2", "deposit", "dep-BA", 6, &ready, &data,
                                      &len, &err),
                   CRUSTER_E_NOT_FOUND);
  assert_null(data);
  cruster_error_free(err);
  err = NULL;
  reply j;
  reply_init(&j);
  assert_int_equal(cruster_join_reply(rt, "Acct", "a-2", "deposit", "dep-BA", 6, NULL, on_reply, &j, NULL),
                   CRUSTER_OK);
  reply_wait(&j);
  assert_int_equal(j.status, CRUSTER_E_NOT_FOUND);
  reply_destroy(&j);

  assert_int_equal(deposit(rt, "a-2", "dep-BA", "8", out, sizeof out), CRUSTER_OK);
  assert_int_equal(cruster_poll_reply(rt, "Acct", "a-2", "deposit", "dep-BA", 6, &ready, &data,
                                      &len, &err),
                   CRUSTER_OK);
  assert_int_equal(ready, 1);
  assert_memory_equal(data, "8 into a-2", len);
  cruster_free(data);
  data = NULL;
  assert_int_equal(cruster_poll_reply(rt, "Acct", "a-2", "deposit", "dep-Ab", 6, &ready, &data,
                                      &len, &err),
                   CRUSTER_OK);
  assert_memory_equal(data, "7 into a-2", len);
  cruster_free(data);
  reply_init(&j);
  assert_int_equal(cruster_join_reply(rt, "Acct", "a-2", "deposit", "dep-BA", 6, NULL, on_reply, &j, NULL),
                   CRUSTER_OK);
  reply_wait(&j);
  assert_int_equal(j.status, CRUSTER_OK);
  assert_string_equal(j.data, "8 into a-2");
  reply_destroy(&j);
  assert_int_equal(atomic_load(&r.n), 2);
  cruster_runtime_free(rt);
  runs_destroy(&r);
}

/* A handler that waits for a gate: a call stays pending meanwhile. */
typedef struct gate {
  uv_mutex_t mu;
  uv_cond_t cv;
  int open;
  atomic_int entered;
} gate;

static void h_gated(void *user, cruster_request *req) {
  gate *g = user;
  atomic_fetch_add(&g->entered, 1);
  uv_mutex_lock(&g->mu);
  while (!g->open) uv_cond_wait(&g->cv, &g->mu);
  uv_mutex_unlock(&g->mu);
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

static int entered_at_least_1(void *arg) { return atomic_load(&((gate *)arg)->entered) >= 1; }

/* A caller of one identity is never woken by the answer of another whose
 * PRID it shares, even while both are pending. */
static void pending_collision_waits_for_its_own_answer(void **state) {
  (void)state;
  gate g;
  memset(&g, 0, sizeof g);
  uv_mutex_init(&g.mu);
  uv_cond_init(&g.cv);
  runs r;
  runs_init(&r);
  cruster_entity_def *d = def_new("Acct");
  add(d, "deposit", CRUSTER_RPC_PERSISTED, h_deposit, &r);
  add(d, "slow", CRUSTER_RPC_PERSISTED, h_gated, &g);
  cruster_runtime *rt = ts_runtime("entity_max_concurrent_requests=0", &d, 1);
  cruster_entity_def_free(d);
  /* "slow" on acct-Ab holds its key's PRID while its handler waits. */
  reply a, b;
  reply_init(&a);
  reply_init(&b);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = "k";
  o.idempotency_key_len = 1;
  o.timeout_ms = 20000;
  assert_int_equal(cruster_send(rt, "Acct", "slow-Ab", "slow", "A", 1, &o, on_reply, &a, NULL),
                   CRUSTER_OK);
  assert_true(ts_eventually(entered_at_least_1, &g));
  assert_int_equal(cruster_send(rt, "Acct", "slow-BA", "slow", "B", 1, &o, on_reply, &b, NULL),
                   CRUSTER_OK);
  /* Both handlers run (distinct calls); opening the gate answers each with
   * its own payload. */
  uv_mutex_lock(&g.mu);
  g.open = 1;
  uv_cond_broadcast(&g.cv);
  uv_mutex_unlock(&g.mu);
  reply_wait(&a);
  reply_wait(&b);
  assert_int_equal(a.status, CRUSTER_OK);
  assert_int_equal(b.status, CRUSTER_OK);
  assert_string_equal(a.data, "A");
  assert_string_equal(b.data, "B");
  assert_int_equal(atomic_load(&g.entered), 2);
  reply_destroy(&a);
  reply_destroy(&b);
  cruster_runtime_free(rt);
  runs_destroy(&r);
  uv_cond_destroy(&g.cv);
  uv_mutex_destroy(&g.mu);
}

/* Default policy: a repeat with another payload gets the stored reply. */
static void repeat_with_other_payload_gets_stored_reply(void **state) {
  (void)state;
  runs r;
  runs_init(&r);
  cruster_runtime *rt = bank(NULL, &r);
  char out[512];
  assert_int_equal(deposit(rt, "a-3", "order-42", "100", out, sizeof out), CRUSTER_OK);
  assert_int_equal(deposit(rt, "a-3", "order-42", "999", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "100 into a-3");
  assert_int_equal(atomic_load(&r.n), 1);
  cruster_runtime_free(rt);
  runs_destroy(&r);
}

/* idempotency_strict_payload: a repeat with another payload is refused with
 * CRUSTER_E_CONFLICT; with the same payload it gets the stored reply. */
static void strict_payload_refuses_other_payload(void **state) {
  (void)state;
  runs r;
  runs_init(&r);
  cruster_runtime *rt = bank("idempotency_strict_payload=true", &r);
  char out[512];
  assert_int_equal(deposit(rt, "a-3", "order-42", "100", out, sizeof out), CRUSTER_OK);
  assert_int_equal(deposit(rt, "a-3", "order-42", "999", out, sizeof out), CRUSTER_E_CONFLICT);
  assert_non_null(strstr(out, "different payload"));
  assert_int_equal(deposit(rt, "a-3", "order-42", "100", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "100 into a-3");
  /* The notify form is refused too. */
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = "order-42";
  o.idempotency_key_len = 8;
  o.timeout_ms = 20000;
  cruster_error *err = NULL;
  assert_int_equal(cruster_notify_sync(rt, "Acct", "a-3", "deposit", "1", 1, &o, &err),
                   CRUSTER_E_CONFLICT);
  cruster_error_free(err);
  assert_int_equal(atomic_load(&r.n), 1);
  cruster_runtime_free(rt);
  runs_destroy(&r);
}

#ifdef TS_STORAGE_PG
/* ---- PostgreSQL only: restart, rows from before migration 3, exhaustion */

static const char *PG_EXTRA = "storage_poll_interval=100ms";

static cruster_runtime *bank_on(pgt_schema *s, runs *r, const char *extra) {
  cruster_entity_def *d = def_new("Acct");
  add(d, "deposit", CRUSTER_RPC_PERSISTED, h_deposit, r);
  cruster_runtime *rt = pgt_runtime(s, extra, &d, 1);
  cruster_entity_def_free(d);
  return rt;
}

/* Colliding calls stored by one runtime keep their own replies in the next,
 * which also stores new colliding calls under their own ids. */
static void collisions_survive_a_restart(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  runs r;
  runs_init(&r);
  char out[512];
  cruster_runtime *rt = bank_on(&s, &r, PG_EXTRA);
  assert_int_equal(deposit(rt, "a-1", "dep-Ab", "1", out, sizeof out), CRUSTER_OK);
  assert_int_equal(deposit(rt, "a-1", "dep-BA", "2", out, sizeof out), CRUSTER_OK);
  assert_int_equal(deposit(rt, "acct-Ab", "k1", "3", out, sizeof out), CRUSTER_OK);
  assert_int_equal(deposit(rt, "acct-BA", "k1", "4", out, sizeof out), CRUSTER_OK);
  cruster_runtime_free(rt);
  assert_int_equal(atomic_load(&r.n), 4);
  /* Each identity's key is stored with its row. */
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(DISTINCT (entity_id, idem_key)) FROM cruster_messages "
                              "WHERE keyed AND idem_key IS NOT NULL",
                              -1),
                   4);

  rt = bank_on(&s, &r, PG_EXTRA);
  assert_int_equal(deposit(rt, "a-1", "dep-BA", "2", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "2 into a-1");
  assert_int_equal(deposit(rt, "a-1", "dep-Ab", "1", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "1 into a-1");
  assert_int_equal(deposit(rt, "acct-BA", "k1", "4", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "4 into acct-BA");
  assert_int_equal(atomic_load(&r.n), 4);
  /* A third identity on the first PRID, new in this life. */
  assert_true(cruster_persisted_request_id("Acct", "a-1", "deposit", "dep-Ab", 6) ==
              cruster_persisted_request_id("Acct", "a-1", "deposit", "dep-C ", 6));
  assert_int_equal(deposit(rt, "a-1", "dep-C ", "9", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "9 into a-1");
  assert_int_equal(atomic_load(&r.n), 5);
  cruster_runtime_free(rt);
  runs_destroy(&r);
  pgt_schema_drop(&s);
}

/* A keyed row stored before migration 3 has no key: a repeat of its call
 * (same type, id, method, at its PRID) still gets its stored reply. */
static void rows_from_before_migration_3_still_deduplicate(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  int64_t prid = cruster_persisted_request_id("Acct", "old", "deposit", "k-old", 5);
  pgt_execf(s.admin,
            "INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, "
            "entity_id, tag, payload, keyed, processed, processed_at, reply_status, "
            "reply_payload) VALUES (%lld, 'default', %d, 'Acct', 'old', 'deposit', "
            "convert_to('50', 'UTF8'), TRUE, TRUE, now(), 0, convert_to('50 stored', 'UTF8'))",
            (long long)prid, (int)cruster_shard_for("old", 3, 300));
  runs r;
  runs_init(&r);
  char out[512];
  cruster_runtime *rt = bank_on(&s, &r, PG_EXTRA);
  assert_int_equal(deposit(rt, "old", "k-old", "50", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "50 stored");
  assert_int_equal(atomic_load(&r.n), 0);
  /* Another method on the same entity and key is another identity. */
  cruster_runtime_free(rt);
  runs_destroy(&r);
  pgt_schema_drop(&s);
}

/* Every candidate id of a key held by other calls: a clear conflict, never
 * another call's reply. */
static void every_candidate_taken_is_a_conflict(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  int64_t cand[CORE_KEY_CANDIDATES];
  core_key_candidates("Acct", "full", "deposit", "busy", 4, cand);
  for (int i = 0; i < CORE_KEY_CANDIDATES; i++)
    pgt_execf(s.admin,
              "INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, "
              "entity_id, tag, payload, keyed, idem_key, processed, processed_at, reply_status, "
              "reply_payload) VALUES (%lld, 'default', 0, 'Other', 'x', 'deposit', "
              "'\\x00'::bytea, TRUE, 'other'::bytea, TRUE, now(), 0, "
              "convert_to('not yours', 'UTF8'))",
              (long long)cand[i]);
  runs r;
  runs_init(&r);
  char out[512];
  cruster_runtime *rt = bank_on(&s, &r, PG_EXTRA);
  assert_int_equal(deposit(rt, "full", "busy", "1", out, sizeof out), CRUSTER_E_CONFLICT);
  assert_null(strstr(out, "not yours"));
  assert_int_equal(atomic_load(&r.n), 0);
  /* One freed candidate is enough. */
  pgt_execf(s.admin, "DELETE FROM cruster_messages WHERE request_id = %lld", (long long)cand[5]);
  assert_int_equal(deposit(rt, "full", "busy", "1", out, sizeof out), CRUSTER_OK);
  assert_string_equal(out, "1 into full");
  assert_int_equal(pgt_scalarf(s.admin, -1,
                               "SELECT count(*) FROM cruster_messages WHERE request_id = %lld "
                               "AND entity_id = 'full'",
                               (long long)cand[5]),
                   1);
  cruster_runtime_free(rt);
  runs_destroy(&r);
  pgt_schema_drop(&s);
}
#define PG_ONLY_TESTS                                            \
  cmocka_unit_test(collisions_survive_a_restart),               \
      cmocka_unit_test(rows_from_before_migration_3_still_deduplicate), \
      cmocka_unit_test(every_candidate_taken_is_a_conflict),
#else
#define PG_ONLY_TESTS
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(keys_do_collide),
      cmocka_unit_test(colliding_keys_on_one_entity_each_run),
      cmocka_unit_test(colliding_entities_each_run),
      cmocka_unit_test(four_identities_on_one_prid),
      cmocka_unit_test(poll_and_join_compare_the_key),
      cmocka_unit_test(pending_collision_waits_for_its_own_answer),
      cmocka_unit_test(repeat_with_other_payload_gets_stored_reply),
      cmocka_unit_test(strict_payload_refuses_other_payload),
      PG_ONLY_TESTS
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
