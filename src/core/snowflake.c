/* Lock-free snowflake id generator (behaviour.md 1.4). */
#include "core/snowflake.h"

#include <cruster/ids.h>
#include <sched.h>
#include <time.h>

#include "core/util.h"

#define SEQ_BITS 12
#define SEQ_MASK UINT64_C(0xFFF)
#define MACHINE_MASK 0x3FF
#define MAX_BACKWARDS_MS 5000

void core_snowflake_init(core_snowflake *sf, int32_t machine_id) {
  atomic_init(&sf->state, 0);
  atomic_init(&sf->machine_id, machine_id & MACHINE_MASK);
  sf->clock = NULL;
  sf->clock_user = NULL;
}

void core_snowflake_set_machine_id(core_snowflake *sf, int32_t machine_id) {
  /* The id is an etcd counter modulo 1024 (behaviour.md 3.2). */
  atomic_store(&sf->machine_id, machine_id & MACHINE_MASK);
}

void core_snowflake_set_clock(core_snowflake *sf, core_clock_fn clock, void *user) {
  sf->clock = clock;
  sf->clock_user = user;
}

static int64_t read_clock(const core_snowflake *sf) {
  return sf->clock ? sf->clock(sf->clock_user) : core_now_ms();
}

/* The sequence of this ms is used up: the next ms is at most 1 ms away. */
static void wait_next_ms(void) { sched_yield(); }

/* The clock went backwards: sleep in slices of 1 ms, so a clock that is
 * corrected forward again is noticed promptly. */
static void wait_clock_catch_up(void) {
  struct timespec ts = {0, 1000000L};
  nanosleep(&ts, NULL);
}

cruster_status core_snowflake_next(core_snowflake *sf, int64_t *out) {
  if (!sf || !out) return CRUSTER_E_INVALID_ARGUMENT;
  for (;;) {
    int64_t now = read_clock(sf) - CRUSTER_SNOWFLAKE_EPOCH_MS;
    uint64_t old = atomic_load(&sf->state);
    int64_t last = (int64_t)(old >> SEQ_BITS);
    uint64_t next;
    if (now > last) {
      next = (uint64_t)now << SEQ_BITS;
    } else if (now == last) {
      if ((old & SEQ_MASK) == SEQ_MASK) {
        wait_next_ms();
        continue;
      }
      next = old + 1;
    } else {
      int64_t drift = last - now;
      if (drift > MAX_BACKWARDS_MS) return CRUSTER_E_CLOCK_DRIFT;
      wait_clock_catch_up();
      continue;
    }
    if (atomic_compare_exchange_weak(&sf->state, &old, next)) {
      uint64_t machine = (uint64_t)(atomic_load(&sf->machine_id) & MACHINE_MASK);
      uint64_t ms = next >> SEQ_BITS;
      *out = (int64_t)((ms << 22) | (machine << SEQ_BITS) | (next & SEQ_MASK));
      return CRUSTER_OK;
    }
  }
}
