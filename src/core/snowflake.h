/* Internal: snowflake id generator (behaviour.md section 1.4). Lock-free:
 * state is one packed atomic word (timestamp << 12 | sequence), updated by CAS. */
#ifndef CORE_SNOWFLAKE_H
#define CORE_SNOWFLAKE_H

#include "core/prefix.h"

#include <cruster/status.h>
#include <stdatomic.h>
#include <stdint.h>

typedef int64_t (*core_clock_fn)(void *user); /* Unix ms */

typedef struct core_snowflake {
  _Atomic uint64_t state;     /* (ms since epoch << 12) | sequence */
  _Atomic int32_t machine_id; /* 0..1023 */
  core_clock_fn clock;        /* NULL = realtime clock */
  void *clock_user;
} core_snowflake;

void core_snowflake_init(core_snowflake *sf, int32_t machine_id);
void core_snowflake_set_machine_id(core_snowflake *sf, int32_t machine_id);
/* Test hook: replace the clock. */
void core_snowflake_set_clock(core_snowflake *sf, core_clock_fn clock, void *user);
/* Next id. Same ms -> sequence+1; sequence past 4095 -> waits for the next
 * ms; clock moved back <= 5000 ms -> waits (warning > 100 ms is the caller's
 * business); > 5000 ms -> CRUSTER_E_CLOCK_DRIFT. */
cruster_status core_snowflake_next(core_snowflake *sf, int64_t *out);

#endif
