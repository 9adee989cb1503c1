/* Logging through the configured callback or the default stderr sink. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char *level_name(cruster_log_level level) {
  switch (level) {
    case CRUSTER_LOG_TRACE: return "TRACE";
    case CRUSTER_LOG_DEBUG: return "DEBUG";
    case CRUSTER_LOG_INFO: return "INFO";
    case CRUSTER_LOG_WARN: return "WARN";
    case CRUSTER_LOG_ERROR: return "ERROR";
    default: return "OFF";
  }
}

int core_log_parse_level(const char *text, cruster_log_level *out) {
  static const struct {
    const char *name;
    cruster_log_level level;
  } names[] = {{"trace", CRUSTER_LOG_TRACE}, {"debug", CRUSTER_LOG_DEBUG},
               {"info", CRUSTER_LOG_INFO},   {"warn", CRUSTER_LOG_WARN},
               {"warning", CRUSTER_LOG_WARN}, {"error", CRUSTER_LOG_ERROR},
               {"off", CRUSTER_LOG_OFF}};
  if (!text) return -1;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcasecmp(text, names[i].name) == 0) {
      *out = names[i].level;
      return 0;
    }
  return -1;
}

int core_log_enabled(const core_logger *lg, cruster_log_level level) {
  cruster_log_level min = lg ? lg->min_level : CRUSTER_LOG_INFO;
  if (level < CRUSTER_LOG_TRACE || level >= CRUSTER_LOG_OFF) return 0;
  return level >= min;
}

/* The default sink: the whole record goes out with one write() so records
 * of concurrent threads do not interleave. */
static void default_sink(cruster_log_level level, const char *component, const char *message) {
  char stack[1024];
  const char *lvl = level_name(level);
  int n = snprintf(NULL, 0, "cruster %s [%s] %s\n", lvl, component, message);
  if (n < 0) return;
  char *buf = stack;
  if ((size_t)n + 1 > sizeof stack) {
    buf = malloc((size_t)n + 1);
    if (!buf) return;
  }
  snprintf(buf, (size_t)n + 1, "cruster %s [%s] %s\n", lvl, component, message);
  size_t off = 0;
  while (off < (size_t)n) {
    ssize_t w = write(STDERR_FILENO, buf + off, (size_t)n - off);
    if (w <= 0) break;
    off += (size_t)w;
  }
  if (buf != stack) free(buf);
}

void core_log(const core_logger *lg, cruster_log_level level, const char *component,
              const char *fmt, ...) {
  if (!core_log_enabled(lg, level) || !fmt) return;
  if (!component) component = "cruster";
  char stack[512];
  char *msg = stack;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(stack, sizeof stack, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof stack) {
    msg = malloc((size_t)n + 1);
    if (!msg) {
      msg = stack; /* out of memory: emit the truncated record */
    } else {
      va_start(ap, fmt);
      vsnprintf(msg, (size_t)n + 1, fmt, ap);
      va_end(ap);
    }
  }
  /* A record is one line: drop trailing newlines, turn inner ones into spaces. */
  size_t len = strlen(msg);
  while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r')) msg[--len] = '\0';
  for (size_t i = 0; i < len; i++)
    if (msg[i] == '\n' || msg[i] == '\r') msg[i] = ' ';

  if (lg && lg->fn)
    lg->fn(lg->user, level, component, msg);
  else
    default_sink(level, component, msg);
  if (msg != stack) free(msg);
}
