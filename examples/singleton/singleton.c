/* A singleton and a durable cron job (docs/singletons-and-cron.md).
 *
 * "leader" is a managed singleton: it works until it is cancelled, then
 * cleans up -- before cruster_runtime_stop returns. "tick" is a cron job
 * firing every second; each slot is recorded in storage before its handler
 * runs, and the history is listed at the end. */
#define _POSIX_C_SOURCE 200809L
#include <cruster/cruster.h>

#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static atomic_int rounds, cleaned, ticks;

static int leader(void *app, cruster_singleton_ctx *ctx) {
  (void)app;
  while (!cruster_singleton_wait(ctx, 100)) /* 1 once cancelled (stop or shard loss) */
    atomic_fetch_add(&rounds, 1);
  atomic_store(&cleaned, 1); /* clean-up: runs before the stop returns */
  return CRUSTER_OK;
}

static int tick(void *app, int64_t slot_ms, const char *slot_id) {
  (void)app;
  /* slot_id is the same if this slot runs again after a crash: use it as an
   * idempotency key for effects. */
  printf("slot %lld (%s)\n", (long long)slot_ms, slot_id);
  fflush(stdout);
  atomic_fetch_add(&ticks, 1);
  return CRUSTER_OK;
}

static int check(int st, cruster_error *err, const char *what) {
  if (st == CRUSTER_OK) return 0;
  fprintf(stderr, "%s: %s\n", what, err ? cruster_error_message(err) : cruster_status_message(st));
  cruster_error_free(err);
  return 1;
}

int main(void) {
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_storage *st = NULL;
  cruster_runtime *rt = NULL;
  if (check(cruster_storage_memory_new(&st, &err), err, "storage")) return 1;
  if (check(cruster_runtime_new(cfg, st, NULL, &rt, &err), err, "runtime")) return 1;
  cruster_config_free(cfg);

  if (check(cruster_runtime_register_singleton(rt, "leader", leader, NULL, NULL, &err), err,
            "singleton"))
    return 1;
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  o.missed = CRUSTER_CRON_MISSED_LATEST; /* the default: after downtime, the latest missed slot */
  if (check(cruster_runtime_register_cron_job(rt, "tick", "* * * * * *", tick, NULL, &o, &err), err,
            "cron job"))
    return 1;
  /* An invalid expression is refused with its position and reason. */
  if (cruster_runtime_register_cron_job(rt, "bad", "0 0 25 * * *", tick, NULL, NULL, &err) != CRUSTER_OK) {
    printf("refused: %s\n", cruster_error_message(err));
    cruster_error_free(err);
    err = NULL;
  }

  if (check(cruster_runtime_start(rt, &err), err, "start")) return 1;
  while (atomic_load(&ticks) < 2) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  cruster_runtime_stop(rt, NULL);

  cruster_cron_slot *slots = NULL;
  size_t n = 0, done = 0;
  if (check(cruster_cron_slots(rt, "tick", 10, &slots, &n, &err), err, "slots")) return 1;
  for (size_t i = 0; i < n; i++) done += slots[i].state == CRUSTER_CRON_SLOT_DONE;
  cruster_cron_slots_free(slots, n);
  printf("%zu slots done\n", done);
  printf("leader %s; slots %s\n", atomic_load(&cleaned) ? "cleaned up" : "did NOT clean up",
         done >= 2 ? "ok" : "missing");
  cruster_runtime_free(rt);
  return 0;
}
