/* cruster_config: every runner setting, addressed by name through one table
 * (name, kind, location, range, default), so parsing, printing, range checks
 * and validation are the same code for every field. */
#include "core/config_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config_text.h"
#include "core/error.h"
#include "core/util.h"

typedef enum field_kind { K_INT, K_DURATION, K_BOOL, K_STRING, K_LIST } field_kind;

/* Extra check of a string field's value (NULL = unset, nullable fields). */
typedef cruster_status (*string_check_fn)(const char *field, const char *value, cruster_error **err);

typedef struct field {
  const char *name;
  field_kind kind;
  size_t offset;       /* of the value: int64_t, char * or char ** */
  size_t count_offset; /* K_LIST: of the size_t element count */
  int64_t min, max;    /* K_INT, K_DURATION, K_BOOL */
  const char *def;     /* default, as text; NULL = unset (nullable string) */
  string_check_fn check;
} field;

/* Durations are milliseconds, capped (config_internal.h). */
#define DUR_MAX CORE_DURATION_MAX_MS

static cruster_status check_hostport(const char *name, const char *v, cruster_error **err);
static cruster_status check_optional_hostport(const char *name, const char *v, cruster_error **err);
static cruster_status check_strategy(const char *name, const char *v, cruster_error **err);
static cruster_status check_table_name(const char *name, const char *v, cruster_error **err);
static cruster_status check_optional_path(const char *name, const char *v, cruster_error **err);

#define OFF(f) offsetof(struct cruster_config, f)
#define INT(f, lo, hi, d) {#f, K_INT, OFF(f), 0, lo, hi, d, NULL}
#define DUR(f, lo, d) {#f, K_DURATION, OFF(f), 0, lo, DUR_MAX, d, NULL}
#define BOOL(f, d) {#f, K_BOOL, OFF(f), 0, 0, 1, d, NULL}
#define STR(f, d, chk) {#f, K_STRING, OFF(f), 0, 0, 0, d, chk}

static const field fields[] = {
    STR(runner_address, "127.0.0.1:9000", check_hostport),
    STR(runner_listen_address, NULL, check_optional_hostport),
    INT(runner_weight, 0, INT32_MAX, "1"),
    {"shard_groups", K_LIST, OFF(shard_groups), OFF(n_shard_groups), 0, 0, "default", NULL},
    INT(shards_per_group, 1, INT32_MAX, "300"),
    DUR(runner_lock_ttl, 1, "30s"),
    DUR(runner_lock_refresh_interval, 1, "10s"),
    DUR(entity_max_idle_time, 1, "60s"),
    DUR(entity_termination_timeout, 1, "15s"),
    INT(entity_mailbox_capacity, 1, INT64_MAX, "100"),
    INT(entity_max_concurrent_requests, 0, INT64_MAX, "1"),
    DUR(storage_poll_interval, 1, "500ms"),
    INT(storage_inbox_size, 1, INT64_MAX, "1000"),
    DUR(runner_poll_interval, 1, "5s"),
    DUR(shard_rebalance_debounce, 1, "3s"),
    DUR(shard_rebalance_retry_interval, 1, "2s"),
    INT(entity_crash_max_retries, 0, INT64_MAX, "0"),
    DUR(entity_crash_initial_backoff, 1, "500ms"),
    DUR(entity_crash_max_backoff, 1, "10s"),
    INT(storage_message_max_retries, 0, INT64_MAX, "10"),
    INT(shard_lock_refresh_max_failures, 0, INT64_MAX, "3"),
    DUR(entity_registration_timeout, 1, "5s"),
    DUR(send_retry_interval, 1, "100ms"),
    DUR(singleton_crash_backoff_base, 1, "1s"),
    INT(send_retry_count, 0, INT64_MAX, "3"),
    INT(storage_resumption_max_retries, 0, INT64_MAX, "0"),
    DUR(grpc_connect_timeout, 1, "5s"),
    DUR(last_read_guard_interval, 0, "600s"),
    STR(shard_assignment_strategy, "rendezvous", check_strategy),
    DUR(detachment_window, 0, "200ms"),
    DUR(detachment_recover_window, 0, "500ms"),
    BOOL(detachment_enabled, "false"),
    INT(keepalive_failure_threshold, 0, INT64_MAX, "3"),
    DUR(acquire_retry_interval, 0, "200ms"),
    DUR(acquire_retry_window, 0, "2s"),
    DUR(default_call_timeout, 1, "30s"),
    INT(max_payload_size, 1, 1073741824, "4194304"),
    INT(worker_threads, 1, 1024, "4"),
    INT(worker_threads_max, 1, 1024, "64"),
    DUR(storage_retention, 0, "24h"),
    BOOL(storage_auto_migrate, "false"),
    STR(storage_migrations_table, "cruster_migrations", check_table_name),
    INT(storage_pool_size, 1, 64, "4"),
    INT(storage_batch_size, 1, 10000, "256"),
    DUR(storage_retry_backoff, 1, "200ms"),
    BOOL(idempotency_strict_payload, "false"),
    INT(workflow_pool_size, 1, 1024, "16"),
    STR(transport_tls_cert, NULL, check_optional_path),
    STR(transport_tls_key, NULL, check_optional_path),
    STR(transport_tls_ca, NULL, check_optional_path),
    BOOL(transport_tls_require_client_cert, "false"),
    INT(transport_max_message_size, 0, 2147483647, "0"),
    DUR(runner_ping_timeout, 1, "5s"),
    DUR(runner_stall_threshold, 0, "30s"),
};

#define N_FIELDS (sizeof fields / sizeof fields[0])

static const field *find_field(const char *name) {
  if (!name) return NULL;
  for (size_t i = 0; i < N_FIELDS; i++)
    if (strcmp(fields[i].name, name) == 0) return &fields[i];
  return NULL;
}

static int64_t *int_slot(cruster_config *cfg, const field *f) {
  return (int64_t *)(void *)((char *)cfg + f->offset);
}
static int64_t int_value(const cruster_config *cfg, const field *f) {
  return *(const int64_t *)(const void *)((const char *)cfg + f->offset);
}
static char **str_slot(cruster_config *cfg, const field *f) {
  return (char **)(void *)((char *)cfg + f->offset);
}
static const char *str_value(const cruster_config *cfg, const field *f) {
  return *(char *const *)(const void *)((const char *)cfg + f->offset);
}
static char ***list_slot(cruster_config *cfg, const field *f) {
  return (char ***)(void *)((char *)cfg + f->offset);
}
static size_t *count_slot(cruster_config *cfg, const field *f) {
  return (size_t *)(void *)((char *)cfg + f->count_offset);
}
static char *const *list_value(const cruster_config *cfg, const field *f, size_t *n) {
  *n = *(const size_t *)(const void *)((const char *)cfg + f->count_offset);
  return *(char **const *)(const void *)((const char *)cfg + f->offset);
}

/* ---- checks -------------------------------------------------------------- */

static cruster_status check_range(const field *f, int64_t v, cruster_error **err) {
  const char *unit = f->kind == K_DURATION ? " ms" : "";
  if (v < f->min)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s must be >= %" PRId64 "%s, got %" PRId64 "%s",
                          f->name, f->min, unit, v, unit);
  if (v > f->max)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s must be <= %" PRId64 "%s, got %" PRId64 "%s",
                          f->name, f->max, unit, v, unit);
  return CRUSTER_OK;
}

static cruster_status check_hostport(const char *name, const char *v, cruster_error **err) {
  if (v && strlen(v) > 261) /* a DNS name is at most 253 bytes, plus brackets, colon and port */
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "%s must be at most 261 bytes (host:port), got %zu bytes", name, strlen(v));
  if (!v || core_parse_hostport(v, NULL, 0, NULL) != 0)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "%s must be host:port with port 1..65535, got \"%s\"", name,
                          v ? v : "(unset)");
  return CRUSTER_OK;
}

static cruster_status check_optional_hostport(const char *name, const char *v, cruster_error **err) {
  return v ? check_hostport(name, v, err) : CRUSTER_OK;
}

/* A file path (TLS PEM files): 1..4096 bytes, no control characters. The
 * file itself is read when the transport starts. */
static cruster_status check_optional_path(const char *name, const char *v, cruster_error **err) {
  if (!v) return CRUSTER_OK;
  size_t n = strlen(v);
  if (n == 0 || n > 4096)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s must be a path of 1..4096 bytes",
                          name);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
      return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                            "%s must not contain control characters", name);
  return CRUSTER_OK;
}

/* A PostgreSQL identifier, optionally schema-qualified: [A-Za-z_][A-Za-z0-9_]*, <= 63 each. */
static cruster_status check_table_name(const char *name, const char *v, cruster_error **err) {
  int ok = v && *v;
  size_t part = 0;
  int parts = 1;
  for (const char *p = v; ok && *p; p++) {
    char c = *p;
    if (c == '.') {
      ok = part > 0 && parts < 2;
      parts++;
      part = 0;
      continue;
    }
    int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    int digit = c >= '0' && c <= '9';
    ok = (alpha || (digit && part > 0)) && ++part <= 63;
  }
  if (!ok || part == 0)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "%s must be a table name like \"cruster_migrations\" or "
                          "\"schema.table\" (letters, digits, _), got \"%s\"",
                          name, v ? v : "(unset)");
  return CRUSTER_OK;
}

static cruster_status check_strategy(const char *name, const char *v, cruster_error **err) {
  if (!v || strcmp(v, "rendezvous") != 0)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "%s must be \"rendezvous\" (the only strategy), got \"%s\"", name,
                          v ? v : "(unset)");
  return CRUSTER_OK;
}

static cruster_status check_list(const field *f, char *const *items, size_t n, cruster_error **err) {
  if (n == 0)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s must not be empty", f->name);
  for (size_t i = 0; i < n; i++) {
    cruster_error *e = NULL;
    if (core_check_name("shard group", items[i], err ? &e : NULL) != CRUSTER_OK) {
      core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s: %s", f->name,
                     e ? e->message : "invalid shard group name");
      cruster_error_free(e);
      return CRUSTER_E_INVALID_CONFIG;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(items[i], items[j]) == 0)
        return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s lists \"%s\" twice", f->name,
                              items[i]);
  }
  return CRUSTER_OK;
}

/* ---- public API ---------------------------------------------------------- */

static cruster_status nomem(cruster_error **err) {
  return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
}

static cruster_status set_number(cruster_config *cfg, const field *f, int64_t v,
                                 cruster_error **err) {
  if (f->kind == K_BOOL && v != 0 && v != 1)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s must be 0 or 1, got %" PRId64,
                          f->name, v);
  cruster_status rc = check_range(f, v, err);
  if (rc == CRUSTER_OK) *int_slot(cfg, f) = v;
  return rc;
}

static cruster_status set_field(cruster_config *cfg, const field *f, const char *value,
                                cruster_error **err) {
  if (f->kind == K_LIST) {
    char **items;
    size_t n;
    if (core_config_split_list(value, &items, &n) != 0) return nomem(err);
    cruster_status rc = check_list(f, items, n, err);
    if (rc != CRUSTER_OK) {
      core_config_free_list(items, n);
      return rc;
    }
    core_config_free_list(*list_slot(cfg, f), *count_slot(cfg, f));
    *list_slot(cfg, f) = items;
    *count_slot(cfg, f) = n;
    return CRUSTER_OK;
  }
  char *t = core_config_trimmed(value, strlen(value));
  if (!t) return nomem(err);
  cruster_status rc = CRUSTER_OK;
  int64_t v = 0;
  switch (f->kind) {
    case K_INT:
      if (core_config_parse_int(t, &v) != 0)
        rc = core_error_set(err, CRUSTER_E_INVALID_CONFIG, "%s: cannot parse \"%s\" as an integer",
                            f->name, value);
      else
        rc = set_number(cfg, f, v, err);
      break;
    case K_DURATION:
      if (core_config_parse_duration(t, &v) != 0)
        rc = core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                            "%s: cannot parse \"%s\" as a duration (e.g. 500ms, 30s, 2m, 1h)",
                            f->name, value);
      else
        rc = set_number(cfg, f, v, err);
      break;
    case K_BOOL:
      if (core_config_parse_bool(t, &v) != 0)
        rc = core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                            "%s: cannot parse \"%s\" as a boolean (true/false/1/0/yes/no/on/off)",
                            f->name, value);
      else
        rc = set_number(cfg, f, v, err);
      break;
    case K_STRING: {
      /* "" unsets a nullable field (runner_listen_address). */
      const char *nv = (t[0] == '\0' && f->def == NULL) ? NULL : t;
      rc = f->check ? f->check(f->name, nv, err) : CRUSTER_OK;
      if (rc == CRUSTER_OK) {
        free(*str_slot(cfg, f));
        *str_slot(cfg, f) = nv ? t : NULL;
        if (nv) t = NULL; /* now owned by cfg */
      }
      break;
    }
    case K_LIST: break;
  }
  free(t);
  return rc;
}

cruster_config *cruster_config_new(void) {
  cruster_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) return NULL;
  cfg->logger.fn = NULL;
  cfg->logger.user = NULL;
  cfg->logger.min_level = CRUSTER_LOG_INFO;
  for (size_t i = 0; i < N_FIELDS; i++) {
    if (!fields[i].def) continue;
    if (set_field(cfg, &fields[i], fields[i].def, NULL) != CRUSTER_OK) {
      cruster_config_free(cfg);
      return NULL;
    }
  }
  return cfg;
}

void cruster_config_free(cruster_config *cfg) {
  if (!cfg) return;
  for (size_t i = 0; i < N_FIELDS; i++) {
    const field *f = &fields[i];
    if (f->kind == K_STRING) free(*str_slot(cfg, f));
    else if (f->kind == K_LIST) core_config_free_list(*list_slot(cfg, f), *count_slot(cfg, f));
  }
  free(cfg);
}

cruster_config *cruster_config_copy(const cruster_config *cfg) {
  if (!cfg) return NULL;
  cruster_config *c = malloc(sizeof *c);
  if (!c) return NULL;
  memcpy(c, cfg, sizeof *c);
  /* Detach every owned pointer first, so a failure can free the copy. */
  for (size_t i = 0; i < N_FIELDS; i++) {
    const field *f = &fields[i];
    if (f->kind == K_STRING) *str_slot(c, f) = NULL;
    else if (f->kind == K_LIST) *list_slot(c, f) = NULL, *count_slot(c, f) = 0;
  }
  for (size_t i = 0; i < N_FIELDS; i++) {
    const field *f = &fields[i];
    if (f->kind == K_STRING) {
      const char *s = str_value(cfg, f);
      if (s && !(*str_slot(c, f) = core_strdup(s))) goto oom;
    } else if (f->kind == K_LIST) {
      size_t n;
      char *const *items = list_value(cfg, f, &n);
      char **copy = calloc(n ? n : 1, sizeof *copy);
      if (!copy) goto oom;
      *list_slot(c, f) = copy;
      for (size_t j = 0; j < n; j++) {
        if (!(copy[j] = core_strdup(items[j]))) goto oom;
        *count_slot(c, f) = j + 1;
      }
    }
  }
  return c;
oom:
  cruster_config_free(c);
  return NULL;
}

static const field *lookup(const char *name, cruster_error **err) {
  const field *f = find_field(name);
  if (!f)
    core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "unknown configuration field \"%s\"",
                   name ? name : "(null)");
  return f;
}

cruster_status cruster_config_set(cruster_config *cfg, const char *name, const char *value,
                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!cfg || !name || !value)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_config_set: config, name and value must not be NULL");
  const field *f = lookup(name, err);
  if (!f) return CRUSTER_E_INVALID_ARGUMENT;
  return set_field(cfg, f, value, err);
}

cruster_status cruster_config_set_int(cruster_config *cfg, const char *name, int64_t value,
                                      cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!cfg || !name)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_config_set_int: config and name must not be NULL");
  const field *f = lookup(name, err);
  if (!f) return CRUSTER_E_INVALID_ARGUMENT;
  if (f->kind == K_STRING || f->kind == K_LIST)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "%s is a %s field; set it with cruster_config_set", f->name,
                          f->kind == K_STRING ? "string" : "list");
  return set_number(cfg, f, value, err);
}

cruster_status cruster_config_get(const cruster_config *cfg, const char *name, char **out,
                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!cfg || !name || !out)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_config_get: config, name and out must not be NULL");
  const field *f = lookup(name, err);
  if (!f) return CRUSTER_E_INVALID_ARGUMENT;
  char num[48];
  char *text = NULL;
  switch (f->kind) {
    case K_INT:
      snprintf(num, sizeof num, "%" PRId64, int_value(cfg, f));
      text = core_strdup(num);
      break;
    case K_DURATION:
      snprintf(num, sizeof num, "%" PRId64 "ms", int_value(cfg, f));
      text = core_strdup(num);
      break;
    case K_BOOL: text = core_strdup(int_value(cfg, f) ? "true" : "false"); break;
    case K_STRING: {
      const char *s = str_value(cfg, f);
      text = core_strdup(s ? s : "");
      break;
    }
    case K_LIST: {
      size_t n, total = 1;
      char *const *items = list_value(cfg, f, &n);
      for (size_t i = 0; i < n; i++) total += strlen(items[i]) + 1;
      text = malloc(total);
      if (text) {
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
          if (i) text[o++] = ',';
          size_t l = strlen(items[i]);
          memcpy(text + o, items[i], l);
          o += l;
        }
        text[o] = '\0';
      }
      break;
    }
  }
  if (!text) return nomem(err);
  *out = text;
  return CRUSTER_OK;
}

cruster_status cruster_config_get_int(const cruster_config *cfg, const char *name, int64_t *out,
                                      cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!cfg || !name || !out)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "cruster_config_get_int: config, name and out must not be NULL");
  const field *f = lookup(name, err);
  if (!f) return CRUSTER_E_INVALID_ARGUMENT;
  if (f->kind == K_STRING || f->kind == K_LIST)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "%s is a %s field; read it with cruster_config_get", f->name,
                          f->kind == K_STRING ? "string" : "list");
  *out = int_value(cfg, f);
  return CRUSTER_OK;
}

cruster_status cruster_config_validate(const cruster_config *cfg, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!cfg) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "config must not be NULL");
  for (size_t i = 0; i < N_FIELDS; i++) {
    const field *f = &fields[i];
    cruster_status rc = CRUSTER_OK;
    switch (f->kind) {
      case K_INT:
      case K_DURATION:
      case K_BOOL: rc = check_range(f, int_value(cfg, f), err); break;
      case K_STRING:
        if (f->check) rc = f->check(f->name, str_value(cfg, f), err);
        break;
      case K_LIST: {
        size_t n;
        char *const *items = list_value(cfg, f, &n);
        rc = check_list(f, items, n, err);
        break;
      }
    }
    if (rc != CRUSTER_OK) return rc;
  }
  if (cfg->worker_threads_max < cfg->worker_threads)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "worker_threads_max must be >= worker_threads (%" PRId64 "), got %" PRId64,
                          cfg->worker_threads, cfg->worker_threads_max);
  if ((cfg->transport_tls_cert != NULL) != (cfg->transport_tls_key != NULL))
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "transport_tls_cert and transport_tls_key must be set together");
  if (cfg->transport_tls_cert && !cfg->transport_tls_ca)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "transport_tls_cert needs transport_tls_ca (the CA peers are checked against)");
  if (cfg->transport_tls_require_client_cert && !cfg->transport_tls_cert)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "transport_tls_require_client_cert needs transport_tls_cert, transport_tls_key "
                          "and transport_tls_ca");
  if (cfg->transport_max_message_size != 0 &&
      cfg->transport_max_message_size < cfg->max_payload_size + 1024)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "transport_max_message_size must be 0 (max_payload_size + 64 KiB) or >= "
                          "max_payload_size + 1024 (%" PRId64 "), got %" PRId64,
                          cfg->max_payload_size + 1024, cfg->transport_max_message_size);
  return CRUSTER_OK;
}

const char *cruster_config_field_name(size_t index) {
  return index < N_FIELDS ? fields[index].name : NULL;
}

void cruster_config_set_logger(cruster_config *cfg, cruster_log_fn fn, void *user,
                               cruster_log_level min_level) {
  if (!cfg) return;
  if (min_level < CRUSTER_LOG_TRACE) min_level = CRUSTER_LOG_TRACE;
  if (min_level > CRUSTER_LOG_OFF) min_level = CRUSTER_LOG_OFF;
  cfg->logger.fn = fn;
  cfg->logger.user = fn ? user : NULL;
  cfg->logger.min_level = min_level;
}

int core_config_has_group(const cruster_config *cfg, const char *group) {
  if (!cfg || !group) return 0;
  for (size_t i = 0; i < cfg->n_shard_groups; i++)
    if (strcmp(cfg->shard_groups[i], group) == 0) return 1;
  return 0;
}
