/* Internal: the runner-to-runner transport (docs/architecture.md,
 * "Transport"). gRPC C core with the protobuf-c messages of
 * proto/cruster.proto: a server for the service cruster.v1.Runner (Ping,
 * Send with streamed replies, Notify, Interrupt) and a client with one
 * channel per peer address.
 *
 * Threads: one completion-queue thread waits on gRPC's queue and hands every
 * completion to the loop (uv_async); all state machines, every callback and
 * every function here run on the loop thread unless stated. The layer knows
 * nothing above it: what a received message means is the host's business
 * (tp_host), whose callbacks it calls. */
#ifndef TP_TRANSPORT_H
#define TP_TRANSPORT_H

#include "core/prefix.h"

#include <cruster/metrics.h>
#include <cruster/status.h>
#include <stddef.h>
#include <stdint.h>

#include "core/envelope.h"
#include "core/log.h"
#include "loop/loop.h"

typedef struct tp_transport tp_transport;
typedef struct tp_call tp_call;   /* a call made by this runner */
typedef struct tp_reply tp_reply; /* the answer to a call received */

/* What travels with an envelope besides core_env. Strings and bytes are
 * borrowed (valid during the call that takes or gives them). */
typedef struct tp_meta {
  const char *traceparent; /* W3C traceparent, NULL or "" = none */
  int32_t hops;            /* times forwarded so far (>= 0) */
  int64_t timeout_ms;      /* the caller's remaining deadline, 0 = none */
  int stream;              /* 1: the caller takes chunks (tp_reply_chunk) */
  const void *key;         /* idempotency key, NULL = none */
  size_t key_len;
  size_t n_headers; /* string -> string */
  const char *const *header_names;
  const char *const *header_values;
} tp_meta;

/* A runner's progress-based health, carried by the answer to Ping
 * (PingReply). */
typedef struct tp_health {
  int stalled;        /* 1: work waited for a worker, none taken, past the threshold */
  int64_t waiting_ms; /* how long work has waited with no worker taking any (0: none) */
  int64_t queued;     /* jobs waiting for a worker */
} tp_health;

/* The upper layer, reached only through these callbacks (loop thread).
 * Every received Send, Notify and Interrupt hands a tp_reply that the host
 * answers with exactly one tp_reply_exit (now or later). */
typedef struct tp_host {
  void *ud;
  /* A Send: `env` is the host's (free with free()); `meta` is valid during
   * the call. Streamed sends (meta->stream) may give chunks first. */
  void (*on_send)(void *ud, core_env *env, const tp_meta *meta, tp_reply *r);
  /* A Notify: the exit says whether the message was accepted. */
  void (*on_notify)(void *ud, core_env *env, const tp_meta *meta, tp_reply *r);
  /* An Interrupt of entity (type, id) of shard (group, shard). */
  void (*on_interrupt)(void *ud, const char *type, const char *id, const char *group,
                       int32_t shard, tp_reply *r);
  /* The remote caller went away (cancel, deadline, tp_stop) before the exit:
   * stop streaming. `r` stays valid until the host gives its exit, which is
   * still required (its data is dropped). Optional (NULL). */
  void (*on_cancelled)(void *ud, tp_reply *r);
  /* A chunk given with tp_reply_chunk was handed to gRPC's flow-controlled
   * stream (its send completed), before the exit. A host streaming items
   * lets its producer make the next one on this (backpressure: gRPC
   * completes sends only while the peer reads). Optional (NULL). */
  void (*on_sent)(void *ud, tp_reply *r);
} tp_host;

typedef struct tp_opts {
  /* "host:port" the server listens on (port 0 = any, see tp_start); NULL =
   * no server (a client only). */
  const char *listen_address;
  int64_t max_message_size;   /* largest message sent or received, bytes (> 0) */
  int64_t connect_timeout_ms; /* connect timeout to a peer (> 0) */
  /* TLS (PEM file paths). Without tls_ca everything is plaintext. With
   * tls_ca: peers' certificates are verified against it; tls_cert/tls_key
   * (both or neither; required for a server) are this runner's certificate,
   * presented as server and as client. */
  const char *tls_cert, *tls_key, *tls_ca;
  int tls_require_client_cert; /* mTLS: the server refuses clients without a
                                * certificate signed by tls_ca */
} tp_opts;

/* Creates a transport on `loop` (nothing listens yet). Reads the TLS files.
 * `lg`, `metrics` and `host` must outlive it; `host` may be NULL for a
 * client only. Loop thread, or before the loop thread runs.
 * Errors: CRUSTER_E_INVALID_ARGUMENT (bad options, unreadable TLS files),
 * CRUSTER_E_NOMEM, CRUSTER_E_INTERNAL. */
cruster_status tp_new(rt_loop *loop, const tp_opts *opts, const core_logger *lg,
                      cruster_metrics *metrics, const tp_host *host, tp_transport **out,
                      cruster_error **err);
/* Loop thread, or before the loop thread runs (it makes a uv_async handle on
 * the loop). Starts the completion-queue thread and, with a listen address,
 * the server;
 * *bound_port (optional) receives the port bound (0 without a server).
 * Errors: CRUSTER_E_STATE (started twice), CRUSTER_E_RUNNER_UNAVAILABLE (the
 * address cannot be bound), CRUSTER_E_INTERNAL. */
cruster_status tp_start(tp_transport *t, int *bound_port, cruster_error **err);
/* Cancels every call and stops the server; returns when gRPC has finished
 * with all of them (it blocks the loop briefly). Every call of this runner
 * gets its exit once (CRUSTER_E_SHUTTING_DOWN unless it had finished);
 * every received call still unanswered gets on_cancelled; the host must
 * still give its exits (they are then only freed). Idempotent. Must run
 * before the loop closes (e.g. from its close hook, rt_loop_set_close_hook):
 * it closes its uv_async handle. Server-side replies are queued without a
 * bound: a host must pace its chunks itself (tp_host.on_sent; the sharding
 * layer keeps at most a window of chunks queued per call). */
void tp_stop(tp_transport *t);
/* A received Ping calls fn(ud, out) (loop thread) to fill *out (zeroed
 * before) with this runner's health, answered at once. Without it every
 * Ping answers "not stalled". Before tp_start, or on the loop thread. */
void tp_set_ping_handler(tp_transport *t, void (*fn)(void *ud, tp_health *out), void *ud);
/* Frees the transport (tp_stop first if needed). Every tp_reply must have
 * had its exit. Loop thread, or any thread once the loop has closed. */
void tp_free(tp_transport *t);

/* ---- answering a received call ------------------------------------------ */

/* A chunk of a streamed Send's answer (meta->stream), sequence 0, 1, ...
 * CRUSTER_E_INVALID_ARGUMENT when the call is not a streamed Send,
 * CRUSTER_E_PAYLOAD_TOO_LARGE over the message size, CRUSTER_E_CANCELLED
 * when the caller went away (dropped), CRUSTER_E_STATE after the exit. */
cruster_status tp_reply_chunk(tp_reply *r, const void *data, size_t len);
/* The one exit: status (CRUSTER_OK, an error or an application code) and
 * message (NULL = none) reach the caller unchanged, with `data` (a reply
 * value; ignored by Notify and Interrupt). Frees `r` when gRPC is done with
 * it: `r` must not be used after. */
void tp_reply_exit(tp_reply *r, int status, const void *data, size_t len, const char *msg);

/* The host's own pointer for a received call (NULL until set), for its
 * callbacks (on_cancelled, on_sent). Valid until the exit. */
void tp_reply_set_host_ud(tp_reply *r, void *ud);
void *tp_reply_host_ud(const tp_reply *r);

/* ---- making calls ------------------------------------------------------- */

typedef void (*tp_chunk_fn)(void *ud, int32_t seq, const void *data, size_t len);
/* The one answer: status and message as the host gave them, or the
 * transport's: CRUSTER_E_RUNNER_UNAVAILABLE (the peer cannot be reached;
 * the gRPC status in the message), CRUSTER_E_TIMEOUT (deadline),
 * CRUSTER_E_CANCELLED (tp_call_cancel), CRUSTER_E_SHUTTING_DOWN (tp_stop),
 * CRUSTER_E_PAYLOAD_TOO_LARGE (a message over the size limit),
 * CRUSTER_E_MALFORMED (an undecodable answer), CRUSTER_E_INVALID_ARGUMENT
 * (the peer found our message malformed). `data` and `msg` are valid during
 * the call (msg never NULL: "" when none). */
typedef void (*tp_exit_fn)(void *ud, int status, const void *data, size_t len, const char *msg);

/* Sends `env` (+ meta, may be NULL) to the runner at `addr` ("host:port")
 * with a deadline `timeout_ms` (> 0) from now. Chunks (streamed sends) then
 * the exit arrive on the loop thread; on_chunk may be NULL. Every outcome,
 * a refusal up front included, reaches on_exit exactly once, never inside
 * this call (after tp_stop: CRUSTER_E_SHUTTING_DOWN from a loop command; and
 * inline only when the loop itself is gone or memory ran out). *out
 * (optional) is the call's handle, valid until on_exit has returned; NULL
 * when the call was refused without one (stopped, out of memory). */
void tp_call_send(tp_transport *t, const char *addr, const core_env *env, const tp_meta *meta,
                  int64_t timeout_ms, tp_chunk_fn on_chunk, tp_exit_fn on_exit, void *ud,
                  tp_call **out);
/* The same as a Notify: the exit says whether the peer accepted it. */
void tp_call_notify(tp_transport *t, const char *addr, const core_env *env, const tp_meta *meta,
                    int64_t timeout_ms, tp_exit_fn on_exit, void *ud, tp_call **out);
void tp_call_interrupt(tp_transport *t, const char *addr, const char *type, const char *id,
                       const char *group, int32_t shard, int64_t timeout_ms, tp_exit_fn on_exit,
                       void *ud, tp_call **out);
/* Ping: cb gets CRUSTER_OK when the peer answered within timeout_ms. */
void tp_ping(tp_transport *t, const char *addr, int64_t timeout_ms,
             void (*cb)(void *ud, int status), void *ud);
/* Ping that also reads the peer's health: cb gets CRUSTER_OK and `h` (valid
 * during the call) when the peer answered within timeout_ms; otherwise the
 * transport's status (as tp_exit_fn) and h NULL. An answer that does not
 * decode is CRUSTER_E_MALFORMED. */
void tp_ping_health(tp_transport *t, const char *addr, int64_t timeout_ms,
                    void (*cb)(void *ud, int status, const tp_health *h), void *ud);
/* Sends raw bytes as the request of gRPC method `path` (tests: malformed
 * input). The exit carries the mapped gRPC status. */
void tp_call_raw(tp_transport *t, const char *addr, const char *path, const void *bytes,
                 size_t len, int64_t timeout_ms, tp_exit_fn on_exit, void *ud);
/* Streamed sends: stops reading the peer's chunks after the current one
 * (call from on_chunk or any time on the loop) until tp_call_resume. The
 * peer's sends then stall in gRPC's flow control. The call's deadline and
 * tp_call_cancel still end it. */
void tp_call_pause(tp_call *c);
void tp_call_resume(tp_call *c);
/* Cancels a call whose exit has not fired: the exit fires at once with
 * CRUSTER_E_CANCELLED; the peer sees the cancellation. */
void tp_call_cancel(tp_call *c);

/* Calls of this runner waiting for their exit (tests). */
size_t tp_calls_in_flight(const tp_transport *t);

#endif
