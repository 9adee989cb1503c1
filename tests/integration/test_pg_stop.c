/* Stopping a runtime whose handler is blocked on message storage that does
 * not answer (here: a table lock held by the test) must not hang: the stop
 * waits entity_termination_timeout for handlers and for storage writes, then
 * fails what storage still owes, so the handler returns and the workers are
 * joined. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <uv.h>

#include "pg_support.h"

static atomic_int entered, returned;
static atomic_int poll_status;

static void h_peek(void *user, cruster_request *req) {
  (void)user;
  atomic_store(&entered, 1);
  int ready = 0;
  cruster_error *err = NULL;
  /* Blocks: the storage cannot read the locked table. */
  int st = cruster_poll_reply(cruster_request_runtime(req), "Stuck", "x", "peek", "k", 1, &ready,
                              NULL, NULL, &err);
  atomic_store(&poll_status, st);
  cruster_error_free(err);
  atomic_store(&returned, 1);
  cruster_request_reply(req, NULL, 0);
}

typedef struct stopper {
  cruster_runtime *rt;
  atomic_int done;
} stopper;

static void stop_thread(void *arg) {
  stopper *s = arg;
  cruster_runtime_stop(s->rt, NULL);
  atomic_store(&s->done, 1);
}

static void stop_does_not_hang_on_a_handler_blocked_on_storage(void **state) {
  (void)state;
  pgt_schema s;
  pgt_schema_create(&s);
  pgt_migrate(&s);
  cruster_entity_def *d = def_new("Stuck");
  add(d, "peek", 0, h_peek, NULL);
  cruster_runtime *rt = pgt_runtime(&s, "entity_termination_timeout=300ms", &d, 1);
  /* Hold an exclusive lock: every statement on the table waits. */
  pgt_exec(s.admin, "BEGIN");
  pgt_exec(s.admin, "LOCK TABLE cruster_messages IN ACCESS EXCLUSIVE MODE");
  assert_int_equal(cruster_notify(rt, "Stuck", "x", "peek", NULL, 0, NULL, NULL, NULL, NULL), CRUSTER_OK);
  int64_t end = pgt_mono_ms() + PGT_DEADLINE_MS;
  while (!atomic_load(&entered) && pgt_mono_ms() < end) ts_sleep_ms(5);
  assert_true(atomic_load(&entered));
  ts_sleep_ms(100); /* it is waiting inside cruster_poll_reply now */
  assert_false(atomic_load(&returned));

  stopper sp = {rt, 0};
  uv_thread_t th;
  uv_thread_create(&th, stop_thread, &sp);
  end = pgt_mono_ms() + PGT_DEADLINE_MS; /* generous: the stop needs about 2 x 300 ms */
  while (!atomic_load(&sp.done) && pgt_mono_ms() < end) ts_sleep_ms(10);
  int stopped = atomic_load(&sp.done);
  /* Release the lock either way, so a hanging stop can still finish. */
  pgt_exec(s.admin, "ROLLBACK");
  uv_thread_join(&th);
  assert_true(stopped);
  assert_true(atomic_load(&returned));
  assert_int_equal(atomic_load(&poll_status), CRUSTER_E_SHUTTING_DOWN);
  cruster_runtime_free(rt);
  cruster_entity_def_free(d);
  pgt_schema_drop(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(stop_does_not_hang_on_a_handler_blocked_on_storage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
