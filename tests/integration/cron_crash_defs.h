/* The cron job of the ClusterCron crash tests (test_cron_crash.c and its
 * child, child_cron_runner.c): "tick", every second. Its handler records
 * each run in app_runs (slot, pid) and the slot in app_slots (PRIMARY KEY,
 * an idempotent insert keyed by the slot: a second run of one slot adds no
 * row), then, on its `block_at`-th run, blocks forever -- the process is
 * killed there, in the middle of the handler, after its effects. */
#ifndef CRON_CRASH_DEFS_H
#define CRON_CRASH_DEFS_H

#include <cruster/cruster.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CCD_APP_TABLES                                                  \
  "CREATE TABLE app_slots (slot BIGINT PRIMARY KEY, slot_id TEXT NOT NULL);" \
  "CREATE TABLE app_runs (slot BIGINT NOT NULL, pid INT NOT NULL)"

static struct {
  char conninfo[1536];
  PGconn *conn; /* the scheduler's thread only (one at a time) */
  int block_at; /* 0 = never */
  atomic_int runs;
} ccd;

static int ccd_handler(void *user, int64_t slot_ms, const char *slot_id) {
  (void)user;
  if (!ccd.conn) ccd.conn = PQconnectdb(ccd.conninfo);
  char slot[32], pid[16];
  snprintf(slot, sizeof(slot), "%lld", (long long)slot_ms);
  snprintf(pid, sizeof(pid), "%ld", (long)getpid());
  const char *v1[2] = {slot, pid};
  PGresult *r = PQexecParams(ccd.conn, "INSERT INTO app_runs (slot, pid) VALUES ($1, $2)", 2, NULL,
                             v1, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  const char *v2[2] = {slot, slot_id};
  r = PQexecParams(ccd.conn,
                   "INSERT INTO app_slots (slot, slot_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                   2, NULL, v2, NULL, NULL, 0);
  ok = ok && PQresultStatus(r) == PGRES_COMMAND_OK;
  PQclear(r);
  if (!ok) return -1000;
  int n = atomic_fetch_add(&ccd.runs, 1) + 1;
  if (ccd.block_at > 0 && n == ccd.block_at)
    for (;;) pause(); /* killed here */
  return CRUSTER_OK;
}

static cruster_status ccd_register(cruster_runtime *rt, int32_t missed, cruster_error **err) {
  cruster_cron_job_opts o = CRUSTER_CRON_JOB_OPTS_INIT;
  o.missed = missed;
  return cruster_runtime_register_cron_job(rt, "tick", "* * * * * *", ccd_handler, NULL, &o, err);
}

#endif
