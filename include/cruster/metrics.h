/*
 * cruster/metrics.h -- reading a runtime's metrics.
 *
 * Each runtime keeps its own registry of counters, gauges and histograms
 * (with labels) that every layer updates. Names and meanings are listed in
 * docs/metrics.md. Read them as Prometheus text or one value at a time.
 */
#ifndef CRUSTER_METRICS_H
#define CRUSTER_METRICS_H

#include "common.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A metrics registry. Owned by its runtime; never free it. */
typedef struct cruster_metrics cruster_metrics;

/*
 * cruster_metrics_render
 *   Renders every series in the Prometheus text exposition format (0.0.4).
 *   `*out` receives a NUL-terminated string to release with cruster_free;
 *   `len` (may be NULL) its length.
 * Threads: any.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT; CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_metrics_render(const cruster_metrics *m, char **out,
                                                  size_t *len);

/*
 * cruster_metrics_value
 *   Reads one series. `name` is the metric name; for a histogram use
 *   "<name>_count" or "<name>_sum". `labels` selects the series in the form
 *   the text format prints them, without braces, e.g.
 *   "entity_type=\"Counter\"" (NULL or "" = the series without labels).
 * Threads: any.
 * Returns: CRUSTER_OK; CRUSTER_E_NOT_FOUND when no such series exists yet;
 *   CRUSTER_E_INVALID_ARGUMENT.
 */
CRUSTER_API cruster_status cruster_metrics_value(const cruster_metrics *m, const char *name,
                                                 const char *labels, double *value);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_METRICS_H */
