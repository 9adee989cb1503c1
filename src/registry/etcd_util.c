/* Helpers of the etcd registry: see etcd_util.h. */
#include "registry/etcd_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *rg_b64_encode(const void *data, size_t len) {
  if (len > (SIZE_MAX - 1) / 4 * 3 - 3) return NULL;
  const unsigned char *p = data;
  size_t n = (len + 2) / 3 * 4;
  char *out = malloc(n + 1), *w = out;
  if (!out) return NULL;
  size_t i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
    *w++ = B64[v >> 18];
    *w++ = B64[(v >> 12) & 63];
    *w++ = B64[(v >> 6) & 63];
    *w++ = B64[v & 63];
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)p[i] << 16;
    *w++ = B64[v >> 18];
    *w++ = B64[(v >> 12) & 63];
    *w++ = '=';
    *w++ = '=';
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
    *w++ = B64[v >> 18];
    *w++ = B64[(v >> 12) & 63];
    *w++ = B64[(v >> 6) & 63];
    *w++ = '=';
  }
  *w = 0;
  return out;
}

static int b64_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

unsigned char *rg_b64_decode(const char *s, size_t *out_len) {
  size_t n = strlen(s);
  if (n % 4 != 0) return NULL;
  size_t pad = 0;
  if (n >= 1 && s[n - 1] == '=') pad++;
  if (n >= 2 && s[n - 2] == '=') pad++;
  size_t len = n / 4 * 3 - pad;
  unsigned char *out = malloc(len + 1);
  if (!out) return NULL;
  size_t w = 0;
  for (size_t i = 0; i < n; i += 4) {
    int v[4];
    for (int k = 0; k < 4; k++) {
      unsigned char c = (unsigned char)s[i + k];
      int last = i + 4 == n;
      if (c == '=' && last && (k == 3 || (k == 2 && s[i + 3] == '='))) {
        v[k] = 0;
        continue;
      }
      if ((v[k] = b64_val(c)) < 0) {
        free(out);
        return NULL;
      }
    }
    uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
    unsigned char b[3] = {(unsigned char)(x >> 16), (unsigned char)(x >> 8), (unsigned char)x};
    for (int k = 0; k < 3 && w < len; k++) out[w++] = b[k];
  }
  out[len] = 0;
  *out_len = len;
  return out;
}

int rg_json_i64(const json_t *v, int64_t *out) {
  *out = 0;
  if (!v) return 0;
  if (json_is_integer(v)) {
    *out = (int64_t)json_integer_value(v);
    return 0;
  }
  if (!json_is_string(v)) return -1;
  const char *s = json_string_value(v);
  if (!*s || (*s != '-' && (*s < '0' || *s > '9'))) return -1;
  errno = 0;
  char *end = NULL;
  long long x = strtoll(s, &end, 10);
  if (errno != 0 || !end || *end) return -1;
  *out = (int64_t)x;
  return 0;
}

char *rg_prefix_end(const char *prefix, size_t len, size_t *out_len) {
  char *out = malloc(len ? len : 1);
  if (!out) return NULL;
  memcpy(out, prefix, len);
  for (size_t i = len; i > 0; i--) {
    unsigned char c = (unsigned char)out[i - 1];
    if (c < 0xff) {
      out[i - 1] = (char)(c + 1);
      *out_len = i;
      return out;
    }
  }
  out[0] = 0;
  *out_len = 1;
  return out;
}

char *rg_runner_value(const char *host, int port, int weight, int healthy) {
  json_t *v = json_pack("{s:{s:s,s:i},s:i,s:b}", "address", "host", host, "port", port, "weight",
                        weight, "healthy", healthy);
  if (!v) return NULL;
  char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(v);
  return s;
}

int rg_runner_parse(const char *json, size_t len, char **host, int *port, int *weight,
                    int *healthy) {
  json_error_t je;
  json_t *v = json_loadb(json, len, 0, &je);
  if (!v) return -1;
  json_t *addr = json_object_get(v, "address");
  json_t *h = json_object_get(addr, "host");
  json_t *p = json_object_get(addr, "port");
  json_t *w = json_object_get(v, "weight");
  json_t *hl = json_object_get(v, "healthy");
  int ok = json_is_object(v) && json_is_string(h) && json_string_length(h) > 0 &&
           json_is_integer(p) && json_integer_value(p) >= 1 && json_integer_value(p) <= 65535 &&
           json_is_integer(w) && json_integer_value(w) >= 0 &&
           json_integer_value(w) <= INT32_MAX && json_is_boolean(hl) &&
           strlen(json_string_value(h)) == json_string_length(h);
  if (ok) {
    *host = strdup(json_string_value(h));
    if (!*host) ok = 0;
    *port = (int)json_integer_value(p);
    *weight = (int)json_integer_value(w);
    *healthy = json_is_true(hl);
  }
  json_decref(v);
  return ok ? 0 : -1;
}
