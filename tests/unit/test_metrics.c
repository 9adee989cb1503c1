/* The metrics registry: kinds, labels, exact text rendering, value lookup and
 * exact sums under concurrent updates. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/common.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/metrics_internal.h"

static int setup(void **state) {
  *state = core_metrics_new();
  return *state ? 0 : -1;
}

static int teardown(void **state) {
  core_metrics_free(*state);
  return 0;
}

static void counter_counts_and_ignores_decrements(void **state) {
  cruster_metrics *m = *state;
  core_metric *c = core_metrics_get(m, CORE_COUNTER, "cluster_sent_total", "Messages sent", NULL);
  assert_non_null(c);
  core_metric_add(c, 1);
  core_metric_add(c, 2.5);
  core_metric_add(c, -10); /* counters never go down */
  core_metric_set(c, 100); /* set is for gauges */
  assert_true(core_metric_get(c) == 3.5);
  double v = 0;
  assert_int_equal(cruster_metrics_value(m, "cluster_sent_total", NULL, &v), CRUSTER_OK);
  assert_true(v == 3.5);
  assert_int_equal(cruster_metrics_value(m, "cluster_sent_total", "", &v), CRUSTER_OK);
}

static void gauge_sets_and_adds(void **state) {
  cruster_metrics *m = *state;
  core_metric *g = core_metrics_get(m, CORE_GAUGE, "cluster_shards", "Shards owned", "");
  core_metric_set(g, 10);
  core_metric_add(g, -3);
  assert_true(core_metric_get(g) == 7);
}

static void same_name_and_labels_is_same_series(void **state) {
  cruster_metrics *m = *state;
  core_metric *a = core_metrics_get(m, CORE_COUNTER, "x_total", "h", "k=\"v\"");
  core_metric *b = core_metrics_get(m, CORE_COUNTER, "x_total", "other help", "k=\"v\"");
  core_metric *c = core_metrics_get(m, CORE_COUNTER, "x_total", "h", "k=\"w\"");
  assert_ptr_equal(a, b);
  assert_ptr_not_equal(a, c);
  core_metric_add(a, 1);
  core_metric_add(c, 5);
  double v;
  assert_int_equal(cruster_metrics_value(m, "x_total", "k=\"v\"", &v), CRUSTER_OK);
  assert_true(v == 1);
  assert_int_equal(cruster_metrics_value(m, "x_total", "k=\"w\"", &v), CRUSTER_OK);
  assert_true(v == 5);
}

static void kind_mismatch_and_bad_names_give_null(void **state) {
  cruster_metrics *m = *state;
  assert_non_null(core_metrics_get(m, CORE_COUNTER, "a_total", "h", NULL));
  assert_null(core_metrics_get(m, CORE_GAUGE, "a_total", "h", NULL));
  assert_null(core_metrics_get(m, CORE_HISTOGRAM, "a_total", "h", "x=\"1\""));
  assert_null(core_metrics_get(m, CORE_GAUGE, "9starts_with_digit", "h", NULL));
  assert_null(core_metrics_get(m, CORE_GAUGE, "has-dash", "h", NULL));
  assert_null(core_metrics_get(m, CORE_GAUGE, "", "h", NULL));
  assert_null(core_metrics_get(NULL, CORE_GAUGE, "ok", "h", NULL));
}

static void value_lookup_misses_are_not_found(void **state) {
  cruster_metrics *m = *state;
  double v = -1;
  assert_int_equal(cruster_metrics_value(m, "nothing", NULL, &v), CRUSTER_E_NOT_FOUND);
  core_metrics_get(m, CORE_GAUGE, "g", "h", "a=\"1\"");
  assert_int_equal(cruster_metrics_value(m, "g", NULL, &v), CRUSTER_E_NOT_FOUND);
  assert_int_equal(cruster_metrics_value(m, "g", "a=\"2\"", &v), CRUSTER_E_NOT_FOUND);
  assert_int_equal(cruster_metrics_value(m, "g_count", "a=\"1\"", &v), CRUSTER_E_NOT_FOUND);
  assert_true(v == -1);
  assert_int_equal(cruster_metrics_value(NULL, "g", NULL, &v), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_metrics_value(m, NULL, NULL, &v), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_metrics_value(m, "g", "a=\"1\"", NULL), CRUSTER_E_INVALID_ARGUMENT);
}

static void histogram_count_and_sum_are_readable(void **state) {
  cruster_metrics *m = *state;
  core_metric *h = core_metrics_get(m, CORE_HISTOGRAM, "lat_seconds", "Latency", "op=\"x\"");
  core_metric_observe(h, 0.5);
  core_metric_observe(h, 0.25);
  core_metric_observe(h, 100);
  core_metric_add(h, 7); /* ignored on histograms */
  assert_true(core_metric_get(h) == 3);
  double v;
  assert_int_equal(cruster_metrics_value(m, "lat_seconds_count", "op=\"x\"", &v), CRUSTER_OK);
  assert_true(v == 3);
  assert_int_equal(cruster_metrics_value(m, "lat_seconds_sum", "op=\"x\"", &v), CRUSTER_OK);
  assert_true(v == 100.75);
  assert_int_equal(cruster_metrics_value(m, "lat_seconds", "op=\"x\"", &v), CRUSTER_E_NOT_FOUND);
  assert_int_equal(cruster_metrics_value(m, "lat_seconds_count", NULL, &v), CRUSTER_E_NOT_FOUND);
}

static void render_is_exact_prometheus_text(void **state) {
  cruster_metrics *m = *state;
  /* Created out of order: rendering sorts names and series. */
  core_metric *h = core_metrics_get(m, CORE_HISTOGRAM, "req_seconds", "Request time", "t=\"A\"");
  core_metric *g = core_metrics_get(m, CORE_GAUGE, "cluster_shards", "Shards owned\nby me", NULL);
  core_metric *cb = core_metrics_get(m, CORE_COUNTER, "msgs_total", "Messages", "kind=\"b\"");
  core_metric *ca = core_metrics_get(m, CORE_COUNTER, "msgs_total", "Messages", "kind=\"a\"");
  core_metric_set(g, 12);
  core_metric_add(ca, 1);
  core_metric_add(cb, 2);
  core_metric_add(cb, 0.5);
  core_metric_observe(h, 0.00005); /* exactly on the first bound: le is inclusive */
  core_metric_observe(h, 0.003);
  core_metric_observe(h, 11);
  const char *want =
      "# HELP cluster_shards Shards owned\\nby me\n"
      "# TYPE cluster_shards gauge\n"
      "cluster_shards 12\n"
      "# HELP msgs_total Messages\n"
      "# TYPE msgs_total counter\n"
      "msgs_total{kind=\"a\"} 1\n"
      "msgs_total{kind=\"b\"} 2.5\n"
      "# HELP req_seconds Request time\n"
      "# TYPE req_seconds histogram\n"
      "req_seconds_bucket{t=\"A\",le=\"0.00005\"} 1\n"
      "req_seconds_bucket{t=\"A\",le=\"0.0001\"} 1\n"
      "req_seconds_bucket{t=\"A\",le=\"0.00025\"} 1\n"
      "req_seconds_bucket{t=\"A\",le=\"0.0005\"} 1\n"
      "req_seconds_bucket{t=\"A\",le=\"0.001\"} 1\n"
      "req_seconds_bucket{t=\"A\",le=\"0.0025\"} 1\n"
      "req_seconds_bucket{t=\"A\",le=\"0.005\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"0.01\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"0.025\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"0.05\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"0.1\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"0.25\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"0.5\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"1\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"2.5\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"5\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"10\"} 2\n"
      "req_seconds_bucket{t=\"A\",le=\"+Inf\"} 3\n"
      "req_seconds_sum{t=\"A\"} 11.00305\n"
      "req_seconds_count{t=\"A\"} 3\n";
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(cruster_metrics_render(m, &out, &len), CRUSTER_OK);
  assert_string_equal(out, want);
  assert_int_equal(len, strlen(want));
  cruster_free(out);
}

static void render_histogram_without_labels_and_empty_registry(void **state) {
  cruster_metrics *m = *state;
  char *out = NULL;
  assert_int_equal(cruster_metrics_render(m, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "");
  cruster_free(out);
  core_metric *h = core_metrics_get(m, CORE_HISTOGRAM, "h_seconds", "H", NULL);
  core_metric_observe(h, 2);
  assert_int_equal(cruster_metrics_render(m, &out, NULL), CRUSTER_OK);
  assert_non_null(strstr(out, "h_seconds_bucket{le=\"1\"} 0\n"));
  assert_non_null(strstr(out, "h_seconds_bucket{le=\"2.5\"} 1\n"));
  assert_non_null(strstr(out, "h_seconds_bucket{le=\"+Inf\"} 1\n"));
  assert_non_null(strstr(out, "\nh_seconds_sum 2\nh_seconds_count 1\n"));
  cruster_free(out);
  assert_int_equal(cruster_metrics_render(NULL, &out, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_metrics_render(m, NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
}

static void render_many_series_grows_buffer(void **state) {
  cruster_metrics *m = *state;
  char labels[64];
  for (int i = 0; i < 500; i++) {
    snprintf(labels, sizeof labels, "id=\"%04d\"", i);
    core_metric_add(core_metrics_get(m, CORE_COUNTER, "many_total", "Many", labels), i);
  }
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(cruster_metrics_render(m, &out, &len), CRUSTER_OK);
  assert_non_null(strstr(out, "many_total{id=\"0000\"} 0\nmany_total{id=\"0001\"} 1\n"));
  assert_non_null(strstr(out, "many_total{id=\"0499\"} 499\n"));
  assert_int_equal(len, strlen(out));
  cruster_free(out);
}

static void escape_label_values(void **state) {
  (void)state;
  char out[64];
  core_metrics_escape("a\"b\\c\nd", out, sizeof out);
  assert_string_equal(out, "a\\\"b\\\\c\\nd");
  char tiny[4];
  core_metrics_escape("ab\"", tiny, sizeof tiny); /* the escape does not fit whole */
  assert_string_equal(tiny, "ab");
  core_metrics_escape(NULL, out, sizeof out);
  assert_string_equal(out, "");
}

#define THREADS 4
#define PER_THREAD 100000

typedef struct job {
  cruster_metrics *m;
} job;

static void *hammer(void *arg) {
  job *j = arg;
  /* Each thread looks the series up itself, so creation races too. */
  core_metric *c = core_metrics_get(j->m, CORE_COUNTER, "race_total", "Race", "t=\"x\"");
  core_metric *g = core_metrics_get(j->m, CORE_GAUGE, "race_gauge", "Race", NULL);
  core_metric *h = core_metrics_get(j->m, CORE_HISTOGRAM, "race_seconds", "Race", NULL);
  for (int i = 0; i < PER_THREAD; i++) {
    core_metric_add(c, 1);
    core_metric_add(g, 0.5);
    core_metric_observe(h, 0.001);
  }
  return NULL;
}

static void concurrent_updates_sum_exactly(void **state) {
  cruster_metrics *m = *state;
  pthread_t t[THREADS];
  job j = {m};
  for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_create(&t[i], NULL, hammer, &j), 0);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  double v;
  assert_int_equal(cruster_metrics_value(m, "race_total", "t=\"x\"", &v), CRUSTER_OK);
  assert_true(v == (double)THREADS * PER_THREAD);
  assert_int_equal(cruster_metrics_value(m, "race_gauge", NULL, &v), CRUSTER_OK);
  assert_true(v == 0.5 * THREADS * PER_THREAD);
  assert_int_equal(cruster_metrics_value(m, "race_seconds_count", NULL, &v), CRUSTER_OK);
  assert_true(v == (double)THREADS * PER_THREAD);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
int main(void) {
  const struct CMUnitTest tests[] = {
      T(counter_counts_and_ignores_decrements),
      T(gauge_sets_and_adds),
      T(same_name_and_labels_is_same_series),
      T(kind_mismatch_and_bad_names_give_null),
      T(value_lookup_misses_are_not_found),
      T(histogram_count_and_sum_are_readable),
      T(render_is_exact_prometheus_text),
      T(render_histogram_without_labels_and_empty_registry),
      T(render_many_series_grows_buffer),
      T(escape_label_values),
      T(concurrent_updates_sum_exactly),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
