/* Stored replies and dead letters: sh_poll_reply, sh_join_reply,
 * sh_dead_letters, sh_dead_letter_redeliver (behind the public cruster_*
 * of the same names, runner/api.c). */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "entity/entity_internal.h"
#include "sharding/sharding_internal.h"
#include "storage/storage_internal.h"

/* A request to the loop that a user thread waits for. */
typedef struct op {
  rt_sync sync; /* first: the loop side casts its rt_cmd to op */
  /* in */
  int64_t request_id;
  size_t limit;
  const char *type, *id, *method; /* poll: the keyed call's identity */
  st_key key;
  /* out */
  char *msg; /* poll: the text of a stored failure (the caller frees it) */
  int found, processed;
  int reply_status; /* the stored answer's status (poll) */
  void *data;
  size_t len;
  cruster_message_list *list;
} op;

/* A storage failure as the caller sees it: the runtime stopping says so,
 * anything else is a persistence error. */
static int storage_status(int status) {
  return status == CRUSTER_E_SHUTTING_DOWN ? status : CRUSTER_E_PERSISTENCE;
}

static void op_finish(op *o, int status, const char *msg) {
  if (status != CRUSTER_OK) o->sync.err = core_error_new(status, "%s", msg ? msg : cruster_status_message(status));
  rt_sync_done(&o->sync, status);
}

static int op_run(sh_sharding *sh, op *o, rt_cmd_fn fn, cruster_error **err) {
  if (!sh) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (rt_on_loop(sh->loop))
    return core_error_set(err, CRUSTER_E_STATE, "blocking calls are not allowed on the loop thread");
  int rc = rt_check_started(sh->loop, err);
  if (rc != CRUSTER_OK) return rc;
  if (!sh->storage)
    return core_error_set(err, CRUSTER_E_PERSISTENCE, "the runtime has no message storage");
  return rt_run_sync(sh->loop, &o->sync, fn, sh, err);
}

/* Checks the identity of a keyed call a caller looks up. */
static int check_identity(const char *type, const char *id, const char *method, const void *key,
                          size_t key_len, cruster_error **err) {
  int st;
  if ((st = core_check_name("entity type", type, err)) != CRUSTER_OK) return st;
  if ((st = core_check_entity_id(id, err)) != CRUSTER_OK) return st;
  if ((st = core_check_name("method name", method, err)) != CRUSTER_OK) return st;
  if (!key || key_len == 0)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "an idempotency key is required");
  if (key_len > CRUSTER_MAX_KEY_LEN)
    return core_error_set(err, CRUSTER_E_PAYLOAD_TOO_LARGE,
                          "idempotency key of %zu bytes exceeds %d bytes", key_len,
                          CRUSTER_MAX_KEY_LEN);
  return CRUSTER_OK;
}

/* ---- poll -------------------------------------------------------------------- */

static void poll_got(void *ud, int status, const char *errmsg, int64_t request_id, int processed,
                     const st_reply *r) {
  op *o = ud;
  int found = request_id != 0;
  if (status != CRUSTER_OK) {
    op_finish(o, storage_status(status), errmsg ? errmsg : "message storage failed");
    return;
  }
  o->found = found;
  o->processed = processed;
  if (processed && r) {
    if (r->status == CRUSTER_OK) {
      o->data = malloc(r->len + 1);
      if (!o->data) {
        op_finish(o, CRUSTER_E_NOMEM, "out of memory");
        return;
      }
      if (r->len) memcpy(o->data, r->data, r->len);
      ((char *)o->data)[r->len] = 0;
      o->len = r->len;
      op_finish(o, CRUSTER_OK, NULL);
    } else {
      /* The lookup worked; the stored answer is a failure. */
      o->reply_status = r->status;
      o->msg = core_strdup(r->message ? r->message : cruster_status_message(r->status));
      op_finish(o, CRUSTER_OK, NULL);
    }
    return;
  }
  op_finish(o, CRUSTER_OK, NULL);
}

static void poll_on_loop(void *ud, rt_cmd *cmd) {
  sh_sharding *sh = ud;
  op *o = (op *)cmd;
  sh->storage->ops->get_keyed(sh->storage, o->type, o->id, o->method, &o->key, poll_got, o);
}

cruster_status sh_poll_reply(sh_sharding *sh, const char *type, const char *id,
                                  const char *method, const void *key, size_t key_len, int *ready,
                                  void **reply, size_t *reply_len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (ready) *ready = 0;
  if (reply) *reply = NULL;
  if (reply_len) *reply_len = 0;
  if (err) *err = NULL;
  int st = check_identity(type, id, method, key, key_len, err);
  if (st != CRUSTER_OK) return st;
  op o;
  memset(&o, 0, sizeof(o));
  o.type = type;
  o.id = id;
  o.method = method;
  o.key.data = key;
  o.key.len = key_len;
  st = op_run(sh, &o, poll_on_loop, err);
  char *failure = o.msg;
  o.msg = NULL;
  if (st != CRUSTER_OK) {
    free(o.data);
    free(failure);
    return st;
  }
  if (!o.found) {
    free(failure);
    return core_error_set(err, CRUSTER_E_NOT_FOUND,
                          "no persisted call to %s/%s '%s' with that key is stored", type, id, method);
  }
  if (!o.processed) {
    free(failure);
    return CRUSTER_OK;
  }
  if (ready) *ready = 1;
  if (o.reply_status != CRUSTER_OK) {
    int status = o.reply_status;
    core_error_set(err, status, "%s", failure ? failure : cruster_status_message(status));
    free(failure);
    return status;
  }
  if (reply) *reply = o.data; else free(o.data);
  if (reply_len) *reply_len = o.len;
  return CRUSTER_OK;
}

/* ---- join --------------------------------------------------------------------- */

typedef struct join_ctx {
  sh_sharding *sh;
  int64_t request_id;
} join_ctx;

static void join_got(void *ud, int status, const char *errmsg, int found, int processed,
                     const st_reply *r) {
  join_ctx *j = ud;
  sh_sharding *sh = j->sh;
  if (status != CRUSTER_OK) {
    char msg[256];
    snprintf(msg, sizeof(msg), "message storage failed: %s", errmsg ? errmsg : "unknown error");
    sh_waiters_resolve(sh, j->request_id, CRUSTER_E_PERSISTENCE, NULL, 0, msg);
  } else if (!found) {
    sh_waiters_resolve(sh, j->request_id, CRUSTER_E_NOT_FOUND, NULL, 0,
                       "no persisted call with that key is stored");
  } else if (processed && r) {
    sh_waiters_resolve(sh, j->request_id, r->status, r->data, r->len, r->message);
  }
  /* else: pending; the waiter is resolved when the reply is saved. */
  free(j);
}

/* The keyed call is found (or not): the join waits on the id that holds
 * it. `hold` is bound to the call while the lookup runs, so a call that timed
 * out meanwhile is seen as gone (hold->call NULL). */
static void join_found(void *ud, int status, const char *errmsg, int64_t request_id,
                       int processed, const st_reply *r) {
  sh_save *hold = ud;
  sh_sharding *sh = hold->sh;
  sh_call *c = hold->call;
  if (c) c->save = NULL;
  free(hold);
  if (!c) return;
  if (status != CRUSTER_OK) {
    char msg[256];
    snprintf(msg, sizeof(msg), "message storage failed: %s", errmsg ? errmsg : "unknown error");
    sh_call_complete(sh, c, storage_status(status), NULL, 0, msg);
  } else if (request_id == 0) {
    char msg[CRUSTER_MAX_NAME_LEN * 2 + CRUSTER_MAX_ENTITY_ID_LEN + 96];
    snprintf(msg, sizeof(msg), "no persisted call to %s/%s '%s' with that key is stored",
             c->type, c->id, c->method);
    sh_call_complete(sh, c, CRUSTER_E_NOT_FOUND, NULL, 0, msg);
  } else if (processed && r) {
    sh_call_complete(sh, c, r->status, r->data, r->len, r->message);
  } else {
    /* Pending: wait on its id, then look again by id -- its answer may have
     * been stored (on another connection) since the lookup read it. */
    join_ctx *j = malloc(sizeof(*j));
    c->request_id = request_id;
    if (!j || sh_waiter_add(sh, c) != 0) {
      free(j);
      sh_call_complete(sh, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
      return;
    }
    j->sh = sh;
    j->request_id = request_id;
    sh->storage->ops->get_reply(sh->storage, request_id, join_got, j);
  }
}

static void join_on_loop(void *ud, rt_cmd *cmd) {
  sh_sharding *sh = ud;
  sh_call *c = (sh_call *)cmd;
  c->heap_idx = SIZE_MAX;
  if (atomic_load(&sh->loop->state) != RT_STARTED || sh->stopping) {
    sh_call_complete(sh, c, CRUSTER_E_SHUTTING_DOWN, NULL, 0, "the runtime is shutting down");
    return;
  }
  sh_save *hold = calloc(1, sizeof(*hold));
  if (!hold || sh_heap_insert(sh, c) != 0) {
    free(hold);
    sh_call_complete(sh, c, CRUSTER_E_NOMEM, NULL, 0, "out of memory");
    return;
  }
  hold->sh = sh;
  hold->call = c;
  c->save = hold;
  st_key key = {c->key, c->key_len};
  sh->storage->ops->get_keyed(sh->storage, c->type, c->id, c->method, &key,
                              join_found, hold);
}

cruster_status sh_join_reply(sh_sharding *sh, const char *type, const char *id,
                                  const char *method, const void *key, size_t key_len,
                                  const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                                  cruster_error **err) {
  CORE_ERR_CLEAR(err);
  int st;
  if (!sh) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "a join needs a reply callback");
  if ((st = check_identity(type, id, method, key, key_len, err)) != CRUSTER_OK) return st;
  sh_call_opts o;
  if ((st = sh_call_opts_read(opts, &o, err)) != CRUSTER_OK) return st;
  /* The call's own options may be passed again: only the timeout and the
   * inline flag mean something to a join. */
  const unsigned known = CRUSTER_CALL_PERSISTED | CRUSTER_CALL_INLINE_CALLBACK;
  if (o.flags & ~known)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "unknown call flags 0x%x in opts.flags 0x%x", o.flags & ~known, o.flags);
  if ((st = rt_check_started(sh->loop, err)) != CRUSTER_OK) return st;
  if (!sh->storage)
    return core_error_set(err, CRUSTER_E_PERSISTENCE, "the runtime has no message storage");
  sh_call *c = sh_call_new(type, id, method);
  if (!c) return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  /* The identity travels in the call (names, key): the lookup and the
   * timeout's message use it. */
  c->key = core_memdup(key, key_len);
  if (!c->key) {
    sh_call_free(c);
    return core_error_set(err, CRUSTER_E_NOMEM, "out of memory");
  }
  c->key_len = key_len;
  c->kind = SH_CALL_SEND;
  c->flags = o.flags & CRUSTER_CALL_INLINE_CALLBACK;
  c->fn = fn;
  c->user = user;
  int64_t timeout = o.timeout_ms > 0 ? o.timeout_ms : sh->cfg->default_call_timeout;
  c->deadline_ms = rt_deadline_after(core_mono_ms(), timeout);
  c->cmd.fn = join_on_loop;
  c->cmd.ud = sh;
  if (rt_post(sh->loop, &c->cmd) != 0) {
    sh_call_free(c);
    return core_error_set(err, CRUSTER_E_SHUTTING_DOWN, "the runtime has stopped");
  }
  return CRUSTER_OK;
}

/* ---- dead letters --------------------------------------------------------------- */

static void dead_listed(void *ud, int status, const char *errmsg, cruster_message_list *list) {
  op *o = ud;
  o->list = list;
  op_finish(o, status == CRUSTER_OK ? CRUSTER_OK : storage_status(status), errmsg);
}

static void dead_on_loop(void *ud, rt_cmd *cmd) {
  sh_sharding *sh = ud;
  op *o = (op *)cmd;
  sh->storage->ops->list_dead(sh->storage, o->limit, dead_listed, o);
}

cruster_status sh_dead_letters(sh_sharding *sh, size_t limit, cruster_message_list **out,
                                    cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!out) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "out must not be NULL");
  *out = NULL;
  op o;
  memset(&o, 0, sizeof(o));
  o.limit = limit;
  int st = op_run(sh, &o, dead_on_loop, err);
  if (st == CRUSTER_OK) *out = o.list;
  else cruster_message_list_free(o.list);
  return st;
}

typedef struct redeliver_op {
  op o;
  sh_sharding *sh;
} redeliver_op;

static void redelivered(void *ud, int status, const char *errmsg) {
  redeliver_op *r = ud;
  if (status == CRUSTER_OK) sh_poll_schedule(r->sh, 0);
  op_finish(&r->o,
            status == CRUSTER_OK || status == CRUSTER_E_NOT_FOUND ? status : storage_status(status),
            errmsg);
}

static void redeliver_on_loop(void *ud, rt_cmd *cmd) {
  sh_sharding *sh = ud;
  redeliver_op *r = (redeliver_op *)cmd;
  r->sh = sh;
  sh->storage->ops->redeliver(sh->storage, r->o.request_id, redelivered, r);
}

cruster_status sh_dead_letter_redeliver(sh_sharding *sh, int64_t request_id,
                                             cruster_error **err) {
  CORE_ERR_CLEAR(err);
  redeliver_op r;
  memset(&r, 0, sizeof(r));
  r.o.request_id = request_id;
  return op_run(sh, &r.o, redeliver_on_loop, err);
}
