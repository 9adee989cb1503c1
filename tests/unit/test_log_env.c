/* CRUSTER_LOG in the environment overrides the configured log level; an
 * unknown value is reported and ignored. The single-node start line does not
 * name an address nothing listens on. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/cruster.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct capture {
  uv_mutex_t mu;
  char text[8192];
  int debug_records;
} capture;

static void sink(void *user, cruster_log_level level, const char *component, const char *message) {
  capture *c = user;
  uv_mutex_lock(&c->mu);
  if (level == CRUSTER_LOG_DEBUG) c->debug_records++;
  size_t n = strlen(c->text);
  snprintf(c->text + n, sizeof c->text - n, "%s: %s\n", component, message);
  uv_mutex_unlock(&c->mu);
}

static void run_once(capture *c) {
  memset(c->text, 0, sizeof c->text);
  c->debug_records = 0;
  cruster_config *cfg = cruster_config_new();
  cruster_config_set_logger(cfg, sink, c, CRUSTER_LOG_WARN);
  cruster_storage *st = NULL;
  assert_int_equal(cruster_storage_memory_new(&st, NULL), CRUSTER_OK);
  cruster_runtime *rt = NULL;
  assert_int_equal(cruster_runtime_new(cfg, st, NULL, &rt, NULL), CRUSTER_OK);
  cruster_config_free(cfg);
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  cruster_runtime_free(rt);
}

static void env_level_overrides_config(void **state) {
  (void)state;
  capture c;
  memset(&c, 0, sizeof c);
  uv_mutex_init(&c.mu);
  unsetenv("CRUSTER_LOG");
  run_once(&c);
  assert_int_equal(c.debug_records, 0); /* the config says WARN */
  assert_null(strstr(c.text, "started"));

  setenv("CRUSTER_LOG", "DEBUG", 1);
  run_once(&c);
  assert_true(c.debug_records > 0);
  assert_non_null(strstr(c.text, "single-node runner started"));
  assert_null(strstr(c.text, "127.0.0.1:9000"));

  setenv("CRUSTER_LOG", "loud", 1);
  run_once(&c);
  assert_int_equal(c.debug_records, 0);
  assert_non_null(strstr(c.text, "CRUSTER_LOG=loud is not a level"));
  unsetenv("CRUSTER_LOG");
  uv_mutex_destroy(&c.mu);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(env_level_overrides_config)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
