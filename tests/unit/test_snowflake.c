/* Snowflake generator: layout, uniqueness, sequence overflow and clock drift
 * (behaviour.md 1.4). The clock is injected so no test depends on timing. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/ids.h>
#include <pthread.h>
#include <stdlib.h>

#include "core/snowflake.h"

#define T0 (CRUSTER_SNOWFLAKE_EPOCH_MS + INT64_C(86400000)) /* 2025-01-02 */

/* A scripted clock: returns `now` for `hold` more reads, then `later`
 * (hold < 0: always `now`). Counts its reads. */
typedef struct fake_clock {
  int64_t now, later;
  int hold;
  int reads;
} fake_clock;

static int64_t fake_read(void *user) {
  fake_clock *c = user;
  c->reads++;
  if (c->hold < 0) return c->now;
  if (c->hold > 0) {
    c->hold--;
    return c->now;
  }
  return c->later;
}

static void parts(int64_t id, int64_t *ms, int32_t *machine, int32_t *seq) {
  cruster_snowflake_parts(id, ms, machine, seq);
}

static void id_layout_is_time_machine_sequence(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 5);
  fake_clock c = {T0, T0, -1, 0};
  core_snowflake_set_clock(&sf, fake_read, &c);
  int64_t id;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  assert_true(id == (((T0 - CRUSTER_SNOWFLAKE_EPOCH_MS) << 22) | (INT64_C(5) << 12) | 0));
  int64_t ms;
  int32_t machine, seq;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  parts(id, &ms, &machine, &seq);
  assert_true(ms == T0);
  assert_int_equal(machine, 5);
  assert_int_equal(seq, 1);
}

static void machine_id_is_taken_modulo_1024(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 0);
  fake_clock c = {T0, T0, -1, 0};
  core_snowflake_set_clock(&sf, fake_read, &c);
  core_snowflake_set_machine_id(&sf, 1024 + 17);
  int64_t id;
  int32_t machine;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  parts(id, NULL, &machine, NULL);
  assert_int_equal(machine, 17);
  assert_true(id >= 0);
}

static void new_millisecond_restarts_sequence(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 1);
  fake_clock c = {T0, T0, -1, 0};
  core_snowflake_set_clock(&sf, fake_read, &c);
  int64_t id;
  int32_t seq;
  for (int i = 0; i < 10; i++) assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  parts(id, NULL, NULL, &seq);
  assert_int_equal(seq, 9);
  c.now = T0 + 1;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  int64_t ms;
  parts(id, &ms, NULL, &seq);
  assert_true(ms == T0 + 1);
  assert_int_equal(seq, 0);
}

static void sequence_overflow_waits_for_next_millisecond(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 3);
  fake_clock c = {T0, T0 + 1, -1, 0};
  core_snowflake_set_clock(&sf, fake_read, &c);
  int64_t id, prev = -1;
  for (int i = 0; i < 4096; i++) {
    assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
    assert_true(id > prev);
    prev = id;
  }
  int32_t seq;
  parts(id, NULL, NULL, &seq);
  assert_int_equal(seq, 4095);
  /* The ms is used up: the generator must keep reading the clock (3 more
   * reads still say T0) until it moves on. */
  c.hold = 3;
  c.reads = 0;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  int64_t ms;
  parts(id, &ms, NULL, &seq);
  assert_true(ms == T0 + 1);
  assert_int_equal(seq, 0);
  assert_int_equal(c.reads, 4);
  assert_true(id > prev);
}

static void clock_backwards_within_5s_waits(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 0);
  fake_clock c = {T0, T0, -1, 0};
  core_snowflake_set_clock(&sf, fake_read, &c);
  int64_t first, id;
  assert_int_equal(core_snowflake_next(&sf, &first), CRUSTER_OK);
  /* Clock jumps back exactly 5000 ms (still allowed) for 3 reads, then
   * catches up past the last timestamp. */
  c.now = T0 - 5000;
  c.later = T0 + 2;
  c.hold = 3;
  c.reads = 0;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  int64_t ms;
  int32_t seq;
  parts(id, &ms, NULL, &seq);
  assert_true(ms == T0 + 2);
  assert_int_equal(seq, 0);
  assert_int_equal(c.reads, 4);
  assert_true(id > first);
}

static void clock_backwards_more_than_5s_is_clock_drift(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 0);
  fake_clock c = {T0, T0, -1, 0};
  core_snowflake_set_clock(&sf, fake_read, &c);
  int64_t id = 0, first;
  assert_int_equal(core_snowflake_next(&sf, &first), CRUSTER_OK);
  c.now = T0 - 5001;
  id = 42;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_E_CLOCK_DRIFT);
  assert_true(id == 42); /* nothing written on failure */
  /* Once the clock is back, generation continues after the last id. */
  c.now = T0;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  assert_true(id == first + 1);
}

static void next_rejects_null(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 0);
  assert_int_equal(core_snowflake_next(&sf, NULL), CRUSTER_E_INVALID_ARGUMENT);
  assert_int_equal(core_snowflake_next(NULL, NULL), CRUSTER_E_INVALID_ARGUMENT);
}

static void real_clock_ids_carry_current_time(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 9);
  int64_t id, ms;
  assert_int_equal(core_snowflake_next(&sf, &id), CRUSTER_OK);
  parts(id, &ms, NULL, NULL);
  /* After 2025-01-01 and before 2100: a plausible wall-clock time. */
  assert_true(ms > CRUSTER_SNOWFLAKE_EPOCH_MS);
  assert_true(ms < INT64_C(4102444800000));
}

#define PER_THREAD 100000

typedef struct worker {
  core_snowflake *sf;
  int64_t *ids;
  int failures;
} worker;

static void *generate(void *arg) {
  worker *w = arg;
  for (int i = 0; i < PER_THREAD; i++)
    if (core_snowflake_next(w->sf, &w->ids[i]) != CRUSTER_OK) w->failures++;
  return NULL;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void two_threads_get_unique_increasing_ids(void **state) {
  (void)state;
  core_snowflake sf;
  core_snowflake_init(&sf, 7);
  int64_t *all = malloc(2 * PER_THREAD * sizeof *all);
  assert_non_null(all);
  worker w[2] = {{&sf, all, 0}, {&sf, all + PER_THREAD, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&t[i], NULL, generate, &w[i]), 0);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(w[i].failures, 0);
    for (int j = 1; j < PER_THREAD; j++) assert_true(w[i].ids[j] > w[i].ids[j - 1]);
  }
  qsort(all, 2 * PER_THREAD, sizeof *all, cmp_i64);
  for (int j = 1; j < 2 * PER_THREAD; j++) assert_true(all[j] != all[j - 1]);
  int32_t machine;
  parts(all[0], NULL, &machine, NULL);
  assert_int_equal(machine, 7);
  free(all);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(id_layout_is_time_machine_sequence),
      cmocka_unit_test(machine_id_is_taken_modulo_1024),
      cmocka_unit_test(new_millisecond_restarts_sequence),
      cmocka_unit_test(sequence_overflow_waits_for_next_millisecond),
      cmocka_unit_test(clock_backwards_within_5s_waits),
      cmocka_unit_test(clock_backwards_more_than_5s_is_clock_drift),
      cmocka_unit_test(next_rejects_null),
      cmocka_unit_test(real_clock_ids_carry_current_time),
      cmocka_unit_test(two_threads_get_unique_increasing_ids),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
