/* Regression tests (PostgreSQL storage) for defects found in review: each
 * test failed before its fix. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#define TS_STORAGE_PG 1
#include "test_support.h"

static atomic_int fail_calls;

/* Fails with a message that is not valid UTF-8 (a Latin-1 strerror, bytes
 * echoed from input, ...). */
static void h_fail_latin1(void *user, cruster_request *req) {
  (void)user;
  atomic_fetch_add(&fail_calls, 1);
  cruster_request_fail(req, -1042, "caf\xe9 ferm\xe9 \xff");
}

/* The answer of a keyed call must be stored even when its failure text is
 * not UTF-8; before, the text column refused it, the answer was never
 * durable, and the handler ran again and again until a dead letter. */
static void keyed_failure_with_non_utf8_message_is_stored(void **state) {
  (void)state;
  atomic_store(&fail_calls, 0);
  cruster_entity_def *d = def_new("Latin");
  add(d, "go", CRUSTER_RPC_PERSISTED, h_fail_latin1, NULL);
  cruster_runtime *rt = ts_runtime("storage_retry_backoff=50ms;storage_poll_interval=50ms", &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.idempotency_key = "k1";
  o.idempotency_key_len = 2;
  /* Generous: before the fix this answer was never stored, so the call never
   * got it, whatever the timeout. */
  o.timeout_ms = TS_DEADLINE_MS;
  char *msg = NULL;
  int st = send_str(rt, "Latin", "l", "go", "x", &o, NULL, &msg);
  assert_int_equal(st, -1042);
  free(msg);
  ts_sleep_ms(300); /* a re-run would happen within the retry backoff */
  assert_int_equal(atomic_load(&fail_calls), 1);
  /* The stored answer comes back for the same key without running again. */
  st = send_str(rt, "Latin", "l", "go", "x", &o, NULL, &msg);
  assert_int_equal(st, -1042);
  assert_non_null(msg);
  free(msg);
  assert_int_equal(atomic_load(&fail_calls), 1);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* ---- a large storage_inbox_size --------------------------------------------- */

static void h_ok(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, "ok", 2);
}

/* storage_inbox_size accepts up to INT64_MAX; the claim's LIMIT is an int4,
 * so every poll failed ("integer out of range") and delayed messages were
 * never delivered. */
static void huge_inbox_size_still_polls(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Later");
  add(d, "go", 0, h_ok, NULL);
  cruster_runtime *rt = ts_runtime("storage_inbox_size=3000000000;storage_poll_interval=50ms", &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  o.deliver_at_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 100;
  o.timeout_ms = TS_DEADLINE_MS; /* generous: before the fix it never came */
  char *out = NULL;
  assert_int_equal(send_str(rt, "Later", "l", "go", NULL, &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "ok");
  cruster_free(out);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

int main(void) {
  (void)ts_metric;
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(keyed_failure_with_non_utf8_message_is_stored),
      cmocka_unit_test(huge_inbox_size_still_polls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
