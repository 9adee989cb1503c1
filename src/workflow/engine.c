/* The workflow engine: executions as entities of type "Workflow/<name>",
 * one run of execute per delivery of the execution's message, and the
 * clients. It uses the entity and call layers through their public
 * functions, and the runner's hooks for what only the layers below know
 * (parking a message, polling now, the pool's blocking accounting). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/config_internal.h"
#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/sharding_internal.h"
#include "workflow/workflow_internal.h"

typedef struct wf_type {
  cruster_workflow_def *def;
  char type[CRUSTER_MAX_NAME_LEN + 1]; /* "Workflow/<name>" */
  wf_engine *engine;
} wf_type;

struct wf_engine {
  wf_engine_hooks hooks;
  sh_sharding *sh;
  em_manager *em;
  wf_host host;
  const cruster_config *cfg;
  const core_logger *lg;
  uv_mutex_t mu; /* types and running */
  wf_type **types;
  size_t ntypes;
  cruster_wf *running; /* runs in progress (for cancellations made meanwhile) */
  /* Cancellations stored here recently, for a run that starts without
   * reading (a first delivery): it would not see them in storage. */
  struct wf_cancelled {
    int64_t request_id;
    int64_t at; /* monotonic ms */
  } *cancelled;
  size_t ncancelled, capcancelled;
};

/* The run of execute on this thread, if any: a client call made from its
 * code commits the run's held transaction first (see flush_here). */
static _Thread_local cruster_wf *tl_run;

/* How long a cancellation is remembered for runs that skip the read. */
#define WF_CANCEL_MEMORY_MS 600000

static void block_enter(void *ud) {
  wf_engine *e = ud;
  if (e->hooks.block_enter) e->hooks.block_enter(e->hooks.ud);
}
static void block_leave(void *ud) {
  wf_engine *e = ud;
  if (e->hooks.block_leave) e->hooks.block_leave(e->hooks.ud);
}

wf_engine *wf_engine_new(const wf_engine_hooks *hooks, struct sh_sharding *sh,
                         struct em_manager *em, const st_wf_ops *ops, void *impl,
                         const cruster_config *cfg, const core_logger *lg) {
  wf_engine *e = calloc(1, sizeof(*e));
  if (!e) return NULL;
  if (uv_mutex_init(&e->mu) != 0) {
    free(e);
    return NULL;
  }
  e->hooks = *hooks;
  e->sh = sh;
  e->em = em;
  e->cfg = cfg;
  e->lg = lg;
  e->host.ops = ops;
  e->host.impl = impl;
  e->host.lg = lg;
  e->host.block_enter = block_enter;
  e->host.block_leave = block_leave;
  e->host.block_ud = e;
  e->host.max_payload = cfg->max_payload_size;
  return e;
}

void wf_engine_free(wf_engine *e) {
  if (!e) return;
  for (size_t i = 0; i < e->ntypes; i++) {
    cruster_workflow_def_free(e->types[i]->def);
    free(e->types[i]);
  }
  free(e->types);
  free(e->cancelled);
  uv_mutex_destroy(&e->mu);
  free(e);
}

static wf_type *find_type(wf_engine *e, const char *name) {
  wf_type *t = NULL;
  uv_mutex_lock(&e->mu);
  for (size_t i = 0; i < e->ntypes && !t; i++)
    if (strcmp(e->types[i]->def->name, name) == 0) t = e->types[i];
  uv_mutex_unlock(&e->mu);
  return t;
}

/* ---- running executions ------------------------------------------------- */

/* Registers a run; 1 if a cancellation of it was made here meanwhile (a
 * run that read storage sees it there too). Under the lock with
 * running_cancel: a cancellation either finds the run or is found by it. */
static int running_add(wf_engine *e, cruster_wf *wf) {
  int cancelled = 0;
  uv_mutex_lock(&e->mu);
  wf->run_next = e->running;
  e->running = wf;
  for (size_t i = 0; i < e->ncancelled; i++)
    if (e->cancelled[i].request_id == wf->request_id) cancelled = 1;
  uv_mutex_unlock(&e->mu);
  return cancelled;
}

static void running_del(wf_engine *e, cruster_wf *wf) {
  uv_mutex_lock(&e->mu);
  for (cruster_wf **p = &e->running; *p; p = &(*p)->run_next)
    if (*p == wf) {
      *p = wf->run_next;
      break;
    }
  uv_mutex_unlock(&e->mu);
}

/* A cancellation was stored: a run in progress here stops at its next
 * durable call. */
static void running_cancel(wf_engine *e, int64_t request_id) {
  int64_t now = core_mono_ms();
  uv_mutex_lock(&e->mu);
  for (cruster_wf *w = e->running; w; w = w->run_next)
    if (w->request_id == request_id) atomic_store(&w->cancel_flag, 1);
  /* Remembered for a first run that starts later and reads nothing. */
  size_t k = 0;
  for (size_t i = 0; i < e->ncancelled; i++)
    if (now - e->cancelled[i].at < WF_CANCEL_MEMORY_MS) e->cancelled[k++] = e->cancelled[i];
  e->ncancelled = k;
  if (e->ncancelled == e->capcancelled) {
    size_t cap = e->capcancelled ? e->capcancelled * 2 : 8;
    void *v = realloc(e->cancelled, cap * sizeof(*e->cancelled));
    if (v) {
      e->cancelled = v;
      e->capcancelled = cap;
    }
  }
  if (e->ncancelled < e->capcancelled) {
    e->cancelled[e->ncancelled].request_id = request_id;
    e->cancelled[e->ncancelled].at = now;
    e->ncancelled++;
  }
  uv_mutex_unlock(&e->mu);
}

/* ---- one run ------------------------------------------------------------ */

/* Answers the delivery by giving its message back to storage unanswered
 * (em_request_park): `progress` = the run reached a suspension (its attempt
 * is not counted); else it could not make progress (storage trouble). */
static void park(wf_engine *e, cruster_request *req, int64_t wake_at, int64_t seq, int progress) {
  (void)e;
  if (em_request_park(req, wake_at, seq, progress) != CRUSTER_OK) {
    /* The runtime is stopping: the message stays stored and claimed; the
     * next life of the runner delivers it again. */
    cruster_request_fail(req, CRUSTER_E_SHUTTING_DOWN, "the runtime stopped during a park");
  }
}

/* After storage trouble the run is tried again after a backoff. */
static int64_t retry_at(wf_engine *e) {
  int64_t b = e->cfg->storage_retry_backoff > 0 ? e->cfg->storage_retry_backoff : 1000;
  return core_now_ms() + b;
}

static void on_execute(void *user, cruster_request *req) {
  wf_type *t = user;
  wf_engine *e = t->engine;
  int64_t rid = cruster_request_id(req);
  const char *exec_id = cruster_request_entity_id(req);
  size_t len;
  const void *input = cruster_request_payload(req, &len);
  st_wf_state st;
  memset(&st, 0, sizeof(st));
  cruster_error *err = NULL;
  int rc = CRUSTER_OK;
  /* A first delivery straight after its insert has nothing journaled: no
   * read. (A resolution or cancellation made in between moves the wake
   * counter, so a park finds the message due and the next run reads.) */
  if (!req->env->fresh) {
    block_enter(e);
    rc = e->host.ops->load(e->host.impl, rid, &st, &err);
    block_leave(e);
  }
  if (rc != CRUSTER_OK) {
    core_log(e->lg, CRUSTER_LOG_WARN, "workflow", "execution %s of %s: cannot load its journal: %s",
             exec_id, t->def->name, err ? err->message : cruster_status_message(rc));
    cruster_error_free(err);
    park(e, req, retry_at(e), -1, 0);
    return;
  }
  int64_t wake_seq = st.wake_seq;
  cruster_wf wf;
  wf_run_init(&wf, &e->host, t->def, exec_id, rid, input, len, &st);
  wf.req = req;
  wf.engine = e;
  int cancelled_here = running_add(e, &wf);
  if (wf.st.cancelled || cancelled_here) {
    wf.stop = CRUSTER_E_CANCELLED;
    wf.stop_msg = core_strdup("the execution was cancelled");
  } else {
    tl_run = &wf;
    t->def->fn(t->def->user, &wf);
    tl_run = NULL;
  }
  running_del(e, &wf);
  st_tx *answer_tx = NULL;
  if (wf.answered && !wf.stop && wf.status == CRUSTER_OK && e->host.ops->commit_reply) {
    /* The answer is stored in a transaction -- the last activity's when it
     * is held (one round trip, with what is pending), else one of its own
     * -- and only if the execution's wake counter has not moved since this
     * run read it: a cancellation stored meanwhile, by any runner (which
     * cannot reach this run's flag), wins over the answer. */
    answer_tx = wf.held;
    wf.held = NULL;
    if (!answer_tx) {
      block_enter(e);
      rc = e->host.ops->begin(e->host.impl, &answer_tx, &err);
      block_leave(e);
      if (rc != CRUSTER_OK) {
        cruster_error_free(err);
        err = NULL;
        answer_tx = NULL; /* answered as before, without the condition */
      }
    }
  }
  if (answer_tx) {
    block_enter(e);
    rc = e->host.ops->commit_reply(e->host.impl, answer_tx, rid, req->env->keyed, wake_seq, wf.reply,
                                   wf.reply_len, wf.pending, wf.npending, &err);
    block_leave(e);
    if (rc == CRUSTER_OK) {
      req->tx_committed = 1; /* the entity layer stores nothing more */
      cruster_request_reply(req, wf.reply, wf.reply_len);
    } else if (rc == CRUSTER_E_ALREADY_EXISTS) {
      /* Woken while it ran (a cancellation, a deferred's outcome, a child's
       * answer): nothing committed; the next run reads what changed. */
      core_log(e->lg, CRUSTER_LOG_DEBUG, "workflow",
               "execution %s of %s was woken while it ran: runs again to answer", exec_id, t->def->name);
      park(e, req, core_now_ms(), -1, 1);
    } else {
      core_log(e->lg, CRUSTER_LOG_WARN, "workflow",
               "execution %s of %s: cannot store its answer: %s; runs again later", exec_id,
               t->def->name, err ? err->message : "storage failed");
      park(e, req, retry_at(e), -1, 0);
    }
  } else if (wf.held && wf_run_flush(&wf, &err) != CRUSTER_OK) {
    /* The last activity could not commit: as if it had not run. */
    core_log(e->lg, CRUSTER_LOG_WARN, "workflow",
             "execution %s of %s: cannot write its journal: %s; runs again later", exec_id,
             t->def->name, err ? err->message : "storage failed");
    park(e, req, retry_at(e), -1, 0);
  } else if (wf.answered && !wf.stop) {
    if (wf.status == CRUSTER_OK) {
      cruster_request_reply(req, wf.reply, wf.reply_len);
    } else {
      /* A failed execution may be restarted: what failed (an activity's
       * final failure, still pending) must be in the journal, or the
       * restart cannot drop it and give the activity its retries again. */
      if (wf_run_flush(&wf, &err) != CRUSTER_OK) {
        core_log(e->lg, CRUSTER_LOG_WARN, "workflow",
                 "execution %s of %s: cannot write its journal before failing: %s; runs again later",
                 exec_id, t->def->name, err ? err->message : "storage failed");
        park(e, req, retry_at(e), -1, 0);
      } else {
        cruster_request_fail(req, wf.status, wf.message);
      }
    }
  } else {
    switch (wf.stop) {
      case CRUSTER_E_SUSPENDED:
        if (wf_run_flush(&wf, &err) == CRUSTER_OK) {
          park(e, req, wf.wake_at, wake_seq, 1);
        } else {
          core_log(e->lg, CRUSTER_LOG_WARN, "workflow",
                   "execution %s of %s: cannot write its journal before suspending: %s", exec_id,
                   t->def->name, err ? err->message : "storage failed");
          park(e, req, retry_at(e), -1, 0);
        }
        break;
      case CRUSTER_E_CANCELLED:
        cruster_request_fail(req, CRUSTER_E_CANCELLED, "the execution was cancelled");
        break;
      case CRUSTER_E_DETERMINISM:
        core_log(e->lg, CRUSTER_LOG_ERROR, "workflow", "%s", wf.stop_msg ? wf.stop_msg : "");
        cruster_request_fail(req, CRUSTER_E_DETERMINISM, wf.stop_msg);
        break;
      case 0:
        cruster_request_fail(req, CRUSTER_E_HANDLER,
                             "execute returned without an answer and without a stop");
        break;
      default: /* storage trouble or out of memory: run again later */
        core_log(e->lg, CRUSTER_LOG_WARN, "workflow", "execution %s of %s: %s; runs again later",
                 exec_id, t->def->name, wf.stop_msg ? wf.stop_msg : cruster_status_message(wf.stop));
        park(e, req, retry_at(e), -1, 0);
        break;
    }
  }
  cruster_error_free(err);
  wf_run_done(&wf);
}

/* ---- registration ------------------------------------------------------- */

cruster_status wf_register(wf_engine *e, const cruster_workflow_def *def, cruster_error **err) {
  if (!e || !def) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "runtime or definition is NULL");
  if (!e->host.ops)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG,
                          "workflow \"%s\": the runtime has no storage, and workflows journal in one",
                          def->name);
  if (find_type(e, def->name))
    return core_error_set(err, CRUSTER_E_ALREADY_EXISTS, "workflow \"%s\" is already registered",
                          def->name);
  wf_type *t = calloc(1, sizeof(*t));
  if (!t || !(t->def = wf_def_copy(def))) {
    free(t);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  t->engine = e;
  snprintf(t->type, sizeof(t->type), WF_TYPE_PREFIX "%s", def->name);
  cruster_entity_def *ed = NULL;
  cruster_status rc = cruster_entity_def_new(t->type, &ed, err);
  if (rc == CRUSTER_OK)
    rc = cruster_entity_def_add_rpc(ed, WF_METHOD, CRUSTER_RPC_PERSISTED, on_execute, t, err);
  uv_mutex_lock(&e->mu);
  wf_type **v = rc == CRUSTER_OK ? realloc(e->types, (e->ntypes + 1) * sizeof(*v)) : NULL;
  if (v) e->types = v;
  uv_mutex_unlock(&e->mu);
  if (rc == CRUSTER_OK && !v) rc = core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  /* Listed before the entity exists: a message delivered at once finds it. */
  if (rc == CRUSTER_OK) {
    uv_mutex_lock(&e->mu);
    e->types[e->ntypes++] = t;
    uv_mutex_unlock(&e->mu);
    rc = em_register(e->em, ed, err);
    if (rc != CRUSTER_OK) {
      uv_mutex_lock(&e->mu);
      e->ntypes--;
      uv_mutex_unlock(&e->mu);
    }
  }
  cruster_entity_def_free(ed);
  if (rc != CRUSTER_OK) {
    cruster_workflow_def_free(t->def);
    free(t);
  }
  return rc;
}

/* ---- clients ------------------------------------------------------------ */

/* The options, read under the growth rule. */
static cruster_status read_opts(const cruster_workflow_opts *in, cruster_workflow_opts *o,
                                cruster_error **err) {
  cruster_workflow_opts def = CRUSTER_WORKFLOW_OPTS_INIT;
  *o = def;
  if (!in) return CRUSTER_OK;
  cruster_status rc = core_opts_read("cruster_workflow_opts", "CRUSTER_WORKFLOW_OPTS_INIT", in,
                                     in->size, CRUSTER_WORKFLOW_OPTS_SIZE_V1, sizeof(*o), o, err);
  if (rc != CRUSTER_OK) return rc;
  o->size = sizeof(*o);
  if (o->key_len && !o->key)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "workflow options: key is NULL with length %zu",
                          o->key_len);
  if (o->key && o->key_len == 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "workflow options: the key is empty");
  if (o->key_len > CRUSTER_MAX_KEY_LEN)
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "workflow options: the key is %zu bytes, at most %d", o->key_len,
                          CRUSTER_MAX_KEY_LEN);
  if (o->raw_key != 0 && o->raw_key != 1)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "workflow options: raw_key is %d: 0 or 1",
                          o->raw_key);
  if (o->timeout_ms < 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "workflow options: timeout_ms is negative");
  return CRUSTER_OK;
}

/* An execution's key and id. `key` receives a malloc'd copy. */
typedef struct wf_ident {
  char type[CRUSTER_MAX_NAME_LEN + 1];
  char *id;
  void *key;
  size_t key_len;
} wf_ident;

static void ident_free(wf_ident *x) {
  free(x->id);
  free(x->key);
  x->id = NULL;
  x->key = NULL;
}

static cruster_status check_workflow_name(const char *workflow, char type[CRUSTER_MAX_NAME_LEN + 1],
                                          cruster_error **err) {
  cruster_status rc = core_check_name("workflow name", workflow, err);
  if (rc != CRUSTER_OK) return rc;
  if (strlen(workflow) > CRUSTER_MAX_NAME_LEN - WF_TYPE_PREFIX_LEN)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "workflow name is too long (%zu bytes)",
                          strlen(workflow));
  snprintf(type, CRUSTER_MAX_NAME_LEN + 1, WF_TYPE_PREFIX "%s", workflow);
  return CRUSTER_OK;
}

static cruster_status make_ident(wf_engine *e, const char *workflow, const void *input, size_t len,
                                 const cruster_workflow_opts *o, wf_ident *x,
                                 cruster_error **err) {
  memset(x, 0, sizeof(*x));
  cruster_status rc = check_workflow_name(workflow, x->type, err);
  if (rc != CRUSTER_OK) return rc;
  if (len && !input) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "input is NULL with length %zu", len);
  if (core_size_exceeds(len, e->cfg->max_payload_size))
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "input of %zu bytes is over max_payload_size (%lld)", len,
                          (long long)e->cfg->max_payload_size);
  int hash = 1;
  if (o->key) {
    x->key = core_memdup(o->key, o->key_len);
    x->key_len = o->key_len;
    hash = !o->raw_key;
  } else {
    wf_type *t = find_type(e, workflow);
    if (t && t->def->key_fn) {
      x->key = malloc(CRUSTER_MAX_KEY_LEN);
      if (!x->key) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
      size_t n = 0;
      int krc = t->def->key_fn(t->def->key_user, input, len, x->key, CRUSTER_MAX_KEY_LEN, &n);
      if (krc != CRUSTER_OK) {
        ident_free(x);
        return core_error_set(err, krc == CRUSTER_E_APPLICATION || krc < 0 ? krc : CRUSTER_E_HANDLER,
                              "the key function of workflow \"%s\" refused the input (%d)",
                              workflow, krc);
      }
      if (n == 0 || n > CRUSTER_MAX_KEY_LEN) {
        ident_free(x);
        return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                              "the key function of workflow \"%s\" gave %zu bytes: 1..%d", workflow,
                              n, CRUSTER_MAX_KEY_LEN);
      }
      x->key_len = n;
      hash = t->def->hash;
    } else if (!t) {
      /* Its key function, if any, is unknown here: an id made from the
       * input could name another execution than the owner's. */
      return core_error_set(err, CRUSTER_E_NOT_FOUND,
                            "workflow \"%s\" is not registered on this runtime: give a key",
                            workflow);
    } else {
      /* The input is the key: the same input, the same execution. */
      if (len == 0)
        return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                              "workflow \"%s\": an empty input and no key name no execution: give a key",
                              workflow);
      if (len > CRUSTER_MAX_KEY_LEN)
        return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                              "workflow \"%s\": the input (%zu bytes) is the key when none is given, "
                              "and a key is at most %d bytes: give a key",
                              workflow, len, CRUSTER_MAX_KEY_LEN);
      x->key = core_memdup(input, len);
      x->key_len = len;
    }
  }
  if (!x->key) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  if (hash) {
    x->id = malloc(33);
    if (x->id) cruster_hex128(x->key, x->key_len, x->id);
  } else {
    x->id = malloc(x->key_len + 1);
    if (x->id) {
      memcpy(x->id, x->key, x->key_len);
      x->id[x->key_len] = 0;
      if (memchr(x->key, 0, x->key_len)) {
        ident_free(x);
        return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                              "a raw key is the execution id and may not contain NUL bytes");
      }
      rc = core_check_entity_id(x->id, err);
      if (rc != CRUSTER_OK) {
        ident_free(x);
        return rc;
      }
    }
  }
  if (!x->id) {
    ident_free(x);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  return CRUSTER_OK;
}

cruster_status wf_execution_id(wf_engine *e, const char *workflow, const void *input, size_t len,
                               const cruster_workflow_opts *opts, char **id, cruster_error **err) {
  if (!id) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "id is NULL");
  *id = NULL;
  cruster_workflow_opts o;
  cruster_status rc = read_opts(opts, &o, err);
  if (rc != CRUSTER_OK) return rc;
  wf_ident x;
  rc = make_ident(e, workflow, input, len, &o, &x, err);
  if (rc != CRUSTER_OK) return rc;
  *id = x.id;
  x.id = NULL;
  ident_free(&x);
  return CRUSTER_OK;
}

static void call_opts(const cruster_workflow_opts *o, const wf_ident *x, cruster_call_opts *c) {
  cruster_call_opts d = CRUSTER_CALL_OPTS_INIT;
  *c = d;
  c->flags = CRUSTER_CALL_PERSISTED;
  c->timeout_ms = o->timeout_ms;
  c->idempotency_key = x->key;
  c->idempotency_key_len = x->key_len;
}

/* A client call from execute's own code on this thread: the run's held
 * transaction commits first. Else the call could wait for a pooled
 * connection while its run holds one -- with every connection so held, for
 * ever. */
static int flush_here(cruster_error **err) {
  cruster_wf *wf = tl_run;
  if (!wf || !wf->held) return CRUSTER_OK;
  cruster_error *ferr = NULL;
  if (wf_run_flush(wf, &ferr) == CRUSTER_OK) return CRUSTER_OK;
  wf_stop(wf, CRUSTER_E_PERSISTENCE, NULL, "the last activity could not commit: %s",
          ferr ? ferr->message : "commit failed");
  cruster_error_free(ferr);
  return core_error_set(err, CRUSTER_E_PERSISTENCE,
                        "the execution's last activity could not commit; it runs again later");
}

cruster_status wf_start(wf_engine *e, const char *workflow, const void *input,
                        size_t len, const cruster_workflow_opts *opts, char **id,
                        cruster_error **err) {
  if (id) *id = NULL;
  cruster_workflow_opts o;
  cruster_status rc = read_opts(opts, &o, err);
  if (rc != CRUSTER_OK) return rc;
  wf_ident x;
  rc = make_ident(e, workflow, input, len, &o, &x, err);
  if (rc != CRUSTER_OK) return rc;
  cruster_call_opts c;
  call_opts(&o, &x, &c);
  rc = flush_here(err);
  if (rc == CRUSTER_OK) rc = sh_notify_sync(e->sh, x.type, x.id, WF_METHOD, input, len, &c, err);
  if (rc == CRUSTER_OK && id) {
    *id = x.id;
    x.id = NULL;
  }
  ident_free(&x);
  return rc;
}

cruster_status wf_execute(wf_engine *e, const char *workflow,
                          const void *input, size_t len, const cruster_workflow_opts *opts,
                          cruster_reply_fn fn, void *user, void **out, size_t *out_len,
                          cruster_error **err) {
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  cruster_workflow_opts o;
  cruster_status rc = read_opts(opts, &o, err);
  if (rc != CRUSTER_OK) return rc;
  wf_ident x;
  rc = make_ident(e, workflow, input, len, &o, &x, err);
  if (rc != CRUSTER_OK) return rc;
  cruster_call_opts c;
  call_opts(&o, &x, &c);
  rc = flush_here(err);
  if (rc == CRUSTER_OK && fn)
    rc = sh_send(e->sh, x.type, x.id, WF_METHOD, input, len, &c, fn, user, err);
  else if (rc == CRUSTER_OK)
    rc = sh_send_sync(e->sh, x.type, x.id, WF_METHOD, input, len, &c, out, out_len, err);
  ident_free(&x);
  return rc;
}

/* The one execution stored under (workflow, id): its request id and key. */
static cruster_status find_one(wf_engine *e, const char *workflow, const char *id, char *type,
                               st_exec_ref *ref, cruster_error **err) {
  memset(ref, 0, sizeof(*ref));
  if (!e->host.ops)
    return core_error_set(err, CRUSTER_E_INVALID_CONFIG, "the runtime has no storage: no workflows");
  if (e->hooks.on_loop && e->hooks.on_loop(e->hooks.ud))
    return core_error_set(err, CRUSTER_E_STATE, "a blocking workflow call on the loop thread");
  cruster_status rc = check_workflow_name(workflow, type, err);
  if (rc == CRUSTER_OK) rc = core_check_entity_id(id, err);
  if (rc != CRUSTER_OK) return rc;
  rc = flush_here(err);
  if (rc != CRUSTER_OK) return rc;
  st_exec_ref refs[2];
  size_t n = 0;
  block_enter(e);
  rc = e->host.ops->find(e->host.impl, type, id, refs, 2, &n, err);
  block_leave(e);
  if (rc != CRUSTER_OK) return rc;
  size_t got = n < 2 ? n : 2;
  if (n == 1) {
    *ref = refs[0];
    return CRUSTER_OK;
  }
  for (size_t i = 0; i < got; i++) free(refs[i].key);
  if (n == 0)
    return core_error_set(err, CRUSTER_E_NOT_FOUND, "no execution %s of workflow \"%s\" is stored",
                          id, workflow);
  return core_error_set(err, CRUSTER_E_CONFLICT,
                        "%zu executions of workflow \"%s\" share the id %s (their keys' HEX128 "
                        "collide): give each a raw key",
                        n, workflow, id);
}

cruster_status wf_poll(wf_engine *e, const char *workflow, const char *id,
                       int *ready, void **out, size_t *out_len, cruster_error **err) {
  if (ready) *ready = 0;
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!ready) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "ready is NULL");
  char type[CRUSTER_MAX_NAME_LEN + 1];
  st_exec_ref ref;
  cruster_status rc = find_one(e, workflow, id, type, &ref, err);
  if (rc != CRUSTER_OK) return rc;
  rc = sh_poll_reply(e->sh, type, id, WF_METHOD, ref.key, ref.key_len, ready, out, out_len, err);
  free(ref.key);
  return rc;
}

/* The blocking join: waits on a condition the reply callback signals. */
typedef struct join_wait {
  uv_mutex_t mu;
  uv_cond_t cv;
  int done, status;
  void *data;
  size_t len;
  char *msg;
} join_wait;

static void join_done(void *user, int status, const void *data, size_t len, const char *msg) {
  join_wait *w = user;
  void *copy = status == CRUSTER_OK ? core_memdup(data, len) : NULL;
  char *m = status != CRUSTER_OK ? core_strdup(msg) : NULL;
  uv_mutex_lock(&w->mu);
  w->status = status == CRUSTER_OK && !copy ? CRUSTER_E_NOMEM : status;
  w->data = copy;
  w->len = len;
  w->msg = m;
  w->done = 1;
  uv_cond_signal(&w->cv);
  uv_mutex_unlock(&w->mu);
}

cruster_status wf_join(wf_engine *e, const char *workflow, const char *id,
                       int64_t timeout_ms, cruster_reply_fn fn, void *user, void **out,
                       size_t *out_len, cruster_error **err) {
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (timeout_ms < 0) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "timeout_ms is negative");
  char type[CRUSTER_MAX_NAME_LEN + 1];
  st_exec_ref ref;
  cruster_status rc = find_one(e, workflow, id, type, &ref, err);
  if (rc != CRUSTER_OK) return rc;
  cruster_call_opts c = CRUSTER_CALL_OPTS_INIT;
  c.timeout_ms = timeout_ms;
  if (fn) {
    rc = sh_join_reply(e->sh, type, id, WF_METHOD, ref.key, ref.key_len, &c, fn, user, err);
    free(ref.key);
    return rc;
  }
  join_wait w;
  memset(&w, 0, sizeof(w));
  uv_mutex_init(&w.mu);
  uv_cond_init(&w.cv);
  c.flags = CRUSTER_CALL_INLINE_CALLBACK;
  rc = sh_join_reply(e->sh, type, id, WF_METHOD, ref.key, ref.key_len, &c, join_done, &w, err);
  free(ref.key);
  if (rc == CRUSTER_OK) {
    block_enter(e);
    uv_mutex_lock(&w.mu);
    while (!w.done) uv_cond_wait(&w.cv, &w.mu);
    uv_mutex_unlock(&w.mu);
    block_leave(e);
    rc = w.status;
    if (rc == CRUSTER_OK) {
      if (out) *out = w.data;
      else free(w.data);
      if (out_len) *out_len = w.len;
    } else {
      core_error_set(err, rc, "%s", w.msg ? w.msg : cruster_status_message(rc));
    }
  }
  free(w.msg);
  uv_cond_destroy(&w.cv);
  uv_mutex_destroy(&w.mu);
  return rc;
}

cruster_status wf_resolve(wf_engine *e, const char *workflow, const char *id, const char *name,
                          int32_t status, const void *value, size_t len, const char *message,
                          cruster_error **err) {
  if (!name) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "deferred name is NULL");
  if (*name) {
    cruster_status nrc = core_check_name("deferred name", name, err);
    if (nrc != CRUSTER_OK) return nrc;
  }
  if (len && !value) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "value is NULL with length %zu", len);
  if (core_size_exceeds(len, e->cfg->max_payload_size))
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE, "deferred value of %zu bytes is over max_payload_size", len);
  char type[CRUSTER_MAX_NAME_LEN + 1];
  st_exec_ref ref;
  cruster_status rc = find_one(e, workflow, id, type, &ref, err);
  if (rc != CRUSTER_OK) return rc;
  free(ref.key);
  if (ref.finished && *name) return core_error_set(err, CRUSTER_E_STATE, "execution %s has finished", id);
  if (ref.finished) return core_error_set(err, CRUSTER_E_STATE, "execution %s has finished: nothing to cancel", id);
  block_enter(e);
  rc = e->host.ops->resolve(e->host.impl, ref.request_id, name, status, value, len, message, err);
  block_leave(e);
  if (rc != CRUSTER_OK) return rc;
  if (!*name) running_cancel(e, ref.request_id);
  if (e->hooks.poll_now) e->hooks.poll_now(e->hooks.ud);
  return CRUSTER_OK;
}

cruster_status wf_restart(wf_engine *e, const char *workflow, const char *id, cruster_error **err) {
  char type[CRUSTER_MAX_NAME_LEN + 1];
  st_exec_ref ref;
  cruster_status rc = find_one(e, workflow, id, type, &ref, err);
  if (rc != CRUSTER_OK) return rc;
  free(ref.key);
  block_enter(e);
  rc = e->host.ops->restart(e->host.impl, ref.request_id, err);
  block_leave(e);
  if (rc == CRUSTER_OK && e->hooks.poll_now) e->hooks.poll_now(e->hooks.ud);
  return rc;
}

/* ---- durable calls to entities and child workflows ------------------------ */

/* Answers of a call that say nothing about the callee -- it may not have
 * run, or its answer may come later: the call is made again on the next
 * run (it is keyed: joined, never sent twice), not journaled. */
static int transient(int status) {
  switch (status) {
    case CRUSTER_E_TIMEOUT:
    case CRUSTER_E_SHUTTING_DOWN:
    case CRUSTER_E_PERSISTENCE:
    case CRUSTER_E_INTERRUPTED:
    case CRUSTER_E_NOMEM:
    case CRUSTER_E_MAILBOX_FULL:
    case CRUSTER_E_CLOCK_DRIFT:
    case CRUSTER_E_RUNNER_UNAVAILABLE:
    case CRUSTER_E_NOT_ASSIGNED:
    case CRUSTER_E_STATE:
      return 1;
    default:
      return 0;
  }
}

/* Before a durable call with an effect outside this run: the previous
 * activity's transaction commits first (what the callee sees includes it). */
static int flush_held(cruster_wf *wf, const char *what, cruster_error **err) {
  if (!wf->held) return CRUSTER_OK;
  cruster_error *ferr = NULL;
  if (wf_run_flush(wf, &ferr) == CRUSTER_OK) return CRUSTER_OK;
  int rc = wf_stop(wf, CRUSTER_E_PERSISTENCE, err, "the activity before %s could not commit: %s",
                   what, ferr ? ferr->message : "commit failed");
  cruster_error_free(ferr);
  return rc;
}

/* Journals a callee's final answer and returns it to execute. Takes rep. */
static int settle(cruster_wf *wf, int32_t kind, const char *name, int status, void *rep,
                  size_t rlen, const char *msg, void **out, size_t *out_len, cruster_error **err) {
  if (status == CRUSTER_OK) {
    void *copy = core_memdup(rep ? rep : "", rlen);
    cruster_free(rep);
    if (!copy) return wf_stop(wf, CRUSTER_E_NOMEM, err, "out of memory");
    int rc = wf_add_pending(wf, kind, name, CRUSTER_OK, 0, 0, copy, rlen, NULL, err);
    if (rc != CRUSTER_OK) return rc;
    const st_jentry *mine = &wf->pending[wf->npending - 1];
    return wf_give_value(mine->value, mine->len, out, out_len, err);
  }
  cruster_free(rep);
  char *m = core_strdup(msg ? msg : cruster_status_message(status));
  int rc = wf_add_pending(wf, kind, name, status, 0, 0, NULL, 0, m, err);
  if (rc != CRUSTER_OK) return rc;
  return core_error_set(err, status, "%s", msg ? msg : cruster_status_message(status));
}

/* A journaled answer of a call. */
static int replay_answer(const st_jentry *e, void **out, size_t *out_len, cruster_error **err) {
  if (e->status == CRUSTER_OK) return wf_give_value(e->value, e->len, out, out_len, err);
  return core_error_set(err, e->status, "%s",
                        e->message ? e->message : cruster_status_message(e->status));
}

cruster_status cruster_wf_call(cruster_wf *wf, const char *type, const char *id,
                               const char *method, const void *payload, size_t len, void **out,
                               size_t *out_len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!wf) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf is NULL");
  wf_engine *e = wf->engine;
  /* Checked before the call takes its position: a refused call is no
   * durable call. */
  cruster_status rc = core_check_name("entity type", type, err);
  if (rc == CRUSTER_OK) rc = core_check_name("method name", method, err);
  if (rc == CRUSTER_OK) rc = core_check_entity_id(id, err);
  if (rc != CRUSTER_OK) return rc;
  if (len && !payload)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "payload is NULL with length %zu", len);
  if (core_size_exceeds(len, e->cfg->max_payload_size))
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE, "payload of %zu bytes is over max_payload_size", len);
  char name[2 * CRUSTER_MAX_NAME_LEN + 2];
  snprintf(name, sizeof(name), "%s/%s", type, method);
  const st_jentry *j;
  rc = wf_begin_call(wf, ST_J_CALL, name, &j, err);
  if (rc != CRUSTER_OK) return rc;
  if (j) return replay_answer(j, out, out_len, err);
  rc = flush_held(wf, name, err);
  if (rc != CRUSTER_OK) return rc;
  char key[64];
  int klen = snprintf(key, sizeof(key), "wf/%lld/%ld", (long long)wf->request_id, (long)(wf->seq - 1));
  cruster_call_opts o = CRUSTER_CALL_OPTS_INIT;
  o.flags = CRUSTER_CALL_PERSISTED;
  o.idempotency_key = key;
  o.idempotency_key_len = (size_t)klen;
  o.caller = wf->req;
  void *rep = NULL;
  size_t rlen = 0;
  cruster_error *serr = NULL;
  int st = sh_send_sync(e->sh, type, id, method, payload, len, &o, &rep, &rlen, &serr);
  if (st != CRUSTER_OK && transient(st)) {
    int r = wf_stop(wf, CRUSTER_E_PERSISTENCE, err, "call %s of %s: %s; the execution runs again later",
                    name, id, serr ? serr->message : cruster_status_message(st));
    cruster_error_free(serr);
    return r;
  }
  rc = settle(wf, ST_J_CALL, name, st, rep, rlen, serr ? serr->message : NULL, out, out_len, err);
  cruster_error_free(serr);
  return rc;
}

/* The wake-up of a parent whose child finished (or whose join timed out:
 * the parent then looks again). Runs on a worker. */
typedef struct child_wait {
  wf_engine *e;
  int64_t parent;
} child_wait;

static void child_done(void *user, int status, const void *data, size_t len, const char *msg) {
  (void)status;
  (void)data;
  (void)len;
  (void)msg;
  child_wait *w = user;
  wf_engine *e = w->e;
  cruster_error *err = NULL;
  block_enter(e);
  int rc = e->host.ops->wake(e->host.impl, w->parent, &err);
  block_leave(e);
  if (rc != CRUSTER_OK)
    core_log(e->lg, CRUSTER_LOG_WARN, "workflow", "waking execution %lld failed: %s; it looks again later",
             (long long)w->parent, err ? err->message : cruster_status_message(rc));
  cruster_error_free(err);
  if (e->hooks.poll_now) e->hooks.poll_now(e->hooks.ud);
  free(w);
}

/* How long a parent sleeps before it looks at its child again by itself
 * (its join is in memory: a crash loses it). */
#define WF_CHILD_RECHECK_MS 60000

cruster_status cruster_wf_child(cruster_wf *wf, const char *workflow, const void *input,
                                size_t len, const void *key, size_t key_len, void **out,
                                size_t *out_len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (out) *out = NULL;
  if (out_len) *out_len = 0;
  if (!wf) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "wf is NULL");
  wf_engine *e = wf->engine;
  char type[CRUSTER_MAX_NAME_LEN + 1];
  cruster_status rc = check_workflow_name(workflow, type, err);
  if (rc != CRUSTER_OK) return rc;
  if ((len && !input) || (key_len && !key) || (key && !key_len))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "input or key is NULL with a length, or the key is empty");
  if (key_len > CRUSTER_MAX_KEY_LEN)
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE, "child key of %zu bytes is over %d", key_len,
                          CRUSTER_MAX_KEY_LEN);
  if (core_size_exceeds(len, e->cfg->max_payload_size))
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE, "child input of %zu bytes is over max_payload_size", len);
  const st_jentry *j;
  rc = wf_begin_call(wf, ST_J_CHILD, workflow, &j, err);
  if (rc != CRUSTER_OK) return rc;
  if (j) return replay_answer(j, out, out_len, err);
  rc = flush_held(wf, workflow, err);
  if (rc != CRUSTER_OK) return rc;
  char defkey[CRUSTER_MAX_ENTITY_ID_LEN + 32];
  cruster_workflow_opts o = CRUSTER_WORKFLOW_OPTS_INIT;
  if (key) {
    o.key = key;
    o.key_len = key_len;
  } else {
    int n = snprintf(defkey, sizeof(defkey), "%s/%ld", wf->exec_id, (long)(wf->seq - 1));
    o.key = defkey;
    o.key_len = (size_t)n;
  }
  wf_ident x;
  cruster_error *serr = NULL;
  rc = make_ident(e, workflow, input, len, &o, &x, &serr);
  if (rc != CRUSTER_OK) {
    rc = settle(wf, ST_J_CHILD, workflow, rc, NULL, 0, serr ? serr->message : NULL, out, out_len, err);
    cruster_error_free(serr);
    return rc;
  }
  cruster_call_opts c;
  call_opts(&o, &x, &c);
  c.caller = wf->req;
  int st = sh_notify_sync(e->sh, x.type, x.id, WF_METHOD, input, len, &c, &serr);
  int ready = 0;
  void *rep = NULL;
  size_t rlen = 0;
  if (st == CRUSTER_OK) {
    cruster_error_free(serr);
    serr = NULL;
    st = sh_poll_reply(e->sh, x.type, x.id, WF_METHOD, x.key, x.key_len, &ready, &rep, &rlen, &serr);
  }
  if (st == CRUSTER_OK && !ready) {
    /* Running: be woken when it finishes, and look again in a while in
     * any case. */
    child_wait *w = malloc(sizeof(*w));
    cruster_call_opts jo = CRUSTER_CALL_OPTS_INIT;
    jo.timeout_ms = WF_CHILD_RECHECK_MS;
    if (w) {
      w->e = e;
      w->parent = wf->request_id;
      if (sh_join_reply(e->sh, x.type, x.id, WF_METHOD, x.key, x.key_len, &jo, child_done, w, NULL) !=
          CRUSTER_OK)
        free(w);
    }
    ident_free(&x);
    return wf_suspend(wf, core_now_ms() + WF_CHILD_RECHECK_MS, err);
  }
  ident_free(&x);
  if (st != CRUSTER_OK && transient(st) && !(ready && st != CRUSTER_OK)) {
    int r = wf_stop(wf, CRUSTER_E_PERSISTENCE, err, "child workflow %s: %s; the execution runs again later",
                    workflow, serr ? serr->message : cruster_status_message(st));
    cruster_error_free(serr);
    cruster_free(rep);
    return r;
  }
  rc = settle(wf, ST_J_CHILD, workflow, st, rep, rlen, serr ? serr->message : NULL, out, out_len, err);
  cruster_error_free(serr);
  return rc;
}
