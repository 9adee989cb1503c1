/* Single-node mode: one runtime per database schema. A second runtime on
 * the same schema is refused with a clear error (it would take the first
 * one's claims and write beside it) until the first one stops; another
 * schema of the same database is independent. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "pg_support.h"

static void second_runtime_on_a_schema_is_refused(void **state) {
  (void)state;
  pgt_schema s, other;
  pgt_schema_create(&s);
  pgt_schema_create(&other);
  pgt_migrate(&s);
  pgt_migrate(&other);
  cruster_runtime *first = NULL, *second = NULL, *beside = NULL;
  char *msg = NULL;
  assert_int_equal(pgt_runtime_try(s.conninfo, NULL, &first, &msg), CRUSTER_OK);
  assert_int_equal(pgt_runtime_try(s.conninfo, NULL, &second, &msg), CRUSTER_E_STATE);
  assert_null(second);
  printf("  second runtime: %s\n", msg);
  assert_true(pgt_contains(msg, "another cruster runtime already uses this database schema"));
  assert_true(pgt_contains(msg, "backend"));
  free(msg);
  msg = NULL;
  /* Another schema of the same database is not affected. */
  assert_int_equal(pgt_runtime_try(other.conninfo, NULL, &beside, &msg), CRUSTER_OK);
  /* Once the first stops, the schema is free. */
  cruster_runtime_free(first);
  assert_int_equal(pgt_runtime_try(s.conninfo, NULL, &second, &msg), CRUSTER_OK);
  cruster_runtime_free(second);
  cruster_runtime_free(beside);
  pgt_schema_drop(&s);
  pgt_schema_drop(&other);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(second_runtime_on_a_schema_is_refused)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
