/* Internal: parsing the text forms of configuration values. */
#ifndef CORE_CONFIG_TEXT_H
#define CORE_CONFIG_TEXT_H

#include "core/prefix.h"

#include <stddef.h>
#include <stdint.h>

/* A new copy of the `len` bytes at s without leading/trailing blanks; NULL on OOM. */
char *core_config_trimmed(const char *s, size_t len);
/* Decimal int64 filling all of s. 0 on success, -1 otherwise. */
int core_config_parse_int(const char *s, int64_t *out);
/* "<n>" (ms) or "<n>ms" / "<n>s" / "<n>m" / "<n>h" to ms. 0 on success, -1
 * when it does not parse or overflows. */
int core_config_parse_duration(const char *s, int64_t *out);
/* true/false/1/0/yes/no/on/off (any case) to 1/0. 0 on success. */
int core_config_parse_bool(const char *s, int64_t *out);
/* Comma-separated text to a new array of trimmed items ("" and blanks = no
 * items; "a,,b" has an empty middle item). 0 on success, -1 on OOM. */
int core_config_split_list(const char *s, char ***out, size_t *n_out);
void core_config_free_list(char **items, size_t n);

#endif
