/* The runner-to-runner transport (src/transport): two transports in one
 * process (each on its own loop), one in a child process (this program
 * re-executed with --serve), malformed input, limits, deadlines, cancel,
 * stop with calls in flight, and mTLS with certificates made by the openssl
 * CLI at test time. No timing decides a result: waits are for events, with
 * a generous bound that only catches hangs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/error.h"
#include "core/metrics_internal.h"
#include "core/util.h"
#include "loop/loop.h"
#include "transport/transport.h"
#include "transport/wire.h"
#include "cruster.pb-c.h"

#define WAIT_MS 60000 /* only catches hangs */
#define MAX_MSG (256 * 1024)

/* ---- a node: a loop, a transport and a host ------------------------------- */

typedef struct held {
  tp_reply *r;
  int cancelled;
} held;

typedef struct node {
  rt_loop loop;
  cruster_metrics *metrics;
  tp_transport *t;
  int port;
  char addr[64];
  /* host state (loop thread; read by the test under mu after waits) */
  uv_mutex_t mu;
  uv_cond_t cv;
  held hold[64];
  int n_held;
  int n_hangs; /* "hang" calls received, ever */
  int n_cancelled;
  int n_notified;
  char last_notify[256];
  char last_interrupt[512];
  int exit_on_cancel; /* answer a held call when it is cancelled */
} node;

static void host_send(void *ud, core_env *env, const tp_meta *meta, tp_reply *r) {
  node *n = ud;
  if (strcmp(env->method, "echo") == 0) {
    tp_reply_exit(r, CRUSTER_OK, env->payload, env->len, NULL);
  } else if (strcmp(env->method, "stream") == 0) {
    int k = atoi(env->payload);
    for (int i = 0; i < k; i++) {
      char item[32];
      int len = snprintf(item, sizeof item, "item-%d", i);
      assert_int_equal(tp_reply_chunk(r, item, (size_t)len), CRUSTER_OK);
    }
    tp_reply_exit(r, CRUSTER_OK, NULL, 0, NULL);
  } else if (strcmp(env->method, "fail") == 0) {
    tp_reply_exit(r, CRUSTER_E_NOT_FOUND, NULL, 0, "no such thing here");
  } else if (strcmp(env->method, "appfail") == 0) {
    tp_reply_exit(r, CRUSTER_E_APPLICATION - 7, "partial", 7, "application says no");
  } else if (strcmp(env->method, "big") == 0) {
    size_t len = (size_t)MAX_MSG * 2;
    char *big = calloc(1, len);
    assert_non_null(big);
    tp_reply_exit(r, CRUSTER_OK, big, len, NULL);
    free(big);
  } else if (strcmp(env->method, "meta") == 0) {
    char text[2048];
    int len = snprintf(text, sizeof text,
                       "rid=%lld type=%s id=%s group=%s shard=%d persisted=%d req=%d internal=%d "
                       "keyed=%d at=%lld tp=%s hops=%d timeout=%lld stream=%d key=%.*s h=%zu",
                       (long long)env->request_id, env->type, env->id, env->group, (int)env->shard,
                       env->persisted, env->is_request, env->internal, env->keyed,
                       (long long)env->deliver_at, meta->traceparent ? meta->traceparent : "",
                       (int)meta->hops, (long long)meta->timeout_ms, meta->stream,
                       (int)meta->key_len, meta->key ? (const char *)meta->key : "",
                       meta->n_headers);
    for (size_t i = 0; i < meta->n_headers; i++)
      len += snprintf(text + len, sizeof text - (size_t)len, " %s:%s", meta->header_names[i],
                      meta->header_values[i]);
    tp_reply_exit(r, CRUSTER_OK, text, (size_t)len, NULL);
  } else if (strcmp(env->method, "hang") == 0) {
    uv_mutex_lock(&n->mu);
    assert_true(n->n_held < 64);
    n->hold[n->n_held].r = r;
    n->hold[n->n_held].cancelled = 0;
    n->n_held++;
    n->n_hangs++;
    uv_cond_broadcast(&n->cv);
    uv_mutex_unlock(&n->mu);
  } else {
    tp_reply_exit(r, CRUSTER_E_UNKNOWN_METHOD, NULL, 0, env->method);
  }
  free(env);
}

static void host_notify(void *ud, core_env *env, const tp_meta *meta, tp_reply *r) {
  node *n = ud;
  (void)meta;
  uv_mutex_lock(&n->mu);
  n->n_notified++;
  snprintf(n->last_notify, sizeof n->last_notify, "%s/%s.%s:%.*s", env->type, env->id,
           env->method, (int)env->len, (const char *)env->payload);
  uv_cond_broadcast(&n->cv);
  uv_mutex_unlock(&n->mu);
  if (strcmp(env->method, "refuse") == 0)
    tp_reply_exit(r, CRUSTER_E_MAILBOX_FULL, NULL, 0, "mailbox is full");
  else
    tp_reply_exit(r, CRUSTER_OK, NULL, 0, NULL);
  free(env);
}

static void host_interrupt(void *ud, const char *type, const char *id, const char *group,
                           int32_t shard, tp_reply *r) {
  node *n = ud;
  uv_mutex_lock(&n->mu);
  snprintf(n->last_interrupt, sizeof n->last_interrupt, "%s/%s@%s:%d", type, id, group,
           (int)shard);
  uv_cond_broadcast(&n->cv);
  uv_mutex_unlock(&n->mu);
  tp_reply_exit(r, CRUSTER_OK, NULL, 0, NULL);
}

static void host_cancelled(void *ud, tp_reply *r) {
  node *n = ud;
  uv_mutex_lock(&n->mu);
  n->n_cancelled++;
  int answer = n->exit_on_cancel;
  for (int i = 0; i < n->n_held; i++)
    if (n->hold[i].r == r) {
      n->hold[i].cancelled = 1;
      if (answer) {
        n->hold[i] = n->hold[n->n_held - 1];
        n->n_held--;
      }
      break;
    }
  uv_cond_broadcast(&n->cv);
  uv_mutex_unlock(&n->mu);
  /* The exit is still required after a cancellation; its data is dropped. */
  if (answer) tp_reply_exit(r, CRUSTER_E_CANCELLED, NULL, 0, "gone");
}

/* Runs fn(arg) on n's loop and waits for it. */
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
  assert_int_equal(rt_run_sync(&n->loop, &s, on_loop_cmd, &a, NULL), 0);
}

typedef struct start_arg {
  node *n;
  tp_opts opts;
  int with_host;
  int rc;
  char msg[512];
} start_arg;

static const tp_host *host_of(node *n) {
  static __thread tp_host h;
  h.ud = n;
  h.on_send = host_send;
  h.on_notify = host_notify;
  h.on_interrupt = host_interrupt;
  h.on_cancelled = host_cancelled;
  return &h;
}

static void start_on_loop(void *p) {
  start_arg *a = p;
  cruster_error *err = NULL;
  tp_host h = *host_of(a->n);
  a->rc = tp_new(&a->n->loop, &a->opts, NULL, a->n->metrics, a->with_host ? &h : NULL, &a->n->t,
                 &err);
  if (a->rc == CRUSTER_OK) a->rc = tp_start(a->n->t, &a->n->port, &err);
  snprintf(a->msg, sizeof a->msg, "%s", err ? cruster_error_message(err) : "");
  cruster_error_free(err);
}

static tp_opts plain_opts(const char *listen) {
  tp_opts o;
  memset(&o, 0, sizeof o);
  o.listen_address = listen;
  o.max_message_size = MAX_MSG;
  o.connect_timeout_ms = 5000;
  return o;
}

/* Starts a node; returns the transport's status (the message in msg). */
static int node_start_opts(node *n, const tp_opts *opts, char *msg, size_t msgsz) {
  memset(n, 0, sizeof *n);
  uv_mutex_init(&n->mu);
  uv_cond_init(&n->cv);
  n->exit_on_cancel = 1;
  n->metrics = core_metrics_new();
  assert_non_null(n->metrics);
  assert_int_equal(rt_loop_init(&n->loop, 1, 2, NULL, n->metrics, NULL), 0);
  assert_int_equal(rt_loop_run(&n->loop, NULL), 0);
  start_arg a;
  memset(&a, 0, sizeof a);
  a.n = n;
  a.opts = *opts;
  a.with_host = opts->listen_address != NULL;
  on_loop(n, start_on_loop, &a);
  snprintf(n->addr, sizeof n->addr, "127.0.0.1:%d", n->port);
  if (msg) snprintf(msg, msgsz, "%s", a.msg);
  return a.rc;
}

static void node_start(node *n, int server) {
  tp_opts o = plain_opts(server ? "127.0.0.1:0" : NULL);
  char msg[512];
  int rc = node_start_opts(n, &o, msg, sizeof msg);
  if (rc != 0) fail_msg("transport did not start: %s", msg);
}

static void stop_on_loop(void *p) { tp_stop(((node *)p)->t); }
static void node_stop(node *n) {
  if (n->t) on_loop(n, stop_on_loop, n);
}
static void node_free(node *n) {
  node_stop(n);
  rt_loop_shutdown(&n->loop);
  tp_free(n->t);
  n->t = NULL;
  rt_loop_done(&n->loop);
  core_metrics_free(n->metrics);
  uv_mutex_destroy(&n->mu);
  uv_cond_destroy(&n->cv);
}

/* ---- results of calls ------------------------------------------------------ */

typedef struct result {
  uv_mutex_t mu;
  uv_cond_t cv;
  int exits; /* must end at 1 */
  int status;
  char data[4096];
  size_t len;
  char msg[1024];
  int chunks;
  int in_order;
  char first_chunk[64], last_chunk[64];
  tp_call *call;
} result;

static void result_init(result *r) {
  memset(r, 0, sizeof *r);
  uv_mutex_init(&r->mu);
  uv_cond_init(&r->cv);
  r->in_order = 1;
}
static void result_done(result *r) {
  uv_mutex_destroy(&r->mu);
  uv_cond_destroy(&r->cv);
}

static void on_chunk(void *ud, int32_t seq, const void *data, size_t len) {
  result *r = ud;
  uv_mutex_lock(&r->mu);
  if (seq != r->chunks) r->in_order = 0;
  char expect[32];
  snprintf(expect, sizeof expect, "item-%d", (int)seq);
  if (len != strlen(expect) || memcmp(data, expect, len) != 0) r->in_order = 0;
  if (r->chunks == 0) snprintf(r->first_chunk, sizeof r->first_chunk, "%.*s", (int)len, (const char *)data);
  snprintf(r->last_chunk, sizeof r->last_chunk, "%.*s", (int)len, (const char *)data);
  r->chunks++;
  uv_mutex_unlock(&r->mu);
}

static void on_exit_cb(void *ud, int status, const void *data, size_t len, const char *msg) {
  result *r = ud;
  uv_mutex_lock(&r->mu);
  r->exits++;
  r->status = status;
  r->len = len < sizeof r->data ? len : sizeof r->data - 1;
  if (len) memcpy(r->data, data, r->len);
  r->data[r->len] = 0;
  snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "(null)");
  uv_cond_broadcast(&r->cv);
  uv_mutex_unlock(&r->mu);
}

static void on_ping_cb(void *ud, int status) { on_exit_cb(ud, status, NULL, 0, ""); }

static void wait_exit(result *r) {
  uint64_t until = core_mono_ns() + (uint64_t)WAIT_MS * 1000000u;
  uv_mutex_lock(&r->mu);
  while (r->exits == 0) {
    uint64_t now = core_mono_ns();
    if (now >= until) break;
    (void)uv_cond_timedwait(&r->cv, &r->mu, until - now);
  }
  int exits = r->exits;
  uv_mutex_unlock(&r->mu);
  if (exits == 0) fail_msg("no exit within %d ms", WAIT_MS);
}

/* Waits until pred(n) holds (under n->mu). */
static void wait_node(node *n, int (*pred)(node *, int), int arg) {
  uint64_t until = core_mono_ns() + (uint64_t)WAIT_MS * 1000000u;
  uv_mutex_lock(&n->mu);
  while (!pred(n, arg)) {
    uint64_t now = core_mono_ns();
    if (now >= until) break;
    (void)uv_cond_timedwait(&n->cv, &n->mu, until - now);
  }
  int ok = pred(n, arg);
  uv_mutex_unlock(&n->mu);
  if (!ok) fail_msg("condition not reached within %d ms", WAIT_MS);
}
static int held_at_least(node *n, int k) { return n->n_hangs >= k; }
static int cancelled_at_least(node *n, int k) { return n->n_cancelled >= k; }

/* A call made on the loop of `from`. */
typedef struct call_arg {
  node *from;
  const char *addr;
  int kind; /* 0 send, 1 notify, 2 interrupt, 3 ping, 4 raw */
  core_env *env;
  tp_meta meta;
  int has_meta;
  int64_t timeout_ms;
  result *res;
  const char *path;
  const void *raw;
  size_t raw_len;
} call_arg;

static void call_on_loop(void *p) {
  call_arg *a = p;
  tp_transport *t = a->from->t;
  int64_t to = a->timeout_ms ? a->timeout_ms : 30000;
  switch (a->kind) {
    case 0:
      tp_call_send(t, a->addr, a->env, a->has_meta ? &a->meta : NULL, to, on_chunk, on_exit_cb,
                   a->res, &a->res->call);
      break;
    case 1:
      tp_call_notify(t, a->addr, a->env, a->has_meta ? &a->meta : NULL, to, on_exit_cb, a->res,
                     &a->res->call);
      break;
    case 2:
      tp_call_interrupt(t, a->addr, "Counter", "c-1", "default", 17, to, on_exit_cb, a->res,
                        &a->res->call);
      break;
    case 3: tp_ping(t, a->addr, to, on_ping_cb, a->res); break;
    case 4: tp_call_raw(t, a->addr, a->path, a->raw, a->raw_len, to, on_exit_cb, a->res); break;
  }
}

static core_env *mkenv(const char *method, const char *payload) {
  core_env *e = core_env_new("Counter", "c-1", method, payload, strlen(payload));
  assert_non_null(e);
  e->request_id = 42;
  e->shard = 7;
  e->is_request = 1;
  strcpy(e->group, "default");
  return e;
}

/* Sends method(payload) from `from` to addr and waits for the exit. */
static void do_send(node *from, const char *addr, const char *method, const char *payload,
                    int64_t timeout_ms, result *res) {
  result_init(res);
  core_env *e = mkenv(method, payload);
  call_arg a = {.from = from, .addr = addr, .kind = 0, .env = e, .timeout_ms = timeout_ms, .res = res};
  on_loop(from, call_on_loop, &a);
  wait_exit(res);
  free(e);
}

static void do_kind(node *from, const char *addr, int kind, core_env *e, result *res) {
  result_init(res);
  call_arg a = {.from = from, .addr = addr, .kind = kind, .env = e, .res = res};
  on_loop(from, call_on_loop, &a);
  wait_exit(res);
}

static double metric(node *n, const char *name, const char *labels) {
  core_metric *m = core_metrics_get(n->metrics, strstr(name, "in_flight") ? CORE_GAUGE : CORE_COUNTER,
                                    name, "", labels);
  return m ? core_metric_get(m) : -1;
}

/* The checks every pair of client and server runs (in-process and child). */
static void basic_calls(node *cl, const char *addr) {
  result r;
  do_kind(cl, addr, 3, NULL, &r);
  assert_int_equal(r.status, CRUSTER_OK);
  result_done(&r);

  do_send(cl, addr, "echo", "hello", 0, &r);
  assert_int_equal(r.exits, 1);
  assert_int_equal(r.status, CRUSTER_OK);
  assert_string_equal(r.data, "hello");
  assert_int_equal(r.chunks, 0);
  result_done(&r);

  /* A streamed send: N chunks in order, then the exit. */
  result_init(&r);
  core_env *e = mkenv("stream", "100");
  call_arg a = {.from = cl, .addr = addr, .kind = 0, .env = e, .has_meta = 1, .res = &r};
  a.meta.stream = 1;
  on_loop(cl, call_on_loop, &a);
  wait_exit(&r);
  free(e);
  assert_int_equal(r.status, CRUSTER_OK);
  assert_int_equal(r.chunks, 100);
  assert_true(r.in_order);
  assert_string_equal(r.first_chunk, "item-0");
  assert_string_equal(r.last_chunk, "item-99");
  assert_int_equal(r.len, 0);
  result_done(&r);

  /* Errors keep their code and message; application codes too. */
  do_send(cl, addr, "fail", "", 0, &r);
  assert_int_equal(r.status, CRUSTER_E_NOT_FOUND);
  assert_string_equal(r.msg, "no such thing here");
  result_done(&r);
  do_send(cl, addr, "appfail", "", 0, &r);
  assert_int_equal(r.status, CRUSTER_E_APPLICATION - 7);
  assert_string_equal(r.msg, "application says no");
  assert_string_equal(r.data, "partial");
  result_done(&r);

  /* Every field of the envelope and its meta travels. */
  result_init(&r);
  e = mkenv("meta", "");
  e->persisted = 1;
  e->internal = 1;
  e->keyed = 1;
  e->deliver_at = 1234567;
  const char *hn[] = {"x-a", "x-b"}, *hv[] = {"1", "two"};
  call_arg m = {.from = cl, .addr = addr, .kind = 0, .env = e, .has_meta = 1, .res = &r};
  m.meta.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  m.meta.hops = 2;
  m.meta.timeout_ms = 900;
  m.meta.key = "k-1";
  m.meta.key_len = 3;
  m.meta.n_headers = 2;
  m.meta.header_names = hn;
  m.meta.header_values = hv;
  on_loop(cl, call_on_loop, &m);
  wait_exit(&r);
  free(e);
  assert_int_equal(r.status, CRUSTER_OK);
  assert_non_null(strstr(r.data, "rid=42 type=Counter id=c-1 group=default shard=7 persisted=1 "
                                 "req=1 internal=1 keyed=1 at=1234567 "
                                 "tp=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 "
                                 "hops=2 timeout=900 stream=0 key=k-1 h=2"));
  assert_non_null(strstr(r.data, "x-a:1"));
  assert_non_null(strstr(r.data, "x-b:two"));
  result_done(&r);

  /* Notify: accepted, or refused with the host's code. */
  e = mkenv("inc", "5");
  do_kind(cl, addr, 1, e, &r);
  free(e);
  assert_int_equal(r.status, CRUSTER_OK);
  result_done(&r);
  e = mkenv("refuse", "");
  do_kind(cl, addr, 1, e, &r);
  free(e);
  assert_int_equal(r.status, CRUSTER_E_MAILBOX_FULL);
  assert_string_equal(r.msg, "mailbox is full");
  result_done(&r);

  do_kind(cl, addr, 2, NULL, &r);
  assert_int_equal(r.status, CRUSTER_OK);
  result_done(&r);
}

/* ---- tests --------------------------------------------------------------- */

static void test_two_in_process(void **state) {
  (void)state;
  node srv, cl;
  node_start(&srv, 1);
  node_start(&cl, 0);
  basic_calls(&cl, srv.addr);
  uv_mutex_lock(&srv.mu);
  assert_int_equal(srv.n_notified, 2);
  assert_string_equal(srv.last_notify, "Counter/c-1.refuse:");
  assert_string_equal(srv.last_interrupt, "Counter/c-1@default:17");
  uv_mutex_unlock(&srv.mu);
  assert_true(metric(&cl, "cluster_transport_calls_total",
                     "method=\"send\",side=\"client\",outcome=\"ok\"") >= 3);
  assert_true(metric(&srv, "cluster_transport_calls_total",
                     "method=\"send\",side=\"server\",outcome=\"ok\"") >= 3);
  node_free(&cl);
  node_free(&srv);
}

static void cancel_on_loop(void *c) { tp_call_cancel(c); }
static void answer_held_on_loop(void *p) {
  node *n = p;
  for (int i = 0; i < n->n_held; i++) tp_reply_exit(n->hold[i].r, CRUSTER_OK, NULL, 0, NULL);
  n->n_held = 0;
}

static void test_deadline_and_cancel(void **state) {
  (void)state;
  node srv, cl;
  node_start(&srv, 1);
  node_start(&cl, 0);
  /* Deadline: the handler never answers. */
  result r;
  do_send(&cl, srv.addr, "hang", "", 300, &r);
  assert_int_equal(r.status, CRUSTER_E_TIMEOUT);
  assert_int_equal(r.exits, 1);
  result_done(&r);
  wait_node(&srv, cancelled_at_least, 1); /* the server saw the caller go */

  /* Cancel: the exit fires once with CRUSTER_E_CANCELLED. */
  result_init(&r);
  core_env *e = mkenv("hang", "");
  call_arg a = {.from = &cl, .addr = srv.addr, .kind = 0, .env = e, .res = &r};
  on_loop(&cl, call_on_loop, &a);
  free(e);
  wait_node(&srv, held_at_least, 2);
  on_loop(&cl, cancel_on_loop, r.call);
  wait_exit(&r);
  assert_int_equal(r.status, CRUSTER_E_CANCELLED);
  wait_node(&srv, cancelled_at_least, 2);
  /* A late cancel of a finished call is never made (the handle is gone):
   * the count of exits stays 1. */
  assert_int_equal(r.exits, 1);
  result_done(&r);
  assert_int_equal(tp_calls_in_flight(cl.t), 0);
  node_free(&cl);
  node_free(&srv);
}

static int free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  getsockname(s, (struct sockaddr *)&a, &len);
  close(s);
  return ntohs(a.sin_port);
}

static void test_peer_down_and_limits(void **state) {
  (void)state;
  node srv, cl;
  node_start(&srv, 1);
  node_start(&cl, 0);
  char down[64];
  snprintf(down, sizeof down, "127.0.0.1:%d", free_port());
  result r;
  do_send(&cl, down, "echo", "x", 0, &r);
  assert_int_equal(r.status, CRUSTER_E_RUNNER_UNAVAILABLE);
  assert_non_null(strstr(r.msg, "gRPC"));
  result_done(&r);
  do_kind(&cl, down, 3, NULL, &r);
  assert_int_equal(r.status, CRUSTER_E_RUNNER_UNAVAILABLE);
  result_done(&r);
  do_send(&cl, "not an address", "echo", "x", 0, &r);
  assert_int_equal(r.status, CRUSTER_E_INVALID_ARGUMENT);
  result_done(&r);

  /* A payload over the limit is refused before it is sent. */
  size_t len = MAX_MSG + 1;
  char *big = malloc(len + 1);
  memset(big, 'a', len);
  big[len] = 0;
  do_send(&cl, srv.addr, "echo", big, 0, &r);
  assert_int_equal(r.status, CRUSTER_E_PAYLOAD_TOO_LARGE);
  assert_non_null(strstr(r.msg, "limit"));
  result_done(&r);
  free(big);
  /* A reply over the server's limit: the caller gets a clear error. */
  do_send(&cl, srv.addr, "big", "", 0, &r);
  assert_int_equal(r.status, CRUSTER_E_PAYLOAD_TOO_LARGE);
  result_done(&r);
  /* A server with a smaller limit than its client: gRPC refuses the message. */
  node small;
  tp_opts o = plain_opts("127.0.0.1:0");
  o.max_message_size = 1024;
  assert_int_equal(node_start_opts(&small, &o, NULL, 0), 0);
  char mid[4096];
  memset(mid, 'b', sizeof mid - 1);
  mid[sizeof mid - 1] = 0;
  do_send(&cl, small.addr, "echo", mid, 0, &r);
  assert_int_equal(r.status, CRUSTER_E_PAYLOAD_TOO_LARGE);
  result_done(&r);
  do_send(&cl, small.addr, "echo", "fits", 0, &r);
  assert_int_equal(r.status, CRUSTER_OK);
  result_done(&r);
  node_free(&small);
  node_free(&cl);
  node_free(&srv);
}

static void test_stop_with_calls_in_flight(void **state) {
  (void)state;
  node srv, cl;
  node_start(&srv, 1);
  node_start(&cl, 0);
  srv.exit_on_cancel = 0; /* answer after the stop instead */
  enum { N = 8 };
  result r[N];
  core_env *e = mkenv("hang", "");
  for (int i = 0; i < N; i++) {
    result_init(&r[i]);
    call_arg a = {.from = &cl, .addr = srv.addr, .kind = 0, .env = e, .res = &r[i]};
    on_loop(&cl, call_on_loop, &a);
  }
  free(e);
  wait_node(&srv, held_at_least, N);
  /* Stopping the server: every held call is cancelled once. */
  node_stop(&srv);
  uv_mutex_lock(&srv.mu);
  assert_int_equal(srv.n_cancelled, N);
  assert_int_equal(srv.n_held, N);
  uv_mutex_unlock(&srv.mu);
  /* The host's exits after the stop only free the replies. */
  on_loop(&srv, answer_held_on_loop, &srv);
  for (int i = 0; i < N; i++) {
    wait_exit(&r[i]);
    assert_int_not_equal(r[i].status, CRUSTER_OK);
  }
  /* Stopping a client with calls in flight: each exit once, SHUTTING_DOWN. */
  node srv2;
  node_start(&srv2, 1);
  e = mkenv("hang", "");
  for (int i = 0; i < N; i++) {
    result_done(&r[i]);
    result_init(&r[i]);
    call_arg a = {.from = &cl, .addr = srv2.addr, .kind = 0, .env = e, .res = &r[i]};
    on_loop(&cl, call_on_loop, &a);
  }
  free(e);
  wait_node(&srv2, held_at_least, N);
  node_stop(&cl);
  for (int i = 0; i < N; i++) {
    assert_int_equal(r[i].exits, 1);
    assert_int_equal(r[i].status, CRUSTER_E_SHUTTING_DOWN);
    result_done(&r[i]);
  }
  wait_node(&srv2, cancelled_at_least, N);
  /* A call after the stop: refused, still through its exit. */
  result x;
  do_send(&cl, srv2.addr, "echo", "x", 0, &x);
  assert_int_equal(x.status, CRUSTER_E_SHUTTING_DOWN);
  result_done(&x);
  node_free(&srv2);
  node_free(&cl);
  node_free(&srv);
}

static void test_malformed(void **state) {
  (void)state;
  node srv, cl;
  node_start(&srv, 1);
  node_start(&cl, 0);
  result r;
  static const unsigned char garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x99, 0x01, 0x02};
  const char *paths[] = {"/cruster.v1.Runner/Send", "/cruster.v1.Runner/Notify",
                         "/cruster.v1.Runner/Interrupt"};
  for (int i = 0; i < 3; i++) {
    result_init(&r);
    call_arg a = {.from = &cl, .addr = srv.addr, .kind = 4, .path = paths[i], .raw = garbage,
                  .raw_len = sizeof garbage, .res = &r};
    on_loop(&cl, call_on_loop, &a);
    wait_exit(&r);
    assert_int_equal(r.status, CRUSTER_E_INVALID_ARGUMENT);
    result_done(&r);
  }
  /* Well-formed protobuf, bad fields: empty type, negative shard. */
  Cruster__V1__Envelope m = CRUSTER__V1__ENVELOPE__INIT;
  m.entity_type = "";
  m.entity_id = "x";
  m.method = "echo";
  m.shard_group = "default";
  uint8_t buf[256];
  size_t n = cruster__v1__envelope__pack(&m, buf);
  result_init(&r);
  call_arg a = {.from = &cl, .addr = srv.addr, .kind = 4, .path = paths[0], .raw = buf,
                .raw_len = n, .res = &r};
  on_loop(&cl, call_on_loop, &a);
  wait_exit(&r);
  assert_int_equal(r.status, CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(r.msg, "entity type"));
  result_done(&r);
  m.entity_type = "Counter";
  m.shard = -3;
  n = cruster__v1__envelope__pack(&m, buf);
  result_init(&r);
  a.raw_len = n;
  on_loop(&cl, call_on_loop, &a);
  wait_exit(&r);
  assert_int_equal(r.status, CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(r.msg, "shard"));
  result_done(&r);
  /* An unknown method. */
  result_init(&r);
  call_arg u = {.from = &cl, .addr = srv.addr, .kind = 4, .path = "/cruster.v1.Runner/Nope",
                .raw = "", .raw_len = 0, .res = &r};
  on_loop(&cl, call_on_loop, &u);
  wait_exit(&r);
  assert_int_equal(r.status, CRUSTER_E_RUNNER_UNAVAILABLE);
  assert_non_null(strstr(r.msg, "UNIMPLEMENTED"));
  result_done(&r);
  assert_true(metric(&srv, "cluster_transport_malformed_total", "method=\"send\"") >= 3);
  /* The server is alive after all that. */
  do_send(&cl, srv.addr, "echo", "still here", 0, &r);
  assert_int_equal(r.status, CRUSTER_OK);
  assert_string_equal(r.data, "still here");
  result_done(&r);
  node_free(&cl);
  node_free(&srv);
}

/* ---- a server in a child process ------------------------------------------- */

static char self_path[4096];

/* --serve: runs a server node, prints its port, stops when stdin closes. */
static int serve_main(void) {
  node srv;
  node_start(&srv, 1);
  printf("%d\n", srv.port);
  fflush(stdout);
  char c;
  while (read(0, &c, 1) > 0) {
  }
  node_free(&srv);
  return 0;
}

static void test_child_process(void **state) {
  (void)state;
  int in[2], out[2];
  assert_int_equal(pipe(in), 0);
  assert_int_equal(pipe(out), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[1]);
    close(out[0]);
    execl(self_path, self_path, "--serve", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  char line[32] = "";
  size_t got = 0;
  while (got < sizeof line - 1) {
    ssize_t k = read(out[0], line + got, 1);
    if (k <= 0 || line[got] == '\n') break;
    got++;
  }
  line[got] = 0;
  int port = atoi(line);
  assert_true(port > 0);
  node cl;
  node_start(&cl, 0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  basic_calls(&cl, addr);
  /* The child dies: calls to it fail as unavailable. */
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  close(in[1]);
  close(out[0]);
  result r;
  do_send(&cl, addr, "echo", "x", 0, &r);
  assert_int_equal(r.status, CRUSTER_E_RUNNER_UNAVAILABLE);
  result_done(&r);
  node_free(&cl);
}

/* ---- mTLS ---------------------------------------------------------------- */

static char tls_dir[256];

static int sh(const char *fmt, ...) {
  char cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  return system(cmd);
}

/* A CA and a certificate signed by it (SAN IP:127.0.0.1). */
static int make_ca(const char *ca) {
  return sh("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=%s "
            "-keyout %s.key -out %s.pem >/dev/null 2>&1",
            tls_dir, ca, ca, ca);
}
static int make_cert(const char *name, const char *ca) {
  return sh("cd %s && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > %s.ext && "
            "openssl req -newkey rsa:2048 -nodes -subj /CN=%s -keyout %s.key -out %s.csr "
            ">/dev/null 2>&1 && "
            "openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial -days 2 "
            "-extfile %s.ext -out %s.pem >/dev/null 2>&1",
            tls_dir, name, name, name, name, name, ca, ca, name, name);
}

static void test_mtls(void **state) {
  (void)state;
  if (sh("openssl version >/dev/null 2>&1") != 0) {
    skip();
  }
  snprintf(tls_dir, sizeof tls_dir, "/tmp/cruster-tls-XXXXXX");
  assert_non_null(mkdtemp(tls_dir));
  assert_int_equal(make_ca("ca"), 0);
  assert_int_equal(make_ca("otherca"), 0);
  assert_int_equal(make_cert("server", "ca"), 0);
  assert_int_equal(make_cert("client", "ca"), 0);
  assert_int_equal(make_cert("stranger", "otherca"), 0);
  char ca[300], scert[300], skey[300], ccert[300], ckey[300], xcert[300], xkey[300];
  snprintf(ca, sizeof ca, "%s/ca.pem", tls_dir);
  snprintf(scert, sizeof scert, "%s/server.pem", tls_dir);
  snprintf(skey, sizeof skey, "%s/server.key", tls_dir);
  snprintf(ccert, sizeof ccert, "%s/client.pem", tls_dir);
  snprintf(ckey, sizeof ckey, "%s/client.key", tls_dir);
  snprintf(xcert, sizeof xcert, "%s/stranger.pem", tls_dir);
  snprintf(xkey, sizeof xkey, "%s/stranger.key", tls_dir);

  node srv;
  tp_opts so = plain_opts("127.0.0.1:0");
  so.tls_ca = ca;
  so.tls_cert = scert;
  so.tls_key = skey;
  so.tls_require_client_cert = 1;
  char msg[512];
  if (node_start_opts(&srv, &so, msg, sizeof msg) != 0) fail_msg("TLS server: %s", msg);

  /* A client with a certificate from the CA: works. */
  node good;
  tp_opts co = plain_opts(NULL);
  co.tls_ca = ca;
  co.tls_cert = ccert;
  co.tls_key = ckey;
  assert_int_equal(node_start_opts(&good, &co, NULL, 0), 0);
  result r;
  do_send(&good, srv.addr, "echo", "secret", 0, &r);
  assert_int_equal(r.status, CRUSTER_OK);
  assert_string_equal(r.data, "secret");
  result_done(&r);

  /* Without a certificate, with one of another CA, or in plaintext: refused. */
  node nocert, stranger, plain;
  tp_opts no = plain_opts(NULL);
  no.tls_ca = ca;
  assert_int_equal(node_start_opts(&nocert, &no, NULL, 0), 0);
  tp_opts xo = plain_opts(NULL);
  xo.tls_ca = ca;
  xo.tls_cert = xcert;
  xo.tls_key = xkey;
  assert_int_equal(node_start_opts(&stranger, &xo, NULL, 0), 0);
  tp_opts po = plain_opts(NULL);
  assert_int_equal(node_start_opts(&plain, &po, NULL, 0), 0);
  node *bad[] = {&nocert, &stranger, &plain};
  for (int i = 0; i < 3; i++) {
    do_send(bad[i], srv.addr, "echo", "x", 5000, &r);
    assert_int_not_equal(r.status, CRUSTER_OK);
    assert_true(r.status == CRUSTER_E_RUNNER_UNAVAILABLE || r.status == CRUSTER_E_TIMEOUT);
    result_done(&r);
  }
  /* Bad options are refused up front. */
  node broken;
  tp_opts bo = plain_opts("127.0.0.1:0");
  bo.tls_ca = "/nonexistent/ca.pem";
  bo.tls_cert = scert;
  bo.tls_key = skey;
  memset(&broken, 0, sizeof broken);
  assert_int_equal(node_start_opts(&broken, &bo, msg, sizeof msg), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(msg, "/nonexistent/ca.pem"));
  node_free(&broken);

  node_free(&plain);
  node_free(&stranger);
  node_free(&nocert);
  node_free(&good);
  node_free(&srv);
  sh("rm -rf %s", tls_dir);
}

/* ---- the wire decoder ------------------------------------------------------ */

static void test_wire_roundtrip(void **state) {
  (void)state;
  core_env *e = mkenv("m", "payload");
  e->deliver_at = 99;
  tp_meta meta;
  memset(&meta, 0, sizeof meta);
  meta.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  meta.stream = 1;
  size_t n;
  uint8_t *buf = tp_wire_encode_env(e, &meta, &n);
  assert_non_null(buf);
  tp_wire_env w;
  char why[256];
  assert_int_equal(tp_wire_decode_env(buf, n, 1 << 20, &w, why, sizeof why), CRUSTER_OK);
  assert_string_equal(w.env->type, "Counter");
  assert_string_equal(w.env->group, "default");
  assert_int_equal(w.env->len, 7);
  assert_int_equal(w.meta.stream, 1);
  tp_wire_env_done(&w);
  /* Over the limit. */
  assert_int_equal(tp_wire_decode_env(buf, n, 3, &w, why, sizeof why), CRUSTER_E_PAYLOAD_TOO_LARGE);
  /* Every truncation is refused or decoded, never a crash. */
  for (size_t k = 0; k < n; k++) {
    int rc = tp_wire_decode_env(buf, k, 1 << 20, &w, why, sizeof why);
    if (rc == CRUSTER_OK) tp_wire_env_done(&w);
  }
  free(buf);
  free(e);
  /* Bad traceparent and bad UTF-8 in an id. */
  e = mkenv("m", "");
  meta.traceparent = "00-XYZ";
  buf = tp_wire_encode_env(e, &meta, &n);
  assert_int_equal(tp_wire_decode_env(buf, n, 1 << 20, &w, why, sizeof why), CRUSTER_E_INVALID_ARGUMENT);
  free(buf);
  free(e);
  e = core_env_new("T", "\xff\xfe", "m", "", 0);
  strcpy(e->group, "g");
  buf = tp_wire_encode_env(e, NULL, &n);
  assert_int_equal(tp_wire_decode_env(buf, n, 1 << 20, &w, why, sizeof why), CRUSTER_E_INVALID_ARGUMENT);
  free(buf);
  free(e);
  /* Replies: statuses other than known or application codes are mapped. */
  buf = tp_wire_encode_reply(TP_EXIT, 1, 0, -500, NULL, 0, "odd", &n);
  tp_wire_reply rr;
  assert_int_equal(tp_wire_decode_reply(buf, n, 1 << 20, &rr, why, sizeof why), CRUSTER_OK);
  assert_int_equal(rr.status, CRUSTER_E_HANDLER);
  tp_wire_reply_done(&rr);
  free(buf);
  buf = tp_wire_encode_reply(TP_EXIT, 1, 0, -1234, NULL, 0, "app", &n);
  assert_int_equal(tp_wire_decode_reply(buf, n, 1 << 20, &rr, why, sizeof why), CRUSTER_OK);
  assert_int_equal(rr.status, -1234);
  tp_wire_reply_done(&rr);
  free(buf);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--serve") == 0) return serve_main();
  signal(SIGPIPE, SIG_IGN);
  ssize_t k = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
  if (k <= 0) return 1;
  self_path[k] = 0;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_wire_roundtrip),
      cmocka_unit_test(test_two_in_process),
      cmocka_unit_test(test_deadline_and_cancel),
      cmocka_unit_test(test_peer_down_and_limits),
      cmocka_unit_test(test_stop_with_calls_in_flight),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_child_process),
      cmocka_unit_test(test_mtls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
