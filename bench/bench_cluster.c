/* bench_cluster: cluster mode across runner processes on loopback, with the
 * real etcd (CRUSTER_TEST_ETCD), in one run (bench/README.md):
 *
 * 1. Non-persisted RPCs between two runners: this process is runner A, a
 *    child process (this program re-executed with --runner) is runner B.
 *    Once the shards are settled, A calls Echo.echo (a small payload) on
 *    entities whose shards B owns (ids picked by asking Echo.who), with 1
 *    and 64 calls in flight (async cruster_send, the callback on the loop
 *    issuing the caller's next call). In the same run, a bare gRPC C-core
 *    unary ping (bare_grpc.c) from this process to a bare server in B's
 *    process, 1 and 64 in flight. Target: rpc ops/s at 64 >= 0.8x bare.
 * 2. Handover between three child runners: seconds from sending "stop"
 *    (cruster_runtime_stop) to one of them until the two others own every
 *    shard (target <= 2 s); then, with a third runner again, seconds from
 *    a SIGKILL of one until the others own every shard (target <= lease TTL
 *    + 2 s). Ownership is the runners' "cluster_shards" metric, polled
 *    through their stdin/stdout.
 *
 * JSON lines on stdout; exits 0 whatever the numbers (non-zero only when a
 * call fails or the setup breaks).
 *
 * Child mode: bench_cluster --runner ETCD PREFIX ADDRESS CONFIG TTL_MS BARE
 * starts a runner (Echo.echo replies its payload, Echo.who replies ADDRESS),
 * and with BARE=1 also the bare gRPC server; prints "ready <bare port>" and
 * answers "owned" ("owned <n>") and "stop" ("stopped <ms the stop took>",
 * then exits) on stdin. Closing stdin stops it too. */
#include <cruster/cruster.h>
#include <grpc/grpc.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bare_grpc.h"

#define DEADLINE_MS 60000
#define N_REMOTE_IDS 256

static const char *g_addr = "";
static double g_seconds = 3.0;
static size_t g_payload = 16;
static int g_shards = 64;
static int64_t g_ttl_ms = 3000;
static char g_config[1024];

static void die(const char *what, cruster_error *err) {
  fprintf(stderr, "bench_cluster[%ld]: %s%s%s\n", (long)getpid(), what, err ? ": " : "",
          err ? cruster_error_message(err) : "");
  exit(2);
}

static int64_t mono_ms(void) { return (int64_t)(bench_mono_ns() / 1000000u); }

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void loadavg(char *buf, size_t cap) {
  double a = 0, b = 0, c = 0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) != 3) a = b = c = 0;
    fclose(f);
  }
  snprintf(buf, cap, "[%.2f,%.2f,%.2f]", a, b, c);
}

/* user+sys CPU of process `pid` (0 = this one) in microseconds, from /proc. */
static double proc_cpu_us(pid_t pid) {
  char path[64], buf[1024];
  if (pid)
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
  else
    snprintf(path, sizeof path, "/proc/self/stat");
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the fields after the command name */
  unsigned long ut = 0, st = 0;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return 0;
  return (double)(ut + st) * 1e6 / (double)sysconf(_SC_CLK_TCK);
}

/* ---- a runner ------------------------------------------------------------------ */

static void h_echo(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

static void h_who(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, g_addr, strlen(g_addr));
}

static void quiet(void *user, cruster_log_level level, const char *component, const char *msg) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN || getenv("BENCH_VERBOSE"))
    fprintf(stderr, "runner[%s] [%s] %s\n", g_addr, component, msg);
}

static cruster_runtime *runner_new(const char *etcd, const char *prefix, const char *addr,
                                   const char *config, int64_t ttl_ms) {
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  if (!cfg) die("config", NULL);
  cruster_config_set_logger(cfg, quiet, NULL, getenv("BENCH_VERBOSE") ? CRUSTER_LOG_DEBUG : CRUSTER_LOG_WARN);
  if (cruster_config_set(cfg, "runner_address", addr, &err) != CRUSTER_OK) die("runner_address", err);
  char *buf = strdup(config), *save = NULL;
  for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
    char *eq = strchr(kv, '=');
    if (!eq) die("bad config item (want name=value;...)", NULL);
    *eq = 0;
    if (cruster_config_set(cfg, kv, eq + 1, &err) != CRUSTER_OK) die(kv, err);
  }
  free(buf);
  cruster_etcd_opts eo = CRUSTER_ETCD_OPTS_INIT;
  eo.endpoints = etcd;
  eo.prefix = prefix;
  eo.lease_ttl_ms = ttl_ms;
  cruster_registry *reg = NULL;
  if (cruster_registry_etcd_new(&eo, &reg, &err) != CRUSTER_OK) die("registry", err);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, NULL, reg, &rt, &err) != CRUSTER_OK) die("runtime_new", err);
  cruster_config_free(cfg);
  cruster_entity_def *d = NULL;
  if (cruster_entity_def_new("Echo", &d, &err) != CRUSTER_OK ||
      cruster_entity_def_add_rpc(d, "echo", 0, h_echo, NULL, &err) != CRUSTER_OK ||
      cruster_entity_def_add_rpc(d, "who", 0, h_who, NULL, &err) != CRUSTER_OK ||
      cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK)
    die("entity", err);
  cruster_entity_def_free(d);
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK) die("start", err);
  return rt;
}

static int owned_here(cruster_runtime *rt) {
  double v = 0;
  cruster_metrics_value(cruster_runtime_metrics(rt), "cluster_shards", NULL, &v);
  return (int)v;
}

static int runner_main(int argc, char **argv) {
  if (argc < 8) {
    fprintf(stderr, "usage: %s --runner ETCD PREFIX ADDRESS CONFIG TTL_MS BARE\n", argv[0]);
    return 64;
  }
  signal(SIGPIPE, SIG_IGN);
  g_addr = argv[4];
  int bare = atoi(argv[7]), bare_port = 0;
  if (bare) {
    grpc_init();
    bare_port = bare_server_start();
  }
  cruster_runtime *rt = runner_new(argv[2], argv[3], argv[4], argv[5], atoll(argv[6]));
  printf("ready %d\n", bare_port);
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    if (strncmp(line, "owned", 5) == 0) {
      printf("owned %d\n", owned_here(rt));
      fflush(stdout);
    } else if (strncmp(line, "stop", 4) == 0) {
      int64_t t0 = mono_ms();
      cruster_runtime_stop(rt, NULL);
      printf("stopped %lld\n", (long long)(mono_ms() - t0));
      fflush(stdout);
      break;
    }
  }
  cruster_runtime_stop(rt, NULL);
  cruster_runtime_free(rt);
  if (bare) {
    bare_server_stop();
    grpc_shutdown();
  }
  return 0;
}

/* ---- child runner processes ------------------------------------------------------ */

typedef struct child {
  pid_t pid;
  int in_fd, out_fd;
  char buf[4096];
  size_t len;
  char addr[64];
  int alive;
} child;

static char g_self[4096];
static const char *g_etcd;

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &l) != 0)
    die("free port", NULL);
  close(fd);
  return ntohs(a.sin_port);
}

static void child_start(child *c, const char *prefix, int bare) {
  int in[2], out[2];
  if (pipe(in) || pipe(out)) die("pipe", NULL);
  snprintf(c->addr, sizeof c->addr, "127.0.0.1:%d", free_port());
  char ttl[32];
  snprintf(ttl, sizeof ttl, "%lld", (long long)g_ttl_ms);
  pid_t pid = fork();
  if (pid < 0) die("fork", NULL);
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[0]);
    close(in[1]);
    close(out[0]);
    close(out[1]);
    execl(g_self, g_self, "--runner", g_etcd, prefix, c->addr, g_config, ttl, bare ? "1" : "0",
          (char *)NULL);
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

static void child_line(child *c, char *line, size_t cap) {
  int64_t end = mono_ms() + DEADLINE_MS;
  for (;;) {
    char *nl = memchr(c->buf, '\n', c->len);
    if (nl) {
      size_t n = (size_t)(nl - c->buf);
      snprintf(line, cap, "%.*s", (int)n, c->buf);
      memmove(c->buf, nl + 1, c->len - n - 1);
      c->len -= n + 1;
      return;
    }
    int64_t left = end - mono_ms();
    if (left <= 0) die("a runner process does not answer", NULL);
    struct pollfd p = {c->out_fd, POLLIN, 0};
    int r = poll(&p, 1, (int)left);
    if (r <= 0) continue;
    ssize_t k = read(c->out_fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
    if (k <= 0) die("a runner process exited", NULL);
    c->len += (size_t)k;
  }
}

static void child_send(child *c, const char *cmd) {
  size_t n = strlen(cmd);
  if (write(c->in_fd, cmd, n) != (ssize_t)n) die("write to a runner process", NULL);
}

static int child_owned(child *c) {
  char line[128];
  child_send(c, "owned\n");
  child_line(c, line, sizeof line);
  int n = -1;
  if (sscanf(line, "owned %d", &n) != 1) die("bad answer to owned", NULL);
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
  close(c->in_fd);
  int64_t end = mono_ms() + DEADLINE_MS;
  int status;
  while (waitpid(c->pid, &status, WNOHANG) == 0) {
    if (mono_ms() > end) {
      kill(c->pid, SIGKILL);
      waitpid(c->pid, &status, 0);
      break;
    }
    sleep_ms(20);
  }
  close(c->out_fd);
  c->alive = 0;
}

/* Shards owned by the live children (plus `rt`, when not NULL): the counts
 * into per[] (children first), the sum returned. */
static int owned_sum(child *cs, size_t n, cruster_runtime *rt, int *per) {
  int sum = 0;
  for (size_t i = 0; i < n; i++) {
    per[i] = cs[i].alive ? child_owned(&cs[i]) : 0;
    sum += per[i];
  }
  if (rt) {
    per[n] = owned_here(rt);
    sum += per[n];
  }
  return sum;
}

/* Waits until every live runner owns some shards, every shard is owned and
 * nothing changed for 1 s. Returns the ms it took. */
static int64_t wait_settled(child *cs, size_t n, cruster_runtime *rt) {
  int64_t t0 = mono_ms(), stable_since = -1;
  int prev[8] = {0}, per[8];
  size_t m = n + (rt ? 1 : 0);
  for (;;) {
    int sum = owned_sum(cs, n, rt, per), ok = sum == g_shards;
    for (size_t i = 0; i < m; i++)
      if ((i < n && !cs[i].alive) ? 0 : per[i] == 0) ok = 0;
    if (ok && stable_since >= 0 && memcmp(prev, per, sizeof(int) * m) == 0) {
      if (mono_ms() - stable_since >= 1000) return mono_ms() - t0;
    } else {
      stable_since = ok ? mono_ms() : -1;
      memcpy(prev, per, sizeof(int) * m);
    }
    if (mono_ms() - t0 > DEADLINE_MS) die("the shards did not settle", NULL);
    sleep_ms(50);
  }
}

/* Polls the live children every ~10 ms until they own every shard; the ms
 * since t0. */
static double wait_all_owned(child *cs, size_t n, int64_t t0_ns) {
  int per[8];
  for (;;) {
    int sum = owned_sum(cs, n, NULL, per);
    uint64_t now = bench_mono_ns();
    if (sum == g_shards) return (double)(now - (uint64_t)t0_ns) / 1e9;
    if (now - (uint64_t)t0_ns > (uint64_t)DEADLINE_MS * 1000000u) die("the shards were not taken over", NULL);
    sleep_ms(10);
  }
}

/* ---- part 1: remote RPCs against the bare ping ------------------------------------ */

typedef struct drive {
  cruster_runtime *rt;
  char **ids;
  int nids, callers;
  const char *payload;
  uint64_t until;
  bench_stats *st;
  uv_mutex_t mu;
  uv_cond_t cv;
  int live, failed, finished;
} drive;

typedef struct slot {
  drive *d;
  int k;
  long j;
  uint64_t start;
} slot;

static void rpc_done(void *ud, int status, const void *data, size_t len, const char *msg);

static int issue(slot *s) {
  drive *d = s->d;
  const char *id = d->ids[(s->k + (long)d->callers * s->j) % d->nids];
  s->j++;
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_INLINE_CALLBACK;
  o.timeout_ms = 30000;
  s->start = bench_mono_ns();
  cruster_error *err = NULL;
  int rc = cruster_send(d->rt, "Echo", id, "echo", d->payload, g_payload, &o, rpc_done, s, &err);
  if (rc != CRUSTER_OK) {
    fprintf(stderr, "bench_cluster: cruster_send: %s\n", err ? cruster_error_message(err) : "");
    cruster_error_free(err);
  }
  return rc;
}

/* On the loop thread; the lock only orders it with the first issues made
 * from the main thread. */
static void rpc_done(void *ud, int status, const void *data, size_t len, const char *msg) {
  slot *s = ud;
  drive *d = s->d;
  uint64_t now = bench_mono_ns();
  (void)data;
  uv_mutex_lock(&d->mu);
  if (status != CRUSTER_OK || len != g_payload) {
    if (!d->failed) fprintf(stderr, "bench_cluster: call failed: %d %s\n", status, msg ? msg : "");
    d->failed++;
  }
  if (d->st->n < BENCH_MAX_CALLS) d->st->lat[d->st->n++] = now - s->start;
  int again = now < d->until && !d->failed;
  uv_mutex_unlock(&d->mu);
  if (again && issue(s) == CRUSTER_OK) return;
  uv_mutex_lock(&d->mu);
  if (again) d->failed++;
  if (--d->live == 0) {
    d->st->t1 = now;
    d->finished = 1;
    uv_cond_signal(&d->cv);
  }
  uv_mutex_unlock(&d->mu);
}

static void run_rpc(cruster_runtime *rt, char **ids, int nids, int callers, double secs, bench_stats *st) {
  drive d;
  memset(&d, 0, sizeof d);
  slot *slots = calloc((size_t)callers, sizeof *slots);
  char *payload = calloc(1, g_payload);
  d.rt = rt;
  d.ids = ids;
  d.nids = nids;
  d.callers = callers;
  d.payload = payload;
  d.st = st;
  uv_mutex_init(&d.mu);
  uv_cond_init(&d.cv);
  uv_mutex_lock(&d.mu);
  st->n = 0;
  st->t0 = bench_mono_ns();
  d.until = st->t0 + (uint64_t)(secs * 1e9);
  d.live = callers;
  uv_mutex_unlock(&d.mu);
  for (int i = 0; i < callers; i++) {
    slots[i].d = &d;
    slots[i].k = i;
    if (issue(&slots[i]) != CRUSTER_OK) die("first call", NULL);
  }
  uv_mutex_lock(&d.mu);
  while (!d.finished) uv_cond_wait(&d.cv, &d.mu);
  uv_mutex_unlock(&d.mu);
  if (d.failed) die("remote calls failed", NULL);
  uv_mutex_destroy(&d.mu);
  uv_cond_destroy(&d.cv);
  free(payload);
  free(slots);
}

static int ask_who(cruster_runtime *rt, const char *id, char *who, size_t cap) {
  void *reply = NULL;
  size_t rlen = 0;
  cruster_error *err = NULL;
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 30000;
  int rc = cruster_send_sync(rt, "Echo", id, "who", NULL, 0, &o, &reply, &rlen, &err);
  if (rc != CRUSTER_OK) {
    fprintf(stderr, "bench_cluster: who %s: %s\n", id, err ? cruster_error_message(err) : "");
    cruster_error_free(err);
    return rc;
  }
  snprintf(who, cap, "%.*s", (int)rlen, (const char *)reply);
  cruster_free(reply);
  return 0;
}

/* cpu[0..1]: this process's and B's CPU (us) during the case. */
static double report(const char *mode, int callers, bench_stats *s, const double *cpu, double *cpu_per_op) {
  double ops, p50, p99;
  double secs = (double)(s->t1 - s->t0) / 1e9;
  bench_summary(s, &ops, &p50, &p99);
  double n = s->n ? (double)s->n : 1;
  *cpu_per_op = (cpu[0] + cpu[1]) / n;
  printf("{\"bench\":\"cluster_rpc\",\"mode\":\"%s\",\"callers\":%d,\"calls\":%zu,\"seconds\":%.2f,"
         "\"ops_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"payload\":%zu,"
         "\"cpu_us_per_op\":%.1f,\"cpu_us_per_op_caller\":%.1f,\"cpu_us_per_op_callee\":%.1f}\n",
         mode, callers, s->n, secs, ops, p50, p99, g_payload, *cpu_per_op, cpu[0] / n, cpu[1] / n);
  fflush(stdout);
  return ops;
}

static void part_rpc(int run) {
  char prefix[128], la[64];
  snprintf(prefix, sizeof prefix, "/cruster-bench-cluster-%ld-%d/", (long)getpid(), run);
  child b;
  child_start(&b, prefix, 1);
  char line[256];
  child_line(&b, line, sizeof line);
  int bare_port = 0;
  if (sscanf(line, "ready %d", &bare_port) != 1 || bare_port <= 0) die("runner B did not start", NULL);
  char a_addr[64];
  snprintf(a_addr, sizeof a_addr, "127.0.0.1:%d", free_port());
  g_addr = a_addr;
  cruster_runtime *a = runner_new(g_etcd, prefix, a_addr, g_config, g_ttl_ms);
  int64_t settle_ms = wait_settled(&b, 1, a);
  int per[2];
  owned_sum(&b, 1, a, per);

  /* ids whose shard B owns: asked, not computed */
  char **ids = calloc(N_REMOTE_IDS, sizeof *ids);
  int nids = 0, asked = 0;
  char who[128];
  for (int i = 0; nids < N_REMOTE_IDS && i < 100000; i++, asked++) {
    char id[32];
    snprintf(id, sizeof id, "e%d", i);
    if (ask_who(a, id, who, sizeof who) != 0) die("who", NULL);
    if (strcmp(who, b.addr) == 0) ids[nids++] = strdup(id);
  }
  if (nids < N_REMOTE_IDS) die("too few ids on runner B", NULL);
  printf("{\"bench\":\"cluster_rpc_setup\",\"runners\":2,\"shards\":%d,\"owned_a\":%d,\"owned_b\":%d,"
         "\"settled_ms\":%lld,\"remote_ids\":%d,\"ids_asked\":%d,\"config\":\"%s\"}\n",
         g_shards, per[1], per[0], (long long)settle_ms, nids, asked, g_config);
  fflush(stdout);

  char bare_addr[64];
  snprintf(bare_addr, sizeof bare_addr, "127.0.0.1:%d", bare_port);
  bench_stats st;
  st.lat = malloc(sizeof(uint64_t) * BENCH_MAX_CALLS);
  const int callers[] = {1, 64};
  double bare64 = 0, rpc64 = 0;
  for (int i = 0; i < 2; i++) {
    int c = callers[i];
    double cpu[2], bcpu, rcpu;
    bare_run(bare_addr, c, g_payload, 0.3, &st);
    cpu[0] = -proc_cpu_us(0), cpu[1] = -proc_cpu_us(b.pid);
    bare_run(bare_addr, c, g_payload, g_seconds, &st);
    cpu[0] += proc_cpu_us(0), cpu[1] += proc_cpu_us(b.pid);
    double bo = report("bare_grpc_ping", c, &st, cpu, &bcpu);
    run_rpc(a, ids, nids, c, 0.3, &st);
    cpu[0] = -proc_cpu_us(0), cpu[1] = -proc_cpu_us(b.pid);
    run_rpc(a, ids, nids, c, g_seconds, &st);
    cpu[0] += proc_cpu_us(0), cpu[1] += proc_cpu_us(b.pid);
    double ro = report("remote_rpc", c, &st, cpu, &rcpu);
    double ratio = bo > 0 ? ro / bo : 0, cpu_ratio = rcpu > 0 ? bcpu / rcpu : 0;
    loadavg(la, sizeof la);
    if (c == 64) {
      bare64 = bo, rpc64 = ro;
      printf("{\"bench\":\"cluster_rpc_vs_bare\",\"callers\":64,\"ratio\":%.3f,\"cpu_bound_ratio\":%.3f,"
             "\"target\":0.8,\"meets_target\":%s,\"loadavg\":%s}\n",
             ratio, cpu_ratio, ratio >= 0.8 ? "true" : "false", la);
    } else {
      printf("{\"bench\":\"cluster_rpc_vs_bare\",\"callers\":%d,\"ratio\":%.3f,\"cpu_bound_ratio\":%.3f,"
             "\"loadavg\":%s}\n", c, ratio, cpu_ratio, la);
    }
    fflush(stdout);
  }
  (void)bare64, (void)rpc64;
  /* the ids must still be B's, or the figures were not remote calls */
  int still = 0;
  for (int i = 0; i < nids; i++)
    if (ask_who(a, ids[i], who, sizeof who) == 0 && strcmp(who, b.addr) == 0) still++;
  if (still != nids) {
    printf("{\"bench\":\"cluster_rpc_check\",\"remote_ids\":%d,\"still_on_b\":%d}\n", nids, still);
    fflush(stdout);
  }
  free(st.lat);
  for (int i = 0; i < nids; i++) free(ids[i]);
  free(ids);
  cruster_runtime_stop(a, NULL);
  cruster_runtime_free(a);
  child_close(&b);
}

/* ---- part 2: handover ---------------------------------------------------------------- */

static void part_handover(int run) {
  char prefix[128], la[64], line[256];
  snprintf(prefix, sizeof prefix, "/cruster-bench-cluster-%ld-%d/", (long)getpid(), run);
  child cs[4];
  memset(cs, 0, sizeof cs);
  for (int i = 0; i < 3; i++) child_start(&cs[i], prefix, 0);
  for (int i = 0; i < 3; i++) {
    child_line(&cs[i], line, sizeof line);
    if (strncmp(line, "ready", 5) != 0) die("a runner did not start", NULL);
  }
  int64_t settle_ms = wait_settled(cs, 3, NULL);
  int per[8];
  owned_sum(cs, 3, NULL, per);
  int before = per[0];

  /* graceful stop of runner 0 */
  int64_t t0 = (int64_t)bench_mono_ns();
  child_send(&cs[0], "stop\n");
  double secs = wait_all_owned(&cs[1], 2, t0);
  child_line(&cs[0], line, sizeof line);
  long stop_ms = -1;
  sscanf(line, "stopped %ld", &stop_ms);
  child_close(&cs[0]);
  loadavg(la, sizeof la);
  printf("{\"bench\":\"cluster_handover\",\"mode\":\"graceful_stop\",\"runners\":3,\"shards\":%d,"
         "\"shards_moved\":%d,\"settled_ms\":%lld,\"seconds\":%.3f,\"stop_call_s\":%.3f,\"target_s\":2,"
         "\"meets_target\":%s,\"config\":\"%s\",\"loadavg\":%s}\n",
         g_shards, before, (long long)settle_ms, secs, stop_ms / 1e3, secs <= 2.0 ? "true" : "false",
         g_config, la);
  fflush(stdout);

  /* a third runner again, then SIGKILL of runner 1 */
  child_start(&cs[3], prefix, 0);
  child_line(&cs[3], line, sizeof line);
  if (strncmp(line, "ready", 5) != 0) die("a runner did not start", NULL);
  settle_ms = wait_settled(&cs[1], 3, NULL);
  owned_sum(&cs[1], 3, NULL, per);
  before = per[0];
  t0 = (int64_t)bench_mono_ns();
  kill(cs[1].pid, SIGKILL);
  child c1 = cs[1];
  cs[1].alive = 0; /* no more polls of it */
  secs = wait_all_owned(&cs[2], 2, t0);
  cs[1] = c1;
  child_kill(&cs[1]);
  loadavg(la, sizeof la);
  double target = g_ttl_ms / 1e3 + 2.0;
  printf("{\"bench\":\"cluster_handover\",\"mode\":\"sigkill\",\"runners\":3,\"shards\":%d,"
         "\"shards_moved\":%d,\"settled_ms\":%lld,\"seconds\":%.3f,\"lease_ttl_s\":%.1f,\"target_s\":%.1f,"
         "\"meets_target\":%s,\"config\":\"%s\",\"loadavg\":%s}\n",
         g_shards, before, (long long)settle_ms, secs, g_ttl_ms / 1e3, target,
         secs <= target ? "true" : "false", g_config, la);
  fflush(stdout);
  for (int i = 0; i < 4; i++) child_close(&cs[i]);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--runner") == 0) return runner_main(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  g_etcd = getenv("CRUSTER_TEST_ETCD");
  if (!g_etcd || !*g_etcd) {
    fprintf(stderr, "bench_cluster: set CRUSTER_TEST_ETCD (e.g. eval \"$(scripts/dev services env)\")\n");
    return 2;
  }
  ssize_t k = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
  if (k <= 0) die("readlink /proc/self/exe", NULL);
  g_self[k] = 0;
  const char *s;
  if ((s = getenv("BENCH_SECONDS")) && atof(s) > 0) g_seconds = atof(s);
  if ((s = getenv("BENCH_PAYLOAD")) && atol(s) > 0 && atol(s) < 65536) g_payload = (size_t)atol(s);
  if ((s = getenv("BENCH_SHARDS")) && atoi(s) > 0 && atoi(s) <= 4096) g_shards = atoi(s);
  if ((s = getenv("BENCH_LEASE_TTL_MS")) && atoll(s) >= 1000) g_ttl_ms = atoll(s) / 1000 * 1000;
  const char *extra = getenv("BENCH_CLUSTER_CONFIG");
  snprintf(g_config, sizeof g_config,
           "shards_per_group=%d;shard_rebalance_retry_interval=500ms;runner_lock_refresh_interval=1s%s%s",
           g_shards, extra && *extra ? ";" : "", extra && *extra ? extra : "");
  const char *only = getenv("BENCH_ONLY");
  char la[64];
  loadavg(la, sizeof la);
  printf("{\"bench\":\"cluster_start\",\"etcd\":\"%s\",\"lease_ttl_ms\":%lld,\"config\":\"%s\",\"loadavg\":%s}\n",
         g_etcd, (long long)g_ttl_ms, g_config, la);
  fflush(stdout);
  grpc_init();
  if (!only || strstr(only, "rpc")) part_rpc(1);
  if (!only || strstr(only, "handover")) part_handover(2);
  grpc_shutdown();
  return 0;
}
