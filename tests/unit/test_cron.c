/* Cron expressions (include/cruster/cron.h, behaviour.md 9): parse errors
 * with position and reason, next fire times in UTC, in IANA zones across DST
 * changes (Europe/Berlin, America/New_York 2026), a half-hour zone
 * (Asia/Kolkata), instants past a zone file's table (its footer rule), and
 * the TZif reader and POSIX TZ rules underneath. Times are written as UTC
 * text so the tables read as calendars. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/cron.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/tz.h"

/* "2026-03-29T01:00:00Z" (optionally ".mmm") -> Unix ms. */
static int64_t ms(const char *iso) {
  int y, mo, d, h, mi, s, milli = 0;
  int n = sscanf(iso, "%d-%d-%dT%d:%d:%d.%d", &y, &mo, &d, &h, &mi, &s, &milli);
  if (n < 6)
    fail_msg("bad time %s", iso);
  return (core_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s) * 1000 + milli;
}

static void fmt(int64_t t_ms, char *buf, size_t n) {
  int64_t secs = core_floor_div(t_ms, 1000), days = core_floor_div(secs, 86400),
          sod = secs - days * 86400;
  int64_t y;
  int m, d;
  core_civil_from_days(days, &y, &m, &d);
  snprintf(buf, n, "%04lld-%02d-%02dT%02d:%02d:%02dZ", (long long)y, m, d, (int)(sod / 3600),
           (int)(sod / 60 % 60), (int)(sod % 60));
}

static cruster_cron *parse_ok(const char *expr, const char *tz) {
  cruster_cron *c = NULL;
  cruster_error *err = NULL;
  cruster_status rc = cruster_cron_parse(expr, tz, &c, &err);
  if (rc != CRUSTER_OK)
    fail_msg("parse '%s' (%s): %s", expr, tz ? tz : "UTC", cruster_error_message(err));
  assert_non_null(c);
  return c;
}

/* Checks that, starting after `after`, the next fire times are `want...`
 * (NULL-terminated; "none" = CRUSTER_E_NOT_FOUND). */
static void expect_seq(const char *expr, const char *tz, const char *after, ...) {
  cruster_cron *c = parse_ok(expr, tz);
  int64_t t = ms(after);
  va_list ap;
  va_start(ap, after);
  const char *want;
  while ((want = va_arg(ap, const char *)) != NULL) {
    int64_t next = 0;
    cruster_error *err = NULL;
    cruster_status rc = cruster_cron_next(c, t, &next, &err);
    char got[40], from[40];
    fmt(t, from, sizeof from);
    if (strcmp(want, "none") == 0) {
      if (rc != CRUSTER_E_NOT_FOUND) {
        fmt(next, got, sizeof got);
        fail_msg("'%s' [%s] after %s: want none, got %s (rc %d)", expr, tz ? tz : "UTC", from, got,
                 rc);
      }
      assert_non_null(err);
      cruster_error_free(err);
      break;
    }
    if (rc != CRUSTER_OK)
      fail_msg("'%s' [%s] after %s: want %s, got error %s", expr, tz ? tz : "UTC", from, want,
               cruster_error_message(err));
    fmt(next, got, sizeof got);
    if (next != ms(want))
      fail_msg("'%s' [%s] after %s: want %s, got %s", expr, tz ? tz : "UTC", from, want, got);
    assert_true(next % 1000 == 0);
    t = next;
  }
  va_end(ap);
  cruster_cron_free(c);
}

#define SEQ(expr, tz, after, ...) expect_seq(expr, tz, after, __VA_ARGS__, (const char *)NULL)

/* ---- parse errors ---------------------------------------------------------- */

typedef struct bad_case {
  const char *expr;
  int pos;         /* 1-based position in the message */
  const char *why; /* a part of the reason */
} bad_case;

static void expect_bad(const char *expr, int pos, const char *why) {
  cruster_cron *c = (cruster_cron *)&c; /* must be reset to NULL */
  cruster_error *err = NULL;
  cruster_status rc = cruster_cron_parse(expr, NULL, &c, &err);
  if (rc != CRUSTER_E_INVALID_ARGUMENT)
    fail_msg("'%s': want CRUSTER_E_INVALID_ARGUMENT, got %d", expr, rc);
  assert_null(c);
  assert_non_null(err);
  assert_int_equal(cruster_error_status(err), CRUSTER_E_INVALID_ARGUMENT);
  const char *msg = cruster_error_message(err);
  char head[48];
  snprintf(head, sizeof head, "cron: position %d: ", pos);
  if (strncmp(msg, head, strlen(head)) != 0 || !strstr(msg, why))
    fail_msg("'%s': want \"%s...%s\", got \"%s\"", expr, head, why, msg);
  cruster_error_free(err);
}

static void parse_errors_give_position_and_reason(void **state) {
  (void)state;
  static const bad_case cases[] = {
      {"0 0 0 * * 8", 11, "day-of-week 8 out of range 1-7"},
      {"0 0 0 * * 0", 11, "day-of-week 0 out of range 1-7"},
      {"60 * * * * *", 1, "second 60 out of range 0-59"},
      {"* 60 * * * *", 3, "minute 60 out of range 0-59"},
      {"* * 24 * * *", 5, "hour 24 out of range 0-23"},
      {"* * * 0 * *", 7, "day-of-month 0 out of range 1-31"},
      {"* * * 32 * *", 7, "day-of-month 32 out of range 1-31"},
      {"* * * * 13 *", 9, "month 13 out of range 1-12"},
      {"* * * * * * 1969", 13, "year 1969 out of range 1970-2100"},
      {"* * * * * * 2101", 13, "year 2101 out of range 1970-2100"},
      {"* * * * *", 10, "expected 6 or 7 fields"},
      {"*", 2, "found 1"},
      {"* * * * * * * *", 15, "too many fields"},
      {"0 0 0 * * * 2026 junk", 18, "too many fields"},
      {"", 1, "empty expression"},
      {" \t\n ", 1, "empty expression"},
      {"*/0 * * * * *", 3, "step 0 out of range 1-59"},
      {"*/60 * * * * *", 3, "step 60 out of range 1-59"},
      {"0 0 0 */32 * ?", 9, "step 32 out of range 1-31"},
      {"5-3 * * * * *", 1, "start is greater than end (ranges do not wrap around)"},
      {"* * * ? * FRI-MON", 11, "start is greater than end"},
      {"* * * ? NOV-FEB *", 9, "start is greater than end"},
      {"? * * * * *", 1, "'?' is only allowed in the day-of-month and day-of-week"},
      {"* * * * ? *", 9, "'?' is only allowed"},
      {"* * * L * ?", 7, "'L' (last day) is not supported"},
      {"* * * ? * L", 11, "'L' (last day) is not supported"},
      {"* * * LW * ?", 7, "'L' (last day) is not supported"},
      {"* * * 15W * ?", 9, "'W' (nearest weekday) is not supported"},
      {"* * * ? * 6#3", 12, "'#' (nth weekday of the month) is not supported"},
      {"* * * ? * 6L", 12, "'L' (last) is not supported"},
      {"* * * ? * FRIL", 11, "unknown day-of-week name 'FRIL'"},
      {"1,,2 * * * * *", 3, "empty list item in the second field"},
      {"1, * * * * *", 3, "trailing ','"},
      {",1 * * * * *", 1, "empty list item"},
      {"* * * * FOO *", 9, "unknown month name 'FOO'"},
      {"* * * * * MONDAYS", 11, "unknown day-of-week name 'MONDAYS'"},
      {"* * * ? * MON/2", 11,
       "a step needs '*', a number or a range before '/', not a single name"},
      {"* * * ? * 2-FRI", 11, "a range needs two numbers or two names"},
      {"MON * * * * *", 1, "the second field takes numbers only, found 'MON'"},
      {"* * * * * * MMXX", 13, "the year field takes numbers only"},
      {"@daily x", 8, "unexpected text after @daily"},
      {"@every 5m", 1, "unknown shorthand '@every'"},
      {"@DAILY", 1, "unknown shorthand"},
      {"99999999999999999999 * * * * *", 1, "second value is too large"},
      {"*/99999999999 * * * * *", 3, "step >100000 out of range 1-59"},
      {"*5 * * * * *", 2, "unexpected '5'"},
      {"1-2-3 * * * * *", 4, "unexpected '-'"},
      {"*/5/2 * * * * *", 4, "unexpected '/'"},
      {"1/ * * * * *", 3, "expected a step (a number) after '/', found the end of the field"},
      {"1- * * * * *", 3, "expected a second value (0-59), found the end of the field"},
      {"* * * * - *", 9, "expected a month value (1-12 or a name such as JAN), found '-'"},
      {"* * * * * *\x01", 12, "unexpected byte 0x01"},
      {"* * * * * \xc3\xa9", 11, "unexpected byte 0xC3"},
      {"0 0 0 30 2 ?", 7, "matches no date"},
      {"0 0 0 31 4,6,9,11 ?", 7, "matches no date"},
      {"0 0 0 29 2 ? 2027", 7, "matches no date"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    expect_bad(cases[i].expr, cases[i].pos, cases[i].why);
  /* Friday the 13th happens in 2026 (February): that one parses. */
  cruster_cron_free(parse_ok("0 0 0 13 * FRI 2026", NULL));
  /* Feb 29 on a Monday in 2027 (not a leap year) never happens either. */
  expect_bad("0 0 0 29 FEB MON 2027", 7, "matches no date");
}

static void parse_rejects_hostile_arguments(void **state) {
  (void)state;
  cruster_cron *c = NULL;
  cruster_error *err = NULL;
  assert_int_equal(cruster_cron_parse(NULL, NULL, &c, &err), CRUSTER_E_INVALID_ARGUMENT);
  assert_null(c);
  cruster_error_free(err);
  assert_int_equal(cruster_cron_parse("* * * * * *", NULL, NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  /* Length cap: 1024 bytes pass (padding), 1025 fail with a clear reason. */
  char *s = malloc(1026);
  assert_non_null(s);
  memset(s, ' ', 1025);
  memcpy(s, "* * * * * *", 11);
  s[1024] = '\0';
  cruster_cron_free(parse_ok(s, NULL));
  s[1024] = ' ';
  s[1025] = '\0';
  assert_int_equal(cruster_cron_parse(s, NULL, &c, &err), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "longer than 1024"));
  cruster_error_free(err);
  free(s);
  /* next: NULL arguments. */
  int64_t next;
  assert_int_equal(cruster_cron_next(NULL, 0, &next, NULL), CRUSTER_E_INVALID_ARGUMENT);
  c = parse_ok("* * * * * *", NULL);
  assert_int_equal(cruster_cron_next(c, 0, NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  /* Extreme instants: no overflow, a clear answer. */
  assert_int_equal(cruster_cron_next(c, INT64_MIN, &next, NULL), CRUSTER_OK);
  assert_true(next == 0); /* 1970-01-01T00:00:00Z */
  assert_int_equal(cruster_cron_next(c, INT64_MAX, &next, &err), CRUSTER_E_NOT_FOUND);
  assert_non_null(strstr(cruster_error_message(err), "no fire time"));
  cruster_error_free(err);
  assert_int_equal(cruster_cron_next(c, ms("2100-12-31T23:59:58"), &next, NULL), CRUSTER_OK);
  assert_true(next == ms("2100-12-31T23:59:59"));
  assert_int_equal(cruster_cron_next(c, ms("2100-12-31T23:59:59"), &next, NULL),
                   CRUSTER_E_NOT_FOUND);
  cruster_cron_free(c);
  cruster_cron_free(NULL);
  assert_null(cruster_cron_expr(NULL));
  assert_null(cruster_cron_tz(NULL));
}

static void expression_and_zone_are_kept(void **state) {
  (void)state;
  cruster_cron *c = parse_ok("  0 */5 * * * * *  ", NULL);
  assert_string_equal(cruster_cron_expr(c), "  0 */5 * * * * *  ");
  assert_string_equal(cruster_cron_tz(c), "UTC");
  cruster_cron_free(c);
  c = parse_ok("@daily", "");
  assert_string_equal(cruster_cron_tz(c), "UTC");
  cruster_cron_free(c);
  c = parse_ok("@daily", "UTC");
  assert_string_equal(cruster_cron_tz(c), "UTC");
  cruster_cron_free(c);
  c = parse_ok("@daily", "Europe/Berlin");
  assert_string_equal(cruster_cron_tz(c), "Europe/Berlin");
  cruster_cron_free(c);
}

static void unknown_and_bad_zones(void **state) {
  (void)state;
  cruster_cron *c = NULL;
  cruster_error *err = NULL;
  assert_int_equal(cruster_cron_parse("@daily", "Mars/Olympus_Mons", &c, &err),
                   CRUSTER_E_NOT_FOUND);
  assert_null(c);
  assert_non_null(strstr(cruster_error_message(err), "unknown time zone 'Mars/Olympus_Mons'"));
  cruster_error_free(err);
  assert_int_equal(cruster_cron_parse("@daily", "Europe", &c, &err), CRUSTER_E_NOT_FOUND);
  cruster_error_free(err);
  assert_int_equal(cruster_cron_parse("@daily", "zone1970.tab", &c, &err), CRUSTER_E_NOT_FOUND);
  assert_non_null(strstr(cruster_error_message(err), "not a TZif file"));
  cruster_error_free(err);
  static const char *const bad[] = {"../etc/passwd",  "/etc/localtime", "Europe/../../etc/passwd",
                                    "Europe//Berlin", "Europe/Berlin/", "Europe/Ber lin",
                                    "./UTC",          "Europe/Berlin\n"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    assert_int_equal(cruster_cron_parse("@daily", bad[i], &c, &err), CRUSTER_E_INVALID_ARGUMENT);
    assert_null(c);
    assert_non_null(strstr(cruster_error_message(err), "is not valid"));
    cruster_error_free(err);
  }
  /* An expression error comes first and keeps its position. */
  assert_int_equal(cruster_cron_parse("* * * * * 9", "Mars/Olympus_Mons", &c, &err),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "position 11"));
  cruster_error_free(err);
}

/* ---- next fire times in UTC ------------------------------------------------ */

static void next_basic_fields(void **state) {
  (void)state;
  /* Every second; strictly after, also from a fraction of a second. */
  SEQ("* * * * * *", NULL, "2026-01-01T00:00:00", "2026-01-01T00:00:01", "2026-01-01T00:00:02");
  SEQ("* * * * * *", NULL, "2026-01-01T00:00:00.999", "2026-01-01T00:00:01");
  SEQ("* * * * * *", NULL, "1969-12-31T23:59:59.999", "1970-01-01T00:00:00");
  /* Steps: from *, from a value (to the maximum), over a range. */
  SEQ("*/15 * * * * *", NULL, "2026-01-01T00:00:14", "2026-01-01T00:00:15", "2026-01-01T00:00:30",
      "2026-01-01T00:00:45", "2026-01-01T00:01:00");
  SEQ("0 */5 * * * * *", NULL, "2026-01-01T10:02:00", "2026-01-01T10:05:00", "2026-01-01T10:10:00");
  SEQ("0 10/20 * * * *", NULL, "2026-01-01T10:00:00", "2026-01-01T10:10:00", "2026-01-01T10:30:00",
      "2026-01-01T10:50:00", "2026-01-01T11:10:00");
  SEQ("0 0 1-10/3 * * *", NULL, "2026-01-01T00:00:00", "2026-01-01T01:00:00", "2026-01-01T04:00:00",
      "2026-01-01T07:00:00", "2026-01-01T10:00:00", "2026-01-02T01:00:00");
  SEQ("0 0 0 */10 * ?", NULL, "2026-01-01T00:00:00", "2026-01-11T00:00:00", "2026-01-21T00:00:00",
      "2026-01-31T00:00:00", "2026-02-01T00:00:00");
  /* Lists, ranges, lists of ranges and steps. */
  SEQ("0 0 9,12,15 * * *", NULL, "2026-01-01T12:00:00", "2026-01-01T15:00:00",
      "2026-01-02T09:00:00");
  SEQ("0 0,30 8-9,17 * * *", NULL, "2026-01-01T08:00:00", "2026-01-01T08:30:00",
      "2026-01-01T09:00:00", "2026-01-01T09:30:00", "2026-01-01T17:00:00", "2026-01-01T17:30:00",
      "2026-01-02T08:00:00");
  SEQ("0 0 9-17 * * MON-FRI", NULL, "2026-01-02T17:00:00", "2026-01-05T09:00:00");
  /* Names, case-insensitive, short and long; day-of-week 1 = Sunday. */
  SEQ("0 30 9 * jan-Mar,DECEMBER sun", NULL, "2026-03-29T10:00:00", "2026-12-06T09:30:00");
  SEQ("0 0 0 ? * 1", NULL, "2026-01-01T00:00:00", "2026-01-04T00:00:00");
  SEQ("0 0 0 ? * 7", NULL, "2026-01-01T00:00:00", "2026-01-03T00:00:00");
  SEQ("0 0 0 ? * Tues,THURS", NULL, "2026-01-01T00:00:00", "2026-01-06T00:00:00",
      "2026-01-08T00:00:00");
  SEQ("0 0 0 ? * MON-FRI/2", NULL, "2026-01-03T00:00:00", "2026-01-05T00:00:00", /* MON */
      "2026-01-07T00:00:00", /* WED */ "2026-01-09T00:00:00" /* FRI */, "2026-01-12T00:00:00");
  /* '?' = '*' in both day fields (also with a step). */
  SEQ("0 0 12 ? * WED", NULL, "2026-01-01T00:00:00", "2026-01-07T12:00:00");
  SEQ("0 0 12 ? * ?", NULL, "2026-01-01T13:00:00", "2026-01-02T12:00:00");
  SEQ("0 0 0 ?/15 * *", NULL, "2026-01-01T00:00:00", "2026-01-16T00:00:00", "2026-01-31T00:00:00");
  /* '*' inside a list means all. */
  SEQ("0 0 *,5 * * *", NULL, "2026-01-01T00:00:00", "2026-01-01T01:00:00");
  /* Tabs and newlines separate fields too. */
  SEQ("0\t0\n12 * * *", NULL, "2026-01-01T00:00:00", "2026-01-01T12:00:00");
}

static void next_shorthands(void **state) {
  (void)state;
  SEQ("@daily", NULL, "2026-03-04T10:00:00", "2026-03-05T00:00:00", "2026-03-06T00:00:00");
  SEQ("@hourly", NULL, "2026-03-04T10:00:00", "2026-03-04T11:00:00", "2026-03-04T12:00:00");
  SEQ("@weekly", NULL, "2026-01-01T00:00:00", "2026-01-04T00:00:00", "2026-01-11T00:00:00");
  SEQ("@monthly", NULL, "2026-01-15T00:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00");
  SEQ("@yearly", NULL, "2026-06-01T00:00:00", "2027-01-01T00:00:00", "2028-01-01T00:00:00");
  SEQ("  @daily  ", NULL, "2026-03-04T10:00:00", "2026-03-05T00:00:00");
}

static void next_calendar(void **state) {
  (void)state;
  /* Feb 29 only in leap years; 2100 is not one, and the search ends there. */
  SEQ("0 0 0 29 2 ?", NULL, "2026-01-01T00:00:00", "2028-02-29T00:00:00", "2032-02-29T00:00:00");
  SEQ("0 0 0 29 2 ?", NULL, "2096-03-01T00:00:00", "none");
  SEQ("0 0 0 ? 2 *", NULL, "2028-02-28T00:00:00", "2028-02-29T00:00:00", "2029-02-01T00:00:00");
}

static void next_calendar_months(void **state) {
  (void)state;
  /* The 31st is skipped in short months. */
  SEQ("0 0 0 31 * ?", NULL, "2026-01-31T00:00:00", "2026-03-31T00:00:00", "2026-05-31T00:00:00",
      "2026-07-31T00:00:00", "2026-08-31T00:00:00", "2026-10-31T00:00:00");
  SEQ("0 0 0 30 * ?", NULL, "2026-01-30T00:00:00", "2026-03-30T00:00:00");
  /* Month, day and year ends roll over. */
  SEQ("59 59 23 31 12 ?", NULL, "2026-12-31T23:59:59", "2027-12-31T23:59:59");
  SEQ("59 59 23 * * *", NULL, "2026-02-28T23:59:59", "2026-03-01T23:59:59");
  /* Both day fields must match: Friday the 13th. */
  SEQ("0 0 0 13 * FRI", NULL, "2026-01-01T00:00:00", "2026-02-13T00:00:00", "2026-03-13T00:00:00",
      "2026-11-13T00:00:00", "2027-08-13T00:00:00");
  /* Weekday and month-day lists together. */
  SEQ("0 0 0 1-7 * MON", NULL, "2026-01-01T00:00:00", "2026-01-05T00:00:00", "2026-02-02T00:00:00");
  /* Year field: lists, ranges, steps; none left after the last. */
  SEQ("0 0 0 1 1 ? 2030,2035", NULL, "2026-01-01T00:00:00", "2030-01-01T00:00:00",
      "2035-01-01T00:00:00", "none");
  SEQ("0 0 0 1 1 ? 2020", NULL, "2026-01-01T00:00:00", "none");
  SEQ("0 0 0 1 1 ? 2026-2100/37", NULL, "2026-01-01T00:00:00", "2063-01-01T00:00:00",
      "2100-01-01T00:00:00", "none");
  SEQ("0 0 0 1 1 ? 1970", NULL, "1900-01-01T00:00:00", "1970-01-01T00:00:00", "none");
}

/* ---- time zones and DST ---------------------------------------------------- */

static void berlin_spring_forward(void **state) {
  (void)state;
  const char *z = "Europe/Berlin"; /* 2026-03-29 01:00Z: 02:00 CET -> 03:00 CEST */
  /* 02:30 does not exist that night: it fires once, at the change (03:00 CEST). */
  SEQ("0 30 2 * * *", z, "2026-03-27T12:00:00", "2026-03-28T01:30:00", "2026-03-29T01:00:00",
      "2026-03-30T00:30:00");
  /* Several skipped slots fire as one. */
  SEQ("0 0,15,30,45 2 * * *", z, "2026-03-29T00:00:00", "2026-03-29T01:00:00",
      "2026-03-30T00:00:00");
  /* Right before the change (the search starts on the change itself). */
  SEQ("0 30 2 * * *", z, "2026-03-29T00:59:59.999", "2026-03-29T01:00:00", "2026-03-30T00:30:00");
  /* After the change the skipped slot is gone. */
  SEQ("0 30 2 * * *", z, "2026-03-29T01:00:00", "2026-03-30T00:30:00");
  /* 03:00 exists: it fires once at 03:00 CEST, like a skipped slot at the same instant. */
  SEQ("0 0 3 * * *", z, "2026-03-28T12:00:00", "2026-03-29T01:00:00", "2026-03-30T01:00:00");
  /* 02:00 and 02:30 are skipped, 03:00 is the change itself: one fire, then 03:30 CEST. */
  SEQ("0 30,0 2,3 * * *", z, "2026-03-29T00:00:00", "2026-03-29T01:00:00", "2026-03-29T01:30:00",
      "2026-03-30T00:00:00");
}

static void berlin_spring_forward_intervals(void **state) {
  (void)state;
  const char *z = "Europe/Berlin";
  /* Hour field = every hour: real-time spacing is kept. */
  SEQ("0 */15 * * * *", z, "2026-03-29T00:30:00", "2026-03-29T00:45:00", "2026-03-29T01:00:00",
      "2026-03-29T01:15:00");
  SEQ("0 30 * * * *", z, "2026-03-29T00:00:00", "2026-03-29T00:30:00", "2026-03-29T01:30:00",
      "2026-03-29T02:30:00");
  SEQ("@hourly", z, "2026-03-28T23:30:00", "2026-03-29T00:00:00", "2026-03-29T01:00:00",
      "2026-03-29T02:00:00");
}

static void berlin_fall_back(void **state) {
  (void)state;
  const char *z = "Europe/Berlin"; /* 2026-10-25 01:00Z: 03:00 CEST -> 02:00 CET */
  /* 02:30 happens twice: it fires at the first (CEST) only. */
  SEQ("0 30 2 * * *", z, "2026-10-24T12:00:00", "2026-10-25T00:30:00", "2026-10-26T01:30:00");
  SEQ("0 30 2 * * *", z, "2026-10-25T00:45:00", "2026-10-26T01:30:00");
  SEQ("0 30 2 * * *", z, "2026-10-25T01:10:00", "2026-10-26T01:30:00");
  SEQ("0 0,59 2 * * *", z, "2026-10-24T23:00:00", "2026-10-25T00:00:00", "2026-10-25T00:59:00",
      "2026-10-26T01:00:00");
  /* 03:00 and 01:30 happen once. */
  SEQ("0 0 3 * * *", z, "2026-10-24T12:00:00", "2026-10-25T02:00:00");
  SEQ("0 30 1 * * *", z, "2026-10-24T12:00:00", "2026-10-24T23:30:00");
  /* Every 15 minutes keeps firing every 15 real minutes through the repeated hour. */
  SEQ("0 */15 * * * *", z, "2026-10-24T23:50:00", "2026-10-25T00:00:00", "2026-10-25T00:15:00",
      "2026-10-25T00:30:00", "2026-10-25T00:45:00", "2026-10-25T01:00:00", "2026-10-25T01:15:00",
      "2026-10-25T01:30:00", "2026-10-25T01:45:00", "2026-10-25T02:00:00");
  SEQ("@hourly", z, "2026-10-24T23:30:00", "2026-10-25T00:00:00", "2026-10-25T01:00:00",
      "2026-10-25T02:00:00");
  /* Daily at midnight local: CEST before, CET after. */
  SEQ("@daily", z, "2026-10-23T12:00:00", "2026-10-23T22:00:00", "2026-10-24T22:00:00",
      "2026-10-25T23:00:00");
}

static void new_york_2026(void **state) {
  (void)state;
  const char *z = "America/New_York"; /* 2026-03-08 07:00Z: 02:00 EST -> 03:00 EDT */
  SEQ("0 30 2 * * *", z, "2026-03-07T12:00:00", "2026-03-08T07:00:00", "2026-03-09T06:30:00");
  SEQ("0 0 9 * * MON-FRI", z, "2026-03-06T15:00:00", "2026-03-09T13:00:00");
  SEQ("0 0 9 * * MON-FRI", z, "2026-03-05T15:00:00", "2026-03-06T14:00:00");
  /* 2026-11-01 06:00Z: 02:00 EDT -> 01:00 EST; 01:00-02:00 happens twice. */
  SEQ("0 30 1 * * *", z, "2026-10-31T12:00:00", "2026-11-01T05:30:00", "2026-11-02T06:30:00");
  SEQ("0 */30 * * * *", z, "2026-11-01T04:45:00", "2026-11-01T05:00:00", "2026-11-01T05:30:00",
      "2026-11-01T06:00:00", "2026-11-01T06:30:00", "2026-11-01T07:00:00");
}

static void kolkata_half_hour_offset(void **state) {
  (void)state;
  const char *z = "Asia/Kolkata"; /* +05:30, no DST */
  SEQ("0 0 9 * * *", z, "2026-01-01T00:00:00", "2026-01-01T03:30:00", "2026-01-02T03:30:00");
  SEQ("@yearly", z, "2025-06-01T00:00:00", "2025-12-31T18:30:00", "2026-12-31T18:30:00");
  SEQ("0 0 * * * *", z, "2026-01-01T00:00:00", "2026-01-01T00:30:00", "2026-01-01T01:30:00");
}

static void far_future_uses_the_footer_rule(void **state) {
  (void)state;
  /* Zone files list transitions to 2037; later ones come from the footer TZ string. */
  SEQ("0 30 2 * * *", "Europe/Berlin", "2090-03-25T12:00:00", "2090-03-26T01:00:00",
      "2090-03-27T00:30:00");
  SEQ("0 0 12 1 1,7 ?", "Europe/Berlin", "2090-01-01T00:00:00", "2090-01-01T11:00:00",
      "2090-07-01T10:00:00");
  SEQ("0 30 2 * * *", "Europe/Berlin", "2090-10-28T12:00:00", "2090-10-29T00:30:00",
      "2090-10-30T01:30:00");
  SEQ("0 30 1 * * *", "America/New_York", "2090-11-04T12:00:00", "2090-11-05T05:30:00",
      "2090-11-06T06:30:00");
  /* Southern hemisphere: DST over the new year. */
  SEQ("0 0 12 1 1,7 ?", "Australia/Sydney", "2089-12-31T00:00:00", "2090-01-01T01:00:00",
      "2090-07-01T02:00:00", "2091-01-01T01:00:00");
  /* 2090-09-30 16:00Z: 02:00 AEST -> 03:00 AEDT (October 1st local). */
  SEQ("0 30 2 * * *", "Australia/Sydney", "2090-09-29T12:00:00", "2090-09-29T16:30:00",
      "2090-09-30T16:00:00", "2090-10-01T15:30:00");
}

static void lord_howe_half_hour_dst(void **state) {
  (void)state;
  const char *z = "Australia/Lord_Howe";
  /* 2026-10-03 15:30Z: 02:00 (+10:30) -> 02:30 (+11:00). A specific hour's skipped slot fires at
   * the change; an every-hour expression has no 02:00 that night (the documented limit of the
   * interval rule: the change is not a whole hour). */
  SEQ("0 0 2 * * *", z, "2026-10-03T12:00:00", "2026-10-03T15:30:00", "2026-10-04T15:00:00");
  SEQ("0 0 * * * *", z, "2026-10-03T14:00:00", "2026-10-03T14:30:00", "2026-10-03T16:00:00");
  /* 2026-04-04 15:00Z: 02:00 (+11:00) -> 01:30 (+10:30); 01:30-02:00 happens twice. */
  SEQ("0 45 1 * * *", z, "2026-04-04T12:00:00", "2026-04-04T14:45:00", "2026-04-05T15:15:00");
  SEQ("0 */15 * * * *", z, "2026-04-04T14:40:00", "2026-04-04T14:45:00", "2026-04-04T15:00:00",
      "2026-04-04T15:15:00", "2026-04-04T15:30:00");
}

/* ---- the zone reader underneath ------------------------------------------- */

static void posix_rules(void **state) {
  (void)state;
  core_tz *tz = NULL;
  cruster_error *err = NULL;
  core_tz_span sp;
  assert_int_equal(core_tz_from_posix("CET-1CEST,M3.5.0,M10.5.0/3", &tz, &err), CRUSTER_OK);
  core_tz_span_at(tz, ms("2026-03-29T00:59:59") / 1000, &sp);
  assert_int_equal(sp.off, 3600);
  assert_true(sp.next_t == ms("2026-03-29T01:00:00") / 1000);
  assert_int_equal(sp.next_off, 7200);
  assert_true(sp.prev_t == ms("2025-10-26T01:00:00") / 1000);
  assert_int_equal(sp.prev_off, 7200);
  core_tz_span_at(tz, ms("2026-03-29T01:00:00") / 1000, &sp);
  assert_int_equal(sp.off, 7200);
  assert_true(sp.prev_t == ms("2026-03-29T01:00:00") / 1000);
  assert_true(sp.next_t == ms("2026-10-25T01:00:00") / 1000);
  core_tz_free(tz);
  /* Fixed offsets with minutes, quoted names. */
  assert_int_equal(core_tz_from_posix("<+0545>-5:45", &tz, &err), CRUSTER_OK);
  core_tz_span_at(tz, 0, &sp);
  assert_int_equal(sp.off, 5 * 3600 + 45 * 60);
  assert_true(sp.next_t == INT64_MAX && sp.prev_t == INT64_MIN);
  core_tz_free(tz);
  /* Negative rule times (RFC 8536 3.3.1): America/Nuuk style. */
  assert_int_equal(core_tz_from_posix("<-02>2<-01>,M3.5.0/-1,M10.5.0/0", &tz, &err), CRUSTER_OK);
  core_tz_span_at(tz, ms("2026-06-01T00:00:00") / 1000, &sp);
  assert_int_equal(sp.off, -3600);
  assert_true(sp.prev_t == ms("2026-03-29T01:00:00") / 1000);
  assert_true(sp.next_t == ms("2026-10-25T01:00:00") / 1000);
  core_tz_free(tz);
  /* Julian days: Jn never counts Feb 29 (J60 = March 1st), n does (59 = Feb 29 in leap years). */
  assert_int_equal(core_tz_from_posix("AAA3BBB,J60/0,J300/0", &tz, &err), CRUSTER_OK);
  core_tz_span_at(tz, ms("2028-02-01T00:00:00") / 1000, &sp);
  assert_true(sp.next_t == ms("2028-03-01T03:00:00") / 1000);
  assert_int_equal(sp.next_off, -2 * 3600);
  core_tz_free(tz);
  assert_int_equal(core_tz_from_posix("AAA3BBB,59/0,J300/0", &tz, &err), CRUSTER_OK);
  core_tz_span_at(tz, ms("2028-02-01T00:00:00") / 1000, &sp);
  assert_true(sp.next_t == ms("2028-02-29T03:00:00") / 1000);
  core_tz_span_at(tz, ms("2027-02-01T00:00:00") / 1000, &sp);
  assert_true(sp.next_t == ms("2027-03-01T03:00:00") / 1000);
  core_tz_free(tz);
  /* Permanent DST ("EST5EDT,0/0,J365/25"): DST all year, also at the new year. */
  assert_int_equal(core_tz_from_posix("EST5EDT,0/0,J365/25", &tz, &err), CRUSTER_OK);
  for (int i = 0; i < 4; i++) {
    static const char *at[] = {"2026-01-01T04:59:59", "2026-01-01T05:00:00", "2026-07-01T00:00:00",
                               "2026-12-31T23:00:00"};
    core_tz_span_at(tz, ms(at[i]) / 1000, &sp);
    assert_int_equal(sp.off, -4 * 3600);
  }
  core_tz_free(tz);
  static const char *const bad[] = {"",
                                    "C",
                                    "CET",
                                    "CET-1CEST",
                                    "CET-1CEST,M3.5.0",
                                    "CET-1CEST,M13.5.0,M10.5.0",
                                    "CET-1CEST,M3.6.0,M10.5.0",
                                    "CET-25",
                                    "<+05>",
                                    "CET-1CEST,J0,J365",
                                    "CET-1CEST,M3.5.0,M10.5.0/168",
                                    "CET-1 ",
                                    "CET-1CEST,M3.5.0,M10.5.0x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    if (core_tz_from_posix(bad[i], &tz, &err) == CRUSTER_OK)
      fail_msg("'%s' accepted", bad[i]);
    assert_null(tz);
    cruster_error_free(err);
  }
}

/* A TZif v2 file with one transition and a footer, written to a TZDIR. */
static size_t put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
  return 4;
}

static size_t tzif_header(uint8_t *p, char version, uint32_t timecnt, uint32_t typecnt,
                          uint32_t charcnt) {
  memset(p, 0, 44);
  memcpy(p, "TZif", 4);
  p[4] = (uint8_t)version;
  put32(p + 32, timecnt);
  put32(p + 36, typecnt);
  put32(p + 40, charcnt);
  return 44;
}

static size_t make_tzif(uint8_t *b, const char *footer) {
  size_t n = 0;
  /* v1 block: one transition at 1000000000 (2001-09-09) to type 1. */
  n += tzif_header(b + n, '2', 1, 2, 8);
  n += put32(b + n, 1000000000u);
  b[n++] = 1;
  n += put32(b + n, 3600), b[n++] = 0, b[n++] = 0;
  n += put32(b + n, 5 * 3600 + 45 * 60), b[n++] = 0, b[n++] = 4;
  memcpy(b + n, "AAA\0BBB\0", 8), n += 8;
  /* v2 block: the same with 64-bit times. */
  n += tzif_header(b + n, '2', 1, 2, 8);
  n += put32(b + n, 0), n += put32(b + n, 1000000000u);
  b[n++] = 1;
  n += put32(b + n, 3600), b[n++] = 0, b[n++] = 0;
  n += put32(b + n, 5 * 3600 + 45 * 60), b[n++] = 0, b[n++] = 4;
  memcpy(b + n, "AAA\0BBB\0", 8), n += 8;
  b[n++] = '\n';
  memcpy(b + n, footer, strlen(footer)), n += strlen(footer);
  b[n++] = '\n';
  return n;
}

static void tzdir_and_tzif_files(void **state) {
  (void)state;
  char dir[] = "/tmp/cruster-cron-tzXXXXXX";
  assert_non_null(mkdtemp(dir));
  char sub[128], path[160];
  snprintf(sub, sizeof sub, "%s/Test", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  uint8_t b[512];
  size_t n = make_tzif(b, "<+0545>-5:45");
  snprintf(path, sizeof path, "%s/Test/Zone", dir);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
  char *old = getenv("TZDIR") ? strdup(getenv("TZDIR")) : NULL;
  setenv("TZDIR", dir, 1);
  /* Before the transition +01:00, after it +05:45. */
  SEQ("0 0 9 * * *", "Test/Zone", "2001-09-01T00:00:00", "2001-09-01T08:00:00");
  SEQ("0 0 9 * * *", "Test/Zone", "2026-01-01T00:00:00", "2026-01-01T03:15:00");
  /* Damaged files: every truncation is refused with a reason, never read past. */
  for (size_t cut = 0; cut < n; cut++) {
    core_tz *tz = NULL;
    cruster_error *err = NULL;
    cruster_status rc = core_tz_parse_tzif(b, cut, "cut", &tz, &err);
    assert_int_not_equal(rc, CRUSTER_OK);
    assert_null(tz);
    cruster_error_free(err);
  }
  /* A bad footer is reported, not guessed. */
  n = make_tzif(b, "CET-1CEST");
  core_tz *tz = NULL;
  cruster_error *err = NULL;
  assert_int_equal(core_tz_parse_tzif(b, n, "x", &tz, &err), CRUSTER_E_INVALID_ARGUMENT);
  assert_non_null(strstr(cruster_error_message(err), "footer TZ rule 'CET-1CEST' not understood"));
  cruster_error_free(err);
  /* Unknown zone in that directory. */
  cruster_cron *c = NULL;
  assert_int_equal(cruster_cron_parse("@daily", "Europe/Berlin", &c, &err), CRUSTER_E_NOT_FOUND);
  assert_non_null(strstr(cruster_error_message(err), dir));
  cruster_error_free(err);
  if (old) {
    setenv("TZDIR", old, 1);
    free(old);
  } else {
    unsetenv("TZDIR");
  }
  unlink(path);
  rmdir(sub);
  rmdir(dir);
}

static void civil_calendar(void **state) {
  (void)state;
  /* Round trip over 1900..2200 and known weekdays. */
  for (int64_t d = core_days_from_civil(1900, 1, 1); d < core_days_from_civil(2200, 1, 1); d++) {
    int64_t y;
    int m, dd;
    core_civil_from_days(d, &y, &m, &dd);
    assert_true(core_days_from_civil(y, m, dd) == d);
    assert_true(dd >= 1 && dd <= core_days_in_month(y, m));
  }
  assert_int_equal(core_weekday(0), 4);                                 /* 1970-01-01 Thursday */
  assert_int_equal(core_weekday(core_days_from_civil(2026, 3, 29)), 0); /* Sunday */
  assert_int_equal(core_weekday(core_days_from_civil(1969, 12, 28)), 0);
  assert_int_equal(core_days_in_month(2000, 2), 29);
  assert_int_equal(core_days_in_month(2100, 2), 28);
  assert_int_equal(core_days_in_month(2028, 2), 29);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(parse_errors_give_position_and_reason),
      cmocka_unit_test(parse_rejects_hostile_arguments),
      cmocka_unit_test(expression_and_zone_are_kept),
      cmocka_unit_test(unknown_and_bad_zones),
      cmocka_unit_test(next_basic_fields),
      cmocka_unit_test(next_shorthands),
      cmocka_unit_test(next_calendar),
      cmocka_unit_test(next_calendar_months),
      cmocka_unit_test(berlin_spring_forward),
      cmocka_unit_test(berlin_spring_forward_intervals),
      cmocka_unit_test(berlin_fall_back),
      cmocka_unit_test(new_york_2026),
      cmocka_unit_test(kolkata_half_hour_offset),
      cmocka_unit_test(lord_howe_half_hour_dst),
      cmocka_unit_test(far_future_uses_the_footer_rule),
      cmocka_unit_test(posix_rules),
      cmocka_unit_test(tzdir_and_tzif_files),
      cmocka_unit_test(civil_calendar),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
