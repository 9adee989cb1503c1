/* Cron expressions: the parser of behaviour.md 9 (Quartz-style, the Rust
 * `cron` crate 0.13) and the next-fire search in a zone's local time, with
 * the DST rules of include/cruster/cron.h. */
#include <cruster/cron.h>

#include "core/error.h"
#include "core/tz.h"
#include "core/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define YEAR_MIN 1970
#define YEAR_MAX 2100
#define NYEARS (YEAR_MAX - YEAR_MIN + 1)

struct cruster_cron {
  uint64_t sec, min; /* bit v: value v */
  uint32_t hour;
  uint32_t dom;                   /* bits 1..31 */
  uint16_t mon;                   /* bits 1..12 */
  uint8_t dow;                    /* bits 1..7, 1 = Sunday */
  uint8_t year[(NYEARS + 7) / 8]; /* bit y - YEAR_MIN */
  int hours_all;                  /* the hour field matches all 24 hours */
  char *expr;
  char *tz_name;
  core_tz *tz; /* NULL = UTC */
};

/* ---- parsing ------------------------------------------------------------- */

enum { NAMES_NONE, NAMES_MONTH, NAMES_DOW };

typedef struct field_def {
  const char *name;
  int lo, hi;
  int names;
  int any_ok; /* '?' allowed */
} field_def;

static const field_def FIELDS[7] = {
    {"second", 0, 59, NAMES_NONE, 0},
    {"minute", 0, 59, NAMES_NONE, 0},
    {"hour", 0, 23, NAMES_NONE, 0},
    {"day-of-month", 1, 31, NAMES_NONE, 1},
    {"month", 1, 12, NAMES_MONTH, 0},
    {"day-of-week", 1, 7, NAMES_DOW, 1},
    {"year", YEAR_MIN, YEAR_MAX, NAMES_NONE, 0},
};

typedef struct name_entry {
  const char *name;
  int value;
} name_entry;

static const name_entry MONTH_NAMES[] = {
    {"jan", 1},       {"january", 1},   {"feb", 2},       {"february", 2}, {"mar", 3},
    {"march", 3},     {"apr", 4},       {"april", 4},     {"may", 5},      {"jun", 6},
    {"june", 6},      {"jul", 7},       {"july", 7},      {"aug", 8},      {"august", 8},
    {"sep", 9},       {"september", 9}, {"oct", 10},      {"october", 10}, {"nov", 11},
    {"november", 11}, {"dec", 12},      {"december", 12},
};
static const name_entry DOW_NAMES[] = {
    {"sun", 1},     {"sunday", 1}, {"mon", 2},       {"monday", 2},   {"tue", 3},   {"tues", 3},
    {"tuesday", 3}, {"wed", 4},    {"wednesday", 4}, {"thu", 5},      {"thurs", 5}, {"thursday", 5},
    {"fri", 6},     {"friday", 6}, {"sat", 7},       {"saturday", 7},
};

/* A parse: the expression, and where the first error went. */
typedef struct parser {
  const char *s;
  cruster_error **err;
} parser;

static cruster_status perr(parser *ps, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static cruster_status perr(parser *ps, const char *at, const char *fmt, ...) {
  char why[320];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return core_error_set(ps->err, CRUSTER_E_INVALID_ARGUMENT, "cron: position %d: %s",
                        (int)(at - ps->s) + 1, why);
}

static int is_sep(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static char lower(char c) { return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c; }

/* A field's values, as bits v - lo (at most 131 values: the years). */
typedef struct valset {
  uint8_t b[(NYEARS + 7) / 8];
} valset;

static void vs_add(valset *v, const field_def *f, int x) {
  int i = x - f->lo;
  v->b[i / 8] |= (uint8_t)(1u << (i % 8));
}

/* Describes the character at p for an error ("'x'", "byte 0xC3", "the end of the field"). */
static const char *describe(const char *p, const char *end, char *buf, size_t n) {
  if (p >= end)
    return "the end of the field";
  unsigned char c = (unsigned char)*p;
  if (c > 0x20 && c < 0x7f)
    snprintf(buf, n, "'%c'", c);
  else
    snprintf(buf, n, "byte 0x%02X", c);
  return buf;
}

/* Reads one value (number or name) at *pp; on success *pp is past it. */
static cruster_status read_value(parser *ps, const field_def *f, const char **pp, const char *end,
                                 int *out, int *is_name) {
  const char *p = *pp;
  char buf[24];
  if (p < end && is_digit(*p)) {
    long v = 0;
    const char *q = p;
    while (q < end && is_digit(*q)) {
      if (v > 100000)
        return perr(ps, p, "%s value is too large (range %d-%d)", f->name, f->lo, f->hi);
      v = v * 10 + (*q++ - '0');
    }
    if (v < f->lo || v > f->hi)
      return perr(ps, p, "%s %ld out of range %d-%d", f->name, v, f->lo, f->hi);
    *out = (int)v;
    *is_name = 0;
    *pp = q;
    return CRUSTER_OK;
  }
  if (p < end && is_alpha(*p)) {
    const char *q = p;
    while (q < end && is_alpha(*q))
      q++;
    size_t len = (size_t)(q - p);
    char word[16];
    int fits = len < sizeof word;
    if (fits) {
      for (size_t i = 0; i < len; i++)
        word[i] = lower(p[i]);
      word[len] = '\0';
    }
    if (fits && (strcmp(word, "l") == 0 || strcmp(word, "lw") == 0))
      return perr(ps, p, "'L' (last day) is not supported (no L, W or # extensions)");
    if (fits && strcmp(word, "w") == 0)
      return perr(ps, p, "'W' (nearest weekday) is not supported (no L, W or # extensions)");
    if (f->names == NAMES_NONE)
      return perr(ps, p, "the %s field takes numbers only, found '%.*s'", f->name,
                  (int)(len > 12 ? 12 : len), p);
    const name_entry *tab = f->names == NAMES_MONTH ? MONTH_NAMES : DOW_NAMES;
    size_t n = f->names == NAMES_MONTH ? sizeof MONTH_NAMES / sizeof *MONTH_NAMES
                                       : sizeof DOW_NAMES / sizeof *DOW_NAMES;
    for (size_t i = 0; fits && i < n; i++)
      if (strcmp(tab[i].name, word) == 0) {
        *out = tab[i].value;
        *is_name = 1;
        *pp = q;
        return CRUSTER_OK;
      }
    return perr(ps, p, "unknown %s name '%.*s'", f->names == NAMES_MONTH ? "month" : "day-of-week",
                (int)(len > 12 ? 12 : len), p);
  }
  return perr(ps, p, "expected a %s value (%d-%d%s), found %s", f->name, f->lo, f->hi,
              f->names == NAMES_MONTH ? " or a name such as JAN"
              : f->names == NAMES_DOW ? " or a name such as MON"
                                      : "",
              describe(p, end, buf, sizeof buf));
}

/* After an item's part, only ',', '/', '-' (where allowed) or the end may follow. */
static cruster_status bad_follow(parser *ps, const char *p, const char *end) {
  char buf[24];
  if (*p == '#')
    return perr(ps, p, "'#' (nth weekday of the month) is not supported (no L, W or # extensions)");
  if (*p == 'W' || *p == 'w')
    return perr(ps, p, "'W' (nearest weekday) is not supported (no L, W or # extensions)");
  if (*p == 'L' || *p == 'l')
    return perr(ps, p, "'L' (last) is not supported (no L, W or # extensions)");
  return perr(ps, p, "unexpected %s", describe(p, end, buf, sizeof buf));
}

/* One list item in [p, end). */
static cruster_status parse_item(parser *ps, const field_def *f, const char *p, const char *end,
                                 valset *vs) {
  const char *start = p;
  int a = f->lo, b = f->hi, single = 0, single_name = 0;
  cruster_status rc;
  if (p >= end)
    return perr(ps, p, "empty list item in the %s field", f->name);
  if (*p == '*' || *p == '?') {
    if (*p == '?' && !f->any_ok)
      return perr(ps, p, "'?' is only allowed in the day-of-month and day-of-week fields");
    p++;
  } else {
    int an, bn;
    if ((rc = read_value(ps, f, &p, end, &a, &an)) != CRUSTER_OK)
      return rc;
    if (p < end && *p == '-') {
      const char *bstart = ++p;
      if ((rc = read_value(ps, f, &p, end, &b, &bn)) != CRUSTER_OK)
        return rc;
      if (an != bn)
        return perr(ps, start, "a range needs two numbers or two names, not a mix");
      if (a > b)
        return perr(ps, start, "range %.*s: start is greater than end (ranges do not wrap around)",
                    (int)(p - start > 40 ? 40 : p - start), start);
      (void)bstart;
    } else {
      b = a;
      single = 1;
      single_name = an;
    }
  }
  int step = 1;
  if (p < end && *p == '/') {
    const char *sp = ++p;
    if (single_name)
      return perr(ps, start, "a step needs '*', a number or a range before '/', not a single name");
    if (p >= end || !is_digit(*p)) {
      char buf[24];
      return perr(ps, sp, "expected a step (a number) after '/', found %s",
                  describe(p, end, buf, sizeof buf));
    }
    long v = 0;
    while (p < end && is_digit(*p)) {
      if (v > 100000)
        break;
      v = v * 10 + (*p++ - '0');
    }
    if (v < 1 || v > f->hi)
      return perr(ps, sp, "step %s%ld out of range 1-%d for the %s field", v > 100000 ? ">" : "",
                  v > 100000 ? 100000L : v, f->hi, f->name);
    step = (int)v;
    if (single)
      b = f->hi; /* v/n: from v to the field's maximum */
  }
  if (p < end)
    return bad_follow(ps, p, end);
  for (int x = a; x <= b; x += step)
    vs_add(vs, f, x);
  return CRUSTER_OK;
}

static cruster_status parse_field(parser *ps, const field_def *f, const char *p, const char *end,
                                  valset *vs) {
  memset(vs, 0, sizeof *vs);
  for (;;) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *ie = comma ? comma : end;
    cruster_status rc = parse_item(ps, f, p, ie, vs);
    if (rc != CRUSTER_OK)
      return rc;
    if (!comma)
      return CRUSTER_OK;
    p = comma + 1;
    if (p >= end)
      return perr(ps, p, "empty list item in the %s field (trailing ',')", f->name);
  }
}

static uint64_t vs_bits64(const valset *vs, int shift) { /* values lo.. as bits lo.. */
  uint64_t m = 0;
  for (int i = 0; i < 64 - shift; i++)
    if (vs->b[i / 8] >> (i % 8) & 1)
      m |= UINT64_C(1) << (i + shift);
  return m;
}

static int year_has(const cruster_cron *c, int64_t y) {
  if (y < YEAR_MIN || y > YEAR_MAX)
    return 0;
  int i = (int)(y - YEAR_MIN);
  return c->year[i / 8] >> (i % 8) & 1;
}

static int cron_first_match(const cruster_cron *c, int64_t L, int64_t limit, int64_t *out);

static void set_all(cruster_cron *c) {
  c->sec = c->min = (UINT64_C(1) << 60) - 1;
  c->hour = (UINT32_C(1) << 24) - 1;
  c->dom = UINT32_C(0xFFFFFFFE);
  c->mon = 0x1FFE;
  c->dow = 0xFE;
  memset(c->year, 0, sizeof c->year);
  for (int i = 0; i < NYEARS; i++)
    c->year[i / 8] |= (uint8_t)(1u << (i % 8));
}

static cruster_status parse_shorthand(parser *ps, const char *p, const char *end, cruster_cron *c) {
  static const struct {
    const char *name;
    int dom1, mon1, sun, hour_all;
  } SH[] = {{"@yearly", 1, 1, 0, 0},
            {"@monthly", 1, 0, 0, 0},
            {"@weekly", 0, 0, 1, 0},
            {"@daily", 0, 0, 0, 0},
            {"@hourly", 0, 0, 0, 1}};
  const char *q = p;
  while (q < end && !is_sep(*q))
    q++;
  size_t len = (size_t)(q - p);
  set_all(c);
  c->sec = c->min = 1;
  for (size_t i = 0; i < sizeof SH / sizeof *SH; i++) {
    if (strlen(SH[i].name) != len || memcmp(SH[i].name, p, len) != 0)
      continue;
    if (!SH[i].hour_all)
      c->hour = 1;
    if (SH[i].dom1)
      c->dom = 1u << 1;
    if (SH[i].mon1)
      c->mon = 1u << 1;
    if (SH[i].sun)
      c->dow = 1u << 1;
    while (q < end && is_sep(*q))
      q++;
    if (q < end)
      return perr(ps, q, "unexpected text after %s", SH[i].name);
    return CRUSTER_OK;
  }
  return perr(ps, p, "unknown shorthand '%.*s' (use @yearly, @monthly, @weekly, @daily or @hourly)",
              (int)(len > 16 ? 16 : len), p);
}

static cruster_status parse_expr(parser *ps, cruster_cron *c) {
  const char *s = ps->s;
  size_t len = strlen(s);
  const char *end = s + len;
  for (const char *p = s; p < end; p++) {
    unsigned char ch = (unsigned char)*p;
    if ((ch < 0x20 && !is_sep((char)ch)) || ch >= 0x7f)
      return perr(ps, p, "unexpected byte 0x%02X (cron expressions are ASCII)", ch);
  }
  const char *p = s;
  while (p < end && is_sep(*p))
    p++;
  if (p == end)
    return perr(ps, s, "empty expression");
  if (*p == '@')
    return parse_shorthand(ps, p, end, c);

  const char *fs[8], *fe[8];
  int nf = 0;
  while (p < end) {
    const char *q = p;
    while (q < end && !is_sep(*q))
      q++;
    if (nf == 7)
      return perr(ps, p,
                  "too many fields: expected 6 or 7 (second minute hour day-of-month month "
                  "day-of-week [year])");
    fs[nf] = p;
    fe[nf++] = q;
    while (q < end && is_sep(*q))
      q++;
    p = q;
  }
  if (nf < 6)
    return perr(ps, end,
                "expected 6 or 7 fields (second minute hour day-of-month month day-of-week "
                "[year]), found %d",
                nf);
  valset vs[7];
  for (int i = 0; i < nf; i++) {
    cruster_status rc = parse_field(ps, &FIELDS[i], fs[i], fe[i], &vs[i]);
    if (rc != CRUSTER_OK)
      return rc;
  }
  c->sec = vs_bits64(&vs[0], 0);
  c->min = vs_bits64(&vs[1], 0);
  c->hour = (uint32_t)vs_bits64(&vs[2], 0);
  c->dom = (uint32_t)vs_bits64(&vs[3], 1);
  c->mon = (uint16_t)vs_bits64(&vs[4], 1);
  c->dow = (uint8_t)vs_bits64(&vs[5], 1);
  if (nf == 7) {
    memcpy(c->year, vs[6].b, sizeof c->year);
  } else {
    for (int i = 0; i < NYEARS; i++)
      c->year[i / 8] |= (uint8_t)(1u << (i % 8));
  }
  /* An expression that matches no date at all is a mistake worth reporting
   * now (February 30th) rather than a job that silently never runs. */
  int64_t first;
  if (!cron_first_match(c, core_days_from_civil(YEAR_MIN, 1, 1) * 86400, INT64_MAX, &first))
    return perr(ps, fs[3],
                "the expression matches no date (its day-of-month, month, day-of-week and year "
                "fields never meet, e.g. February 30th)");
  return CRUSTER_OK;
}

/* ---- search --------------------------------------------------------------- */

/* The smallest set bit >= x in `m` (bits up to `max`), or -1. */
static int next_bit(uint64_t m, int x, int max) {
  for (int i = x; i <= max; i++)
    if (m >> i & 1)
      return i;
  return -1;
}

/* The first local time (seconds, as if UTC) >= L and < limit that matches,
 * up to the end of YEAR_MAX. Returns 0 when there is none. */
static int cron_first_match(const cruster_cron *c, int64_t L, int64_t limit, int64_t *out) {
  int64_t y;
  int mo, d, h, mi, s;
  int64_t days = core_floor_div(L, 86400), sod = L - days * 86400;
  if (days < core_days_from_civil(YEAR_MIN, 1, 1)) {
    y = YEAR_MIN, mo = 1, d = 1, h = mi = s = 0;
  } else {
    core_civil_from_days(days, &y, &mo, &d);
    h = (int)(sod / 3600), mi = (int)(sod / 60 % 60), s = (int)(sod % 60);
  }
  for (;;) {
    if (y > YEAR_MAX)
      return 0;
    if (!year_has(c, y)) {
      y++, mo = 1, d = 1, h = mi = s = 0;
      continue;
    }
    int m2 = next_bit(c->mon, mo, 12);
    if (m2 < 0) {
      y++, mo = 1, d = 1, h = mi = s = 0;
      continue;
    }
    if (m2 != mo)
      mo = m2, d = 1, h = mi = s = 0;
    if (d > core_days_in_month(y, mo)) {
      if (++mo > 12)
        y++, mo = 1;
      d = 1, h = mi = s = 0;
      continue;
    }
    int64_t dd = core_days_from_civil(y, mo, d);
    if (dd >= core_floor_div(limit, 86400) + 1)
      return 0; /* the whole day is past the limit */
    if (!(c->dom >> d & 1) || !(c->dow >> (core_weekday(dd) + 1) & 1)) {
      d++, h = mi = s = 0;
      continue;
    }
    int h2 = next_bit(c->hour, h, 23);
    if (h2 < 0) {
      d++, h = mi = s = 0;
      continue;
    }
    if (h2 != h)
      h = h2, mi = s = 0;
    int mi2 = next_bit(c->min, mi, 59);
    if (mi2 < 0) {
      if (++h > 23)
        d++, h = 0;
      mi = s = 0;
      continue;
    }
    if (mi2 != mi)
      mi = mi2, s = 0;
    int s2 = next_bit(c->sec, s, 59);
    if (s2 < 0) {
      if (++mi > 59) {
        mi = 0;
        if (++h > 23)
          d++, h = 0;
      }
      s = 0;
      continue;
    }
    int64_t found = dd * 86400 + h * 3600 + mi * 60 + s2;
    if (found >= limit)
      return 0;
    *out = found;
    return 1;
  }
}

cruster_status cruster_cron_next(const cruster_cron *c, int64_t after_ms, int64_t *next_ms,
                                 cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!c || !next_ms)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "cron: schedule or next_ms is NULL");
  /* Bounds in UTC seconds, with two days of margin for any offset. */
  const int64_t t_min = core_days_from_civil(YEAR_MIN, 1, 1) * 86400 - 2 * 86400;
  const int64_t t_max = core_days_from_civil(YEAR_MAX + 1, 1, 1) * 86400 + 2 * 86400;
  int64_t t = core_floor_div(after_ms, 1000) + 1; /* the first whole second > after_ms */
  if (t < t_min)
    t = t_min;
  /* Each round handles one stretch of constant offset, from t to the next
   * transition; the transitions up to 2100 are a few hundred at most. */
  for (int round = 0; t <= t_max && round < 100000; round++) {
    core_tz_span sp;
    core_tz_span_at(c->tz, t, &sp);
    int64_t L;
    if (!c->hours_all && sp.prev_t == t && sp.off > sp.prev_off) {
      /* t is a spring-forward: the slots in the skipped local times fire now. */
      int64_t g0 = t + sp.prev_off, g1 = t + sp.off;
      if (cron_first_match(c, g0, g1, &L)) {
        *next_ms = t * 1000;
        return CRUSTER_OK;
      }
    }
    int64_t lo = t + sp.off;
    if (!c->hours_all && sp.prev_t != INT64_MIN && sp.prev_off > sp.off) {
      /* After a fall-back: the repeated local times fired at their first
       * occurrence already. */
      int64_t rep_end = sp.prev_t + sp.prev_off;
      if (lo < rep_end)
        lo = rep_end;
    }
    int64_t seg_end = sp.next_t == INT64_MAX ? INT64_MAX : sp.next_t + sp.off;
    if (lo < seg_end && cron_first_match(c, lo, seg_end, &L)) {
      if (L - sp.off > t_max)
        break;
      *next_ms = (L - sp.off) * 1000;
      return CRUSTER_OK;
    }
    if (sp.next_t == INT64_MAX)
      break;
    t = sp.next_t;
  }
  return core_error_set(err, CRUSTER_E_NOT_FOUND, "cron: '%s' has no fire time after %lld ms",
                        c->expr, (long long)after_ms);
}

/* ---- the rest of the API ------------------------------------------------- */

cruster_status cruster_cron_parse(const char *expr, const char *tz, cruster_cron **out,
                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out)
    *out = NULL;
  if (!expr || !out)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "cron: expression or out is NULL");
  if (strnlen(expr, CRUSTER_CRON_MAX_LEN + 1) > CRUSTER_CRON_MAX_LEN)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cron: position %d: expression longer than %d bytes",
                          CRUSTER_CRON_MAX_LEN + 1, CRUSTER_CRON_MAX_LEN);
  cruster_cron *c = calloc(1, sizeof *c);
  if (!c)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  parser ps = {expr, err};
  cruster_status rc = parse_expr(&ps, c);
  if (rc != CRUSTER_OK) {
    cruster_cron_free(c);
    return rc;
  }
  c->hours_all = c->hour == (UINT32_C(1) << 24) - 1;
  int utc = !tz || !*tz || strcmp(tz, "UTC") == 0;
  if (!utc) {
    cruster_error *e = NULL;
    rc = core_tz_load(tz, &c->tz, &e);
    if (rc != CRUSTER_OK) {
      rc = core_error_set(err, rc, "cron: %s", e ? e->message : "time zone not loaded");
      cruster_error_free(e);
      cruster_cron_free(c);
      return rc;
    }
  }
  c->expr = core_strdup(expr);
  c->tz_name = core_strdup(utc ? "UTC" : tz);
  if (!c->expr || !c->tz_name) {
    cruster_cron_free(c);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  *out = c;
  return CRUSTER_OK;
}

const char *cruster_cron_expr(const cruster_cron *c) { return c ? c->expr : NULL; }
const char *cruster_cron_tz(const cruster_cron *c) { return c ? c->tz_name : NULL; }

void cruster_cron_free(cruster_cron *c) {
  if (!c)
    return;
  core_tz_free(c->tz);
  free(c->expr);
  free(c->tz_name);
  free(c);
}
