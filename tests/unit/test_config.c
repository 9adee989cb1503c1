/* Configuration: defaults, text forms, per-field checks, validation rules,
 * deep copies. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/config.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_internal.h"
#include "core/util.h"

/* Every field with its default, in text form, in table order. */
static const struct {
  const char *name, *def;
} defaults[] = {
    {"runner_address", "127.0.0.1:9000"},
    {"runner_listen_address", ""},
    {"runner_weight", "1"},
    {"shard_groups", "default"},
    {"shards_per_group", "300"},
    {"runner_lock_ttl", "30000ms"},
    {"runner_lock_refresh_interval", "10000ms"},
    {"entity_max_idle_time", "60000ms"},
    {"entity_termination_timeout", "15000ms"},
    {"entity_mailbox_capacity", "100"},
    {"entity_max_concurrent_requests", "1"},
    {"storage_poll_interval", "500ms"},
    {"storage_inbox_size", "1000"},
    {"runner_poll_interval", "5000ms"},
    {"shard_rebalance_debounce", "3000ms"},
    {"shard_rebalance_retry_interval", "2000ms"},
    {"entity_crash_max_retries", "0"},
    {"entity_crash_initial_backoff", "500ms"},
    {"entity_crash_max_backoff", "10000ms"},
    {"storage_message_max_retries", "10"},
    {"shard_lock_refresh_max_failures", "3"},
    {"entity_registration_timeout", "5000ms"},
    {"send_retry_interval", "100ms"},
    {"singleton_crash_backoff_base", "1000ms"},
    {"send_retry_count", "3"},
    {"storage_resumption_max_retries", "0"},
    {"grpc_connect_timeout", "5000ms"},
    {"last_read_guard_interval", "600000ms"},
    {"shard_assignment_strategy", "rendezvous"},
    {"detachment_window", "200ms"},
    {"detachment_recover_window", "500ms"},
    {"detachment_enabled", "false"},
    {"keepalive_failure_threshold", "3"},
    {"acquire_retry_interval", "200ms"},
    {"acquire_retry_window", "2000ms"},
    {"default_call_timeout", "30000ms"},
    {"max_payload_size", "4194304"},
    {"worker_threads", "4"},
    {"worker_threads_max", "64"},
    {"storage_retention", "86400000ms"},
    {"storage_auto_migrate", "false"},
    {"storage_migrations_table", "cruster_migrations"},
    {"storage_pool_size", "4"},
    {"storage_batch_size", "256"},
    {"storage_retry_backoff", "200ms"},
    {"idempotency_strict_payload", "false"},
    {"workflow_pool_size", "16"},
    {"transport_tls_cert", ""},
    {"transport_tls_key", ""},
    {"transport_tls_ca", ""},
    {"transport_tls_require_client_cert", "false"},
    {"transport_max_message_size", "0"},
    {"runner_ping_timeout", "5000ms"},
    {"runner_stall_threshold", "30000ms"},
};
#define N_DEFAULTS (sizeof defaults / sizeof defaults[0])

static int setup(void **state) {
  *state = cruster_config_new();
  return *state ? 0 : -1;
}

static int teardown(void **state) {
  cruster_config_free(*state);
  return 0;
}

static void expect_get(const cruster_config *cfg, const char *name, const char *want) {
  char *out = NULL;
  cruster_error *e = NULL;
  assert_int_equal(cruster_config_get(cfg, name, &out, &e), CRUSTER_OK);
  assert_null(e);
  if (strcmp(out, want) != 0) fail_msg("%s: got \"%s\", want \"%s\"", name, out, want);
  cruster_free(out);
}

/* Expects `rc` with an error whose message contains `field` (and `frag`). */
/* `ep` is read only after `rc` was computed (argument order is unspecified). */
static void expect_error(int rc, int want_rc, cruster_error **ep, const char *field, const char *frag) {
  cruster_error *e = *ep;
  *ep = NULL;
  assert_int_equal(rc, want_rc);
  assert_non_null(e);
  assert_int_equal(cruster_error_status(e), want_rc);
  if (!strstr(cruster_error_message(e), field))
    fail_msg("message \"%s\" does not name %s", cruster_error_message(e), field);
  if (frag && !strstr(cruster_error_message(e), frag))
    fail_msg("message \"%s\" lacks \"%s\"", cruster_error_message(e), frag);
  cruster_error_free(e);
}

static void every_field_has_a_default_readable_via_get(void **state) {
  cruster_config *cfg = *state;
  size_t n = 0;
  while (cruster_config_field_name(n)) n++;
  assert_int_equal(n, N_DEFAULTS);
  for (size_t i = 0; i < N_DEFAULTS; i++) {
    assert_string_equal(cruster_config_field_name(i), defaults[i].name);
    expect_get(cfg, defaults[i].name, defaults[i].def);
  }
  assert_null(cruster_config_field_name(N_DEFAULTS));
  assert_null(cruster_config_field_name((size_t)-1));
}

static void defaults_are_valid(void **state) {
  cruster_error *e = NULL;
  assert_int_equal(cruster_config_validate(*state, &e), CRUSTER_OK);
  assert_null(e);
}

/* A non-default value for every field, as text, and how get prints it. */
static const struct {
  const char *name, *text, *printed;
} settings[] = {
    {"runner_address", "10.0.0.1:9100", "10.0.0.1:9100"},
    {"runner_listen_address", "0.0.0.0:9100", "0.0.0.0:9100"},
    {"runner_weight", "0", "0"},
    {"shard_groups", " default , premium ", "default,premium"},
    {"shards_per_group", "2048", "2048"},
    {"runner_lock_ttl", "45s", "45000ms"},
    {"runner_lock_refresh_interval", "2m", "120000ms"},
    {"entity_max_idle_time", "1h", "3600000ms"},
    {"entity_termination_timeout", "250", "250ms"},
    {"entity_mailbox_capacity", "7", "7"},
    {"entity_max_concurrent_requests", "0", "0"},
    {"storage_poll_interval", "250ms", "250ms"},
    {"storage_inbox_size", "5", "5"},
    {"runner_poll_interval", "1s", "1000ms"},
    {"shard_rebalance_debounce", "10ms", "10ms"},
    {"shard_rebalance_retry_interval", "3s", "3000ms"},
    {"entity_crash_max_retries", "5", "5"},
    {"entity_crash_initial_backoff", "1s", "1000ms"},
    {"entity_crash_max_backoff", "1m", "60000ms"},
    {"storage_message_max_retries", "0", "0"},
    {"shard_lock_refresh_max_failures", "9", "9"},
    {"entity_registration_timeout", "8s", "8000ms"},
    {"send_retry_interval", "50ms", "50ms"},
    {"singleton_crash_backoff_base", "2s", "2000ms"},
    {"send_retry_count", "0", "0"},
    {"storage_resumption_max_retries", "4", "4"},
    {"grpc_connect_timeout", "1s", "1000ms"},
    {"last_read_guard_interval", "0", "0ms"},
    {"shard_assignment_strategy", "rendezvous", "rendezvous"},
    {"detachment_window", "0ms", "0ms"},
    {"detachment_recover_window", "1s", "1000ms"},
    {"detachment_enabled", "on", "true"},
    {"keepalive_failure_threshold", "5", "5"},
    {"acquire_retry_interval", "0", "0ms"},
    {"acquire_retry_window", "0s", "0ms"},
    {"default_call_timeout", "5s", "5000ms"},
    {"max_payload_size", "1073741824", "1073741824"},
    {"worker_threads", "2", "2"},
    {"worker_threads_max", "1024", "1024"},
    {"storage_retention", "2h", "7200000ms"},
    {"storage_auto_migrate", "yes", "true"},
    {"storage_migrations_table", "app.schema_versions", "app.schema_versions"},
    {"storage_pool_size", "8", "8"},
    {"storage_batch_size", "1000", "1000"},
    {"storage_retry_backoff", "1s", "1000ms"},
    {"idempotency_strict_payload", "on", "true"},
    {"workflow_pool_size", "32", "32"},
    {"transport_tls_cert", "/etc/cruster/runner.pem", "/etc/cruster/runner.pem"},
    {"transport_tls_key", "/etc/cruster/runner.key", "/etc/cruster/runner.key"},
    {"transport_tls_ca", "/etc/cruster/ca.pem", "/etc/cruster/ca.pem"},
    {"transport_tls_require_client_cert", "on", "true"},
    {"transport_max_message_size", "1073807360", "1073807360"},
    {"runner_ping_timeout", "2s", "2000ms"},
    {"runner_stall_threshold", "0", "0ms"},
};

static void every_field_is_settable_by_text(void **state) {
  cruster_config *cfg = *state;
  assert_int_equal(sizeof settings / sizeof settings[0], N_DEFAULTS);
  for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++) {
    cruster_error *e = NULL;
    int rc = cruster_config_set(cfg, settings[i].name, settings[i].text, &e);
    if (rc != CRUSTER_OK) fail_msg("%s: %s", settings[i].name, cruster_error_message(e));
    expect_get(cfg, settings[i].name, settings[i].printed);
  }
  assert_int_equal(cruster_config_validate(cfg, NULL), CRUSTER_OK);
  assert_true(core_config_has_group(cfg, "premium"));
  assert_false(core_config_has_group(cfg, "gold"));
}

static void duration_and_bool_text_forms(void **state) {
  cruster_config *cfg = *state;
  static const struct {
    const char *text;
    int64_t ms;
  } durs[] = {{"500ms", 500}, {"30s", 30000}, {"2m", 120000}, {"1h", 3600000}, {"42", 42},
              {" 7s ", 7000}, {"3MS", 3}};
  for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
    int64_t v = 0;
    assert_int_equal(cruster_config_set(cfg, "storage_poll_interval", durs[i].text, NULL), CRUSTER_OK);
    assert_int_equal(cruster_config_get_int(cfg, "storage_poll_interval", &v, NULL), CRUSTER_OK);
    assert_true(v == durs[i].ms);
  }
  const char *bad[] = {"", "abc", "1.5s", "5d", "s", "ms10", "99999999999999999999ms", "9999999999999999h"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cruster_error *e = NULL;
    expect_error(cruster_config_set(cfg, "storage_poll_interval", bad[i], &e), CRUSTER_E_INVALID_CONFIG, &e, "storage_poll_interval", NULL);
  }
  expect_get(cfg, "storage_poll_interval", "3ms"); /* unchanged by failures */

  const char *yes[] = {"true", "1", "yes", "on", "TRUE"};
  const char *no[] = {"false", "0", "no", "off", "Off"};
  for (size_t i = 0; i < 5; i++) {
    int64_t v = -1;
    assert_int_equal(cruster_config_set(cfg, "detachment_enabled", yes[i], NULL), CRUSTER_OK);
    assert_int_equal(cruster_config_get_int(cfg, "detachment_enabled", &v, NULL), CRUSTER_OK);
    assert_true(v == 1);
    assert_int_equal(cruster_config_set(cfg, "detachment_enabled", no[i], NULL), CRUSTER_OK);
    assert_int_equal(cruster_config_get_int(cfg, "detachment_enabled", &v, NULL), CRUSTER_OK);
    assert_true(v == 0);
  }
  cruster_error *e = NULL;
  expect_error(cruster_config_set(cfg, "detachment_enabled", "maybe", &e), CRUSTER_E_INVALID_CONFIG, &e,
               "detachment_enabled", "maybe");
  e = NULL;
  expect_error(cruster_config_set_int(cfg, "detachment_enabled", 2, &e), CRUSTER_E_INVALID_CONFIG, &e,
               "detachment_enabled", NULL);
  e = NULL;
  expect_error(cruster_config_set(cfg, "shards_per_group", "12x", &e), CRUSTER_E_INVALID_CONFIG, &e,
               "shards_per_group", "12x");
}

static void set_checks_range_at_once_and_keeps_old_value(void **state) {
  cruster_config *cfg = *state;
  cruster_error *e = NULL;
  assert_int_equal(cruster_config_set_int(cfg, "shards_per_group", 0, &e), CRUSTER_E_INVALID_CONFIG);
  assert_string_equal(cruster_error_message(e), "shards_per_group must be >= 1, got 0");
  cruster_error_free(e);
  expect_get(cfg, "shards_per_group", "300");
  e = NULL;
  expect_error(cruster_config_set(cfg, "runner_weight", "-1", &e), CRUSTER_E_INVALID_CONFIG, &e,
               "runner_weight", "-1");
  e = NULL;
  expect_error(cruster_config_set(cfg, "storage_poll_interval", "0", &e), CRUSTER_E_INVALID_CONFIG, &e,
               "storage_poll_interval", NULL);
  e = NULL;
  expect_error(cruster_config_set(cfg, "runner_address", "no-port", &e), CRUSTER_E_INVALID_CONFIG, &e,
               "runner_address", "no-port");
  e = NULL;
  expect_error(cruster_config_set(cfg, "shard_assignment_strategy", "consistent_hash", &e),
               CRUSTER_E_INVALID_CONFIG, &e, "shard_assignment_strategy", NULL);
  e = NULL;
  expect_error(cruster_config_set_int(cfg, "max_payload_size", 1073741825, &e), CRUSTER_E_INVALID_CONFIG, &e, "max_payload_size", NULL);
  expect_get(cfg, "runner_address", "127.0.0.1:9000");
  expect_get(cfg, "max_payload_size", "4194304");
}

static void shard_groups_list_rules(void **state) {
  cruster_config *cfg = *state;
  const char *bad[] = {"", "  ", "a,,b", "a,a", "a,\x01"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    cruster_error *e = NULL;
    expect_error(cruster_config_set(cfg, "shard_groups", bad[i], &e), CRUSTER_E_INVALID_CONFIG, &e,
                 "shard_groups", NULL);
  }
  expect_get(cfg, "shard_groups", "default");
  assert_int_equal(cruster_config_set(cfg, "shard_groups", "x", NULL), CRUSTER_OK);
  expect_get(cfg, "shard_groups", "x");
  assert_false(core_config_has_group(cfg, "default"));
}

static void listen_address_is_optional(void **state) {
  cruster_config *cfg = *state;
  assert_null(cfg->runner_listen_address);
  assert_int_equal(cruster_config_set(cfg, "runner_listen_address", "[::]:9000", NULL), CRUSTER_OK);
  assert_string_equal(cfg->runner_listen_address, "[::]:9000");
  assert_int_equal(cruster_config_set(cfg, "runner_listen_address", "", NULL), CRUSTER_OK);
  assert_null(cfg->runner_listen_address);
  cruster_error *e = NULL;
  expect_error(cruster_config_set(cfg, "runner_listen_address", "host:70000", &e), CRUSTER_E_INVALID_CONFIG, &e, "runner_listen_address", NULL);
}

static void int_access_and_kind_mismatches(void **state) {
  cruster_config *cfg = *state;
  int64_t v = 0;
  assert_int_equal(cruster_config_set_int(cfg, "storage_poll_interval", 1234, NULL), CRUSTER_OK);
  expect_get(cfg, "storage_poll_interval", "1234ms");
  assert_int_equal(cruster_config_set_int(cfg, "detachment_enabled", 1, NULL), CRUSTER_OK);
  assert_int_equal(cruster_config_get_int(cfg, "detachment_enabled", &v, NULL), CRUSTER_OK);
  assert_true(v == 1);
  cruster_error *e = NULL;
  expect_error(cruster_config_set_int(cfg, "runner_address", 1, &e), CRUSTER_E_INVALID_ARGUMENT, &e,
               "runner_address", NULL);
  e = NULL;
  expect_error(cruster_config_get_int(cfg, "shard_groups", &v, &e), CRUSTER_E_INVALID_ARGUMENT, &e,
               "shard_groups", NULL);
}

static void unknown_field_is_invalid_argument(void **state) {
  cruster_config *cfg = *state;
  cruster_error *e = NULL;
  char *out = NULL;
  int64_t v;
  expect_error(cruster_config_set(cfg, "no_such_field", "1", &e), CRUSTER_E_INVALID_ARGUMENT, &e,
               "no_such_field", NULL);
  e = NULL;
  expect_error(cruster_config_set_int(cfg, "no_such_field", 1, &e), CRUSTER_E_INVALID_ARGUMENT, &e,
               "no_such_field", NULL);
  e = NULL;
  expect_error(cruster_config_get(cfg, "no_such_field", &out, &e), CRUSTER_E_INVALID_ARGUMENT, &e,
               "no_such_field", NULL);
  e = NULL;
  expect_error(cruster_config_get_int(cfg, "no_such_field", &v, &e), CRUSTER_E_INVALID_ARGUMENT, &e,
               "no_such_field", NULL);
  assert_null(out);
  assert_int_equal(cruster_config_set(cfg, NULL, "1", NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_config_set(cfg, "runner_weight", NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_config_set(NULL, "runner_weight", "1", NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_config_get(cfg, "runner_weight", NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_config_validate(NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
}

/* Pokes an invalid value straight into the struct (as a buggy caller of the
 * internal layout could) and expects validate to name the field. */
typedef void (*poke_fn)(cruster_config *cfg);
static void expect_invalid(poke_fn poke, const char *field) {
  cruster_config *cfg = cruster_config_new();
  assert_non_null(cfg);
  poke(cfg);
  cruster_error *e = NULL;
  int rc = cruster_config_validate(cfg, &e);
  if (rc != CRUSTER_E_INVALID_CONFIG) fail_msg("validate accepted a bad %s", field);
  expect_error(rc, CRUSTER_E_INVALID_CONFIG, &e, field, NULL);
  cruster_config_free(cfg);
}

static void p_shards(cruster_config *c) { c->shards_per_group = 0; }
static void p_weight(cruster_config *c) { c->runner_weight = -1; }
static void p_mailbox(cruster_config *c) { c->entity_mailbox_capacity = 0; }
static void p_inbox(cruster_config *c) { c->storage_inbox_size = 0; }
static void p_groups_empty(cruster_config *c) {
  free(c->shard_groups[0]);
  c->n_shard_groups = 0;
}
static void p_groups_badname(cruster_config *c) { c->shard_groups[0][0] = '\0'; }
static void p_groups_dup(cruster_config *c) {
  char **g = realloc(c->shard_groups, 2 * sizeof *g);
  g[1] = core_strdup("default");
  c->shard_groups = g;
  c->n_shard_groups = 2;
}
static void p_address(cruster_config *c) {
  free(c->runner_address);
  c->runner_address = core_strdup("nohost");
}
static void p_address_null(cruster_config *c) {
  free(c->runner_address);
  c->runner_address = NULL;
}
static void p_listen(cruster_config *c) { c->runner_listen_address = core_strdup("h:0"); }
static void p_strategy(cruster_config *c) {
  free(c->shard_assignment_strategy);
  c->shard_assignment_strategy = core_strdup("ring");
}
static void p_call_timeout(cruster_config *c) { c->default_call_timeout = 0; }
static void p_payload_zero(cruster_config *c) { c->max_payload_size = 0; }
static void p_payload_big(cruster_config *c) { c->max_payload_size = 1073741825; }
static void p_workers(cruster_config *c) { c->worker_threads = 0; }
static void p_workers_max_low(cruster_config *c) { c->worker_threads = 8, c->worker_threads_max = 4; }
static void p_workers_max_high(cruster_config *c) { c->worker_threads_max = 1025; }
static void p_send_retry_count(cruster_config *c) { c->send_retry_count = -1; }
static void p_crash_retries(cruster_config *c) { c->entity_crash_max_retries = -2; }
static void p_dead_letter(cruster_config *c) { c->storage_message_max_retries = -1; }
static void p_resumption(cruster_config *c) { c->storage_resumption_max_retries = -1; }
static void p_refresh_failures(cruster_config *c) { c->shard_lock_refresh_max_failures = -1; }
static void p_keepalive(cruster_config *c) { c->keepalive_failure_threshold = -1; }
static void p_concurrency(cruster_config *c) { c->entity_max_concurrent_requests = -1; }
static void p_detach_bool(cruster_config *c) { c->detachment_enabled = 2; }
static void p_tls_cert_alone(cruster_config *c) { c->transport_tls_cert = core_strdup("a.pem"); }
static void p_tls_no_ca(cruster_config *c) {
  c->transport_tls_cert = core_strdup("a.pem");
  c->transport_tls_key = core_strdup("a.key");
}
static void p_tls_require(cruster_config *c) {
  c->transport_tls_ca = core_strdup("ca.pem");
  c->transport_tls_require_client_cert = 1;
}
static void p_max_message_small(cruster_config *c) { c->transport_max_message_size = 4096; }

static void validate_names_the_field_of_each_rule(void **state) {
  (void)state;
  expect_invalid(p_shards, "shards_per_group");
  expect_invalid(p_weight, "runner_weight");
  expect_invalid(p_mailbox, "entity_mailbox_capacity");
  expect_invalid(p_inbox, "storage_inbox_size");
  expect_invalid(p_groups_empty, "shard_groups");
  expect_invalid(p_groups_badname, "shard_groups");
  expect_invalid(p_groups_dup, "shard_groups");
  expect_invalid(p_address, "runner_address");
  expect_invalid(p_address_null, "runner_address");
  expect_invalid(p_listen, "runner_listen_address");
  expect_invalid(p_strategy, "shard_assignment_strategy");
  expect_invalid(p_call_timeout, "default_call_timeout");
  expect_invalid(p_payload_zero, "max_payload_size");
  expect_invalid(p_payload_big, "max_payload_size");
  expect_invalid(p_workers, "worker_threads");
  expect_invalid(p_workers_max_low, "worker_threads_max");
  expect_invalid(p_workers_max_high, "worker_threads_max");
  expect_invalid(p_tls_cert_alone, "transport_tls_key");
  expect_invalid(p_tls_no_ca, "transport_tls_ca");
  expect_invalid(p_tls_require, "transport_tls_require_client_cert");
  expect_invalid(p_max_message_small, "transport_max_message_size");
  expect_invalid(p_send_retry_count, "send_retry_count");
  expect_invalid(p_crash_retries, "entity_crash_max_retries");
  expect_invalid(p_dead_letter, "storage_message_max_retries");
  expect_invalid(p_resumption, "storage_resumption_max_retries");
  expect_invalid(p_refresh_failures, "shard_lock_refresh_max_failures");
  expect_invalid(p_keepalive, "keepalive_failure_threshold");
  expect_invalid(p_concurrency, "entity_max_concurrent_requests");
  expect_invalid(p_detach_bool, "detachment_enabled");
}

static int zero_allowed(const char *name) {
  static const char *const ok[] = {"last_read_guard_interval", "detachment_window",
                                   "detachment_recover_window", "acquire_retry_interval",
                                   "acquire_retry_window", "storage_retention",
                                   "runner_stall_threshold"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
    if (strcmp(ok[i], name) == 0) return 1;
  return 0;
}

static void every_duration_must_be_positive_except_seven(void **state) {
  (void)state;
  int durations = 0, zero_ok = 0;
  for (size_t i = 0; i < N_DEFAULTS; i++) {
    size_t l = strlen(defaults[i].def);
    if (l < 2 || strcmp(defaults[i].def + l - 2, "ms") != 0) continue; /* not a duration */
    durations++;
    const char *name = defaults[i].name;
    /* At set time. */
    cruster_config *cfg = cruster_config_new();
    cruster_error *e = NULL;
    int rc = cruster_config_set(cfg, name, "0", &e);
    if (zero_allowed(name)) {
      zero_ok++;
      assert_int_equal(rc, CRUSTER_OK);
      assert_int_equal(cruster_config_validate(cfg, NULL), CRUSTER_OK);
    } else {
      expect_error(rc, CRUSTER_E_INVALID_CONFIG, &e, name, NULL);
      /* And in validate, when the struct holds 0 or a negative value. */
      int64_t *slot = NULL;
      if (strcmp(name, "storage_poll_interval") == 0) slot = &cfg->storage_poll_interval;
      if (strcmp(name, "runner_lock_ttl") == 0) slot = &cfg->runner_lock_ttl;
      if (strcmp(name, "grpc_connect_timeout") == 0) slot = &cfg->grpc_connect_timeout;
      if (slot) {
        *slot = 0;
        e = NULL;
        expect_error(cruster_config_validate(cfg, &e), CRUSTER_E_INVALID_CONFIG, &e, name, NULL);
      }
    }
    e = NULL;
    expect_error(cruster_config_set(cfg, name, "-1ms", &e), CRUSTER_E_INVALID_CONFIG, &e, name, NULL);
    cruster_config_free(cfg);
  }
  assert_int_equal(durations, 24);
  assert_int_equal(zero_ok, 7);
}

static void log_sink(void *user, cruster_log_level l, const char *c, const char *m) {
  (void)user, (void)l, (void)c, (void)m;
}

static void copy_is_deep(void **state) {
  cruster_config *cfg = *state;
  int user = 0;
  assert_int_equal(cruster_config_set(cfg, "shard_groups", "a,b,c", NULL), CRUSTER_OK);
  assert_int_equal(cruster_config_set(cfg, "runner_listen_address", "0.0.0.0:1", NULL), CRUSTER_OK);
  assert_int_equal(cruster_config_set_int(cfg, "shards_per_group", 64, NULL), CRUSTER_OK);
  cruster_config_set_logger(cfg, log_sink, &user, CRUSTER_LOG_DEBUG);
  cruster_config *copy = cruster_config_copy(cfg);
  assert_non_null(copy);
  assert_ptr_not_equal(copy->shard_groups, cfg->shard_groups);
  assert_ptr_not_equal(copy->shard_groups[0], cfg->shard_groups[0]);
  assert_ptr_not_equal(copy->runner_address, cfg->runner_address);
  /* Change the original, then free it: the copy keeps its values. */
  assert_int_equal(cruster_config_set(cfg, "shard_groups", "z", NULL), CRUSTER_OK);
  assert_int_equal(cruster_config_set(cfg, "runner_address", "other:1", NULL), CRUSTER_OK);
  cruster_config_free(cfg);
  *state = copy;
  expect_get(copy, "shard_groups", "a,b,c");
  expect_get(copy, "runner_listen_address", "0.0.0.0:1");
  expect_get(copy, "runner_address", "127.0.0.1:9000");
  expect_get(copy, "shards_per_group", "64");
  assert_ptr_equal(copy->logger.fn, log_sink);
  assert_ptr_equal(copy->logger.user, &user);
  assert_int_equal(copy->logger.min_level, CRUSTER_LOG_DEBUG);
  assert_int_equal(cruster_config_validate(copy, NULL), CRUSTER_OK);
  assert_null(cruster_config_copy(NULL));
}

static void logger_defaults_to_stderr_at_info(void **state) {
  cruster_config *cfg = *state;
  assert_null(cfg->logger.fn);
  assert_int_equal(cfg->logger.min_level, CRUSTER_LOG_INFO);
  int user;
  cruster_config_set_logger(cfg, log_sink, &user, CRUSTER_LOG_ERROR);
  assert_ptr_equal(cfg->logger.fn, log_sink);
  assert_int_equal(cfg->logger.min_level, CRUSTER_LOG_ERROR);
  cruster_config_set_logger(cfg, NULL, NULL, CRUSTER_LOG_WARN);
  assert_null(cfg->logger.fn);
  assert_int_equal(cfg->logger.min_level, CRUSTER_LOG_WARN);
  cruster_config_set_logger(NULL, NULL, NULL, CRUSTER_LOG_WARN); /* no-op */
  cruster_config_free(NULL);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
int main(void) {
  const struct CMUnitTest tests[] = {
      T(every_field_has_a_default_readable_via_get),
      T(defaults_are_valid),
      T(every_field_is_settable_by_text),
      T(duration_and_bool_text_forms),
      T(set_checks_range_at_once_and_keeps_old_value),
      T(shard_groups_list_rules),
      T(listen_address_is_optional),
      T(int_access_and_kind_mismatches),
      T(unknown_field_is_invalid_argument),
      T(validate_names_the_field_of_each_rule),
      T(every_duration_must_be_positive_except_seven),
      T(copy_is_deep),
      T(logger_defaults_to_stderr_at_info),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
