/* Regression tests for defects found in review: each test failed before its
 * fix. Memory storage unless said otherwise. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "test_support.h"

static void h_echo(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

/* Never answers on its own: the test answers the parked requests. */
static cruster_request *parked[16];
static atomic_int nparked;
static void h_park(void *user, cruster_request *req) {
  (void)user;
  parked[atomic_fetch_add(&nparked, 1)] = req;
}

typedef struct reply {
  uv_mutex_t mu;
  uv_cond_t cv;
  int done, status;
} reply;
static void reply_init(reply *r) {
  memset(r, 0, sizeof(*r));
  uv_mutex_init(&r->mu);
  uv_cond_init(&r->cv);
}
static void on_reply(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)data; (void)len; (void)msg;
  reply *r = user;
  uv_mutex_lock(&r->mu);
  r->status = status;
  r->done++;
  uv_cond_signal(&r->cv);
  uv_mutex_unlock(&r->mu);
}
/* 1 if it completed within ms. */
static int reply_wait_ms(reply *r, int ms) {
  for (int i = 0; i < ms; i++) {
    uv_mutex_lock(&r->mu);
    int d = r->done;
    uv_mutex_unlock(&r->mu);
    if (d) return 1;
    ts_sleep_ms(1);
  }
  return 0;
}
static void reply_destroy(reply *r) {
  uv_cond_destroy(&r->cv);
  uv_mutex_destroy(&r->mu);
}

/* ---- deadlines: a huge timeout_ms means "wait long", not "time out now" ---- */

static void huge_timeout_does_not_time_out_at_once(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = INT64_MAX;
  char *out = NULL, *msg = NULL;
  int st = send_str(rt, "Echo", "e", "echo", "hi", &o, &out, &msg);
  assert_int_equal(st, CRUSTER_OK);
  assert_string_equal(out, "hi");
  cruster_free(out);
  free(msg);
  /* A persisted call with a huge deadline as well. */
  o.flags = CRUSTER_CALL_PERSISTED;
  o.timeout_ms = INT64_MAX - 1;
  st = send_str(rt, "Echo", "e", "echo", "x", &o, &out, &msg);
  assert_int_equal(st, CRUSTER_OK);
  assert_string_equal(out, "x");
  cruster_free(out);
  free(msg);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* A call with a huge timeout must not hold up the deadlines of the others. */
static void huge_timeout_does_not_block_other_deadlines(void **state) {
  (void)state;
  atomic_store(&nparked, 0);
  cruster_entity_def *d = def_new("Park");
  add(d, "park", 0, h_park, NULL);
  cruster_entity_def_set_concurrency(d, 0, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  reply a, b;
  reply_init(&a);
  reply_init(&b);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = INT64_MAX;
  assert_int_equal(cruster_send(rt, "Park", "p", "park", NULL, 0, &o, on_reply, &a), CRUSTER_OK);
  o.timeout_ms = 100;
  assert_int_equal(cruster_send(rt, "Park", "p", "park", NULL, 0, &o, on_reply, &b), CRUSTER_OK);
  assert_true(reply_wait_ms(&b, 3000));
  assert_int_equal(b.status, CRUSTER_E_TIMEOUT);
  assert_false(reply_wait_ms(&a, 50)); /* still waiting */
  while (atomic_load(&nparked) < 2) ts_sleep_ms(1);
  cruster_request_reply(parked[0], "ok", 2);
  cruster_request_reply(parked[1], "ok", 2);
  assert_true(reply_wait_ms(&a, 3000));
  assert_int_equal(a.status, CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  reply_destroy(&a);
  reply_destroy(&b);
}

int main(void) {
  (void)ts_metric;
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(huge_timeout_does_not_time_out_at_once),
      cmocka_unit_test(huge_timeout_does_not_block_other_deadlines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
