/* Cluster mode across runner processes (child_cluster_runner) on loopback,
 * with the real etcd (CRUSTER_TEST_ETCD) and PostgreSQL (CRUSTER_TEST_PG):
 * calls from each runner reach entities on the others and errors keep their
 * kind; a graceful stop hands every shard to the others; a SIGKILLed runner's
 * shards are taken after its lease and no acknowledged persisted message is
 * lost. Waits are bounded by generous deadlines (failure only), never rates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "pg_support.h"

#define SHARDS 12
#define CHILD_BIN CRUSTER_TEST_BIN_DIR "/child_cluster_runner"

typedef struct child {
  pid_t pid;
  int in_fd, out_fd;
  char buf[8192];
  size_t len;
  char addr[64];
  int alive;
} child;

static const char *etcd_endpoint(void) {
  const char *e = getenv("CRUSTER_TEST_ETCD");
  if (!e || !*e)
    fail_msg("CRUSTER_TEST_ETCD is not set: cluster tests need the etcd of `scripts/dev services start`");
  return e;
}

/* A free loopback port (bound, then closed: the child binds it next). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  socklen_t l = sizeof(a);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void child_start(child *c, const char *prefix, const char *conninfo, const char *config) {
  int in[2], out[2];
  assert_int_equal(pipe(in), 0);
  assert_int_equal(pipe(out), 0);
  /* Our ends must not leak into the runners forked later: a runner's stdin
   * reaches EOF only when every copy of its write end is closed. */
  fcntl(in[1], F_SETFD, FD_CLOEXEC);
  fcntl(out[0], F_SETFD, FD_CLOEXEC);
  snprintf(c->addr, sizeof(c->addr), "127.0.0.1:%d", free_port());
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]);
    close(in[1]);
    close(out[0]);
    close(out[1]);
    execl(CHILD_BIN, CHILD_BIN, etcd_endpoint(), prefix, c->addr, conninfo ? conninfo : "-",
          config ? config : "", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  c->pid = pid;
  c->in_fd = in[1];
  c->out_fd = out[0];
  c->len = 0;
  c->alive = 1;
}

/* The next line from the child, waiting at most TS_DEADLINE_MS (fails after). */
static void child_line(child *c, char *line, size_t cap) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    char *nl = memchr(c->buf, '\n', c->len);
    if (nl) {
      size_t n = (size_t)(nl - c->buf);
      snprintf(line, cap, "%.*s", (int)n, c->buf);
      memmove(c->buf, nl + 1, c->len - n - 1);
      c->len -= n + 1;
      return;
    }
    int64_t left = end - pgt_mono_ms();
    if (left <= 0) fail_msg("runner %s: no answer within %ld ms", c->addr, TS_DEADLINE_MS);
    struct pollfd p = {c->out_fd, POLLIN, 0};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t k = read(c->out_fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
    if (k <= 0) fail_msg("runner %s exited (read %zd)", c->addr, k);
    c->len += (size_t)k;
  }
}

static void child_cmd(child *c, char *line, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void child_cmd(child *c, char *line, size_t cap, const char *fmt, ...) {
  char cmd[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
  va_end(ap);
  cmd[n++] = '\n';
  assert_int_equal(write(c->in_fd, cmd, (size_t)n), n);
  if (line) child_line(c, line, cap);
}

static int child_owned(child *c) {
  char line[128];
  child_cmd(c, line, sizeof(line), "owned");
  int n = -1;
  assert_int_equal(sscanf(line, "owned %d", &n), 1);
  return n;
}

static void child_kill(child *c) {
  if (!c->alive) return;
  kill(c->pid, SIGKILL);
  waitpid(c->pid, NULL, 0);
  close(c->in_fd);
  close(c->out_fd);
  c->alive = 0;
}

static void child_close(child *c) {
  if (!c->alive) return;
  close(c->in_fd); /* the child stops gracefully when stdin closes */
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  int status;
  while (waitpid(c->pid, &status, WNOHANG) == 0) {
    if (pgt_mono_ms() > end) {
      kill(c->pid, SIGKILL);
      waitpid(c->pid, &status, 0);
      break;
    }
    ts_sleep_ms(20);
  }
  close(c->out_fd);
  c->alive = 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Waits until each live child owns exactly the shards rendezvous gives it
 * among the live children (listed in etcd key order): the assignment has
 * settled, every routing table agrees, every shard is owned once. */
static void wait_all_owned(child *cs, size_t n) {
  const char *addrs[8];
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (cs[i].alive) addrs[k++] = cs[i].addr;
  qsort(addrs, k, sizeof(addrs[0]), cmp_str);
  int want[8] = {0};
  for (int32_t sh = 0; sh < SHARDS; sh++) {
    int o = cruster_rendezvous_owner("default", sh, addrs, NULL, k);
    assert_true(o >= 0);
    want[o]++;
  }
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    int ok = 1, sum = 0;
    for (size_t i = 0; i < n; i++) {
      if (!cs[i].alive) continue;
      size_t j = 0;
      while (strcmp(addrs[j], cs[i].addr) != 0) j++;
      int got = child_owned(&cs[i]);
      sum += got;
      if (got != want[j]) ok = 0;
    }
    if (ok) return;
    if (pgt_mono_ms() > end)
      fail_msg("the runners own %d of %d shards, not as rendezvous assigns them, after %ld ms", sum,
               SHARDS, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

static void prefix_new(char *buf, size_t cap) {
  static int seq;
  snprintf(buf, cap, "/cruster-test-cluster-%ld-%d/", (long)getpid(), seq++);
}

static const char *CONFIG = "shards_per_group=12;shard_rebalance_retry_interval=300ms;"
                            "runner_lock_refresh_interval=1s;send_retry_interval=50ms";

static void test_calls_across_runners_and_graceful_stop(void **state) {
  (void)state;
  char prefix[96];
  prefix_new(prefix, sizeof(prefix));
  child cs[3];
  for (int i = 0; i < 3; i++) child_start(&cs[i], prefix, NULL, CONFIG);
  char line[1024];
  for (int i = 0; i < 3; i++) {
    child_line(&cs[i], line, sizeof(line));
    assert_string_equal(line, "ready");
  }
  wait_all_owned(cs, 3);

  /* Every runner reaches every entity; one entity is always answered by the
   * same runner, whoever calls; each caller reaches the others. */
  char owner[40][64];
  for (int i = 0; i < 3; i++) {
    int remote = 0;
    for (int e = 0; e < 40; e++) {
      child_cmd(&cs[i], line, sizeof(line), "call Echo e%d who x%d", e, e);
      char who[64], echo[64];
      if (sscanf(line, "ok %63s %63s", who, echo) != 2) fail_msg("runner %s: e%d: %s", cs[i].addr, e, line);
      char want[64];
      snprintf(want, sizeof(want), "x%d", e);
      assert_string_equal(echo, want);
      if (i == 0) snprintf(owner[e], sizeof(owner[e]), "%s", who);
      else assert_string_equal(who, owner[e]);
      if (strcmp(who, cs[i].addr) != 0) remote++;
    }
    assert_true(remote > 0);
  }
  /* An error keeps its code and message across runners. */
  for (int e = 0; e < 6; e++) {
    child_cmd(&cs[0], line, sizeof(line), "call Echo e%d fail -", e);
    char want[200];
    snprintf(want, sizeof(want), "err -1001 failed on %.64s", owner[e]);
    assert_string_equal(line, want);
  }

  /* A graceful stop: the two others own every shard. */
  child_cmd(&cs[2], line, sizeof(line), "stop");
  assert_string_equal(line, "stopped");
  waitpid(cs[2].pid, NULL, 0);
  close(cs[2].in_fd);
  close(cs[2].out_fd);
  cs[2].alive = 0;
  wait_all_owned(cs, 3);
  for (int e = 0; e < 40; e++) {
    child_cmd(&cs[0], line, sizeof(line), "call Echo e%d who y", e);
    char who[64];
    assert_int_equal(sscanf(line, "ok %63s", who), 1);
    assert_true(strcmp(who, cs[0].addr) == 0 || strcmp(who, cs[1].addr) == 0);
  }
  for (int i = 0; i < 3; i++) child_close(&cs[i]);
}

static void test_sigkill_loses_nothing_acknowledged(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  pgt_exec(s.admin, "CREATE TABLE cluster_sink (entity_id text, payload text, runner text)");
  pgt_exec(s.admin,
           "CREATE TABLE cluster_fence (shard int4, runner text, started_us int8, ended_us int8, entity_id text)");
  char prefix[96];
  prefix_new(prefix, sizeof(prefix));
  child cs[3];
  for (int i = 0; i < 3; i++) child_start(&cs[i], prefix, s.conninfo, CONFIG);
  char line[1024];
  for (int i = 0; i < 3; i++) {
    child_line(&cs[i], line, sizeof(line));
    assert_string_equal(line, "ready");
  }
  wait_all_owned(cs, 3);

  /* Runner 0 sends persisted messages to entities all over the cluster;
   * runner 2 is killed while they flow. */
  enum { N = 120 };
  child_cmd(&cs[0], NULL, 0, "load %d k", N);
  int acked[N] = {0}, nacked = 0, killed = 0;
  long long kill_at_us = 0;
  char victim_addr[64] = "";
  for (;;) {
    child_line(&cs[0], line, sizeof(line));
    if (strcmp(line, "loaded") == 0) break;
    int i = -1;
    if (sscanf(line, "acked %d", &i) == 1 && i >= 0 && i < N) {
      acked[i] = 1;
      nacked++;
    } else {
      print_message("runner 0: %s\n", line);
    }
    if (!killed && nacked >= N / 4) {
      /* The runner that runs the singleton, if it ran yet: its failover is
       * checked too. */
      int victim = 2;
      PGresult *r = PQexec(s.admin, "SELECT runner FROM cluster_fence WHERE shard = -1 "
                                    "ORDER BY ended_us DESC LIMIT 1");
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        for (int i = 0; i < 3; i++)
          if (strcmp(PQgetvalue(r, 0, 0), cs[i].addr) == 0 && i != 0) victim = i;
      PQclear(r);
      kill_at_us = pgt_now_ms() * 1000;
      snprintf(victim_addr, sizeof(victim_addr), "%s", cs[victim].addr);
      child_kill(&cs[victim]);
      killed = 1;
    }
  }
  assert_true(killed);
  /* Every acknowledged message is handled, by the survivors if need be. */
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    int missing = 0;
    for (int i = 0; i < N; i++) {
      if (!acked[i]) continue;
      if (pgt_scalarf(s.admin, 0, "SELECT count(*) FROM cluster_sink WHERE entity_id = 'k-%d'", i) == 0)
        missing++;
    }
    if (missing == 0) break;
    if (pgt_mono_ms() > end) fail_msg("%d acknowledged messages never handled", missing);
    ts_sleep_ms(200);
  }
  assert_int_equal(nacked, N);
  /* The dead runner's shards are owned again (after its lease). */
  wait_all_owned(cs, 3);
  /* The singleton runs on a survivor after the kill... */
  end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (pgt_scalarf(s.admin, 0,
                     "SELECT count(*) FROM cluster_fence WHERE shard = -1 AND runner <> '%s' "
                     "AND started_us > %lld",
                     victim_addr, kill_at_us) == 0) {
    if (pgt_mono_ms() > end) fail_msg("the singleton never ran on a survivor after the kill");
    ts_sleep_ms(100);
  }
  /* ... and two runners' stretches of it never overlapped (fencing). */
  assert_int_equal(pgt_scalar(s.admin,
                              "SELECT count(*) FROM cluster_fence a JOIN cluster_fence b "
                              "ON a.shard = b.shard AND a.runner < b.runner "
                              "AND a.started_us < b.ended_us AND b.started_us < a.ended_us",
                              -1),
                   0);
  for (int i = 0; i < 3; i++) child_close(&cs[i]);
  pgt_schema_drop(&s);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_calls_across_runners_and_graceful_stop),
      cmocka_unit_test(test_sigkill_loses_nothing_acknowledged),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
