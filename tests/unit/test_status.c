/* Status codes have distinct names and messages; error objects carry both. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/status.h>
#include <string.h>

#include "core/error.h"

static const struct {
  int code;
  const char *name;
} codes[] = {
    {CRUSTER_OK, "CRUSTER_OK"},
    {CRUSTER_E_INVALID_ARGUMENT, "CRUSTER_E_INVALID_ARGUMENT"},
    {CRUSTER_E_INVALID_CONFIG, "CRUSTER_E_INVALID_CONFIG"},
    {CRUSTER_E_NOMEM, "CRUSTER_E_NOMEM"},
    {CRUSTER_E_UNKNOWN_ENTITY_TYPE, "CRUSTER_E_UNKNOWN_ENTITY_TYPE"},
    {CRUSTER_E_UNKNOWN_METHOD, "CRUSTER_E_UNKNOWN_METHOD"},
    {CRUSTER_E_FORBIDDEN, "CRUSTER_E_FORBIDDEN"},
    {CRUSTER_E_MAILBOX_FULL, "CRUSTER_E_MAILBOX_FULL"},
    {CRUSTER_E_TIMEOUT, "CRUSTER_E_TIMEOUT"},
    {CRUSTER_E_SHUTTING_DOWN, "CRUSTER_E_SHUTTING_DOWN"},
    {CRUSTER_E_PAYLOAD_TOO_LARGE, "CRUSTER_E_PAYLOAD_TOO_LARGE"},
    {CRUSTER_E_NOT_ASSIGNED, "CRUSTER_E_NOT_ASSIGNED"},
    {CRUSTER_E_RUNNER_UNAVAILABLE, "CRUSTER_E_RUNNER_UNAVAILABLE"},
    {CRUSTER_E_PERSISTENCE, "CRUSTER_E_PERSISTENCE"},
    {CRUSTER_E_MALFORMED, "CRUSTER_E_MALFORMED"},
    {CRUSTER_E_ALREADY_PROCESSING, "CRUSTER_E_ALREADY_PROCESSING"},
    {CRUSTER_E_CLOCK_DRIFT, "CRUSTER_E_CLOCK_DRIFT"},
    {CRUSTER_E_INTERRUPTED, "CRUSTER_E_INTERRUPTED"},
    {CRUSTER_E_DEAD_LETTER, "CRUSTER_E_DEAD_LETTER"},
    {CRUSTER_E_NOT_FOUND, "CRUSTER_E_NOT_FOUND"},
    {CRUSTER_E_ALREADY_EXISTS, "CRUSTER_E_ALREADY_EXISTS"},
    {CRUSTER_E_STATE, "CRUSTER_E_STATE"},
    {CRUSTER_E_CANCELLED, "CRUSTER_E_CANCELLED"},
    {CRUSTER_E_HANDLER, "CRUSTER_E_HANDLER"},
    {CRUSTER_E_INTERNAL, "CRUSTER_E_INTERNAL"},
    {CRUSTER_E_CONFLICT, "CRUSTER_E_CONFLICT"},
    {CRUSTER_E_SUSPENDED, "CRUSTER_E_SUSPENDED"},
    {CRUSTER_E_DETERMINISM, "CRUSTER_E_DETERMINISM"},
    {CRUSTER_E_REGISTRY, "CRUSTER_E_REGISTRY"},
    {CRUSTER_E_APPLICATION, "CRUSTER_E_APPLICATION"},
};
#define N_CODES (sizeof codes / sizeof codes[0])

static void every_code_has_its_own_name(void **state) {
  (void)state;
  for (size_t i = 0; i < N_CODES; i++) assert_string_equal(cruster_status_name(codes[i].code), codes[i].name);
}

static void every_code_has_a_distinct_message(void **state) {
  (void)state;
  for (size_t i = 0; i < N_CODES; i++) {
    const char *m = cruster_status_message(codes[i].code);
    assert_non_null(m);
    assert_true(strlen(m) > 0);
    assert_string_not_equal(m, cruster_status_message(12345));
    for (size_t j = 0; j < i; j++) assert_string_not_equal(m, cruster_status_message(codes[j].code));
  }
}

static void application_codes_are_named_application(void **state) {
  (void)state;
  assert_string_equal(cruster_status_name(-1000), "CRUSTER_E_APPLICATION");
  assert_string_equal(cruster_status_name(-1001), "CRUSTER_E_APPLICATION");
  assert_string_equal(cruster_status_name(INT32_MIN), "CRUSTER_E_APPLICATION");
  assert_string_equal(cruster_status_message(-4242), cruster_status_message(CRUSTER_E_APPLICATION));
}

static void unknown_codes_are_named_unknown(void **state) {
  (void)state;
  assert_string_equal(cruster_status_name(1), "CRUSTER_E_UNKNOWN");
  assert_string_equal(cruster_status_name(INT32_MAX), "CRUSTER_E_UNKNOWN");
  assert_string_equal(cruster_status_name(-29), "CRUSTER_E_UNKNOWN");
  assert_string_equal(cruster_status_name(-999), "CRUSTER_E_UNKNOWN");
  assert_non_null(cruster_status_message(-999));
}

static void error_object_carries_status_and_formatted_message(void **state) {
  (void)state;
  cruster_error *e = core_error_new(CRUSTER_E_TIMEOUT, "call to %s timed out after %d ms", "Counter", 250);
  assert_non_null(e);
  assert_int_equal(cruster_error_status(e), CRUSTER_E_TIMEOUT);
  assert_string_equal(cruster_error_message(e), "call to Counter timed out after 250 ms");
  cruster_error_free(e);
}

static void error_set_returns_status_and_tolerates_null_out(void **state) {
  (void)state;
  cruster_error *e = NULL;
  assert_int_equal(core_error_set(&e, CRUSTER_E_NOT_FOUND, "no %s", "thing"), CRUSTER_E_NOT_FOUND);
  assert_non_null(e);
  assert_string_equal(cruster_error_message(e), "no thing");
  cruster_error_free(e);
  assert_int_equal(core_error_set(NULL, CRUSTER_E_STATE, "ignored"), CRUSTER_E_STATE);
  e = NULL;
  assert_int_equal(core_error_set(&e, CRUSTER_E_STATE, "%s", ""), CRUSTER_E_STATE);
  assert_string_equal(cruster_error_message(e), "");
  cruster_error_free(e);
}

static void null_error_reads_as_ok(void **state) {
  (void)state;
  assert_int_equal(cruster_error_status(NULL), CRUSTER_OK);
  assert_string_equal(cruster_error_message(NULL), "");
  cruster_error_free(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_code_has_its_own_name),
      cmocka_unit_test(every_code_has_a_distinct_message),
      cmocka_unit_test(application_codes_are_named_application),
      cmocka_unit_test(unknown_codes_are_named_unknown),
      cmocka_unit_test(error_object_carries_status_and_formatted_message),
      cmocka_unit_test(error_set_returns_status_and_tolerates_null_out),
      cmocka_unit_test(null_error_reads_as_ok),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
