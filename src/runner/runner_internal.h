/* Internal: the runner -- the top layer. struct cruster_runtime composes
 * the layers below (loop, entity manager, sharding, storage); only this
 * folder knows it. Everything under "loop-owned" is touched only on the
 * loop thread. */
#ifndef RN_RUNNER_INTERNAL_H
#define RN_RUNNER_INTERNAL_H

#include "core/prefix.h"

#include <cruster/cruster.h>
#include <uv.h>

#include "core/config_internal.h"
#include "core/log.h"
#include "core/metrics_internal.h"
#include "core/snowflake.h"
#include "entity/entity_internal.h"
#include "loop/loop.h"
#include "sharding/sharding_internal.h"
#include "singleton/singleton_internal.h"
#include "storage/storage_internal.h"
#include "workflow/workflow_internal.h"

/* The runner's own metric series. */
typedef struct rn_metrics {
  core_metric *shards, *runners, *runners_healthy, *singletons, *detached;
} rn_metrics;

struct cruster_runtime {
  cruster_config *cfg;
  const core_logger *lg;
  cruster_metrics *metrics;
  rn_metrics m;
  core_snowflake snowflake;
  cruster_storage *storage;
  cruster_registry *registry;
  char *runner_address;
  /* The layers, bottom up. */
  rt_loop loop;
  em_manager em;
  sh_sharding sh;
  wf_engine *wf; /* workflows (above sharding) */
  sg_registry *sg; /* singletons (above sharding) */

  /* ---- loop-owned ---- */
  uv_timer_t stop_timer;
  struct rn_stop_ctx *stopping; /* a stop waits for handlers */
  rt_sync *stop_sync;           /* stop waits for the storage to flush */
};

#endif
