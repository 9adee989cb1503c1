/* A runner process for the ClusterCron crash tests (test_cron_crash.c).
 *
 *   child_cron_runner CONNINFO BLOCK_AT
 *
 * Starts a single-node runtime with PostgreSQL storage on CONNINFO,
 * registers the cron job of cron_crash_defs.h, whose handler blocks on its
 * BLOCK_AT-th run (0 = never), and runs until it is killed. */
#include "cron_crash_defs.h"

static void quiet(void *user, cruster_log_level level, const char *component, const char *msg) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN)
    fprintf(stderr, "child_cron_runner[%ld] [%s] %s\n", (long)getpid(), component, msg);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s CONNINFO BLOCK_AT\n", argv[0]);
    return 64;
  }
  snprintf(ccd.conninfo, sizeof(ccd.conninfo), "%s", argv[1]);
  ccd.block_at = atoi(argv[2]);
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_config_set_logger(cfg, quiet, NULL, CRUSTER_LOG_WARN);
  cruster_storage *st = NULL;
  cruster_runtime *rt = NULL;
  if (cruster_storage_pg_new(argv[1], &st, &err) != CRUSTER_OK ||
      cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK ||
      ccd_register(rt, CRUSTER_CRON_MISSED_LATEST, &err) != CRUSTER_OK ||
      cruster_runtime_start(rt, &err) != CRUSTER_OK) {
    fprintf(stderr, "child_cron_runner: %s\n", cruster_error_message(err));
    return 2;
  }
  cruster_config_free(cfg);
  for (;;) pause();
}
