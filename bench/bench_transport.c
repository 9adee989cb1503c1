/* bench_transport: the runner-to-runner transport against a bare gRPC C-core
 * unary ping, two processes over loopback, in one run (bench/README.md).
 *
 * The program re-executes itself with --serve as the server process, which
 * runs (a) a bare generic gRPC server answering every call at once from its
 * completion-queue thread and (b) a tp_transport whose host answers every
 * Send with its payload on the loop thread. The client then measures, for 1
 * and 64 calls in flight: bare unary pings (one thread driving a `next`
 * completion queue) and tp_call_send of a small non-persisted payload (the
 * exit callback issues the next call on the loop). JSON lines; exits 0
 * whatever the numbers. */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bare_grpc.h"
#include "core/metrics_internal.h"
#include "core/util.h"
#include "loop/loop.h"
#include "transport/transport.h"

#define MAX_CALLS BENCH_MAX_CALLS

static double bench_seconds(void) {
  const char *s = getenv("BENCH_SECONDS");
  double v = s ? atof(s) : 3.0;
  return v > 0 ? v : 3.0;
}
static size_t payload_len(void) {
  const char *s = getenv("BENCH_PAYLOAD");
  long v = s ? atol(s) : 16;
  return v > 0 && v < 65536 ? (size_t)v : 16;
}

typedef bench_stats stats;

static double report(const char *mode, int callers, stats *s) {
  double secs = (double)(s->t1 - s->t0) / 1e9, ops, p50, p99;
  bench_summary(s, &ops, &p50, &p99);
  printf("{\"bench\":\"transport\",\"mode\":\"%s\",\"callers\":%d,\"calls\":%zu,\"seconds\":%.2f,"
         "\"ops_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f}\n",
         mode, callers, s->n, secs, ops, p50, p99);
  fflush(stdout);
  return ops;
}

/* ---- our server (server process) ------------------------------------------- */

static void echo_send(void *ud, core_env *env, const tp_meta *meta, tp_reply *r) {
  (void)ud;
  (void)meta;
  tp_reply_exit(r, CRUSTER_OK, env->payload, env->len, NULL);
  free(env);
}
static void echo_notify(void *ud, core_env *env, const tp_meta *meta, tp_reply *r) {
  (void)ud;
  (void)meta;
  free(env);
  tp_reply_exit(r, CRUSTER_OK, NULL, 0, NULL);
}
static void echo_interrupt(void *ud, const char *type, const char *id, const char *group,
                           int32_t shard, tp_reply *r) {
  (void)ud, (void)type, (void)id, (void)group, (void)shard;
  tp_reply_exit(r, CRUSTER_OK, NULL, 0, NULL);
}

typedef struct node {
  rt_loop loop;
  cruster_metrics *metrics;
  tp_transport *t;
  int port;
  int server;
} node;

typedef struct on_loop_arg {
  void (*fn)(void *);
  void *arg;
} on_loop_arg;
static void on_loop_cmd(void *ud, rt_cmd *cmd) {
  on_loop_arg *a = ud;
  a->fn(a->arg);
  rt_sync_done((rt_sync *)cmd, 0);
}
static void on_loop(node *n, void (*fn)(void *), void *arg) {
  rt_sync s;
  memset(&s, 0, sizeof s);
  on_loop_arg a = {fn, arg};
  rt_run_sync(&n->loop, &s, on_loop_cmd, &a, NULL);
}

static void start_on_loop(void *p) {
  node *n = p;
  tp_opts o;
  memset(&o, 0, sizeof o);
  o.listen_address = n->server ? "127.0.0.1:0" : NULL;
  o.max_message_size = 4 << 20;
  o.connect_timeout_ms = 5000;
  static tp_host h = {NULL, echo_send, echo_notify, echo_interrupt, NULL, NULL};
  cruster_error *err = NULL;
  static const core_logger quiet = {NULL, NULL, CRUSTER_LOG_WARN};
  if (tp_new(&n->loop, &o, &quiet, n->metrics, n->server ? &h : NULL, &n->t, &err) != 0 ||
      tp_start(n->t, &n->port, &err) != 0) {
    fprintf(stderr, "bench_transport: %s\n", cruster_error_message(err));
    exit(1);
  }
}
static void stop_on_loop(void *p) { tp_stop(((node *)p)->t); }

static void node_start(node *n, int server) {
  memset(n, 0, sizeof *n);
  n->server = server;
  n->metrics = core_metrics_new();
  static const core_logger quiet = {NULL, NULL, CRUSTER_LOG_WARN};
  if (rt_loop_init(&n->loop, 1, 2, &quiet, n->metrics, NULL) != 0 || rt_loop_run(&n->loop, NULL) != 0)
    exit(1);
  on_loop(n, start_on_loop, n);
}
static void node_free(node *n) {
  on_loop(n, stop_on_loop, n);
  rt_loop_shutdown(&n->loop);
  tp_free(n->t);
  rt_loop_done(&n->loop);
  core_metrics_free(n->metrics);
}

static int serve_main(void) {
  grpc_init();
  int bare_port = bare_server_start();
  node n;
  node_start(&n, 1);
  printf("%d %d\n", bare_port, n.port);
  fflush(stdout);
  char c;
  while (read(0, &c, 1) > 0) {
  }
  node_free(&n);
  bare_server_stop();
  grpc_shutdown();
  return 0;
}

/* ---- our client ---------------------------------------------------------------- */

typedef struct drive {
  node *n;
  const char *addr;
  core_env *env;
  int callers, live, failed;
  uint64_t until;
  stats *st;
  uv_mutex_t mu;
  uv_cond_t cv;
  int finished;
} drive;

typedef struct slot {
  drive *d;
  uint64_t start;
} slot;

static void issue(slot *s);

static void on_exit_cb(void *ud, int status, const void *data, size_t len, const char *msg) {
  slot *s = ud;
  drive *d = s->d;
  (void)data;
  (void)len;
  uint64_t now = core_mono_ns();
  if (status != CRUSTER_OK) {
    if (!d->failed) fprintf(stderr, "bench_transport: call failed: %d %s\n", status, msg);
    d->failed++;
  }
  if (d->st->n < MAX_CALLS) d->st->lat[d->st->n++] = now - s->start;
  if (now < d->until && !d->failed) {
    issue(s);
    return;
  }
  if (--d->live == 0) {
    d->st->t1 = now;
    uv_mutex_lock(&d->mu);
    d->finished = 1;
    uv_cond_signal(&d->cv);
    uv_mutex_unlock(&d->mu);
  }
}

static void issue(slot *s) {
  s->start = core_mono_ns();
  tp_call_send(s->d->n->t, s->d->addr, s->d->env, NULL, 30000, NULL, on_exit_cb, s, NULL);
}

static void drive_start(void *p) {
  drive *d = p;
  slot *slots = (slot *)(d + 1);
  d->st->t0 = core_mono_ns();
  d->live = d->callers;
  for (int i = 0; i < d->callers; i++) {
    slots[i].d = d;
    issue(&slots[i]);
  }
}

static void run_ours(node *n, const char *addr, int callers, stats *st, int warm) {
  drive *d = calloc(1, sizeof(drive) + (size_t)callers * sizeof(slot));
  size_t len = payload_len();
  char *payload = calloc(1, len);
  d->env = core_env_new("Echo", "e-1", "echo", payload, len);
  strcpy(d->env->group, "default");
  d->env->is_request = 1;
  d->n = n;
  d->addr = addr;
  d->callers = callers;
  d->st = st;
  st->n = 0;
  d->until = core_mono_ns() + (uint64_t)((warm ? 0.3 : bench_seconds()) * 1e9);
  uv_mutex_init(&d->mu);
  uv_cond_init(&d->cv);
  on_loop(n, drive_start, d);
  uv_mutex_lock(&d->mu);
  while (!d->finished) uv_cond_wait(&d->cv, &d->mu);
  uv_mutex_unlock(&d->mu);
  if (d->failed) exit(1);
  uv_mutex_destroy(&d->mu);
  uv_cond_destroy(&d->cv);
  free(d->env);
  free(payload);
  free(d);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--serve") == 0) return serve_main();
  char self[4096];
  ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
  if (k <= 0) return 1;
  self[k] = 0;
  int in[2], out[2];
  if (pipe(in) || pipe(out)) return 1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[1]);
    close(out[0]);
    execl(self, self, "--serve", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  FILE *f = fdopen(out[0], "r");
  int bare_port = 0, our_port = 0;
  if (!f || fscanf(f, "%d %d", &bare_port, &our_port) != 2) {
    fprintf(stderr, "bench_transport: the server process did not start\n");
    return 1;
  }
  char bare_addr[64], our_addr[64];
  snprintf(bare_addr, sizeof bare_addr, "127.0.0.1:%d", bare_port);
  snprintf(our_addr, sizeof our_addr, "127.0.0.1:%d", our_port);

  grpc_init();
  node cl;
  node_start(&cl, 0);
  stats st;
  st.lat = malloc(sizeof(uint64_t) * MAX_CALLS);
  double bare64 = 0, ours64 = 0;
  const int callers[] = {1, 64};
  for (int i = 0; i < 2; i++) {
    int c = callers[i];
    bare_run(bare_addr, c, payload_len(), 0.3, &st);
    bare_run(bare_addr, c, payload_len(), bench_seconds(), &st);
    double b = report("bare_grpc_ping", c, &st);
    run_ours(&cl, our_addr, c, &st, 1);
    run_ours(&cl, our_addr, c, &st, 0);
    double o = report("tp_call_send", c, &st);
    printf("{\"bench\":\"transport_vs_bare\",\"callers\":%d,\"ratio\":%.3f}\n", c, b > 0 ? o / b : 0);
    if (c == 64) bare64 = b, ours64 = o;
  }
  double ratio = bare64 > 0 ? ours64 / bare64 : 0;
  printf("{\"bench\":\"transport_vs_bare\",\"callers\":64,\"ratio\":%.3f,\"target\":0.8,"
         "\"meets_target\":%s,\"informational\":true}\n",
         ratio, ratio >= 0.8 ? "true" : "false");
  fflush(stdout);
  free(st.lat);
  node_free(&cl);
  grpc_shutdown();
  close(in[1]);
  int status;
  waitpid(pid, &status, 0);
  return 0;
}
