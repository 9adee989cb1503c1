/* Internal: HTTP POSTs of JSON to the etcd gateway through libcurl's multi
 * interface driven by a libuv loop (CURLMOPT_SOCKETFUNCTION on uv_poll,
 * CURLMOPT_TIMERFUNCTION on a uv_timer). No thread ever blocks.
 *
 * Every callback runs outside libcurl (after curl_multi_socket_action has
 * returned), so it may submit, cancel, or close the client. */
#ifndef RG_ETCD_HTTP_H
#define RG_ETCD_HTTP_H

#include "core/prefix.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"

typedef struct rg_http rg_http;
typedef struct rg_hreq rg_hreq;

/* A unary answer: status CRUSTER_OK with `body` (a JSON object, borrowed for
 * the callback) when etcd answered 200 with JSON; otherwise an error status
 * with `msg`, and for an error etcd reported itself its gRPC code in
 * `code` (5 = not found, ...; 0 when none) and the body. */
typedef void (*rg_http_done)(void *ud, int status, const char *msg, int code, json_t *body);
/* A streamed answer: each newline-delimited JSON object in turn. */
typedef void (*rg_http_line)(void *ud, json_t *obj);

struct rg_http {
  uv_loop_t *loop;
  const core_logger *lg;
  CURLM *multi;
  uv_timer_t timer;
  char **eps; /* base URLs without a trailing '/' */
  size_t n_eps;
  size_t cur; /* the endpoint new requests start at */
  int64_t timeout_ms;
  rg_hreq *reqs; /* every live request */
  int depth;     /* inside a dispatch: cancels and closes are deferred */
  int closing;   /* close asked while depth > 0 */
  int closed;
  int open_handles; /* uv handles not yet closed (the timer and the polls) */
  int sweep;        /* cancelled requests wait to be freed */
};

/* Prepares the client (eps are copied). 0, or -1 on failure. */
int rg_http_init(rg_http *h, uv_loop_t *loop, const core_logger *lg, char *const *eps,
                 size_t n_eps, int64_t timeout_ms);
/* POSTs `body` (copied) to `path` ("/v3/kv/range"). Unary when `on_line` is
 * NULL: on_done gets the answer, within timeout_ms (0 = the client's).
 * Streamed otherwise: no timeout, on_line gets every object, on_done the
 * end (an error status, or CRUSTER_OK with a NULL body for a clean end).
 * NULL on OOM or after close. */
rg_hreq *rg_http_post(rg_http *h, const char *path, const char *body, int64_t timeout_ms,
                      rg_http_done on_done, rg_http_line on_line, void *ud);
/* Drops a request: its callbacks are never called. */
void rg_http_cancel(rg_hreq *q);
/* Cancels every request (no callbacks) and closes the handles; `open_handles`
 * reaches 0 once the loop has run their close callbacks. */
void rg_http_close(rg_http *h);
/* Frees what close left (after the loop ran the close callbacks). */
void rg_http_free(rg_http *h);

#endif
