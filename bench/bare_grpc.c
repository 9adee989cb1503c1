/* bare_grpc: the bare gRPC C-core unary ping shared by the benches (bare_grpc.h). */
#include "bare_grpc.h"

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

uint64_t bench_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

void bench_summary(bench_stats *s, double *ops, double *p50_us, double *p99_us) {
  double secs = (double)(s->t1 - s->t0) / 1e9;
  *ops = s->n / (secs > 0 ? secs : 1);
  qsort(s->lat, s->n, sizeof(uint64_t), cmp_u64);
  *p50_us = s->n ? s->lat[s->n / 2] / 1e3 : 0;
  *p99_us = s->n ? s->lat[(s->n * 99) / 100] / 1e3 : 0;
}

/* ---- the server ---------------------------------------------------------------- */

typedef struct bare_call {
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *recv;
  int cancelled;
  int pending;
  int stage; /* 0 requested, 1 receiving, 2 answered */
  int tags[3];
} bare_call;

static grpc_server *bare_server;
static int bare_shutdown_tag;
static grpc_completion_queue *bare_cq;

static void bare_post(void) {
  bare_call *c = calloc(1, sizeof *c);
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  c->pending = 1;
  grpc_server_request_call(bare_server, &c->call, &c->details, &c->md, bare_cq, bare_cq, &c->tags[0]);
}

static void bare_free(bare_call *c) {
  if (c->call) grpc_call_unref(c->call);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  if (c->recv) grpc_byte_buffer_destroy(c->recv);
  free(c);
}

static void bare_thread(void *arg) {
  (void)arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(bare_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    if (ev.tag == &bare_shutdown_tag) { /* every call is done: stop the queue */
      grpc_completion_queue_shutdown(bare_cq);
      continue;
    }
    int *tag = ev.tag;
    int which = *tag;
    bare_call *c = (bare_call *)((char *)(tag - which) - offsetof(bare_call, tags));
    c->pending--;
    if (which == 0) {
      if (!ev.success) {
        bare_free(c);
        continue;
      }
      bare_post();
      grpc_op close_op;
      memset(&close_op, 0, sizeof close_op);
      close_op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
      close_op.data.recv_close_on_server.cancelled = &c->cancelled;
      c->pending++;
      c->tags[1] = 1;
      grpc_call_start_batch(c->call, &close_op, 1, &c->tags[1], NULL);
      grpc_op ops[2];
      memset(ops, 0, sizeof ops);
      ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
      ops[1].op = GRPC_OP_RECV_MESSAGE;
      ops[1].data.recv_message.recv_message = &c->recv;
      c->pending++;
      c->tags[2] = 2;
      c->stage = 1;
      grpc_call_start_batch(c->call, ops, 2, &c->tags[2], NULL);
    } else if (which == 2 && c->stage == 1 && ev.success && c->recv) {
      /* answer: the request's bytes back, status OK */
      static grpc_slice empty;
      empty = grpc_empty_slice();
      grpc_op ops[2];
      memset(ops, 0, sizeof ops);
      ops[0].op = GRPC_OP_SEND_MESSAGE;
      ops[0].data.send_message.send_message = c->recv;
      ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
      ops[1].data.send_status_from_server.status = GRPC_STATUS_OK;
      ops[1].data.send_status_from_server.status_details = &empty;
      c->pending++;
      c->stage = 2;
      grpc_call_start_batch(c->call, ops, 2, &c->tags[2], NULL);
    }
    if (c->pending == 0) bare_free(c);
  }
}


static uv_thread_t bare_th;

int bare_server_start(void) {
  bare_cq = grpc_completion_queue_create_for_next(NULL);
  bare_server = grpc_server_create(NULL, NULL);
  grpc_server_register_completion_queue(bare_server, bare_cq, NULL);
  grpc_server_credentials *sc = grpc_insecure_server_credentials_create();
  int port = grpc_server_add_http2_port(bare_server, "127.0.0.1:0", sc);
  grpc_server_credentials_release(sc);
  if (port <= 0) {
    fprintf(stderr, "bare_grpc: cannot listen\n");
    exit(1);
  }
  grpc_server_start(bare_server);
  for (int i = 0; i < 128; i++) bare_post();
  uv_thread_create(&bare_th, bare_thread, NULL);
  return port;
}

void bare_server_stop(void) {
  grpc_server_shutdown_and_notify(bare_server, bare_cq, &bare_shutdown_tag);
  grpc_server_cancel_all_calls(bare_server);
  uv_thread_join(&bare_th);
  grpc_server_destroy(bare_server);
  grpc_completion_queue_destroy(bare_cq);
}

/* ---- the client ---------------------------------------------------------------- */

typedef struct bare_req {
  grpc_call *call;
  grpc_byte_buffer *send, *recv;
  grpc_metadata_array im, tm;
  grpc_status_code status;
  grpc_slice details;
  uint64_t start;
} bare_req;

static void bare_start(grpc_channel *ch, grpc_completion_queue *cq, bare_req *r, const char *payload,
                       size_t len) {
  memset(r, 0, sizeof *r);
  grpc_slice method = grpc_slice_from_static_string("/bench.Bare/Ping");
  r->call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                     gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  grpc_slice s = grpc_slice_from_copied_buffer(payload, len);
  r->send = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  grpc_metadata_array_init(&r->im);
  grpc_metadata_array_init(&r->tm);
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = r->send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &r->im;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &r->recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &r->tm;
  ops[5].data.recv_status_on_client.status = &r->status;
  ops[5].data.recv_status_on_client.status_details = &r->details;
  r->start = bench_mono_ns();
  grpc_call_start_batch(r->call, ops, 6, r, NULL);
}

static void bare_end(bare_req *r) {
  grpc_call_unref(r->call);
  grpc_byte_buffer_destroy(r->send);
  if (r->recv) grpc_byte_buffer_destroy(r->recv);
  grpc_metadata_array_destroy(&r->im);
  grpc_metadata_array_destroy(&r->tm);
  grpc_slice_unref(r->details);
}

void bare_run(const char *addr, int callers, size_t len, double secs, bench_stats *st) {
  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(addr, cr, NULL);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  char *payload = calloc(1, len);
  bare_req *reqs = calloc((size_t)callers, sizeof *reqs);
  /* one warm-up call connects the channel */
  bare_start(ch, cq, &reqs[0], payload, len);
  grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  bare_end(&reqs[0]);
  st->n = 0;
  st->t0 = bench_mono_ns();
  uint64_t until = st->t0 + (uint64_t)(secs * 1e9);
  for (int i = 0; i < callers; i++) bare_start(ch, cq, &reqs[i], payload, len);
  int live = callers, failed = 0;
  while (live > 0) {
    grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    bare_req *r = ev.tag;
    uint64_t now = bench_mono_ns();
    if (!ev.success || r->status != GRPC_STATUS_OK) failed++;
    if (st->n < BENCH_MAX_CALLS) st->lat[st->n++] = now - r->start;
    bare_end(r);
    if (now < until && !failed)
      bare_start(ch, cq, r, payload, len);
    else
      live--;
  }
  st->t1 = bench_mono_ns();
  grpc_channel_destroy(ch);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  grpc_channel_credentials_release(cr);
  free(reqs);
  free(payload);
  if (failed) {
    fprintf(stderr, "bare_grpc: %d bare calls failed\n", failed);
    exit(1);
  }
}

