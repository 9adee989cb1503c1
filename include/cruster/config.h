/*
 * cruster/config.h -- runner configuration.
 *
 * A cruster_config holds every setting of a runner, each with a default.
 * Fields are addressed by name (the names of the original system's
 * ShardingConfig, see docs/configuration.md for the full table), which keeps
 * the API small and easy to bind from other languages:
 *
 *   cruster_config *cfg = cruster_config_new();
 *   cruster_config_set(cfg, "runner_address", "10.0.0.1:9000", &err);
 *   cruster_config_set(cfg, "storage_poll_interval", "250ms", &err);
 *   cruster_config_set_int(cfg, "shards_per_group", 300, &err);
 *
 * Field kinds: integer, duration (milliseconds as integers; as text a number
 * with an optional unit ms, s, m, h -- "500ms", "30s", "2m"; a bare number is
 * milliseconds), boolean (0/1; as text true/false/1/0/yes/no/on/off), string,
 * and string list (text: comma-separated; "default,premium").
 *
 * Runners talk to each other over gRPC (plaintext by default). TLS: set
 * "transport_tls_cert" and "transport_tls_key" (this runner's certificate
 * and key, PEM files, used as server and as client) and "transport_tls_ca"
 * (the CA peers are verified against); "transport_tls_require_client_cert"
 * makes it mutual TLS (callers without a certificate of that CA are
 * refused). cruster_config_validate refuses incomplete combinations; the
 * files are read when the runtime starts. "transport_max_message_size"
 * bounds a message between runners (0 = max_payload_size + 64 KiB).
 *
 * A config is not thread-safe: use one from one thread at a time. The runtime
 * copies it, so it can be freed or changed after cruster_runtime_new.
 */
#ifndef CRUSTER_CONFIG_H
#define CRUSTER_CONFIG_H

#include "common.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cruster_config cruster_config;

/** Log levels, most verbose first. */
typedef enum cruster_log_level {
  CRUSTER_LOG_TRACE = 0,
  CRUSTER_LOG_DEBUG = 1,
  CRUSTER_LOG_INFO = 2,
  CRUSTER_LOG_WARN = 3,
  CRUSTER_LOG_ERROR = 4,
  CRUSTER_LOG_OFF = 5
} cruster_log_level;

/*
 * cruster_log_fn
 *   Receives one log record. `component` names the layer ("runtime",
 *   "entity", "storage", ...); `message` is one line without a trailing
 *   newline. Both strings are valid only during the call.
 * Threads: called from the runtime's loop thread, its workers and from
 *   threads calling into cruster, possibly at the same time: it must be
 *   thread-safe and must not call back into cruster.
 */
typedef void (*cruster_log_fn)(void *user, cruster_log_level level, const char *component,
                               const char *message);

/*
 * cruster_config_new
 *   Returns a new config holding every default, or NULL when out of memory.
 *   Free it with cruster_config_free. The default logger writes records at
 *   CRUSTER_LOG_INFO and above to stderr.
 * Threads: any.
 */
CRUSTER_API cruster_config *cruster_config_new(void);

/*
 * cruster_config_copy
 *   Returns a deep copy of `cfg` (NULL when out of memory or cfg is NULL).
 * Threads: any, but not concurrently with a change of `cfg`.
 */
CRUSTER_API cruster_config *cruster_config_copy(const cruster_config *cfg);

/*
 * cruster_config_free
 *   Frees a config. NULL is a no-op.
 */
CRUSTER_API void cruster_config_free(cruster_config *cfg);

/*
 * cruster_config_set
 *   Sets field `name` from its text form `value` (see the kinds above). The
 *   value is checked on its own at once (type, range); checks that involve
 *   several fields happen in cruster_config_validate.
 *   Both strings are copied.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT for a NULL argument or an
 *   unknown field name; CRUSTER_E_INVALID_CONFIG when the value does not
 *   parse or is out of range (the message names the field and the value);
 *   CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_config_set(cruster_config *cfg, const char *name,
                                              const char *value, cruster_error **err);

/*
 * cruster_config_set_int
 *   Sets an integer, duration (milliseconds) or boolean (0/1) field.
 * Returns: as cruster_config_set; CRUSTER_E_INVALID_ARGUMENT also when the
 *   field is a string or string list.
 */
CRUSTER_API cruster_status cruster_config_set_int(cruster_config *cfg, const char *name,
                                                  int64_t value, cruster_error **err);

/*
 * cruster_config_get
 *   Returns the text form of field `name` in `*out` (a NUL-terminated string
 *   to release with cruster_free). Durations come back as milliseconds with
 *   the unit ("500ms"), lists comma-separated.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (unknown name, NULL);
 *   CRUSTER_E_NOMEM.
 */
CRUSTER_API cruster_status cruster_config_get(const cruster_config *cfg, const char *name,
                                              char **out, cruster_error **err);

/*
 * cruster_config_get_int
 *   Reads an integer, duration (milliseconds) or boolean (0/1) field.
 * Returns: CRUSTER_OK; CRUSTER_E_INVALID_ARGUMENT (unknown name, string
 *   field, NULL).
 */
CRUSTER_API cruster_status cruster_config_get_int(const cruster_config *cfg, const char *name,
                                                  int64_t *out, cruster_error **err);

/*
 * cruster_config_validate
 *   Checks the whole config as cruster_runtime_new will. The first problem
 *   found is reported with CRUSTER_E_INVALID_CONFIG and a message that names
 *   the field ("shards_per_group must be >= 1, got 0").
 */
CRUSTER_API cruster_status cruster_config_validate(const cruster_config *cfg, cruster_error **err);

/*
 * cruster_config_field_name
 *   Enumerates the field names: returns the name of field `index`, or NULL
 *   when index is past the last field. Static strings.
 * Threads: any.
 */
CRUSTER_API const char *cruster_config_field_name(size_t index);

/*
 * cruster_config_set_logger
 *   Replaces the log sink. `fn` NULL restores the default (stderr). Records
 *   below `min_level` are not formatted at all. `user` is passed to `fn` and
 *   must stay valid as long as a runtime made from this config lives.
 *   The environment variable CRUSTER_LOG (trace, debug, info, warn, error,
 *   off), read by cruster_runtime_new, overrides `min_level` for that runtime;
 *   an unknown value is reported (warning) and ignored.
 */
CRUSTER_API void cruster_config_set_logger(cruster_config *cfg, cruster_log_fn fn, void *user,
                                           cruster_log_level min_level);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_CONFIG_H */
