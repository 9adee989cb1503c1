/* The C API contract: options structs that grow (client.h), and the
 * `cruster_error **err` contract of status.h on every path. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <uv.h>

#pragma GCC diagnostic ignored "-Wunused-function"
#include "test_support.h"

static void h_echo(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

static cruster_runtime *echo_runtime(void) {
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_entity_def_free(d);
  return rt;
}

/* The first version of cruster_call_opts, as an old caller compiled it. */
typedef struct opts_v1 {
  size_t size;
  unsigned flags;
  int64_t timeout_ms;
  const void *idempotency_key;
  size_t idempotency_key_len;
  int64_t deliver_at_ms;
  const cruster_request *caller;
} opts_v1;

/* A caller compiled against a newer cruster: one more field. */
typedef struct opts_next {
  cruster_call_opts v;
  uint64_t newer_option;
} opts_next;

static int call_with(cruster_runtime *rt, const void *opts, char **msg) {
  void *rep = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  int st = cruster_send_sync(rt, "Echo", "e", "echo", "hi", 2, (const cruster_call_opts *)opts,
                             &rep, &len, &err);
  if (st == CRUSTER_OK) {
    assert_null(err);
    assert_int_equal(len, 2);
  } else {
    assert_non_null(err);
    assert_int_equal(cruster_error_status(err), st);
  }
  *msg = err ? strdup(cruster_error_message(err)) : NULL;
  cruster_error_free(err);
  cruster_free(rep);
  return st;
}

static void options_of_every_known_size_are_read(void **state) {
  (void)state;
  assert_int_equal(offsetof(opts_v1, caller) + sizeof(void *), CRUSTER_CALL_OPTS_SIZE_V1);
  assert_true(CRUSTER_CALL_OPTS_SIZE_V1 <= sizeof(cruster_call_opts));
  cruster_runtime *rt = echo_runtime();
  char *msg = NULL;
  /* The first version's size, with its fields used. */
  opts_v1 v1;
  memset(&v1, 0, sizeof v1);
  v1.size = CRUSTER_CALL_OPTS_SIZE_V1;
  v1.timeout_ms = 20000;
  assert_int_equal(call_with(rt, &v1, &msg), CRUSTER_OK);
  /* A v1 struct's field is honoured: an unknown flag is refused. */
  v1.flags = 0x80;
  assert_int_equal(call_with(rt, &v1, &msg), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(msg, "0x80"));
  free(msg);
  /* Smaller than the first version: refused, saying what to do. */
  v1.flags = 0;
  v1.size = CRUSTER_CALL_OPTS_SIZE_V1 - 1;
  assert_int_equal(call_with(rt, &v1, &msg), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(msg, "CRUSTER_CALL_OPTS_INIT"));
  free(msg);
  v1.size = 0;
  assert_int_equal(call_with(rt, &v1, &msg), CRUSTER_E_INVALID_ARGUMENT);
  free(msg);
  /* A newer caller's larger struct: fine while its new bytes are zero... */
  opts_next nx;
  memset(&nx, 0, sizeof nx);
  cruster_call_opts init = CRUSTER_CALL_OPTS_INIT;
  nx.v = init;
  nx.v.size = sizeof nx;
  assert_int_equal(call_with(rt, &nx, &msg), CRUSTER_OK);
  /* ...refused when it sets an option this library does not know. */
  nx.newer_option = 1;
  assert_int_equal(call_with(rt, &nx, &msg), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(msg, "newer option"));
  free(msg);
  cruster_runtime_free(rt);
}

static void on_never(void *user, int status, const void *data, size_t len, const char *m) {
  (void)status; (void)data; (void)len; (void)m;
  atomic_fetch_add((atomic_int *)user, 1);
}

/* The asynchronous functions explain a refusal up front in *err, and clear
 * *err on success. */
static void async_refusals_carry_their_message(void **state) {
  (void)state;
  cruster_runtime *rt = echo_runtime();
  atomic_int called = 0;
  cruster_error *err = (cruster_error *)(uintptr_t)1; /* garbage: cleared on entry */
  assert_int_equal(cruster_send(rt, "Echo", "", "echo", NULL, 0, NULL, on_never, &called, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(err);
  assert_int_equal(cruster_error_status(err), CRUSTER_E_INVALID_ARGUMENT);
  assert_true(strlen(cruster_error_message(err)) > 0);
  cruster_error_free(err);
  err = (cruster_error *)(uintptr_t)1;
  assert_int_equal(cruster_notify(rt, "Echo", "e", "echo", NULL, 5, NULL, NULL, NULL, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "payload is NULL"));
  cruster_error_free(err);
  err = (cruster_error *)(uintptr_t)1;
  assert_int_equal(
      cruster_join_reply(rt, "Echo", "e", "echo", NULL, 0, NULL, on_never, &called, &err),
      CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "idempotency key"));
  cruster_error_free(err);
  err = (cruster_error *)(uintptr_t)1;
  assert_int_equal(cruster_join_reply(rt, "Echo", "e", "echo", "k", 1, NULL, NULL, NULL, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "callback"));
  cruster_error_free(err);
  /* Success clears it. */
  reply r;
  reply_init(&r);
  err = (cruster_error *)(uintptr_t)1;
  assert_int_equal(cruster_send(rt, "Echo", "e", "echo", "x", 1, NULL, on_reply, &r, &err),
                   CRUSTER_OK);
  assert_null(err);
  reply_wait(&r);
  assert_int_equal(r.status, CRUSTER_OK);
  reply_destroy(&r);
  assert_int_equal(atomic_load(&called), 0);
  /* A synchronous function follows the same contract. */
  err = (cruster_error *)(uintptr_t)1;
  cruster_config *cfg = cruster_config_new();
  assert_int_equal(cruster_config_set(cfg, "worker_threads", "4", &err), CRUSTER_OK);
  assert_null(err);
  cruster_config_free(cfg);
  cruster_runtime_free(rt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(options_of_every_known_size_are_read),
      cmocka_unit_test(async_refusals_carry_their_message),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
