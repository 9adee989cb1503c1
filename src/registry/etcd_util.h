/* Internal: small checked helpers of the etcd registry: base64 (etcd's JSON
 * gateway carries keys and values in base64), int64 fields (etcd sends them
 * as JSON strings), prefix range ends and the runner value of behaviour.md
 * §3.1. */
#ifndef RG_ETCD_UTIL_H
#define RG_ETCD_UTIL_H

#include "core/prefix.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Standard base64 with padding; malloc'd, NUL-terminated; NULL on OOM or a
 * length that cannot be encoded. */
char *rg_b64_encode(const void *data, size_t len);
/* Strict decoding (standard alphabet, padding required, nothing else):
 * malloc'd bytes plus a NUL (*out_len excludes it); NULL when `s` is not
 * base64 or on OOM. */
unsigned char *rg_b64_decode(const char *s, size_t *out_len);
/* An int64 field sent as a JSON string of digits or as an integer: 0 and
 * *out set; a missing field (NULL) gives 0 with *out = 0 (etcd omits zero
 * values); -1 when it is something else. */
int rg_json_i64(const json_t *v, int64_t *out);
/* The key after every key that starts with `prefix` (len bytes): the prefix
 * with its last byte below 0xff incremented and what follows cut; "\0" (one
 * zero byte, *out_len 1) when every byte is 0xff. malloc'd; NULL on OOM. */
char *rg_prefix_end(const char *prefix, size_t len, size_t *out_len);
/* The runner value, exactly as the original writes it:
 * {"address":{"host":"h","port":9000},"weight":1,"healthy":true}. malloc'd. */
char *rg_runner_value(const char *host, int port, int weight, int healthy);
/* Parses a runner value: 0 with the fields set (*host malloc'd), -1 when it
 * is malformed (not that JSON shape, port outside 1..65535, weight outside
 * 0..INT32_MAX, host empty). */
int rg_runner_parse(const char *json, size_t len, char **host, int *port, int *weight,
                    int *healthy);

#endif
