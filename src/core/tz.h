/* Internal: time zones from TZif files (RFC 8536) and POSIX TZ rules, and
 * civil-calendar arithmetic. Clean-room; never touches the process's TZ or
 * localtime(), so every function here is thread-safe. A loaded core_tz is
 * immutable and may be shared between threads. */
#ifndef CORE_TZ_H
#define CORE_TZ_H

#include "core/prefix.h"

#include <cruster/status.h>
#include <stddef.h>
#include <stdint.h>

typedef struct core_tz core_tz;

/* What is in effect around one instant (all instants: Unix seconds, UTC;
 * offsets: seconds east of UTC, local = utc + offset). */
typedef struct core_tz_span {
  int32_t off;      /* the offset at t */
  int64_t prev_t;   /* the last transition at or before t; INT64_MIN: none */
  int32_t prev_off; /* the offset just before prev_t (== off when none) */
  int64_t next_t;   /* the first transition after t; INT64_MAX: none */
  int32_t next_off; /* the offset from next_t on (== off when none) */
} core_tz_span;

/* Longest zone name accepted, in bytes. */
#define CORE_TZ_MAX_NAME 255
/* Largest TZif file read, in bytes (real ones are below 4 KiB). */
#define CORE_TZ_MAX_FILE (1024 * 1024)

/* Loads zone `name` ("Europe/Berlin") from $TZDIR (default
 * /usr/share/zoneinfo). CRUSTER_E_NOT_FOUND when there is no such zone file
 * (or it is not a TZif file), CRUSTER_E_INVALID_ARGUMENT for a name that is
 * not a relative path of [A-Za-z0-9._+-/] without ".." or for a damaged
 * file. The caller frees *out with core_tz_free. */
cruster_status core_tz_load(const char *name, core_tz **out, cruster_error **err);
/* Parses a TZif image (`what` names it in errors). */
cruster_status core_tz_parse_tzif(const uint8_t *data, size_t len, const char *what, core_tz **out,
                                  cruster_error **err);
/* A zone made only of a POSIX TZ rule ("CET-1CEST,M3.5.0,M10.5.0/3"), as in
 * a TZif footer (RFC 8536 3.3, with its extensions: hours up to 167, signed
 * rule times). */
cruster_status core_tz_from_posix(const char *rule, core_tz **out, cruster_error **err);
void core_tz_free(core_tz *tz);

/* The offset and neighbouring transitions at instant `t`. `tz` NULL = UTC. */
void core_tz_span_at(const core_tz *tz, int64_t t, core_tz_span *out);

/* Civil calendar (proleptic Gregorian), days relative to 1970-01-01. */
int64_t core_days_from_civil(int64_t y, int m, int d);
void core_civil_from_days(int64_t days, int64_t *y, int *m, int *d);
int core_days_in_month(int64_t y, int m);
/* 0 = Sunday ... 6 = Saturday. */
int core_weekday(int64_t days);
/* Floor division of a by b (b > 0). */
static inline int64_t core_floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

#endif
