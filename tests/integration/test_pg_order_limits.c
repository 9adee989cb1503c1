/* PostgreSQL storage: ways per-entity send order (fix 7) or the retry
 * limit (fix 8) used to break, each made deterministic with locks a second
 * connection holds (advisory locks taken by a trigger, a row lock).
 *
 *   failed_job_rerun_is_not_overtaken
 *       a job (one transaction of several operations) fails because of one
 *       operation; the next job of the connection, already sent, must not
 *       commit before the failed job's other operations are run again.
 *   release_without_attempt_undoes_only_its_charge
 *       a message claimed behind its entity's head (no attempt charged) and
 *       given back unused (mailbox full) keeps the attempts of its earlier
 *       deliveries: it becomes a dead letter after max_retries + 1 of them.
 *   locked_older_message_is_not_passed_over
 *       the poll must not skip an older message whose row someone else
 *       holds locked and claim a younger one of the same entity.
 *   stale_claim_of_older_message_holds_younger_back
 *       nor claim a younger one while an older one is claimed under a token
 *       that is not this runtime's current one (a claim being given back by
 *       the reset or the reconcile after a lost connection).
 *
 * Each test runs in its own schema. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <uv.h>

#include "pg_support.h"

/* ---- helpers ----------------------------------------------------------------- */

/* The runtime's scan of stored messages and its reset of old claims are
 * queued at attach on the storage's first connection; listing dead letters
 * goes through the same queue, so once it returns they have completed. */
static void wait_attach(cruster_runtime *rt) {
  cruster_message_list *l = NULL;
  cruster_error *err = NULL;
  if (cruster_dead_letters(rt, 1, &l, &err) != CRUSTER_OK)
    fail_msg("listing dead letters: %s", cruster_error_message(err));
  cruster_message_list_free(l);
}

static double metric(cruster_runtime *rt, const char *name, const char *labels) {
  double v = -1;
  cruster_metrics_value(cruster_runtime_metrics(rt), name, labels, &v);
  return v;
}

typedef struct metric_at_least {
  cruster_runtime *rt;
  const char *name, *labels;
  double want;
} metric_at_least;
static int metric_reached(void *arg) {
  metric_at_least *m = arg;
  return metric(m->rt, m->name, m->labels) >= m->want;
}
static void wait_metric(cruster_runtime *rt, const char *name, const char *labels, double want) {
  metric_at_least m = {rt, name, labels, want};
  if (!pgt_eventually(metric_reached, &m, 30000))
    fail_msg("metric %s{%s} stayed at %.0f (waiting for %.0f)", name, labels ? labels : "",
             metric(rt, name, labels), want);
}

/* Advisory lock keys of this test program (keys below 2^31: pg_locks shows
 * them in objid with classid 0). */
static long long lock_key(int n) { return 100000000LL + (long long)(getpid() % 100000) * 10 + n; }

typedef struct lock_wait {
  PGconn *c;
  long long key;
} lock_wait;
/* Someone waits for advisory lock `key`. */
static int lock_waited(void *arg) {
  lock_wait *w = arg;
  return pgt_scalarf(w->c, 0,
                     "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                     "AND classid = 0 AND objid = %lld AND objsubid = 1",
                     w->key) > 0;
}
static void wait_lock_waiter(PGconn *c, long long key) {
  lock_wait w = {c, key};
  if (!pgt_eventually(lock_waited, &w, 30000)) fail_msg("nobody waits for advisory lock %lld", key);
}

/* Records the payloads one entity sees, in order; counts every run. */
typedef struct seen_log {
  uv_mutex_t mu;
  char buf[512];
  atomic_int n;
} seen_log;

static void seen_init(seen_log *l) {
  memset(l, 0, sizeof(*l));
  uv_mutex_init(&l->mu);
}

static void seen_add(seen_log *l, const char *p, size_t len) {
  uv_mutex_lock(&l->mu);
  size_t at = strlen(l->buf);
  snprintf(l->buf + at, sizeof(l->buf) - at, "%.*s,", (int)len, p ? p : "");
  uv_mutex_unlock(&l->mu);
  atomic_fetch_add(&l->n, 1);
}

static void seen_expect(seen_log *l, const char *want) {
  uv_mutex_lock(&l->mu);
  char got[512];
  snprintf(got, sizeof got, "%s", l->buf);
  uv_mutex_unlock(&l->mu);
  printf("  handled: %s\n", got);
  if (strcmp(got, want) != 0) fail_msg("handled \"%s\", expected \"%s\"", got, want);
}

typedef struct count_at_least {
  atomic_int *n;
  int want;
} count_at_least;
static int reached(void *arg) {
  count_at_least *c = arg;
  return atomic_load(c->n) >= c->want;
}

/* A leftover row (an earlier life's), unclaimed and due. */
static void insert_row(pgt_schema *s, long long request_id, const char *entity, const char *payload,
                       int keyed, int attempts) {
  pgt_execf(s->admin,
            "INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, "
            "entity_id, tag, payload, internal, is_request, keyed, attempts) VALUES (%lld, "
            "'default', %d, 'Ord', '%s', 'step', convert_to('%s', 'UTF8'), FALSE, FALSE, %s, %d)",
            request_id, (int)cruster_shard_for(entity, strlen(entity), 300), entity, payload,
            keyed ? "TRUE" : "FALSE", attempts);
}

/* ---- (1) a failed job's operations run again before the next job's ----------- */

static seen_log g_e1;
static void h_step1(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  if (strcmp(cruster_request_entity_id(req), "E") == 0) seen_add(&g_e1, p, len);
  cruster_request_reply(req, "done", 4);
}

static void h_plain(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, "ok", 2);
}

static void send_keyed(cruster_runtime *rt, const char *id, const char *key, reply *r) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 60000;
  o.idempotency_key = key;
  o.idempotency_key_len = strlen(key);
  assert_int_equal(cruster_send(rt, "Ord", id, "step", key, strlen(key), &o, on_reply, r, NULL),
                   CRUSTER_OK);
}

/* One connection, jobs of at most 2 operations. A trigger makes inserts
 * of entity 'gate' wait for advisory lock K1, and inserts of 'poison' wait
 * for K2 and then fail; the test holds both locks.
 *
 *  1. 'gate' is sent: job A = [gate] blocks in the server on K1.
 *  2. 'x' is sent: job B = [x] is sent behind it (two jobs in flight).
 *  3. 'poison', E:m1, E:m2 are sent (keyed, in this order) and wait in the
 *     connection's queue.
 *  4. K1 is released: A and B commit; C = [poison, m1] is sent and blocks
 *     on K2, and D = [m2] is sent behind it.
 *  5. K2 is released: poison fails, which aborts C. D, already in the
 *     server's input, used to commit at once -- m2 stored before m1, whose
 *     insert ran again after (a larger seq): the poll then delivered m2
 *     first. Now D fails with C (each job checks that the previous one
 *     committed), and its operations run again after C's. */
static void failed_job_rerun_is_not_overtaken(void **state) {
  (void)state;
  seen_init(&g_e1);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  long long k1 = lock_key(1), k2 = lock_key(2);
  pgt_execf(s.admin,
            "CREATE FUNCTION gatekeeper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.entity_id = 'gate' THEN PERFORM pg_advisory_xact_lock(%lld); END IF; "
            "IF NEW.entity_id = 'poison' THEN PERFORM pg_advisory_xact_lock(%lld); "
            "RAISE EXCEPTION 'entity poison is refused'; END IF; RETURN NEW; END $$",
            k1, k2);
  pgt_exec(s.admin, "CREATE TRIGGER gatekeeper BEFORE INSERT ON cruster_messages FOR EACH ROW "
                    "EXECUTE FUNCTION gatekeeper()");
  PGconn *lk = pgt_connect(s.conninfo);
  pgt_execf(lk, "SELECT pg_advisory_lock(%lld), pg_advisory_lock(%lld)", k1, k2);

  cruster_entity_def *d = def_new("Ord");
  add(d, "step", CRUSTER_RPC_PERSISTED, h_step1, NULL);
  cruster_entity_def *p = def_new("Plain");
  add(p, "ping", 0, h_plain, NULL);
  cruster_entity_def *defs[] = {d, p};
  /* No poll but those the runtime asks for (the first one at start), no
   * retention sweep: nothing else joins the connection's jobs. */
  cruster_runtime *rt = pgt_runtime(&s,
                                    "storage_pool_size=1;storage_batch_size=2;"
                                    "storage_poll_interval=1h;storage_retention=0",
                                    defs, 2);
  wait_attach(rt);
  const char *tx = "cluster_storage_transactions_total";
  double base = metric(rt, tx, NULL);

  reply rg, rx, rp, r1, r2;
  reply_init(&rg);
  reply_init(&rx);
  reply_init(&rp);
  reply_init(&r1);
  reply_init(&r2);
  send_keyed(rt, "gate", "g", &rg);
  wait_lock_waiter(s.admin, k1);
  send_keyed(rt, "x", "x", &rx);
  wait_metric(rt, tx, NULL, base + 2);
  send_keyed(rt, "poison", "p", &rp);
  send_keyed(rt, "E", "m1", &r1);
  send_keyed(rt, "E", "m2", &r2);
  /* The loop handles commands in order: once this call is answered, the
   * three saves above are queued. */
  char *out = NULL;
  assert_int_equal(send_str(rt, "Plain", "p", "ping", "", NULL, &out, NULL), CRUSTER_OK);
  cruster_free(out);
  assert_true(metric(rt, tx, NULL) == base + 2);

  pgt_execf(lk, "SELECT pg_advisory_unlock(%lld)", k1);
  wait_lock_waiter(s.admin, k2);        /* C runs: poison waits for K2 */
  wait_metric(rt, tx, NULL, base + 4);  /* D is sent behind it */
  pgt_execf(lk, "SELECT pg_advisory_unlock(%lld)", k2);

  assert_true(reply_wait_ms(&rp, 30000));
  printf("  poison: %s (%s)\n", cruster_status_name(rp.status), rp.msg);
  assert_int_equal(rp.status, CRUSTER_E_PERSISTENCE);
  reply *all[] = {&rg, &rx, &r1, &r2};
  for (int i = 0; i < 4; i++) {
    assert_true(reply_wait_ms(all[i], 30000));
    if (all[i]->status != CRUSTER_OK)
      fail_msg("call %d: %s %s", i, cruster_status_name(all[i]->status), all[i]->msg);
  }
  seen_expect(&g_e1, "m1,m2,");

  for (int i = 0; i < 4; i++) reply_destroy(all[i]);
  reply_destroy(&rp);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  cruster_entity_def_free(p);
  PQfinish(lk);
  uv_mutex_destroy(&g_e1.mu);
  pgt_schema_drop(&s);
}

/* ---- (2) a release undoes exactly what its claim charged ---------------------- */

static atomic_int g_gate2, g_head_started, g_m_runs;
static void h_step2(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  if (len == 4 && memcmp(p, "head", 4) == 0) {
    atomic_store(&g_head_started, 1);
    while (!atomic_load(&g_gate2)) ts_sleep_ms(2);
  } else {
    atomic_fetch_add(&g_m_runs, 1);
  }
  cruster_request_reply(req, "done", 4);
}

static int m_is_dead(void *arg) {
  return pgt_scalar(((pgt_schema *)arg)->admin,
                    "SELECT count(*) FROM cruster_messages WHERE request_id = 5002 AND "
                    "reply_status = -18",
                    0) == 1;
}

/* storage_message_max_retries = 1: at most 2 deliveries. An earlier life
 * left entity E's head H (never delivered) and M (delivered once: attempts
 * 1). M's reply can never be stored (a trigger refuses it), so each of its
 * deliveries fails and it must become a dead letter after its second.
 *
 * E's mailbox holds 1 and H's handler blocks: every poll claims M behind H
 * (its claim charges no attempt: it is not the head) and gives it back
 * unused (mailbox full). That give-back used to subtract an attempt anyway,
 * erasing M's earlier delivery: M then ran twice more in this life (3
 * deliveries). Now it runs once. */
static void release_without_attempt_undoes_only_its_charge(void **state) {
  (void)state;
  atomic_store(&g_gate2, 0);
  atomic_store(&g_head_started, 0);
  atomic_store(&g_m_runs, 0);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  insert_row(&s, 5001, "E", "head", 0, 0);
  insert_row(&s, 5002, "E", "m", 1, 1);
  pgt_exec(s.admin,
           "CREATE FUNCTION refuse_m() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
           "IF NEW.request_id = 5002 AND NEW.processed AND NEW.reply_status IS DISTINCT FROM -18 "
           "THEN RAISE EXCEPTION 'the reply of m is refused'; END IF; RETURN NEW; END $$");
  pgt_exec(s.admin, "CREATE TRIGGER refuse_m BEFORE UPDATE ON cruster_messages FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_m()");

  cruster_entity_def *d = def_new("Ord");
  add(d, "step", CRUSTER_RPC_PERSISTED, h_step2, NULL);
  assert_int_equal(cruster_entity_def_set_mailbox_capacity(d, 1, NULL), CRUSTER_OK);
  cruster_runtime *rt = pgt_runtime(&s,
                                    "storage_poll_interval=50ms;storage_message_max_retries=1;"
                                    "storage_retry_backoff=20ms",
                                    &d, 1);
  /* M claimed behind the running head and given back, three times. */
  wait_metric(rt, "cluster_mailbox_full_total", "entity_type=\"Ord\"", 3);
  assert_true(atomic_load(&g_head_started));
  assert_int_equal(atomic_load(&g_m_runs), 0);
  atomic_store(&g_gate2, 1);

  assert_true(pgt_eventually(m_is_dead, &s, 30000));
  printf("  m ran %d time(s) in this life (1 before); attempts stored: %lld\n",
         atomic_load(&g_m_runs),
         pgt_scalar(s.admin, "SELECT attempts FROM cruster_messages WHERE request_id = 5002", -1));
  assert_int_equal(atomic_load(&g_m_runs), 1);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

/* ---- (3) an older message is never passed over -------------------------------- */

static seen_log g_e3;
static void h_step3(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  seen_add(&g_e3, p, len);
  cruster_request_reply(req, "done", 4);
}

/* An earlier life left "old" and "young" for entity E. A second connection
 * holds old's row locked (SELECT ... FOR UPDATE in an open transaction, as
 * a reset or a reconcile does for a moment) while the runtime polls. The
 * claim's FOR UPDATE SKIP LOCKED used to skip old and claim young, which
 * ran first. Now no message of E is claimed while an older one is locked
 * by someone else. */
static void locked_older_message_is_not_passed_over(void **state) {
  (void)state;
  seen_init(&g_e3);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  insert_row(&s, 6001, "E", "old", 0, 0);
  insert_row(&s, 6002, "E", "young", 0, 0);
  PGconn *lk = pgt_connect(s.conninfo);
  pgt_exec(lk, "BEGIN");
  assert_int_equal(
      pgt_scalar(lk, "SELECT count(*) FROM (SELECT 1 FROM cruster_messages WHERE request_id = "
                     "6001 FOR UPDATE) x",
                 -1),
      1);

  cruster_entity_def *d = def_new("Ord");
  add(d, "step", CRUSTER_RPC_PERSISTED, h_step3, NULL);
  cruster_runtime *rt = pgt_runtime(&s, "storage_poll_interval=50ms", &d, 1);
  /* Polls run one after the other: the third has started once two have
   * completed. */
  wait_metric(rt, "cluster_storage_polls_total", NULL, 3);
  printf("  while old is locked: %d handled\n", atomic_load(&g_e3.n));
  assert_int_equal(atomic_load(&g_e3.n), 0);
  pgt_exec(lk, "COMMIT");
  count_at_least c = {&g_e3.n, 2};
  assert_true(pgt_eventually(reached, &c, 30000));
  seen_expect(&g_e3, "old,young,");
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  PQfinish(lk);
  uv_mutex_destroy(&g_e3.mu);
  pgt_schema_drop(&s);
}

/* After the runtime started (its reset of old claims is done), "old" is
 * stored claimed under a token that is not the runtime's (as a claim made
 * just before a lost connection is until the reconcile gives it back), and
 * "young" unclaimed. Young must wait until old is given back. */
static void stale_claim_of_older_message_holds_younger_back(void **state) {
  (void)state;
  seen_init(&g_e3);
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  cruster_entity_def *d = def_new("Ord");
  add(d, "step", CRUSTER_RPC_PERSISTED, h_step3, NULL);
  cruster_runtime *rt = pgt_runtime(&s, "storage_poll_interval=50ms", &d, 1);
  wait_attach(rt);
  pgt_exec(s.admin, "BEGIN");
  insert_row(&s, 7001, "E", "old", 0, 1);
  pgt_exec(s.admin, "UPDATE cruster_messages SET claimed_by = 'gone#1', claimed_at = now() "
                    "WHERE request_id = 7001");
  insert_row(&s, 7002, "E", "young", 0, 0);
  pgt_exec(s.admin, "COMMIT");
  double polls = metric(rt, "cluster_storage_polls_total", NULL);
  wait_metric(rt, "cluster_storage_polls_total", NULL, polls + 3);
  printf("  while old is claimed by another token: %d handled\n", atomic_load(&g_e3.n));
  assert_int_equal(atomic_load(&g_e3.n), 0);
  pgt_exec(s.admin, "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL "
                    "WHERE request_id = 7001");
  count_at_least c = {&g_e3.n, 2};
  assert_true(pgt_eventually(reached, &c, 30000));
  seen_expect(&g_e3, "old,young,");
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  uv_mutex_destroy(&g_e3.mu);
  pgt_schema_drop(&s);
}

int main(void) {
  pgt_main_start();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(failed_job_rerun_is_not_overtaken),
      cmocka_unit_test(release_without_attempt_undoes_only_its_charge),
      cmocka_unit_test(locked_older_message_is_not_passed_over),
      cmocka_unit_test(stale_claim_of_older_message_holds_younger_back),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
