/* PostgreSQL storage: a connection. A pool of non-blocking libpq
 * connections driven by uv_poll on the loop thread: each connects, enters
 * pipeline mode and prepares every statement (a first job), then sends the
 * jobs pg_batch.c builds and reads their results back in order. A broken
 * connection fails its jobs in flight, keeps its queue and reconnects
 * after a backoff. */
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/log.h"
#include "core/util.h"
#include "storage/pg_store.h"

static void on_poll(uv_poll_t *h, int status, int events);

/* ---- the connection ------------------------------------------------------------------- */

static void poll_closed(uv_handle_t *h) { free(h); }

static void conn_watch(pg_conn *c, int events) {
  int fd = c->pq ? PQsocket(c->pq) : -1;
  if (c->poll && (fd != c->fd || events == 0)) {
    uv_poll_stop(c->poll);
    uv_close((uv_handle_t *)c->poll, poll_closed);
    c->poll = NULL;
  }
  if (events == 0 || fd < 0) return;
  if (!c->poll) {
    c->poll = malloc(sizeof(*c->poll));
    if (!c->poll || uv_poll_init(c->st->host.loop, c->poll, fd) != 0) {
      free(c->poll);
      c->poll = NULL;
      return;
    }
    c->poll->data = c;
    c->fd = fd;
    c->events = 0;
  }
  if (events != c->events) {
    uv_poll_start(c->poll, events, on_poll);
    c->events = events;
  }
}

void pg_job_free(pg_job *j) {
  for (int i = 0; i < j->nq; i++) PQclear(j->slots[i]);
  free(j->ops);
  free(j);
}

pg_job *pg_job_new(int nq, size_t nops) {
  pg_job *j = calloc(1, sizeof(*j) + (size_t)nq * sizeof(PGresult *));
  if (!j) return NULL;
  j->nq = nq;
  if (nops && !(j->ops = calloc(nops, sizeof(*j->ops)))) {
    free(j);
    return NULL;
  }
  return j;
}

void pg_job_push(pg_conn *c, pg_job *j) {
  j->next = NULL;
  if (c->jobs_tail) c->jobs_tail->next = j; else c->jobs_head = j;
  c->jobs_tail = j;
  c->njobs++;
}

static pg_job *job_pop(pg_conn *c) {
  pg_job *j = c->jobs_head;
  if (!j) return NULL;
  c->jobs_head = j->next;
  if (!c->jobs_head) c->jobs_tail = NULL;
  c->njobs--;
  j->next = NULL;
  return j;
}

static void on_retry_timer(uv_timer_t *t) { pg_conn_connect(t->data); }

/* The connection broke (or could not be opened): fail the jobs in flight,
 * keep the queue, reconnect. */
void pg_conn_fail(pg_conn *c, const char *why) {
  pg_store *st = c->st;
  int was = c->state;
  char msg[512];
  /* An attempt fails (the server cannot be reached, refuses us or our
   * statements) or an accepted connection is lost (its backend terminated,
   * a restart). */
  int failed_attempt = (was == C_CONNECTING && !c->accepted) || c->refused;
  snprintf(msg, sizeof(msg), "%s to PostgreSQL: %s",
           failed_attempt ? "cannot connect" : "lost the connection", why);
  core_text_one_line(msg); /* libpq's text ends with a newline, may span lines */
  if (!st->closing)
    core_log(st->lg, CRUSTER_LOG_WARN, "storage", "connection %d: %s", c->idx, msg);
  pg_job *jobs = c->jobs_head;
  c->jobs_head = c->jobs_tail = NULL;
  c->njobs = 0;
  pg_redo_requeue(c); /* not sent again yet: they wait for the new connection */
  conn_watch(c, 0);
  if (c->pq) PQfinish(c->pq);
  c->pq = NULL;
  c->state = C_DOWN;
  int in_doubt = 0;
  for (pg_job *j = jobs; j; j = j->next)
    for (size_t i = 0; i < j->nops; i++)
      in_doubt |= j->ops[i]->kind == OP_POLL || (j->ops[i]->kind == OP_SAVE && j->ops[i]->claim) ||
                  j->ops[i]->kind == OP_RELEASE || j->ops[i]->kind == OP_UNCLAIM ||
                  j->ops[i]->kind == OP_PARK ||
                  (j->ops[i]->kind == OP_REPLY && !j->ops[i]->cb.done);
  /* Fail first: a delivery whose insert failed is no longer counted as
   * handled here when the reconcile takes its set. */
  while (jobs) {
    pg_job *j = jobs;
    jobs = j->next;
    for (size_t i = 0; i < j->nops; i++)
      pg_op_fail(st, j->ops[i], st->closing ? CRUSTER_E_SHUTTING_DOWN : CRUSTER_E_PERSISTENCE, msg);
    j->nops = 0;
    pg_job_free(j);
  }
  if (st->closing) return;
  if (in_doubt) pg_new_claim_token(st);
  else pg_recon_kick(st); /* its jobs under an earlier token are gone */
  core_metric_add(st->m_reconnects, 1);
  /* One base backoff after losing a connection the server had accepted;
   * doubling up to 2 s while attempts fail. */
  if (failed_attempt)
    c->backoff = c->backoff ? (c->backoff * 2 > 2000 ? 2000 : c->backoff * 2) : 50;
  else
    c->backoff = 50;
  c->refused = c->accepted = 0;
  uv_timer_start(&c->timer, on_retry_timer, (uint64_t)c->backoff, 0);
}

void pg_conn_flush(pg_conn *c) {
  int r = PQflush(c->pq);
  if (r < 0) {
    pg_conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  c->want_write = r == 1;
  conn_watch(c, UV_READABLE | (c->want_write ? UV_WRITABLE : 0));
}

/* A job's Sync arrived. The statement preparation makes the connection
 * ready; the other jobs' results go to their operations (pg_batch.c). */
static void conn_job_done(pg_conn *c, pg_job *j) {
  pg_store *st = c->st;
  if (!j->prepare) {
    pg_job_done(c, j);
    return;
  }
  const char *bad = NULL;
  for (int i = 0; i < j->nq && !bad; i++) {
    ExecStatusType s = j->slots[i] ? PQresultStatus(j->slots[i]) : PGRES_FATAL_ERROR;
    if (s != PGRES_COMMAND_OK) bad = j->slots[i] ? PQresultErrorMessage(j->slots[i]) : "no result";
  }
  if (bad) {
    char msg[512];
    snprintf(msg, sizeof(msg), "preparing statements failed: %s", bad);
    pg_job_free(j);
    c->refused = 1;
    pg_conn_fail(c, msg);
    return;
  }
  pg_job_free(j);
  c->state = C_READY;
  c->backoff = 0;
  core_log(st->lg, CRUSTER_LOG_DEBUG, "storage", "connection %d ready", c->idx);
  pg_recon_kick(st); /* first, at the head of the queue */
  pg_conn_pump(c);
}

static void conn_read(pg_conn *c) {
  if (!PQconsumeInput(c->pq)) {
    pg_conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  while (c->pq && c->jobs_head && !PQisBusy(c->pq)) {
    pg_job *j = c->jobs_head;
    PGresult *r = PQgetResult(c->pq);
    if (!r) {
      if (!j->have_cur) break;
      j->cur++;
      j->have_cur = 0;
      continue;
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      conn_job_done(c, job_pop(c));
      continue;
    }
    if (!j->have_cur && j->cur < j->nq) {
      j->slots[j->cur] = r;
      j->have_cur = 1;
    } else {
      PQclear(r);
    }
  }
  if (c->pq && PQstatus(c->pq) == CONNECTION_BAD) pg_conn_fail(c, PQerrorMessage(c->pq));
}

static void quiet_notices(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* Connected: enter pipeline mode and prepare every statement. */
static void conn_connected(pg_conn *c) {
  if (PQsetnonblocking(c->pq, 1) != 0 || !PQenterPipelineMode(c->pq)) {
    pg_conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  PQsetNoticeProcessor(c->pq, quiet_notices, NULL);
  pg_job *j = pg_job_new(3 + pg_prepare_count(), 0);
  if (!j) {
    pg_conn_fail(c, "out of memory");
    return;
  }
  j->prepare = 1;
  pg_job_push(c, j);
  c->state = C_PREPARING;
  /* Our statements are planned once: custom plans (the default for the
   * first executions, and whenever they look cheaper) would re-plan each
   * execution. */
  int ok = PQsendQueryParams(c->pq, "SET plan_cache_mode = force_generic_plan", 0, NULL, NULL,
                             NULL, NULL, 0);
  /* Plans are made now, maybe on an empty table: no estimate may make a
   * sequential scan look as cheap as a lookup (see pg_sql.h). */
  ok = ok && PQsendQueryParams(c->pq, "SET enable_seqscan = off", 0, NULL, NULL, NULL, NULL, 0);
  /* The job guard's setting: job 0 (this one) committed. */
  ok = ok && PQsendQueryParams(c->pq, "SET cruster.job = '0'", 0, NULL, NULL, NULL, NULL, 0);
  c->job_seq = c->committed = 0;
  ok = ok && pg_send_prepares(c);
  if (!ok || !PQpipelineSync(c->pq)) {
    pg_conn_fail(c, PQerrorMessage(c->pq));
    return;
  }
  pg_conn_flush(c);
}

static void conn_connect_step(pg_conn *c) {
  PostgresPollingStatusType p = PQconnectPoll(c->pq);
  switch (PQstatus(c->pq)) {
  case CONNECTION_AUTH_OK:
  case CONNECTION_SETENV:
  case CONNECTION_CHECK_WRITABLE:
  case CONNECTION_CONSUME:
  case CONNECTION_CHECK_TARGET:
  case CONNECTION_CHECK_STANDBY:
    c->accepted = 1; /* authenticated: what fails now is a loss, not an attempt */
    break;
  default:
    break;
  }
  switch (p) {
  case PGRES_POLLING_READING:
    conn_watch(c, UV_READABLE);
    break;
  case PGRES_POLLING_WRITING:
    conn_watch(c, UV_WRITABLE);
    break;
  case PGRES_POLLING_OK:
    conn_connected(c);
    break;
  default:
    pg_conn_fail(c, PQerrorMessage(c->pq));
    break;
  }
}

/* Why the socket reports an error (SO_ERROR). */
static void socket_error(pg_conn *c, char *buf, size_t n) {
  int err = 0;
  socklen_t len = sizeof(err);
  int fd = PQsocket(c->pq);
  if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0)
    snprintf(buf, n, "%s", uv_strerror(uv_translate_sys_error(err)));
  else
    snprintf(buf, n, "the connection's socket reported an error");
}

static void on_poll(uv_poll_t *h, int status, int events) {
  pg_conn *c = h->data;
  if (!c->pq) return;
  if (status < 0) {
    /* An error condition on the socket (POLLERR: the server reset the
     * connection), which libuv reports as UV_EBADF ("bad file descriptor")
     * -- the socket is open and ours -- after it stopped watching it. Let
     * libpq read what the server sent before (the results of jobs that
     * completed, and its reason: a terminated backend says so); if that
     * does not end the connection, the socket's own error does. */
    c->events = 0; /* so that conn_watch starts watching again */
    if (c->state == C_CONNECTING) {
      conn_connect_step(c);
      return;
    }
    conn_read(c);
    if (c->pq) {
      char why[256];
      socket_error(c, why, sizeof(why));
      pg_conn_fail(c, why);
    }
    return;
  }
  if (c->state == C_CONNECTING) {
    conn_connect_step(c);
    return;
  }
  if ((events & UV_WRITABLE) && c->want_write) {
    pg_conn_flush(c);
    if (!c->pq) return;
  }
  if (events & UV_READABLE) conn_read(c);
}

void pg_conn_connect(pg_conn *c) {
  pg_store *st = c->st;
  if (st->closing) return;
  const char *keys[] = {"dbname", "connect_timeout", NULL};
  const char *vals[] = {st->conninfo, "5", NULL};
  c->pq = PQconnectStartParams(keys, vals, 1);
  if (!c->pq || PQstatus(c->pq) == CONNECTION_BAD) {
    pg_conn_fail(c, c->pq ? PQerrorMessage(c->pq) : "out of memory");
    return;
  }
  c->state = C_CONNECTING;
  c->fd = -1;
  conn_watch(c, UV_WRITABLE);
  if (!c->poll) pg_conn_fail(c, "cannot watch the connection's socket");
}
