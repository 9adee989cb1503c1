/* Internal: the layout of cruster_config. Durations are milliseconds. */
#ifndef CORE_CONFIG_INTERNAL_H
#define CORE_CONFIG_INTERNAL_H

#include "core/prefix.h"

#include <cruster/config.h>
#include "log.h"

/* The largest duration (ms) anything accepts: 9223372036854 ms, about 292
 * years. It keeps durations convertible to nanoseconds and lets them be
 * added to a monotonic or Unix time in ms without overflow. */
#define CORE_DURATION_MAX_MS (INT64_MAX / 1000000)

struct cruster_config {
  char *runner_address;        /* "127.0.0.1:9000" */
  char *runner_listen_address; /* NULL = bind runner_address */
  int64_t runner_weight;       /* 1; 0 = drain */
  char **shard_groups;         /* ["default"] */
  size_t n_shard_groups;
  int64_t shards_per_group; /* 300 */
  int64_t runner_lock_ttl;  /* 30000 */
  int64_t runner_lock_refresh_interval;   /* 10000 */
  int64_t entity_max_idle_time;           /* 60000 */
  int64_t entity_termination_timeout;     /* 15000 */
  int64_t entity_mailbox_capacity;        /* 100 */
  int64_t entity_max_concurrent_requests; /* 1; 0 = unbounded */
  int64_t storage_poll_interval;          /* 500 */
  int64_t storage_inbox_size;             /* 1000 */
  int64_t runner_poll_interval;           /* 5000 */
  int64_t shard_rebalance_debounce;       /* 3000 */
  int64_t shard_rebalance_retry_interval; /* 2000 */
  int64_t entity_crash_max_retries;       /* 0 = unlimited */
  int64_t entity_crash_initial_backoff;   /* 500 */
  int64_t entity_crash_max_backoff;       /* 10000 */
  int64_t storage_message_max_retries;    /* 10; 0 = never dead-letter */
  int64_t shard_lock_refresh_max_failures; /* 3 */
  int64_t entity_registration_timeout;    /* 5000 */
  int64_t send_retry_interval;            /* 100 */
  int64_t singleton_crash_backoff_base;   /* 1000 */
  int64_t send_retry_count;               /* 3 */
  int64_t storage_resumption_max_retries; /* 0 = unlimited */
  int64_t grpc_connect_timeout;           /* 5000 */
  int64_t last_read_guard_interval;       /* 600000; 0 disables */
  char *shard_assignment_strategy;        /* "rendezvous" (the only one) */
  int64_t detachment_window;              /* 200 */
  int64_t detachment_recover_window;      /* 500 */
  int64_t detachment_enabled;             /* 0 */
  int64_t keepalive_failure_threshold;    /* 3 */
  int64_t acquire_retry_interval;         /* 200 */
  int64_t acquire_retry_window;           /* 2000 */
  /* cruster's own fields */
  int64_t default_call_timeout; /* 30000 */
  int64_t max_payload_size;     /* 4194304 bytes */
  int64_t worker_threads;       /* 4 */
  int64_t worker_threads_max;   /* 64 */
  int64_t storage_retention;          /* 24h; processed messages and replies kept this long; 0 = forever */
  int64_t storage_auto_migrate;       /* 0; apply migrations when the runtime starts */
  char *storage_migrations_table;     /* "cruster_migrations" */
  int64_t storage_pool_size;          /* 4 connections */
  int64_t storage_batch_size;         /* 256 writes per commit at most */
  int64_t idempotency_strict_payload; /* 0: a keyed repeat with another payload gets the
                                       * stored reply; 1: CRUSTER_E_CONFLICT */
  int64_t workflow_pool_size;         /* 16 blocking connections for activities and journals */
  int64_t storage_retry_backoff;      /* 200ms; first redelivery delay, doubling, capped at 30 s */
  /* The transport (src/transport): TLS PEM files (NULL = plaintext) and the
   * largest message on the wire (0 = max_payload_size + 64 KiB, see
   * core_config_max_message). */
  char *transport_tls_cert;
  char *transport_tls_key;
  char *transport_tls_ca;
  int64_t transport_tls_require_client_cert; /* 0 */
  int64_t transport_max_message_size;        /* 0 = max_payload_size + 65536 */
  /* Runner health (cluster mode, docs/architecture.md "Runner health"). */
  int64_t runner_ping_timeout;    /* 5000: a runner not answering a Ping within it is dead */
  int64_t runner_stall_threshold; /* 30000; 0 = off: work waiting this long for a worker,
                                   * none taken meanwhile, makes the runner "stalled" */
  core_logger logger;
};

/* The transport's message size limit in bytes: transport_max_message_size,
 * or max_payload_size + 64 KiB when it is 0. */
static inline int64_t core_config_max_message(const cruster_config *cfg) {
  return cfg->transport_max_message_size ? cfg->transport_max_message_size
                                         : cfg->max_payload_size + 65536;
}

/* 1 if `group` is one of cfg->shard_groups. */
int core_config_has_group(const cruster_config *cfg, const char *group);

#endif
