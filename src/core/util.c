/* Small helpers shared by every layer: strings, clocks, name/id checks. */
#include "core/util.h"

#include <cruster/common.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"

char *core_strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

void *core_memdup(const void *p, size_t len) {
  void *d = malloc(len ? len : 1);
  if (d && len) memcpy(d, p, len);
  return d;
}

int64_t core_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t core_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

int64_t core_mono_ms(void) { return (int64_t)(core_mono_ns() / UINT64_C(1000000)); }

/* Decodes one UTF-8 sequence at s (n bytes left). Returns its length and the
 * code point in *cp, or 0 when the sequence is invalid (truncated, bad
 * continuation, overlong, surrogate, above U+10FFFF). */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  unsigned char c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  size_t len;
  uint32_t min, v;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2, min = 0x80, v = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3, min = 0x800, v = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4, min = 0x10000, v = c & 0x07;
  } else {
    return 0; /* continuation byte, C0/C1 overlong lead, F5..FF */
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

int core_utf8_valid(const char *s, size_t len) {
  if (!s) return len == 0;
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < len) {
    uint32_t cp;
    size_t k = utf8_decode(p + i, len - i, &cp);
    if (k == 0 || cp == 0) return 0;
    i += k;
  }
  return 1;
}

char *core_utf8_sanitize_dup(const char *s) {
  if (!s) return NULL;
  size_t len = strlen(s);
  char *out = malloc(len + 1);
  if (!out) return NULL;
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < len) {
    uint32_t cp;
    size_t k = utf8_decode(p + i, len - i, &cp);
    if (k == 0) {
      out[i++] = '?';
      continue;
    }
    memcpy(out + i, p + i, k);
    i += k;
  }
  out[len] = 0;
  return out;
}

static int is_control(uint32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }

cruster_status core_check_name(const char *what, const char *s, cruster_error **err) {
  if (!what) what = "name";
  if (!s) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "%s must not be NULL", what);
  size_t len = strlen(s);
  if (len == 0) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "%s must not be empty", what);
  if (len > CRUSTER_MAX_NAME_LEN)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "%s is too long: %zu bytes, at most %d",
                          what, len, CRUSTER_MAX_NAME_LEN);
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < len) {
    uint32_t cp;
    size_t k = utf8_decode(p + i, len - i, &cp);
    if (k == 0)
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "%s is not valid UTF-8 (bad byte at offset %zu)", what, i);
    if (is_control(cp))
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "%s must not contain control characters (U+%04X at offset %zu)", what,
                            (unsigned)cp, i);
    i += k;
  }
  return CRUSTER_OK;
}

cruster_status core_check_entity_id(const char *s, cruster_error **err) {
  if (!s) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "entity id must not be NULL");
  size_t len = strlen(s);
  if (len == 0) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "entity id must not be empty");
  if (len > CRUSTER_MAX_ENTITY_ID_LEN)
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "entity id is too long: %zu bytes, at most %d", len,
                          CRUSTER_MAX_ENTITY_ID_LEN);
  /* C0 controls and DEL are single bytes that never occur inside a UTF-8
   * sequence: a byte scan finds exactly them. (C1 controls, U+0080..U+009F,
   * are allowed in ids, unlike in names.) */
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7F)
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "entity id must not contain control characters "
                            "(byte 0x%02X at offset %zu)",
                            (unsigned)c, i);
  }
  if (!core_utf8_valid(s, len))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "entity id is not valid UTF-8");
  return CRUSTER_OK;
}

static int host_char_ok(unsigned char c) {
  return c > 0x20 && c != 0x7F && c != '/' && c != '[' && c != ']' && c != '@';
}

int core_parse_hostport(const char *s, char *host, size_t hostsz, int *port) {
  if (!s) return -1;
  const char *h, *h_end, *colon;
  if (s[0] == '[') {
    h = s + 1;
    h_end = strchr(h, ']');
    if (!h_end || h_end[1] != ':') return -1;
    colon = h_end + 1;
    for (const char *q = h; q < h_end; q++)
      if (!(*q == ':' || *q == '.' || *q == '%' || (*q >= '0' && *q <= '9') ||
            (*q >= 'a' && *q <= 'f') || (*q >= 'A' && *q <= 'F') ||
            (*q >= 'g' && *q <= 'z') || (*q >= 'G' && *q <= 'Z')))
        return -1;
    if (!memchr(h, ':', (size_t)(h_end - h))) return -1;
  } else {
    h = s;
    colon = strrchr(s, ':');
    if (!colon) return -1;
    h_end = colon;
    for (const char *q = h; q < h_end; q++)
      if (*q == ':' || !host_char_ok((unsigned char)*q)) return -1; /* IPv6 needs brackets */
  }
  if (h_end == h) return -1;
  const char *p = colon + 1;
  size_t plen = strlen(p);
  if (plen == 0 || plen > 5) return -1;
  long v = 0;
  for (size_t i = 0; i < plen; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (p[i] - '0');
  }
  if (v < 1 || v > 65535) return -1;
  size_t hlen = (size_t)(h_end - h);
  if (host) {
    if (hlen + 1 > hostsz) return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
  }
  if (port) *port = (int)v;
  return 0;
}

void core_text_one_line(char *s) {
  if (!s) return;
  char *w = s;
  int space = 0;
  for (const char *r = s; *r; r++) {
    if (*r == ' ' || *r == '\n' || *r == '\t' || *r == '\r' || *r == '\v' || *r == '\f') {
      space = w != s;
      continue;
    }
    if (space) *w++ = ' ';
    space = 0;
    *w++ = *r;
  }
  *w = 0;
}

cruster_status core_opts_read(const char *type, const char *init, const void *in, size_t in_size,
                              size_t v1, size_t known, void *out, cruster_error **err) {
  if (in_size < v1)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "%s.size is %zu, less than the first version's %zu: initialise it with %s",
                          type, in_size, v1, init);
  /* A newer caller: what this library does not know must be unset. */
  const unsigned char *p = in;
  for (size_t i = known; i < in_size; i++)
    if (p[i] != 0)
      return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                            "%s.size is %zu: byte %zu is set, but this cruster knows only the first "
                            "%zu bytes of the options (a newer option)",
                            type, in_size, i, known);
  if (out) memcpy(out, in, in_size < known ? in_size : known);
  return CRUSTER_OK;
}
