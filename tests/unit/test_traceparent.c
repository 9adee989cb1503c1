/* cruster_call_opts.traceparent on one runner: it reaches the handler
 * (cruster_request_traceparent), a handler passes it on to the calls it
 * makes, a persisted call keeps it, a call without one gives NULL, an older
 * caller's struct (size V1) has none, and a bad one is refused with
 * CRUSTER_E_INVALID_ARGUMENT saying why. (Across runners:
 * tests/integration/test_cluster_workflow.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/envelope.h"
#include "test_support.h"

#define TP "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

static void h_get(void *user, cruster_request *req) {
  (void)user;
  const char *tp = cruster_request_traceparent(req);
  cruster_request_reply(req, tp ? tp : "-", strlen(tp ? tp : "-"));
}

/* Calls Trace.get on the entity named by the payload, passing its own
 * traceparent on. */
static void h_relay(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char target[64];
  snprintf(target, sizeof(target), "%.*s", (int)len, p);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.caller = req;
  o.traceparent = cruster_request_traceparent(req);
  void *rep = NULL;
  size_t rlen = 0;
  int rc = cruster_send_sync(cruster_request_runtime(req), "Trace", target, "get", NULL, 0, &o, &rep, &rlen, NULL);
  if (rc == CRUSTER_OK) cruster_request_reply(req, rep, rlen);
  else cruster_request_fail(req, rc, "relay failed");
  cruster_free(rep);
}

static cruster_runtime *runtime(void) {
  cruster_entity_def *d = def_new("Trace");
  add(d, "get", 0, h_get, NULL);
  add(d, "pget", CRUSTER_RPC_PERSISTED, h_get, NULL);
  add(d, "relay", 0, h_relay, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_entity_def_free(d);
  return rt;
}

static void traceparent_reaches_the_handler_and_is_passed_on(void **state) {
  (void)state;
  cruster_runtime *rt = runtime();
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.traceparent = TP;
  char *out = NULL;
  assert_int_equal(send_str(rt, "Trace", "a", "get", "", &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, TP);
  cruster_free(out);
  /* A persisted call (stored, then delivered) keeps it too. */
  o.flags = CRUSTER_CALL_PERSISTED;
  o.idempotency_key = "k1";
  o.idempotency_key_len = 2;
  assert_int_equal(send_str(rt, "Trace", "a", "pget", "", &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, TP);
  cruster_free(out);
  o.flags = 0;
  o.idempotency_key = NULL;
  o.idempotency_key_len = 0;
  /* Passed on by a handler. */
  assert_int_equal(send_str(rt, "Trace", "a", "relay", "b", &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, TP);
  cruster_free(out);
  /* None: NULL, also through the relay. */
  assert_int_equal(send_str(rt, "Trace", "a", "get", "", NULL, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "-");
  cruster_free(out);
  o.traceparent = NULL;
  assert_int_equal(send_str(rt, "Trace", "a", "relay", "b", &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "-");
  cruster_free(out);
  /* An older caller's struct ends before the field: not read. */
  o.traceparent = "not read";
  o.size = CRUSTER_CALL_OPTS_SIZE_V1;
  assert_int_equal(send_str(rt, "Trace", "a", "get", "", &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "-");
  cruster_free(out);
  cruster_runtime_free(rt);
}

static void bad_traceparent_is_refused(void **state) {
  (void)state;
  cruster_runtime *rt = runtime();
  static const struct {
    const char *tp, *why;
  } bad[] = {
      {"", "55 characters"},
      {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", "55 characters"},
      {TP "-", "55 characters"},
      {"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "separated by '-'"},
      {"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", "lowercase hex"},
      {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01", "lowercase hex"},
      {"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "version ff"},
      {"00-00000000000000000000000000000000-b7ad6b7169203331-01", "trace id must not be all zeros"},
      {"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", "parent id must not be all zeros"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    o.traceparent = bad[i].tp;
    char *msg = NULL;
    assert_int_equal(send_str(rt, "Trace", "a", "get", "", &o, NULL, &msg), CRUSTER_E_INVALID_ARGUMENT);
    if (!strstr(msg, "opts.traceparent is not W3C trace context") || !strstr(msg, bad[i].why))
      fail_msg("'%s': %s", bad[i].tp, msg);
    free(msg);
    /* notify refuses it up front too */
    cruster_error *e = NULL;
    assert_int_equal(cruster_notify(rt, "Trace", "a", "get", NULL, 0, &o, NULL, NULL, &e),
                     CRUSTER_E_INVALID_ARGUMENT);
    cruster_error_free(e);
  }
  /* A later version with the same shape is accepted. */
  assert_true(core_traceparent_check("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", NULL));
  cruster_runtime_free(rt);
}

int main(void) {
  (void)ts_metric; /* (test_support.h helpers this file does not use) */
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(traceparent_reaches_the_handler_and_is_passed_on),
      cmocka_unit_test(bad_traceparent_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
