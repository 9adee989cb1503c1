/* Streamed calls on one runner (cruster_send_stream, cruster_stream_*,
 * cruster_request_yield): order, end, errors, the default single item,
 * cancellation, backpressure (bounded memory) and bad input. Streams across
 * runners: tests/integration/test_cluster.c. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "test_support.h"
#include "entity/entity_internal.h" /* the sequence limit (one test) */

#define WINDOW 16 /* EM_STREAM_WINDOW, as documented in entity.h */

/* ---- what the handlers share with the test ------------------------------- */

typedef struct hstate {
  atomic_int yields_ok;     /* yields that returned CRUSTER_OK */
  atomic_int last_yield_rc; /* the status of the yield that ended the loop */
  atomic_int done;          /* the handler finished */
  atomic_int gate;          /* 1: the gated handler may go on */
  atomic_int in_yield;      /* the handler is inside a yield */
} hstate;

static hstate H;

static void hstate_reset(void) {
  atomic_store(&H.yields_ok, 0);
  atomic_store(&H.last_yield_rc, 1);
  atomic_store(&H.done, 0);
  atomic_store(&H.gate, 0);
  atomic_store(&H.in_yield, 0);
}

static long payload_num(cruster_request *req) {
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char buf[32];
  snprintf(buf, sizeof(buf), "%.*s", (int)(len < 31 ? len : 31), p ? p : "");
  return strtol(buf, NULL, 10);
}

/* Yields "item-0" .. "item-(N-1)" (N = payload), then ends. */
static void h_count(void *user, cruster_request *req) {
  (void)user;
  long n = payload_num(req);
  for (long i = 0; i < n; i++) {
    char buf[32];
    int k = snprintf(buf, sizeof(buf), "item-%ld", i);
    int rc = cruster_request_yield(req, buf, (size_t)k);
    if (rc != CRUSTER_OK) {
      cruster_request_fail(req, CRUSTER_E_INTERNAL, "yield failed");
      return;
    }
    atomic_fetch_add(&H.yields_ok, 1);
  }
  cruster_request_reply(req, NULL, 0);
}

/* Three items, then a non-empty reply: the final item. */
static void h_final(void *user, cruster_request *req) {
  (void)user;
  cruster_request_yield(req, "a", 1);
  cruster_request_yield(req, "b", 1);
  cruster_request_yield(req, "", 0); /* an empty item is an item */
  cruster_request_reply(req, "final", 5);
}

/* Two items, then an application error. */
static void h_fail(void *user, cruster_request *req) {
  (void)user;
  cruster_request_yield(req, "x0", 2);
  cruster_request_yield(req, "x1", 2);
  cruster_request_fail(req, -1042, "insufficient funds after two items");
}

/* Knows nothing of streams. */
static void h_plain(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, "plain-reply", 11);
}

static void h_plain_empty(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, NULL, 0);
}

/* Yields until a yield fails; records how it ended. */
static void h_forever(void *user, cruster_request *req) {
  (void)user;
  int rc;
  for (long i = 0;; i++) {
    char buf[32];
    int k = snprintf(buf, sizeof(buf), "item-%ld", i);
    atomic_store(&H.in_yield, 1);
    rc = cruster_request_yield(req, buf, (size_t)k);
    atomic_store(&H.in_yield, 0);
    if (rc != CRUSTER_OK) break;
    atomic_fetch_add(&H.yields_ok, 1);
  }
  atomic_store(&H.last_yield_rc, rc);
  cruster_request_reply(req, NULL, 0);
  atomic_store(&H.done, 1);
}

/* Waits for the gate, then yields N items (N = payload). */
static void h_gated(void *user, cruster_request *req) {
  (void)user;
  while (!atomic_load(&H.gate)) ts_sleep_ms(1);
  h_count(user, req);
}

/* A yield under a plain send: refused; the reply carries its status. */
static void h_yield_plain(void *user, cruster_request *req) {
  (void)user;
  int rc = cruster_request_yield(req, "x", 1);
  char buf[64];
  int k = snprintf(buf, sizeof(buf), "%d/%d", rc, cruster_request_is_stream(req));
  cruster_request_reply(req, buf, (size_t)k);
}

/* An item over max_payload_size is refused; the stream goes on. */
static void h_oversized(void *user, cruster_request *req) {
  (void)user;
  static char big[2048];
  int rc = cruster_request_yield(req, big, sizeof(big)); /* max_payload_size=1024 */
  char buf[32];
  int k = snprintf(buf, sizeof(buf), "rc=%d", rc);
  cruster_request_yield(req, buf, (size_t)k);
  int rc2 = cruster_request_yield(req, NULL, 5);
  k = snprintf(buf, sizeof(buf), "null=%d", rc2);
  cruster_request_yield(req, buf, (size_t)k);
  cruster_request_reply(req, NULL, 0);
}

/* The producer's sequence limit: the item numbered 2147483646 is the last. */
static void h_seq_limit(void *user, cruster_request *req) {
  (void)user;
  uv_mutex_lock(&req->stream->mu);
  req->stream->next_seq = INT32_MAX - 1;
  uv_mutex_unlock(&req->stream->mu);
  int a = cruster_request_yield(req, "last", 4);
  int b = cruster_request_yield(req, "over", 4);
  char buf[32];
  int k = snprintf(buf, sizeof(buf), "%d,%d", a, b);
  cruster_request_reply(req, buf, (size_t)k); /* the final item */
}

static cruster_runtime *make_rt(void) {
  cruster_entity_def *d = def_new("S");
  add(d, "count", 0, h_count, NULL);
  add(d, "final", 0, h_final, NULL);
  add(d, "fail", 0, h_fail, NULL);
  add(d, "plain", 0, h_plain, NULL);
  add(d, "plain_empty", 0, h_plain_empty, NULL);
  add(d, "forever", 0, h_forever, NULL);
  add(d, "gated", 0, h_gated, NULL);
  add(d, "yield_plain", 0, h_yield_plain, NULL);
  add(d, "oversized", 0, h_oversized, NULL);
  add(d, "seq_limit", 0, h_seq_limit, NULL);
  add(d, "persisted", CRUSTER_RPC_PERSISTED, h_plain, NULL);
  cruster_runtime *rt = ts_runtime("max_payload_size=1024;worker_threads=2", &d, 1);
  cruster_entity_def_free(d);
  return rt;
}

/* ---- a stream's consumer ------------------------------------------------------ */

#define KEEP 64

typedef struct sink {
  uv_mutex_t mu;
  uv_cond_t cv;
  int n;              /* items received */
  int order_ok;       /* every seq was the next one */
  int overlap;        /* two callbacks of the stream overlapped */
  int after_end;      /* an item came after the end */
  atomic_int in_cb;
  char items[KEEP][64];
  size_t lens[KEEP];
  int stop_at;        /* return 1 at this seq (-1: never) */
  int block_at;       /* wait for `release` at this seq (-1: never) */
  atomic_int release;
  atomic_int blocked; /* the callback waits at block_at */
  int ends;
  int status;
  char msg[512];
} sink;

static void sink_init(sink *s) {
  memset(s, 0, sizeof(*s));
  uv_mutex_init(&s->mu);
  uv_cond_init(&s->cv);
  s->order_ok = 1;
  s->stop_at = -1;
  s->block_at = -1;
}

static void sink_destroy(sink *s) {
  uv_cond_destroy(&s->cv);
  uv_mutex_destroy(&s->mu);
}

static int on_item(void *user, int32_t seq, const void *data, size_t len) {
  sink *s = user;
  if (atomic_fetch_add(&s->in_cb, 1) != 0) s->overlap = 1;
  if (seq == s->block_at) {
    atomic_store(&s->blocked, 1);
    while (!atomic_load(&s->release)) ts_sleep_ms(1);
  }
  uv_mutex_lock(&s->mu);
  if (s->ends) s->after_end = 1;
  if (seq != s->n) s->order_ok = 0;
  if (s->n < KEEP) {
    snprintf(s->items[s->n], sizeof(s->items[0]), "%.*s", (int)len, data ? (const char *)data : "");
    s->lens[s->n] = len;
  }
  s->n++;
  uv_cond_broadcast(&s->cv);
  uv_mutex_unlock(&s->mu);
  atomic_fetch_sub(&s->in_cb, 1);
  return seq == s->stop_at ? 1 : 0;
}

static void on_end(void *user, int status, const void *data, size_t len, const char *msg) {
  sink *s = user;
  uv_mutex_lock(&s->mu);
  (void)data;
  if (len) s->after_end = 1; /* the end carries no data */
  s->ends++;
  s->status = status;
  if (msg) snprintf(s->msg, sizeof(s->msg), "%s", msg);
  uv_cond_broadcast(&s->cv);
  uv_mutex_unlock(&s->mu);
}

static void sink_wait_end(sink *s) {
  uv_mutex_lock(&s->mu);
  while (!s->ends) uv_cond_wait(&s->cv, &s->mu);
  uv_mutex_unlock(&s->mu);
}

static int stream_str(cruster_runtime *rt, const char *id, const char *method, const char *payload,
                      const cruster_call_opts *o, sink *s) {
  cruster_error *err = NULL;
  int st = cruster_send_stream(rt, "S", id, method, payload, payload ? strlen(payload) : 0, o,
                               on_item, on_end, s, &err);
  if (st != CRUSTER_OK) {
    snprintf(s->msg, sizeof(s->msg), "%s", cruster_error_message(err));
    cruster_error_free(err);
  }
  return st;
}

/* ---- tests ------------------------------------------------------------------- */

static void many_items_arrive_in_order_then_the_end(void **state) {
  (void)state;
  hstate_reset();
  cruster_runtime *rt = make_rt();
  for (int mode = 0; mode < 2; mode++) {
    sink s;
    sink_init(&s);
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    if (mode) o.flags = CRUSTER_CALL_INLINE_CALLBACK;
    assert_int_equal(stream_str(rt, mode ? "inline" : "worker", "count", "5000", &o, &s),
                     CRUSTER_OK);
    sink_wait_end(&s);
    if (s.status != CRUSTER_OK) fprintf(stderr, "mode %d: %d items, yields %d: %s\n", mode, s.n, atomic_load(&H.yields_ok), s.msg);
    assert_int_equal(s.status, CRUSTER_OK);
    assert_int_equal(s.n, 5000);
    assert_true(s.order_ok);
    assert_false(s.overlap);
    assert_false(s.after_end);
    assert_int_equal(s.ends, 1);
    for (int i = 0; i < KEEP; i++) {
      char want[32];
      snprintf(want, sizeof(want), "item-%d", i);
      assert_string_equal(s.items[i], want);
    }
    sink_destroy(&s);
  }
  assert_true(ts_metric(rt, "cluster_stream_calls_total", NULL) >= 2);
  assert_true(ts_metric(rt, "cluster_stream_items_total", NULL) >= 10000);
  cruster_runtime_free(rt);
}

static void a_non_empty_reply_is_the_final_item(void **state) {
  (void)state;
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  assert_int_equal(stream_str(rt, "f", "final", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_OK);
  assert_int_equal(s.n, 4);
  assert_string_equal(s.items[0], "a");
  assert_string_equal(s.items[1], "b");
  assert_int_equal(s.lens[2], 0);
  assert_string_equal(s.items[3], "final");
  assert_true(s.order_ok);
  sink_destroy(&s);
  cruster_runtime_free(rt);
}

static void an_error_ends_the_stream_with_code_and_message(void **state) {
  (void)state;
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  assert_int_equal(stream_str(rt, "e", "fail", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.items[0], "x0");
  assert_string_equal(s.items[1], "x1");
  assert_int_equal(s.status, -1042);
  assert_string_equal(s.msg, "insufficient funds after two items");
  sink_destroy(&s);
  cruster_runtime_free(rt);
}

static void an_ordinary_handler_gives_its_reply_as_the_single_item(void **state) {
  (void)state;
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  assert_int_equal(stream_str(rt, "p", "plain", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_OK);
  assert_int_equal(s.n, 1);
  assert_string_equal(s.items[0], "plain-reply");
  sink_destroy(&s);
  /* An empty reply: no item, just the end. */
  sink_init(&s);
  assert_int_equal(stream_str(rt, "p", "plain_empty", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_OK);
  assert_int_equal(s.n, 0);
  sink_destroy(&s);
  /* And a yield under a plain send is refused, the handler can tell. */
  char *out = NULL;
  assert_int_equal(send_str(rt, "S", "p", "yield_plain", NULL, NULL, &out, NULL), CRUSTER_OK);
  char want[32];
  snprintf(want, sizeof(want), "%d/0", CRUSTER_E_STATE);
  assert_string_equal(out, want);
  cruster_free(out);
  cruster_runtime_free(rt);
}

static void the_handler_sees_the_callers_deadline(void **state) {
  (void)state;
  hstate_reset();
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  s.block_at = 0; /* the caller never gets past the first item... */
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 300; /* ...so the deadline ends the stream */
  assert_int_equal(stream_str(rt, "d", "forever", NULL, &o, &s), CRUSTER_OK);
  assert_true(ts_wait_ge(&H.done, 1));
  assert_int_equal(atomic_load(&H.last_yield_rc), CRUSTER_E_CANCELLED);
  atomic_store(&s.release, 1);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_E_TIMEOUT);
  assert_false(s.overlap);
  sink_destroy(&s);
  cruster_runtime_free(rt);
}

static void the_caller_can_stop_a_stream(void **state) {
  (void)state;
  hstate_reset();
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  s.stop_at = 3;
  assert_int_equal(stream_str(rt, "s", "forever", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_E_CANCELLED);
  assert_int_equal(s.n, 4); /* items 0..3, nothing after the stop */
  assert_true(ts_wait_ge(&H.done, 1));
  assert_int_equal(atomic_load(&H.last_yield_rc), CRUSTER_E_CANCELLED);
  sink_destroy(&s);
  cruster_runtime_free(rt);
}

/* Waits until `a` reaches n, then checks that it stays there while the
 * producer waits in a yield. */
static void assert_held_at(atomic_int *a, int n) {
  assert_true(ts_wait_ge(a, n));
  int64_t end = ts_mono_ms() + 5000;
  while (!atomic_load(&H.in_yield) && ts_mono_ms() < end) ts_sleep_ms(1);
  assert_true(atomic_load(&H.in_yield));
  ts_sleep_ms(200);
  assert_int_equal(atomic_load(a), n);
  assert_true(atomic_load(&H.in_yield));
}

static void a_slow_callback_holds_the_handler_back(void **state) {
  (void)state;
  hstate_reset();
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  s.block_at = 0;
  s.stop_at = 99;
  assert_int_equal(stream_str(rt, "bp", "forever", NULL, NULL, &s), CRUSTER_OK);
  /* Item 0 is in the callback (taken), WINDOW more wait: the next yield
   * blocks. Whatever the speeds, never more. */
  assert_true(ts_wait_ge(&s.blocked, 1));
  assert_held_at(&H.yields_ok, 1 + WINDOW);
  atomic_store(&s.release, 1);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_E_CANCELLED);
  assert_int_equal(s.n, 100);
  assert_true(s.order_ok);
  assert_true(ts_wait_ge(&H.done, 1));
  sink_destroy(&s);
  cruster_runtime_free(rt);
}

static void the_blocking_reader_reads_in_order_and_holds_the_handler_back(void **state) {
  (void)state;
  hstate_reset();
  cruster_runtime *rt = make_rt();
  cruster_stream *s = NULL;
  cruster_error *err = NULL;
  assert_int_equal(cruster_stream_open(rt, "S", "r", "gated", "100", 3, NULL, &s, &err), CRUSTER_OK);
  void *item = NULL;
  size_t len = 0;
  int done = 7;
  /* Nothing yet: a wait of its own ends, the stream goes on. */
  assert_int_equal(cruster_stream_next(s, 20, &item, &len, &done, &err), CRUSTER_E_TIMEOUT);
  assert_int_equal(done, 0);
  assert_null(item);
  cruster_error_free(err);
  err = NULL;
  atomic_store(&H.gate, 1);
  /* Not reading: WINDOW items wait for the reader, WINDOW more in the call. */
  assert_true(ts_wait_ge(&H.yields_ok, 2 * WINDOW));
  ts_sleep_ms(200);
  assert_int_equal(atomic_load(&H.yields_ok), 2 * WINDOW);
  for (int i = 0; i < 100; i++) {
    assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), CRUSTER_OK);
    assert_int_equal(done, 0);
    char want[32];
    snprintf(want, sizeof(want), "item-%d", i);
    assert_int_equal(len, strlen(want));
    assert_string_equal((char *)item, want);
    cruster_free(item);
  }
  assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), CRUSTER_OK);
  assert_int_equal(done, 1);
  assert_null(item);
  assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), CRUSTER_OK);
  assert_int_equal(done, 1);
  cruster_stream_close(s);

  /* An error end, and the same answer again. */
  assert_int_equal(cruster_stream_open(rt, "S", "r2", "fail", NULL, 0, NULL, &s, &err), CRUSTER_OK);
  assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), CRUSTER_OK);
  cruster_free(item);
  assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), CRUSTER_OK);
  cruster_free(item);
  for (int k = 0; k < 2; k++) {
    assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), -1042);
    assert_int_equal(done, 1);
    assert_string_equal(cruster_error_message(err), "insufficient funds after two items");
    cruster_error_free(err);
    err = NULL;
  }
  cruster_stream_close(s);

  /* Closing a stream in the middle stops its handler. */
  hstate_reset();
  assert_int_equal(cruster_stream_open(rt, "S", "r3", "forever", NULL, 0, NULL, &s, &err), CRUSTER_OK);
  assert_int_equal(cruster_stream_next(s, 0, &item, &len, &done, &err), CRUSTER_OK);
  assert_string_equal((char *)item, "item-0");
  cruster_free(item);
  cruster_stream_close(s);
  assert_true(ts_wait_ge(&H.done, 1));
  assert_int_equal(atomic_load(&H.last_yield_rc), CRUSTER_E_CANCELLED);
  cruster_runtime_free(rt);
}

static void stopping_the_runtime_ends_a_blocked_stream(void **state) {
  (void)state;
  hstate_reset();
  cruster_runtime *rt = make_rt();
  cruster_stream *s = NULL;
  cruster_error *err = NULL;
  assert_int_equal(cruster_stream_open(rt, "S", "stop", "forever", NULL, 0, NULL, &s, &err),
                   CRUSTER_OK);
  assert_true(ts_wait_ge(&H.yields_ok, 2 * WINDOW)); /* held back */
  cruster_runtime_stop(rt, NULL);
  assert_true(ts_wait_ge(&H.done, 1));
  assert_int_equal(atomic_load(&H.last_yield_rc), CRUSTER_E_CANCELLED);
  /* What was buffered is still readable, then the stream's error. */
  int n = 0, st, done = 0;
  void *item = NULL;
  size_t len;
  while ((st = cruster_stream_next(s, 0, &item, &len, &done, &err)) == CRUSTER_OK && !done) {
    cruster_free(item);
    n++;
  }
  /* (The handler's own answer may still have reached it during the stop.) */
  assert_int_equal(done, 1);
  if (st == CRUSTER_OK) assert_int_equal(n, 2 * WINDOW);
  else assert_true(n <= 2 * WINDOW);
  cruster_error_free(err);
  cruster_runtime_free(rt);
  cruster_stream_close(s); /* after free: only the reader's memory */
}

static void bad_input_is_refused(void **state) {
  (void)state;
  cruster_runtime *rt = make_rt();
  sink s;
  sink_init(&s);
  cruster_error *err = NULL;
  assert_int_equal(cruster_send_stream(rt, "S", "b", "count", "1", 1, NULL, NULL, on_end, &s, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_int_equal(cruster_send_stream(rt, "S", "b", "count", "1", 1, NULL, on_item, NULL, &s, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_int_equal(cruster_send_stream(NULL, "S", "b", "count", "1", 1, NULL, on_item, on_end, &s,
                                       &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_int_equal(cruster_send_stream(rt, "S", "b", "count", NULL, 5, NULL, on_item, on_end, &s,
                                       &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_int_equal(cruster_send_stream(rt, "S", "", "count", NULL, 0, NULL, on_item, on_end, &s,
                                       &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  static char big[4096];
  assert_int_equal(cruster_send_stream(rt, "S", "b", "count", big, sizeof(big), NULL, on_item,
                                       on_end, &s, &err),
                   CRUSTER_E_PAYLOAD_TOO_LARGE);
  cruster_error_free(err);
  assert_int_equal(cruster_send_stream(rt, "S", "b", "count", big, SIZE_MAX, NULL, on_item, on_end,
                                       &s, &err),
                   CRUSTER_E_PAYLOAD_TOO_LARGE);
  cruster_error_free(err);
  /* Options that would persist it. */
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_PERSISTED;
  assert_int_equal(stream_str(rt, "b", "count", "1", &o, &s), CRUSTER_E_INVALID_ARGUMENT);
  o.flags = 0;
  o.idempotency_key = "k";
  o.idempotency_key_len = 1;
  assert_int_equal(stream_str(rt, "b", "count", "1", &o, &s), CRUSTER_E_INVALID_ARGUMENT);
  o.idempotency_key = NULL;
  o.idempotency_key_len = 0;
  o.deliver_at_ms = 1;
  assert_int_equal(stream_str(rt, "b", "count", "1", &o, &s), CRUSTER_E_INVALID_ARGUMENT);
  o.deliver_at_ms = 0;
  o.timeout_ms = -1;
  assert_int_equal(stream_str(rt, "b", "count", "1", &o, &s), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(s.ends, 0);
  assert_int_equal(s.n, 0);
  sink_destroy(&s);

  /* Refused at the end callback: unknown type, unknown method, persisted. */
  struct {
    const char *type, *method;
    int status;
  } cases[] = {{"Nope", "count", CRUSTER_E_UNKNOWN_ENTITY_TYPE},
               {"S", "nope", CRUSTER_E_UNKNOWN_METHOD},
               {"S", "persisted", CRUSTER_E_INVALID_ARGUMENT}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    sink_init(&s);
    assert_int_equal(cruster_send_stream(rt, cases[i].type, "b", cases[i].method, NULL, 0, NULL,
                                         on_item, on_end, &s, &err),
                     CRUSTER_OK);
    sink_wait_end(&s);
    assert_int_equal(s.status, cases[i].status);
    assert_int_equal(s.n, 0);
    assert_true(strlen(s.msg) > 0);
    sink_destroy(&s);
  }

  /* The blocking reader's own checks. */
  cruster_stream *rs = NULL;
  assert_int_equal(cruster_stream_open(rt, "S", "b", "count", "1", 1, NULL, NULL, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  int done = 5;
  assert_int_equal(cruster_stream_next(NULL, 0, NULL, NULL, &done, &err), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_int_equal(cruster_stream_open(rt, "S", "b", "count", "1", 1, NULL, &rs, &err), CRUSTER_OK);
  assert_int_equal(cruster_stream_next(rs, -1, NULL, NULL, &done, &err), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  assert_int_equal(cruster_stream_next(rs, 0, NULL, NULL, NULL, &err), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(err);
  cruster_stream_close(rs);
  cruster_stream_close(NULL);

  /* Handler side: an oversized or NULL item is refused, the stream goes on. */
  sink_init(&s);
  assert_int_equal(stream_str(rt, "o", "oversized", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_OK);
  assert_int_equal(s.n, 2);
  char want[32];
  snprintf(want, sizeof(want), "rc=%d", CRUSTER_E_PAYLOAD_TOO_LARGE);
  assert_string_equal(s.items[0], want);
  snprintf(want, sizeof(want), "null=%d", CRUSTER_E_INVALID_ARGUMENT);
  assert_string_equal(s.items[1], want);
  sink_destroy(&s);
  assert_int_equal(cruster_request_yield(NULL, "x", 1), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_request_is_stream(NULL), 0);

  /* The sequence numbers end at 2147483646. */
  sink_init(&s);
  assert_int_equal(stream_str(rt, "q", "seq_limit", NULL, NULL, &s), CRUSTER_OK);
  sink_wait_end(&s);
  assert_int_equal(s.status, CRUSTER_OK);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.items[0], "last");
  snprintf(want, sizeof(want), "0,%d", CRUSTER_E_PAYLOAD_TOO_LARGE);
  assert_string_equal(s.items[1], want);
  sink_destroy(&s);
  cruster_runtime_free(rt);
}

int main(void) {
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(many_items_arrive_in_order_then_the_end),
      cmocka_unit_test(a_non_empty_reply_is_the_final_item),
      cmocka_unit_test(an_error_ends_the_stream_with_code_and_message),
      cmocka_unit_test(an_ordinary_handler_gives_its_reply_as_the_single_item),
      cmocka_unit_test(the_handler_sees_the_callers_deadline),
      cmocka_unit_test(the_caller_can_stop_a_stream),
      cmocka_unit_test(a_slow_callback_holds_the_handler_back),
      cmocka_unit_test(the_blocking_reader_reads_in_order_and_holds_the_handler_back),
      cmocka_unit_test(stopping_the_runtime_ends_a_blocked_stream),
      cmocka_unit_test(bad_input_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
