/* Time zones: a TZif reader (RFC 8536: version 1 and 2+ data, the footer's
 * POSIX TZ rule for instants past the table) and civil-calendar arithmetic.
 * Written from RFC 8536 and POSIX (XBD 8.3, the TZ variable); no global
 * state, no localtime(), no setenv("TZ"). */
#include "core/tz.h"

#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- civil calendar ------------------------------------------------------ */

/* Days are counted in eras of 400 years (146097 days) starting on March 1st,
 * so that the leap day is the last day of a year of the count. */
int64_t core_days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = core_floor_div(y, 400);
  int64_t yoe = y - era * 400;                         /* 0..399 */
  int64_t mp = m > 2 ? m - 3 : m + 9;                  /* March = 0 */
  int64_t doy = (153 * mp + 2) / 5 + d - 1;            /* 0..365 */
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; /* 0..146096 */
  return era * 146097 + doe - 719468; /* 719468: days from 0000-03-01 to 1970-01-01 */
}

void core_civil_from_days(int64_t days, int64_t *y, int *m, int *d) {
  int64_t z = days + 719468;
  int64_t era = core_floor_div(z, 146097);
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

static int is_leap(int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int core_days_in_month(int64_t y, int m) {
  static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (m == 2 && is_leap(y))
    return 29;
  return dim[(m - 1) % 12];
}

int core_weekday(int64_t days) { /* 1970-01-01 was a Thursday */
  int64_t w = (days + 4) % 7;
  return (int)(w < 0 ? w + 7 : w);
}

/* ---- POSIX TZ rules ------------------------------------------------------ */

typedef struct rule_date {
  char kind; /* 'J': Jn (1..365, no Feb 29); 'D': n (0..365); 'M': Mm.w.d */
  int n, m, w, d;
  int32_t secs; /* local time of day of the change, -167h..167h */
} rule_date;

typedef struct posix_rule {
  int32_t std_off, dst_off; /* seconds east of UTC */
  int has_dst;
  rule_date start, end; /* start: into DST (std time); end: out of DST (DST time) */
} posix_rule;

struct core_tz {
  size_t n;           /* transitions */
  int64_t *at;        /* ascending instants */
  int32_t *off_after; /* the offset from at[i] on */
  int32_t off0;       /* before the first transition (time type 0) */
  int has_rule;       /* a usable footer */
  posix_rule rule;
};

/* Names: "<...>" quoted (alphanumerics, '+', '-') or 3+ letters. */
static const char *rule_name(const char *p) {
  if (*p == '<') {
    const char *q = p + 1;
    while ((*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z') || (*q >= '0' && *q <= '9') ||
           *q == '+' || *q == '-')
      q++;
    if (*q != '>' || q - p < 4)
      return NULL;
    return q + 1;
  }
  const char *q = p;
  while ((*q >= 'A' && *q <= 'Z') || (*q >= 'a' && *q <= 'z'))
    q++;
  return q - p >= 3 ? q : NULL;
}

/* [+-]hh[:mm[:ss]] with hh <= max_h; stores seconds (sign applied). */
static const char *rule_hms(const char *p, int max_h, int32_t *out) {
  int sign = 1;
  if (*p == '+' || *p == '-')
    sign = *p++ == '-' ? -1 : 1;
  int part[3] = {0, 0, 0};
  for (int i = 0; i < 3; i++) {
    if (i > 0) {
      if (*p != ':')
        break;
      p++;
    }
    if (*p < '0' || *p > '9')
      return NULL;
    int v = 0, digits = 0;
    while (*p >= '0' && *p <= '9') {
      if (++digits > 3)
        return NULL;
      v = v * 10 + (*p++ - '0');
    }
    part[i] = v;
  }
  if (part[0] > max_h || part[1] > 59 || part[2] > 59)
    return NULL;
  *out = sign * (part[0] * 3600 + part[1] * 60 + part[2]);
  return p;
}

static const char *rule_num(const char *p, int lo, int hi, int *out) {
  if (*p < '0' || *p > '9')
    return NULL;
  int v = 0;
  while (*p >= '0' && *p <= '9') {
    v = v * 10 + (*p++ - '0');
    if (v > hi)
      return NULL;
  }
  if (v < lo)
    return NULL;
  *out = v;
  return p;
}

static const char *rule_date_parse(const char *p, rule_date *rd) {
  memset(rd, 0, sizeof *rd);
  if (*p == 'J') {
    rd->kind = 'J';
    p = rule_num(p + 1, 1, 365, &rd->n);
  } else if (*p == 'M') {
    rd->kind = 'M';
    p = rule_num(p + 1, 1, 12, &rd->m);
    if (!p || *p++ != '.')
      return NULL;
    p = rule_num(p, 1, 5, &rd->w);
    if (!p || *p++ != '.')
      return NULL;
    p = rule_num(p, 0, 6, &rd->d);
  } else {
    rd->kind = 'D';
    p = rule_num(p, 0, 365, &rd->n);
  }
  if (!p)
    return NULL;
  rd->secs = 2 * 3600;
  if (*p == '/')
    p = rule_hms(p + 1, 167, &rd->secs);
  return p;
}

static int posix_rule_parse(const char *s, posix_rule *r) {
  memset(r, 0, sizeof *r);
  const char *p = rule_name(s);
  int32_t v;
  if (!p || !(p = rule_hms(p, 24, &v)))
    return -1;
  r->std_off = -v; /* POSIX offsets are west-positive */
  r->dst_off = r->std_off;
  if (*p == '\0')
    return 0;
  if (!(p = rule_name(p)))
    return -1;
  r->has_dst = 1;
  r->dst_off = r->std_off + 3600;
  if (*p != ',' && *p != '\0') {
    if (!(p = rule_hms(p, 24, &v)))
      return -1;
    r->dst_off = -v;
  }
  /* A DST name without a rule leaves the dates to the implementation; TZif
   * footers always give them, so we do not guess. */
  if (*p++ != ',')
    return -1;
  if (!(p = rule_date_parse(p, &r->start)) || *p++ != ',')
    return -1;
  if (!(p = rule_date_parse(p, &r->end)) || *p != '\0')
    return -1;
  return 0;
}

/* The UTC instant at which rule date `rd` happens in year `y`, the local
 * time then being counted in offset `off`. */
static int64_t rule_instant(const rule_date *rd, int64_t y, int32_t off) {
  int64_t day;
  if (rd->kind == 'J') {
    day = core_days_from_civil(y, 1, 1) + rd->n - 1 + (is_leap(y) && rd->n >= 60);
  } else if (rd->kind == 'D') {
    day = core_days_from_civil(y, 1, 1) + rd->n;
  } else {
    int64_t first = core_days_from_civil(y, rd->m, 1);
    int md = 1 + (rd->d - core_weekday(first) + 7) % 7 + (rd->w - 1) * 7;
    while (md > core_days_in_month(y, rd->m))
      md -= 7;
    day = first + md - 1;
  }
  return day * 86400 + rd->secs - off;
}

static void rule_span(const posix_rule *r, int64_t t, core_tz_span *out) {
  out->off = out->prev_off = out->next_off = r->std_off;
  out->prev_t = INT64_MIN;
  out->next_t = INT64_MAX;
  if (!r->has_dst)
    return;
  int64_t y;
  int m, d;
  core_civil_from_days(core_floor_div(t, 86400), &y, &m, &d);
  /* The changes of five years around t, in order (stable: of two changes at
   * one instant the later year's wins, so permanent DST stays DST). */
  struct {
    int64_t at;
    int32_t off;
  } ch[10];
  int n = 0;
  for (int64_t yy = y - 2; yy <= y + 2; yy++) {
    int64_t s = rule_instant(&r->start, yy, r->std_off);
    int64_t e = rule_instant(&r->end, yy, r->dst_off);
    int s_first = s <= e;
    ch[n].at = s_first ? s : e;
    ch[n++].off = s_first ? r->dst_off : r->std_off;
    ch[n].at = s_first ? e : s;
    ch[n++].off = s_first ? r->std_off : r->dst_off;
  }
  for (int i = 1; i < n; i++) /* insertion sort, stable */
    for (int j = i; j > 0 && ch[j - 1].at > ch[j].at; j--) {
      int64_t a = ch[j].at;
      int32_t o = ch[j].off;
      ch[j] = ch[j - 1];
      ch[j - 1].at = a;
      ch[j - 1].off = o;
    }
  int last = -1;
  for (int i = 0; i < n && ch[i].at <= t; i++)
    last = i;
  if (last >= 0) {
    out->off = ch[last].off;
    out->prev_t = ch[last].at;
    out->prev_off =
        last > 0 ? ch[last - 1].off : (ch[last].off == r->std_off ? r->dst_off : r->std_off);
  } else {
    out->off = ch[0].off == r->std_off ? r->dst_off : r->std_off;
    out->prev_off = out->off;
  }
  out->next_off = out->off;
  if (last + 1 < n) {
    int k = last + 1;
    out->next_t = ch[k].at;
    while (k + 1 < n && ch[k + 1].at == ch[k].at)
      k++;
    out->next_off = ch[k].off;
  }
}

/* ---- spans --------------------------------------------------------------- */

void core_tz_span_at(const core_tz *tz, int64_t t, core_tz_span *out) {
  if (!tz) {
    out->off = out->prev_off = out->next_off = 0;
    out->prev_t = INT64_MIN;
    out->next_t = INT64_MAX;
    return;
  }
  size_t n = tz->n;
  if (n == 0) {
    if (tz->has_rule) {
      rule_span(&tz->rule, t, out);
    } else {
      out->off = out->prev_off = out->next_off = tz->off0;
      out->prev_t = INT64_MIN;
      out->next_t = INT64_MAX;
    }
    return;
  }
  size_t lo = 0, hi = n; /* i = number of transitions <= t */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (tz->at[mid] <= t)
      lo = mid + 1;
    else
      hi = mid;
  }
  size_t i = lo;
  if (i == 0) {
    out->off = out->prev_off = tz->off0;
    out->prev_t = INT64_MIN;
    out->next_t = tz->at[0];
    out->next_off = tz->off_after[0];
    return;
  }
  out->off = tz->off_after[i - 1];
  out->prev_t = tz->at[i - 1];
  out->prev_off = i >= 2 ? tz->off_after[i - 2] : tz->off0;
  if (i < n) {
    out->next_t = tz->at[i];
    out->next_off = tz->off_after[i];
    return;
  }
  /* Past the table: the footer rule, if any (RFC 8536 3.3). */
  out->next_t = INT64_MAX;
  out->next_off = out->off;
  if (!tz->has_rule)
    return;
  core_tz_span fs;
  rule_span(&tz->rule, t, &fs);
  out->off = fs.off;
  out->next_t = fs.next_t;
  out->next_off = fs.next_off;
  if (fs.prev_t != INT64_MIN && fs.prev_t > tz->at[n - 1]) {
    out->prev_t = fs.prev_t;
    out->prev_off = fs.prev_off;
  }
  if (out->next_t == INT64_MAX)
    out->next_off = out->off;
}

/* ---- TZif ---------------------------------------------------------------- */

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static int64_t be64(const uint8_t *p) {
  uint64_t v = (uint64_t)be32(p) << 32 | be32(p + 4);
  return (int64_t)v; /* two's complement on every platform we build for */
}

typedef struct tzif_hdr {
  char version;
  uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
} tzif_hdr;

static int tzif_header(const uint8_t *p, size_t len, tzif_hdr *h) {
  if (len < 44 || memcmp(p, "TZif", 4) != 0)
    return -1;
  h->version = (char)p[4];
  h->isutcnt = be32(p + 20);
  h->isstdcnt = be32(p + 24);
  h->leapcnt = be32(p + 28);
  h->timecnt = be32(p + 32);
  h->typecnt = be32(p + 36);
  h->charcnt = be32(p + 40);
  return 0;
}

/* Size of a data block with `tsize`-byte times; 0 when counts are absurd
 * (each is capped so the sum cannot overflow). */
static size_t tzif_block_size(const tzif_hdr *h, size_t tsize) {
  const uint32_t cap = CORE_TZ_MAX_FILE;
  if (h->timecnt > cap || h->typecnt > cap || h->charcnt > cap || h->leapcnt > cap ||
      h->isstdcnt > cap || h->isutcnt > cap)
    return 0;
  return (size_t)h->timecnt * tsize + h->timecnt + (size_t)h->typecnt * 6 + h->charcnt +
         (size_t)h->leapcnt * (tsize + 4) + h->isstdcnt + h->isutcnt;
}

cruster_status core_tz_parse_tzif(const uint8_t *data, size_t len, const char *what, core_tz **out,
                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  *out = NULL;
  tzif_hdr h;
  if (tzif_header(data, len, &h) != 0)
    return core_error_set(err, CRUSTER_E_NOT_FOUND, "time zone '%s': not a TZif file", what);
  const char *why = NULL;
  size_t b1 = tzif_block_size(&h, 4);
  const uint8_t *blk = data + 44;
  size_t tsize = 4;
  const uint8_t *footer = NULL;
  size_t footer_len = 0;
  if (b1 == 0 && h.typecnt != 0) {
    why = "counts too large";
    goto bad;
  }
  if (b1 > len - 44) {
    why = "truncated";
    goto bad;
  }
  if (h.version >= '2') {
    const uint8_t *p2 = data + 44 + b1;
    size_t left = len - 44 - b1;
    if (tzif_header(p2, left, &h) != 0) {
      why = "second header missing";
      goto bad;
    }
    size_t b2 = tzif_block_size(&h, 8);
    if ((b2 == 0 && h.typecnt != 0) || b2 > left - 44) {
      why = "truncated";
      goto bad;
    }
    blk = p2 + 44;
    tsize = 8;
    const uint8_t *f = blk + b2;
    size_t fl = left - 44 - b2;
    if (fl < 2 || f[0] != '\n') {
      why = "footer missing";
      goto bad;
    }
    const uint8_t *nl = memchr(f + 1, '\n', fl - 1);
    if (!nl) {
      why = "footer not terminated";
      goto bad;
    }
    footer = f + 1;
    footer_len = (size_t)(nl - footer);
  }
  if (h.typecnt == 0 || h.typecnt > 256) {
    why = "bad number of time types";
    goto bad;
  }
  if ((h.isstdcnt != 0 && h.isstdcnt != h.typecnt) || (h.isutcnt != 0 && h.isutcnt != h.typecnt)) {
    why = "bad indicator counts";
    goto bad;
  }
  if (h.leapcnt != 0) {
    why = "leap-second zones (right/...) are not supported; use the zone without leap seconds";
    goto bad;
  }
  const uint8_t *times = blk;
  const uint8_t *idx = times + (size_t)h.timecnt * tsize;
  const uint8_t *types = idx + h.timecnt;
  int32_t offs[256];
  for (uint32_t i = 0; i < h.typecnt; i++) {
    int32_t off = (int32_t)be32(types + 6 * i);
    if (off <= -25 * 3600 || off >= 26 * 3600) {
      why = "UTC offset out of range";
      goto bad;
    }
    if (types[6 * i + 4] > 1 || types[6 * i + 5] >= h.charcnt) {
      why = "bad time type";
      goto bad;
    }
    offs[i] = off;
  }
  core_tz *tz = calloc(1, sizeof *tz);
  if (!tz)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  tz->off0 = offs[0];
  if (h.timecnt > 0) {
    tz->at = malloc((size_t)h.timecnt * sizeof *tz->at);
    tz->off_after = malloc((size_t)h.timecnt * sizeof *tz->off_after);
    if (!tz->at || !tz->off_after) {
      core_tz_free(tz);
      return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
    }
  }
  for (uint32_t i = 0; i < h.timecnt; i++) {
    int64_t t =
        tsize == 8 ? be64(times + 8 * (size_t)i) : (int64_t)(int32_t)be32(times + 4 * (size_t)i);
    if (idx[i] >= h.typecnt || (i > 0 && t <= tz->at[i - 1])) {
      core_tz_free(tz);
      why = idx[i] >= h.typecnt ? "bad time type index" : "transitions not ascending";
      goto bad;
    }
    tz->at[i] = t;
    tz->off_after[i] = offs[idx[i]];
  }
  tz->n = h.timecnt;
  if (footer && footer_len > 0) {
    char buf[256];
    if (footer_len >= sizeof buf || memchr(footer, '\0', footer_len)) {
      core_tz_free(tz);
      why = "footer too long";
      goto bad;
    }
    memcpy(buf, footer, footer_len);
    buf[footer_len] = '\0';
    if (posix_rule_parse(buf, &tz->rule) != 0) {
      core_tz_free(tz);
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "time zone '%s': footer TZ rule '%s' not understood", what, buf);
    }
    tz->has_rule = 1;
  }
  *out = tz;
  return CRUSTER_OK;
bad:
  return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "time zone '%s': damaged TZif file (%s)",
                        what, why);
}

cruster_status core_tz_from_posix(const char *rule, core_tz **out, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  *out = NULL;
  if (!rule || strlen(rule) > 255)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "TZ rule missing or too long");
  core_tz *tz = calloc(1, sizeof *tz);
  if (!tz)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  if (posix_rule_parse(rule, &tz->rule) != 0) {
    free(tz);
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "TZ rule '%s' not understood", rule);
  }
  tz->has_rule = 1;
  tz->off0 = tz->rule.std_off;
  *out = tz;
  return CRUSTER_OK;
}

void core_tz_free(core_tz *tz) {
  if (!tz)
    return;
  free(tz->at);
  free(tz->off_after);
  free(tz);
}

static int name_ok(const char *name) {
  size_t len = strlen(name);
  if (len == 0 || len > CORE_TZ_MAX_NAME || name[0] == '/')
    return 0;
  for (const char *p = name; *p; p++) {
    char c = *p;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-' || c == '+' || c == '.' || c == '/'))
      return 0;
  }
  /* No "." or ".." component, no empty one. */
  const char *c = name;
  for (;;) {
    const char *e = strchr(c, '/');
    size_t cl = e ? (size_t)(e - c) : strlen(c);
    if (cl == 0 || (cl == 1 && c[0] == '.') || (cl == 2 && c[0] == '.' && c[1] == '.'))
      return 0;
    if (!e)
      break;
    c = e + 1;
  }
  return 1;
}

cruster_status core_tz_load(const char *name, core_tz **out, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  *out = NULL;
  if (!name || !name_ok(name))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "time zone name '%.64s' is not valid (a relative path such as "
                          "\"Europe/Berlin\" of letters, digits and ._+-/ without \"..\", at most "
                          "%d bytes)",
                          name ? name : "(null)", CORE_TZ_MAX_NAME);
  const char *dir = getenv("TZDIR");
  if (!dir || !*dir)
    dir = "/usr/share/zoneinfo";
  size_t dl = strlen(dir), nl = strlen(name);
  if (dl > 4096)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "TZDIR is too long");
  char *path = malloc(dl + nl + 2);
  if (!path)
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  memcpy(path, dir, dl);
  path[dl] = '/';
  memcpy(path + dl + 1, name, nl + 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0)
      close(fd);
    cruster_status rc = core_error_set(err, CRUSTER_E_NOT_FOUND,
                                       "unknown time zone '%s' (no zone file %s)", name, path);
    free(path);
    return rc;
  }
  free(path);
  if (st.st_size <= 0 || st.st_size > CORE_TZ_MAX_FILE) {
    close(fd);
    return core_error_set(err, CRUSTER_E_NOT_FOUND, "time zone '%s': not a TZif file (size %lld)",
                          name, (long long)st.st_size);
  }
  size_t size = (size_t)st.st_size, got = 0;
  uint8_t *buf = malloc(size);
  if (!buf) {
    close(fd);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  while (got < size) {
    ssize_t r = read(fd, buf + got, size - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  close(fd);
  cruster_status rc = core_tz_parse_tzif(buf, got, name, out, err);
  free(buf);
  return rc;
}
