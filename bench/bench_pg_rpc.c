/* bench_pg_rpc -- persisted RPC round trips through PostgreSQL storage,
 * against pgbench's single-row INSERT on the same server (the commit
 * ceiling).
 *
 * For 1, 16 and 64 concurrent callers:
 *   {"bench":"pg_rpc","callers":C,"ops_per_s":..,"p50_us":..,"p99_us":..,"messages":..}
 *   {"bench":"pg_rpc_commits","callers":C,"commits_per_msg":..}
 *   {"bench":"pgbench_insert","callers":C,"tps":..,"p50_us":..,"p99_us":..}
 *   {"bench":"pg_rpc_vs_pgbench","callers":C,"ops_ratio":..,"p50_ratio":..}
 * and the targets: {"bench":"target",...,"met":true|false}
 *   64 callers: ops_per_s >= 1.0 x pgbench tps
 *    1 caller:  p50 <= 2 x pgbench p50
 *
 * Environment: CRUSTER_TEST_PG (libpq connection string of the server; the
 * bench uses its own database "cruster_bench" on it), BENCH_SECONDS
 * (default 3) per figure, BENCH_CALLERS (default "1,16,64"; the targets
 * are judged only when 1 and 64 are among them), CRUSTER_PGBENCH (pgbench binary; default
 * /usr/lib/postgresql/15/bin/pgbench, then pgbench from PATH).
 * Exit status: 0 when every figure was measured (targets are reported, not
 * enforced), 1 on an error. */
#include <cruster/cruster.h>
#include <cruster/pg.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BENCH_DB "cruster_bench"
#define PAYLOAD_LEN 16

static int g_seconds = 3;
static char g_conninfo[2048];      /* the bench database */
static char g_rt_conninfo[2300];   /* + search_path for cruster */

static void die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "bench_pg_rpc: ");
  fprintf(stderr, fmt, a ? a : "", b ? b : "");
  fprintf(stderr, "\n");
  exit(1);
}

static int64_t mono_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void no_notice(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

static PGconn *connect_or_die(const char *ci) {
  PGconn *c = PQconnectdb(ci);
  if (PQstatus(c) != CONNECTION_OK) die("cannot connect (%s): %s", ci, PQerrorMessage(c));
  PQsetNoticeProcessor(c, no_notice, NULL);
  return c;
}

static void exec_or_die(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
    die("SQL %s: %s", sql, PQresultErrorMessage(r));
  PQclear(r);
}

static long long scalar_or_die(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1)
    die("SQL %s: %s", sql, PQresultErrorMessage(r));
  long long v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* xact_commit of the bench database, after the statistics of closed
 * backends have been flushed. */
static long long xact_commit(void) {
  sleep_ms(1200);
  PGconn *c = connect_or_die(g_conninfo);
  exec_or_die(c, "SELECT pg_stat_clear_snapshot()");
  long long v = scalar_or_die(
      c, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()");
  PQfinish(c);
  return v;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static int64_t pct(int64_t *v, size_t n, double p) {
  if (n == 0) return 0;
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i];
}

/* ---- growing sample arrays -------------------------------------------------- */

typedef struct samples {
  int64_t *v;
  size_t n, cap;
} samples;
static void samples_add(samples *s, int64_t x) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4096;
    s->v = realloc(s->v, s->cap * sizeof(int64_t));
    if (!s->v) die("out of memory%s%s", NULL, NULL);
  }
  s->v[s->n++] = x;
}

/* ---- persisted RPC ------------------------------------------------------------ */

static void h_ack(void *user, cruster_request *req) {
  (void)user;
  cruster_request_reply(req, "k", 1);
}

typedef struct caller {
  cruster_runtime *rt;
  int index;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, status;
  char msg[256];
  samples lat;
  long errors;
  long answered; /* every successful call, warm-up and tail included */
} caller;

static atomic_int g_phase; /* 0 warm-up, 1 measuring, 2 stop */

static void on_reply(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)data;
  (void)len;
  caller *c = user;
  pthread_mutex_lock(&c->mu);
  c->status = status;
  if (msg) snprintf(c->msg, sizeof(c->msg), "%s", msg);
  c->done = 1;
  pthread_cond_signal(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void *caller_main(void *arg) {
  caller *c = arg;
  char payload[PAYLOAD_LEN];
  memset(payload, 'p', sizeof(payload));
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_INLINE_CALLBACK;
  o.timeout_ms = 30000;
  for (long n = 0; atomic_load(&g_phase) < 2; n++) {
    char id[32];
    snprintf(id, sizeof(id), "b%d-%ld", c->index, n % 16);
    c->done = 0;
    int64_t t0 = mono_us();
    int st = cruster_send(c->rt, "Bench", id, "ack", payload, sizeof(payload), &o, on_reply, c, NULL);
    if (st != CRUSTER_OK) {
      c->errors++;
      if (c->errors < 3) fprintf(stderr, "bench_pg_rpc: send refused: %s\n", cruster_status_name(st));
      sleep_ms(10);
      continue;
    }
    pthread_mutex_lock(&c->mu);
    while (!c->done) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    int64_t el = mono_us() - t0;
    if (c->status != CRUSTER_OK) {
      c->errors++;
      if (c->errors < 3)
        fprintf(stderr, "bench_pg_rpc: call failed: %s %s\n", cruster_status_name(c->status),
                c->msg);
      continue;
    }
    c->answered++;
    if (atomic_load(&g_phase) == 1) samples_add(&c->lat, el);
  }
  return NULL;
}

typedef struct rpc_result {
  double ops_per_s;
  int64_t p50_us, p99_us;
  size_t messages;
  double commits_per_msg;
  long errors;
} rpc_result;

static rpc_result run_rpc(int callers) {
  rpc_result res;
  memset(&res, 0, sizeof(res));
  cruster_config *cfg = cruster_config_new();
  cruster_error *err = NULL;
  cruster_config_set_logger(cfg, NULL, NULL, CRUSTER_LOG_WARN);
  if (cruster_config_set(cfg, "storage_auto_migrate", "true", &err) != CRUSTER_OK ||
      cruster_config_set_int(cfg, "worker_threads", 4, &err) != CRUSTER_OK)
    die("config: %s%s", cruster_error_message(err), NULL);
  long long x0 = xact_commit();
  cruster_storage *st = NULL;
  if (cruster_storage_pg_new(g_rt_conninfo, &st, &err) != CRUSTER_OK)
    die("storage: %s%s", cruster_error_message(err), NULL);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK)
    die("runtime_new: %s%s", cruster_error_message(err), NULL);
  cruster_config_free(cfg);
  cruster_entity_def *d = NULL;
  cruster_entity_def_new("Bench", &d, NULL);
  cruster_entity_def_add_rpc(d, "ack", CRUSTER_RPC_PERSISTED, h_ack, NULL, NULL);
  if (cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK)
    die("register: %s%s", cruster_error_message(err), NULL);
  cruster_entity_def_free(d);
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK)
    die("start: %s%s", cruster_error_message(err), NULL);

  caller *cs = calloc((size_t)callers, sizeof(caller));
  pthread_t *th = calloc((size_t)callers, sizeof(pthread_t));
  atomic_store(&g_phase, 0);
  for (int i = 0; i < callers; i++) {
    cs[i].rt = rt;
    cs[i].index = i;
    pthread_mutex_init(&cs[i].mu, NULL);
    pthread_cond_init(&cs[i].cv, NULL);
    pthread_create(&th[i], NULL, caller_main, &cs[i]);
  }
  sleep_ms(500); /* warm-up */
  atomic_store(&g_phase, 1);
  int64_t t0 = mono_us();
  sleep_ms(g_seconds * 1000L);
  atomic_store(&g_phase, 2);
  int64_t t1 = mono_us();
  for (int i = 0; i < callers; i++) pthread_join(th[i], NULL);
  samples all = {0};
  for (int i = 0; i < callers; i++) {
    for (size_t k = 0; k < cs[i].lat.n; k++) samples_add(&all, cs[i].lat.v[k]);
    res.errors += cs[i].errors;
    res.messages += (size_t)cs[i].answered;
    free(cs[i].lat.v);
    pthread_mutex_destroy(&cs[i].mu);
    pthread_cond_destroy(&cs[i].cv);
  }
  cruster_runtime_free(rt); /* closes its connections: their statistics flush */
  long long x1 = xact_commit();
  PGconn *c = connect_or_die(g_rt_conninfo);
  long long left = scalar_or_die(c, "SELECT count(*) FROM cruster_messages");
  if (left != 0)
    fprintf(stderr, "bench_pg_rpc: %lld message(s) left in storage after a graceful stop\n", left);
  exec_or_die(c, "TRUNCATE cruster_messages");
  PQfinish(c);
  qsort(all.v, all.n, sizeof(int64_t), cmp_i64);
  res.ops_per_s = (double)all.n * 1e6 / (double)(t1 - t0);
  res.p50_us = pct(all.v, all.n, 0.50);
  res.p99_us = pct(all.v, all.n, 0.99);
  /* every message stored in the run (warm-up and tail included) vs the
   * commits of the whole run (a few are the runtime's own start/stop) */
  res.commits_per_msg = res.messages > 0 ? (double)(x1 - x0) / (double)res.messages : 0;
  free(all.v);
  free(cs);
  free(th);
  return res;
}

/* ---- pgbench ------------------------------------------------------------------ */

typedef struct pgb_result {
  double tps;
  int64_t p50_us, p99_us;
  long long commits;
  long long transactions;
} pgb_result;

static char g_pgbench[512];
static char g_host[256], g_port[32], g_user[128];

static void find_pgbench(void) {
  const char *e = getenv("CRUSTER_PGBENCH");
  if (e && *e) snprintf(g_pgbench, sizeof(g_pgbench), "%s", e);
  else if (access("/usr/lib/postgresql/15/bin/pgbench", X_OK) == 0)
    snprintf(g_pgbench, sizeof(g_pgbench), "/usr/lib/postgresql/15/bin/pgbench");
  else snprintf(g_pgbench, sizeof(g_pgbench), "pgbench");
}

static pgb_result run_pgbench(int clients, const char *dir) {
  pgb_result res;
  memset(&res, 0, sizeof(res));
  char script[600], prefix[600], cmd[4096];
  snprintf(script, sizeof(script), "%s/insert.sql", dir);
  snprintf(prefix, sizeof(prefix), "%s/pgb%d", dir, clients);
  FILE *f = fopen(script, "w");
  if (!f) die("cannot write %s%s", script, NULL);
  fprintf(f, "INSERT INTO bench_pgb.bench_ins(v) VALUES ('\\x");
  for (int i = 0; i < PAYLOAD_LEN; i++) fprintf(f, "70");
  fprintf(f, "'::bytea);\n");
  fclose(f);
  int jobs = clients < 4 ? clients : 4;
  long long x0 = xact_commit();
  snprintf(cmd, sizeof(cmd),
           "cd '%s' && '%s' -n -h '%s' -p '%s' -U '%s' -c %d -j %d -T %d -f '%s' -l "
           "--log-prefix='%s' " BENCH_DB " 2>&1",
           dir, g_pgbench, g_host, g_port, g_user, clients, jobs, g_seconds, script, prefix);
  FILE *p = popen(cmd, "r");
  if (!p) die("popen %s%s", cmd, NULL);
  char line[1024];
  char all[8192] = "";
  while (fgets(line, sizeof(line), p)) {
    if (strlen(all) + strlen(line) < sizeof(all)) strcat(all, line);
    double tps;
    if (sscanf(line, "tps = %lf", &tps) == 1) res.tps = tps;
    long long n;
    if (sscanf(line, "number of transactions actually processed: %lld", &n) == 1)
      res.transactions = n;
  }
  int rc = pclose(p);
  if (rc != 0 || res.tps <= 0) die("pgbench failed:\n%s%s", all, NULL);
  long long x1 = xact_commit();
  res.commits = x1 - x0;
  /* per-transaction logs: "client_id transaction_no time_us script_no epoch us" */
  samples lat = {0};
  snprintf(cmd, sizeof(cmd), "cat '%s'.* 2>/dev/null", prefix);
  p = popen(cmd, "r");
  while (p && fgets(line, sizeof(line), p)) {
    long long cid, tno, us;
    if (sscanf(line, "%lld %lld %lld", &cid, &tno, &us) == 3) samples_add(&lat, us);
  }
  if (p) pclose(p);
  snprintf(cmd, sizeof(cmd), "rm -f '%s'.*", prefix);
  if (system(cmd) != 0) {
  }
  qsort(lat.v, lat.n, sizeof(int64_t), cmp_i64);
  res.p50_us = pct(lat.v, lat.n, 0.50);
  res.p99_us = pct(lat.v, lat.n, 0.99);
  free(lat.v);
  return res;
}

/* ---- main ---------------------------------------------------------------------- */

int main(void) {
  const char *base = getenv("CRUSTER_TEST_PG");
  if (!base || !*base)
    die("CRUSTER_TEST_PG is not set (scripts/dev services start; source .dev/env)%s%s", NULL, NULL);
  const char *s = getenv("BENCH_SECONDS");
  if (s && atoi(s) > 0) g_seconds = atoi(s);
  find_pgbench();

  /* server coordinates for pgbench */
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(base, &perr);
  if (!opts) die("CRUSTER_TEST_PG: %s%s", perr, NULL);
  snprintf(g_host, sizeof(g_host), "127.0.0.1");
  snprintf(g_port, sizeof(g_port), "5432");
  snprintf(g_user, sizeof(g_user), "postgres");
  for (PQconninfoOption *o = opts; o->keyword; o++) {
    if (!o->val) continue;
    if (!strcmp(o->keyword, "host")) snprintf(g_host, sizeof(g_host), "%s", o->val);
    if (!strcmp(o->keyword, "port")) snprintf(g_port, sizeof(g_port), "%s", o->val);
    if (!strcmp(o->keyword, "user")) snprintf(g_user, sizeof(g_user), "%s", o->val);
  }
  PQconninfoFree(opts);

  /* a database of its own, so that xact_commit counts only the bench */
  PGconn *c = connect_or_die(base);
  if (scalar_or_die(c, "SELECT count(*) FROM pg_database WHERE datname = '" BENCH_DB "'") == 0)
    exec_or_die(c, "CREATE DATABASE " BENCH_DB);
  PQfinish(c);
  snprintf(g_conninfo, sizeof(g_conninfo), "%s dbname=" BENCH_DB, base);
  snprintf(g_rt_conninfo, sizeof(g_rt_conninfo), "%s options=-csearch_path=bench_rpc", g_conninfo);
  c = connect_or_die(g_conninfo);
  exec_or_die(c, "DROP SCHEMA IF EXISTS bench_rpc CASCADE");
  exec_or_die(c, "DROP SCHEMA IF EXISTS bench_pgb CASCADE");
  exec_or_die(c, "CREATE SCHEMA bench_rpc");
  exec_or_die(c, "CREATE SCHEMA bench_pgb");
  exec_or_die(c, "CREATE TABLE bench_pgb.bench_ins(id bigserial PRIMARY KEY, v bytea)");
  PQfinish(c);

  char dir[] = "/tmp/bench_pg_rpc.XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp%s%s", NULL, NULL);
  chmod(dir, 0755);

  int counts[16], ncounts = 0;
  const char *cl = getenv("BENCH_CALLERS");
  char clbuf[128];
  snprintf(clbuf, sizeof(clbuf), "%s", cl && *cl ? cl : "1,16,64");
  char *save = NULL;
  for (char *t = strtok_r(clbuf, ",", &save); t && ncounts < 16; t = strtok_r(NULL, ",", &save))
    if (atoi(t) > 0) counts[ncounts++] = atoi(t);
  rpc_result rr[16];
  pgb_result pr[16];
  int failed = 0, i1 = -1, i64 = -1;
  for (int i = 0; i < ncounts; i++) {
    int n = counts[i];
    if (n == 1) i1 = i;
    if (n == 64) i64 = i;
    rr[i] = run_rpc(n);
    printf("{\"bench\":\"pg_rpc\",\"callers\":%d,\"seconds\":%d,\"ops_per_s\":%.1f,\"p50_us\":%lld,"
           "\"p99_us\":%lld,\"messages\":%zu,\"errors\":%ld}\n",
           n, g_seconds, rr[i].ops_per_s, (long long)rr[i].p50_us, (long long)rr[i].p99_us,
           rr[i].messages, rr[i].errors);
    printf("{\"bench\":\"pg_rpc_commits\",\"callers\":%d,\"commits_per_msg\":%.3f}\n", n,
           rr[i].commits_per_msg);
    fflush(stdout);
    if (rr[i].errors) failed = 1;
    pr[i] = run_pgbench(n, dir);
    printf("{\"bench\":\"pgbench_insert\",\"callers\":%d,\"seconds\":%d,\"tps\":%.1f,\"p50_us\":%lld,"
           "\"p99_us\":%lld,\"commits_per_tx\":%.3f}\n",
           n, g_seconds, pr[i].tps, (long long)pr[i].p50_us, (long long)pr[i].p99_us,
           pr[i].transactions > 0 ? (double)pr[i].commits / (double)pr[i].transactions : 0.0);
    printf("{\"bench\":\"pg_rpc_vs_pgbench\",\"callers\":%d,\"ops_ratio\":%.3f,\"p50_ratio\":%.3f}\n",
           n, pr[i].tps > 0 ? rr[i].ops_per_s / pr[i].tps : 0.0,
           pr[i].p50_us > 0 ? (double)rr[i].p50_us / (double)pr[i].p50_us : 0.0);
    fflush(stdout);
  }
  if (i64 >= 0) {
    double r64 = pr[i64].tps > 0 ? rr[i64].ops_per_s / pr[i64].tps : 0;
    printf("{\"bench\":\"target\",\"name\":\"ops_64_vs_pgbench_tps\",\"value\":%.3f,\"target\":\">=1.0\","
           "\"met\":%s}\n",
           r64, r64 >= 1.0 ? "true" : "false");
  }
  if (i1 >= 0) {
    double p1 = pr[i1].p50_us > 0 ? (double)rr[i1].p50_us / (double)pr[i1].p50_us : 0;
    printf("{\"bench\":\"target\",\"name\":\"p50_1_vs_pgbench_p50\",\"value\":%.3f,\"target\":\"<=2.0\","
           "\"met\":%s}\n",
           p1, p1 > 0 && p1 <= 2.0 ? "true" : "false");
  }
  rmdir(dir);
  c = connect_or_die(g_conninfo);
  exec_or_die(c, "DROP SCHEMA IF EXISTS bench_rpc CASCADE");
  exec_or_die(c, "DROP SCHEMA IF EXISTS bench_pgb CASCADE");
  PQfinish(c);
  return failed;
}
