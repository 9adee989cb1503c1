/* A runner process for the crash tests (test_pg_crash.c).
 *
 *   child_pg_runner CONNINFO OUTFILE MODE SENDS [CONFIG]
 *
 * Starts a single-node runtime with PostgreSQL storage on CONNINFO and
 * registers entity type "Sink" with the persisted method "put". MODE:
 *   run          the handler appends "<entity id> <payload>\n" to OUTFILE,
 *                fsyncs, and replies "ok"
 *   slow         the handler never returns (messages stay unprocessed)
 *   crash-on:X   as run, but a message with payload X kills the process
 *                with SIGKILL before anything is written
 *   block-on:X   as run, but the handler of payload X never returns
 * SENDS: "-" or "id:payload,id:payload,..." -- persisted notifies sent in
 * that order after start; then "#ACCEPTED <n>" is appended to OUTFILE.
 * CONFIG: "name=value;..." config settings.
 * "#STARTED <pid>" is appended once the runtime has started. The process runs
 * until it is killed. */
#include <cruster/cruster.h>
#include <cruster/pg.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *g_out;
static const char *g_mode;
static const char *g_crash_on;
static const char *g_block_on;

static void die(const char *what, cruster_error *err) {
  fprintf(stderr, "child_pg_runner[%ld]: %s: %s\n", (long)getpid(), what,
          err ? cruster_error_message(err) : "");
  exit(2);
}

static void append_line(const char *line) {
  int fd = open(g_out, O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) {
    perror("open outfile");
    exit(3);
  }
  size_t n = strlen(line);
  if (write(fd, line, n) != (ssize_t)n) {
    perror("write outfile");
    exit(3);
  }
  fsync(fd);
  close(fd);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void h_put(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const char *p = cruster_request_payload(req, &len);
  char payload[512];
  snprintf(payload, sizeof(payload), "%.*s", (int)len, p ? p : "");
  if (strcmp(g_mode, "slow") == 0) {
    for (;;) sleep_ms(1000); /* until SIGKILL */
  }
  if (g_block_on && strcmp(payload, g_block_on) == 0) {
    for (;;) sleep_ms(1000); /* until SIGKILL */
  }
  if (g_crash_on && strcmp(payload, g_crash_on) == 0) {
    fprintf(stderr, "child_pg_runner[%ld]: poison %s: SIGKILL\n", (long)getpid(), payload);
    kill(getpid(), SIGKILL);
    for (;;) sleep_ms(1000);
  }
  char line[1400];
  snprintf(line, sizeof(line), "%s %s\n", cruster_request_entity_id(req), payload);
  append_line(line);
  cruster_request_reply(req, "ok", 2);
}

static void quiet(void *user, cruster_log_level level, const char *component, const char *msg) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN) fprintf(stderr, "child[%ld] [%s] %s\n", (long)getpid(), component, msg);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s CONNINFO OUTFILE MODE SENDS [CONFIG]\n", argv[0]);
    return 64;
  }
  const char *conninfo = argv[1];
  g_out = argv[2];
  g_mode = argv[3];
  if (strncmp(g_mode, "crash-on:", 9) == 0) g_crash_on = g_mode + 9;
  else if (strncmp(g_mode, "block-on:", 9) == 0) g_block_on = g_mode + 9;
  else if (strcmp(g_mode, "run") != 0 && strcmp(g_mode, "slow") != 0) {
    fprintf(stderr, "bad mode %s\n", g_mode);
    return 64;
  }
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  cruster_config_set_logger(cfg, quiet, NULL, CRUSTER_LOG_WARN);
  if (argc > 5 && argv[5][0]) {
    char *buf = strdup(argv[5]), *save = NULL;
    for (char *kv = strtok_r(buf, ";", &save); kv; kv = strtok_r(NULL, ";", &save)) {
      char *eq = strchr(kv, '=');
      if (!eq) die("bad config item", NULL);
      *eq = 0;
      if (cruster_config_set(cfg, kv, eq + 1, &err) != CRUSTER_OK) die(kv, err);
    }
    free(buf);
  }
  cruster_storage *st = NULL;
  if (cruster_storage_pg_new(conninfo, &st, &err) != CRUSTER_OK) die("storage_pg_new", err);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK) die("runtime_new", err);
  cruster_config_free(cfg);
  cruster_entity_def *d = NULL;
  if (cruster_entity_def_new("Sink", &d, &err) != CRUSTER_OK) die("def", err);
  if (cruster_entity_def_add_rpc(d, "put", CRUSTER_RPC_PERSISTED, h_put, NULL, &err) != CRUSTER_OK)
    die("add_rpc", err);
  if (cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK) die("register", err);
  cruster_entity_def_free(d);
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK) die("start", err);
  char line[128];
  snprintf(line, sizeof(line), "#STARTED %ld\n", (long)getpid());
  append_line(line);

  if (strcmp(argv[4], "-") != 0) {
    char *buf = strdup(argv[4]), *save = NULL;
    int n = 0;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
      char *colon = strchr(item, ':');
      if (!colon) die("bad send item", NULL);
      *colon = 0;
      const char *payload = colon + 1;
      cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
      o.timeout_ms = 30000;
      if (cruster_notify_sync(rt, "Sink", item, "put", payload, strlen(payload), &o, &err) !=
          CRUSTER_OK)
        die("notify", err);
      n++;
    }
    free(buf);
    snprintf(line, sizeof(line), "#ACCEPTED %d\n", n);
    append_line(line);
  }
  for (;;) sleep_ms(1000); /* until killed */
}
