/*
 * counter.c -- a counter entity with the C API.
 *
 * Entities are stateless: the counts live in "your database", here a
 * mutex-protected table. Payloads and replies are decimal text.
 */
#define _POSIX_C_SOURCE 200809L
#include <cruster/cruster.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct counters {
  pthread_mutex_t mu;
  int n;
  struct { char id[CRUSTER_MAX_ENTITY_ID_LEN + 1]; long long value; } slot[64];
};

/* Adds `amount` to counter `id` and returns the new value (-1: table full). */
static int counters_add(struct counters *c, const char *id, long long amount, long long *value) {
  int rc = 0;
  pthread_mutex_lock(&c->mu);
  int i = 0;
  while (i < c->n && strcmp(c->slot[i].id, id) != 0) i++;
  if (i == c->n && c->n < (int)(sizeof c->slot / sizeof c->slot[0])) {
    snprintf(c->slot[i].id, sizeof c->slot[i].id, "%s", id);
    c->slot[i].value = 0;
    c->n++;
  }
  if (i < c->n) {
    c->slot[i].value += amount;
    *value = c->slot[i].value;
  } else {
    rc = -1;
  }
  pthread_mutex_unlock(&c->mu);
  return rc;
}

static void reply_number(cruster_request *req, long long value) {
  char out[32];
  int n = snprintf(out, sizeof out, "%lld", value);
  cruster_request_reply(req, out, (size_t)n);
}

static void on_increment(void *user, cruster_request *req) {
  size_t len = 0;
  const char *payload = cruster_request_payload(req, &len);
  char text[32] = "";
  char *end = NULL;
  if (len == 0 || len >= sizeof text) {
    cruster_request_fail(req, CRUSTER_E_MALFORMED, "amount must be a decimal integer");
    return;
  }
  memcpy(text, payload, len);
  long long amount = strtoll(text, &end, 10);
  if (*end != '\0') {
    cruster_request_fail(req, CRUSTER_E_MALFORMED, "amount must be a decimal integer");
    return;
  }
  long long value = 0;
  if (counters_add(user, cruster_request_entity_id(req), amount, &value) != 0) {
    cruster_request_fail(req, CRUSTER_E_APPLICATION - 1, "counter table full");
    return;
  }
  reply_number(req, value);
}

static void on_get(void *user, cruster_request *req) {
  long long value = 0;
  if (counters_add(user, cruster_request_entity_id(req), 0, &value) != 0) {
    cruster_request_fail(req, CRUSTER_E_APPLICATION - 1, "counter table full");
    return;
  }
  reply_number(req, value);
}

/* Prints the error and exits when a call failed. `err` is passed by address
 * and read here, after the call: check(f(..., &err), err, ...) would read it
 * in an unspecified order relative to f (C leaves the order of argument
 * evaluation open), often before f set it. */
static void check(cruster_status st, cruster_error **err, const char *what) {
  if (st == CRUSTER_OK) return;
  fprintf(stderr, "%s: %s: %s\n", what, cruster_status_name(st), cruster_error_message(*err));
  cruster_error_free(*err);
  *err = NULL;
  exit(1);
}

static long long call(cruster_runtime *rt, const char *method, const char *payload,
                      const cruster_call_opts *opts) {
  void *reply = NULL;
  size_t len = 0;
  cruster_error *err = NULL;
  check(cruster_send_sync(rt, "Counter", "counter-1", method, payload, strlen(payload), opts,
                          &reply, &len, &err),
        &err, method);
  long long value = reply != NULL ? strtoll(reply, NULL, 10) : 0; /* replies end with NUL */
  cruster_free(reply);
  return value;
}

int main(void) {
  static struct counters counters = {.mu = PTHREAD_MUTEX_INITIALIZER};
  cruster_error *err = NULL;

  cruster_config *cfg = cruster_config_new();
  if (cfg == NULL) return 1;
  check(cruster_config_set_int(cfg, "shards_per_group", 16, &err), &err, "config");

  cruster_storage *storage = NULL;
  check(cruster_storage_memory_new(&storage, &err), &err, "storage");
  cruster_runtime *rt = NULL;
  check(cruster_runtime_new(cfg, storage, NULL, &rt, &err), &err, "runtime");
  cruster_config_free(cfg); /* the runtime keeps a copy */

  cruster_entity_def *def = NULL;
  check(cruster_entity_def_new("Counter", &def, &err), &err, "entity");
  check(cruster_entity_def_add_rpc(def, "increment", CRUSTER_RPC_PERSISTED, on_increment,
                                   &counters, &err),
        &err, "increment");
  check(cruster_entity_def_add_rpc(def, "get", 0, on_get, &counters, &err), &err, "get");
  check(cruster_runtime_register_entity(rt, def, &err), &err, "register");
  cruster_entity_def_free(def);
  check(cruster_runtime_start(rt, &err), &err, "start");

  /* Persisted with an idempotency key: the retry gets the stored reply. */
  cruster_call_opts once = CRUSTER_CALL_OPTS_INIT;
  once.idempotency_key = "deposit-1";
  once.idempotency_key_len = strlen("deposit-1");
  call(rt, "increment", "5", &once);
  call(rt, "increment", "5", &once);
  printf("counter-1 = %lld\n", call(rt, "get", "", NULL));

  check(cruster_runtime_stop(rt, &err), &err, "stop");
  cruster_runtime_free(rt);
  return 0;
}
