/* Internal: the metrics registry behind cruster_metrics. Thread-safe:
 * lookups take a mutex; updates of a series are lock-free atomics
 * (histograms: atomic bucket counters and an atomic double sum). */
#ifndef CORE_METRICS_INTERNAL_H
#define CORE_METRICS_INTERNAL_H

#include "core/prefix.h"

#include <cruster/metrics.h>

typedef enum core_metric_kind { CORE_COUNTER, CORE_GAUGE, CORE_HISTOGRAM } core_metric_kind;
typedef struct core_metric core_metric; /* one series (name + labels) */

cruster_metrics *core_metrics_new(void);
void core_metrics_free(cruster_metrics *m);

/* Get-or-create the series `name`{labels}. `labels` is the text between the
 * braces ("entity_type=\"Counter\",outcome=\"ok\""), NULL or "" for none; the
 * caller escapes values (core_metrics_escape). `help` is used the first time
 * a name is seen. Kind mismatch with an existing name -> NULL. The pointer
 * stays valid until core_metrics_free. NULL on OOM, and when `name` is not a
 * valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*).
 * Counters ignore negative (and NaN) increments and core_metric_set; gauges
 * take both; histograms take only core_metric_observe. */
core_metric *core_metrics_get(cruster_metrics *m, core_metric_kind kind, const char *name,
                              const char *help, const char *labels);

void core_metric_add(core_metric *s, double v);     /* counter, gauge */
void core_metric_set(core_metric *s, double v);     /* gauge */
void core_metric_observe(core_metric *s, double v); /* histogram (seconds buckets) */
double core_metric_get(const core_metric *s);       /* counter/gauge value; histogram count */

/* Escapes a label value for the text format (\\, \", \n) into out (size
 * outsz, always NUL-terminated, truncated if needed). */
void core_metrics_escape(const char *value, char *out, size_t outsz);

#endif
