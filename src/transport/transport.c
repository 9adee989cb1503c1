/* The runner-to-runner transport: gRPC C core (generic server, one channel
 * per peer) driven from the loop thread. See transport.h and
 * docs/architecture.md, "Transport".
 *
 * One completion queue (the `next` kind) serves the server and every client
 * call. Its thread only moves completions {tag, ok} onto a locked list and
 * wakes the loop (uv_async); every state machine runs on the loop thread.
 * Each gRPC batch has a tag (tp_tag) naming the object and the step. */
#include "transport/transport.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "transport/wire.h"

/* gRPC's libraries are not built with ThreadSanitizer, so TSan cannot see
 * that a batch started on the loop thread happens before its completion on
 * the completion-queue thread. These annotations state it for each tag:
 * release before grpc_call_start_batch / request_call, acquire when the tag
 * comes out of the queue. (tests/tsan.supp ignores what gRPC's own threads
 * do with its memory.) */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TP_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TP_TSAN 1
#endif
#ifdef TP_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TAG_RELEASE(tag) __tsan_release(tag)
#define TAG_ACQUIRE(tag) __tsan_acquire(tag)
#else
#define TAG_RELEASE(tag) ((void)(tag))
#define TAG_ACQUIRE(tag) ((void)(tag))
#endif

#define COMPONENT "transport"
#define N_SLOTS 64                    /* request slots posted at once per method */
#define N_SLOTS_OTHER 4               /* ... for Ping, Interrupt and unknown methods */
#define MAX_TLS_FILE (1024 * 1024)    /* PEM files larger than this are refused */
#define SVC "/cruster.v1.Runner/"

enum { M_PING, M_SEND, M_NOTIFY, M_INTERRUPT, M_RAW, M_UNKNOWN, M_COUNT };
static const char *const method_names[M_COUNT] = {"ping",      "send", "notify",
                                                  "interrupt", "raw",  "unknown"};
static const char *const method_paths[M_COUNT] = {SVC "Ping", SVC "Send", SVC "Notify",
                                                  SVC "Interrupt", NULL, NULL};

/* Outcomes as metric labels. */
enum { O_OK, O_ERROR, O_TIMEOUT, O_UNAVAILABLE, O_CANCELLED, O_SHUTTING_DOWN, O_MALFORMED,
       O_TOO_LARGE, O_COUNT };
static const char *const outcome_names[O_COUNT] = {
    "ok", "error", "timeout", "unavailable", "cancelled", "shutting_down", "malformed", "too_large"};

enum { T_REQUEST, T_SRV_CLOSE, T_SRV_RECV, T_SRV_SEND, T_CL_MAIN, T_CL_STATUS, T_CL_RECV,
       T_SHUTDOWN };

/* A batch's tag. Each tag has at most one batch outstanding, so the
 * completion travels to the loop in the tag itself (ok, next): no
 * allocation per completion. */
typedef struct tp_tag {
  int kind;
  void *obj;
  int ok;
  struct tp_tag *next;
} tp_tag;

typedef struct tp_channel {
  char *addr;
  grpc_channel *ch;
  struct tp_channel *next;
} tp_channel;

/* An outgoing server message: bytes (NULL = none) and, when final, the
 * gRPC status that closes the call. */
typedef struct tp_out {
  uint8_t *buf;
  size_t len;
  int final;
  grpc_status_code code;
  char *details;
  struct tp_out *next;
} tp_out;

struct tp_reply {
  tp_transport *t; /* NULL once gRPC is done with the call (dead) */
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *recv;
  grpc_byte_buffer *send_bb;
  grpc_slice status_slice;
  int has_status_slice;
  int method;
  tp_tag t_req, t_close, t_recv, t_send;
  int slot;           /* the method whose slot it was (M_UNKNOWN: the generic one) */
  gpr_timespec deadline; /* (registered calls; unused) */
  int md_sent;    /* initial metadata sent (it goes with the first send) */
  int cancelled;  /* RECV_CLOSE_ON_SERVER's result */
  int close_done;
  int pending;    /* gRPC batches (and the request) outstanding */
  int host_holds; /* the host owes its exit */
  int exit_given;
  int stream;
  int sending;
  int finished; /* the final message is queued or sent */
  int32_t seq;
  int64_t request_id;
  void *host_ud;    /* tp_reply_set_host_ud */
  int sending_chunk; /* the batch in flight carries a chunk (not the exit) */
  tp_out *out_head, *out_tail;
  struct tp_reply *prev, *next; /* t->replies while gRPC holds it */
};

struct tp_call {
  tp_transport *t;
  int method;
  grpc_call *call;
  tp_chunk_fn on_chunk;
  tp_exit_fn on_exit;
  void (*ping_cb)(void *ud, int status);
  void (*health_cb)(void *ud, int status, const tp_health *h);
  void *ud;
  tp_tag t_main, t_status, t_recv;
  grpc_byte_buffer *send_bb, *recv_bb;
  grpc_metadata_array init_md, trail_md;
  grpc_status_code status;
  grpc_slice status_details;
  int pending;     /* batches outstanding (+1 while queued as deferred) */
  int done;        /* the exit has fired */
  int status_done; /* RECV_STATUS_ON_CLIENT completed */
  int recv_done;   /* no more messages will be read */
  int single;      /* one batch with the status: at most one message comes */
  int paused;      /* tp_call_pause: no receive is started */
  int recv_posted; /* a RECV_MESSAGE batch is outstanding */
  int32_t next_seq;
  int have_exit;
  int exit_status;
  uint8_t *exit_data; /* Send: the exit's value; unary: the answer's bytes */
  size_t exit_len;
  char *exit_msg;
  int fail_status; /* a local failure (decode, refusal), 0 = none */
  char *fail_msg;
  uint64_t start_ns;
  struct tp_call *prev, *next;       /* t->calls */
  struct tp_call *next_deferred;     /* t->deferred */
};

struct tp_transport {
  rt_loop *loop;
  const core_logger *lg;
  cruster_metrics *metrics;
  tp_host host;
  int has_host;
  void (*on_ping)(void *ud, tp_health *out);
  void *on_ping_ud;
  char *listen;
  int64_t max_msg;
  int64_t connect_timeout;
  char *tls_cert, *tls_key, *tls_ca; /* PEM contents */
  int require_client_cert;
  int grpc_inited;
  int started, stopped;

  grpc_completion_queue *cq;
  grpc_server *server;
  grpc_channel_credentials *creds;
  uv_thread_t thread;
  int thread_started;
  uv_async_t *async;

  /* Between the CQ thread and the loop. */
  uv_mutex_t mu;
  uv_cond_t cv;
  tp_tag *ev_head, *ev_tail;
  int draining; /* under mu: the loop is in process_events and looks at the
                 * list again before it returns (no uv_async_send needed) */

  /* The server's registered methods (grpc_server_register_method, the
   * request's message read with it); NULL = the generic slot. */
  void *reg[M_COUNT];

  /* Loop-owned. */
  tp_channel *channels;
  tp_call *calls;
  tp_call *deferred, *deferred_tail;
  size_t n_calls;        /* client calls alive (freed or not yet) */
  size_t n_inflight;     /* client calls waiting for their exit */
  size_t n_srv;          /* server call structs gRPC still holds */
  tp_reply *replies;
  tp_tag t_shutdown;
  int shutdown_done;

  core_metric *m_calls[2][M_COUNT][O_COUNT]; /* [server?][method][outcome] */
  core_metric *m_malformed[M_COUNT];
  core_metric *m_inflight[2];
  core_metric *m_latency[M_COUNT];
};

static void process_events(tp_transport *t);
static void process_list(tp_transport *t, tp_tag *e);
static void srv_message(tp_reply *r, int ok);
static void kick_send(tp_reply *r);
static void reply_maybe_free(tp_reply *r);
static void call_maybe_finish(tp_call *c);

/* ---- metrics -------------------------------------------------------------- */

static core_metric *metric_calls(tp_transport *t, int server, int method, int outcome) {
  core_metric **slot = &t->m_calls[server][method][outcome];
  if (!*slot && t->metrics) {
    char labels[160];
    snprintf(labels, sizeof labels, "method=\"%s\",side=\"%s\",outcome=\"%s\"",
             method_names[method], server ? "server" : "client", outcome_names[outcome]);
    *slot = core_metrics_get(t->metrics, CORE_COUNTER, "cluster_transport_calls_total",
                             "Transport calls finished, by method, side and outcome", labels);
  }
  return *slot;
}

static void count_call(tp_transport *t, int server, int method, int outcome) {
  core_metric *m = metric_calls(t, server, method, outcome);
  if (m) core_metric_add(m, 1);
}

static void count_malformed(tp_transport *t, int method) {
  if (!t->m_malformed[method] && t->metrics) {
    char labels[64];
    snprintf(labels, sizeof labels, "method=\"%s\"", method_names[method]);
    t->m_malformed[method] =
        core_metrics_get(t->metrics, CORE_COUNTER, "cluster_transport_malformed_total",
                         "Malformed messages received by the transport", labels);
  }
  if (t->m_malformed[method]) core_metric_add(t->m_malformed[method], 1);
}

static void inflight_add(tp_transport *t, int server, double v) {
  if (t->m_inflight[server]) core_metric_add(t->m_inflight[server], v);
}

static int outcome_of(int status) {
  switch (status) {
    case CRUSTER_OK: return O_OK;
    case CRUSTER_E_TIMEOUT: return O_TIMEOUT;
    case CRUSTER_E_RUNNER_UNAVAILABLE: return O_UNAVAILABLE;
    case CRUSTER_E_CANCELLED: return O_CANCELLED;
    case CRUSTER_E_SHUTTING_DOWN: return O_SHUTTING_DOWN;
    case CRUSTER_E_MALFORMED:
    case CRUSTER_E_INVALID_ARGUMENT: return O_MALFORMED;
    case CRUSTER_E_PAYLOAD_TOO_LARGE: return O_TOO_LARGE;
    default: return O_ERROR;
  }
}

/* ---- the completion-queue thread ------------------------------------------ */

static void cq_thread(void *arg) {
  tp_transport *t = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(t->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    tp_tag *e = ev.tag;
    TAG_ACQUIRE(e);
    e->ok = ev.success;
    e->next = NULL;
    uv_mutex_lock(&t->mu);
    int was_empty = t->ev_head == NULL;
    int wake = was_empty && !t->draining;
    if (t->ev_tail)
      t->ev_tail->next = e;
    else
      t->ev_head = e;
    t->ev_tail = e;
    if (was_empty) uv_cond_signal(&t->cv);
    uv_mutex_unlock(&t->mu);
    /* The loop drains the whole list, and looks again before it stops: one
     * wake-up per batch, none while it drains. */
    if (wake) uv_async_send(t->async);
  }
}

static void on_async(uv_async_t *h) {
  tp_transport *t = h->data;
  if (!t) return;
  process_events(t);
}

static void free_async(uv_handle_t *h) { free(h); }

/* ---- helpers -------------------------------------------------------------- */

static gpr_timespec deadline_in(int64_t ms) {
  if (ms <= 0) ms = 1;
  if (ms > INT64_MAX / 1000000) return gpr_inf_future(GPR_CLOCK_MONOTONIC);
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* The bytes of a received message, as one malloc'd buffer. */
static uint8_t *read_bb(grpc_byte_buffer *bb, size_t *len) {
  grpc_byte_buffer_reader rd;
  *len = 0;
  if (!grpc_byte_buffer_reader_init(&rd, bb)) return NULL;
  grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  size_t n = GRPC_SLICE_LENGTH(s);
  uint8_t *buf = malloc(n ? n : 1);
  if (buf) {
    if (n) memcpy(buf, GRPC_SLICE_START_PTR(s), n);
    *len = n;
  }
  grpc_slice_unref(s);
  return buf;
}

/* A byte buffer that takes `buf` (freed by gRPC). */
static grpc_byte_buffer *bb_take(uint8_t *buf, size_t len) {
  grpc_slice s = len ? grpc_slice_new(buf, len, free) : grpc_empty_slice();
  if (!len) free(buf);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

static const char *grpc_code_name(grpc_status_code c) {
  static const char *const names[] = {
      "OK",           "CANCELLED",         "UNKNOWN",        "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",    "ALREADY_EXISTS", "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",    "DATA_LOSS",
      "UNAUTHENTICATED"};
  return (unsigned)c < sizeof names / sizeof names[0] ? names[c] : "?";
}

static int map_grpc_status(grpc_status_code c) {
  switch (c) {
    case GRPC_STATUS_OK: return CRUSTER_OK;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return CRUSTER_E_TIMEOUT;
    case GRPC_STATUS_INVALID_ARGUMENT: return CRUSTER_E_INVALID_ARGUMENT;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return CRUSTER_E_PAYLOAD_TOO_LARGE;
    default: return CRUSTER_E_RUNNER_UNAVAILABLE;
  }
}

static char *read_file(const char *path, char *why, size_t whysz) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(why, whysz, "cannot open %s", path);
    return NULL;
  }
  char *buf = malloc(MAX_TLS_FILE + 1);
  size_t n = buf ? fread(buf, 1, MAX_TLS_FILE + 1, f) : 0;
  int bad = ferror(f);
  fclose(f);
  if (!buf || bad || n == 0 || n > MAX_TLS_FILE) {
    snprintf(why, whysz, "%s: %s", path,
             !buf ? "out of memory" : bad ? "read error" : n == 0 ? "empty" : "larger than 1 MiB");
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  return buf;
}

static void channel_args(tp_transport *t, grpc_arg *a, grpc_channel_args *args, int client) {
  int max = t->max_msg > INT_MAX ? INT_MAX : (int)t->max_msg;
  int ct = t->connect_timeout > INT_MAX ? INT_MAX : (int)t->connect_timeout;
  a[0].type = GRPC_ARG_INTEGER;
  a[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  a[0].value.integer = max;
  a[1].type = GRPC_ARG_INTEGER;
  a[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  a[1].value.integer = max;
  args->num_args = 2;
  if (client) {
    /* gRPC core takes its connect timeout from the minimum reconnect backoff;
     * the backoff between attempts starts at 100 ms and stays under 2 s so a
     * restarted peer is reached again soon. */
    a[2].type = GRPC_ARG_INTEGER;
    a[2].key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
    a[2].value.integer = ct;
    a[3].type = GRPC_ARG_INTEGER;
    a[3].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    a[3].value.integer = 100;
    a[4].type = GRPC_ARG_INTEGER;
    a[4].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    a[4].value.integer = 2000;
    args->num_args = 5;
  }
  args->args = a;
}

/* ---- lifecycle ------------------------------------------------------------ */

cruster_status tp_new(rt_loop *loop, const tp_opts *opts, const core_logger *lg,
                      cruster_metrics *metrics, const tp_host *host, tp_transport **out,
                      cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "tp_new: out is NULL");
  *out = NULL;
  if (!loop || !opts)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "tp_new: loop and opts are required");
  if (opts->max_message_size <= 0 || opts->connect_timeout_ms <= 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "transport: max message size and connect timeout must be > 0");
  if (opts->listen_address && core_parse_hostport(opts->listen_address, NULL, 0, NULL) != 0) {
    /* port 0 ("any") is allowed for the listen address */
    const char *colon = strrchr(opts->listen_address, ':');
    if (!colon || strcmp(colon, ":0") != 0 || colon == opts->listen_address)
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "transport: listen address \"%s\" is not host:port",
                            opts->listen_address);
  }
  if ((opts->tls_cert != NULL) != (opts->tls_key != NULL))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "transport: TLS certificate and key go together");
  if ((opts->tls_cert || opts->tls_require_client_cert) && !opts->tls_ca)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "transport: TLS needs a CA file (transport_tls_ca)");
  if (opts->tls_ca && opts->listen_address && !opts->tls_cert)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "transport: a TLS server needs a certificate and key");
  tp_transport *t = calloc(1, sizeof(*t));
  if (!t) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  t->loop = loop;
  t->lg = lg;
  t->metrics = metrics;
  if (host) {
    t->host = *host;
    t->has_host = 1;
  }
  t->max_msg = opts->max_message_size;
  t->connect_timeout = opts->connect_timeout_ms;
  t->require_client_cert = opts->tls_require_client_cert != 0;
  char why[512] = "";
  int rc = CRUSTER_OK;
  if (opts->listen_address && !(t->listen = core_strdup(opts->listen_address))) rc = CRUSTER_E_NOMEM;
  if (rc == CRUSTER_OK && opts->tls_ca) {
    if (!(t->tls_ca = read_file(opts->tls_ca, why, sizeof why)) ||
        (opts->tls_cert && !(t->tls_cert = read_file(opts->tls_cert, why, sizeof why))) ||
        (opts->tls_key && !(t->tls_key = read_file(opts->tls_key, why, sizeof why))))
      rc = CRUSTER_E_INVALID_ARGUMENT;
  }
  if (rc == CRUSTER_OK) {
    t->async = calloc(1, sizeof(*t->async));
    if (!t->async) rc = CRUSTER_E_NOMEM;
  }
  if (rc != CRUSTER_OK) {
    free(t->listen);
    free(t->tls_ca);
    free(t->tls_cert);
    free(t->tls_key);
    free(t->async);
    free(t);
    return core_error_set(err, rc, "transport: %s", rc == CRUSTER_E_NOMEM ? "out of memory" : why);
  }
  uv_mutex_init(&t->mu);
  uv_cond_init(&t->cv);
  grpc_init();
  t->grpc_inited = 1;
  t->cq = grpc_completion_queue_create_for_next(NULL);
  if (t->tls_ca) {
    grpc_ssl_pem_key_cert_pair pair = {t->tls_key, t->tls_cert};
    t->creds = grpc_ssl_credentials_create(t->tls_ca, t->tls_cert ? &pair : NULL, NULL, NULL);
  } else {
    t->creds = grpc_insecure_credentials_create();
  }
  if (metrics) {
    t->m_inflight[0] = core_metrics_get(metrics, CORE_GAUGE, "cluster_transport_calls_in_flight",
                                        "Transport calls waiting for their answer",
                                        "side=\"client\"");
    t->m_inflight[1] = core_metrics_get(metrics, CORE_GAUGE, "cluster_transport_calls_in_flight",
                                        "Transport calls waiting for their answer",
                                        "side=\"server\"");
    for (int m = 0; m < M_COUNT; m++) {
      char labels[64];
      snprintf(labels, sizeof labels, "method=\"%s\"", method_names[m]);
      t->m_latency[m] = core_metrics_get(metrics, CORE_HISTOGRAM,
                                         "cluster_transport_call_duration_seconds",
                                         "Time from making a transport call to its answer",
                                         labels);
    }
  }
  if (!t->cq || !t->creds) {
    tp_free(t);
    return core_error_set(err, CRUSTER_E_INTERNAL, "transport: gRPC setup failed");
  }
  *out = t;
  return CRUSTER_OK;
}

static void post_slot(tp_transport *t, int method);

cruster_status tp_start(tp_transport *t, int *bound_port, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (bound_port) *bound_port = 0;
  if (!t) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "tp_start: no transport");
  if (t->started || t->stopped)
    return core_error_set(err, CRUSTER_E_STATE, "transport: started already");
  int port = 0;
  if (t->listen) {
    grpc_arg a[5];
    grpc_channel_args args;
    channel_args(t, a, &args, 0);
    t->server = grpc_server_create(&args, NULL);
    if (!t->server) return core_error_set(err, CRUSTER_E_INTERNAL, "transport: no gRPC server");
    grpc_server_register_completion_queue(t->server, t->cq, NULL);
    /* The service's methods are registered with their request message read
     * before the call is reported: one completion (and one batch) less per
     * call. Other paths reach the generic slots (answered UNIMPLEMENTED). */
    for (int m = 0; m < M_COUNT; m++)
      if (method_paths[m])
        t->reg[m] = grpc_server_register_method(t->server, method_paths[m], NULL,
                                                GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    grpc_server_credentials *sc;
    if (t->tls_ca) {
      grpc_ssl_pem_key_cert_pair pair = {t->tls_key, t->tls_cert};
      sc = grpc_ssl_server_credentials_create_ex(
          t->tls_ca, &pair, 1,
          t->require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                 : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
          NULL);
    } else {
      sc = grpc_insecure_server_credentials_create();
    }
    port = sc ? grpc_server_add_http2_port(t->server, t->listen, sc) : 0;
    if (sc) grpc_server_credentials_release(sc);
    if (port <= 0) {
      grpc_server_destroy(t->server);
      t->server = NULL;
      return core_error_set(err, CRUSTER_E_RUNNER_UNAVAILABLE,
                            "transport: cannot listen on %s", t->listen);
    }
  }
  if (uv_async_init(&t->loop->uv, t->async, on_async) != 0) {
    if (t->server) grpc_server_destroy(t->server);
    t->server = NULL;
    return core_error_set(err, CRUSTER_E_INTERNAL, "transport: uv_async_init failed");
  }
  t->async->data = t;
  if (uv_thread_create(&t->thread, cq_thread, t) != 0) {
    uv_close((uv_handle_t *)t->async, free_async);
    t->async = NULL;
    if (t->server) grpc_server_destroy(t->server);
    t->server = NULL;
    return core_error_set(err, CRUSTER_E_INTERNAL, "transport: cannot start its thread");
  }
  t->thread_started = 1;
  t->started = 1;
  if (t->server) {
    grpc_server_start(t->server);
    for (int m = 0; m < M_COUNT; m++) {
      if (m != M_UNKNOWN && !t->reg[m]) continue;
      int n = m == M_SEND || m == M_NOTIFY ? N_SLOTS : N_SLOTS_OTHER;
      for (int i = 0; i < n; i++) post_slot(t, m);
    }
    core_log(t->lg, CRUSTER_LOG_INFO, COMPONENT, "listening on %s (port %d%s)", t->listen, port,
             t->tls_ca ? (t->require_client_cert ? ", mTLS" : ", TLS") : "");
  }
  if (bound_port) *bound_port = port;
  return CRUSTER_OK;
}

static int stop_done(tp_transport *t) {
  return (!t->server || t->shutdown_done) && t->n_calls == 0 && t->n_srv == 0;
}

void tp_stop(tp_transport *t) {
  if (!t || t->stopped) return;
  t->stopped = 1;
  if (!t->started) return;
  /* Our calls: each exit fires now, gRPC finishes them below. */
  for (tp_call *c = t->calls; c; c = c->next) {
    if (c->done) continue;
    if (!c->fail_status) {
      c->fail_status = CRUSTER_E_SHUTTING_DOWN;
      c->fail_msg = core_strdup("transport stopped");
    }
    if (c->call) grpc_call_cancel(c->call, NULL);
  }
  /* Fire the exits (the list may change inside callbacks: restart). */
  for (;;) {
    tp_call *c = t->calls;
    while (c && c->done) c = c->next;
    if (!c) break;
    c->status_done = c->recv_done = 1; /* report now; the gRPC side ends below */
    call_maybe_finish(c);
  }
  if (t->server) {
    t->t_shutdown.kind = T_SHUTDOWN;
    t->t_shutdown.obj = t;
    TAG_RELEASE(&t->t_shutdown);
    grpc_server_shutdown_and_notify(t->server, t->cq, &t->t_shutdown);
    grpc_server_cancel_all_calls(t->server);
  }
  /* Drain the completions here (the loop waits briefly): every call gRPC
   * holds ends now that all were cancelled. */
  for (;;) {
    process_events(t);
    if (stop_done(t)) break;
    uv_mutex_lock(&t->mu);
    while (!t->ev_head) uv_cond_wait(&t->cv, &t->mu);
    uv_mutex_unlock(&t->mu);
  }
  for (tp_channel *ch = t->channels, *next; ch; ch = next) {
    next = ch->next;
    grpc_channel_destroy(ch->ch);
    free(ch->addr);
    free(ch);
  }
  t->channels = NULL;
  grpc_completion_queue_shutdown(t->cq);
  uv_thread_join(&t->thread);
  t->thread_started = 0;
  process_events(t); /* nothing should be left; frees the list */
  if (t->server) grpc_server_destroy(t->server);
  t->server = NULL;
  uv_close((uv_handle_t *)t->async, free_async);
  t->async = NULL;
}

void tp_free(tp_transport *t) {
  if (!t) return;
  tp_stop(t);
  if (t->async) free(t->async); /* never initialized */
  if (t->cq) {
    if (!t->started) { /* tp_stop did not shut it down */
      grpc_completion_queue_shutdown(t->cq);
      while (grpc_completion_queue_next(t->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
             GRPC_QUEUE_SHUTDOWN) {
      }
    }
    grpc_completion_queue_destroy(t->cq);
  }
  if (t->creds) grpc_channel_credentials_release(t->creds);
  if (t->grpc_inited) grpc_shutdown();
  uv_mutex_destroy(&t->mu);
  uv_cond_destroy(&t->cv);
  free(t->listen);
  free(t->tls_ca);
  free(t->tls_cert);
  free(t->tls_key);
  free(t);
}

size_t tp_calls_in_flight(const tp_transport *t) { return t ? t->n_inflight : 0; }

/* ---- server --------------------------------------------------------------- */

/* A request slot for `method` (registered), or for any other path
 * (M_UNKNOWN: gRPC's generic request_call). */
static void post_slot(tp_transport *t, int method) {
  tp_reply *r = calloc(1, sizeof(*r));
  if (!r) {
    core_log(t->lg, CRUSTER_LOG_ERROR, COMPONENT, "out of memory: one request slot less");
    return;
  }
  r->t = t;
  r->method = M_UNKNOWN;
  r->slot = method;
  grpc_call_details_init(&r->details);
  grpc_metadata_array_init(&r->md);
  r->t_req = (tp_tag){T_REQUEST, r, 0, NULL};
  r->t_close = (tp_tag){T_SRV_CLOSE, r, 0, NULL};
  r->t_recv = (tp_tag){T_SRV_RECV, r, 0, NULL};
  r->t_send = (tp_tag){T_SRV_SEND, r, 0, NULL};
  r->pending = 1;
  t->n_srv++;
  TAG_RELEASE(&r->t_req);
  grpc_call_error e =
      method == M_UNKNOWN || !t->reg[method]
          ? grpc_server_request_call(t->server, &r->call, &r->details, &r->md, t->cq, t->cq,
                                     &r->t_req)
          : grpc_server_request_registered_call(t->server, t->reg[method], &r->call, &r->deadline,
                                                &r->md, &r->recv, t->cq, t->cq, &r->t_req);
  if (e != GRPC_CALL_OK) {
    t->n_srv--;
    grpc_call_details_destroy(&r->details);
    grpc_metadata_array_destroy(&r->md);
    free(r);
  }
}

static void reply_unlink(tp_reply *r) {
  tp_transport *t = r->t;
  if (r->prev)
    r->prev->next = r->next;
  else if (t->replies == r)
    t->replies = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

static void reply_free(tp_reply *r) {
  while (r->out_head) {
    tp_out *o = r->out_head;
    r->out_head = o->next;
    free(o->buf);
    free(o->details);
    free(o);
  }
  free(r);
}

/* gRPC is done with r when nothing is pending; the host when it gave its
 * exit. */
static void reply_maybe_free(tp_reply *r) {
  if (r->pending > 0) return;
  tp_transport *t = r->t;
  if (t) {
    if (r->call) {
      reply_unlink(r);
      inflight_add(t, 1, -1);
      grpc_call_unref(r->call);
      r->call = NULL;
    }
    grpc_call_details_destroy(&r->details);
    grpc_metadata_array_destroy(&r->md);
    if (r->recv) grpc_byte_buffer_destroy(r->recv);
    r->recv = NULL;
    t->n_srv--;
    r->t = NULL; /* dead: only the host's exit remains */
  }
  if (!r->host_holds) reply_free(r);
}

static void start_batch_srv(tp_reply *r, const grpc_op *ops, size_t n, tp_tag *tag) {
  r->pending++;
  TAG_RELEASE(tag);
  grpc_call_error e = grpc_call_start_batch(r->call, ops, n, tag, NULL);
  if (e != GRPC_CALL_OK) {
    r->pending--;
    core_log(r->t->lg, CRUSTER_LOG_ERROR, COMPONENT, "server batch refused (%d)", (int)e);
  }
}

static void queue_out(tp_reply *r, uint8_t *buf, size_t len, int final, grpc_status_code code,
                      const char *details) {
  tp_out *o = calloc(1, sizeof(*o));
  if (!o) {
    free(buf);
    if (final && r->call) grpc_call_cancel(r->call, NULL); /* the peer sees the failure */
    return;
  }
  o->buf = buf;
  o->len = len;
  o->final = final;
  o->code = code;
  o->details = details ? core_strdup(details) : NULL;
  if (final) r->finished = 1;
  if (r->out_tail)
    r->out_tail->next = o;
  else
    r->out_head = o;
  r->out_tail = o;
  kick_send(r);
}

/* Answers with a gRPC status and no message (malformed input, unknown
 * method). */
static void reply_status(tp_reply *r, grpc_status_code code, const char *details) {
  queue_out(r, NULL, 0, 1, code, details);
}

static void kick_send(tp_reply *r) {
  if (r->sending || !r->out_head || !r->t || r->close_done) return;
  tp_out *o = r->out_head;
  r->out_head = o->next;
  if (!r->out_head) r->out_tail = NULL;
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = 0, md = 0;
  if (!r->md_sent) {
    /* With the first message (or the status): a unary answer reaches the
     * peer as headers, message and trailers in one write. */
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n = md = 1;
  }
  if (o->buf) {
    r->send_bb = bb_take(o->buf, o->len);
    o->buf = NULL;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = r->send_bb;
    n++;
  }
  int was_final = o->final;
  if (o->final) {
    r->status_slice = grpc_slice_from_copied_string(o->details ? o->details : "");
    r->has_status_slice = 1;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = o->code;
    ops[n].data.send_status_from_server.status_details = &r->status_slice;
    n++;
    count_call(r->t, 1, r->method, o->code == GRPC_STATUS_OK ? O_OK : O_MALFORMED);
  }
  free(o->details);
  free(o);
  if (n == md) return; /* nothing to send */
  r->sending = 1;
  r->sending_chunk = !was_final;
  int before = r->pending;
  start_batch_srv(r, ops, n, &r->t_send);
  if (r->pending != before) r->md_sent = 1;
  if (r->pending == before) { /* refused: the call is broken, cancel it */
    r->sending = 0;
    if (r->send_bb) grpc_byte_buffer_destroy(r->send_bb);
    r->send_bb = NULL;
    if (r->has_status_slice) grpc_slice_unref(r->status_slice);
    r->has_status_slice = 0;
    grpc_call_cancel(r->call, NULL);
  }
}

static void on_srv_send(tp_reply *r, int ok) {
  r->pending--;
  r->sending = 0;
  int chunk = r->sending_chunk;
  r->sending_chunk = 0;
  if (r->send_bb) grpc_byte_buffer_destroy(r->send_bb);
  r->send_bb = NULL;
  if (r->has_status_slice) grpc_slice_unref(r->status_slice);
  r->has_status_slice = 0;
  if (ok) kick_send(r);
  if (ok && chunk && r->t && r->host_holds && !r->exit_given && r->t->has_host &&
      r->t->host.on_sent) {
    /* The host may give its exit inside: r must outlive the callback. */
    r->pending++;
    r->t->host.on_sent(r->t->host.ud, r);
    r->pending--;
  }
  reply_maybe_free(r);
}

static int method_of(const grpc_slice *s) {
  size_t n = GRPC_SLICE_LENGTH(*s);
  const char *p = (const char *)GRPC_SLICE_START_PTR(*s);
  for (int m = 0; m < M_COUNT; m++)
    if (method_paths[m] && strlen(method_paths[m]) == n && memcmp(method_paths[m], p, n) == 0)
      return m;
  return M_UNKNOWN;
}

static void on_request(tp_reply *r, int ok) {
  tp_transport *t = r->t;
  r->pending--;
  if (!ok || t->stopped) {
    /* shutdown: the slot comes back unused */
    if (ok && r->call) {
      /* accepted as the server stopped: refuse it */
      r->method = M_UNKNOWN;
    } else {
      reply_maybe_free(r);
      return;
    }
  }
  if (!t->stopped) post_slot(t, r->slot);
  r->next = t->replies;
  if (t->replies) t->replies->prev = r;
  t->replies = r;
  inflight_add(t, 1, 1);
  int registered = r->slot != M_UNKNOWN;
  r->method = t->stopped ? M_UNKNOWN : registered ? r->slot : method_of(&r->details.method);
  grpc_op close_op;
  memset(&close_op, 0, sizeof close_op);
  close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  close_op.data.recv_close_on_server.cancelled = &r->cancelled;
  start_batch_srv(r, &close_op, 1, &r->t_close);
  if (registered) {
    /* The request's message came with the call (NULL: none). */
    srv_message(r, 1);
    return;
  }
  /* (The initial metadata goes with the first send: kick_send.) */
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &r->recv;
  start_batch_srv(r, &op, 1, &r->t_recv);
  reply_maybe_free(r);
}

static void on_srv_close(tp_reply *r, int ok) {
  (void)ok;
  r->pending--;
  r->close_done = 1;
  if (r->cancelled && r->host_holds && !r->exit_given && r->t) {
    tp_transport *t = r->t;
    if (!r->finished) count_call(t, 1, r->method, O_CANCELLED);
    r->finished = 1;
    /* The host may give its exit inside: r must outlive the callback. */
    r->pending++;
    if (t->has_host && t->host.on_cancelled) t->host.on_cancelled(t->host.ud, r);
    r->pending--;
  }
  reply_maybe_free(r);
}

static void refuse_malformed(tp_reply *r, int rc, const char *why) {
  tp_transport *t = r->t;
  count_malformed(t, r->method);
  core_log(t->lg, CRUSTER_LOG_WARN, COMPONENT, "malformed %s request refused: %s",
           method_names[r->method], why);
  reply_status(r,
               rc == CRUSTER_E_PAYLOAD_TOO_LARGE ? GRPC_STATUS_RESOURCE_EXHAUSTED
               : rc == CRUSTER_E_NOMEM           ? GRPC_STATUS_RESOURCE_EXHAUSTED
                                                 : GRPC_STATUS_INVALID_ARGUMENT,
               why);
}

static void on_srv_recv(tp_reply *r, int ok) {
  r->pending--;
  srv_message(r, ok);
}

/* The request's message has arrived (r->recv; NULL or !ok: none): decode it
 * and hand it to the host, or refuse it. */
static void srv_message(tp_reply *r, int ok) {
  tp_transport *t = r->t;
  if (!ok || !r->recv || r->method == M_UNKNOWN) {
    if (ok && r->method == M_UNKNOWN)
      reply_status(r, GRPC_STATUS_UNIMPLEMENTED, t->stopped ? "stopping" : "unknown method");
    else if (ok)
      reply_status(r, GRPC_STATUS_INVALID_ARGUMENT, "no request message");
    reply_maybe_free(r);
    return;
  }
  size_t len;
  uint8_t *buf = read_bb(r->recv, &len);
  grpc_byte_buffer_destroy(r->recv);
  r->recv = NULL;
  if (!buf) {
    reply_status(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    reply_maybe_free(r);
    return;
  }
  char why[300];
  switch (r->method) {
    case M_PING: {
      tp_health h;
      memset(&h, 0, sizeof(h));
      if (t->on_ping) t->on_ping(t->on_ping_ud, &h);
      size_t n = 0;
      uint8_t *out = tp_wire_encode_ping_reply(&h, &n);
      if (!out)
        reply_status(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      else
        queue_out(r, out, n, 1, GRPC_STATUS_OK, NULL);
      break;
    }
    case M_SEND:
    case M_NOTIFY: {
      tp_wire_env w;
      int rc = tp_wire_decode_env(buf, len, t->max_msg, &w, why, sizeof why);
      if (rc != CRUSTER_OK) {
        refuse_malformed(r, rc, why);
        break;
      }
      r->request_id = w.env->request_id;
      r->stream = r->method == M_SEND && w.meta.stream;
      r->host_holds = 1;
      core_env *env = w.env;
      w.env = NULL;
      if (!t->has_host || !(r->method == M_SEND ? t->host.on_send : t->host.on_notify)) {
        free(env);
        tp_reply_exit(r, CRUSTER_E_RUNNER_UNAVAILABLE, NULL, 0, "this runner takes no messages");
      } else if (r->method == M_SEND) {
        t->host.on_send(t->host.ud, env, &w.meta, r);
      } else {
        t->host.on_notify(t->host.ud, env, &w.meta, r);
      }
      tp_wire_env_done(&w);
      break;
    }
    case M_INTERRUPT: {
      tp_wire_interrupt w;
      int rc = tp_wire_decode_interrupt(buf, len, &w, why, sizeof why);
      if (rc != CRUSTER_OK) {
        refuse_malformed(r, rc, why);
        break;
      }
      r->host_holds = 1;
      if (!t->has_host || !t->host.on_interrupt)
        tp_reply_exit(r, CRUSTER_E_RUNNER_UNAVAILABLE, NULL, 0, "this runner takes no messages");
      else
        t->host.on_interrupt(t->host.ud, w.type, w.id, w.group, w.shard, r);
      tp_wire_interrupt_done(&w);
      break;
    }
    default: reply_status(r, GRPC_STATUS_UNIMPLEMENTED, "unknown method"); break;
  }
  free(buf);
  reply_maybe_free(r);
}

cruster_status tp_reply_chunk(tp_reply *r, const void *data, size_t len) {
  if (!r || (len && !data)) return CRUSTER_E_INVALID_ARGUMENT;
  if (r->exit_given) return CRUSTER_E_STATE;
  if (!r->stream) return CRUSTER_E_INVALID_ARGUMENT;
  if (!r->t || r->close_done || r->finished) return CRUSTER_E_CANCELLED;
  if (r->seq == INT32_MAX) return CRUSTER_E_PAYLOAD_TOO_LARGE;
  size_t n;
  uint8_t *buf = tp_wire_encode_reply(TP_CHUNK, r->request_id, r->seq, 0, data, len, NULL, &n);
  if (!buf) return CRUSTER_E_NOMEM;
  if (core_size_exceeds(n, r->t->max_msg)) {
    free(buf);
    return CRUSTER_E_PAYLOAD_TOO_LARGE;
  }
  r->seq++;
  queue_out(r, buf, n, 0, GRPC_STATUS_OK, NULL);
  return CRUSTER_OK;
}

void tp_reply_set_host_ud(tp_reply *r, void *ud) {
  if (r) r->host_ud = ud;
}

void *tp_reply_host_ud(const tp_reply *r) { return r ? r->host_ud : NULL; }

void tp_reply_exit(tp_reply *r, int status, const void *data, size_t len, const char *msg) {
  if (!r || r->exit_given) return;
  r->exit_given = 1;
  r->host_ud = NULL;
  r->host_holds = 0;
  tp_transport *t = r->t;
  if (!t || r->close_done || r->finished) {
    reply_maybe_free(r);
    return;
  }
  if (!data) len = 0;
  uint8_t *buf;
  size_t n = 0;
  if (r->method == M_SEND) {
    buf = tp_wire_encode_reply(TP_EXIT, r->request_id, r->seq, status, data, len, msg, &n);
    if (buf && core_size_exceeds(n, t->max_msg)) {
      free(buf);
      char text[160];
      snprintf(text, sizeof text, "the reply of %zu bytes is over the transport's limit (%lld)",
               len, (long long)t->max_msg);
      buf = tp_wire_encode_reply(TP_EXIT, r->request_id, r->seq, CRUSTER_E_PAYLOAD_TOO_LARGE,
                                 NULL, 0, text, &n);
    }
  } else {
    if (msg && strlen(msg) > (size_t)(t->max_msg / 2)) msg = "(message too long)";
    buf = tp_wire_encode_ack(status, msg, &n);
  }
  if (!buf) {
    reply_status(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    queue_out(r, buf, n, 1, GRPC_STATUS_OK, NULL);
  }
  reply_maybe_free(r);
}

/* ---- client --------------------------------------------------------------- */

static grpc_channel *channel_for(tp_transport *t, const char *addr) {
  for (tp_channel *c = t->channels; c; c = c->next)
    if (strcmp(c->addr, addr) == 0) return c->ch;
  tp_channel *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  c->addr = core_strdup(addr);
  grpc_arg a[5];
  grpc_channel_args args;
  channel_args(t, a, &args, 1);
  c->ch = c->addr ? grpc_channel_create(addr, t->creds, &args) : NULL;
  if (!c->ch) {
    free(c->addr);
    free(c);
    return NULL;
  }
  c->next = t->channels;
  t->channels = c;
  return c->ch;
}

static void call_free(tp_call *c) {
  tp_transport *t = c->t;
  if (c->prev)
    c->prev->next = c->next;
  else if (t->calls == c)
    t->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  t->n_calls--;
  if (c->call) grpc_call_unref(c->call);
  if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
  if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
  grpc_metadata_array_destroy(&c->init_md);
  grpc_metadata_array_destroy(&c->trail_md);
  grpc_slice_unref(c->status_details);
  free(c->exit_data);
  free(c->exit_msg);
  free(c->fail_msg);
  free(c);
}

static void fire_exit(tp_call *c, int status, const void *data, size_t len, const char *msg) {
  tp_transport *t = c->t;
  c->done = 1;
  t->n_inflight--;
  inflight_add(t, 0, -1);
  count_call(t, 0, c->method, outcome_of(status));
  if (t->m_latency[c->method])
    core_metric_observe(t->m_latency[c->method], (double)(core_mono_ns() - c->start_ns) / 1e9);
  if (c->health_cb) {
    tp_health h;
    char why[120];
    int rc = status == CRUSTER_OK ? tp_wire_decode_ping_reply(data, data ? len : 0, &h, why, sizeof why)
                                  : status;
    if (status == CRUSTER_OK && rc != CRUSTER_OK) count_malformed(t, c->method);
    c->health_cb(c->ud, rc, rc == CRUSTER_OK ? &h : NULL);
  } else if (c->ping_cb)
    c->ping_cb(c->ud, status);
  else if (c->on_exit)
    c->on_exit(c->ud, status, data, len, msg ? msg : "");
}

/* Reports the exit once everything it depends on has arrived; frees the
 * call when gRPC is done with it too. */
static void call_maybe_finish(tp_call *c) {
  if (!c->done && (c->fail_status || (c->status_done && c->recv_done))) {
    if (c->fail_status) {
      if (c->call && !c->status_done) grpc_call_cancel(c->call, NULL);
      fire_exit(c, c->fail_status, NULL, 0, c->fail_msg ? c->fail_msg : "");
    } else if (c->status != GRPC_STATUS_OK) {
      char *details = grpc_slice_to_c_string(c->status_details);
      char text[600];
      snprintf(text, sizeof text, "gRPC %s: %s", grpc_code_name(c->status),
               details ? details : "");
      gpr_free(details);
      fire_exit(c, map_grpc_status(c->status), NULL, 0, text);
    } else if (c->method == M_SEND) {
      if (c->have_exit)
        fire_exit(c, c->exit_status, c->exit_data, c->exit_len, c->exit_msg);
      else
        fire_exit(c, CRUSTER_E_MALFORMED, NULL, 0, "the answer ended without an exit");
    } else if (c->method == M_NOTIFY || c->method == M_INTERRUPT) {
      int status = CRUSTER_OK;
      char *msg = NULL, why[200];
      int rc = c->exit_data ? tp_wire_decode_ack(c->exit_data, c->exit_len, &status, &msg, why,
                                                 sizeof why)
                            : CRUSTER_E_MALFORMED;
      if (!c->exit_data) snprintf(why, sizeof why, "no answer message");
      if (rc != CRUSTER_OK) {
        count_malformed(c->t, c->method);
        fire_exit(c, CRUSTER_E_MALFORMED, NULL, 0, why);
      } else {
        fire_exit(c, status, NULL, 0, msg);
      }
      free(msg);
    } else {
      fire_exit(c, CRUSTER_OK, c->exit_data, c->exit_len, "");
    }
  }
  if (c->done && c->pending == 0) call_free(c);
}

static void call_fail(tp_call *c, int status, const char *fmt, const char *arg) {
  if (c->fail_status) return;
  c->fail_status = status;
  char text[400];
  snprintf(text, sizeof text, fmt, arg ? arg : "");
  c->fail_msg = core_strdup(text);
}

static void start_recv(tp_call *c) {
  if (c->paused) return; /* tp_call_resume starts it */
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &c->recv_bb;
  c->pending++;
  c->recv_posted = 1;
  TAG_RELEASE(&c->t_recv);
  if (grpc_call_start_batch(c->call, &op, 1, &c->t_recv, NULL) != GRPC_CALL_OK) {
    c->pending--;
    c->recv_posted = 0;
    c->recv_done = 1;
  }
}

/* One received message of a call. */
static void call_message(tp_call *c) {
  size_t len;
  uint8_t *buf = read_bb(c->recv_bb, &len);
  grpc_byte_buffer_destroy(c->recv_bb);
  c->recv_bb = NULL;
  if (!buf) {
    call_fail(c, CRUSTER_E_NOMEM, "out of memory%s", NULL);
    return;
  }
  if (c->method != M_SEND) {
    if (c->exit_data) {
      free(buf);
      call_fail(c, CRUSTER_E_MALFORMED, "two answers to a unary call%s", NULL);
      return;
    }
    c->exit_data = buf;
    c->exit_len = len;
    return;
  }
  tp_wire_reply w;
  char why[300];
  int rc = tp_wire_decode_reply(buf, len, c->t->max_msg, &w, why, sizeof why);
  free(buf);
  if (rc != CRUSTER_OK) {
    count_malformed(c->t, c->method);
    call_fail(c, CRUSTER_E_MALFORMED, "malformed answer: %s", why);
    return;
  }
  if (c->have_exit) {
    call_fail(c, CRUSTER_E_MALFORMED, "a message after the exit%s", NULL);
  } else if (w.kind == TP_CHUNK) {
    if (w.seq != c->next_seq) {
      snprintf(why, sizeof why, "chunk %d where %d was due", (int)w.seq, (int)c->next_seq);
      call_fail(c, CRUSTER_E_MALFORMED, "malformed answer: %s", why);
    } else {
      c->next_seq++;
      if (!c->done && c->on_chunk) c->on_chunk(c->ud, w.seq, w.data, w.len);
    }
  } else {
    c->have_exit = 1;
    c->exit_status = w.status;
    c->exit_len = w.len;
    c->exit_data = w.len ? core_memdup(w.data, w.len) : NULL;
    c->exit_msg = core_strdup(w.msg);
    if ((w.len && !c->exit_data) || !c->exit_msg) call_fail(c, CRUSTER_E_NOMEM, "out of memory%s", NULL);
  }
  tp_wire_reply_done(&w);
}

static void on_cl_main(tp_call *c, int ok) {
  c->pending--;
  c->recv_posted = 0;
  if (c->single) c->status_done = 1; /* the status came in this batch */
  if (ok && c->recv_bb) {
    call_message(c);
    /* A stream goes on until its exit; after the exit nothing is read. */
    if (!c->single && !c->have_exit && !c->fail_status && !c->done)
      start_recv(c);
    else
      c->recv_done = 1;
  } else {
    c->recv_done = 1;
  }
  call_maybe_finish(c);
}

static void on_cl_recv(tp_call *c, int ok) {
  c->pending--;
  c->recv_posted = 0;
  if (ok && c->recv_bb) {
    call_message(c);
    if (!c->have_exit && !c->fail_status && !c->done)
      start_recv(c);
    else
      c->recv_done = 1;
  } else {
    c->recv_done = 1;
  }
  call_maybe_finish(c);
}

static void on_cl_status(tp_call *c, int ok) {
  (void)ok;
  c->pending--;
  c->status_done = 1;
  /* Paused, and the call failed (deadline, cancelled, peer gone): nothing
   * more will be read. */
  if (c->paused && !c->recv_posted && c->status != GRPC_STATUS_OK) c->recv_done = 1;
  call_maybe_finish(c);
}

/* Queues c to report its failure from the loop (never inside the call that
 * made it). */
static void defer(tp_call *c) {
  tp_transport *t = c->t;
  c->pending++;
  c->next_deferred = NULL;
  if (t->deferred_tail)
    t->deferred_tail->next_deferred = c;
  else
    t->deferred = c;
  t->deferred_tail = c;
  if (t->async) uv_async_send(t->async);
}

static tp_call *call_new(tp_transport *t, int method, tp_exit_fn on_exit, void *ud) {
  tp_call *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  c->t = t;
  c->method = method;
  c->single = method != M_SEND; /* tp_call_send decides for itself */
  c->on_exit = on_exit;
  c->ud = ud;
  c->t_main = (tp_tag){T_CL_MAIN, c, 0, NULL};
  c->t_status = (tp_tag){T_CL_STATUS, c, 0, NULL};
  c->t_recv = (tp_tag){T_CL_RECV, c, 0, NULL};
  grpc_metadata_array_init(&c->init_md);
  grpc_metadata_array_init(&c->trail_md);
  c->status_details = grpc_empty_slice();
  c->start_ns = core_mono_ns();
  c->next = t->calls;
  if (t->calls) t->calls->prev = c;
  t->calls = c;
  t->n_calls++;
  t->n_inflight++;
  inflight_add(t, 0, 1);
  return c;
}

/* Starts call c to `addr` with request bytes `buf` (taken). */
static void call_start(tp_call *c, const char *addr, const char *path, uint8_t *buf, size_t len,
                       int64_t timeout_ms) {
  tp_transport *t = c->t;
  if (!buf) {
    call_fail(c, CRUSTER_E_NOMEM, "out of memory%s", NULL);
  } else if (t->stopped || !t->started) {
    call_fail(c, t->stopped ? CRUSTER_E_SHUTTING_DOWN : CRUSTER_E_STATE, "transport %s",
              t->stopped ? "stopped" : "not started");
  } else if (!addr || core_parse_hostport(addr, NULL, 0, NULL) != 0) {
    call_fail(c, CRUSTER_E_INVALID_ARGUMENT, "\"%s\" is not host:port", addr ? addr : "(null)");
  } else if (timeout_ms <= 0) {
    call_fail(c, CRUSTER_E_INVALID_ARGUMENT, "the timeout must be > 0%s", NULL);
  } else if (core_size_exceeds(len, t->max_msg)) {
    char text[160];
    snprintf(text, sizeof text, "a message of %zu bytes is over the transport's limit (%lld)", len,
             (long long)t->max_msg);
    call_fail(c, CRUSTER_E_PAYLOAD_TOO_LARGE, "%s", text);
  }
  grpc_channel *ch = c->fail_status ? NULL : channel_for(t, addr);
  if (!c->fail_status && !ch) call_fail(c, CRUSTER_E_RUNNER_UNAVAILABLE, "no channel to %s", addr);
  if (!c->fail_status) {
    grpc_slice method = grpc_slice_from_static_string(path);
    c->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, t->cq, method, NULL,
                                       deadline_in(timeout_ms), NULL);
    grpc_slice_unref(method);
    if (!c->call) call_fail(c, CRUSTER_E_RUNNER_UNAVAILABLE, "cannot make a call to %s", addr);
  }
  if (c->fail_status) {
    free(buf);
    defer(c);
    return;
  }
  c->send_bb = bb_take(buf, len);
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = c->send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  /* Always with RECV_INITIAL_METADATA: a Trailers-Only answer never
   * completes the status otherwise (dependencies.md). */
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &c->recv_bb;
  /* One message at most (unary, or a Send whose caller takes no stream):
   * the status joins the batch, one completion per call. */
  size_t nops = 5;
  if (c->single) {
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &c->trail_md;
    ops[5].data.recv_status_on_client.status = &c->status;
    ops[5].data.recv_status_on_client.status_details = &c->status_details;
    nops = 6;
  }
  c->pending++;
  c->recv_posted = 1; /* (its RECV_MESSAGE) */
  TAG_RELEASE(&c->t_main);
  if (grpc_call_start_batch(c->call, ops, nops, &c->t_main, NULL) != GRPC_CALL_OK) {
    c->pending--;
    c->recv_posted = 0;
    call_fail(c, CRUSTER_E_INTERNAL, "gRPC refused the call%s", NULL);
    defer(c);
    return;
  }
  if (c->single) return;
  grpc_op st;
  memset(&st, 0, sizeof st);
  st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  st.data.recv_status_on_client.trailing_metadata = &c->trail_md;
  st.data.recv_status_on_client.status = &c->status;
  st.data.recv_status_on_client.status_details = &c->status_details;
  c->pending++;
  TAG_RELEASE(&c->t_status);
  if (grpc_call_start_batch(c->call, &st, 1, &c->t_status, NULL) != GRPC_CALL_OK) {
    c->pending--;
    call_fail(c, CRUSTER_E_INTERNAL, "gRPC refused the call%s", NULL);
    grpc_call_cancel(c->call, NULL);
    defer(c);
  }
}

/* A refusal to a health ping, reported as a plain ping would be. */
typedef struct tp_health_ud {
  void (*cb)(void *ud, int status, const tp_health *h);
  void *ud;
} tp_health_ud;

static void health_refused(void *ud, int status) {
  tp_health_ud *x = ud;
  x->cb(x->ud, status, NULL);
  free(x);
}

/* A call refused once the transport has stopped (no call object, no
 * async handle any more): the exit still comes from the loop, through a
 * command of its own. */
typedef struct tp_refusal {
  rt_cmd cmd;
  tp_exit_fn on_exit;
  void (*ping)(void *ud, int status);
  void *ud;
} tp_refusal;

static void refusal_run(void *ud, rt_cmd *cmd) {
  (void)cmd;
  tp_refusal *x = ud;
  if (x->ping)
    x->ping(x->ud, CRUSTER_E_SHUTTING_DOWN);
  else if (x->on_exit)
    x->on_exit(x->ud, CRUSTER_E_SHUTTING_DOWN, NULL, 0, "transport stopped");
  free(x);
}

/* 1 if the call was refused because t has stopped. */
static int refused_stopped(tp_transport *t, tp_exit_fn on_exit, void (*ping)(void *, int),
                           void *ud) {
  if (!t || !t->stopped) return 0;
  tp_refusal *x = calloc(1, sizeof(*x));
  if (x) {
    x->on_exit = on_exit;
    x->ping = ping;
    x->ud = ud;
    x->cmd.fn = refusal_run;
    x->cmd.ud = x;
    if (rt_post(t->loop, &x->cmd) == 0) return 1;
    free(x);
  }
  /* The loop is gone (or no memory): the only inline report. */
  if (ping)
    ping(ud, CRUSTER_E_SHUTTING_DOWN);
  else if (on_exit)
    on_exit(ud, CRUSTER_E_SHUTTING_DOWN, NULL, 0, "transport stopped");
  return 1;
}

static void refuse_nomem(tp_exit_fn on_exit, void (*ping)(void *, int), void *ud) {
  /* Not even a call object: the only case reported inline. */
  if (ping)
    ping(ud, CRUSTER_E_NOMEM);
  else if (on_exit)
    on_exit(ud, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
}

void tp_call_send(tp_transport *t, const char *addr, const core_env *env, const tp_meta *meta,
                  int64_t timeout_ms, tp_chunk_fn on_chunk, tp_exit_fn on_exit, void *ud,
                  tp_call **out) {
  if (out) *out = NULL;
  if (refused_stopped(t, on_exit, NULL, ud)) return;
  tp_call *c = t ? call_new(t, M_SEND, on_exit, ud) : NULL;
  if (!c) {
    refuse_nomem(on_exit, NULL, ud);
    return;
  }
  c->on_chunk = on_chunk;
  c->single = !(meta && meta->stream);
  if (out) *out = c;
  size_t n = 0;
  uint8_t *buf = env ? tp_wire_encode_env(env, meta, &n) : NULL;
  if (!env) {
    call_fail(c, CRUSTER_E_INVALID_ARGUMENT, "no envelope%s", NULL);
    defer(c);
    return;
  }
  call_start(c, addr, method_paths[M_SEND], buf, n, timeout_ms);
}

void tp_call_notify(tp_transport *t, const char *addr, const core_env *env, const tp_meta *meta,
                    int64_t timeout_ms, tp_exit_fn on_exit, void *ud, tp_call **out) {
  if (out) *out = NULL;
  if (refused_stopped(t, on_exit, NULL, ud)) return;
  tp_call *c = t ? call_new(t, M_NOTIFY, on_exit, ud) : NULL;
  if (!c) {
    refuse_nomem(on_exit, NULL, ud);
    return;
  }
  if (out) *out = c;
  size_t n = 0;
  uint8_t *buf = env ? tp_wire_encode_env(env, meta, &n) : NULL;
  if (!env) {
    call_fail(c, CRUSTER_E_INVALID_ARGUMENT, "no envelope%s", NULL);
    defer(c);
    return;
  }
  call_start(c, addr, method_paths[M_NOTIFY], buf, n, timeout_ms);
}

void tp_call_interrupt(tp_transport *t, const char *addr, const char *type, const char *id,
                       const char *group, int32_t shard, int64_t timeout_ms, tp_exit_fn on_exit,
                       void *ud, tp_call **out) {
  if (out) *out = NULL;
  if (refused_stopped(t, on_exit, NULL, ud)) return;
  tp_call *c = t ? call_new(t, M_INTERRUPT, on_exit, ud) : NULL;
  if (!c) {
    refuse_nomem(on_exit, NULL, ud);
    return;
  }
  if (out) *out = c;
  if (!type || !id || !group) {
    call_fail(c, CRUSTER_E_INVALID_ARGUMENT, "type, id and group are required%s", NULL);
    defer(c);
    return;
  }
  size_t n = 0;
  uint8_t *buf = tp_wire_encode_interrupt(type, id, group, shard, &n);
  call_start(c, addr, method_paths[M_INTERRUPT], buf, n, timeout_ms);
}

void tp_ping(tp_transport *t, const char *addr, int64_t timeout_ms,
             void (*cb)(void *ud, int status), void *ud) {
  if (refused_stopped(t, NULL, cb, ud)) return;
  tp_call *c = t ? call_new(t, M_PING, NULL, ud) : NULL;
  if (!c) {
    refuse_nomem(NULL, cb, ud);
    return;
  }
  c->ping_cb = cb;
  uint8_t *buf = malloc(1);
  call_start(c, addr, method_paths[M_PING], buf, 0, timeout_ms);
}

void tp_call_raw(tp_transport *t, const char *addr, const char *path, const void *bytes,
                 size_t len, int64_t timeout_ms, tp_exit_fn on_exit, void *ud) {
  if (refused_stopped(t, on_exit, NULL, ud)) return;
  tp_call *c = t ? call_new(t, M_RAW, on_exit, ud) : NULL;
  if (!c) {
    refuse_nomem(on_exit, NULL, ud);
    return;
  }
  uint8_t *buf = core_memdup(bytes, len);
  if (!path) {
    free(buf);
    call_fail(c, CRUSTER_E_INVALID_ARGUMENT, "no method%s", NULL);
    defer(c);
    return;
  }
  call_start(c, addr, path, buf, len, timeout_ms);
}

void tp_call_pause(tp_call *c) {
  if (c && !c->single) c->paused = 1;
}

void tp_call_resume(tp_call *c) {
  if (!c || !c->paused) return;
  c->paused = 0;
  if (c->recv_posted || c->recv_done) return;
  if (c->done || c->have_exit || c->fail_status) {
    c->recv_done = 1;
    call_maybe_finish(c);
    return;
  }
  if (c->status_done && c->status != GRPC_STATUS_OK) {
    c->recv_done = 1;
    call_maybe_finish(c);
    return;
  }
  start_recv(c);
  if (!c->recv_posted) call_maybe_finish(c);
}

void tp_call_cancel(tp_call *c) {
  if (!c || c->done) return;
  if (c->call) grpc_call_cancel(c->call, NULL);
  fire_exit(c, CRUSTER_E_CANCELLED, NULL, 0, "cancelled");
  call_maybe_finish(c);
}

/* ---- dispatch ------------------------------------------------------------- */

/* Runs the completions queued so far, then looks again (a few rounds),
 * while the completion thread, seeing `draining`, adds to the list without
 * waking the loop. Worker jobs the completions start (calls from other
 * runners) wake the pool once per list taken, not once per call. After
 * DRAIN_ROUNDS the loop wakes itself and goes on with its other work first
 * (timers, commands). A deferred call (defer) has woken it already. */
#define DRAIN_ROUNDS 4
static void process_events(tp_transport *t) {
  for (int round = 0;; round++) {
    uv_mutex_lock(&t->mu);
    tp_tag *e = NULL;
    int left = 0;
    if (round < DRAIN_ROUNDS) {
      e = t->ev_head;
      t->ev_head = t->ev_tail = NULL;
    } else {
      left = t->ev_head != NULL;
    }
    t->draining = e != NULL;
    uv_mutex_unlock(&t->mu);
    if (left && t->async) uv_async_send(t->async);
    if (!e && (round >= DRAIN_ROUNDS || !t->deferred)) break;
    int outer = rt_defer_begin(t->loop);
    process_list(t, e);
    rt_defer_end(t->loop, outer);
  }
}

static void process_list(tp_transport *t, tp_tag *e) {
  while (e) {
    /* Read before the handler: it may reuse the tag for its next batch,
     * or free its object. */
    tp_tag *next = e->next;
    tp_tag *tag = e;
    int ok = e->ok;
    switch (tag->kind) {
      case T_REQUEST: on_request(tag->obj, ok); break;
      case T_SRV_CLOSE: on_srv_close(tag->obj, ok); break;
      case T_SRV_RECV: on_srv_recv(tag->obj, ok); break;
      case T_SRV_SEND: on_srv_send(tag->obj, ok); break;
      case T_CL_MAIN: on_cl_main(tag->obj, ok); break;
      case T_CL_STATUS: on_cl_status(tag->obj, ok); break;
      case T_CL_RECV: on_cl_recv(tag->obj, ok); break;
      case T_SHUTDOWN: t->shutdown_done = 1; break;
    }
    e = next;
  }
  while (t->deferred) {
    tp_call *c = t->deferred;
    t->deferred = c->next_deferred;
    if (!t->deferred) t->deferred_tail = NULL;
    c->pending--;
    call_maybe_finish(c);
  }
}

void tp_ping_health(tp_transport *t, const char *addr, int64_t timeout_ms,
                    void (*cb)(void *ud, int status, const tp_health *h), void *ud) {
  if (!cb) return;
  if (!t) {
    cb(ud, CRUSTER_E_INVALID_ARGUMENT, NULL);
    return;
  }
  if (t->stopped) {
    tp_health_ud *x = malloc(sizeof(*x));
    if (!x) {
      cb(ud, CRUSTER_E_SHUTTING_DOWN, NULL);
      return;
    }
    x->cb = cb;
    x->ud = ud;
    if (!refused_stopped(t, NULL, health_refused, x)) health_refused(x, CRUSTER_E_NOMEM);
    return;
  }
  tp_call *c = call_new(t, M_PING, NULL, ud);
  if (!c) {
    cb(ud, CRUSTER_E_NOMEM, NULL);
    return;
  }
  c->health_cb = cb;
  uint8_t *buf = malloc(1);
  call_start(c, addr, method_paths[M_PING], buf, 0, timeout_ms);
}

void tp_set_ping_handler(tp_transport *t, void (*fn)(void *ud, tp_health *out), void *ud) {
  if (!t) return;
  t->on_ping = fn;
  t->on_ping_ud = ud;
}
