/* bench_workflow -- durable workflows journaled in PostgreSQL, and the
 * transactional entity handler, against pgbench's single-row INSERT on the
 * same server in the same run.
 *
 * The workflow: 3 activities, each one INSERT of 16 bytes in the activity's
 * transaction (cruster_activity_pg), committed with its journal row. For
 * each concurrency N (default 1, 16, 64: N client threads, each running
 * cruster_workflow_execute_sync with a fresh key, so N executions are in
 * flight at once; end-to-end = from the execute call to its answer):
 *   {"bench":"pgbench_insert","clients":N,"when":"before"|"after","tps":..,"p50_us":..,..}
 *     pgbench, N clients, right before and right after the workflows
 *   {"bench":"workflow","concurrency":N,"wf_per_s":..,"p50_us":..,"p99_us":..,
 *    "workflows":..,"errors":..,"worker_threads_max_seen":..,"cpu_us_per_wf":..,
 *    "server_cpu_us_per_wf":..}
 *     wf_per_s: answers in the measured window / its length; latencies of
 *     the workflows started and answered in it (warm-up: until every caller
 *     had an answer, then 500 ms). cpu_us_per_wf: user+sys CPU of this
 *     process in the window / answers; server_cpu_us_per_wf: the same for
 *     the bench database's backends (/proc/<pid>/stat, sampled every 100 ms;
 *     -1 when the server is not on this machine). pgbench's lines carry the
 *     same two figures per transaction (pgbench itself, its backends).
 *   {"bench":"workflow_commits","concurrency":N,"commits_per_wf":..,
 *    "messages_ins_per_wf":..,"messages_upd_per_wf":..,"journal_ins_per_wf":..,
 *    "activity_rows_per_wf":..}
 *     commits: pg_stat_database.xact_commit delta of the bench database over
 *     the whole case (runtime start to free, warm-up included, read-only
 *     transactions included, as PostgreSQL counts them) / workflows answered;
 *     the tuple counts come from pg_stat_user_tables.
 *   {"bench":"workflow_breakdown","concurrency":N,...}  p50 (us) of the parts
 *     of one workflow, stamped in process: start_to_execute (the start
 *     message stored, dispatched to a worker, journal read if any), act1..3
 *     (each activity from the previous stamp: act1 a pool connection and
 *     BEGIN, act2..3 the previous activity's journal row + COMMIT pipelined
 *     with this one's BEGIN; then its INSERT), act_sql (the activity's
 *     INSERT alone), execute_to_answer (the last activity's journal row,
 *     the answer and COMMIT in one round trip, and the answer handed to the
 *     caller).
 *   {"bench":"workflow_latency_model","concurrency":1,"round_trips_per_wf":8,
 *    "thread_hops_per_wf":4,"pg_round_trip_p50_us":..,"round_trips_floor_us":..,
 *    "floor_vs_pgbench_p50":..,"wf_p50_vs_floor":..}
 *     (at 1 only) the p50 of one SELECT 1 round trip on a blocking
 *     connection, times the round trips one workflow makes: what its p50
 *     cannot go below, against pgbench's p50.
 *   {"bench":"tx_rpc","concurrency":N,"ops_per_s":..,"p50_us":..,"p99_us":..,
 *    "commits_per_call":..,"cpu_us_per_call":..,"server_cpu_us_per_call":..,...}
 *     the transactional entity handler (CRUSTER_RPC_TRANSACTIONAL): entity
 *     "Ledger", method "post", the same 16-byte INSERT on the handler's
 *     transaction, committed with its stored reply; N caller threads, each
 *     one cruster_send_sync at a time over 16 entity ids of its own, no
 *     idempotency key (as bench_pg_rpc). BENCH_TX=0 skips it.
 *   {"bench":"tx_rpc_vs_pgbench","concurrency":N,"ops_ratio":..,"p50_ratio":..,
 *    "cpu_per_call_vs_tx":..,"cpu_bound_ops_ratio":..}
 *   {"bench":"workflow_vs_pgbench","concurrency":N,"pgbench_tps":..,"pgbench_p50_us":..,
 *    "wf_ratio":..,"p50_ratio":..,"cpu_per_wf_vs_tx":..,"cpu_bound_wf_ratio":..}
 *     against the better pgbench run of the two (higher tps, lower p50,
 *     less CPU); cpu_bound_wf_ratio = pgbench's CPU per transaction / the
 *     workflow's (client + server): the wf_ratio both tend to when they
 *     saturate the cores, steadier than wf_ratio on a shared machine
 * then BENCH_ASLEEP (100,000) executions asleep: each sleeps one hour,
 * started by BENCH_STARTERS threads with cruster_workflow_start; once the
 * database shows every one parked (unclaimed, due in the future):
 *   {"bench":"workflow_asleep","executions":..,"start_s":..,"parked_s":..,
 *    "rss_kb":..,"rss_before_kb":..,"threads":..,"threads_before":..,
 *    "threads_peak_starting":..,"entities_in_memory":..,
 *    "commits_per_execution":..,...}
 *     VmRSS / Threads of this process (/proc/self/status); before = the
 *     runtime started, nothing started yet. entity_max_idle_time is 1 h
 *     for this part (BENCH_ASLEEP_IDLE), so every parked execution's entity
 *     instance is still resident: the worst case.
 * and the targets, one line each with "meets_target":
 *   64: commits_per_wf <= 4; wf_per_s >= 0.12 x pgbench tps
 *    1: p50 <= 6 x pgbench p50
 *   asleep: 100,000 in <= 100 MB RSS; no thread per execution (the threads
 *   added while they sleep stay within the worker pool's cap, 64)
 *   64: the transactional entity handler's ops/s >= 0.5 x pgbench tps
 *
 * Environment: CRUSTER_TEST_PG (libpq connection string of the server; the
 * bench uses its own database "cruster_bench_wf" on it, schemas bench_wf and
 * bench_wfpgb), BENCH_SECONDS (default 3) per figure, BENCH_CONCURRENCY
 * (default "1,16,64"; "0" = none; targets are judged only for the counts
 * present), BENCH_ASLEEP (default 100000; 0 skips the part), BENCH_STARTERS
 * (default 16), BENCH_TX (default 1; 0 = no transactional handler case),
 * BENCH_ASLEEP_IDLE (entity_max_idle_time while asleep,
 * default "1h"; "default" = the library's), BENCH_QUICK=1 (BENCH_SECONDS 2,
 * BENCH_ASLEEP 10000: a smoke run), BENCH_WORKFLOW_POOL (workflow_pool_size;
 * default: the library's), BENCH_CONFIG ("key=value,..." runtime settings,
 * for experiments), BENCH_PG_OPTIONS (more -c settings for the
 * runtime's sessions, for a diagnosis: "-clog_min_duration_statement=0"
 * logs every statement's server time), CRUSTER_PGBENCH (pgbench binary;
 * default /usr/lib/postgresql/15/bin/pgbench, then pgbench from PATH).
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BENCH_DB "cruster_bench_wf" /* its own: xact_commit counts only this program */
#define SCHEMA "bench_wf"
#define PGB_SCHEMA "bench_wfpgb"
#define PAYLOAD_LEN 16
#define ACTIVITIES 3
#define SLEEP_MS 3600000LL /* the asleep executions' sleep: one hour */

static int g_seconds = 3;
static long g_asleep = 100000;
static int g_starters = 16;
static int g_wf_pool = 0; /* 0: the library's default */
static const char *g_asleep_idle = "1h"; /* entity_max_idle_time while asleep */
static int g_tx = 1; /* measure the transactional entity handler too */
static char g_conninfo[2048];    /* the bench database */
static char g_rt_conninfo[2300]; /* + search_path for cruster */

static void die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "bench_workflow: ");
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

/* ---- server statistics ------------------------------------------------------ */

/* Tuple counters of the tables a workflow writes (pg_stat_user_tables). */
typedef struct tstats {
  long long xact_commit;
  long long msg_ins, msg_upd, msg_del, jr_ins, jr_upd, act_ins;
} tstats;

/* The counters, after the statistics of closed backends have been flushed
 * (PostgreSQL 15 flushes a backend's at most once a second, and at exit). */
static tstats read_stats(void) {
  tstats s;
  memset(&s, 0, sizeof(s));
  sleep_ms(1200);
  PGconn *c = connect_or_die(g_conninfo);
  exec_or_die(c, "SELECT pg_stat_clear_snapshot()");
  s.xact_commit = scalar_or_die(
      c, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()");
  PGresult *r = PQexec(c,
                       "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
                       " WHERE schemaname = '" SCHEMA "'");
  if (PQresultStatus(r) != PGRES_TUPLES_OK) die("pg_stat_user_tables: %s%s", PQresultErrorMessage(r), NULL);
  for (int i = 0; i < PQntuples(r); i++) {
    const char *t = PQgetvalue(r, i, 0);
    long long ins = atoll(PQgetvalue(r, i, 1)), upd = atoll(PQgetvalue(r, i, 2)),
              del = atoll(PQgetvalue(r, i, 3));
    if (!strcmp(t, "cruster_messages")) {
      s.msg_ins = ins;
      s.msg_upd = upd;
      s.msg_del = del;
    } else if (!strcmp(t, "cruster_journal")) {
      s.jr_ins = ins;
      s.jr_upd = upd;
    } else if (!strcmp(t, "wf_ins")) {
      s.act_ins = ins;
    }
  }
  PQclear(r);
  PQfinish(c);
  return s;
}

/* VmRSS / VmHWM (kB) and Threads of this process. */
static void proc_status(long *rss_kb, long *hwm_kb, long *threads) {
  *rss_kb = *hwm_kb = *threads = -1;
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return;
  char line[256];
  while (fgets(line, sizeof(line), f)) {
    if (!strncmp(line, "VmRSS:", 6)) *rss_kb = atol(line + 6);
    else if (!strncmp(line, "VmHWM:", 6)) *hwm_kb = atol(line + 6);
    else if (!strncmp(line, "Threads:", 8)) *threads = atol(line + 8);
  }
  fclose(f);
}

/* ---- CPU: this process and the server backends of the bench database ------ */

/* user+sys CPU of this process (all threads), or of its waited-for
 * children (pgbench), in us */
static int64_t rusage_us(int who) {
  struct rusage ru;
  getrusage(who, &ru);
  return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
         ru.ru_stime.tv_usec;
}

/* utime+stime of process `pid` in us, -1 if unreadable (a remote server) */
static int64_t pid_cpu_us(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  /* after ") ": state (field 3) ... utime (14), stime (15) */
  unsigned long long ut = 0, st = 0;
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return -1;
  long hz = sysconf(_SC_CLK_TCK);
  return (int64_t)((ut + st) * 1000000ull / (unsigned long long)(hz > 0 ? hz : 100));
}

/* Samples, every 100 ms, the CPU of every backend connected to the bench
 * database (the server must be on this machine: /proc/<pid>/stat); the
 * total is the sum over backends of last sample - first sample. A backend
 * first seen after it started misses its work before that sample, and one
 * that exits misses its last < 100 ms: the totals are a lower bound, alike
 * for the workflows and pgbench. */
#define MAX_BACKENDS 512
typedef struct cpu_sampler {
  pthread_t th;
  atomic_int stop;
  int n, unreadable;
  int pid[MAX_BACKENDS];
  int64_t first[MAX_BACKENDS], last[MAX_BACKENDS];
} cpu_sampler;

static void sampler_once(cpu_sampler *cs, PGconn *c) {
  PGresult *r = PQexec(c, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                          " AND pid <> pg_backend_pid()");
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    for (int i = 0; i < PQntuples(r); i++) {
      int pid = atoi(PQgetvalue(r, i, 0));
      int64_t cpu = pid_cpu_us(pid);
      if (cpu < 0) {
        cs->unreadable = 1;
        continue;
      }
      int k = 0;
      while (k < cs->n && cs->pid[k] != pid) k++;
      if (k == cs->n) {
        if (cs->n == MAX_BACKENDS) continue;
        cs->n++;
        cs->pid[k] = pid;
        cs->first[k] = cpu;
      }
      cs->last[k] = cpu;
    }
  }
  PQclear(r);
}

static void *sampler_main(void *arg) {
  cpu_sampler *cs = arg;
  PGconn *c = connect_or_die(g_conninfo);
  while (!atomic_load(&cs->stop)) {
    sampler_once(cs, c);
    sleep_ms(100);
  }
  sampler_once(cs, c);
  PQfinish(c);
  return NULL;
}

static void sampler_start(cpu_sampler *cs) {
  memset(cs, 0, sizeof(*cs));
  pthread_create(&cs->th, NULL, sampler_main, cs);
}

/* Stops it; the backends' CPU in us, or -1 if it could not be read. */
static int64_t sampler_stop(cpu_sampler *cs) {
  atomic_store(&cs->stop, 1);
  pthread_join(cs->th, NULL);
  if (cs->unreadable && cs->n == 0) return -1;
  int64_t sum = 0;
  for (int k = 0; k < cs->n; k++) sum += cs->last[k] - cs->first[k];
  return sum;
}

static double metric(cruster_runtime *rt, const char *name, const char *labels) {
  double v = -1;
  cruster_metrics_value(cruster_runtime_metrics(rt), name, labels, &v);
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
static int64_t samples_p50(samples *s) {
  qsort(s->v, s->n, sizeof(int64_t), cmp_i64);
  return pct(s->v, s->n, 0.50);
}

/* p50 of one round trip to the server (SELECT 1, extended protocol, as the
 * activities' statements) on a blocking connection: the unit of the
 * latency model at 1 (workflow_latency_model). */
static int64_t round_trip_p50_us(void) {
  enum { WARM = 200, N = 2000 };
  PGconn *c = connect_or_die(g_rt_conninfo);
  int64_t *v = malloc(N * sizeof(*v));
  if (!v) {
    PQfinish(c);
    return -1;
  }
  for (int i = 0; i < WARM + N; i++) {
    int64_t t0 = mono_us();
    PGresult *r = PQexecParams(c, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0);
    int64_t t1 = mono_us();
    PQclear(r);
    if (i >= WARM) v[i - WARM] = t1 - t0;
  }
  qsort(v, N, sizeof(int64_t), cmp_i64);
  int64_t p = pct(v, N, 0.50);
  free(v);
  PQfinish(c);
  return p;
}

/* ---- the workflow --------------------------------------------------------------- */

/* The input: which caller runs it (the execute and activity functions stamp
 * the caller's slot: one execution per caller at a time) and padding to
 * PAYLOAD_LEN bytes, the bytes each activity inserts. */
typedef struct wf_input {
  uint32_t caller;
  uint32_t n;
  char pad[PAYLOAD_LEN - 8];
} wf_input;

/* Stamps of the caller's current workflow (mono_us). */
typedef struct stamps {
  int64_t exec_in;               /* execute entered */
  int64_t act_end[ACTIVITIES];   /* cruster_wf_activity returned */
  int64_t sql_us[ACTIVITIES];    /* the activity's INSERT alone */
  atomic_int nact;               /* activities run so far */
} stamps;

typedef struct caller {
  cruster_runtime *rt;
  int index, run;
  long n;
  samples lat, d_start, d_act[ACTIVITIES], d_sql, d_answer;
  long errors;
  atomic_long answered; /* every successful workflow, warm-up and tail included */
  long in_window;       /* answered in the measured window */
  stamps st;
} caller;

static caller *g_callers;
static int g_ncallers;
static atomic_int g_phase; /* 0 warm-up, 1 measuring, 2 stop */
static int64_t g_window_t0; /* mono_us when the measured window opened */
static atomic_long g_act_errors;

static caller *caller_of(const void *in, size_t len) {
  if (len != sizeof(wf_input)) return NULL;
  wf_input w;
  memcpy(&w, in, sizeof(w));
  return w.caller < (uint32_t)g_ncallers ? &g_callers[w.caller] : NULL;
}

static void act_insert(void *user, cruster_activity *act) {
  (void)user;
  size_t len;
  const void *in = cruster_activity_input(act, &len);
  PGconn *c = (PGconn *)cruster_activity_pg(act);
  if (!c) {
    cruster_activity_fail(act, CRUSTER_E_INTERNAL, "no transaction (not PostgreSQL storage?)");
    return;
  }
  const char *v[1] = {in};
  int l[1] = {(int)len}, f[1] = {1};
  int64_t t0 = mono_us();
  PGresult *r = PQexecParams(c, "INSERT INTO " SCHEMA ".wf_ins(v) VALUES ($1)", 1, NULL, v, l, f, 0);
  int64_t t1 = mono_us();
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) {
    if (atomic_fetch_add(&g_act_errors, 1) < 3)
      fprintf(stderr, "bench_workflow: activity INSERT: %s", PQerrorMessage(c));
    cruster_activity_fail(act, CRUSTER_E_INTERNAL, "insert failed");
    return;
  }
  caller *cl = caller_of(in, len);
  if (cl) {
    int k = atomic_load(&cl->st.nact);
    if (k < ACTIVITIES) cl->st.sql_us[k] = t1 - t0;
  }
  cruster_activity_reply(act, "k", 1);
}

static void wf_three(void *user, cruster_wf *wf) {
  (void)user;
  size_t len;
  const void *in = cruster_wf_input(wf, &len);
  caller *cl = caller_of(in, len);
  if (cl) {
    cl->st.exec_in = mono_us();
    atomic_store(&cl->st.nact, 0);
  }
  int rc = CRUSTER_OK;
  for (int i = 0; i < ACTIVITIES && rc == CRUSTER_OK; i++) {
    rc = cruster_wf_activity(wf, "insert", in, len, NULL, NULL, NULL);
    if (cl && rc == CRUSTER_OK) {
      cl->st.act_end[i] = mono_us();
      atomic_store(&cl->st.nact, i + 1);
    }
  }
  if (rc == CRUSTER_OK) cruster_wf_complete(wf, "done", 4);
  else if (!cruster_wf_stopped(wf)) cruster_wf_fail(wf, rc, "an activity failed");
}

/* ---- the transactional entity handler ---------------------------------------- */

/* "Ledger"/"post", CRUSTER_RPC_TRANSACTIONAL: the same 16-byte INSERT as
 * an activity, on the handler's transaction, committed with its reply. */
static void h_post(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *in = cruster_request_payload(req, &len);
  PGconn *c = (PGconn *)cruster_request_pg(req);
  if (!c) {
    cruster_request_fail(req, CRUSTER_E_INTERNAL, "no transaction (not PostgreSQL storage?)");
    return;
  }
  const char *v[1] = {in};
  int l[1] = {(int)len}, f[1] = {1};
  PGresult *r = PQexecParams(c, "INSERT INTO " SCHEMA ".wf_ins(v) VALUES ($1)", 1, NULL, v, l, f, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) {
    if (atomic_fetch_add(&g_act_errors, 1) < 3)
      fprintf(stderr, "bench_workflow: transactional handler INSERT: %s", PQerrorMessage(c));
    cruster_request_fail(req, CRUSTER_E_INTERNAL, "insert failed");
    return;
  }
  cruster_request_reply(req, "k", 1);
}

static int g_kind; /* 0: workflows, 1: transactional handler calls */

/* One caller of the transactional handler: one call at a time, over 16
 * entity ids of its own (as bench_pg_rpc's callers), no idempotency key. */
static void *caller_main_tx(caller *c) {
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.timeout_ms = 60000;
  char payload[PAYLOAD_LEN];
  memset(payload, 'p', sizeof(payload));
  while (atomic_load(&g_phase) < 2) {
    char id[32];
    snprintf(id, sizeof(id), "t%d-%ld", c->index, c->n++ % 16);
    void *out = NULL;
    size_t out_len = 0;
    cruster_error *err = NULL;
    int64_t t0 = mono_us();
    int st = cruster_send_sync(c->rt, "Ledger", id, "post", payload, sizeof(payload), &o, &out,
                               &out_len, &err);
    int64_t t1 = mono_us();
    if (st != CRUSTER_OK) {
      c->errors++;
      if (c->errors < 3)
        fprintf(stderr, "bench_workflow: transactional call: %s %s\n", cruster_status_name(st),
                err ? cruster_error_message(err) : "");
      cruster_error_free(err);
      sleep_ms(10);
      continue;
    }
    cruster_free(out);
    atomic_fetch_add(&c->answered, 1);
    if (atomic_load(&g_phase) != 1) continue;
    c->in_window++;
    if (t0 >= g_window_t0) samples_add(&c->lat, t1 - t0);
  }
  return NULL;
}

static void *caller_main(void *arg) {
  caller *c = arg;
  if (g_kind == 1) return caller_main_tx(c);
  cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
  o.timeout_ms = 60000;
  wf_input in;
  memset(&in, 'p', sizeof(in));
  in.caller = (uint32_t)c->index;
  while (atomic_load(&g_phase) < 2) {
    char key[64];
    int kl = snprintf(key, sizeof(key), "r%d-c%d-%ld", c->run, c->index, c->n);
    in.n = (uint32_t)c->n++;
    o.key = key;
    o.key_len = (size_t)kl;
    atomic_store(&c->st.nact, 0);
    c->st.exec_in = 0;
    void *out = NULL;
    size_t out_len = 0;
    cruster_error *err = NULL;
    int64_t t0 = mono_us();
    int st = cruster_workflow_execute_sync(c->rt, "Three", &in, sizeof(in), &o, &out, &out_len, &err);
    int64_t t1 = mono_us();
    if (st != CRUSTER_OK) {
      c->errors++;
      if (c->errors < 3)
        fprintf(stderr, "bench_workflow: execute: %s %s\n", cruster_status_name(st),
                err ? cruster_error_message(err) : "");
      cruster_error_free(err);
      sleep_ms(10);
      continue;
    }
    cruster_free(out);
    atomic_fetch_add(&c->answered, 1);
    if (atomic_load(&g_phase) != 1) continue;
    c->in_window++;
    /* latency of the workflows started and answered in the window only:
     * the first ones of a case pay the start-up (connections opened, worker
     * threads started) and belong to the warm-up */
    if (t0 < g_window_t0) continue;
    samples_add(&c->lat, t1 - t0);
    if (c->st.exec_in && atomic_load(&c->st.nact) == ACTIVITIES) {
      samples_add(&c->d_start, c->st.exec_in - t0);
      int64_t prev = c->st.exec_in;
      for (int i = 0; i < ACTIVITIES; i++) {
        samples_add(&c->d_act[i], c->st.act_end[i] - prev);
        samples_add(&c->d_sql, c->st.sql_us[i]);
        prev = c->st.act_end[i];
      }
      samples_add(&c->d_answer, t1 - prev);
    }
  }
  return NULL;
}

static cruster_config *bench_config(const char *max_idle) {
  cruster_config *cfg = cruster_config_new();
  cruster_error *err = NULL;
  cruster_config_set_logger(cfg, NULL, NULL, CRUSTER_LOG_WARN);
  if (cruster_config_set(cfg, "storage_auto_migrate", "true", &err) != CRUSTER_OK)
    die("config: %s%s", cruster_error_message(err), NULL);
  if (max_idle && cruster_config_set(cfg, "entity_max_idle_time", max_idle, &err) != CRUSTER_OK)
    die("config: %s%s", cruster_error_message(err), NULL);
  if (g_wf_pool > 0 && cruster_config_set_int(cfg, "workflow_pool_size", g_wf_pool, &err) != CRUSTER_OK)
    die("config: %s%s", cruster_error_message(err), NULL);
  /* BENCH_CONFIG: "key=value,key=value" settings, for experiments */
  const char *bc = getenv("BENCH_CONFIG");
  if (bc && *bc) {
    char buf[1024], *save = NULL;
    snprintf(buf, sizeof(buf), "%s", bc);
    for (char *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
      char *eq = strchr(kv, '=');
      if (!eq) die("BENCH_CONFIG: %s is not key=value%s", kv, NULL);
      *eq = 0;
      if (cruster_config_set(cfg, kv, eq + 1, &err) != CRUSTER_OK)
        die("BENCH_CONFIG: %s%s", cruster_error_message(err), NULL);
    }
  }
  return cfg;
}

/* A runtime with workflow `name` run by `fn`, or (fn NULL) entity type
 * `name` with the transactional handler "post". */
static cruster_runtime *bench_runtime(const char *name, cruster_workflow_fn fn,
                                      const char *max_idle) {
  cruster_error *err = NULL;
  cruster_config *cfg = bench_config(max_idle);
  cruster_storage *st = NULL;
  if (cruster_storage_pg_new(g_rt_conninfo, &st, &err) != CRUSTER_OK)
    die("storage: %s%s", cruster_error_message(err), NULL);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK)
    die("runtime_new: %s%s", cruster_error_message(err), NULL);
  cruster_config_free(cfg);
  if (fn) {
    cruster_workflow_def *d = NULL;
    if (cruster_workflow_def_new(name, fn, NULL, &d, &err) != CRUSTER_OK ||
        cruster_workflow_def_add_activity(d, "insert", act_insert, NULL, NULL, &err) != CRUSTER_OK ||
        cruster_runtime_register_workflow(rt, d, &err) != CRUSTER_OK)
      die("workflow: %s%s", cruster_error_message(err), NULL);
    cruster_workflow_def_free(d);
  } else {
    cruster_entity_def *d = NULL;
    if (cruster_entity_def_new(name, &d, &err) != CRUSTER_OK ||
        cruster_entity_def_add_rpc(d, "post", CRUSTER_RPC_TRANSACTIONAL, h_post, NULL, &err) !=
            CRUSTER_OK ||
        cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK)
      die("entity: %s%s", cruster_error_message(err), NULL);
    cruster_entity_def_free(d);
  }
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK)
    die("start: %s%s", cruster_error_message(err), NULL);
  return rt;
}

/* Empties the tables between cases, so each starts from the same state. */
static void reset_tables(void) {
  PGconn *c = connect_or_die(g_rt_conninfo);
  /* before the first runtime the cruster tables do not exist yet */
  exec_or_die(c, "DO $$ BEGIN IF to_regclass('cruster_journal') IS NOT NULL THEN"
                 " TRUNCATE cruster_messages, cruster_journal, cruster_deferreds, wf_ins;"
                 " END IF; END $$");
  PQfinish(c);
}

typedef struct wf_result {
  double wf_per_s;
  int64_t p50_us, p99_us;
  size_t workflows;
  long errors;
  double commits_per_wf;
  double msg_ins, msg_upd, msg_del, jr_ins, act_rows;
  int64_t b_start, b_act[ACTIVITIES], b_sql, b_answer;
  double workers_max;
  double cpu_us, server_cpu_us; /* per workflow: this process, its backends */
} wf_result;

/* kind 0: workflows "Three"; 1: calls of the transactional handler. */
static wf_result run_case(int kind, int conc, int run_no) {
  wf_result res;
  memset(&res, 0, sizeof(res));
  reset_tables();
  tstats s0 = read_stats();
  g_kind = kind;
  cruster_runtime *rt = kind == 0 ? bench_runtime("Three", wf_three, NULL)
                                  : bench_runtime("Ledger", NULL, NULL);

  g_callers = calloc((size_t)conc, sizeof(caller));
  g_ncallers = conc;
  pthread_t *th = calloc((size_t)conc, sizeof(pthread_t));
  atomic_store(&g_phase, 0);
  for (int i = 0; i < conc; i++) {
    g_callers[i].rt = rt;
    g_callers[i].index = i;
    g_callers[i].run = run_no;
    pthread_create(&th[i], NULL, caller_main, &g_callers[i]);
  }
  /* warm-up: every caller has had an answer, then 500 ms more */
  for (int64_t until = mono_us() + 120 * 1000000LL; mono_us() < until;) {
    int all_answered = 1;
    for (int i = 0; i < conc && all_answered; i++)
      if (atomic_load(&g_callers[i].answered) == 0) all_answered = 0;
    if (all_answered) break;
    sleep_ms(20);
  }
  sleep_ms(500);
  cpu_sampler cs;
  sampler_start(&cs);
  sleep_ms(150); /* its first sample: the backends' baseline */
  int64_t cpu0 = rusage_us(RUSAGE_SELF);
  int64_t t0 = mono_us();
  g_window_t0 = t0;
  atomic_store(&g_phase, 1);
  double wmax = 0;
  for (int64_t end = t0 + (int64_t)g_seconds * 1000000; mono_us() < end;) {
    sleep_ms(100);
    double w = metric(rt, "cluster_worker_threads", NULL);
    if (w > wmax) wmax = w;
  }
  atomic_store(&g_phase, 2);
  int64_t t1 = mono_us();
  int64_t cpu1 = rusage_us(RUSAGE_SELF);
  int64_t server_cpu = sampler_stop(&cs);
  for (int i = 0; i < conc; i++) pthread_join(th[i], NULL);
  long in_window = 0;
  samples all = {0}, bs = {0}, ba[ACTIVITIES] = {{0}}, bq = {0}, bn = {0};
  for (int i = 0; i < conc; i++) {
    caller *c = &g_callers[i];
    for (size_t k = 0; k < c->lat.n; k++) samples_add(&all, c->lat.v[k]);
    for (size_t k = 0; k < c->d_start.n; k++) samples_add(&bs, c->d_start.v[k]);
    for (int a = 0; a < ACTIVITIES; a++)
      for (size_t k = 0; k < c->d_act[a].n; k++) samples_add(&ba[a], c->d_act[a].v[k]);
    for (size_t k = 0; k < c->d_sql.n; k++) samples_add(&bq, c->d_sql.v[k]);
    for (size_t k = 0; k < c->d_answer.n; k++) samples_add(&bn, c->d_answer.v[k]);
    res.errors += c->errors;
    res.workflows += (size_t)atomic_load(&c->answered);
    in_window += c->in_window;
    free(c->lat.v);
    free(c->d_start.v);
    for (int a = 0; a < ACTIVITIES; a++) free(c->d_act[a].v);
    free(c->d_sql.v);
    free(c->d_answer.v);
  }
  cruster_runtime_free(rt); /* closes its connections: their statistics flush */
  tstats s1 = read_stats();
  qsort(all.v, all.n, sizeof(int64_t), cmp_i64);
  res.wf_per_s = (double)in_window * 1e6 / (double)(t1 - t0);
  res.cpu_us = in_window > 0 ? (double)(cpu1 - cpu0) / (double)in_window : 0;
  res.server_cpu_us = in_window > 0 && server_cpu >= 0 ? (double)server_cpu / (double)in_window : -1;
  res.p50_us = pct(all.v, all.n, 0.50);
  res.p99_us = pct(all.v, all.n, 0.99);
  double n = res.workflows > 0 ? (double)res.workflows : 1;
  /* every workflow answered in the case (warm-up and tail included) vs the
   * commits of the whole case (a few are the runtime's own start, polls
   * and stop) */
  res.commits_per_wf = (double)(s1.xact_commit - s0.xact_commit) / n;
  res.msg_ins = (double)(s1.msg_ins - s0.msg_ins) / n;
  res.msg_upd = (double)(s1.msg_upd - s0.msg_upd) / n;
  res.msg_del = (double)(s1.msg_del - s0.msg_del) / n;
  res.jr_ins = (double)(s1.jr_ins - s0.jr_ins) / n;
  res.act_rows = (double)(s1.act_ins - s0.act_ins) / n;
  res.b_start = samples_p50(&bs);
  for (int a = 0; a < ACTIVITIES; a++) res.b_act[a] = samples_p50(&ba[a]);
  res.b_sql = samples_p50(&bq);
  res.b_answer = samples_p50(&bn);
  res.workers_max = wmax;
  free(all.v);
  free(bs.v);
  for (int a = 0; a < ACTIVITIES; a++) free(ba[a].v);
  free(bq.v);
  free(bn.v);
  free(g_callers);
  g_callers = NULL;
  g_ncallers = 0;
  free(th);
  return res;
}

/* ---- 100,000 asleep ---------------------------------------------------------- */

static atomic_long g_suspended; /* runs of the sleeper that suspended */
static atomic_int g_starters_done;

static void wf_sleeper(void *user, cruster_wf *wf) {
  (void)user;
  int rc = cruster_wf_sleep(wf, SLEEP_MS, NULL);
  if (rc == CRUSTER_E_SUSPENDED) atomic_fetch_add(&g_suspended, 1);
  if (rc == CRUSTER_OK) cruster_wf_complete(wf, "woke", 4);
  else if (!cruster_wf_stopped(wf)) cruster_wf_fail(wf, rc, "sleep failed");
}

typedef struct starter {
  cruster_runtime *rt;
  long from, to;
  long errors;
} starter;

static void *starter_main(void *arg) {
  starter *s = arg;
  cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
  o.timeout_ms = 120000;
  for (long i = s->from; i < s->to; i++) {
    char key[32];
    int kl = snprintf(key, sizeof(key), "z%ld", i);
    o.key = key;
    o.key_len = (size_t)kl;
    cruster_error *err = NULL;
    int st = cruster_workflow_start(s->rt, "Sleeper", key, (size_t)kl, &o, NULL, &err);
    if (st != CRUSTER_OK) {
      if (s->errors++ < 3)
        fprintf(stderr, "bench_workflow: start: %s %s\n", cruster_status_name(st),
                err ? cruster_error_message(err) : "");
      cruster_error_free(err);
      i--; /* try it again */
      sleep_ms(50);
      if (s->errors > 1000) break;
    }
  }
  atomic_fetch_add(&g_starters_done, 1);
  return NULL;
}

typedef struct asleep_result {
  long executions, parked;
  double start_s, parked_s;
  long rss_before_kb, threads_before, rss_kb, hwm_kb, threads, threads_peak;
  double entities, workers;
  long errors;
  long journal_rows;
  double commits_per_exec; /* runtime start to free, over the executions */
} asleep_result;

static long parked_count(PGconn *c) {
  return (long)scalar_or_die(c,
                             "SELECT count(*) FROM cruster_messages WHERE tag = 'execute'"
                             " AND NOT processed AND claimed_by IS NULL"
                             " AND deliver_at > now() + interval '30 minutes'");
}

static asleep_result run_asleep(long n) {
  asleep_result res;
  memset(&res, 0, sizeof(res));
  res.executions = n;
  reset_tables();
  atomic_store(&g_suspended, 0);
  atomic_store(&g_starters_done, 0);
  /* The instance of a parked execution stays in memory until its entity's
   * max idle time (60 s by default) evicts it: how many are resident when
   * the count is read depends on how fast they were started. Held for an
   * hour here, so the reading is the worst case -- every execution's
   * instance resident -- whatever the machine's speed. */
  tstats x0 = read_stats();
  cruster_runtime *rt = bench_runtime("Sleeper", wf_sleeper, g_asleep_idle);
  long hwm;
  sleep_ms(500);
  proc_status(&res.rss_before_kb, &hwm, &res.threads_before);
  int ns = g_starters > 0 ? g_starters : 1;
  starter *ss = calloc((size_t)ns, sizeof(starter));
  pthread_t *th = calloc((size_t)ns, sizeof(pthread_t));
  int64_t t0 = mono_us();
  for (int i = 0; i < ns; i++) {
    ss[i].rt = rt;
    ss[i].from = n * i / ns;
    ss[i].to = n * (i + 1) / ns;
    pthread_create(&th[i], NULL, starter_main, &ss[i]);
  }
  /* while they start: the peak thread count (a thread per execution would
   * show here; the worker pool's growth while workers wait does too) */
  while (atomic_load(&g_starters_done) < ns) {
    long rss, hwm2, thr;
    proc_status(&rss, &hwm2, &thr);
    if (thr > res.threads_peak) res.threads_peak = thr;
    sleep_ms(100);
  }
  for (int i = 0; i < ns; i++) {
    pthread_join(th[i], NULL);
    res.errors += ss[i].errors;
  }
  int64_t t1 = mono_us();
  res.start_s = (double)(t1 - t0) / 1e6;
  fprintf(stderr, "bench_workflow: %ld started in %.1f s (%ld suspended runs so far)\n", n,
          res.start_s, atomic_load(&g_suspended));
  PGconn *c = connect_or_die(g_rt_conninfo);
  int64_t deadline = t1 + 900 * 1000000LL, last_log = t1;
  for (;;) {
    res.parked = parked_count(c);
    if (res.parked >= n || mono_us() > deadline) break;
    if (mono_us() - last_log > 10 * 1000000LL) {
      last_log = mono_us();
      fprintf(stderr, "bench_workflow: %ld of %ld parked\n", res.parked, n);
    }
    sleep_ms(250);
  }
  int64_t t2 = mono_us();
  res.parked_s = (double)(t2 - t0) / 1e6;
  sleep_ms(1000); /* let the last parks' bookkeeping settle */
  proc_status(&res.rss_kb, &res.hwm_kb, &res.threads);
  res.entities = metric(rt, "cluster_entities", "entity_type=\"Workflow/Sleeper\"");
  res.workers = metric(rt, "cluster_worker_threads", NULL);
  res.journal_rows = (long)scalar_or_die(c, "SELECT count(*) FROM cruster_journal");
  PQfinish(c);
  free(ss);
  free(th);
  cruster_runtime_free(rt); /* the executions stay stored, asleep */
  tstats x1 = read_stats();
  res.commits_per_exec = (double)(x1.xact_commit - x0.xact_commit) / (double)n;
  reset_tables();
  return res;
}

/* ---- pgbench ------------------------------------------------------------------ */

typedef struct pgb_result {
  double tps;
  int64_t p50_us, p99_us;
  long long commits;
  long long transactions;
  double cpu_us, server_cpu_us; /* per transaction: pgbench, its backends */
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
  fprintf(f, "INSERT INTO " PGB_SCHEMA ".bench_ins(v) VALUES ('\\x");
  for (int i = 0; i < PAYLOAD_LEN; i++) fprintf(f, "70");
  fprintf(f, "'::bytea);\n");
  fclose(f);
  int jobs = clients < 4 ? clients : 4;
  char line[1024];
  char all[8192] = "";
  FILE *p;
  /* On a loaded machine 64 clients may spend the whole -T connecting (0
   * transactions): then again, longer. */
  for (int attempt = 0, secs = g_seconds; attempt < 3 && res.tps <= 0; attempt++, secs *= 2) {
    long long x0 = read_stats().xact_commit;
    int64_t ch0 = rusage_us(RUSAGE_CHILDREN);
    cpu_sampler cs;
    sampler_start(&cs);
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && '%s' -n -h '%s' -p '%s' -U '%s' -c %d -j %d -T %d -f '%s' -l "
             "--log-prefix='%s' " BENCH_DB " 2>&1",
             dir, g_pgbench, g_host, g_port, g_user, clients, jobs, secs, script, prefix);
    p = popen(cmd, "r");
    if (!p) die("popen %s%s", cmd, NULL);
    all[0] = 0;
    while (fgets(line, sizeof(line), p)) {
      if (strlen(all) + strlen(line) < sizeof(all)) strcat(all, line);
      double tps;
      if (sscanf(line, "tps = %lf", &tps) == 1) res.tps = tps;
      long long n;
      if (sscanf(line, "number of transactions actually processed: %lld", &n) == 1)
        res.transactions = n;
    }
    int rc = pclose(p);
    int64_t server_cpu = sampler_stop(&cs);
    int64_t client_cpu = rusage_us(RUSAGE_CHILDREN) - ch0;
    if (rc != 0) die("pgbench failed:\n%s%s", all, NULL);
    res.cpu_us = res.transactions > 0 ? (double)client_cpu / (double)res.transactions : 0;
    res.server_cpu_us =
        res.transactions > 0 && server_cpu >= 0 ? (double)server_cpu / (double)res.transactions : -1;
    res.commits = read_stats().xact_commit - x0;
    if (res.tps <= 0) {
      fprintf(stderr, "bench_workflow: pgbench -c %d -T %d did no transaction; again\n", clients, secs);
      snprintf(cmd, sizeof(cmd), "rm -f '%s'.*", prefix);
      if (system(cmd) != 0) {
      }
    }
  }
  if (res.tps <= 0) die("pgbench did no transaction:\n%s%s", all, NULL);
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

static void print_pgbench(int n, const char *when, const pgb_result *p) {
  printf("{\"bench\":\"pgbench_insert\",\"clients\":%d,\"when\":\"%s\",\"seconds\":%d,"
         "\"tps\":%.1f,\"p50_us\":%lld,\"p99_us\":%lld,\"commits_per_tx\":%.3f,"
         "\"cpu_us_per_tx\":%.1f,\"server_cpu_us_per_tx\":%.1f}\n",
         n, when, g_seconds, p->tps, (long long)p->p50_us, (long long)p->p99_us,
         p->transactions > 0 ? (double)p->commits / (double)p->transactions : 0.0, p->cpu_us,
         p->server_cpu_us);
  fflush(stdout);
}

/* ---- targets ------------------------------------------------------------------- */

static void target(const char *name, double value, const char *goal, int met) {
  printf("{\"bench\":\"target\",\"name\":\"%s\",\"value\":%.3f,\"target\":\"%s\",\"meets_target\":%s}\n",
         name, value, goal, met ? "true" : "false");
}

/* ---- main ---------------------------------------------------------------------- */

int main(void) {
  const char *base = getenv("CRUSTER_TEST_PG");
  if (!base || !*base)
    die("CRUSTER_TEST_PG is not set (scripts/dev services start; source .dev/env)%s%s", NULL, NULL);
  const char *s = getenv("BENCH_QUICK");
  if (s && atoi(s) > 0) {
    g_seconds = 2;
    g_asleep = 10000;
  }
  s = getenv("BENCH_SECONDS");
  if (s && atoi(s) > 0) g_seconds = atoi(s);
  s = getenv("BENCH_ASLEEP");
  if (s && *s) g_asleep = atol(s);
  s = getenv("BENCH_STARTERS");
  if (s && atoi(s) > 0) g_starters = atoi(s);
  s = getenv("BENCH_TX");
  if (s && *s) g_tx = atoi(s) != 0;
  s = getenv("BENCH_ASLEEP_IDLE");
  if (s && *s) g_asleep_idle = strcmp(s, "default") == 0 ? NULL : s;
  s = getenv("BENCH_WORKFLOW_POOL");
  if (s && atoi(s) > 0) g_wf_pool = atoi(s);
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
  /* BENCH_PG_OPTIONS: more settings for the runtime's sessions, e.g.
   * "-clog_min_duration_statement=0" to see every statement's server time
   * in the server log (a diagnosis, not for measured runs) */
  s = getenv("BENCH_PG_OPTIONS");
  snprintf(g_rt_conninfo, sizeof(g_rt_conninfo), "%s options='-csearch_path=" SCHEMA "%s%s'",
           g_conninfo, s && *s ? " " : "", s && *s ? s : "");
  c = connect_or_die(g_conninfo);
  exec_or_die(c, "DROP SCHEMA IF EXISTS " SCHEMA " CASCADE");
  exec_or_die(c, "DROP SCHEMA IF EXISTS " PGB_SCHEMA " CASCADE");
  exec_or_die(c, "CREATE SCHEMA " SCHEMA);
  exec_or_die(c, "CREATE SCHEMA " PGB_SCHEMA);
  /* the activities' table and pgbench's: the same shape */
  exec_or_die(c, "CREATE TABLE " SCHEMA ".wf_ins(id bigserial PRIMARY KEY, v bytea)");
  exec_or_die(c, "CREATE TABLE " PGB_SCHEMA ".bench_ins(id bigserial PRIMARY KEY, v bytea)");
  PQfinish(c);

  char dir[] = "/tmp/bench_workflow.XXXXXX";
  if (!mkdtemp(dir)) die("mkdtemp%s%s", NULL, NULL);
  chmod(dir, 0755);

  int counts[16], ncounts = 0;
  const char *cl = getenv("BENCH_CONCURRENCY");
  char clbuf[128];
  snprintf(clbuf, sizeof(clbuf), "%s", cl && *cl ? cl : "1,16,64");
  char *save = NULL;
  for (char *t = strtok_r(clbuf, ",", &save); t && ncounts < 16; t = strtok_r(NULL, ",", &save))
    if (atoi(t) > 0) counts[ncounts++] = atoi(t);
  wf_result rr[16], tx[16];
  pgb_result pr[16];
  memset(tx, 0, sizeof(tx));
  int failed = 0, i1 = -1, i64 = -1;
  for (int i = 0; i < ncounts; i++) {
    int n = counts[i];
    if (n == 1) i1 = i;
    if (n == 64) i64 = i;
    /* pgbench right before and right after the workflows: on a shared
     * machine either run can land in a bad moment; the ratios take the
     * better of the two (the higher tps, the lower p50), which is the
     * stricter comparison for the workflows */
    pgb_result before = run_pgbench(n, dir);
    print_pgbench(n, "before", &before);
    rr[i] = run_case(0, n, i);
    wf_result *w = &rr[i];
    printf("{\"bench\":\"workflow\",\"concurrency\":%d,\"activities\":%d,\"seconds\":%d,"
           "\"wf_per_s\":%.1f,\"p50_us\":%lld,\"p99_us\":%lld,\"workflows\":%zu,\"errors\":%ld,"
           "\"worker_threads_max_seen\":%.0f,\"cpu_us_per_wf\":%.1f,\"server_cpu_us_per_wf\":%.1f}\n",
           n, ACTIVITIES, g_seconds, w->wf_per_s, (long long)w->p50_us, (long long)w->p99_us,
           w->workflows, w->errors, w->workers_max, w->cpu_us, w->server_cpu_us);
    printf("{\"bench\":\"workflow_commits\",\"concurrency\":%d,\"commits_per_wf\":%.3f,"
           "\"messages_ins_per_wf\":%.3f,\"messages_upd_per_wf\":%.3f,\"journal_ins_per_wf\":%.3f,"
           "\"activity_rows_per_wf\":%.3f}\n",
           n, w->commits_per_wf, w->msg_ins, w->msg_upd, w->jr_ins, w->act_rows);
    printf("{\"bench\":\"workflow_breakdown\",\"concurrency\":%d,\"start_to_execute_p50_us\":%lld,"
           "\"act1_p50_us\":%lld,\"act2_p50_us\":%lld,\"act3_p50_us\":%lld,\"act_sql_p50_us\":%lld,"
           "\"execute_to_answer_p50_us\":%lld}\n",
           n, (long long)w->b_start, (long long)w->b_act[0], (long long)w->b_act[1],
           (long long)w->b_act[2], (long long)w->b_sql, (long long)w->b_answer);
    fflush(stdout);
    if (w->errors || atomic_load(&g_act_errors)) failed = 1;
    wf_result *x = &tx[i];
    if (g_tx) {
      tx[i] = run_case(1, n, i);
      printf("{\"bench\":\"tx_rpc\",\"concurrency\":%d,\"seconds\":%d,\"ops_per_s\":%.1f,"
             "\"p50_us\":%lld,\"p99_us\":%lld,\"calls\":%zu,\"errors\":%ld,"
             "\"commits_per_call\":%.3f,\"messages_ins_per_call\":%.3f,"
             "\"messages_del_per_call\":%.3f,\"rows_per_call\":%.3f,\"cpu_us_per_call\":%.1f,"
             "\"server_cpu_us_per_call\":%.1f}\n",
             n, g_seconds, x->wf_per_s, (long long)x->p50_us, (long long)x->p99_us, x->workflows,
             x->errors, x->commits_per_wf, x->msg_ins, x->msg_del, x->act_rows, x->cpu_us,
             x->server_cpu_us);
      fflush(stdout);
      if (x->errors || atomic_load(&g_act_errors)) failed = 1;
    }
    pgb_result after = run_pgbench(n, dir);
    print_pgbench(n, "after", &after);
    pr[i] = before;
    if (after.tps > pr[i].tps) pr[i].tps = after.tps;
    if (after.p50_us > 0 && after.p50_us < pr[i].p50_us) pr[i].p50_us = after.p50_us;
    /* CPU, client + server, per workflow vs per pgbench transaction (the
     * cheaper pgbench run): what the wf/s ratio tends to when both
     * saturate the machine's cores, whatever else runs on it */
    double pc = before.cpu_us + before.server_cpu_us, pa = after.cpu_us + after.server_cpu_us;
    double pcpu = before.server_cpu_us < 0 ? -1 : (after.server_cpu_us >= 0 && pa < pc ? pa : pc);
    double wcpu = w->server_cpu_us < 0 ? -1 : w->cpu_us + w->server_cpu_us;
    printf("{\"bench\":\"workflow_vs_pgbench\",\"concurrency\":%d,\"pgbench_tps\":%.1f,"
           "\"pgbench_p50_us\":%lld,\"wf_ratio\":%.3f,\"p50_ratio\":%.3f,"
           "\"cpu_per_wf_vs_tx\":%.2f,\"cpu_bound_wf_ratio\":%.3f}\n",
           n, pr[i].tps, (long long)pr[i].p50_us, pr[i].tps > 0 ? w->wf_per_s / pr[i].tps : 0.0,
           pr[i].p50_us > 0 ? (double)w->p50_us / (double)pr[i].p50_us : 0.0,
           pcpu > 0 && wcpu > 0 ? wcpu / pcpu : -1.0, pcpu > 0 && wcpu > 0 ? pcpu / wcpu : -1.0);
    if (n == 1) {
      /* The floor of one workflow's latency at 1, in round trips: the
       * start's insert; the first activity's BEGIN; each activity's INSERT;
       * the COMMIT of an activity with the next one's BEGIN (2); the last
       * activity's journal row, the answer and COMMIT -- plus 4 hand-offs
       * between threads (caller -> loop -> worker -> loop -> caller). */
      int64_t rtt = round_trip_p50_us();
      int trips = 1 + 1 + ACTIVITIES + (ACTIVITIES - 1) + 1;
      printf("{\"bench\":\"workflow_latency_model\",\"concurrency\":1,\"round_trips_per_wf\":%d,"
             "\"thread_hops_per_wf\":4,\"pg_round_trip_p50_us\":%lld,\"round_trips_floor_us\":%lld,"
             "\"floor_vs_pgbench_p50\":%.2f,\"wf_p50_vs_floor\":%.2f}\n",
             trips, (long long)rtt, (long long)(trips * rtt),
             pr[i].p50_us > 0 && rtt > 0 ? (double)(trips * rtt) / (double)pr[i].p50_us : -1.0,
             rtt > 0 ? (double)w->p50_us / (double)(trips * rtt) : -1.0);
    }
    if (g_tx) {
      double xcpu = x->server_cpu_us < 0 ? -1 : x->cpu_us + x->server_cpu_us;
      printf("{\"bench\":\"tx_rpc_vs_pgbench\",\"concurrency\":%d,\"ops_ratio\":%.3f,"
             "\"p50_ratio\":%.3f,\"cpu_per_call_vs_tx\":%.2f,\"cpu_bound_ops_ratio\":%.3f}\n",
             n, pr[i].tps > 0 ? x->wf_per_s / pr[i].tps : 0.0,
             pr[i].p50_us > 0 ? (double)x->p50_us / (double)pr[i].p50_us : 0.0,
             pcpu > 0 && xcpu > 0 ? xcpu / pcpu : -1.0, pcpu > 0 && xcpu > 0 ? pcpu / xcpu : -1.0);
    }
    fflush(stdout);
  }

  asleep_result ar;
  memset(&ar, 0, sizeof(ar));
  if (g_asleep > 0) {
    ar = run_asleep(g_asleep);
    printf("{\"bench\":\"workflow_asleep\",\"executions\":%ld,\"parked\":%ld,\"starters\":%d,"
           "\"entity_max_idle_time\":\"%s\",\"start_s\":%.1f,\"parked_s\":%.1f,\"starts_per_s\":%.0f,\"rss_before_kb\":%ld,"
           "\"rss_kb\":%ld,\"hwm_kb\":%ld,\"threads_before\":%ld,\"threads\":%ld,\"threads_peak_starting\":%ld,"
           "\"worker_threads\":%.0f,\"entities_in_memory\":%.0f,\"journal_rows\":%ld,"
           "\"commits_per_execution\":%.2f,\"start_errors\":%ld}\n",
           ar.executions, ar.parked, g_starters, g_asleep_idle ? g_asleep_idle : "default",
           ar.start_s, ar.parked_s,
           ar.start_s > 0 ? (double)ar.executions / ar.start_s : 0.0, ar.rss_before_kb, ar.rss_kb,
           ar.hwm_kb, ar.threads_before, ar.threads, ar.threads_peak, ar.workers, ar.entities, ar.journal_rows,
           ar.commits_per_exec, ar.errors);
    fflush(stdout);
    if (ar.parked < ar.executions) failed = 1;
  }

  if (i64 >= 0) {
    target("commits_per_wf_64", rr[i64].commits_per_wf, "<=4", rr[i64].commits_per_wf <= 4.0);
    double r = pr[i64].tps > 0 ? rr[i64].wf_per_s / pr[i64].tps : 0;
    target("wf_per_s_64_vs_pgbench_tps", r, ">=0.12", r >= 0.12);
  }
  if (i1 >= 0) {
    double r = pr[i1].p50_us > 0 ? (double)rr[i1].p50_us / (double)pr[i1].p50_us : 0;
    target("p50_1_vs_pgbench_p50", r, "<=6", r > 0 && r <= 6.0);
  }
  if (g_asleep > 0) {
    double mb = (double)ar.rss_kb / 1024.0;
    char goal[64];
    snprintf(goal, sizeof(goal), "<=100 MB with %ld asleep", ar.executions);
    target("asleep_rss_mb", mb, goal, ar.parked >= ar.executions && mb <= 100.0);
    /* no thread per execution: what the runtime added stays within its
     * worker pool's cap (64) -- 100,000 executions would need 100,000 */
    long added = ar.threads - ar.threads_before;
    target("asleep_threads_added", (double)added, "<=64 (worker_threads_max), not one per execution",
           ar.parked >= ar.executions && added <= 64);
  }
  if (i64 >= 0 && g_tx) {
    double r = pr[i64].tps > 0 ? tx[i64].wf_per_s / pr[i64].tps : 0;
    target("tx_rpc_64_vs_pgbench_tps", r, ">=0.5", r >= 0.5);
  }
  fflush(stdout);

  rmdir(dir);
  c = connect_or_die(g_conninfo);
  exec_or_die(c, "DROP SCHEMA IF EXISTS " SCHEMA " CASCADE");
  exec_or_die(c, "DROP SCHEMA IF EXISTS " PGB_SCHEMA " CASCADE");
  PQfinish(c);
  return failed;
}
