/* A hot entity: a steady stream of persisted notifies to one entity (one
 * every ~250 us, far more than its mailbox of 100 holds), so polls claim,
 * deliver what fits and give the rest back, over and over, while saves of
 * the entity are always "in transit".
 *
 * Found in review 2 of the PostgreSQL storage's fast path / in-transit
 * hold-back: once one message of the entity is stored "behind" (unclaimed),
 * every later one is too (its entity has tracked messages), and the poll
 * held back all of the entity's claimed messages while any save of the
 * entity was in transit -- which, under a steady stream, is always: the
 * entity starved until the stream stopped. Later the claim's per-row checks
 * walked the entity's whole history (about 100 handled per poll of ~1 s);
 * fixed by the cruster_messages_retrying index, backward probes and one
 * statement for all claims given back.
 *
 * What is asserted is the property, never a rate (how fast the entity is
 * served depends on the machine: see bench/bench_pg_hot_entity.c for the
 * figures):
 *   - while the stream runs, the entity keeps making progress: in each of
 *     PHASES consecutive windows of the stream (at least WINDOW_MS each)
 *     PROGRESS more messages get handled, within DEADLINE_MS per window;
 *   - every accepted message is handled (within DEADLINE_MS after the
 *     stream stopped), exactly once, in send order.
 * The database's view (sessions, rows) is printed only on failure.
 *
 * Each test runs in its own schema. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "pg_support.h"

#define DEADLINE_MS 60000L /* generous: only a stalled entity takes that long */
#define PHASES 3           /* windows in which the entity must make progress */
#define PROGRESS 50        /* messages handled per window (it was 0 when starved) */
#define WINDOW_MS 1000     /* a window lasts at least this long */
#define MAX_MSGS (1 << 20)

/* The payloads in the order the handler saw them. Instance concurrency is 1
 * (the default), but consecutive handlers run on any worker: the mutex
 * orders them for the reader too. */
static uv_mutex_t g_mu;
static int *g_seen;
static int g_nseen;
static atomic_int g_handled;

static void h_record(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char buf[16];
  snprintf(buf, sizeof buf, "%.*s", (int)(len < 15 ? len : 15), p ? p : "");
  uv_mutex_lock(&g_mu);
  if (g_nseen < MAX_MSGS) g_seen[g_nseen] = atoi(buf);
  g_nseen++;
  uv_mutex_unlock(&g_mu);
  atomic_fetch_add(&g_handled, 1);
  cruster_request_reply(req, "ok", 2);
}

static atomic_int g_accepted, g_refused;
static void on_notify(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)user;
  (void)data;
  (void)len;
  if (status == CRUSTER_OK) {
    atomic_fetch_add(&g_accepted, 1);
  } else {
    if (atomic_fetch_add(&g_refused, 1) < 3)
      fprintf(stderr, "  notify refused: %s %s\n", cruster_status_name(status), msg ? msg : "");
  }
}

typedef struct want {
  int n;
} want;
static int all_handled(void *arg) { return atomic_load(&g_handled) >= ((want *)arg)->n; }
static int all_reported(void *arg) {
  return atomic_load(&g_accepted) + atomic_load(&g_refused) >= ((want *)arg)->n;
}

/* What the database and the runtime looked like: printed before failing. */
static void diagnose(pgt_schema *s, cruster_runtime *rt, int sent) {
  printf("  diagnostics: sent %d, accepted %d, refused %d, handled %d; polls %.0f\n", sent,
         atomic_load(&g_accepted), atomic_load(&g_refused), atomic_load(&g_handled),
         ts_metric(rt, "cluster_storage_polls_total", NULL));
  PGresult *a = PQexec(s->admin,
                       "SELECT pid, state, wait_event_type, wait_event, xact_start IS NOT NULL, "
                       "left(query, 60) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()");
  for (int i = 0; i < PQntuples(a); i++)
    printf("   %s %s %s %s xact=%s %s\n", PQgetvalue(a, i, 0), PQgetvalue(a, i, 1),
           PQgetvalue(a, i, 2), PQgetvalue(a, i, 3), PQgetvalue(a, i, 4), PQgetvalue(a, i, 5));
  PQclear(a);
  a = PQexec(s->admin, "SELECT seq, request_id, claimed_by IS NOT NULL, attempts FROM "
                       "cruster_messages ORDER BY seq LIMIT 5");
  for (int i = 0; i < PQntuples(a); i++)
    printf("   row seq=%s id=%s claimed=%s att=%s\n", PQgetvalue(a, i, 0), PQgetvalue(a, i, 1),
           PQgetvalue(a, i, 2), PQgetvalue(a, i, 3));
  PQclear(a);
  printf("   rows: %lld, claimed: %lld, processed: %lld, retry_at set: %lld, max attempts %lld\n",
         pgt_count(s, "cruster_messages"),
         pgt_scalar(s->admin, "SELECT count(*) FROM cruster_messages WHERE claimed_by IS NOT NULL",
                    -1),
         pgt_scalar(s->admin, "SELECT count(*) FROM cruster_messages WHERE processed", -1),
         pgt_scalar(s->admin, "SELECT count(*) FROM cruster_messages WHERE retry_at IS NOT NULL",
                    -1),
         pgt_scalar(s->admin, "SELECT max(attempts) FROM cruster_messages", -1));
  fflush(stdout);
}

static int send_one(cruster_runtime *rt, int *sent) {
  if (*sent >= MAX_MSGS) return 0;
  char p[32];
  int n = snprintf(p, sizeof p, "%d", *sent);
  if (cruster_notify(rt, "Str", "E", "tick", p, (size_t)n, NULL, on_notify, NULL, NULL) != CRUSTER_OK)
    return 0;
  (*sent)++;
  struct timespec ts = {0, 250000};
  nanosleep(&ts, NULL);
  return 1;
}

static void steady_stream_to_one_entity_keeps_making_progress(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  uv_mutex_init(&g_mu);
  g_seen = calloc(MAX_MSGS, sizeof *g_seen);
  assert_non_null(g_seen);
  g_nseen = 0;
  atomic_store(&g_handled, 0);
  atomic_store(&g_accepted, 0);
  atomic_store(&g_refused, 0);
  cruster_entity_def *d = def_new("Str");
  add(d, "tick", CRUSTER_RPC_PERSISTED, h_record, NULL);
  cruster_runtime *rt = pgt_runtime(&s, "storage_poll_interval=100ms", &d, 1);
  /* Wait for the attach scan (queued on the first connection before this):
   * until it completes every entity takes the probe path. */
  cruster_message_list *l = NULL;
  assert_int_equal(cruster_dead_letters(rt, 1, &l, NULL), CRUSTER_OK);
  cruster_message_list_free(l);

  /* The stream, in PHASES windows one after the other: a window lasts at
   * least WINDOW_MS (so the later ones see the entity hot) and until
   * PROGRESS more messages were handled; a window without that progress
   * within DEADLINE_MS fails the test. */
  int sent = 0, failed = 0;
  for (int phase = 0; phase < PHASES && !failed; phase++) {
    int from = atomic_load(&g_handled);
    int64_t start = pgt_mono_ms();
    while (pgt_mono_ms() - start < WINDOW_MS || atomic_load(&g_handled) < from + PROGRESS) {
      if (pgt_mono_ms() - start > DEADLINE_MS) {
        printf("  window %d: no progress while the stream runs: %d handled in %ld ms "
               "(wanted %d; %d handled in all, %d sent)\n",
               phase, atomic_load(&g_handled) - from, DEADLINE_MS, PROGRESS,
               atomic_load(&g_handled), sent);
        failed = 1;
        break;
      }
      if (!send_one(rt, &sent)) ts_sleep_ms(1);
    }
  }
  int handled_at_stop = atomic_load(&g_handled);

  /* After the stream: every message is reported on, accepted and handled. */
  want w = {sent};
  if (!failed && !pgt_eventually(all_reported, &w, DEADLINE_MS)) {
    printf("  only %d of %d notifies reported back within %ld ms\n",
           atomic_load(&g_accepted) + atomic_load(&g_refused), sent, DEADLINE_MS);
    failed = 1;
  }
  if (!failed && atomic_load(&g_refused) != 0) {
    printf("  %d notifies refused\n", atomic_load(&g_refused));
    failed = 1;
  }
  if (!failed && !pgt_eventually(all_handled, &w, DEADLINE_MS)) {
    printf("  handled %d of %d within %ld ms after the stream stopped\n", atomic_load(&g_handled),
           sent, DEADLINE_MS);
    failed = 1;
  }
  if (failed) diagnose(&s, rt, sent);
  printf("  sent %d; handled %d when the stream stopped, all %d after it\n", sent, handled_at_stop,
         atomic_load(&g_handled));
  cruster_runtime_free(rt); /* joins the workers: g_seen is complete */
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
  assert_false(failed);

  /* Exactly once, in send order. */
  assert_int_equal(g_nseen, sent);
  for (int i = 0; i < sent; i++)
    if (g_seen[i] != i) fail_msg("message %d was handled at position %d (%d)", g_seen[i], i, sent);
  free(g_seen);
  uv_mutex_destroy(&g_mu);
}

int main(void) {
  alarm(290); /* never hang: ctest's timeout is 300 s */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(steady_stream_to_one_entity_keeps_making_progress),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
