/*
 * fuzz_api -- a libFuzzer target that drives cruster's public C API with
 * hostile input: random lengths (SIZE_MAX and 2^63 included), flags, options
 * and sizes of the options struct, names and ids with any bytes, durations,
 * status codes, and random call orders.
 *
 * Each input is a small program, run from a fresh runtime to its free (so an
 * input reproduces on its own):
 *   1. configuration: cruster_config_set/_set_int/_get/_validate/_copy with
 *      field names and values from the input; then the runtime is made from
 *      that config (a few settings are clamped so an input stays quick);
 *   2. entity definitions: one fixed type ("Fz") plus definitions built from
 *      the input (any names, flags, durations, capacities, RPC groups);
 *   3. operations until the input ends: send/notify in their four forms with
 *      random payloads and options (caller: none, made up, stale, or a live
 *      parked request), answers to parked requests, request accessors, stored
 *      replies and dead letters, metrics, and the pure id functions.
 * Handlers of "Fz" act as their payload says: reply, fail with any code,
 * answer twice, reply with a hostile length, park the request for the
 * harness to answer later, call on behalf of their request.
 *
 * Besides ASan and UBSan (and LSan at the end of each input) it checks the
 * API's promises and aborts when one breaks: a second answer inside a
 * handler returns CRUSTER_E_STATE; a hostile reply length returns
 * CRUSTER_E_PAYLOAD_TOO_LARGE; callers only ever see known status codes
 * (cruster or application), with a message exactly on failure; a call made
 * on behalf of a request before its answer is never CRUSTER_E_FORBIDDEN.
 *
 * Built with clang only (scripts/dev build --sanitize); ctest runs it for a
 * few seconds over fuzz/corpus (test "fuzz_api"). By hand:
 *   mkdir -p /tmp/corpus && build-asan/fuzz/fuzz_api -max_len=512 -len_control=0 /tmp/corpus
 * fuzz/corpus
 */
#include <cruster/cruster.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the input ------------------------------------------------------------ */

typedef struct input {
  const uint8_t *p;
  size_t n;
} input;

static uint8_t u8(input *in) {
  if (in->n == 0)
    return 0;
  in->n--;
  return *in->p++;
}
static uint16_t u16(input *in) { return (uint16_t)(u8(in) << 8 | u8(in)); }
static uint64_t u64(input *in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | u8(in);
  return v;
}

/* Aborts with a reason: libFuzzer saves the input as a crash. */
static void broken(const char *what, long long v) {
  fprintf(stderr, "fuzz_api: broken promise: %s (%lld)\n", what, v);
  abort();
}

static const char *const WORDS[] = {
    "Fz", "echo",        "prot", "pers",      "priv", "act",      "none", "default",  "g2",  "id-1",
    "",   "caf\xc3\xa9", "a\nb", "tab\there", "\x7f", "\xff\xfe", "x y",  "\xc2\x85", "Fz ", "FZ",
};
#define N_WORDS (sizeof(WORDS) / sizeof(WORDS[0]))

/* A string from the input: a word, raw bytes, or a long run (around the
 * 255-byte name and 1024-byte id limits). NULL sometimes. Free with free(). */
static char *gen_str(input *in) {
  uint8_t m = u8(in);
  if (m == 0xFF)
    return NULL;
  switch (m % 5) {
  case 0:
  case 1:
  case 2:
    return strdup(WORDS[u8(in) % N_WORDS]);
  case 3: {
    size_t n = u8(in) % 24;
    char *b = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
      b[i] = (char)u8(in);
    b[n] = 0;
    return b;
  }
  default: {
    static const size_t lens[] = {254, 255, 256, 1023, 1024, 1025, 4096};
    size_t n = lens[u8(in) % 7];
    char *b = malloc(n + 1);
    memset(b, 'a' + u8(in) % 26, n);
    b[n] = 0;
    return b;
  }
  }
}

static int64_t gen_i64(input *in) {
  static const int64_t table[] = {0,
                                  1,
                                  -1,
                                  2,
                                  100,
                                  INT64_MAX,
                                  INT64_MIN,
                                  INT64_MAX / 1000000,
                                  INT64_MAX / 1000000 + 1,
                                  INT32_MAX,
                                  (int64_t)INT32_MAX + 1,
                                  1073741824,
                                  1073741825};
  uint8_t m = u8(in);
  if (m < 200)
    return table[m % (sizeof(table) / sizeof(table[0]))];
  return (int64_t)u64(in);
}

/* ---- shared state (reset per input) ----------------------------------------- */

#define MAX_PARKED 32
static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static cruster_request *parked[MAX_PARKED];
static size_t nparked;
static atomic_int stopping; /* the harness is about to free the runtime: do not park */
static uintptr_t stale[8];  /* addresses of answered requests (compared only) */
static size_t nstale;
static int64_t max_payload; /* of the runtime of this input */

static int park(cruster_request *r) {
  if (atomic_load(&stopping))
    return 0;
  pthread_mutex_lock(&park_mu);
  int ok = nparked < MAX_PARKED;
  if (ok)
    parked[nparked++] = r;
  pthread_mutex_unlock(&park_mu);
  return ok;
}

static cruster_request *unpark(size_t pick) {
  pthread_mutex_lock(&park_mu);
  cruster_request *r = NULL;
  if (nparked) {
    size_t i = pick % nparked;
    r = parked[i];
    parked[i] = parked[--nparked];
  }
  pthread_mutex_unlock(&park_mu);
  return r;
}

/* A parked request, left parked (the harness uses it, then it stays live). */
static cruster_request *peek_parked(size_t pick) {
  pthread_mutex_lock(&park_mu);
  cruster_request *r = nparked ? parked[pick % nparked] : NULL;
  pthread_mutex_unlock(&park_mu);
  return r;
}

static void remember_stale(const void *p) { stale[nstale++ % 8] = (uintptr_t)p; }

/* ---- completions ------------------------------------------------------------ */

static int not_forbidden_tag;

static void check_outcome(int status, const void *data, size_t len, const char *msg) {
  if (status > 0)
    broken("a caller got a positive status", status);
  if (status != CRUSTER_OK && !msg)
    broken("a failure without a message", status);
  if (status == CRUSTER_OK && msg)
    broken("a success with a message", status);
  if (status == CRUSTER_OK && len && !data)
    broken("a success with len and no data", (long long)len);
  if (strcmp(cruster_status_name(status), "CRUSTER_E_UNKNOWN") == 0)
    broken("an unknown status code reached a caller", status);
  volatile unsigned char sink = 0;
  for (size_t i = 0; data && i < len; i++)
    sink ^= ((const unsigned char *)data)[i];
  if (msg)
    sink ^= (unsigned char)strlen(msg);
  (void)sink;
}

static void on_done(void *user, int status, const void *data, size_t len, const char *msg) {
  check_outcome(status, data, len, msg);
  if (user == &not_forbidden_tag && status == CRUSTER_E_FORBIDDEN)
    broken("a call on behalf of a request being handled was forbidden", status);
}

static void quiet_log(void *user, cruster_log_level level, const char *component,
                      const char *message) {
  (void)user;
  (void)level;
  volatile size_t n = strlen(component) + strlen(message);
  (void)n;
}

/* ---- handlers --------------------------------------------------------------- */

static const size_t HOSTILE_LENS[] = {SIZE_MAX,          SIZE_MAX - 1,
                                      (size_t)1 << 63,   ((size_t)1 << 63) + 1,
                                      (size_t)INT64_MAX, (size_t)UINT32_MAX + 1};

static void h_echo(void *user, cruster_request *req) {
  (void)user;
  size_t len = 0;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

/* What "act" does is in its payload: [action, arg, ...]. */
static void h_act(void *user, cruster_request *req) {
  (void)user;
  size_t len = 0;
  const uint8_t *p = cruster_request_payload(req, &len);
  uint8_t action = len > 0 ? p[0] : 0, arg = len > 1 ? p[1] : 0;
  int st;
  switch (action % 10) {
  case 0:
    cruster_request_reply(req, p, len);
    break;
  case 1: { /* a hostile reply length, then a second answer */
    static const char small[8] = "0123456";
    size_t huge = HOSTILE_LENS[arg % (sizeof(HOSTILE_LENS) / sizeof(HOSTILE_LENS[0]))];
    st = cruster_request_reply(req, small, huge);
    if (st != CRUSTER_E_PAYLOAD_TOO_LARGE && st != CRUSTER_E_SHUTTING_DOWN)
      broken("a hostile reply length was not refused", st);
    if (cruster_request_reply(req, small, 1) != CRUSTER_E_STATE)
      broken("a second answer was not refused", 1);
    break;
  }
  case 2: { /* any status code, any message */
    int code = 0;
    for (size_t i = 2; i < 6 && i < len; i++)
      code = (int)((unsigned)code << 8 | p[i]);
    if (arg & 1)
      code = -(int)(arg % 40);
    char msg[16] = {0};
    if (len > 6)
      memcpy(msg, p + 6, len - 6 < 15 ? len - 6 : 15);
    st = cruster_request_fail(req, code, (arg & 2) ? NULL : msg);
    if (st == CRUSTER_E_STATE)
      broken("a first answer was refused", st);
    break;
  }
  case 3: /* answer twice */
    if (arg & 1)
      cruster_request_fail(req, -1000 - arg, "first");
    else
      cruster_request_reply(req, "first", 5);
    st = (arg & 2) ? cruster_request_fail(req, CRUSTER_E_NOT_FOUND, "second")
                   : cruster_request_reply(req, NULL, 3);
    if (st != CRUSTER_E_STATE)
      broken("a second answer was not refused", st);
    /* the handle is still valid until this handler returns */
    if (!cruster_request_entity_id(req))
      broken("accessor after the answer", 0);
    break;
  case 4:
  case 5:
    if (!park(req))
      cruster_request_reply(req, NULL, 0);
    break;
  case 6: { /* call on behalf of this request, then answer */
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    o.caller = req;
    o.timeout_ms = 1 + arg % 50;
    const char *id = cruster_request_entity_id(req);
    cruster_runtime *rt = cruster_request_runtime(req);
    st = (arg & 1) ? cruster_notify(rt, "Fz", id, "prot", "x", 1, &o, on_done, &not_forbidden_tag, NULL)
                   : cruster_send(rt, "Fz", id, "echo", "x", 1, &o, on_done, &not_forbidden_tag, NULL);
    if (st != CRUSTER_OK && st != CRUSTER_E_SHUTTING_DOWN)
      broken("an internal call was refused", st);
    cruster_request_reply(req, NULL, 0);
    break;
  }
  case 7: /* NULL data with a length */
    st = cruster_request_reply(req, NULL, 1 + arg);
    if (st != CRUSTER_E_INVALID_ARGUMENT)
      broken("NULL reply data was accepted", st);
    break;
  case 8: { /* every accessor, then an answer */
    volatile size_t n =
        strlen(cruster_request_entity_type(req)) + strlen(cruster_request_entity_id(req)) +
        strlen(cruster_request_method(req)) + strlen(cruster_request_shard_group(req));
    (void)n;
    (void)cruster_request_shard(req);
    (void)cruster_request_id(req);
    (void)cruster_request_is_persisted(req);
    (void)cruster_request_from_entity(req);
    (void)cruster_request_cancelled(req);
    cruster_request_reply(req, p, len > 3 ? 3 : len);
    break;
  }
  default: /* a reply of exactly the limit, or one byte over it */
    if (max_payload <= 65536) {
      size_t n = (size_t)max_payload + (arg & 1);
      char *b = calloc(1, n);
      st = cruster_request_reply(req, b, n);
      if ((arg & 1) && st != CRUSTER_E_PAYLOAD_TOO_LARGE && st != CRUSTER_E_SHUTTING_DOWN)
        broken("a reply over max_payload_size was accepted", st);
      free(b);
    } else {
      cruster_request_reply(req, "big", 3);
    }
    break;
  }
}

static void h_park(void *user, cruster_request *req) {
  (void)user;
  if (!park(req))
    cruster_request_reply(req, NULL, 0);
}

static cruster_rpc_fn pick_fn(uint8_t b) {
  switch (b % 4) {
  case 0:
    return h_echo;
  case 1:
    return h_act;
  case 2:
    return h_park;
  default:
    return NULL;
  }
}

/* ---- stage 1: configuration ----------------------------------------------------- */

static const char *const VALUES[] = {
    "0",
    "-1",
    "1",
    "2",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "1h",
    "99999999999999999h",
    "2562047788015215h",
    "9223372036854ms",
    "9223372036855ms",
    "500ms",
    "30s",
    "2m",
    "true",
    "yes",
    "off",
    "",
    "   ",
    " 5 s",
    "default,g2",
    "default,default",
    "a,,b",
    "1e3",
    "0x10",
    "127.0.0.1:9000",
    "[::1]:1",
    "h:0",
    "x.y_z",
    "1073741824",
    "1073741825",
    "rendezvous",
};
#define N_VALUES (sizeof(VALUES) / sizeof(VALUES[0]))

static size_t n_fields(void) {
  size_t n = 0;
  while (cruster_config_field_name(n))
    n++;
  return n;
}

static char *gen_field(input *in, size_t nf) {
  uint8_t b = u8(in);
  if (b < 230)
    return strdup(cruster_config_field_name(b % nf));
  return gen_str(in);
}

static void clamp(cruster_config *cfg, const char *name, int64_t lo, int64_t hi) {
  int64_t v = 0;
  if (cruster_config_get_int(cfg, name, &v, NULL) != CRUSTER_OK)
    return;
  if (v < lo)
    cruster_config_set_int(cfg, name, lo, NULL);
  if (v > hi)
    cruster_config_set_int(cfg, name, hi, NULL);
}

static cruster_config *stage_config(input *in) {
  cruster_config *cfg = cruster_config_new();
  if (!cfg)
    abort();
  size_t nf = n_fields();
  int ops = u8(in) % 12;
  for (int i = 0; i < ops; i++) {
    char *name = gen_field(in, nf);
    cruster_error *e = NULL;
    switch (u8(in) % 6) {
    case 0:
    case 1: {
      uint8_t v = u8(in);
      char *value = v < 200 ? strdup(VALUES[v % N_VALUES]) : gen_str(in);
      cruster_config_set(cfg, name, value, &e);
      free(value);
      break;
    }
    case 2:
      cruster_config_set_int(cfg, name, gen_i64(in), &e);
      break;
    case 3: {
      char *out = NULL;
      if (cruster_config_get(cfg, name, &out, &e) == CRUSTER_OK) {
        if (!out)
          broken("config_get OK without text", 0);
        cruster_free(out);
      }
      int64_t v;
      cruster_error_free(e);
      e = NULL;
      cruster_config_get_int(cfg, name, &v, &e);
      break;
    }
    case 4:
      cruster_config_validate(cfg, &e);
      break;
    default: {
      cruster_config *c = cruster_config_copy(cfg);
      cruster_config_free(c);
      break;
    }
    }
    (void)cruster_error_message(e);
    cruster_error_free(e);
    free(name);
  }
  cruster_config_set_logger(cfg, quiet_log, NULL, (cruster_log_level)((int)(u8(in) % 9) - 2));
  /* Keep an input quick: few threads, short waits. */
  clamp(cfg, "worker_threads", 1, 2);
  clamp(cfg, "worker_threads_max", 2, 4);
  clamp(cfg, "entity_termination_timeout", 1, 200);
  clamp(cfg, "default_call_timeout", 1, 300);
  clamp(cfg, "max_payload_size", 1, 1 << 20);
  clamp(cfg, "storage_poll_interval", 5, INT64_MAX);
  char *groups = NULL;
  if (cruster_config_get(cfg, "shard_groups", &groups, NULL) == CRUSTER_OK) {
    int has_default = strcmp(groups, "default") == 0 || strncmp(groups, "default,", 8) == 0 ||
                      strstr(groups, ",default,") ||
                      (strlen(groups) >= 8 && strcmp(groups + strlen(groups) - 8, ",default") == 0);
    if (!has_default)
      cruster_config_set(cfg, "shard_groups", "default,g2", NULL);
    cruster_free(groups);
  }
  return cfg;
}

/* ---- stage 2: entity definitions ------------------------------------------------ */

static void fuzz_def(input *in, cruster_runtime *rt) {
  cruster_entity_def *d = NULL;
  char *name = gen_str(in);
  cruster_error *e = NULL;
  cruster_status st = cruster_entity_def_new(name, u8(in) == 0xEE ? NULL : &d, &e);
  cruster_error_free(e);
  free(name);
  if (st != CRUSTER_OK) {
    if (d)
      broken("def_new failed but set *out", st);
    return;
  }
  int ops = u8(in) % 8;
  cruster_rpc_group *g = NULL;
  for (int i = 0; i < ops; i++) {
    e = NULL;
    char *s = NULL;
    switch (u8(in) % 7) {
    case 0:
      cruster_entity_def_set_max_idle_time(d, gen_i64(in), &e);
      break;
    case 1:
      cruster_entity_def_set_mailbox_capacity(d, gen_i64(in), &e);
      break;
    case 2:
      cruster_entity_def_set_concurrency(d, gen_i64(in), &e);
      break;
    case 3:
      s = gen_str(in);
      cruster_entity_def_set_shard_group(d, s, &e);
      break;
    case 4: {
      s = gen_str(in);
      uint8_t f = u8(in);
      unsigned flags = f < 240 ? f % 8 : (unsigned)u64(in);
      cruster_entity_def_add_rpc(d, s, flags, pick_fn(u8(in)), NULL, &e);
      break;
    }
    case 5:
      if (!g) {
        s = gen_str(in);
        cruster_rpc_group_new(s, &g, &e);
      } else {
        s = gen_str(in);
        cruster_rpc_group_add_rpc(g, s, u8(in) % 8, pick_fn(u8(in)), NULL, &e);
      }
      break;
    default:
      cruster_entity_def_add_group(d, g, &e);
      break;
    }
    (void)cruster_error_message(e);
    cruster_error_free(e);
    free(s);
  }
  e = NULL;
  cruster_runtime_register_entity(rt, d, &e);
  cruster_error_free(e);
  cruster_rpc_group_free(g);
  cruster_entity_def_free(d);
}

static void register_fixed(cruster_runtime *rt) {
  cruster_entity_def *d = NULL;
  if (cruster_entity_def_new("Fz", &d, NULL) != CRUSTER_OK)
    abort();
  cruster_entity_def_add_rpc(d, "echo", 0, h_echo, NULL, NULL);
  cruster_entity_def_add_rpc(d, "act", 0, h_act, NULL, NULL);
  cruster_entity_def_add_rpc(d, "prot", CRUSTER_RPC_PROTECTED, h_echo, NULL, NULL);
  cruster_entity_def_add_rpc(d, "pers", CRUSTER_RPC_PERSISTED, h_act, NULL, NULL);
  cruster_entity_def_add_rpc(d, "priv", CRUSTER_RPC_PRIVATE, h_echo, NULL, NULL);
  cruster_entity_def_add_rpc(d, "park", 0, h_park, NULL, NULL);
  cruster_entity_def_set_concurrency(d, 0, NULL);
  if (cruster_runtime_register_entity(rt, d, NULL) != CRUSTER_OK)
    abort();
  cruster_entity_def_free(d);
}

/* ---- stage 3: operations ---------------------------------------------------------- */

typedef struct payload {
  void *p;
  size_t len;
  int hostile; /* len is over max_payload_size; the buffer is tiny */
} payload;

static payload gen_payload(input *in) {
  payload pl = {NULL, 0, 0};
  uint8_t m = u8(in);
  switch (m % 8) {
  case 0:
    break;
  case 1:
    pl.len = 1 + u8(in);
    break; /* NULL with a length: refused */
  case 2:
  case 3:
  case 4: { /* honest bytes: an "act" script */
    pl.len = u8(in) % 24;
    pl.p = malloc(pl.len ? pl.len : 1);
    for (size_t i = 0; i < pl.len; i++)
      ((uint8_t *)pl.p)[i] = u8(in);
    break;
  }
  case 5: { /* hostile length, tiny buffer */
    size_t k = u8(in);
    pl.len = k < 6 ? HOSTILE_LENS[k] : (size_t)max_payload + 1 + (k % 3);
    pl.p = malloc(8);
    memset(pl.p, 0, 8);
    pl.hostile = 1;
    break;
  }
  default: { /* an honest buffer at or just over the limit */
    size_t over = u8(in) % 2;
    if (max_payload > (1 << 20))
      break;
    pl.len = (size_t)max_payload + over;
    pl.p = calloc(1, pl.len);
    break;
  }
  }
  return pl;
}

/* The options as a caller of another version might pass them: `size` bytes
 * allocated, exactly, with `size` set to that. Returns NULL for "no options". */
static cruster_call_opts *gen_opts(input *in, int sync, void **to_free) {
  *to_free = NULL;
  uint8_t m = u8(in);
  if (m % 4 == 0)
    return NULL;
  static const size_t sizes[] = {sizeof(size_t),
                                 offsetof(cruster_call_opts, caller),
                                 sizeof(cruster_call_opts) - 1,
                                 sizeof(cruster_call_opts),
                                 sizeof(cruster_call_opts),
                                 sizeof(cruster_call_opts),
                                 sizeof(cruster_call_opts) + 8,
                                 sizeof(cruster_call_opts) + 64};
  size_t size = sizes[u8(in) % (sizeof(sizes) / sizeof(sizes[0]))];
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.size = size;
  uint8_t f = u8(in);
  o.flags = f < 200 ? f % 4 : (unsigned)u64(in);
  switch (u8(in) % 5) {
  case 0:
    o.timeout_ms = 0;
    break;
  case 1:
    o.timeout_ms = 1 + u8(in) % 50;
    break;
  case 2:
    o.timeout_ms = -1 - (int64_t)u8(in);
    break;
  default:
    o.timeout_ms = gen_i64(in);
    break;
  }
  static char key_buf[17];
  switch (u8(in) % 6) {
  case 0:
    break;
  case 1:
    o.idempotency_key_len = 1 + u8(in);
    break; /* NULL with a length */
  case 2:
    o.idempotency_key = key_buf;
    break;  /* empty */
  case 3: { /* hostile length, tiny buffer */
    static const size_t k[] = {65537, SIZE_MAX, (size_t)1 << 63};
    o.idempotency_key = key_buf;
    o.idempotency_key_len = k[u8(in) % 3];
    break;
  }
  default:
    o.idempotency_key = key_buf;
    o.idempotency_key_len = 1 + u8(in) % 16;
    for (size_t i = 0; i < o.idempotency_key_len; i++)
      key_buf[i] = (char)u8(in);
    break;
  }
  switch (u8(in) % 6) {
  case 0:
  case 1:
    o.deliver_at_ms = 0;
    break;
  case 2:
    o.deliver_at_ms = (int64_t)time(NULL) * 1000 + u8(in);
    break;
  case 3: {
    static const int64_t t[] = {
        -1, INT64_MAX, INT64_MIN, INT64_C(253402300799999), INT64_C(253402300800000), 1};
    o.deliver_at_ms = t[u8(in) % 6];
    break;
  }
  default:
    o.deliver_at_ms = gen_i64(in);
    break;
  }
  switch (u8(in) % 6) {
  case 0:
  case 1:
    break;
  case 2:
    o.caller = (const cruster_request *)(uintptr_t)(u64(in) | 1);
    break;
  case 3:
    o.caller = (const cruster_request *)stale[u8(in) % 8];
    break;
  default:
    o.caller = peek_parked(u8(in));
    break;
  }
  /* A blocking call must come back soon: parked requests are only answered
   * by this thread. */
  if (sync && o.timeout_ms >= 0)
    o.timeout_ms = 1 + u8(in) % 50;
  if (!sync && (o.timeout_ms == 0 || o.timeout_ms > 2000))
    o.timeout_ms = 1 + u8(in) % 500;
  size_t alloc = size < sizeof(size_t) ? sizeof(size_t) : size;
  unsigned char *raw = malloc(alloc);
  memset(raw, 0xA5, alloc);
  memcpy(raw, &o, alloc < sizeof(o) ? alloc : sizeof(o));
  *to_free = raw;
  return (cruster_call_opts *)(void *)raw;
}

static void op_call(input *in, cruster_runtime *rt) {
  uint8_t how = u8(in) % 4;
  char *type = u8(in) < 200 ? strdup("Fz") : gen_str(in);
  char *id = gen_str(in);
  uint8_t mb = u8(in);
  static const char *const methods[] = {"echo", "act", "prot", "pers", "priv", "park", "none"};
  char *method = mb < 220 ? strdup(methods[mb % 7]) : gen_str(in);
  payload pl = gen_payload(in);
  void *opts_mem = NULL;
  cruster_call_opts *opts = gen_opts(in, how >= 2, &opts_mem);
  int st;
  switch (how) {
  case 0:
    st = cruster_send(rt, type, id, method, pl.p, pl.len, opts, on_done, NULL, NULL);
    break;
  case 1:
    st =
        cruster_notify(rt, type, id, method, pl.p, pl.len, opts, u8(in) & 1 ? on_done : NULL, NULL, NULL);
    break;
  case 2: {
    void *reply = NULL;
    size_t rlen = 0;
    cruster_error *e = NULL;
    st = cruster_send_sync(rt, type, id, method, pl.p, pl.len, opts, u8(in) & 1 ? &reply : NULL,
                           &rlen, &e);
    if (st == CRUSTER_OK && reply && ((const char *)reply)[rlen] != 0)
      broken("a sync reply is not NUL-terminated", (long long)rlen);
    if (st != CRUSTER_OK && !e)
      broken("a failed sync call without an error", st);
    check_outcome(st, st == CRUSTER_OK ? reply : NULL, st == CRUSTER_OK && reply ? rlen : 0,
                  st == CRUSTER_OK ? NULL : cruster_error_message(e));
    cruster_free(reply);
    cruster_error_free(e);
    break;
  }
  default: {
    cruster_error *e = NULL;
    st = cruster_notify_sync(rt, type, id, method, pl.p, pl.len, opts, &e);
    cruster_error_free(e);
    break;
  }
  }
  if (pl.hostile && st != CRUSTER_E_PAYLOAD_TOO_LARGE && st != CRUSTER_E_INVALID_ARGUMENT)
    broken("a hostile payload length was not refused", st);
  free(opts_mem);
  free(pl.p);
  free(type);
  free(id);
  free(method);
}

static void op_answer(input *in) {
  cruster_request *r = unpark(u8(in));
  if (!r)
    return;
  uint8_t k = u8(in);
  int st;
  switch (k % 6) {
  case 0:
    st = cruster_request_reply(r, "late", 4);
    break;
  case 1:
    st = cruster_request_reply(r, NULL, 1 + u8(in));
    break;
  case 2:
    st = cruster_request_reply(r, "x", HOSTILE_LENS[u8(in) % 6]);
    break;
  case 3:
    st = cruster_request_fail(r, (int)(int32_t)(uint32_t)u64(in), NULL);
    break;
  case 4:
    st = cruster_request_fail(r, -(int)(u8(in) % 40), "late failure");
    break;
  default:
    st = cruster_request_fail(r, -1000 - u8(in), "app");
    break;
  }
  if (st == CRUSTER_E_STATE)
    broken("the first answer of a parked request was refused", st);
  remember_stale(r); /* gone now: from here on only its address is used */
}

static void op_accessors(input *in) {
  cruster_request *r = peek_parked(u8(in));
  size_t len = 0;
  const uint8_t *p = cruster_request_payload(r, &len);
  volatile unsigned x = 0;
  for (size_t i = 0; p && i < len; i++)
    x ^= p[i];
  if (r) {
    x ^= (unsigned)strlen(cruster_request_entity_id(r));
    x ^= (unsigned)cruster_request_cancelled(r);
  }
  (void)x;
}

static void op_stored(input *in, cruster_runtime *rt) {
  char *type = u8(in) < 200 ? strdup("Fz") : gen_str(in);
  char *id = gen_str(in);
  char *method = strdup(u8(in) & 1 ? "pers" : "echo");
  char key[16];
  size_t klen = u8(in) % 17;
  for (size_t i = 0; i < klen; i++)
    key[i] = (char)u8(in);
  cruster_error *e = NULL;
  switch (u8(in) % 4) {
  case 0: {
    int ready = 0;
    void *reply = NULL;
    size_t rlen = 0;
    cruster_poll_reply(rt, type, id, method, klen ? key : NULL, klen, u8(in) & 1 ? &ready : NULL,
                       &reply, &rlen, &e);
    cruster_free(reply);
    break;
  }
  case 1: {
    void *opts_mem = NULL;
    cruster_call_opts *opts = gen_opts(in, 0, &opts_mem);
    cruster_join_reply(rt, type, id, method, klen ? key : NULL, klen, opts, on_done, NULL, NULL);
    free(opts_mem);
    break;
  }
  case 2: {
    cruster_message_list *l = NULL;
    size_t limit = u8(in) & 1 ? SIZE_MAX : u8(in);
    if (cruster_dead_letters(rt, limit, &l, &e) == CRUSTER_OK) {
      size_t n = cruster_message_list_count(l);
      for (size_t i = 0; i <= n; i++) {
        size_t plen = 0;
        (void)cruster_message_list_payload(l, i, &plen);
        (void)cruster_message_list_entity_id(l, i);
        (void)cruster_message_list_attempts(l, i);
      }
      cruster_message_list_free(l);
    }
    break;
  }
  default:
    cruster_dead_letter_redeliver(rt, (int64_t)u64(in), &e);
    break;
  }
  cruster_error_free(e);
  free(type);
  free(id);
  free(method);
}

static void op_metrics(input *in, cruster_runtime *rt) {
  const cruster_metrics *m = cruster_runtime_metrics(rt);
  if (u8(in) & 1) {
    char *text = NULL;
    size_t len = 0;
    if (cruster_metrics_render(m, &text, u8(in) & 1 ? &len : NULL) == CRUSTER_OK)
      cruster_free(text);
  } else {
    char *name = gen_str(in), *labels = gen_str(in);
    double v;
    cruster_metrics_value(m, name, labels, &v);
    free(name);
    free(labels);
  }
}

static void op_ids(input *in) {
  char buf[32];
  size_t len = u8(in) % sizeof(buf);
  for (size_t i = 0; i < len; i++)
    buf[i] = (char)u8(in);
  (void)cruster_shard_for(u8(in) & 1 ? buf : NULL, len, (int32_t)(uint32_t)u64(in));
  (void)cruster_hash64(u8(in) & 1 ? buf : NULL, len);
  char hex[33];
  cruster_hex128(buf, len, hex);
  char *a = gen_str(in), *b = gen_str(in);
  (void)cruster_persisted_request_id(a, b, "m", u8(in) & 1 ? buf : NULL, len);
  const char *runners[4] = {a, b, "h:1", NULL};
  static const int32_t w[] = {-1, 0, 1, 2, 7};
  int32_t weights[4] = {w[u8(in) % 5], w[u8(in) % 5], w[u8(in) % 5], w[u8(in) % 5]};
  int owner = cruster_rendezvous_owner(a, (int32_t)u16(in), runners, u8(in) & 1 ? weights : NULL,
                                       u8(in) % 5);
  if (owner >= 4)
    broken("rendezvous owner out of range", owner);
  int64_t ms;
  int32_t mid, seq;
  cruster_snowflake_parts((int64_t)u64(in), &ms, &mid, &seq);
  int code = (int)(int32_t)(uint32_t)u64(in);
  if (!cruster_status_name(code) || !cruster_status_message(code))
    broken("status text", code);
  free(a);
  free(b);
}

/* ---- the program of one input ----------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input in = {data, size};
  atomic_store(&stopping, 0);
  cruster_config *cfg = stage_config(&in);
  cruster_storage *storage = NULL;
  if (cruster_storage_memory_new(&storage, NULL) != CRUSTER_OK)
    abort();
  cruster_runtime *rt = NULL;
  cruster_error *e = NULL;
  if (cruster_runtime_new(cfg, storage, NULL, &rt, &e) != CRUSTER_OK) {
    if (rt)
      broken("runtime_new failed but set *out", 0);
    cruster_error_free(e);
    /* An invalid config: go on with the defaults (and the quiet logger). */
    cruster_config_free(cfg);
    cfg = cruster_config_new();
    cruster_config_set_logger(cfg, quiet_log, NULL, CRUSTER_LOG_OFF);
    cruster_config_set(cfg, "worker_threads", "2", NULL);
    cruster_config_set(cfg, "entity_termination_timeout", "200ms", NULL);
    cruster_config_set(cfg, "default_call_timeout", "300ms", NULL);
    if (cruster_storage_memory_new(&storage, NULL) != CRUSTER_OK ||
        cruster_runtime_new(cfg, storage, NULL, &rt, NULL) != CRUSTER_OK)
      abort();
  }
  cruster_config_get_int(cfg, "max_payload_size", &max_payload, NULL);
  cruster_config_free(cfg);
  register_fixed(rt);
  int ndefs = u8(&in) % 4;
  for (int i = 0; i < ndefs; i++)
    fuzz_def(&in, rt);
  /* Calls before start are refused (CRUSTER_E_STATE), not lost. */
  if (u8(&in) & 1) {
    int st = cruster_send(rt, "Fz", "x", "echo", NULL, 0, NULL, on_done, NULL, NULL);
    if (st != CRUSTER_E_STATE)
      broken("a call before start was not refused", st);
  }
  if (cruster_runtime_start(rt, NULL) != CRUSTER_OK)
    abort();

  for (int ops = 0; in.n > 0 && ops < 256; ops++) {
    switch (u8(&in) % 12) {
    case 0:
    case 1:
    case 2:
    case 3:
      op_call(&in, rt);
      break;
    case 4:
    case 5:
      op_answer(&in);
      break;
    case 6:
      op_accessors(&in);
      break;
    case 7:
      op_stored(&in, rt);
      break;
    case 8:
      op_metrics(&in, rt);
      break;
    case 9:
      op_ids(&in);
      break;
    case 10:
      fuzz_def(&in, rt);
      break;
    default: { /* a stop in the middle: everything after it is refused */
      if (u8(&in) < 240)
        break;
      atomic_store(&stopping, 1);
      cruster_runtime_stop(rt, NULL);
      int st = cruster_send(rt, "Fz", "x", "echo", NULL, 0, NULL, on_done, NULL, NULL);
      if (st != CRUSTER_E_SHUTTING_DOWN)
        broken("a call after stop was not refused", st);
      break;
    }
    }
  }

  /* Answer what is parked, then free: every handle and call is released
   * (LSan checks). Requests parked after this are freed by the runtime. */
  atomic_store(&stopping, 1);
  for (cruster_request *r; (r = unpark(0));) {
    cruster_request_reply(r, NULL, 0);
    remember_stale(r);
  }
  cruster_runtime_free(rt);
  pthread_mutex_lock(&park_mu);
  nparked = 0; /* freed with the runtime */
  pthread_mutex_unlock(&park_mu);
  return 0;
}
