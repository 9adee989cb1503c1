/* Crash safety with PostgreSQL storage, with real processes
 * (child_pg_runner):
 *  - a runner killed with SIGKILL while persisted messages are stored but
 *    unprocessed: the next runner delivers every one of them (in per-entity
 *    send order);
 *  - a message whose handler kills the runner is dead-lettered after
 *    storage_message_max_retries deliveries, not retried forever; the other
 *    messages are processed; the dead letter is listed and can be
 *    redelivered. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <uv.h>

#include "pg_support.h"

extern char **environ;

#define CHILD CRUSTER_TEST_BIN_DIR "/child_pg_runner"

static pid_t spawn_child(const char *conninfo, const char *out, const char *mode,
                         const char *sends, const char *cfg) {
  char *argv[] = {(char *)CHILD, (char *)conninfo, (char *)out, (char *)mode, (char *)sends,
                  (char *)cfg, NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, CHILD, NULL, NULL, argv, environ);
  if (rc != 0) fail_msg("posix_spawn %s: %s", CHILD, strerror(rc));
  return pid;
}

/* Kills with SIGKILL and reaps. */
static void kill_child(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

/* 1 if the child has exited (then *status is set). */
static int child_exited(pid_t pid, int *status) {
  int st = 0;
  pid_t r = waitpid(pid, &st, WNOHANG);
  if (r == pid) {
    if (status) *status = st;
    return 1;
  }
  return 0;
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return strdup("");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *b = malloc((size_t)n + 1);
  size_t got = fread(b, 1, (size_t)n, f);
  b[got] = 0;
  fclose(f);
  return b;
}

/* 1 if the file has the line exactly. */
static int has_line(const char *content, const char *line) {
  size_t n = strlen(line);
  for (const char *p = content; p && *p;) {
    const char *e = strchr(p, '\n');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == n && memcmp(p, line, n) == 0) return 1;
    p = e ? e + 1 : NULL;
  }
  return 0;
}

static int has_line_in(const char *path, const char *line) {
  char *c = read_file(path);
  int r = has_line(c, line);
  free(c);
  return r;
}

static void tmp_path(char *buf, size_t n, const char *tag) {
  static int seq;
  snprintf(buf, n, "/tmp/cruster_%s_%ld_%d.txt", tag, (long)getpid(), seq++);
  unlink(buf);
}

/* Waits until `line` is in the file, failing if the child exits first. */
static void wait_line_alive(pid_t pid, const char *path, const char *line, long ms) {
  int64_t end = pgt_mono_ms() + ms;
  for (;;) {
    if (has_line_in(path, line)) return;
    int st;
    if (child_exited(pid, &st))
      fail_msg("child %ld exited (status 0x%x) before writing \"%s\"", (long)pid, st, line);
    if (pgt_mono_ms() > end) {
      kill_child(pid);
      fail_msg("child did not write \"%s\" within %ld ms", line, ms);
    }
    ts_sleep_ms(20);
  }
}

#define N_MSGS 40
#define N_ENT 4

static const char *CHILD_CFG =
    "storage_poll_interval=100ms;storage_retry_backoff=50ms;entity_termination_timeout=500ms";

static void killed_runner_delivers_stored_messages_after_restart(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  char out[256];
  tmp_path(out, sizeof(out), "crash");
  char sends[4096] = "";
  for (int i = 0; i < N_MSGS; i++) {
    char item[32];
    snprintf(item, sizeof(item), "%ss%d:m%03d", i ? "," : "", i % N_ENT, i);
    strcat(sends, item);
  }
  /* A: stores the messages; its handler never finishes one. */
  pid_t a = spawn_child(s.conninfo, out, "slow", sends, CHILD_CFG);
  char acc[32];
  snprintf(acc, sizeof(acc), "#ACCEPTED %d", N_MSGS);
  wait_line_alive(a, out, acc, 60000);
  kill_child(a);
  /* every accepted message is in the database, none answered */
  assert_int_equal(pgt_count(&s, "cruster_messages"), N_MSGS);
  for (int i = 0; i < N_MSGS; i++) {
    char line[32];
    snprintf(line, sizeof(line), "s%d m%03d", i % N_ENT, i);
    assert_false(has_line_in(out, line));
  }
  /* B: a fresh process delivers all of them. */
  pid_t b = spawn_child(s.conninfo, out, "run", "-", CHILD_CFG);
  for (int i = 0; i < N_MSGS; i++) {
    char line[32];
    snprintf(line, sizeof(line), "s%d m%03d", i % N_ENT, i);
    wait_line_alive(b, out, line, 60000);
  }
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  /* every message answered: an unkeyed row is deleted once its answer is recorded */
  while (pgt_count(&s, "cruster_messages") > 0 && pgt_mono_ms() < end) ts_sleep_ms(50);
  long long left = pgt_count(&s, "cruster_messages");
  kill_child(b);
  assert_int_equal(left, 0);
  /* per-entity order: first deliveries follow send order */
  char *content = read_file(out);
  for (int e = 0; e < N_ENT; e++) {
    int last = -1;
    char prefix[8];
    snprintf(prefix, sizeof(prefix), "s%d m", e);
    for (const char *p = content; *p;) {
      const char *nl = strchr(p, '\n');
      if (strncmp(p, prefix, strlen(prefix)) == 0) {
        int i = atoi(p + strlen(prefix));
        if (i > last) {
          if (i != last + N_ENT && !(last < 0 && i == e))
            fail_msg("entity s%d: m%03d delivered after m%03d (skipped one)", e, i, last);
          last = i;
        }
      }
      if (!nl) break;
      p = nl + 1;
    }
  }
  free(content);
  unlink(out);
  pgt_schema_drop(&s);
}

typedef struct got {
  uv_mutex_t mu;
  char last[64];
  atomic_int n;
} got;
static void h_record(void *user, cruster_request *req) {
  got *g = user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  uv_mutex_lock(&g->mu);
  snprintf(g->last, sizeof(g->last), "%.*s", (int)len, p ? p : "");
  uv_mutex_unlock(&g->mu);
  atomic_fetch_add(&g->n, 1);
  cruster_request_reply(req, "fixed", 5);
}
static int got_one(void *arg) { return atomic_load(&((got *)arg)->n) >= 1; }

static int healthy_done(void *arg) {
  pgt_schema *s = arg;
  return pgt_scalarf(s->admin, -1,
                     "SELECT count(*) FROM %s.cruster_messages WHERE entity_id IN ('a', 'b')",
                     s->name) == 0;
}

static void poison_message_is_dead_lettered_not_retried_forever(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  char out[256];
  tmp_path(out, sizeof(out), "poison");
  const int max_retries = 2;
  char cfg[256];
  snprintf(cfg, sizeof(cfg), "%s;storage_message_max_retries=%d", CHILD_CFG, max_retries);
  /* The producer processes a1 and b1, then stores P (whose handler blocks
   * there: one delivery) and after-P, queued behind P on entity p, then a2
   * (processed at once). When it is killed, only P was in a handler: after-P
   * was never handed to one. */
  const char *sends = "a:a1,b:b1,p:P,p:after-P,a:a2";
  const char *healthy[] = {"a a1", "b b1", "a a2", "p after-P"};
  pid_t prod = spawn_child(s.conninfo, out, "block-on:P", sends, cfg);
  wait_line_alive(prod, out, "#ACCEPTED 5", 60000);
  wait_line_alive(prod, out, "a a2", 60000);
  /* A handler's line comes before its answer is recorded: wait until the
   * storage has them all done, so that only P is in flight at the kill (a
   * message still in flight when a runner dies is charged an attempt, and
   * would become a dead letter with P). */
  assert_true(pgt_eventually(healthy_done, &s, PGT_DEADLINE_MS));
  kill_child(prod);

  int deaths = 0, settled = 0;
  pid_t child = -1;
  for (int run = 0; run < max_retries + 4 && !settled; run++) {
    child = spawn_child(s.conninfo, out, "crash-on:P", "-", cfg);
    int64_t end = pgt_mono_ms() + 45000;
    for (;;) {
      int st;
      if (child_exited(child, &st)) {
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
          fail_msg("child exited unexpectedly (status 0x%x): see its stderr above", st);
        deaths++;
        child = -1;
        break;
      }
      char *c = read_file(out);
      int all = 1;
      for (size_t i = 0; i < sizeof(healthy) / sizeof(healthy[0]); i++)
        if (!has_line(c, healthy[i])) all = 0;
      free(c);
      if (all) {
        ts_sleep_ms(1000); /* still alive a moment later? */
        if (child_exited(child, &st)) {
          deaths++;
          child = -1;
          break;
        }
        settled = 1;
        break;
      }
      if (pgt_mono_ms() > end) {
        kill_child(child);
        fail_msg("run %d: the child neither died nor processed every healthy message in 45 s",
                 run);
      }
      ts_sleep_ms(50);
    }
  }
  printf("  runner deaths caused by the poison message: %d (max_retries %d)\n", deaths,
         max_retries);
  if (child > 0) kill_child(child);
  assert_true(settled);
  assert_true(deaths >= 1);
  assert_true(deaths <= max_retries + 1);
  char *c = read_file(out);
  assert_false(has_line(c, "p P"));
  free(c);
  /* after-P waited behind P and ran once P was dead: it must not have been
   * charged for P's crashes */
  long long ap_attempts = pgt_scalar(
      s.admin, "SELECT attempts FROM cruster_messages WHERE payload = 'after-P'::bytea", -1);
  printf("  after-P attempts: %lld\n", ap_attempts);

  /* The dead letter, seen through the API of a new runner. */
  got g;
  memset(&g, 0, sizeof(g));
  uv_mutex_init(&g.mu);
  cruster_entity_def *d = NULL;
  assert_int_equal(cruster_entity_def_new("Sink", &d, NULL), CRUSTER_OK);
  assert_int_equal(cruster_entity_def_add_rpc(d, "put", CRUSTER_RPC_PERSISTED, h_record, &g, NULL),
                   CRUSTER_OK);
  cruster_runtime *rt = pgt_runtime(&s, cfg, &d, 1);
  cruster_message_list *l = NULL;
  cruster_error *err = NULL;
  assert_int_equal(cruster_dead_letters(rt, 100, &l, &err), CRUSTER_OK);
  assert_int_equal(cruster_message_list_count(l), 1);
  size_t plen;
  const void *p = cruster_message_list_payload(l, 0, &plen);
  assert_int_equal(plen, 1);
  assert_memory_equal(p, "P", 1);
  assert_string_equal(cruster_message_list_entity_type(l, 0), "Sink");
  assert_string_equal(cruster_message_list_entity_id(l, 0), "p");
  assert_string_equal(cruster_message_list_method(l, 0), "put");
  int64_t attempts = cruster_message_list_attempts(l, 0);
  printf("  dead letter attempts: %lld\n", (long long)attempts);
  assert_true(attempts >= deaths);
  assert_true(attempts <= max_retries + 2);
  int64_t id = cruster_message_list_request_id(l, 0);
  cruster_message_list_free(l);
  ts_sleep_ms(300);
  assert_int_equal(atomic_load(&g.n), 0); /* nothing else was pending */
  /* redeliver: runs again (the handler here is fixed) */
  assert_int_equal(cruster_dead_letter_redeliver(rt, id, &err), CRUSTER_OK);
  assert_true(pgt_eventually(got_one, &g, PGT_DEADLINE_MS));
  uv_mutex_lock(&g.mu);
  assert_string_equal(g.last, "P");
  uv_mutex_unlock(&g.mu);
  assert_int_equal(cruster_dead_letters(rt, 100, &l, &err), CRUSTER_OK);
  assert_int_equal(cruster_message_list_count(l), 0);
  cruster_message_list_free(l);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  uv_mutex_destroy(&g.mu);
  unlink(out);
  pgt_schema_drop(&s);
}

int main(void) {
  alarm(280);
  if (!getenv("CRUSTER_TEST_PG") || !*getenv("CRUSTER_TEST_PG"))
    fprintf(stderr, "CRUSTER_TEST_PG is not set: every test will fail. Run `scripts/dev services "
                    "start` and `source .dev/env`.\n");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(killed_runner_delivers_stored_messages_after_restart),
      cmocka_unit_test(poison_message_is_dead_lettered_not_retried_forever),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
