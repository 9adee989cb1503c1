/* Misuse of the public API (issue 7, "Memory safety and misuse"): hostile
 * sizes, durations, handles and codes get a clear error, never a crash or
 * undefined behaviour. Each test failed (or crashed under ASan/UBSan) before
 * its fix. Memory storage. Cases the fuzz target (fuzz/fuzz_api.c) found go
 * here too. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <uv.h>

#include "test_support.h"

/* ---- helpers ---------------------------------------------------------------- */

/* A one-shot event a thread can wait for. */
typedef struct latch {
  uv_mutex_t mu;
  uv_cond_t cv;
  int set;
} latch;

static void latch_init(latch *l) {
  memset(l, 0, sizeof(*l));
  uv_mutex_init(&l->mu);
  uv_cond_init(&l->cv);
}
static void latch_set(latch *l) {
  uv_mutex_lock(&l->mu);
  l->set = 1;
  uv_cond_broadcast(&l->cv);
  uv_mutex_unlock(&l->mu);
}
static void latch_wait(latch *l) {
  uv_mutex_lock(&l->mu);
  while (!l->set)
    uv_cond_wait(&l->cv, &l->mu);
  uv_mutex_unlock(&l->mu);
}
static void latch_destroy(latch *l) {
  uv_cond_destroy(&l->cv);
  uv_mutex_destroy(&l->mu);
}

static void h_echo(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

/* Never answers on its own: the test answers the parked request. */
static cruster_request *_Atomic parked;
static void h_park(void *user, cruster_request *req) {
  (void)user;
  atomic_store(&parked, req);
}
static cruster_request *wait_parked(void) {
  cruster_request *r;
  while (!(r = atomic_exchange(&parked, NULL)))
    ts_sleep_ms(1);
  return r;
}

static char *err_text(cruster_error *e) {
  char *s = strdup(cruster_error_message(e));
  cruster_error_free(e);
  return s;
}

/* ---- 1. sizes of 2^63 and more are too large, never negative ------------------ */

static void payload_of_size_max_is_too_large(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  static const char buf[16] = "0123456789abcdef";
  const size_t lens[] = {SIZE_MAX,          SIZE_MAX - 1, (size_t)1 << 63, ((size_t)1 << 63) + 7,
                         (size_t)INT64_MAX, 4194305};
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    cruster_error *e = NULL;
    void *out = NULL;
    size_t n = 0;
    assert_int_equal(cruster_send_sync(rt, "Echo", "e", "echo", buf, lens[i], NULL, &out, &n, &e),
                     CRUSTER_E_PAYLOAD_TOO_LARGE);
    assert_null(out);
    char *msg = err_text(e);
    assert_non_null(strstr(msg, "exceeds max_payload_size"));
    free(msg);
    assert_int_equal(cruster_notify_sync(rt, "Echo", "e", "echo", buf, lens[i], NULL, NULL),
                     CRUSTER_E_PAYLOAD_TOO_LARGE);
    reply r;
    reply_init(&r);
    assert_int_equal(cruster_send(rt, "Echo", "e", "echo", buf, lens[i], NULL, on_reply, &r, NULL),
                     CRUSTER_E_PAYLOAD_TOO_LARGE);
    assert_int_equal(cruster_notify(rt, "Echo", "e", "echo", buf, lens[i], NULL, NULL, NULL, NULL),
                     CRUSTER_E_PAYLOAD_TOO_LARGE);
    reply_destroy(&r);
  }
  /* The limit itself still passes. */
  char *big = calloc(1, 4194304);
  assert_non_null(big);
  void *out = NULL;
  size_t n = 0;
  assert_int_equal(cruster_send_sync(rt, "Echo", "e", "echo", big, 4194304, NULL, &out, &n, NULL),
                   CRUSTER_OK);
  assert_int_equal(n, 4194304);
  cruster_free(out);
  free(big);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

static size_t reply_len_to_try;
static atomic_int reply_status_seen;
static void h_reply_huge(void *user, cruster_request *req) {
  (void)user;
  static const char b[8] = "xxxxxxx";
  atomic_store(&reply_status_seen, cruster_request_reply(req, b, reply_len_to_try));
}

static void reply_of_size_max_is_too_large(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Huge");
  add(d, "reply", 0, h_reply_huge, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  const size_t lens[] = {(size_t)1 << 63, SIZE_MAX, ((size_t)1 << 63) + 1, 4194305};
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    reply_len_to_try = lens[i];
    atomic_store(&reply_status_seen, 1);
    char *msg = NULL;
    assert_int_equal(send_str(rt, "Huge", "h", "reply", NULL, NULL, NULL, &msg),
                     CRUSTER_E_PAYLOAD_TOO_LARGE);
    assert_non_null(strstr(msg, "exceeds max_payload_size"));
    free(msg);
    assert_int_equal(atomic_load(&reply_status_seen), CRUSTER_E_PAYLOAD_TOO_LARGE);
  }
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* A count the result (an index, an int) cannot express is refused before the
 * list is read: the list below has one entry. */
static void rendezvous_with_more_runners_than_int_is_refused(void **state) {
  (void)state;
  const char *runners[1] = {"10.0.0.1:9000"};
  assert_int_equal(cruster_rendezvous_owner("default", 3, runners, NULL, 1), 0);
  assert_int_equal(cruster_rendezvous_owner("default", 3, runners, NULL, (size_t)INT_MAX + 1), -1);
  assert_int_equal(cruster_rendezvous_owner("default", 3, runners, NULL, SIZE_MAX), -1);
}

/* ---- 2. durations beyond the cap are refused, not overflowed -------------------- */

static void max_idle_time_beyond_the_cap_is_refused(void **state) {
  (void)state;
  const int64_t cap = INT64_MAX / 1000000;
  cruster_entity_def *d = def_new("Idle");
  add(d, "echo", 0, h_echo, NULL);
  cruster_error *e = NULL;
  assert_int_equal(cruster_entity_def_set_max_idle_time(d, INT64_MAX, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  char *msg = err_text(e);
  assert_non_null(strstr(msg, "9223372036854"));
  free(msg);
  assert_int_equal(cruster_entity_def_set_max_idle_time(d, cap + 1, NULL),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_entity_def_set_max_idle_time(d, 0, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_entity_def_set_max_idle_time(d, INT64_MIN, NULL),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(cruster_entity_def_set_max_idle_time(NULL, 5, NULL), CRUSTER_E_INVALID_ARGUMENT);
  /* The cap itself works: instances idle, the reaper is armed, nothing
   * overflows (UBSan), and the instance is never evicted. */
  assert_int_equal(cruster_entity_def_set_max_idle_time(d, cap, NULL), CRUSTER_OK);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  for (int i = 0; i < 3; i++) {
    char id[16];
    snprintf(id, sizeof(id), "i%d", i);
    assert_int_equal(send_str(rt, "Idle", id, "echo", "x", NULL, NULL, NULL), CRUSTER_OK);
  }
  assert_true(ts_metric(rt, "cluster_entities", "entity_type=\"Idle\"") == 3);
  assert_true(ts_metric(rt, "cluster_entity_evictions_total", "entity_type=\"Idle\"") == 0);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

static void deliver_at_beyond_year_9999_is_refused(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Later");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.deliver_at_ms = INT64_MAX;
  cruster_error *e = NULL;
  assert_int_equal(cruster_notify_sync(rt, "Later", "l", "echo", "x", 1, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  char *msg = err_text(e);
  assert_non_null(strstr(msg, "deliver_at_ms"));
  free(msg);
  o.deliver_at_ms = INT64_C(253402300800000);
  assert_int_equal(cruster_notify_sync(rt, "Later", "l", "echo", "x", 1, &o, NULL),
                   CRUSTER_E_INVALID_ARGUMENT);
  /* The last accepted instant is stored and waits; nothing overflows. */
  o.deliver_at_ms = INT64_C(253402300799999);
  assert_int_equal(cruster_notify_sync(rt, "Later", "l", "echo", "x", 1, &o, NULL), CRUSTER_OK);
  assert_int_equal(send_str(rt, "Later", "m", "echo", "now", NULL, NULL, NULL), CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* ---- 3. a second answer is refused, not a use after free ------------------------- */

typedef struct twice {
  latch caller_done;  /* the caller has its answer: the loop processed it */
  latch handler_done; /* the handler finished its checks */
  int second, third, fourth;
  char id_after[32];
  int from_fail; /* the first answer is a failure */
} twice;

static void h_answer_twice(void *user, cruster_request *req) {
  twice *t = user;
  if (t->from_fail)
    cruster_request_fail(req, -1001, "first");
  else
    cruster_request_reply(req, "first", 5);
  latch_wait(&t->caller_done);
  t->second = cruster_request_reply(req, "second", 6);
  t->third = cruster_request_fail(req, CRUSTER_E_NOT_FOUND, "third");
  t->fourth = cruster_request_reply(req, NULL, 3); /* misuse on misuse */
  snprintf(t->id_after, sizeof(t->id_after), "%s", cruster_request_entity_id(req));
  latch_set(&t->handler_done);
}

static void answering_twice_in_the_handler_is_refused(void **state) {
  (void)state;
  for (int from_fail = 0; from_fail < 2; from_fail++) {
    twice t;
    memset(&t, 0, sizeof(t));
    latch_init(&t.caller_done);
    latch_init(&t.handler_done);
    t.from_fail = from_fail;
    cruster_entity_def *d = def_new("Twice");
    add(d, "go", 0, h_answer_twice, &t);
    cruster_runtime *rt = ts_runtime(NULL, &d, 1);
    char *out = NULL, *msg = NULL;
    int st = send_str(rt, "Twice", "t-1", "go", NULL, NULL, &out, &msg);
    if (from_fail) {
      assert_int_equal(st, -1001);
      assert_string_equal(msg, "first");
    } else {
      assert_int_equal(st, CRUSTER_OK);
      assert_string_equal(out, "first");
    }
    cruster_free(out);
    free(msg);
    /* The loop has processed the first answer; the handler still runs. */
    latch_set(&t.caller_done);
    latch_wait(&t.handler_done);
    assert_int_equal(t.second, CRUSTER_E_STATE);
    assert_int_equal(t.third, CRUSTER_E_STATE);
    assert_int_equal(t.fourth, CRUSTER_E_STATE);
    assert_string_equal(t.id_after, "t-1"); /* accessors work to the handler's end */
    /* Nothing else reached anyone: the next call is answered normally. */
    cruster_runtime_free(rt);
    cruster_entity_def_free(d);
    latch_destroy(&t.caller_done);
    latch_destroy(&t.handler_done);
  }
}

static atomic_int second_now;
static void h_answer_twice_at_once(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, "a", 1);
  atomic_store(&second_now, cruster_request_reply(req, "b", 1));
}

static void answering_twice_at_once_is_refused(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Twice");
  add(d, "go", 0, h_answer_twice_at_once, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  for (int i = 0; i < 50; i++) {
    atomic_store(&second_now, 1);
    char *out = NULL;
    assert_int_equal(send_str(rt, "Twice", "t", "go", NULL, NULL, &out, NULL), CRUSTER_OK);
    assert_string_equal(out, "a");
    cruster_free(out);
    /* The handler may still be running: wait for its second answer. */
    while (atomic_load(&second_now) == 1)
      ts_sleep_ms(1);
    assert_int_equal(atomic_load(&second_now), CRUSTER_E_STATE);
  }
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* A handler that returns without answering: the handle lives until its
 * answer, which any thread may give (once). */
static void deferred_answer_is_delivered_and_freed(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Later");
  add(d, "park", 0, h_park, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  for (int i = 0; i < 20; i++) {
    reply r;
    reply_init(&r);
    assert_int_equal(cruster_send(rt, "Later", "p", "park", NULL, 0, NULL, on_reply, &r, NULL),
                     CRUSTER_OK);
    cruster_request *req = wait_parked();
    assert_string_equal(cruster_request_entity_id(req), "p");
    if (i % 2)
      assert_int_equal(cruster_request_reply(req, "late", 4), CRUSTER_OK);
    else
      assert_int_equal(cruster_request_fail(req, -1005, "late failure"), CRUSTER_OK);
    reply_wait(&r);
    assert_int_equal(r.status, i % 2 ? CRUSTER_OK : -1005);
    reply_destroy(&r);
  }
  cruster_runtime_free(rt); /* LSan: every handle was freed */
  cruster_entity_def_free(d);
}

/* ---- 4. opts.caller must be a request this runtime is handling --------------------- */

static void h_secret(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, cruster_request_from_entity(req) ? "internal" : "public",
                        cruster_request_from_entity(req) ? 8 : 6);
}

static void fake_caller_is_forbidden(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Vault");
  add(d, "secret", CRUSTER_RPC_PROTECTED, h_secret, NULL);
  add(d, "open", 0, h_secret, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  static char not_a_request[256];
  const void *fakes[] = {
      (const void *)(uintptr_t)0xdeadbeef, (const void *)(uintptr_t)1, not_a_request, rt, d,
      (const void *)(uintptr_t)UINTPTR_MAX};
  for (size_t i = 0; i < sizeof(fakes) / sizeof(fakes[0]); i++) {
    cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
    o.caller = (const cruster_request *)fakes[i];
    char *msg = NULL;
    assert_int_equal(send_str(rt, "Vault", "v", "secret", NULL, &o, NULL, &msg),
                     CRUSTER_E_FORBIDDEN);
    assert_non_null(strstr(msg, "opts.caller"));
    free(msg);
    /* Also for a public method: a bad caller is a bug, not a public call. */
    assert_int_equal(send_str(rt, "Vault", "v", "open", NULL, &o, NULL, NULL), CRUSTER_E_FORBIDDEN);
    reply r;
    reply_init(&r);
    assert_int_equal(cruster_notify(rt, "Vault", "v", "secret", NULL, 0, &o, on_reply, &r, NULL),
                     CRUSTER_OK);
    reply_wait(&r);
    assert_int_equal(r.status, CRUSTER_E_FORBIDDEN);
    reply_destroy(&r);
    /* persisted: refused before it is stored */
    o.flags = CRUSTER_CALL_PERSISTED;
    assert_int_equal(send_str(rt, "Vault", "v", "secret", NULL, &o, NULL, NULL),
                     CRUSTER_E_FORBIDDEN);
  }
  assert_int_equal(send_str(rt, "Vault", "v", "secret", NULL, NULL, NULL, NULL),
                   CRUSTER_E_FORBIDDEN);
  char *out = NULL;
  assert_int_equal(send_str(rt, "Vault", "v", "open", NULL, NULL, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "public");
  cruster_free(out);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* A handler calls on behalf of its request: before its answer (allowed),
 * after it (the request is no longer being handled), and on another runtime
 * (not one of that runtime's requests). */
typedef struct relay {
  cruster_runtime *other;
  int before, after, foreign;
  char before_text[16];
  latch done;
} relay;

static void h_relay(void *user, cruster_request *req) {
  relay *x = user;
  cruster_runtime *rt = cruster_request_runtime(req);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.caller = req;
  char *out = NULL;
  x->before = send_str(rt, "Vault", "v", "secret", NULL, &o, &out, NULL);
  if (out)
    snprintf(x->before_text, sizeof(x->before_text), "%s", out);
  cruster_free(out);
  x->foreign = send_str(x->other, "Vault", "v", "secret", NULL, &o, NULL, NULL);
  cruster_request_reply(req, "ok", 2);
  /* Routed after the answer (same thread, FIFO): never accepted. */
  x->after = send_str(rt, "Vault", "v", "secret", NULL, &o, NULL, NULL);
  latch_set(&x->done);
}

static void caller_counts_only_while_handled_on_its_runtime(void **state) {
  (void)state;
  relay x;
  memset(&x, 0, sizeof(x));
  latch_init(&x.done);
  cruster_entity_def *defs[2] = {def_new("Vault"), def_new("Relay")};
  add(defs[0], "secret", CRUSTER_RPC_PROTECTED, h_secret, NULL);
  add(defs[1], "go", 0, h_relay, &x);
  cruster_runtime *other = ts_runtime(NULL, defs, 1);
  x.other = other;
  cruster_runtime *rt = ts_runtime(NULL, defs, 2);
  assert_int_equal(send_str(rt, "Relay", "r", "go", NULL, NULL, NULL, NULL), CRUSTER_OK);
  latch_wait(&x.done);
  assert_int_equal(x.before, CRUSTER_OK);
  assert_string_equal(x.before_text, "internal");
  assert_int_equal(x.foreign, CRUSTER_E_FORBIDDEN);
  assert_int_equal(x.after, CRUSTER_E_FORBIDDEN);
  cruster_runtime_free(rt);
  cruster_runtime_free(other);
  cruster_entity_def_free(defs[0]);
  cruster_entity_def_free(defs[1]);
  latch_destroy(&x.done);
}

/* A request parked (handler returned, not answered) is still being handled:
 * calls on its behalf, from any thread, are internal until it is answered. */
static void parked_request_is_a_caller_until_answered(void **state) {
  (void)state;
  cruster_entity_def *defs[2] = {def_new("Vault"), def_new("Later")};
  add(defs[0], "secret", CRUSTER_RPC_PROTECTED, h_secret, NULL);
  add(defs[1], "park", 0, h_park, NULL);
  cruster_runtime *rt = ts_runtime(NULL, defs, 2);
  reply r;
  reply_init(&r);
  assert_int_equal(cruster_send(rt, "Later", "p", "park", NULL, 0, NULL, on_reply, &r, NULL), CRUSTER_OK);
  cruster_request *req = wait_parked();
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.caller = req;
  char *out = NULL;
  assert_int_equal(send_str(rt, "Vault", "v", "secret", NULL, &o, &out, NULL), CRUSTER_OK);
  assert_string_equal(out, "internal");
  cruster_free(out);
  assert_int_equal(cruster_request_reply(req, "done", 4), CRUSTER_OK);
  reply_wait(&r);
  assert_int_equal(r.status, CRUSTER_OK);
  /* Answered and freed: the stale pointer is only compared, never read. */
  assert_int_equal(send_str(rt, "Vault", "v", "secret", NULL, &o, NULL, NULL), CRUSTER_E_FORBIDDEN);
  reply_destroy(&r);
  cruster_runtime_free(rt);
  cruster_entity_def_free(defs[0]);
  cruster_entity_def_free(defs[1]);
}

/* ---- 5. failure codes that are neither cruster's nor the application's -------------- */

static int fail_code;
static const char *fail_text;
static atomic_int fail_returned;
static void h_fail_code(void *user, cruster_request *req) {
  (void)user;
  atomic_store(&fail_returned, cruster_request_fail(req, fail_code, fail_text));
}

static void unknown_failure_codes_become_handler_errors(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Fail");
  add(d, "fail", 0, h_fail_code, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  static const struct {
    int code;
    const char *text;
    int want_status;
    int want_return;
    const char *want_msg; /* substring */
  } cases[] = {
      {-500, NULL, CRUSTER_E_HANDLER, CRUSTER_E_INVALID_ARGUMENT, "status -500"},
      {-500, "disk on fire", CRUSTER_E_HANDLER, CRUSTER_E_INVALID_ARGUMENT, "disk on fire"},
      {-29, "x", CRUSTER_E_HANDLER, CRUSTER_E_INVALID_ARGUMENT, "status -29"},
      {CRUSTER_E_CONFLICT, "c", CRUSTER_E_CONFLICT, CRUSTER_OK, "c"},
      {-999, "x", CRUSTER_E_HANDLER, CRUSTER_E_INVALID_ARGUMENT, "status -999"},
      {7, "positive", CRUSTER_E_HANDLER, CRUSTER_E_INVALID_ARGUMENT, "positive"},
      {-1000, "app", -1000, CRUSTER_OK, "app"},
      {INT_MIN, "app min", INT_MIN, CRUSTER_OK, "app min"},
      {CRUSTER_E_NOT_FOUND, "no such", CRUSTER_E_NOT_FOUND, CRUSTER_OK, "no such"},
      {CRUSTER_E_INTERNAL, NULL, CRUSTER_E_INTERNAL, CRUSTER_OK, "internal error"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    fail_code = cases[i].code;
    fail_text = cases[i].text;
    atomic_store(&fail_returned, 1);
    char *msg = NULL;
    assert_int_equal(send_str(rt, "Fail", "f", "fail", NULL, NULL, NULL, &msg),
                     cases[i].want_status);
    if (!strstr(msg, cases[i].want_msg))
      fail_msg("case %zu: message \"%s\"", i, msg);
    free(msg);
    while (atomic_load(&fail_returned) == 1)
      ts_sleep_ms(1);
    assert_int_equal(atomic_load(&fail_returned), cases[i].want_return);
  }
  assert_string_equal(cruster_status_name(CRUSTER_E_HANDLER), "CRUSTER_E_HANDLER");
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* ---- 6. messages keep their details ------------------------------------------------- */

static void timed_out_delayed_call_names_its_target(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Later");
  add(d, "echo", 0, h_echo, NULL);
  add(d, "park", 0, h_park, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.deliver_at_ms = INT64_C(253402300799999); /* never due in this test */
  o.timeout_ms = 20;
  char *msg = NULL;
  assert_int_equal(send_str(rt, "Later", "acct-7", "echo", "x", &o, NULL, &msg), CRUSTER_E_TIMEOUT);
  assert_string_equal(msg,
                      "no answer from Later/acct-7 (method 'echo') before the call's deadline");
  free(msg);
  /* A persisted call whose handler never answers. */
  cruster_call_opts p = CRUSTER_CALL_OPTS_INIT;
  p.flags = CRUSTER_CALL_PERSISTED;
  p.idempotency_key = "k1";
  p.idempotency_key_len = 2;
  p.timeout_ms = 20;
  assert_int_equal(send_str(rt, "Later", "acct-8", "park", NULL, &p, NULL, &msg),
                   CRUSTER_E_TIMEOUT);
  assert_string_equal(msg,
                      "no answer from Later/acct-8 (method 'park') before the call's deadline");
  free(msg);
  /* Joining it times out the same way. */
  reply r;
  reply_init(&r);
  assert_int_equal(cruster_join_reply(rt, "Later", "acct-8", "park", "k1", 2, &p, on_reply, &r, NULL),
                   CRUSTER_OK);
  reply_wait(&r);
  assert_int_equal(r.status, CRUSTER_E_TIMEOUT);
  assert_string_equal(r.msg,
                      "no answer from Later/acct-8 (method 'park') before the call's deadline");
  reply_destroy(&r);
  cruster_request *req = wait_parked();
  cruster_request_reply(req, NULL, 0);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

static void unknown_flags_are_reported_as_passed(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = 0x80;
  char *msg = NULL;
  assert_int_equal(send_str(rt, "Echo", "e", "echo", "x", &o, NULL, &msg),
                   CRUSTER_E_INVALID_ARGUMENT);
  assert_string_equal(msg, "unknown call flags 0x80 in opts.flags 0x80");
  free(msg);
  o.flags = 0x81;
  cruster_error *e = NULL;
  assert_int_equal(cruster_notify_sync(rt, "Echo", "e", "echo", "x", 1, &o, &e),
                   CRUSTER_E_INVALID_ARGUMENT);
  msg = err_text(e);
  assert_string_equal(msg, "unknown call flags 0x80 in opts.flags 0x81");
  free(msg);
  /* The inline flag the blocking forms add is not the caller's. */
  o.flags = CRUSTER_CALL_INLINE_CALLBACK | CRUSTER_CALL_PERSISTED;
  assert_int_equal(send_str(rt, "Echo", "e", "echo", "x", &o, NULL, NULL), CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* ---- 7. the handler duration is the handler's, not the loop's backlog --------------- */

typedef struct hold {
  latch loop_held; /* the loop thread is blocked in an inline callback */
  latch release;   /* lets the loop go */
  latch answered;  /* the measured handler answered */
  double span_s;   /* the handler's own measurement, start to answer */
} hold;

static double mono_s(void) { return (double)uv_hrtime() / 1e9; }

static void h_measured(void *user, cruster_request *req) {
  hold *h = user;
  double t0 = mono_s();
  latch_wait(&h->loop_held);
  cruster_request_reply(req, "ok", 2);
  h->span_s = mono_s() - t0;
  latch_set(&h->answered);
}

/* Inline: runs on the loop thread and keeps it busy until released. */
static void cb_hold_loop(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)status;
  (void)data;
  (void)len;
  (void)msg;
  hold *h = user;
  latch_set(&h->loop_held);
  latch_wait(&h->release);
}

static void handler_duration_excludes_the_loops_backlog(void **state) {
  (void)state;
  hold h;
  memset(&h, 0, sizeof(h));
  latch_init(&h.loop_held);
  latch_init(&h.release);
  latch_init(&h.answered);
  cruster_entity_def *defs[2] = {def_new("Measured"), def_new("Echo")};
  add(defs[0], "m", 0, h_measured, &h);
  add(defs[1], "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, defs, 2);
  reply r;
  reply_init(&r);
  assert_int_equal(cruster_send(rt, "Measured", "m", "m", NULL, 0, NULL, on_reply, &r, NULL), CRUSTER_OK);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_INLINE_CALLBACK;
  assert_int_equal(cruster_send(rt, "Echo", "e", "echo", NULL, 0, &o, cb_hold_loop, &h, NULL),
                   CRUSTER_OK);
  /* The handler answers while the loop is held; the loop then stays held
   * for a second more. That second is the loop's backlog, not the
   * handler's time, and must not be in the handler's duration. Measured
   * when the loop gets to the answer, the duration is at least the
   * handler's own span + 1 s; measured at the answer, it is that span plus
   * the instant between the handler's start and its first line. */
  latch_wait(&h.answered);
  ts_sleep_ms(1000);
  latch_set(&h.release);
  reply_wait(&r);
  assert_int_equal(r.status, CRUSTER_OK);
  double sum = ts_metric(rt, "cluster_handler_duration_seconds_sum", "entity_type=\"Measured\"");
  double count =
      ts_metric(rt, "cluster_handler_duration_seconds_count", "entity_type=\"Measured\"");
  assert_true(count == 1);
  if (!(sum >= 0 && sum < h.span_s + 0.9))
    fail_msg("handler duration %.3f s; the handler itself took %.3f s", sum, h.span_s);
  reply_destroy(&r);
  cruster_runtime_free(rt);
  cruster_entity_def_free(defs[0]);
  cruster_entity_def_free(defs[1]);
  latch_destroy(&h.loop_held);
  latch_destroy(&h.release);
  latch_destroy(&h.answered);
}

/* ---- 8. entity ids refuse control characters, as names do ------------------------- */

static void entity_id_with_control_characters_is_refused(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  static const struct {
    const char *id;
    const char *msg;
  } bad[] = {
      {"a\nb", "entity id must not contain control characters (byte 0x0A at offset 1)"},
      {"\x01", "entity id must not contain control characters (byte 0x01 at offset 0)"},
      {"tab\there", "entity id must not contain control characters (byte 0x09 at offset 3)"},
      {"del\x7f", "entity id must not contain control characters (byte 0x7F at offset 3)"},
      {"\xc3\xa9\x1b[0m", "entity id must not contain control characters (byte 0x1B at offset 2)"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char *msg = NULL;
    assert_int_equal(send_str(rt, "Echo", bad[i].id, "echo", "x", NULL, NULL, &msg),
                     CRUSTER_E_INVALID_ARGUMENT);
    assert_string_equal(msg, bad[i].msg);
    free(msg);
    assert_int_equal(cruster_notify(rt, "Echo", bad[i].id, "echo", "x", 1, NULL, NULL, NULL, NULL),
                     CRUSTER_E_INVALID_ARGUMENT);
    assert_int_equal(
        cruster_poll_reply(rt, "Echo", bad[i].id, "echo", "k", 1, NULL, NULL, NULL, NULL),
        CRUSTER_E_INVALID_ARGUMENT);
  }
  /* Spaces, non-ASCII text and C1 controls are ids like any other. */
  const char *good[] = {"a b", "caf\xc3\xa9", "\xc2\x85", "~!@#$%^&*()"};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    assert_int_equal(send_str(rt, "Echo", good[i], "echo", "x", NULL, NULL, NULL), CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* argv[1], if given, selects tests by name (a cmocka filter, * allowed). */
int main(int argc, char **argv) {
  (void)ts_eventually;
  if (argc > 1)
    cmocka_set_test_filter(argv[1]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(payload_of_size_max_is_too_large),
      cmocka_unit_test(reply_of_size_max_is_too_large),
      cmocka_unit_test(rendezvous_with_more_runners_than_int_is_refused),
      cmocka_unit_test(max_idle_time_beyond_the_cap_is_refused),
      cmocka_unit_test(deliver_at_beyond_year_9999_is_refused),
      cmocka_unit_test(answering_twice_in_the_handler_is_refused),
      cmocka_unit_test(answering_twice_at_once_is_refused),
      cmocka_unit_test(deferred_answer_is_delivered_and_freed),
      cmocka_unit_test(fake_caller_is_forbidden),
      cmocka_unit_test(caller_counts_only_while_handled_on_its_runtime),
      cmocka_unit_test(parked_request_is_a_caller_until_answered),
      cmocka_unit_test(unknown_failure_codes_become_handler_errors),
      cmocka_unit_test(timed_out_delayed_call_names_its_target),
      cmocka_unit_test(unknown_flags_are_reported_as_passed),
      cmocka_unit_test(handler_duration_excludes_the_loops_backlog),
      cmocka_unit_test(entity_id_with_control_characters_is_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
