/* HTTP POSTs to the etcd gateway: libcurl multi on a libuv loop. See
 * etcd_http.h. */
#include "registry/etcd_http.h"

#include <cruster/status.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest answer (or streamed line) accepted. */
#define MAX_BODY ((size_t)64 << 20)

typedef struct sock_ctx {
  uv_poll_t poll;
  rg_http *h;
  curl_socket_t fd;
} sock_ctx;

struct rg_hreq {
  rg_http *h;
  rg_hreq *prev, *next;
  CURL *easy;
  struct curl_slist *hdrs;
  char *path;
  char *body;
  size_t body_len;
  char *buf; /* the answer so far (streamed: the unfinished lines) */
  size_t len, cap;
  int64_t timeout_ms;
  size_t ep;    /* the endpoint this attempt went to */
  size_t tries; /* endpoints tried */
  int too_large;
  int cancelled;
  int active; /* in the multi handle */
  rg_http_done on_done;
  rg_http_line on_line;
  void *ud;
  char errbuf[CURL_ERROR_SIZE];
};

static uv_once_t global_once = UV_ONCE_INIT;
static int global_ok;
static void global_init(void) { global_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK; }

/* ---- libuv <-> libcurl ------------------------------------------------------ */

static void dispatch(rg_http *h, curl_socket_t s, int flags);

static void on_handle_closed(uv_handle_t *hd) {
  rg_http *h = hd->data;
  h->open_handles--;
}
static void on_sock_closed(uv_handle_t *hd) {
  sock_ctx *c = (sock_ctx *)hd;
  c->h->open_handles--;
  free(c);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *c = (sock_ctx *)p;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  dispatch(c->h, c->fd, flags);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  (void)easy;
  rg_http *h = userp;
  sock_ctx *c = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (c) {
      curl_multi_assign(h->multi, s, NULL);
      uv_poll_stop(&c->poll);
      uv_close((uv_handle_t *)&c->poll, on_sock_closed);
    }
    return 0;
  }
  if (!c) {
    c = calloc(1, sizeof(*c));
    if (!c) return -1;
    if (uv_poll_init_socket(h->loop, &c->poll, s) != 0) {
      free(c);
      return -1;
    }
    c->h = h;
    c->fd = s;
    h->open_handles++;
    curl_multi_assign(h->multi, s, c);
  }
  int ev = 0;
  if (what & CURL_POLL_IN) ev |= UV_READABLE;
  if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
  uv_poll_start(&c->poll, ev, on_poll);
  return 0;
}

static void on_uv_timer(uv_timer_t *t) {
  rg_http *h = t->data;
  dispatch(h, CURL_SOCKET_TIMEOUT, 0);
}

static int on_curl_timer(CURLM *multi, long ms, void *userp) {
  (void)multi;
  rg_http *h = userp;
  if (ms < 0)
    uv_timer_stop(&h->timer);
  else
    uv_timer_start(&h->timer, on_uv_timer, (uint64_t)ms, 0);
  return 0;
}

/* ---- requests ----------------------------------------------------------------- */

static size_t on_write(char *data, size_t size, size_t nmemb, void *ud) {
  rg_hreq *q = ud;
  size_t n = size * nmemb;
  if (q->cancelled) return 0; /* aborts the transfer */
  if (n > MAX_BODY - q->len) {
    q->too_large = 1;
    return 0;
  }
  if (q->len + n + 1 > q->cap) {
    size_t cap = q->cap ? q->cap : 1024;
    while (cap < q->len + n + 1) cap *= 2;
    char *b = realloc(q->buf, cap);
    if (!b) return 0;
    q->buf = b;
    q->cap = cap;
  }
  memcpy(q->buf + q->len, data, n);
  q->len += n;
  q->buf[q->len] = 0;
  return n;
}

static void unlink_req(rg_hreq *q) {
  rg_http *h = q->h;
  if (q->prev)
    q->prev->next = q->next;
  else if (h->reqs == q)
    h->reqs = q->next;
  if (q->next) q->next->prev = q->prev;
  q->prev = q->next = NULL;
}

static void free_req(rg_hreq *q) {
  if (q->active) curl_multi_remove_handle(q->h->multi, q->easy);
  q->active = 0;
  unlink_req(q);
  if (q->easy) curl_easy_cleanup(q->easy);
  curl_slist_free_all(q->hdrs);
  free(q->path);
  free(q->body);
  free(q->buf);
  free(q);
}

/* Points q at endpoint q->ep and hands it to the multi handle. */
static int start_req(rg_hreq *q) {
  rg_http *h = q->h;
  size_t n = strlen(h->eps[q->ep]) + strlen(q->path) + 1;
  char *url = malloc(n);
  if (!url) return -1;
  snprintf(url, n, "%s%s", h->eps[q->ep], q->path);
  CURLcode rc = curl_easy_setopt(q->easy, CURLOPT_URL, url);
  free(url);
  if (rc != CURLE_OK) return -1;
  q->len = 0;
  q->too_large = 0;
  q->errbuf[0] = 0;
  if (curl_multi_add_handle(h->multi, q->easy) != CURLM_OK) return -1;
  q->active = 1;
  return 0;
}

rg_hreq *rg_http_post(rg_http *h, const char *path, const char *body, int64_t timeout_ms,
                      rg_http_done on_done, rg_http_line on_line, void *ud) {
  if (h->closed || h->closing) return NULL;
  rg_hreq *q = calloc(1, sizeof(*q));
  if (!q) return NULL;
  q->h = h;
  q->path = strdup(path);
  q->body_len = strlen(body);
  q->body = malloc(q->body_len + 1);
  q->easy = curl_easy_init();
  q->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  struct curl_slist *h2 = q->hdrs ? curl_slist_append(q->hdrs, "Expect:") : NULL;
  if (h2) q->hdrs = h2;
  if (!q->path || !q->body || !q->easy || !h2) goto fail;
  memcpy(q->body, body, q->body_len + 1);
  q->on_done = on_done;
  q->on_line = on_line;
  q->ud = ud;
  q->timeout_ms = timeout_ms > 0 ? timeout_ms : h->timeout_ms;
  q->ep = h->cur;
  q->tries = 1;
  CURL *e = q->easy;
  long conn_ms = (long)(q->timeout_ms < h->timeout_ms ? q->timeout_ms : h->timeout_ms);
  if (curl_easy_setopt(e, CURLOPT_PRIVATE, q) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, q->hdrs) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)q->body_len) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_WRITEDATA, q) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, conn_ms) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
    goto fail;
  if (on_line) {
    if (curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK) goto fail;
  } else if (curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)q->timeout_ms) != CURLE_OK) {
    goto fail;
  }
  q->next = h->reqs;
  if (h->reqs) h->reqs->prev = q;
  h->reqs = q;
  if (start_req(q) != 0) goto fail;
  return q;
fail:
  free_req(q);
  return NULL;
}

void rg_http_cancel(rg_hreq *q) {
  if (!q) return;
  rg_http *h = q->h;
  q->cancelled = 1;
  if (h->depth > 0)
    h->sweep = 1;
  else
    free_req(q);
}

/* Hands every complete line of a streamed answer to on_line (`final`: the
 * stream ended, an unterminated last line counts too). */
static void deliver_lines(rg_hreq *q, int final) {
  size_t start = 0;
  while (!q->cancelled && !q->h->closing && start < q->len) {
    char *nl = memchr(q->buf + start, '\n', q->len - start);
    if (!nl && !final) break;
    size_t ls = start, end = nl ? (size_t)(nl - q->buf) : q->len;
    start = nl ? end + 1 : end;
    size_t i = ls;
    while (i < end && (q->buf[i] == ' ' || q->buf[i] == '\r' || q->buf[i] == '\t')) i++;
    if (i == end) continue; /* a blank line */
    json_error_t je;
    json_t *obj = json_loadb(q->buf + ls, end - ls, 0, &je);
    if (!json_is_object(obj)) {
      core_log(q->h->lg, CRUSTER_LOG_WARN, "registry", "etcd streamed a line that is not a JSON object");
      json_decref(obj);
      obj = json_pack("{s:{s:s}}", "error", "message", "a streamed line that is not a JSON object");
    }
    if (obj) {
      q->on_line(q->ud, obj);
      json_decref(obj);
    }
  }
  if (q->cancelled || q->h->closing) return;
  memmove(q->buf, q->buf + start, q->len - start);
  q->len -= start;
  q->buf[q->len] = 0;
}

static int is_connect_error(CURLcode rc) {
  return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
         rc == CURLE_COULDNT_RESOLVE_PROXY;
}

static void finished(rg_http *h, rg_hreq *q, CURLcode rc) {
  curl_multi_remove_handle(h->multi, q->easy);
  q->active = 0;
  if (q->cancelled) return; /* swept at the end of the dispatch */
  if (rc != CURLE_OK && !q->too_large) {
    /* This endpoint failed: later requests start at the next one. */
    if (h->cur == q->ep) h->cur = (q->ep + 1) % h->n_eps;
    if (is_connect_error(rc) && q->tries < h->n_eps) {
      q->tries++;
      q->ep = (q->ep + 1) % h->n_eps;
      if (start_req(q) == 0) return;
    }
  }
  if (q->on_line && q->len > 0 && rc == CURLE_OK) deliver_lines(q, 1);
  if (q->cancelled || h->closing) return;
  int status = CRUSTER_OK, code = 0;
  char msg[512];
  msg[0] = 0;
  json_t *body = NULL;
  long http = 0;
  curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &http);
  if (q->too_large) {
    status = CRUSTER_E_MALFORMED;
    snprintf(msg, sizeof msg, "etcd %s answered more than %zu bytes", h->eps[q->ep], MAX_BODY);
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    status = CRUSTER_E_TIMEOUT;
    snprintf(msg, sizeof msg, "etcd %s%s: no answer within %lld ms", h->eps[q->ep], q->path,
             (long long)q->timeout_ms);
  } else if (rc != CURLE_OK) {
    status = CRUSTER_E_REGISTRY;
    snprintf(msg, sizeof msg, "etcd %s%s: %s", h->eps[q->ep], q->path,
             q->errbuf[0] ? q->errbuf : curl_easy_strerror(rc));
  } else if (q->on_line && http == 200) {
    /* a clean end of the stream */
  } else {
    json_error_t je;
    body = q->len ? json_loadb(q->buf, q->len, 0, &je) : NULL;
    if (!json_is_object(body)) {
      status = CRUSTER_E_MALFORMED;
      snprintf(msg, sizeof msg, "etcd %s%s answered HTTP %ld with something that is not a JSON object",
               h->eps[q->ep], q->path, http);
    } else if (http != 200) {
      status = CRUSTER_E_REGISTRY;
      json_t *c = json_object_get(body, "code");
      json_t *m = json_object_get(body, "message");
      if (!json_is_string(m)) m = json_object_get(body, "error");
      if (json_is_integer(c)) code = (int)json_integer_value(c);
      snprintf(msg, sizeof msg, "etcd %s%s: %s (code %d, HTTP %ld)", h->eps[q->ep], q->path,
               json_is_string(m) ? json_string_value(m) : "error", code, http);
    }
  }
  q->on_done(q->ud, status, status == CRUSTER_OK ? NULL : msg, code, body);
  json_decref(body);
  q->cancelled = 1; /* done: freed by the sweep */
  h->sweep = 1;
}

static void do_close(rg_http *h);

static void dispatch(rg_http *h, curl_socket_t s, int flags) {
  if (h->closed) return;
  int running = 0;
  h->depth++;
  curl_multi_socket_action(h->multi, s, flags, &running);
  /* Streamed lines first (a finished stream delivers its last ones itself). */
  for (rg_hreq *q = h->reqs; q && !h->closing; q = q->next)
    if (q->on_line && !q->cancelled && q->len > 0) deliver_lines(q, 0);
  CURLMsg *m;
  int left;
  while (!h->closing && (m = curl_multi_info_read(h->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    rg_hreq *q = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
    if (q) finished(h, q, m->data.result);
  }
  h->depth--;
  if (h->depth > 0) return;
  if (h->closing) {
    do_close(h);
    return;
  }
  if (h->sweep) {
    h->sweep = 0;
    rg_hreq *q = h->reqs;
    while (q) {
      rg_hreq *nx = q->next;
      if (q->cancelled) free_req(q);
      q = nx;
    }
  }
}

/* ---- lifecycle --------------------------------------------------------------- */

int rg_http_init(rg_http *h, uv_loop_t *loop, const core_logger *lg, char *const *eps,
                 size_t n_eps, int64_t timeout_ms) {
  memset(h, 0, sizeof(*h));
  uv_once(&global_once, global_init);
  if (!global_ok || n_eps == 0) return -1;
  h->loop = loop;
  h->lg = lg;
  h->timeout_ms = timeout_ms;
  h->eps = calloc(n_eps, sizeof(char *));
  if (!h->eps) return -1;
  h->n_eps = n_eps;
  for (size_t i = 0; i < n_eps; i++)
    if (!(h->eps[i] = strdup(eps[i]))) goto fail;
  h->multi = curl_multi_init();
  if (!h->multi) goto fail;
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
  if (uv_timer_init(loop, &h->timer) != 0) goto fail;
  h->timer.data = h;
  h->open_handles = 1;
  return 0;
fail:
  if (h->multi) curl_multi_cleanup(h->multi);
  h->multi = NULL;
  for (size_t i = 0; i < h->n_eps; i++) free(h->eps[i]);
  free(h->eps);
  h->eps = NULL;
  return -1;
}

static void do_close(rg_http *h) {
  h->closing = 0;
  h->closed = 1;
  while (h->reqs) free_req(h->reqs);
  if (h->multi) curl_multi_cleanup(h->multi); /* removes the sockets (their polls close) */
  h->multi = NULL;
  uv_timer_stop(&h->timer);
  uv_close((uv_handle_t *)&h->timer, on_handle_closed);
}

void rg_http_close(rg_http *h) {
  if (h->closed || !h->multi) return;
  if (h->depth > 0) {
    h->closing = 1;
    for (rg_hreq *q = h->reqs; q; q = q->next) q->cancelled = 1;
  } else {
    do_close(h);
  }
}

void rg_http_free(rg_http *h) {
  if (!h->eps) return;
  for (size_t i = 0; i < h->n_eps; i++) free(h->eps[i]);
  free(h->eps);
  h->eps = NULL;
}
