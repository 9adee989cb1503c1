/* Shared helpers of the cluster tests that drive child_cluster_runner
 * processes (header-only, static functions; include after pg_support.h):
 * starting runners on free loopback ports against a given etcd, reading
 * their answers with a generous deadline (failure only, never a rate), and a
 * private etcd process for the tests that stop etcd (the shared one must keep
 * running for everyone else). */
#ifndef CLUSTER_SUPPORT_H
#define CLUSTER_SUPPORT_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "pg_support.h"

#define CLT_CHILD_BIN CRUSTER_TEST_BIN_DIR "/child_cluster_runner"

typedef struct clt_child {
  pid_t pid;
  int in_fd, out_fd;
  char buf[8192];
  size_t len;
  char addr[64];
  int alive;
} clt_child;

/* A free loopback port (bound, then closed: the user binds it next). */
static int clt_free_port(void) {
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

/* Starts child_cluster_runner against etcd `endpoint` (see its header for
 * the arguments); the environment is inherited (CHILD_LEASE_TTL_MS). */
static void clt_child_start(clt_child *c, const char *endpoint, const char *prefix, const char *conninfo,
                            const char *config) {
  int in[2], out[2];
  assert_int_equal(pipe(in), 0);
  assert_int_equal(pipe(out), 0);
  /* Our ends must not leak into the runners forked later: a runner's stdin
   * reaches EOF only when every copy of its write end is closed. */
  fcntl(in[1], F_SETFD, FD_CLOEXEC);
  fcntl(out[0], F_SETFD, FD_CLOEXEC);
  snprintf(c->addr, sizeof(c->addr), "127.0.0.1:%d", clt_free_port());
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]);
    close(in[1]);
    close(out[0]);
    close(out[1]);
    execl(CLT_CHILD_BIN, CLT_CHILD_BIN, endpoint, prefix, c->addr, conninfo ? conninfo : "-",
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
static void clt_child_line(clt_child *c, char *line, size_t cap) {
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

static void clt_child_cmd(clt_child *c, char *line, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void clt_child_cmd(clt_child *c, char *line, size_t cap, const char *fmt, ...) {
  char cmd[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(cmd, sizeof(cmd) - 1, fmt, ap);
  va_end(ap);
  cmd[n++] = '\n';
  assert_int_equal(write(c->in_fd, cmd, (size_t)n), n);
  if (line) clt_child_line(c, line, cap);
}

/* A number the child answers as "<word> <n>" to command `word`. */
static int clt_child_num(clt_child *c, const char *word) {
  char line[128], fmt[64];
  clt_child_cmd(c, line, sizeof(line), "%s", word);
  snprintf(fmt, sizeof(fmt), "%s %%d", word);
  int n = -1;
  if (sscanf(line, fmt, &n) != 1) fail_msg("runner %s: '%s' answered '%s'", c->addr, word, line);
  return n;
}

static int clt_child_owned(clt_child *c) { return clt_child_num(c, "owned"); }

static void clt_child_expect_ready(clt_child *c) {
  char line[256];
  clt_child_line(c, line, sizeof(line));
  assert_string_equal(line, "ready");
}

static void clt_child_close(clt_child *c) {
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

/* Waits until the live children own `shards` shards between them, each
 * once (the sum is exact only when no two own the same shard). */
static void clt_wait_all_owned(clt_child *cs, size_t n, int shards) {
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  for (;;) {
    int sum = 0;
    for (size_t i = 0; i < n; i++)
      if (cs[i].alive) sum += clt_child_owned(&cs[i]);
    if (sum == shards) return;
    if (pgt_mono_ms() > end) fail_msg("the runners own %d of %d shards after %ld ms", sum, shards, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

static int clt_cmp_str(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Waits until each live child owns exactly the shards rendezvous gives it
 * among the live children (group "default", `shards` shards; runners as in
 * etcd key order): the assignment has settled, every routing table agrees,
 * every shard is owned once. Stronger than clt_wait_all_owned, whose sum
 * also adds up while one runner holds a shard rendezvous gives another. */
static void clt_wait_rendezvous(clt_child *cs, size_t n, int shards) {
  const char *addrs[16];
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (cs[i].alive) {
      assert_true(k < 16);
      addrs[k++] = cs[i].addr;
    }
  qsort(addrs, k, sizeof(addrs[0]), clt_cmp_str);
  int want[16] = {0};
  for (int32_t sh = 0; sh < shards; sh++) {
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
      int got = clt_child_owned(&cs[i]);
      sum += got;
      if (got != want[j]) ok = 0;
    }
    if (ok) return;
    if (pgt_mono_ms() > end)
      fail_msg("the runners own %d of %d shards, not as rendezvous assigns them, after %ld ms", sum,
               shards, TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
}

/* SIGKILLs a child and reaps it. */
static void clt_child_kill(clt_child *c) {
  if (!c->alive) return;
  kill(c->pid, SIGKILL);
  waitpid(c->pid, NULL, 0);
  close(c->in_fd);
  close(c->out_fd);
  c->alive = 0;
}

static const char *clt_shared_etcd(void) {
  const char *e = getenv("CRUSTER_TEST_ETCD");
  if (!e || !*e)
    fail_msg("CRUSTER_TEST_ETCD is not set: cluster tests need the etcd of `scripts/dev services start`");
  return e;
}

/* ---- a private etcd (single member, loopback, temporary data dir) ---- */

typedef struct clt_etcd {
  pid_t pid;
  int client_port, peer_port;
  char dir[64];
  char endpoint[64];
} clt_etcd;

static int clt_tcp_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
  close(fd);
  return ok;
}

/* Starts etcd on e's ports and data dir (new ones the first time), and
 * waits (bounded) until its client port accepts connections. */
static void clt_etcd_run(clt_etcd *e) {
  if (!e->dir[0]) {
    snprintf(e->dir, sizeof(e->dir), "/tmp/cruster-etcd-XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    e->client_port = clt_free_port();
    do e->peer_port = clt_free_port();
    while (e->peer_port == e->client_port);
    snprintf(e->endpoint, sizeof(e->endpoint), "http://127.0.0.1:%d", e->client_port);
  }
  char data[128], log[128], client[64], peer[64], cluster[96];
  snprintf(data, sizeof(data), "%s/data", e->dir);
  snprintf(log, sizeof(log), "%s/etcd.log", e->dir);
  snprintf(client, sizeof(client), "http://127.0.0.1:%d", e->client_port);
  snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", e->peer_port);
  snprintf(cluster, sizeof(cluster), "clt=%s", peer);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0) dup2(nul, 0);
    execlp("etcd", "etcd", "--name", "clt", "--data-dir", data, "--listen-client-urls", client,
           "--advertise-client-urls", client, "--listen-peer-urls", peer,
           "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster,
           "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr", (char *)NULL);
    _exit(127);
  }
  e->pid = pid;
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (!clt_tcp_open(e->client_port)) {
    if (waitpid(pid, NULL, WNOHANG) == pid) fail_msg("the private etcd exited: see %s", log);
    if (pgt_mono_ms() > end) fail_msg("the private etcd does not listen: see %s", log);
    ts_sleep_ms(50);
  }
}

/* Kills it (SIGKILL; SIGCONT first in case it was stopped) and reaps it. */
static void clt_etcd_kill(clt_etcd *e) {
  if (e->pid <= 0) return;
  kill(e->pid, SIGKILL);
  kill(e->pid, SIGCONT);
  waitpid(e->pid, NULL, 0);
  e->pid = 0;
}

/* Kills it and removes its data dir. */
static void clt_etcd_destroy(clt_etcd *e) {
  clt_etcd_kill(e);
  if (e->dir[0]) {
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
    if (system(cmd) != 0) print_message("could not remove %s\n", e->dir);
    e->dir[0] = 0;
  }
}

#endif
