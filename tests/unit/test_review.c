/* Regression tests for defects found in review: each test failed before its
 * fix. Memory storage unless said otherwise. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "test_support.h"

#include "storage/storage_internal.h"

static void h_echo(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

/* Never answers on its own: the test answers the parked requests. */
static cruster_request *parked[16];
static atomic_int nslots, nparked; /* slots taken; requests stored (readable) */
static void h_park(void *user, cruster_request *req) {
  (void)user;
  parked[atomic_fetch_add(&nslots, 1)] = req;
  atomic_fetch_add(&nparked, 1);
}


/* ---- deadlines: a huge timeout_ms means "wait long", not "time out now" ---- */

static void huge_timeout_does_not_time_out_at_once(void **state) {
  (void)state;
  cruster_entity_def *d = def_new("Echo");
  add(d, "echo", 0, h_echo, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = INT64_MAX;
  char *out = NULL, *msg = NULL;
  int st = send_str(rt, "Echo", "e", "echo", "hi", &o, &out, &msg);
  assert_int_equal(st, CRUSTER_OK);
  assert_string_equal(out, "hi");
  cruster_free(out);
  free(msg);
  /* A persisted call with a huge deadline as well. */
  o.flags = CRUSTER_CALL_PERSISTED;
  o.timeout_ms = INT64_MAX - 1;
  st = send_str(rt, "Echo", "e", "echo", "x", &o, &out, &msg);
  assert_int_equal(st, CRUSTER_OK);
  assert_string_equal(out, "x");
  cruster_free(out);
  free(msg);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
}

/* A call with a huge timeout must not hold up the deadlines of the others. */
static void huge_timeout_does_not_block_other_deadlines(void **state) {
  (void)state;
  atomic_store(&nslots, 0);
  atomic_store(&nparked, 0);
  cruster_entity_def *d = def_new("Park");
  add(d, "park", 0, h_park, NULL);
  cruster_entity_def_set_concurrency(d, 0, NULL);
  cruster_runtime *rt = ts_runtime(NULL, &d, 1);
  reply a, b;
  reply_init(&a);
  reply_init(&b);
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = INT64_MAX;
  assert_int_equal(cruster_send(rt, "Park", "p", "park", NULL, 0, &o, on_reply, &a, NULL), CRUSTER_OK);
  o.timeout_ms = 100;
  assert_int_equal(cruster_send(rt, "Park", "p", "park", NULL, 0, &o, on_reply, &b, NULL), CRUSTER_OK);
  /* b's deadline (100 ms) passes while a's (forever) is first in line;
   * a generous wait: only a deadline that never fires fails it. */
  assert_true(reply_wait_ms(&b, TS_DEADLINE_MS));
  assert_int_equal(b.status, CRUSTER_E_TIMEOUT);
  assert_false(reply_wait_ms(&a, 50)); /* still waiting */
  assert_true(ts_wait_ge(&nparked, 2));
  cruster_request_reply(parked[0], "ok", 2);
  cruster_request_reply(parked[1], "ok", 2);
  assert_true(reply_wait_ms(&a, TS_DEADLINE_MS));
  assert_int_equal(a.status, CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  reply_destroy(&a);
  reply_destroy(&b);
}

/* ---- the poll loop: a wake-up asked for while a poll runs is not lost ---- */

/* Memory storage whose poll answers 400 ms late with what was claimable when
 * it was asked (like a database round trip). */
typedef struct slow_poll {
  cruster_storage *inner;
  st_ops ops;
  cruster_runtime *rt;
  uv_timer_t timer;
  int pending;
  core_env **msgs;
  size_t n;
  int64_t *dead;
  size_t nd;
  st_poll_cb cb;
  void *ud;
} slow_poll;
static slow_poll sp;

static void sp_capture(void *ud, int status, const char *errmsg, core_env **msgs, size_t n,
                       const int64_t *dead, size_t nd) {
  (void)ud; (void)status; (void)errmsg;
  sp.msgs = calloc(n + 1, sizeof(*msgs));
  memcpy(sp.msgs, msgs, n * sizeof(*msgs));
  sp.n = n;
  sp.dead = calloc(nd + 1, sizeof(*dead));
  memcpy(sp.dead, dead, nd * sizeof(*dead));
  sp.nd = nd;
}
static void sp_fire(uv_timer_t *t) {
  (void)t;
  sp.pending = 0;
  sp.cb(sp.ud, CRUSTER_OK, NULL, sp.msgs, sp.n, sp.dead, sp.nd);
  free(sp.msgs);
  free(sp.dead);
}
static void sp_poll(cruster_storage *s, int64_t now_ms, size_t limit, int64_t max_retries,
                    st_owned_fn owned, void *owned_ud, st_poll_cb cb, void *ud) {
  (void)s;
  sp.inner->ops->poll(sp.inner, now_ms, limit, max_retries, owned, owned_ud, sp_capture, NULL);
  sp.cb = cb;
  sp.ud = ud;
  sp.pending = 1;
  uv_timer_start(&sp.timer, sp_fire, 400, 0);
}
static cruster_status sp_attach(cruster_storage *s, const st_host *host, cruster_error **err) {
  (void)s;
  uv_timer_init(host->loop, &sp.timer);
  return sp.inner->ops->attach(sp.inner, host, err);
}
static void sp_detach(cruster_storage *s) {
  (void)s;
  uv_timer_stop(&sp.timer);
  uv_close((uv_handle_t *)&sp.timer, NULL);
  if (sp.pending) {
    for (size_t i = 0; i < sp.n; i++) free(sp.msgs[i]);
    free(sp.msgs);
    free(sp.dead);
    sp.pending = 0;
  }
  sp.inner->ops->detach(sp.inner);
}
static void sp_destroy(cruster_storage *s) {
  cruster_storage_free(sp.inner);
  free(s);
}

static void h_slow(void *user, cruster_request *req) {
  (void)user;
  ts_sleep_ms(50);
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_request_reply(req, p, len);
}

static void backlog_wakeup_during_a_poll_is_kept(void **state) {
  (void)state;
  memset(&sp, 0, sizeof(sp));
  assert_int_equal(cruster_storage_memory_new(&sp.inner, NULL), CRUSTER_OK);
  sp.ops = *sp.inner->ops;
  sp.ops.poll = sp_poll;
  sp.ops.attach = sp_attach;
  sp.ops.detach = sp_detach;
  sp.ops.destroy = sp_destroy;
  cruster_storage *st = calloc(1, sizeof(*st));
  st->ops = &sp.ops;
  st->impl = sp.inner->impl;

  cruster_entity_def *d = def_new("Busy");
  add(d, "work", CRUSTER_RPC_PERSISTED, h_slow, NULL);
  cruster_entity_def_set_mailbox_capacity(d, 1, NULL);
  /* Only wake-ups bring B at all: the periodic poll is an hour away, far
   * beyond the generous wait below (which must not decide on timing). */
  cruster_config *cfg = ts_config("storage_poll_interval=1h");
  cruster_runtime *rt = NULL;
  assert_int_equal(cruster_runtime_new(cfg, st, NULL, &rt, NULL), CRUSTER_OK);
  cruster_config_free(cfg);
  assert_int_equal(cruster_runtime_register_entity(rt, d, NULL), CRUSTER_OK);
  /* start polls at once: that poll is in flight for 400 ms */
  assert_int_equal(cruster_runtime_start(rt, NULL), CRUSTER_OK);
  reply a, b;
  reply_init(&a);
  reply_init(&b);
  /* A runs (50 ms); B finds the mailbox full and waits in storage. A's end
   * asks for a poll while the first one is still in flight. */
  assert_int_equal(cruster_send(rt, "Busy", "x", "work", "A", 1, NULL, on_reply, &a, NULL), CRUSTER_OK);
  assert_int_equal(cruster_send(rt, "Busy", "x", "work", "B", 1, NULL, on_reply, &b, NULL), CRUSTER_OK);
  assert_true(reply_wait_ms(&a, TS_DEADLINE_MS));
  assert_int_equal(a.status, CRUSTER_OK);
  assert_true(reply_wait_ms(&b, TS_DEADLINE_MS));
  assert_int_equal(b.status, CRUSTER_OK);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  reply_destroy(&a);
  reply_destroy(&b);
}

int main(void) {
  (void)ts_metric;
  (void)ts_eventually;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(huge_timeout_does_not_time_out_at_once),
      cmocka_unit_test(huge_timeout_does_not_block_other_deadlines),
      cmocka_unit_test(backlog_wakeup_during_a_poll_is_kept),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
