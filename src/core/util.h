/* Internal: small helpers shared by every layer. */
#ifndef CORE_UTIL_H
#define CORE_UTIL_H

#include "core/prefix.h"

#include <cruster/status.h>
#include <stddef.h>
#include <stdint.h>

char *core_strdup(const char *s);                 /* NULL on OOM or s NULL */
void *core_memdup(const void *p, size_t len);     /* len 0 -> non-NULL 1-byte buffer */
int64_t core_now_ms(void);                        /* Unix time, ms (CLOCK_REALTIME) */
int64_t core_mono_ms(void);                       /* monotonic ms */
uint64_t core_mono_ns(void);                      /* monotonic ns */

/* 1 if `n` (a size a caller handed in) is larger than `limit` (a configured
 * int64_t maximum). Compares without casting `n` to a signed type: a size of
 * 2^63 or more must never pass as a negative number. A negative limit admits
 * nothing. */
static inline int core_size_exceeds(size_t n, int64_t limit) {
  return limit < 0 || (uintmax_t)n > (uintmax_t)limit;
}

/* 1 if `s` (len bytes) is valid UTF-8 without NUL; 0 otherwise. */
int core_utf8_valid(const char *s, size_t len);
/* A copy of NUL-terminated `s` with every byte that is not part of a valid
 * UTF-8 sequence replaced by '?' (same length). NULL on OOM or s NULL. */
char *core_utf8_sanitize_dup(const char *s);
/* Makes `s` one line in place: every run of whitespace (newlines and tabs
 * of libpq's multi-line messages included) becomes one space; none is left
 * at either end. */
void core_text_one_line(char *s);

/* Checks a name (entity type, method, shard group, group): non-NULL,
 * 1..CRUSTER_MAX_NAME_LEN bytes, valid UTF-8, no control characters.
 * `what` names it in the error ("entity type"). */
cruster_status core_check_name(const char *what, const char *s, cruster_error **err);
/* Checks an entity id: non-NULL, 1..CRUSTER_MAX_ENTITY_ID_LEN bytes (longer:
 * CRUSTER_E_PAYLOAD_TOO_LARGE), no C0 control character or DEL (the message
 * names the byte and its offset), valid UTF-8. */
cruster_status core_check_entity_id(const char *s, cruster_error **err);

/* The growth rule of every public options struct (a leading `size_t size`,
 * fields only appended): `in` (its caller's size `in_size`, at least `v1`,
 * the first version's) is accepted when every byte beyond the `known` this
 * library has is zero; then, when `out` is not NULL, the first
 * min(in_size, known) bytes are copied over `out` (which holds the defaults
 * for what an older caller lacks). CRUSTER_E_INVALID_ARGUMENT otherwise,
 * naming `type` and its `init` macro. */
cruster_status core_opts_read(const char *type, const char *init, const void *in, size_t in_size,
                              size_t v1, size_t known, void *out, cruster_error **err);

/* Parses "host:port" (port 1..65535, host non-empty; "[v6]:port" allowed).
 * Returns 0 on success, -1 when `s` is not a valid host:port or the host does
 * not fit in `hostsz` bytes. The host is stored without brackets. `host` and
 * `port` may be NULL to only validate. */
int core_parse_hostport(const char *s, char *host, size_t hostsz, int *port);

#endif
