/* The public functions that take a cruster_runtime but belong to a lower
 * layer: each passes that layer's own object (NULL for a NULL runtime, which
 * the layer refuses as such) to the layer's function of the same name, which
 * does every check. */
#include "runner/runner_internal.h"

#define EM(rt) ((rt) ? &(rt)->em : NULL)
#define SH(rt) ((rt) ? &(rt)->sh : NULL)

/* ---- entity (cruster/entity.h) ---- */

cruster_status cruster_runtime_register_entity(cruster_runtime *rt, const cruster_entity_def *d,
                                               cruster_error **err) {
  return em_register(EM(rt), d, err);
}

/* ---- sharding (cruster/client.h) ---- */

cruster_status cruster_send(cruster_runtime *rt, const char *type, const char *id,
                            const char *method, const void *payload, size_t len,
                            const cruster_call_opts *opts, cruster_reply_fn fn, void *user,
                            cruster_error **err) {
  return sh_send(SH(rt), type, id, method, payload, len, opts, fn, user, err);
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
