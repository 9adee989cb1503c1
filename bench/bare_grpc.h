/* bare_grpc: a bare gRPC C-core unary ping (no cruster code), shared by
 * bench_transport and bench_cluster (bench/README.md).
 *
 * Server: a generic server on 127.0.0.1:<ephemeral> whose completion-queue
 * thread answers every call at once with the request's bytes.
 * Client: one thread driving a `next` completion queue keeps N unary calls
 * in flight (one 6-op batch each), each completion starting the next one.
 * Both need grpc_init() first. */
#ifndef BENCH_BARE_GRPC_H
#define BENCH_BARE_GRPC_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_MAX_CALLS 2000000

typedef struct bench_stats {
  uint64_t *lat; /* ns, BENCH_MAX_CALLS of room */
  size_t n;
  uint64_t t0, t1;
} bench_stats;

uint64_t bench_mono_ns(void);

/* Sorts s->lat; fills ops/s, p50 and p99 (us). */
void bench_summary(bench_stats *s, double *ops, double *p50_us, double *p99_us);

/* Starts the bare server; returns its port (exits the process on failure). */
int bare_server_start(void);
void bare_server_stop(void);

/* Pings `addr` ("127.0.0.1:port") with `callers` calls in flight for `secs`
 * seconds (after one connecting call), `len` bytes each; latencies into st.
 * Exits the process if a call fails. */
void bare_run(const char *addr, int callers, size_t len, double secs, bench_stats *st);

#endif
