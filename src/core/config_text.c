/* Text forms of configuration values: integers, durations, booleans and
 * comma-separated lists. */
#include "core/config_text.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Copies s without leading/trailing whitespace into a new string. */
char *core_config_trimmed(const char *s, size_t len) {
  while (len > 0 && isspace((unsigned char)*s)) s++, len--;
  while (len > 0 && isspace((unsigned char)s[len - 1])) len--;
  char *t = malloc(len + 1);
  if (!t) return NULL;
  memcpy(t, s, len);
  t[len] = '\0';
  return t;
}

/* Parses a decimal int64 that fills all of s. 0 on success. */
int core_config_parse_int(const char *s, int64_t *out) {
  if (!*s) return -1;
  errno = 0;
  char *end = NULL;
  long long v = strtoll(s, &end, 10);
  if (errno == ERANGE || end == s || *end) return -1;
  *out = (int64_t)v;
  return 0;
}

/* "<n>" (ms) or "<n>ms" / "<n>s" / "<n>m" / "<n>h". 0 on success. */
int core_config_parse_duration(const char *s, int64_t *out) {
  size_t len = strlen(s), digits_end = len;
  while (digits_end > 0 && isalpha((unsigned char)s[digits_end - 1])) digits_end--;
  const char *unit = s + digits_end;
  int64_t mult;
  if (!*unit || strcasecmp(unit, "ms") == 0) mult = 1;
  else if (strcasecmp(unit, "s") == 0) mult = 1000;
  else if (strcasecmp(unit, "m") == 0) mult = 60 * 1000;
  else if (strcasecmp(unit, "h") == 0) mult = 3600 * 1000;
  else return -1;
  char num[32];
  if (digits_end == 0 || digits_end >= sizeof num) return -1;
  memcpy(num, s, digits_end);
  num[digits_end] = '\0';
  int64_t v;
  if (core_config_parse_int(num, &v) != 0) return -1;
  if (v > INT64_MAX / mult || v < INT64_MIN / mult) return -1;
  *out = v * mult;
  return 0;
}

int core_config_parse_bool(const char *s, int64_t *out) {
  static const char *const yes[] = {"true", "1", "yes", "on"};
  static const char *const no[] = {"false", "0", "no", "off"};
  for (size_t i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) return *out = 1, 0;
    if (strcasecmp(s, no[i]) == 0) return *out = 0, 0;
  }
  return -1;
}

void core_config_free_list(char **items, size_t n) {
  for (size_t i = 0; i < n; i++) free(items[i]);
  free(items);
}

/* Splits comma-separated text into trimmed items. 0 on success, -1 OOM. */
int core_config_split_list(const char *s, char ***out, size_t *n_out) {
  size_t n = 0;
  char **items = NULL;
  const char *p = s;
  /* "" and "  " are the empty list; otherwise every comma separates two
   * items (so "a,,b" has an empty item, which the check rejects). */
  char *whole = core_config_trimmed(s, strlen(s));
  if (!whole) return -1;
  int empty = whole[0] == '\0';
  free(whole);
  if (!empty) {
    for (;;) {
      const char *comma = strchr(p, ',');
      size_t len = comma ? (size_t)(comma - p) : strlen(p);
      char **grown = realloc(items, (n + 1) * sizeof *grown);
      if (!grown) goto oom;
      items = grown;
      items[n] = core_config_trimmed(p, len);
      if (!items[n]) goto oom;
      n++;
      if (!comma) break;
      p = comma + 1;
    }
  }
  *out = items;
  *n_out = n;
  return 0;
oom:
  core_config_free_list(items, n);
  return -1;
}
