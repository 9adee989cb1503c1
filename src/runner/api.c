/* The public functions that take a cruster_runtime but belong to a lower
 * layer: each passes that layer's own object (NULL for a NULL runtime, which
 * the layer refuses as such) to the layer's function of the same name, which
 * does every check. */
#include "core/error.h"
#include "runner/runner_internal.h"

#define EM(rt) ((rt) ? &(rt)->em : NULL)
#define SH(rt) ((rt) ? &(rt)->sh : NULL)

/* ---- entity (cruster/entity.h) ---- */

cruster_status cruster_runtime_register_entity(cruster_runtime *rt, const cruster_entity_def *d,
                                               cruster_error **err) {
  return em_register(EM(rt), d, err);
}

/* ---- singletons (cruster/singleton.h) ---- */

cruster_status cruster_runtime_register_singleton(cruster_runtime *rt, const char *name,
                                                  cruster_singleton_fn fn, void *user,
                                                  const cruster_singleton_opts *opts,
                                                  cruster_error **err) {
  return sg_register(rt ? rt->sg : NULL, name, fn, user, opts, err);
}

/* ---- ClusterCron (cruster/cron_job.h) ---- */

cruster_status cruster_runtime_register_cron_job(cruster_runtime *rt, const char *name,
                                                 const char *expr, cruster_cron_job_fn fn,
                                                 void *user, const cruster_cron_job_opts *opts,
                                                 cruster_error **err) {
  return sg_cron_register(rt ? rt->sg : NULL, name, expr, fn, user, opts, err);
}

cruster_status cruster_cron_slots(cruster_runtime *rt, const char *job, size_t limit,
                                  cruster_cron_slot **out, size_t *n, cruster_error **err) {
  return sg_cron_slots(rt ? rt->sg : NULL, job, limit, out, n, err);
}

/* ---- sharding (cruster/client.h) ---- */

cruster_status cruster_send(cruster_runtime *rt, const char *type, const char *id,
                            const char *method, const void *payload, size_t len,
                            const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                            cruster_error **err) {
  return sh_send(SH(rt), type, id, method, payload, len, opts, fn, user, err);
}

cruster_status cruster_send_stream(cruster_runtime *rt, const char *type, const char *id,
                                   const char *method, const void *payload, size_t len,
                                   const cruster_call_opts *opts, cruster_stream_item_fn item_fn,
                                   cruster_reply_fn end_fn, void *user, cruster_error **err) {
  return sh_send_stream(SH(rt), type, id, method, payload, len, opts, item_fn, end_fn, user, err);
}

cruster_status cruster_stream_open(cruster_runtime *rt, const char *type, const char *id,
                                   const char *method, const void *payload, size_t len,
                                   const cruster_call_opts *opts, cruster_stream **out,
                                   cruster_error **err) {
  return sh_stream_open(SH(rt), type, id, method, payload, len, opts, out, err);
}

cruster_status cruster_notify(cruster_runtime *rt, const char *type, const char *id,
                              const char *method, const void *payload, size_t len,
                              const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                              cruster_error **err) {
  return sh_notify(SH(rt), type, id, method, payload, len, opts, fn, user, err);
}

cruster_status cruster_send_sync(cruster_runtime *rt, const char *type, const char *id,
                                 const char *method, const void *payload, size_t len,
                                 const cruster_call_opts *opts, void **reply, size_t *reply_len,
                                 cruster_error **err) {
  return sh_send_sync(SH(rt), type, id, method, payload, len, opts, reply, reply_len, err);
}

cruster_status cruster_notify_sync(cruster_runtime *rt, const char *type, const char *id,
                                   const char *method, const void *payload, size_t len,
                                   const cruster_call_opts *opts, cruster_error **err) {
  return sh_notify_sync(SH(rt), type, id, method, payload, len, opts, err);
}

cruster_status cruster_poll_reply(cruster_runtime *rt, const char *type, const char *id,
                                  const char *method, const void *key, size_t key_len, int *ready,
                                  void **reply, size_t *reply_len, cruster_error **err) {
  return sh_poll_reply(SH(rt), type, id, method, key, key_len, ready, reply, reply_len, err);
}

cruster_status cruster_join_reply(cruster_runtime *rt, const char *type, const char *id,
                                  const char *method, const void *key, size_t key_len,
                                  const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                                  cruster_error **err) {
  return sh_join_reply(SH(rt), type, id, method, key, key_len, opts, fn, user, err);
}

cruster_status cruster_dead_letters(cruster_runtime *rt, size_t limit, cruster_message_list **out,
                                    cruster_error **err) {
  return sh_dead_letters(SH(rt), limit, out, err);
}

cruster_status cruster_dead_letter_redeliver(cruster_runtime *rt, int64_t request_id,
                                             cruster_error **err) {
  return sh_dead_letter_redeliver(SH(rt), request_id, err);
}

/* ---- workflows (cruster/workflow.h) ---- */

#define WF(rt) ((rt) ? (rt)->wf : NULL)

static cruster_status no_runtime(cruster_error **err) {
  return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "rt must not be NULL");
}

cruster_status cruster_runtime_register_workflow(cruster_runtime *rt, const cruster_workflow_def *def,
                                                 cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_register(WF(rt), def, err) : no_runtime(err);
}

cruster_status cruster_workflow_execution_id(cruster_runtime *rt, const char *workflow,
                                             const void *input, size_t len,
                                             const cruster_workflow_opts *opts, char **id,
                                             cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_execution_id(WF(rt), workflow, input, len, opts, id, err) : no_runtime(err);
}

cruster_status cruster_workflow_start(cruster_runtime *rt, const char *workflow, const void *input,
                                      size_t len, const cruster_workflow_opts *opts, char **id,
                                      cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_start(WF(rt), workflow, input, len, opts, id, err) : no_runtime(err);
}

cruster_status cruster_workflow_execute(cruster_runtime *rt, const char *workflow,
                                        const void *input, size_t len,
                                        const cruster_workflow_opts *opts, cruster_reply_fn fn,
                                        void *user, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return no_runtime(err);
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "fn must not be NULL");
  return wf_execute(WF(rt), workflow, input, len, opts, fn, user, NULL, NULL, err);
}

cruster_status cruster_workflow_execute_sync(cruster_runtime *rt, const char *workflow,
                                             const void *input, size_t len,
                                             const cruster_workflow_opts *opts, void **out,
                                             size_t *out_len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_execute(WF(rt), workflow, input, len, opts, NULL, NULL, out, out_len, err)
            : no_runtime(err);
}

cruster_status cruster_workflow_poll(cruster_runtime *rt, const char *workflow, const char *id,
                                     int *ready, void **out, size_t *out_len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_poll(WF(rt), workflow, id, ready, out, out_len, err) : no_runtime(err);
}

cruster_status cruster_workflow_join(cruster_runtime *rt, const char *workflow, const char *id,
                                     int64_t timeout_ms, cruster_reply_fn fn, void *user,
                                     cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return no_runtime(err);
  if (!fn) return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "fn must not be NULL");
  return wf_join(WF(rt), workflow, id, timeout_ms, fn, user, NULL, NULL, err);
}

cruster_status cruster_workflow_join_sync(cruster_runtime *rt, const char *workflow,
                                          const char *id, int64_t timeout_ms, void **out,
                                          size_t *out_len, cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_join(WF(rt), workflow, id, timeout_ms, NULL, NULL, out, out_len, err)
            : no_runtime(err);
}

cruster_status cruster_workflow_resolve(cruster_runtime *rt, const char *workflow, const char *id,
                                        const char *name, const void *value, size_t len,
                                        cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return no_runtime(err);
  if (!name || !*name)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "deferred name must not be empty");
  return wf_resolve(WF(rt), workflow, id, name, CRUSTER_OK, value, len, NULL, err);
}

cruster_status cruster_workflow_reject(cruster_runtime *rt, const char *workflow, const char *id,
                                       const char *name, int code, const char *message,
                                       cruster_error **err) {
  CORE_ERR_CLEAR(err);
  if (!rt) return no_runtime(err);
  if (!name || !*name)
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT, "deferred name must not be empty");
  if (code == CRUSTER_OK || (!core_status_known(code) && code > CRUSTER_E_APPLICATION))
    return core_error_set(err, CRUSTER_E_INVALID_ARGUMENT,
                          "rejection code %d is neither a cruster error nor an application code (<= %d)",
                          code, (int)CRUSTER_E_APPLICATION);
  return wf_resolve(WF(rt), workflow, id, name, code, NULL, 0,
                    message ? message : cruster_status_message(code), err);
}

cruster_status cruster_workflow_cancel(cruster_runtime *rt, const char *workflow, const char *id,
                                       cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_resolve(WF(rt), workflow, id, "", CRUSTER_E_CANCELLED, NULL, 0,
                         "the execution was cancelled", err)
            : no_runtime(err);
}

cruster_status cruster_workflow_restart(cruster_runtime *rt, const char *workflow, const char *id,
                                        cruster_error **err) {
  CORE_ERR_CLEAR(err);
  return rt ? wf_restart(WF(rt), workflow, id, err) : no_runtime(err);
}
