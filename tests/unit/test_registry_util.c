/* The etcd registry's small helpers: base64, int64 fields, prefix range
 * ends, the runner value of behaviour.md §3.1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "registry/etcd_util.h"

static void check_b64(const char *plain, size_t len, const char *enc) {
  char *e = rg_b64_encode(plain, len);
  assert_string_equal(e, enc);
  size_t n = 99;
  unsigned char *d = rg_b64_decode(e, &n);
  assert_non_null(d);
  assert_int_equal(n, len);
  assert_memory_equal(d, plain, len);
  free(d);
  free(e);
}

static void base64_round_trips(void **state) {
  (void)state;
  check_b64("", 0, "");
  check_b64("f", 1, "Zg==");
  check_b64("fo", 2, "Zm8=");
  check_b64("foo", 3, "Zm9v");
  check_b64("foob", 4, "Zm9vYg==");
  check_b64("/cruster/runners/", 17, "L2NydXN0ZXIvcnVubmVycy8=");
  check_b64("\xff\x00\xfe", 3, "/wD+");
}

static void base64_rejects_garbage(void **state) {
  (void)state;
  const char *bad[] = {"Zg=", "Z", "Zg==Zg==", "Z===", "Zm9v!", "Zm=v", "=Zm9", "Zm 9v", "Zg=A"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t n;
    unsigned char *d = rg_b64_decode(bad[i], &n);
    if (d) fail_msg("decoded \"%s\"", bad[i]);
  }
}

static void int64_fields(void **state) {
  (void)state;
  int64_t v = 5;
  assert_int_equal(rg_json_i64(NULL, &v), 0);
  assert_int_equal(v, 0);
  json_t *s = json_string("7316275942037669588");
  assert_int_equal(rg_json_i64(s, &v), 0);
  assert_true(v == INT64_C(7316275942037669588));
  json_decref(s);
  json_t *i = json_integer(-3);
  assert_int_equal(rg_json_i64(i, &v), 0);
  assert_int_equal(v, -3);
  json_decref(i);
  const char *bad[] = {"", "12x", "x", "99999999999999999999", " 1"};
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    json_t *b = json_string(bad[k]);
    assert_int_equal(rg_json_i64(b, &v), -1);
    json_decref(b);
  }
  json_t *t = json_true();
  assert_int_equal(rg_json_i64(t, &v), -1);
}

static void prefix_ends(void **state) {
  (void)state;
  size_t n;
  char *e = rg_prefix_end("/a/runners/", 11, &n);
  assert_int_equal(n, 11);
  assert_memory_equal(e, "/a/runners0", 11);
  free(e);
  e = rg_prefix_end("a\xff\xff", 3, &n);
  assert_int_equal(n, 1);
  assert_int_equal(e[0], 'b');
  free(e);
  e = rg_prefix_end("\xff", 1, &n);
  assert_int_equal(n, 1);
  assert_int_equal(e[0], 0);
  free(e);
}

static void runner_values(void **state) {
  (void)state;
  char *v = rg_runner_value("node1", 9000, 1, 1);
  assert_string_equal(v, "{\"address\":{\"host\":\"node1\",\"port\":9000},\"weight\":1,\"healthy\":true}");
  char *host = NULL;
  int port, weight, healthy;
  assert_int_equal(rg_runner_parse(v, strlen(v), &host, &port, &weight, &healthy), 0);
  assert_string_equal(host, "node1");
  assert_int_equal(port, 9000);
  assert_int_equal(weight, 1);
  assert_int_equal(healthy, 1);
  free(host);
  free(v);
  const char *bad[] = {
      "", "[]", "{}", "{\"address\":{\"host\":\"h\",\"port\":0},\"weight\":1,\"healthy\":true}",
      "{\"address\":{\"host\":\"h\",\"port\":70000},\"weight\":1,\"healthy\":true}",
      "{\"address\":{\"host\":\"\",\"port\":1},\"weight\":1,\"healthy\":true}",
      "{\"address\":{\"host\":\"h\",\"port\":1},\"weight\":-1,\"healthy\":true}",
      "{\"address\":{\"host\":\"h\",\"port\":1},\"weight\":1,\"healthy\":1}",
      "{\"address\":{\"host\":\"h\\u0000x\",\"port\":1},\"weight\":1,\"healthy\":true}",
      "{\"address\":\"h:1\",\"weight\":1,\"healthy\":true}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    host = NULL;
    if (rg_runner_parse(bad[i], strlen(bad[i]), &host, &port, &weight, &healthy) == 0)
      fail_msg("accepted %s", bad[i]);
    assert_null(host);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(base64_round_trips), cmocka_unit_test(base64_rejects_garbage),
      cmocka_unit_test(int64_fields),       cmocka_unit_test(prefix_ends),
      cmocka_unit_test(runner_values),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
