/* The sharding object: setup, start, stop, free. */
#include <stdlib.h>
#include <string.h>

#include "sharding/cluster.h"
#include "sharding/sharding_internal.h"

int sh_init(sh_sharding *sh, rt_loop *loop, em_manager *em, cruster_storage *storage,
            const cruster_config *cfg, const core_logger *lg, cruster_metrics *metrics,
            core_snowflake *snowflake) {
  memset(sh, 0, sizeof(*sh));
  sh->loop = loop;
  sh->em = em;
  sh->storage = storage;
  sh->cfg = cfg;
  sh->lg = lg;
  sh->snowflake = snowflake;
  sh_metrics *x = &sh->m;
  cruster_metrics *m = metrics;
  x->calls_timeout = core_metrics_get(m, CORE_COUNTER, "cluster_calls_timed_out_total",
                                      "Calls whose deadline passed before an answer", NULL);
  x->calls_rejected = core_metrics_get(m, CORE_COUNTER, "cluster_calls_rejected_total",
                                       "Calls refused before delivery (unknown type or method, forbidden, full)", NULL);
  x->calls_inflight = core_metrics_get(m, CORE_GAUGE, "cluster_calls_in_flight",
                                       "Calls made on this runner still waiting for an answer", NULL);
  x->st_polls = core_metrics_get(m, CORE_COUNTER, "cluster_storage_polls_total",
                                 "Polls of message storage for messages to deliver", NULL);
  x->st_queued = core_metrics_get(m, CORE_COUNTER, "cluster_storage_messages_queued_total",
                                  "Persisted messages stored behind older ones of their entity (delivered by a poll)", NULL);
  x->st_saved = core_metrics_get(m, CORE_COUNTER, "cluster_storage_messages_saved_total",
                                 "Persisted messages written to message storage", NULL);
  x->st_duplicates = core_metrics_get(m, CORE_COUNTER, "cluster_storage_duplicates_total",
                                      "Persisted calls that found their request id already stored", NULL);
  x->st_replies = core_metrics_get(m, CORE_COUNTER, "cluster_storage_replies_saved_total",
                                   "Exit replies written to message storage", NULL);
  x->st_dead_letters = core_metrics_get(m, CORE_COUNTER, "cluster_storage_dead_letters_total",
                                        "Persisted messages moved to the dead letters", NULL);
  x->st_errors = core_metrics_get(m, CORE_COUNTER, "cluster_storage_errors_total",
                                  "Failed message-storage operations", NULL);
  x->streams = core_metrics_get(m, CORE_COUNTER, "cluster_stream_calls_total",
                                "Streamed calls (cruster_send_stream) made on this runner", NULL);
  x->stream_items = core_metrics_get(m, CORE_COUNTER, "cluster_stream_items_total",
                                     "Items of streamed calls handed to callers on this runner",
                                     NULL);
  core_map_init(&sh->waiters);
  uv_timer_init(&loop->uv, &sh->deadline_timer);
  uv_timer_init(&loop->uv, &sh->poll_timer);
  sh->deadline_timer.data = sh->poll_timer.data = sh;
  sh->single_node = 1;
  return sh_owner_init(sh);
}

void sh_start(sh_sharding *sh) {
  if (sh->single_node) sh_own_all(sh, 1);
  else if (sh->cl) sh_cluster_start(sh);
  if (sh->storage) sh_poll_schedule(sh, 0);
}

void sh_stop(sh_sharding *sh) {
  sh->stopping = 1;
  uv_timer_stop(&sh->poll_timer);
  if (sh->single_node) sh_own_all(sh, 0);
  else if (sh->cl) sh_cluster_stop(sh);
}

void sh_free(sh_sharding *sh) {
  core_map_clear(&sh->waiters);
  sh_cluster_free(sh);
  sh_owner_free(sh);
  free(sh->heap);
  sh->heap = NULL;
  sh->heap_len = sh->heap_cap = 0;
}
