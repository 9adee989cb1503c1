/* A runner process for the workflow crash tests (test_workflow_crash.c).
 *
 *   child_wf_runner CONNINFO LOGFILE OPTIONS [CONFIG]
 *
 * Starts a single-node runtime with PostgreSQL storage on CONNINFO,
 * registers the workflows of wf_crash_defs.h and runs until it is killed.
 * OPTIONS: "-" or a comma-separated list of
 *   block-step=N          activity stepN of "Three" blocks after its INSERT
 *   retry-block-after=N   activity flaky blocks on its attempts above N
 *   block-mark=STEP       activity mark of "Sleepy" for STEP (before/after)
 *                         blocks after its INSERT
 *   start=WORKFLOW:KEY:INPUT
 *                         starts that execution (cruster_workflow_start)
 * CONFIG: "name=value;..." config settings.
 * LOGFILE receives "#STARTED <pid>" once the runtime has started,
 * "#EXEC <execution id>" for each execution started, and the activities'
 * lines (wf_crash_defs.h). */
#include "wf_crash_defs.h"

static void die(const char *what, cruster_error *err) {
  fprintf(stderr, "child_wf_runner[%ld]: %s: %s\n", (long)getpid(), what,
          err ? cruster_error_message(err) : "");
  exit(2);
}

static void quiet(void *user, cruster_log_level level, const char *component, const char *msg) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN)
    fprintf(stderr, "child_wf_runner[%ld] [%s] %s\n", (long)getpid(), component, msg);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s CONNINFO LOGFILE OPTIONS [CONFIG]\n", argv[0]);
    return 64;
  }
  const char *conninfo = argv[1];
  snprintf(wfc.out, sizeof(wfc.out), "%s", argv[2]);
  char *starts[8];
  int nstarts = 0;
  if (strcmp(argv[3], "-") != 0) {
    char *buf = strdup(argv[3]), *save = NULL;
    for (char *o = strtok_r(buf, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
      if (strncmp(o, "block-step=", 11) == 0)
        wfc.block_step = atoi(o + 11);
      else if (strncmp(o, "retry-block-after=", 18) == 0)
        wfc.retry_block_after = atoi(o + 18);
      else if (strncmp(o, "block-mark=", 11) == 0)
        snprintf(wfc.block_mark, sizeof(wfc.block_mark), "%s", o + 11);
      else if (strncmp(o, "start=", 6) == 0 && nstarts < 8)
        starts[nstarts++] = o + 6;
      else
        die("bad option", NULL);
    }
  }
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_config_set_logger(cfg, quiet, NULL, CRUSTER_LOG_WARN);
  if (argc > 4 && argv[4][0]) {
    char *buf = strdup(argv[4]), *save = NULL;
    for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
      char *eq = strchr(kv, '=');
      if (!eq)
        die("bad config item", NULL);
      *eq = 0;
      if (cruster_config_set(cfg, kv, eq + 1, &err) != CRUSTER_OK)
        die(kv, err);
    }
    free(buf);
  }
  cruster_storage *st = NULL;
  if (cruster_storage_pg_new(conninfo, &st, &err) != CRUSTER_OK)
    die("storage_pg_new", err);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK)
    die("runtime_new", err);
  cruster_config_free(cfg);
  if (wfc_register(rt, &err) != CRUSTER_OK)
    die("register", err);
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK)
    die("start", err);
  wfc_log("#STARTED %ld", (long)getpid());
  for (int i = 0; i < nstarts; i++) {
    char *wfname = starts[i], *key = strchr(wfname, ':'),
         *input = key ? strchr(key + 1, ':') : NULL;
    if (!input)
      die("bad start (WORKFLOW:KEY:INPUT)", NULL);
    *key++ = 0;
    *input++ = 0;
    cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
    o.key = key;
    o.key_len = strlen(key);
    o.timeout_ms = 60000;
    char *id = NULL;
    if (cruster_workflow_start(rt, wfname, input, strlen(input), &o, &id, &err) != CRUSTER_OK)
      die("workflow_start", err);
    wfc_log("#EXEC %s", id);
    cruster_free(id);
  }
  wfc_block_forever(); /* until killed */
}
