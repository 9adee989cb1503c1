/* Internal: singletons (cruster/singleton.h). One sg_registry per runtime,
 * made by the runner. The registry listens to the sharding layer's ownership
 * (sh_own_listen): a singleton starts when its shard is gained and is
 * cancelled when it is lost -- nothing else starts or stops it, so in
 * cluster mode it follows the shard locks with no change here. Its list is
 * loop-owned; registration posts to the loop. */
#ifndef SG_SINGLETON_INTERNAL_H
#define SG_SINGLETON_INTERNAL_H

#include "core/prefix.h"

#include <cruster/singleton.h>

#include "core/config_internal.h"
#include "core/log.h"
#include "core/metrics_internal.h"
#include "loop/loop.h"
#include "sharding/sharding_internal.h"

typedef struct sg_registry sg_registry;

/* What the registry needs from the runner. */
typedef struct sg_hooks {
  void *ud;
  /* Loop thread: the last running singleton function returned (a stop that
   * waits for them goes on). */
  void (*idle)(void *ud);
} sg_hooks;

/* Makes the registry and listens to `sh`'s ownership. `rt_handle` is what
 * cruster_singleton_runtime returns. NULL on OOM. Call before the loop
 * thread runs (or on it). */
sg_registry *sg_new(rt_loop *loop, sh_sharding *sh, const cruster_config *cfg,
                    const core_logger *lg, cruster_metrics *metrics, const sg_hooks *hooks,
                    void *rt_handle);
/* After the loop is gone. NULL is a no-op. */
void sg_free(sg_registry *r);

/* cruster_runtime_register_singleton (checks everything; r NULL refused). */
cruster_status sg_register(sg_registry *r, const char *name, cruster_singleton_fn fn, void *user,
                           const cruster_singleton_opts *opts, cruster_error **err);

/* Loop thread: singleton functions running now. */
size_t sg_running(const sg_registry *r);
/* Loop thread: logs each running singleton (a stop's grace ran out). */
void sg_report_running(const sg_registry *r);

#endif
