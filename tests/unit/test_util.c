/* Helpers: UTF-8 validation, name and entity id checks, host:port parsing,
 * duplication, clocks and logging. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#define VALID(s) core_utf8_valid((s), sizeof(s) - 1)

static void utf8_accepts_valid_sequences(void **state) {
  (void)state;
  assert_true(VALID(""));
  assert_true(VALID("plain ascii"));
  assert_true(VALID("\xC2\x80"));         /* U+0080 smallest 2-byte */
  assert_true(VALID("caf\xC3\xA9"));      /* é */
  assert_true(VALID("\xE0\xA0\x80"));     /* U+0800 smallest 3-byte */
  assert_true(VALID("\xED\x9F\xBF"));     /* U+D7FF just below surrogates */
  assert_true(VALID("\xEE\x80\x80"));     /* U+E000 just above surrogates */
  assert_true(VALID("\xEF\xBF\xBF"));     /* U+FFFF */
  assert_true(VALID("\xF0\x90\x80\x80")); /* U+10000 */
  assert_true(VALID("\xF4\x8F\xBF\xBF")); /* U+10FFFF largest */
  assert_true(core_utf8_valid(NULL, 0));
}

static void utf8_rejects_overlongs_surrogates_and_nul(void **state) {
  (void)state;
  assert_false(core_utf8_valid("a\0b", 3));           /* embedded NUL */
  assert_false(VALID("\xC0\x80"));                    /* overlong NUL */
  assert_false(VALID("\xC1\xBF"));                    /* overlong 2-byte */
  assert_false(VALID("\xE0\x9F\xBF"));                /* overlong 3-byte */
  assert_false(VALID("\xF0\x8F\xBF\xBF"));            /* overlong 4-byte */
  assert_false(VALID("\xED\xA0\x80"));                /* U+D800 surrogate */
  assert_false(VALID("\xED\xBF\xBF"));                /* U+DFFF surrogate */
  assert_false(VALID("\xF4\x90\x80\x80"));            /* U+110000 */
  assert_false(VALID("\xF5\x80\x80\x80"));            /* invalid lead */
  assert_false(VALID("\xFF"));
  assert_false(VALID("\x80"));                        /* lone continuation */
  assert_false(VALID("\xC3"));                        /* truncated */
  assert_false(VALID("\xE2\x82"));                    /* truncated */
  assert_false(VALID("\xE2\x28\xA1"));                /* bad continuation */
  assert_false(core_utf8_valid("caf\xC3\xA9", 4));    /* cut inside a sequence */
  assert_false(core_utf8_valid(NULL, 1));
}

static void check_name_accepts_ordinary_names(void **state) {
  (void)state;
  cruster_error *e = NULL;
  assert_int_equal(core_check_name("entity type", "Counter", &e), CRUSTER_OK);
  assert_null(e);
  assert_int_equal(core_check_name("entity type", "Workflow/Order", NULL), CRUSTER_OK);
  assert_int_equal(core_check_name("method", "z\xC3\xA4hle", NULL), CRUSTER_OK);
  char longest[CRUSTER_MAX_NAME_LEN + 1];
  memset(longest, 'n', CRUSTER_MAX_NAME_LEN);
  longest[CRUSTER_MAX_NAME_LEN] = '\0';
  assert_int_equal(core_check_name("method", longest, NULL), CRUSTER_OK);
}

static void expect_name_error(const char *what, const char *s, const char *fragment) {
  cruster_error *e = NULL;
  assert_int_equal(core_check_name(what, s, &e), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(e);
  assert_int_equal(cruster_error_status(e), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), what));
  assert_non_null(strstr(cruster_error_message(e), fragment));
  cruster_error_free(e);
}

static void check_name_says_what_is_wrong(void **state) {
  (void)state;
  expect_name_error("entity type", NULL, "NULL");
  expect_name_error("entity type", "", "must not be empty");
  expect_name_error("method", "tab\there", "control");
  expect_name_error("method", "new\nline", "control");
  expect_name_error("method", "del\x7f", "control");
  expect_name_error("method", "c1\xC2\x85", "control"); /* U+0085 NEL */
  expect_name_error("shard group", "bad\xFF", "UTF-8");
  char toolong[CRUSTER_MAX_NAME_LEN + 2];
  memset(toolong, 'n', CRUSTER_MAX_NAME_LEN + 1);
  toolong[CRUSTER_MAX_NAME_LEN + 1] = '\0';
  expect_name_error("method", toolong, "too long");
}

static void check_entity_id_limits(void **state) {
  (void)state;
  cruster_error *e = NULL;
  assert_int_equal(core_check_entity_id("counter-1", &e), CRUSTER_OK);
  /* Control characters are refused as in names (C0 and DEL; issue 7). */
  assert_int_equal(core_check_entity_id("with\ttab", &e), CRUSTER_E_INVALID_ARGUMENT);
  assert_string_equal(cruster_error_message(e),
                      "entity id must not contain control characters (byte 0x09 at offset 4)");
  cruster_error_free(e);
  e = NULL;
  assert_int_equal(core_check_entity_id("caf\xC3\xA9 \xC2\x85", NULL), CRUSTER_OK); /* UTF-8, C1 */
  char *id = malloc(CRUSTER_MAX_ENTITY_ID_LEN + 2);
  assert_non_null(id);
  memset(id, 'i', CRUSTER_MAX_ENTITY_ID_LEN);
  id[CRUSTER_MAX_ENTITY_ID_LEN] = '\0';
  assert_int_equal(core_check_entity_id(id, NULL), CRUSTER_OK);
  id[CRUSTER_MAX_ENTITY_ID_LEN] = 'i';
  id[CRUSTER_MAX_ENTITY_ID_LEN + 1] = '\0';
  assert_int_equal(core_check_entity_id(id, &e), CRUSTER_E_PAYLOAD_TOO_LARGE);
  assert_non_null(strstr(cruster_error_message(e), "entity id"));
  cruster_error_free(e);
  free(id);

  e = NULL;
  assert_int_equal(core_check_entity_id("", &e), CRUSTER_E_INVALID_ARGUMENT);
  assert_string_equal(cruster_error_message(e), "entity id must not be empty");
  cruster_error_free(e);
  e = NULL;
  assert_int_equal(core_check_entity_id(NULL, &e), CRUSTER_E_INVALID_ARGUMENT);
  cruster_error_free(e);
  e = NULL;
  assert_int_equal(core_check_entity_id("\xED\xA0\x80", &e), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(e), "UTF-8"));
  cruster_error_free(e);
}

static void hostport_parses_names_ipv4_and_ipv6(void **state) {
  (void)state;
  char host[64];
  int port = 0;
  assert_int_equal(core_parse_hostport("127.0.0.1:9000", host, sizeof host, &port), 0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 9000);
  assert_int_equal(core_parse_hostport("node-1.example.com:1", host, sizeof host, &port), 0);
  assert_string_equal(host, "node-1.example.com");
  assert_int_equal(port, 1);
  assert_int_equal(core_parse_hostport("[::1]:65535", host, sizeof host, &port), 0);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 65535);
  assert_int_equal(core_parse_hostport("[fe80::1%eth0]:80", host, sizeof host, &port), 0);
  assert_string_equal(host, "fe80::1%eth0");
  assert_int_equal(core_parse_hostport("h:8080", NULL, 0, NULL), 0);
}

static void hostport_rejects_malformed(void **state) {
  (void)state;
  char host[64];
  int port = 77;
  const char *bad[] = {"",          "host",       ":9000",     "host:",     "host:0",
                       "host:65536", "host:-1",    "host:+80",  "host:80x",  "host:123456",
                       "::1:9000",   "[::1]9000",  "[::1:9000", "[]:9000",   "ho st:80",
                       "[abc]:80",   "host:8 0"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (core_parse_hostport(bad[i], host, sizeof host, &port) == 0) fail_msg("accepted \"%s\"", bad[i]);
  }
  assert_int_equal(port, 77); /* untouched on failure */
  assert_int_equal(core_parse_hostport(NULL, host, sizeof host, &port), -1);
  /* The host must fit in the buffer. */
  char tiny[4];
  assert_int_equal(core_parse_hostport("longhost:80", tiny, sizeof tiny, &port), -1);
  assert_int_equal(core_parse_hostport("abc:80", tiny, sizeof tiny, &port), 0);
  assert_string_equal(tiny, "abc");
}

static void strdup_and_memdup_copy(void **state) {
  (void)state;
  char *s = core_strdup("hello");
  assert_string_equal(s, "hello");
  free(s);
  assert_null(core_strdup(NULL));
  char *m = core_memdup("a\0b", 3);
  assert_memory_equal(m, "a\0b", 3);
  free(m);
  void *z = core_memdup(NULL, 0);
  assert_non_null(z);
  free(z);
}

static void clocks_are_plausible_and_monotonic(void **state) {
  (void)state;
  assert_true(core_now_ms() > INT64_C(1735689600000));
  uint64_t a = core_mono_ns();
  uint64_t b = core_mono_ns();
  assert_true(b >= a);
  int64_t ma = core_mono_ms();
  assert_true(core_mono_ms() >= ma);
}

typedef struct captured {
  int calls;
  cruster_log_level level;
  char component[32];
  char message[2048];
} captured;

static void capture(void *user, cruster_log_level level, const char *component, const char *message) {
  captured *c = user;
  c->calls++;
  c->level = level;
  strncpy(c->component, component, sizeof c->component - 1);
  strncpy(c->message, message, sizeof c->message - 1);
}

static void log_filters_by_level_and_formats(void **state) {
  (void)state;
  captured c;
  memset(&c, 0, sizeof c);
  core_logger lg = {capture, &c, CRUSTER_LOG_WARN};
  core_log(&lg, CRUSTER_LOG_INFO, "runtime", "dropped %d", 1);
  assert_int_equal(c.calls, 0);
  assert_false(core_log_enabled(&lg, CRUSTER_LOG_INFO));
  assert_true(core_log_enabled(&lg, CRUSTER_LOG_ERROR));
  core_log(&lg, CRUSTER_LOG_ERROR, "storage", "failed after %d tries: %s", 3, "boom");
  assert_int_equal(c.calls, 1);
  assert_int_equal(c.level, CRUSTER_LOG_ERROR);
  assert_string_equal(c.component, "storage");
  assert_string_equal(c.message, "failed after 3 tries: boom");
  /* Records are one line. */
  core_log(&lg, CRUSTER_LOG_WARN, "x", "two\nlines\n");
  assert_string_equal(c.message, "two lines");
  /* Long messages are not truncated. */
  char big[1500];
  memset(big, 'b', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  core_log(&lg, CRUSTER_LOG_WARN, "x", "%s", big);
  assert_string_equal(c.message, big);
  /* OFF disables everything. */
  lg.min_level = CRUSTER_LOG_OFF;
  core_log(&lg, CRUSTER_LOG_ERROR, "x", "nothing");
  assert_int_equal(c.calls, 3);
  assert_false(core_log_enabled(NULL, CRUSTER_LOG_DEBUG));
  assert_true(core_log_enabled(NULL, CRUSTER_LOG_INFO));
}

static void default_sink_writes_one_line_to_stderr(void **state) {
  (void)state;
  FILE *tmp = tmpfile();
  assert_non_null(tmp);
  fflush(stderr);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
  core_logger lg = {NULL, NULL, CRUSTER_LOG_DEBUG};
  core_log(&lg, CRUSTER_LOG_WARN, "storage", "poll failed: %s", "timeout");
  core_log(&lg, CRUSTER_LOG_TRACE, "storage", "below the level");
  core_log(NULL, CRUSTER_LOG_ERROR, "runtime", "no logger");
  dup2(saved, STDERR_FILENO);
  close(saved);
  char buf[256] = {0};
  rewind(tmp);
  size_t n = fread(buf, 1, sizeof buf - 1, tmp);
  fclose(tmp);
  buf[n] = '\0';
  assert_string_equal(buf, "cruster WARN [storage] poll failed: timeout\n"
                           "cruster ERROR [runtime] no logger\n");
}

/* libpq's messages ("server closed the connection unexpectedly\n\tThis
 * probably means ...\n") become one line in our errors. */
static void text_one_line_collapses_whitespace(void **state) {
  (void)state;
  char a[] = "server closed the connection unexpectedly\n\tThis probably means\n";
  core_text_one_line(a);
  assert_string_equal(a, "server closed the connection unexpectedly This probably means");
  char b[] = "  \n\t ";
  core_text_one_line(b);
  assert_string_equal(b, "");
  char c[] = "one";
  core_text_one_line(c);
  assert_string_equal(c, "one");
  core_text_one_line(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(utf8_accepts_valid_sequences),
      cmocka_unit_test(utf8_rejects_overlongs_surrogates_and_nul),
      cmocka_unit_test(check_name_accepts_ordinary_names),
      cmocka_unit_test(check_name_says_what_is_wrong),
      cmocka_unit_test(check_entity_id_limits),
      cmocka_unit_test(hostport_parses_names_ipv4_and_ipv6),
      cmocka_unit_test(hostport_rejects_malformed),
      cmocka_unit_test(strdup_and_memdup_copy),
      cmocka_unit_test(clocks_are_plausible_and_monotonic),
      cmocka_unit_test(log_filters_by_level_and_formats),
      cmocka_unit_test(default_sink_writes_one_line_to_stderr),
      cmocka_unit_test(text_one_line_collapses_whitespace),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
