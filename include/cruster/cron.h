/*
 * cruster/cron.h -- cron expressions: parsing and next fire times, in UTC or
 * an IANA time zone.
 *
 * The syntax is the original system's (behaviour.md 9; Quartz-style, the Rust
 * `cron` crate 0.13), so schedules written for it mean the same here:
 *
 *   sec min hour day-of-month month day-of-week [year]
 *
 * 6 or 7 fields separated by whitespace (spaces, tabs, CR, LF), or one of the
 * shorthands @yearly (0 0 0 1 1 *), @monthly (0 0 0 1 * *), @weekly
 * (0 0 0 * * 1, Sunday midnight), @daily (0 0 0 * * *), @hourly (0 0 * * * *).
 *
 *   field          values      names
 *   second         0-59
 *   minute         0-59
 *   hour           0-23
 *   day-of-month   1-31        ? = *
 *   month          1-12        JAN-DEC, JANUARY-DECEMBER
 *   day-of-week    1-7, 1=SUN  SUN-SAT, SUNDAY-SATURDAY, TUES, THURS; ? = *
 *   year           1970-2100   (absent = any)
 *
 * Each field is a comma list of items: `*`, a value `v`, a range `a-b`
 * (a <= b: ranges do not wrap around; both ends numbers or both names), or a
 * step `X/n` where X is `*` (or `?`), a value (meaning v to the field's
 * maximum) or a range, and n is 1 to the field's maximum. Names are
 * case-insensitive. A day must match BOTH day-of-month and day-of-week
 * (`*` and `?` match every day). The L, W and # extensions are not supported
 * (rejected with that reason). An expression that matches no date at all
 * ("0 0 0 30 2 *", February 30th) is rejected when parsed; one whose years
 * are all past parses but has no next fire time.
 *
 * Time zones and daylight saving time. Fields are matched against the wall
 * clock of the zone. When the zone's offset changes:
 *  - a local time that a spring-forward skips fires once, at the first
 *    instant after the gap (the moment of the change: a job at 02:30 in
 *    Europe/Berlin fires at 03:00 CEST on the last Sunday of March); several
 *    skipped slots fire as one;
 *  - a local time repeated by a fall-back fires once, at its first occurrence;
 *  - except: an expression whose hour field matches every hour (`*`, 0-23 or
 *    a step of 1; e.g. every 15 minutes, every hour at :30) is matched against the
 *    wall clock at every real instant: slots in a gap do not exist and slots
 *    in the repeated hour fire at both occurrences, so such an expression
 *    keeps its real-time interval across both changes (for zones whose
 *    changes are whole hours, which all DST zones but Australia/Lord_Howe's
 *    are).
 * Fire times are whole seconds; the search ends at the end of year 2100.
 */
#ifndef CRUSTER_CRON_H
#define CRUSTER_CRON_H

#include "common.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Longest cron expression accepted, in bytes. */
#define CRUSTER_CRON_MAX_LEN 1024

typedef struct cruster_cron cruster_cron;

/*
 * cruster_cron_parse
 *   Parses `expr` (NUL-terminated, at most CRUSTER_CRON_MAX_LEN bytes) for
 *   zone `tz`: NULL, "" or "UTC" = UTC, else an IANA zone name
 *   ("Europe/Berlin") read from the system's zoneinfo (TZif files in
 *   /usr/share/zoneinfo, or in the directory named by the TZDIR environment
 *   variable). On success *out is a new schedule the caller frees with
 *   cruster_cron_free; on failure *out is NULL.
 * Errors: CRUSTER_E_INVALID_ARGUMENT for a NULL argument or a bad
 *   expression, with a message giving the 1-based character position and
 *   the reason ("cron: position 11: day-of-week 8 out of range 1-7"), also
 *   for a zone name that is not a plain relative path or a damaged zone
 *   file; CRUSTER_E_NOT_FOUND for an unknown zone (the message names it);
 *   CRUSTER_E_NOMEM.
 * Threads: any. The result is immutable and may be shared between threads.
 */
CRUSTER_API cruster_status cruster_cron_parse(const char *expr, const char *tz, cruster_cron **out,
                                              cruster_error **err);

/*
 * cruster_cron_next
 *   Stores in *next_ms the first fire time strictly after `after_ms` (both
 *   Unix time in milliseconds, UTC; fire times are whole seconds). The DST
 *   rules are those of the file comment above.
 * Errors: CRUSTER_E_NOT_FOUND when there is none (the years listed are past,
 *   or after 2100); CRUSTER_E_INVALID_ARGUMENT for NULL `c` or `next_ms`.
 *   Never loops: the search is bounded (year 2100).
 * Threads: any, also concurrently on one schedule.
 */
CRUSTER_API cruster_status cruster_cron_next(const cruster_cron *c, int64_t after_ms,
                                             int64_t *next_ms, cruster_error **err);

/*
 * cruster_cron_expr, cruster_cron_tz
 *   The expression as given, and the zone as given ("UTC" when NULL or ""
 *   was given), for logs. Owned by `c`: valid until cruster_cron_free.
 *   NULL for NULL `c`.
 * Threads: any.
 */
CRUSTER_API const char *cruster_cron_expr(const cruster_cron *c);
CRUSTER_API const char *cruster_cron_tz(const cruster_cron *c);

/*
 * cruster_cron_free
 *   Frees a schedule. NULL is a no-op.
 * Threads: any, once no other thread uses `c`.
 */
CRUSTER_API void cruster_cron_free(cruster_cron *c);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_CRON_H */
