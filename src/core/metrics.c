/* The metrics registry: counters, gauges and histograms with labels, rendered
 * in the Prometheus text exposition format 0.0.4.
 *
 * Creating or finding a series takes the registry mutex; updating a series is
 * lock-free (doubles are kept as their bit pattern in an atomic uint64 and
 * updated with a CAS loop). Series are never freed before the registry, so a
 * core_metric pointer can be cached by its user. */
#include "core/metrics_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* Default histogram buckets, in seconds; the text is what render prints. */
static const double bucket_bounds[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                       0.005,   0.01,   0.025,   0.05,   0.1,   0.25,
                                       0.5,     1,      2.5,     5,      10};
static const char *const bucket_text[] = {"0.00005", "0.0001", "0.00025", "0.0005", "0.001",
                                          "0.0025",  "0.005",  "0.01",    "0.025",  "0.05",
                                          "0.1",     "0.25",   "0.5",     "1",      "2.5",
                                          "5",       "10"};
#define N_BOUNDS (sizeof bucket_bounds / sizeof bucket_bounds[0])

typedef struct metric_family metric_family;

struct core_metric {
  metric_family *family;
  char *labels; /* "" for the series without labels */
  _Atomic uint64_t value; /* counter/gauge: bits of a double */
  /* histogram: per-bucket (not cumulative) counts; the last is (10, +Inf] */
  _Atomic uint64_t buckets[N_BOUNDS + 1];
  _Atomic uint64_t sum; /* histogram: bits of a double */
};

struct metric_family {
  char *name;
  char *help;
  core_metric_kind kind;
  core_metric **series;
  size_t n_series, cap_series;
};

struct cruster_metrics {
  pthread_mutex_t mu;
  metric_family **families;
  size_t n_families, cap_families;
};

static uint64_t dbl_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double bits_dbl(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

static void atomic_add_double(_Atomic uint64_t *slot, double v) {
  uint64_t old = atomic_load_explicit(slot, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(slot, &old, dbl_bits(bits_dbl(old) + v),
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

cruster_metrics *core_metrics_new(void) {
  cruster_metrics *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  if (pthread_mutex_init(&m->mu, NULL) != 0) {
    free(m);
    return NULL;
  }
  return m;
}

static void series_free(core_metric *s) {
  if (!s) return;
  free(s->labels);
  free(s);
}

static void family_free(metric_family *f) {
  if (!f) return;
  for (size_t i = 0; i < f->n_series; i++) series_free(f->series[i]);
  free(f->series);
  free(f->name);
  free(f->help);
  free(f);
}

void core_metrics_free(cruster_metrics *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_families; i++) family_free(m->families[i]);
  free(m->families);
  pthread_mutex_destroy(&m->mu);
  free(m);
}

static int valid_metric_name(const char *name) {
  if (!name || !*name) return 0;
  for (const char *p = name; *p; p++) {
    char c = *p;
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(p != name && c >= '0' && c <= '9')) return 0;
  }
  return 1;
}

static metric_family *find_family(const cruster_metrics *m, const char *name) {
  for (size_t i = 0; i < m->n_families; i++)
    if (strcmp(m->families[i]->name, name) == 0) return m->families[i];
  return NULL;
}

static core_metric *find_series(const metric_family *f, const char *labels) {
  for (size_t i = 0; i < f->n_series; i++)
    if (strcmp(f->series[i]->labels, labels) == 0) return f->series[i];
  return NULL;
}

/* Returns a capacity that holds n + 1 elements (0 if it would overflow). */
static size_t next_cap(size_t n, size_t cap) {
  if (n < cap) return cap;
  size_t ncap = cap ? cap * 2 : 8;
  return ncap > cap ? ncap : 0;
}

static int grow_families(cruster_metrics *m) {
  size_t ncap = next_cap(m->n_families, m->cap_families);
  if (ncap == 0) return -1;
  if (ncap == m->cap_families) return 0;
  metric_family **na = realloc(m->families, ncap * sizeof *na);
  if (!na) return -1;
  m->families = na;
  m->cap_families = ncap;
  return 0;
}

static int grow_series(metric_family *f) {
  size_t ncap = next_cap(f->n_series, f->cap_series);
  if (ncap == 0) return -1;
  if (ncap == f->cap_series) return 0;
  core_metric **na = realloc(f->series, ncap * sizeof *na);
  if (!na) return -1;
  f->series = na;
  f->cap_series = ncap;
  return 0;
}

static metric_family *add_family(cruster_metrics *m, core_metric_kind kind, const char *name,
                                 const char *help) {
  if (grow_families(m) != 0) return NULL;
  metric_family *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->kind = kind;
  f->name = core_strdup(name);
  f->help = core_strdup(help ? help : "");
  if (!f->name || !f->help) {
    family_free(f);
    return NULL;
  }
  m->families[m->n_families++] = f;
  return f;
}

static core_metric *add_series(metric_family *f, const char *labels) {
  if (grow_series(f) != 0) return NULL;
  core_metric *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->family = f;
  s->labels = core_strdup(labels);
  if (!s->labels) {
    free(s);
    return NULL;
  }
  atomic_init(&s->value, dbl_bits(0.0));
  atomic_init(&s->sum, dbl_bits(0.0));
  for (size_t i = 0; i <= N_BOUNDS; i++) atomic_init(&s->buckets[i], 0);
  f->series[f->n_series++] = s;
  return s;
}

core_metric *core_metrics_get(cruster_metrics *m, core_metric_kind kind, const char *name,
                              const char *help, const char *labels) {
  if (!m || !valid_metric_name(name)) return NULL;
  if (kind != CORE_COUNTER && kind != CORE_GAUGE && kind != CORE_HISTOGRAM) return NULL;
  if (!labels) labels = "";
  core_metric *s = NULL;
  pthread_mutex_lock(&m->mu);
  metric_family *f = find_family(m, name);
  if (!f) f = add_family(m, kind, name, help);
  if (f && f->kind == kind) {
    s = find_series(f, labels);
    if (!s) s = add_series(f, labels);
  }
  pthread_mutex_unlock(&m->mu);
  return s;
}

void core_metric_add(core_metric *s, double v) {
  if (!s) return;
  switch (s->family->kind) {
    case CORE_COUNTER:
      if (!(v >= 0)) return; /* counters only go up */
      atomic_add_double(&s->value, v);
      break;
    case CORE_GAUGE: atomic_add_double(&s->value, v); break;
    case CORE_HISTOGRAM: break;
  }
}

void core_metric_set(core_metric *s, double v) {
  if (!s || s->family->kind != CORE_GAUGE) return;
  atomic_store_explicit(&s->value, dbl_bits(v), memory_order_relaxed);
}

void core_metric_observe(core_metric *s, double v) {
  if (!s || s->family->kind != CORE_HISTOGRAM) return;
  size_t i = 0;
  while (i < N_BOUNDS && !(v <= bucket_bounds[i])) i++;
  atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
  atomic_add_double(&s->sum, v);
}

static uint64_t histogram_count(const core_metric *s) {
  uint64_t n = 0;
  for (size_t i = 0; i <= N_BOUNDS; i++)
    n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
  return n;
}

double core_metric_get(const core_metric *s) {
  if (!s) return 0.0;
  if (s->family->kind == CORE_HISTOGRAM) return (double)histogram_count(s);
  return bits_dbl(atomic_load_explicit(&s->value, memory_order_relaxed));
}

void core_metrics_escape(const char *value, char *out, size_t outsz) {
  if (!out || outsz == 0) return;
  size_t o = 0;
  for (const char *p = value ? value : ""; *p; p++) {
    const char *rep = NULL;
    if (*p == '\\') rep = "\\\\";
    else if (*p == '"') rep = "\\\"";
    else if (*p == '\n') rep = "\\n";
    size_t need = rep ? 2 : 1;
    if (o + need >= outsz) break; /* never cut an escape in half */
    if (rep) {
      out[o++] = rep[0];
      out[o++] = rep[1];
    } else {
      out[o++] = *p;
    }
  }
  out[o] = '\0';
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct strbuf {
  char *p;
  size_t len, cap;
  int oom;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t ncap = b->cap * 2;
    while (ncap - b->len <= (size_t)n) ncap *= 2;
    char *np = realloc(b->p, ncap);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = ncap;
  }
}

/* A sample value as Prometheus prints it: integers without a fraction,
 * otherwise the shortest text that reads back as the same double. */
static void format_value(char *buf, size_t sz, double v) {
  if (isnan(v)) {
    snprintf(buf, sz, "NaN");
  } else if (isinf(v)) {
    snprintf(buf, sz, v > 0 ? "+Inf" : "-Inf");
  } else if (v == floor(v) && fabs(v) < 1e15) {
    snprintf(buf, sz, "%.0f", v);
  } else {
    snprintf(buf, sz, "%.15g", v);
    if (strtod(buf, NULL) != v) snprintf(buf, sz, "%.17g", v);
  }
}

/* HELP text escapes backslash and newline. */
static void sb_help(strbuf *b, const char *help) {
  for (const char *p = help; *p; p++) {
    if (*p == '\\') sb_printf(b, "\\\\");
    else if (*p == '\n') sb_printf(b, "\\n");
    else sb_printf(b, "%c", *p);
  }
}

static int cmp_family(const void *a, const void *b) {
  const metric_family *fa = *(const metric_family *const *)a;
  const metric_family *fb = *(const metric_family *const *)b;
  return strcmp(fa->name, fb->name);
}

static int cmp_series(const void *a, const void *b) {
  const core_metric *sa = *(const core_metric *const *)a;
  const core_metric *sb = *(const core_metric *const *)b;
  return strcmp(sa->labels, sb->labels);
}

static const char *kind_name(core_metric_kind k) {
  return k == CORE_COUNTER ? "counter" : k == CORE_GAUGE ? "gauge" : "histogram";
}

static void render_series(strbuf *b, const metric_family *f, const core_metric *s) {
  char num[64];
  const char *lb = s->labels;
  int has = lb[0] != '\0';
  if (f->kind != CORE_HISTOGRAM) {
    format_value(num, sizeof num, core_metric_get(s));
    if (has) sb_printf(b, "%s{%s} %s\n", f->name, lb, num);
    else sb_printf(b, "%s %s\n", f->name, num);
    return;
  }
  uint64_t cum = 0;
  for (size_t i = 0; i <= N_BOUNDS; i++) {
    cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
    const char *le = i < N_BOUNDS ? bucket_text[i] : "+Inf";
    sb_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", f->name, lb, has ? "," : "", le,
              (unsigned long long)cum);
  }
  format_value(num, sizeof num, bits_dbl(atomic_load_explicit(&s->sum, memory_order_relaxed)));
  if (has) {
    sb_printf(b, "%s_sum{%s} %s\n", f->name, lb, num);
    sb_printf(b, "%s_count{%s} %llu\n", f->name, lb, (unsigned long long)cum);
  } else {
    sb_printf(b, "%s_sum %s\n", f->name, num);
    sb_printf(b, "%s_count %llu\n", f->name, (unsigned long long)cum);
  }
}

cruster_status cruster_metrics_render(const cruster_metrics *cm, char **out, size_t *len) {
  if (!cm || !out) return CRUSTER_E_INVALID_ARGUMENT;
  /* The mutex guards the registry's structure, not its logical value. */
  cruster_metrics *m = (cruster_metrics *)cm;
  strbuf b = {malloc(1024), 0, 1024, 0};
  if (!b.p) return CRUSTER_E_NOMEM;
  b.p[0] = '\0';
  pthread_mutex_lock(&m->mu);
  metric_family **fams = NULL;
  if (m->n_families) {
    fams = malloc(m->n_families * sizeof *fams);
    if (!fams) b.oom = 1;
    else {
      memcpy(fams, m->families, m->n_families * sizeof *fams);
      qsort(fams, m->n_families, sizeof *fams, cmp_family);
    }
  }
  for (size_t i = 0; fams && i < m->n_families && !b.oom; i++) {
    metric_family *f = fams[i];
    sb_printf(&b, "# HELP %s ", f->name);
    sb_help(&b, f->help);
    sb_printf(&b, "\n# TYPE %s %s\n", f->name, kind_name(f->kind));
    if (f->n_series == 0) continue;
    core_metric **ss = malloc(f->n_series * sizeof *ss);
    if (!ss) {
      b.oom = 1;
      break;
    }
    memcpy(ss, f->series, f->n_series * sizeof *ss);
    qsort(ss, f->n_series, sizeof *ss, cmp_series);
    for (size_t j = 0; j < f->n_series; j++) render_series(&b, f, ss[j]);
    free(ss);
  }
  pthread_mutex_unlock(&m->mu);
  free(fams);
  if (b.oom) {
    free(b.p);
    return CRUSTER_E_NOMEM;
  }
  *out = b.p;
  if (len) *len = b.len;
  return CRUSTER_OK;
}

static int has_suffix(const char *s, size_t n, const char *suffix, size_t *stem) {
  size_t k = strlen(suffix);
  if (n <= k || memcmp(s + n - k, suffix, k) != 0) return 0;
  *stem = n - k;
  return 1;
}

cruster_status cruster_metrics_value(const cruster_metrics *cm, const char *name,
                                     const char *labels, double *value) {
  if (!cm || !name || !value) return CRUSTER_E_INVALID_ARGUMENT;
  if (!labels) labels = "";
  cruster_metrics *m = (cruster_metrics *)cm;
  cruster_status rc = CRUSTER_E_NOT_FOUND;
  pthread_mutex_lock(&m->mu);
  metric_family *f = find_family(m, name);
  if (f && f->kind != CORE_HISTOGRAM) {
    core_metric *s = find_series(f, labels);
    if (s) {
      *value = core_metric_get(s);
      rc = CRUSTER_OK;
    }
  } else if (!f) {
    size_t n = strlen(name), stem = 0;
    int want_sum = 0;
    if (has_suffix(name, n, "_count", &stem) || (want_sum = has_suffix(name, n, "_sum", &stem))) {
      char *base = malloc(stem + 1);
      if (!base) {
        rc = CRUSTER_E_NOMEM;
      } else {
        memcpy(base, name, stem);
        base[stem] = '\0';
        metric_family *h = find_family(m, base);
        core_metric *s = h && h->kind == CORE_HISTOGRAM ? find_series(h, labels) : NULL;
        if (s) {
          *value = want_sum ? bits_dbl(atomic_load_explicit(&s->sum, memory_order_relaxed))
                            : (double)histogram_count(s);
          rc = CRUSTER_OK;
        }
        free(base);
      }
    }
  }
  pthread_mutex_unlock(&m->mu);
  return rc;
}
