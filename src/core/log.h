/* Internal: logging through the configured callback. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include "core/prefix.h"

#include <cruster/config.h>

typedef struct core_logger {
  cruster_log_fn fn; /* NULL = default stderr sink */
  void *user;
  cruster_log_level min_level;
} core_logger;

/* Formats and emits one record if level >= min_level. Thread-safe. The
 * default sink writes "cruster <LEVEL> [component] message\n" to stderr with
 * one write. `lg` NULL = the default sink at CRUSTER_LOG_INFO. Newlines in
 * the message become spaces (a record is one line). */
void core_log(const core_logger *lg, cruster_log_level level, const char *component,
              const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int core_log_enabled(const core_logger *lg, cruster_log_level level);
/* Parses a level name (trace, debug, info, warn, error, off; any case):
 * 0 and *out set, or -1. */
int core_log_parse_level(const char *text, cruster_log_level *out);

#endif
