/*
 * bench_local_rpc -- local (single-node, non-persisted) round trips through
 * cruster, compared in the same run with a bare cross-thread hop.
 *
 * Every figure is printed as one JSON object per line on stdout; progress
 * and errors go to stderr. Timing never fails the program: it exits 0
 * whatever the numbers, and non-zero only when a call fails or setup breaks.
 *
 * Environment:
 *   BENCH_SECONDS  measured seconds per case (default 2.5)
 *   BENCH_WARMUP   warm-up seconds per case (default 0.3)
 *   BENCH_IDS      distinct entity ids (default 1024)
 *   BENCH_PAYLOAD  payload bytes (default 16)
 *   BENCH_WORKERS  if set, the runtime's "worker_threads" (default: config default)
 *   BENCH_ONLY     run only the cases whose name contains this text; names are
 *                  hop1 hop64 hopthr1 hopthr64 sync1 sync64 async1 async64
 *                  (for profiling)
 *
 * What a "round trip" is (see bench/README.md):
 *   hop        thread A pushes a token on B's queue and wakes B's uv_async; B
 *              pushes it back on A's queue and wakes A's uv_async. Queues are
 *              mutex-protected intrusive lists that wake the consumer only
 *              when they go from empty to non-empty -- the same mechanism as
 *              the runtime's command queue (rt_post). Latency: A's send ->
 *              A sees it back. With N in flight, A keeps N tokens bouncing.
 *   hop threads  N caller threads (own uv loop + uv_async each) ping-pong
 *              with ONE server thread (uv loop + uv_async + locked queue),
 *              which answers by uv_async_send on the caller's handle: the
 *              bare-hop counterpart of N threads in cruster_send_sync.
 *   local_rpc  a caller issues cruster_send to an Echo entity whose handler
 *              replies immediately; latency from the call until the caller
 *              has the answer. That is caller -> loop -> worker -> loop ->
 *              caller: two cross-thread round trips, so 0.5x the hop's rate
 *              is the ceiling of a design that costs as much per hop as the
 *              bare uv_async hop.
 *     mode sync_threads: N threads each looping on cruster_send_sync.
 *     mode async: one driver thread keeps N cruster_send calls in flight
 *              (CRUSTER_CALL_INLINE_CALLBACK); the callback (on the loop
 *              thread) pushes the completion to the driver's queue exactly as
 *              in the hop benchmark, and the driver issues the next call.
 */
#include <cruster/cruster.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <uv.h>

/* ---- settings, clock, latency recording ---------------------------------- */

static double g_seconds = 2.5, g_warmup = 0.3;
static int g_nids = 1024;
static size_t g_payload = 16;
static int g_workers = 0;
static char **g_ids;
static char *g_payload_buf;
static atomic_int g_errors;
static const char *g_only;

static int want(const char *name) { return !g_only || !*g_only || strstr(name, g_only) != NULL; }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double env_double(const char *name, double dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end;
  double d = strtod(v, &end);
  return (end != v && d > 0) ? d : dflt;
}

/* Latencies in ns (uint32: saturates at ~4.29 s), preallocated. */
typedef struct rec {
  uint32_t *lat;
  size_t n, cap;
  uint64_t ops;
} rec;

static void rec_init(rec *r, size_t cap) {
  r->lat = cap ? malloc(cap * sizeof(uint32_t)) : NULL;
  if (cap && !r->lat) {
    fprintf(stderr, "out of memory for %zu latency samples\n", cap);
    exit(2);
  }
  r->n = 0;
  r->cap = cap;
  r->ops = 0;
}

static inline void rec_add(rec *r, uint64_t ns) {
  r->ops++;
  if (r->n < r->cap) r->lat[r->n++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

/* Room for every sample at up to `per_s` ops per second. */
static size_t rec_cap(double per_s) { return (size_t)(g_seconds * per_s) + 1024; }

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

typedef struct result {
  double ops_per_s, p50_us, p99_us, elapsed_s;
  double cpu_s; /* user+sys CPU of the whole process over the measured run */
  uint64_t ops;
  size_t samples;
} result;

static double pct(const uint32_t *v, size_t n, double p) {
  if (!n) return 0;
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i] / 1000.0;
}

/* Merges recorders (consumed) into a result over `elapsed_ns`. */
static result summarize(rec *rs, int nrec, uint64_t elapsed_ns) {
  result res;
  memset(&res, 0, sizeof(res));
  size_t total = 0;
  for (int i = 0; i < nrec; i++) {
    total += rs[i].n;
    res.ops += rs[i].ops;
  }
  uint32_t *all = malloc((total ? total : 1) * sizeof(uint32_t));
  if (!all) {
    fprintf(stderr, "out of memory merging samples\n");
    exit(2);
  }
  size_t k = 0;
  for (int i = 0; i < nrec; i++) {
    if (rs[i].n) memcpy(all + k, rs[i].lat, rs[i].n * sizeof(uint32_t));
    k += rs[i].n;
  }
  qsort(all, total, sizeof(uint32_t), cmp_u32);
  res.samples = total;
  res.elapsed_s = (double)elapsed_ns / 1e9;
  res.ops_per_s = res.elapsed_s > 0 ? (double)res.ops / res.elapsed_s : 0;
  res.p50_us = pct(all, total, 0.50);
  res.p99_us = pct(all, total, 0.99);
  free(all);
  return res;
}

static double cpu_now_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* cpu_us_per_op: process CPU time (all threads, user+sys) per round trip in
 * the measured run -- less sensitive than ops_per_s to other load on the
 * machine, so it is the figure to compare before/after a code change. */
static void print_result(const char *bench, const char *mode, int callers, const result *r) {
  printf("{\"bench\":\"%s\",\"mode\":\"%s\",\"callers\":%d,\"ops_per_s\":%.0f,\"p50_us\":%.2f,"
         "\"p99_us\":%.2f,\"cpu_us_per_op\":%.3f,\"ops\":%llu,\"samples\":%zu,\"seconds\":%.3f}\n",
         bench, mode, callers, r->ops_per_s, r->p50_us, r->p99_us,
         r->ops ? r->cpu_s * 1e6 / (double)r->ops : 0, (unsigned long long)r->ops, r->samples,
         r->elapsed_s);
  fflush(stdout);
}

/* ---- token queue: mutex list + uv_async, woken on empty -> non-empty ----- */

typedef struct token {
  struct token *next;
  uint64_t t0;
  uint32_t idx, seq;
  int status;
  void *owner;
} token;

typedef struct tq {
  uv_mutex_t mu;
  token *head, *tail;
  uv_async_t *async;
} tq;

static void tq_init(tq *q, uv_async_t *a) {
  uv_mutex_init(&q->mu);
  q->head = q->tail = NULL;
  q->async = a;
}

static void tq_push(tq *q, token *t) {
  t->next = NULL;
  uv_mutex_lock(&q->mu);
  int was_empty = q->head == NULL;
  if (q->tail) q->tail->next = t; else q->head = t;
  q->tail = t;
  if (was_empty) uv_async_send(q->async);
  uv_mutex_unlock(&q->mu);
}

static token *tq_take(tq *q) {
  uv_mutex_lock(&q->mu);
  token *h = q->head;
  q->head = q->tail = NULL;
  uv_mutex_unlock(&q->mu);
  return h;
}

/* ---- bare hop ------------------------------------------------------------ */

typedef struct hop {
  uv_loop_t loop_a, loop_b;
  uv_async_t async_a, async_b;
  tq to_a, to_b;
  atomic_int stop_b;
  int outstanding;
  uint64_t end_ns, finished_ns;
  rec *r;
} hop;

static void hop_on_b(uv_async_t *a) {
  hop *h = a->data;
  token *t = tq_take(&h->to_b);
  while (t) {
    token *next = t->next;
    tq_push(&h->to_a, t); /* echo: straight back */
    t = next;
  }
  if (atomic_load(&h->stop_b)) uv_close((uv_handle_t *)&h->async_b, NULL);
}

static void hop_on_a(uv_async_t *a) {
  hop *h = a->data;
  token *t = tq_take(&h->to_a);
  while (t) {
    token *next = t->next;
    uint64_t now = now_ns();
    rec_add(h->r, now - t->t0);
    if (now < h->end_ns) {
      t->t0 = now;
      tq_push(&h->to_b, t);
    } else {
      h->outstanding--;
    }
    t = next;
  }
  if (h->outstanding == 0) {
    h->finished_ns = now_ns();
    uv_close((uv_handle_t *)&h->async_a, NULL);
  }
}

static void hop_thread_b(void *arg) {
  hop *h = arg;
  uv_run(&h->loop_b, UV_RUN_DEFAULT);
}

static result run_hop(int inflight, double seconds, rec *r) {
  hop h;
  memset(&h, 0, sizeof(h));
  uv_loop_init(&h.loop_a);
  uv_loop_init(&h.loop_b);
  uv_async_init(&h.loop_a, &h.async_a, hop_on_a);
  uv_async_init(&h.loop_b, &h.async_b, hop_on_b);
  h.async_a.data = h.async_b.data = &h;
  tq_init(&h.to_a, &h.async_a);
  tq_init(&h.to_b, &h.async_b);
  h.r = r;
  token *tokens = calloc((size_t)inflight, sizeof(token));
  uv_thread_t tb;
  uv_thread_create(&tb, hop_thread_b, &h);
  uint64_t start = now_ns();
  h.end_ns = start + (uint64_t)(seconds * 1e9);
  h.outstanding = inflight;
  for (int i = 0; i < inflight; i++) {
    tokens[i].t0 = now_ns();
    tq_push(&h.to_b, &tokens[i]);
  }
  uv_run(&h.loop_a, UV_RUN_DEFAULT);
  atomic_store(&h.stop_b, 1);
  uv_async_send(&h.async_b);
  uv_thread_join(&tb);
  uv_loop_close(&h.loop_a);
  uv_loop_close(&h.loop_b);
  uv_mutex_destroy(&h.to_a.mu);
  uv_mutex_destroy(&h.to_b.mu);
  free(tokens);
  return summarize(r, 1, h.finished_ns - start);
}

static result bench_hop(int inflight) {
  rec w, r;
  rec_init(&w, 0);
  run_hop(inflight, g_warmup, &w);
  rec_init(&r, rec_cap(8e6));
  double cpu0 = cpu_now_s();
  result res = run_hop(inflight, g_seconds, &r);
  res.cpu_s = cpu_now_s() - cpu0;
  free(r.lat);
  return res;
}

/* ---- bare hop, thread per caller ----------------------------------------- */

/* N caller threads, each with its own uv loop and uv_async, ping-pong with
 * ONE server thread (uv loop + uv_async + a locked queue). A caller pushes
 * its token on the server's queue (waking it on empty -> non-empty) and
 * sleeps in its loop; the server drains its queue and answers each token
 * with uv_async_send on that caller's handle. One round trip = two thread
 * crossings (caller -> server -> caller), the shape of cruster_send_sync
 * from N threads minus the runtime's two extra crossings. */

typedef struct thop_srv {
  uv_loop_t loop;
  uv_async_t async;
  tq in;
  atomic_int stop;
} thop_srv;

typedef struct thop_caller {
  thop_srv *srv;
  uv_loop_t loop;
  uv_async_t async;
  uv_barrier_t *barrier;
  double seconds;
  uint64_t end_ns;
  token tok;
  rec r;
} thop_caller;

static void thop_srv_on(uv_async_t *a) {
  thop_srv *s = a->data;
  token *t = tq_take(&s->in);
  while (t) {
    token *next = t->next;
    thop_caller *c = t->owner;
    uv_async_send(&c->async); /* answer: wake that caller */
    t = next;
  }
  if (atomic_load(&s->stop)) uv_close((uv_handle_t *)&s->async, NULL);
}

static void thop_srv_main(void *arg) {
  thop_srv *s = arg;
  uv_run(&s->loop, UV_RUN_DEFAULT);
}

static void thop_caller_on(uv_async_t *a) {
  thop_caller *c = a->data;
  uint64_t now = now_ns();
  rec_add(&c->r, now - c->tok.t0);
  if (now < c->end_ns) {
    c->tok.t0 = now;
    tq_push(&c->srv->in, &c->tok);
  } else {
    uv_close((uv_handle_t *)&c->async, NULL);
  }
}

static void thop_caller_main(void *arg) {
  thop_caller *c = arg;
  uv_barrier_wait(c->barrier);
  c->end_ns = now_ns() + (uint64_t)(c->seconds * 1e9);
  c->tok.t0 = now_ns();
  tq_push(&c->srv->in, &c->tok);
  uv_run(&c->loop, UV_RUN_DEFAULT);
}

static result run_thop(int callers, double seconds, size_t cap) {
  thop_srv s;
  memset(&s, 0, sizeof(s));
  uv_loop_init(&s.loop);
  uv_async_init(&s.loop, &s.async, thop_srv_on);
  s.async.data = &s;
  tq_init(&s.in, &s.async);
  uv_thread_t st;
  uv_thread_create(&st, thop_srv_main, &s);
  thop_caller *cs = calloc((size_t)callers, sizeof(thop_caller));
  uv_thread_t *th = calloc((size_t)callers, sizeof(uv_thread_t));
  uv_barrier_t barrier;
  uv_barrier_init(&barrier, (unsigned)callers + 1);
  for (int k = 0; k < callers; k++) {
    thop_caller *c = &cs[k];
    c->srv = &s;
    c->barrier = &barrier;
    c->seconds = seconds;
    c->tok.owner = c;
    uv_loop_init(&c->loop);
    uv_async_init(&c->loop, &c->async, thop_caller_on);
    c->async.data = c;
    rec_init(&c->r, cap ? cap / (size_t)callers + 1024 : 0);
    uv_thread_create(&th[k], thop_caller_main, c);
  }
  uv_barrier_wait(&barrier);
  uint64_t start = now_ns();
  for (int k = 0; k < callers; k++) uv_thread_join(&th[k]);
  uint64_t elapsed = now_ns() - start;
  atomic_store(&s.stop, 1);
  uv_async_send(&s.async);
  uv_thread_join(&st);
  rec *rs = calloc((size_t)callers, sizeof(rec));
  for (int k = 0; k < callers; k++) {
    rs[k] = cs[k].r;
    uv_loop_close(&cs[k].loop);
  }
  result res = summarize(rs, callers, elapsed);
  for (int k = 0; k < callers; k++) free(rs[k].lat);
  free(rs);
  uv_loop_close(&s.loop);
  uv_mutex_destroy(&s.in.mu);
  uv_barrier_destroy(&barrier);
  free(th);
  free(cs);
  return res;
}

static result bench_thop(int callers) {
  run_thop(callers, g_warmup, 0);
  double cpu0 = cpu_now_s();
  result res = run_thop(callers, g_seconds, rec_cap(2e6));
  res.cpu_s = cpu_now_s() - cpu0;
  return res;
}

/* ---- the runtime under test ------------------------------------------- */

static void echo(void *user, cruster_request *req) {
  (void)user;
  size_t len;
  const void *p = cruster_request_payload(req, &len);
  cruster_status st = cruster_request_reply(req, p, len);
  if (st != CRUSTER_OK) {
    fprintf(stderr, "reply failed: %s\n", cruster_status_message(st));
    atomic_fetch_add(&g_errors, 1);
  }
}

static void quiet_log(void *user, cruster_log_level level, const char *component,
                      const char *message) {
  (void)user;
  if (level >= CRUSTER_LOG_WARN) fprintf(stderr, "[%s] %s\n", component, message);
}

static void die_err(const char *what, cruster_error *err) {
  fprintf(stderr, "%s: %s\n", what, err ? cruster_error_message(err) : "?");
  exit(1);
}

static cruster_runtime *make_runtime(void) {
  cruster_error *err = NULL;
  cruster_config *cfg = cruster_config_new();
  if (!cfg) die_err("config", NULL);
  cruster_config_set_logger(cfg, quiet_log, NULL, CRUSTER_LOG_WARN);
  if (g_workers > 0) {
    if (cruster_config_set_int(cfg, "worker_threads", g_workers, &err) != CRUSTER_OK)
      die_err("worker_threads", err);
    if (g_workers > 64 && cruster_config_set_int(cfg, "worker_threads_max", g_workers, &err))
      die_err("worker_threads_max", err);
  }
  cruster_storage *st = NULL;
  if (cruster_storage_memory_new(&st, &err) != CRUSTER_OK) die_err("storage", err);
  cruster_runtime *rt = NULL;
  if (cruster_runtime_new(cfg, st, NULL, &rt, &err) != CRUSTER_OK) die_err("runtime_new", err);
  cruster_config_free(cfg);
  cruster_entity_def *d = NULL;
  if (cruster_entity_def_new("Echo", &d, &err) != CRUSTER_OK) die_err("def", err);
  if (cruster_entity_def_add_rpc(d, "echo", 0, echo, NULL, &err) != CRUSTER_OK) die_err("rpc", err);
  if (cruster_runtime_register_entity(rt, d, &err) != CRUSTER_OK) die_err("register", err);
  cruster_entity_def_free(d);
  if (cruster_runtime_start(rt, &err) != CRUSTER_OK) die_err("start", err);
  return rt;
}

/* Caller k's j-th call goes to id (k + callers * j) mod nids: callers never
 * share an instance when callers divides nids, so per-instance concurrency
 * (1) never queues a call behind another caller's. */
static const char *id_for(int k, int callers, uint32_t j) {
  return g_ids[((uint64_t)k + (uint64_t)callers * j) % (uint64_t)g_nids];
}

/* ---- local_rpc, sync_threads ---------------------------------------------- */

typedef struct sync_ctx {
  cruster_runtime *rt;
  int k, callers;
  uv_barrier_t *barrier;
  double seconds;
  rec r;
} sync_ctx;

static void sync_thread(void *arg) {
  sync_ctx *c = arg;
  uv_barrier_wait(c->barrier);
  uint64_t end = now_ns() + (uint64_t)(c->seconds * 1e9);
  for (uint32_t j = 0;; j++) {
    uint64_t t0 = now_ns();
    if (t0 >= end) break;
    void *reply = NULL;
    size_t len = 0;
    cruster_error *err = NULL;
    cruster_status st = cruster_send_sync(c->rt, "Echo", id_for(c->k, c->callers, j), "echo",
                                          g_payload_buf, g_payload, NULL, &reply, &len, &err);
    uint64_t t1 = now_ns();
    if (st != CRUSTER_OK || len != g_payload) {
      fprintf(stderr, "send_sync failed: %s\n", err ? cruster_error_message(err) : "bad length");
      cruster_error_free(err);
      atomic_fetch_add(&g_errors, 1);
      cruster_free(reply);
      break;
    }
    cruster_free(reply);
    rec_add(&c->r, t1 - t0);
  }
}

static result run_sync(cruster_runtime *rt, int callers, double seconds, size_t cap) {
  sync_ctx *cs = calloc((size_t)callers, sizeof(sync_ctx));
  uv_thread_t *th = calloc((size_t)callers, sizeof(uv_thread_t));
  uv_barrier_t barrier;
  uv_barrier_init(&barrier, (unsigned)callers + 1);
  for (int k = 0; k < callers; k++) {
    cs[k].rt = rt;
    cs[k].k = k;
    cs[k].callers = callers;
    cs[k].barrier = &barrier;
    cs[k].seconds = seconds;
    rec_init(&cs[k].r, cap ? cap / (size_t)callers + 1024 : 0);
    uv_thread_create(&th[k], sync_thread, &cs[k]);
  }
  uv_barrier_wait(&barrier);
  uint64_t start = now_ns();
  for (int k = 0; k < callers; k++) uv_thread_join(&th[k]);
  uint64_t elapsed = now_ns() - start;
  rec *rs = calloc((size_t)callers, sizeof(rec));
  for (int k = 0; k < callers; k++) rs[k] = cs[k].r;
  result res = summarize(rs, callers, elapsed);
  for (int k = 0; k < callers; k++) free(rs[k].lat);
  free(rs);
  uv_barrier_destroy(&barrier);
  free(th);
  free(cs);
  return res;
}

/* ---- local_rpc, async ---------------------------------------------------- */

typedef struct drv {
  cruster_runtime *rt;
  uv_loop_t loop;
  uv_async_t async;
  tq done;
  int callers, outstanding;
  uint64_t end_ns, finished_ns;
  cruster_call_opts opts;
  rec *r;
} drv;

static void on_reply(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)data;
  token *t = user;
  drv *d = t->owner;
  if (status == CRUSTER_OK && len != g_payload) status = CRUSTER_E_INTERNAL;
  if (status != CRUSTER_OK) fprintf(stderr, "send failed: %s\n", msg ? msg : "bad length");
  t->status = status;
  tq_push(&d->done, t); /* on the loop thread: only hand it back */
}

static int drv_send(drv *d, token *t) {
  t->t0 = now_ns();
  cruster_status st = cruster_send(d->rt, "Echo", id_for((int)t->idx, d->callers, t->seq++), "echo",
                                   g_payload_buf, g_payload, &d->opts, on_reply, t, NULL);
  if (st != CRUSTER_OK) {
    fprintf(stderr, "cruster_send: %s\n", cruster_status_message(st));
    atomic_fetch_add(&g_errors, 1);
    return -1;
  }
  return 0;
}

static void drv_on_done(uv_async_t *a) {
  drv *d = a->data;
  token *t = tq_take(&d->done);
  while (t) {
    token *next = t->next;
    uint64_t now = now_ns();
    if (t->status != CRUSTER_OK) {
      atomic_fetch_add(&g_errors, 1);
      d->outstanding--;
    } else {
      rec_add(d->r, now - t->t0);
      if (now >= d->end_ns || atomic_load(&g_errors) || drv_send(d, t) != 0) d->outstanding--;
    }
    t = next;
  }
  if (d->outstanding == 0) {
    d->finished_ns = now_ns();
    uv_close((uv_handle_t *)&d->async, NULL);
  }
}

static result run_async(cruster_runtime *rt, int callers, double seconds, rec *r) {
  drv d;
  memset(&d, 0, sizeof(d));
  d.rt = rt;
  d.callers = callers;
  d.r = r;
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_INLINE_CALLBACK;
  d.opts = o;
  uv_loop_init(&d.loop);
  uv_async_init(&d.loop, &d.async, drv_on_done);
  d.async.data = &d;
  tq_init(&d.done, &d.async);
  token *tokens = calloc((size_t)callers, sizeof(token));
  uint64_t start = now_ns();
  d.end_ns = start + (uint64_t)(seconds * 1e9);
  for (int i = 0; i < callers; i++) {
    tokens[i].idx = (uint32_t)i;
    tokens[i].owner = &d;
    if (drv_send(&d, &tokens[i]) == 0) d.outstanding++;
  }
  if (d.outstanding > 0) uv_run(&d.loop, UV_RUN_DEFAULT);
  else {
    d.finished_ns = now_ns();
    uv_close((uv_handle_t *)&d.async, NULL);
    uv_run(&d.loop, UV_RUN_DEFAULT);
  }
  uv_loop_close(&d.loop);
  uv_mutex_destroy(&d.done.mu);
  free(tokens);
  return summarize(r, 1, d.finished_ns - start);
}

/* ---- main ------------------------------------------------------------------ */

/* ours = a local_rpc mode, hop = the hop mode it is compared with. */
static void print_ratio(const char *mode, const char *hop_mode, int callers, const result *ours,
                        const result *hop) {
  double ratio = hop->ops_per_s > 0 ? ours->ops_per_s / hop->ops_per_s : 0;
  printf("{\"bench\":\"local_rpc_vs_hop\",\"mode\":\"%s\",\"hop_mode\":\"%s\",\"callers\":%d,"
         "\"ratio\":%.3f,\"ours_ops_per_s\":%.0f,\"hop_ops_per_s\":%.0f,\"target\":0.5,"
         "\"meets_target\":%s}\n",
         mode, hop_mode, callers, ratio, ours->ops_per_s, hop->ops_per_s,
         ratio >= 0.5 ? "true" : "false");
  fflush(stdout);
}

int main(void) {
  g_seconds = env_double("BENCH_SECONDS", 2.5);
  g_warmup = env_double("BENCH_WARMUP", 0.3);
  g_nids = (int)env_double("BENCH_IDS", 1024);
  g_payload = (size_t)env_double("BENCH_PAYLOAD", 16);
  g_workers = (int)env_double("BENCH_WORKERS", 0);
  g_only = getenv("BENCH_ONLY");
  g_ids = calloc((size_t)g_nids, sizeof(char *));
  for (int i = 0; i < g_nids; i++) {
    char buf[32];
    snprintf(buf, sizeof(buf), "e%d", i);
    g_ids[i] = strdup(buf);
  }
  g_payload_buf = malloc(g_payload ? g_payload : 1);
  memset(g_payload_buf, 'x', g_payload ? g_payload : 1);

  uv_cpu_info_t *cpus;
  int ncpu = 0;
  if (uv_cpu_info(&cpus, &ncpu) == 0) uv_free_cpu_info(cpus, ncpu);
  double load[3];
  uv_loadavg(load);
  printf("{\"bench\":\"env\",\"cpus\":%d,\"loadavg_1m\":%.2f,\"seconds\":%.2f,\"warmup\":%.2f,"
         "\"ids\":%d,\"payload\":%zu,\"worker_threads\":%d,\"cruster\":\"%s\"}\n",
         ncpu, load[0], g_seconds, g_warmup, g_nids, g_payload, g_workers,
         cruster_version());
  fflush(stdout);

  const int callers_list[2] = {1, 64};
  char name[32];
  result hop[2], sync_r[2], async_r[2];
  int have_hop[2] = {0, 0}, have_sync[2] = {0, 0}, have_async[2] = {0, 0};
  for (int i = 0; i < 2; i++) {
    snprintf(name, sizeof(name), "hop%d", callers_list[i]);
    if (!want(name)) continue;
    hop[i] = bench_hop(callers_list[i]);
    have_hop[i] = 1;
    print_result("hop", "uv_async", callers_list[i], &hop[i]);
  }

  result thop[2];
  int have_thop[2] = {0, 0};
  for (int i = 0; i < 2; i++) {
    snprintf(name, sizeof(name), "hopthr%d", callers_list[i]);
    if (!want(name)) continue;
    thop[i] = bench_thop(callers_list[i]);
    have_thop[i] = 1;
    print_result("hop", "threads", callers_list[i], &thop[i]);
  }

  cruster_runtime *rt = make_runtime();
  /* Creates the instances once, so no case pays for their creation. */
  run_sync(rt, 64, g_warmup, 0);

  for (int i = 0; i < 2; i++) {
    int n = callers_list[i];
    snprintf(name, sizeof(name), "sync%d", n);
    if (want(name)) {
      run_sync(rt, n, g_warmup, 0);
      double cpu0 = cpu_now_s();
      sync_r[i] = run_sync(rt, n, g_seconds, rec_cap(2e6));
      sync_r[i].cpu_s = cpu_now_s() - cpu0;
      have_sync[i] = 1;
      print_result("local_rpc", "sync_threads", n, &sync_r[i]);
    }
    snprintf(name, sizeof(name), "async%d", n);
    if (!want(name)) continue;
    rec w, r;
    rec_init(&w, 0);
    run_async(rt, n, g_warmup, &w);
    rec_init(&r, rec_cap(2e6));
    double cpu0 = cpu_now_s();
    async_r[i] = run_async(rt, n, g_seconds, &r);
    async_r[i].cpu_s = cpu_now_s() - cpu0;
    have_async[i] = 1;
    free(r.lat);
    print_result("local_rpc", "async", n, &async_r[i]);
  }
  for (int i = 0; i < 2; i++) {
    if (have_thop[i] && have_sync[i])
      print_ratio("sync_threads", "threads", callers_list[i], &sync_r[i], &thop[i]);
    if (have_hop[i] && have_async[i])
      print_ratio("async", "uv_async", callers_list[i], &async_r[i], &hop[i]);
  }

  cruster_runtime_free(rt);
  for (int i = 0; i < g_nids; i++) free(g_ids[i]);
  free(g_ids);
  free(g_payload_buf);
  int errors = atomic_load(&g_errors);
  if (errors) {
    fprintf(stderr, "%d call(s) failed\n", errors);
    return 1;
  }
  return 0;
}
