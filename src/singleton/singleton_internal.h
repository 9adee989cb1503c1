/* Internal: singletons (cruster/singleton.h). One sg_registry per runtime,
 * made by the runner. The registry listens to the sharding layer's ownership
 * (sh_own_listen): a singleton starts when its shard is gained and is
 * cancelled when it is lost -- nothing else starts or stops it, so in
 * cluster mode it follows the shard locks with no change here. Its list is
 * loop-owned; registration posts to the loop. */
#ifndef SG_SINGLETON_INTERNAL_H
#define SG_SINGLETON_INTERNAL_H

#include "core/prefix.h"

#include <cruster/cron_job.h>
#include <cruster/singleton.h>

#include "core/config_internal.h"
#include "core/log.h"
#include "core/metrics_internal.h"
#include "loop/loop.h"
#include "sharding/sharding_internal.h"
#include "storage/wf_storage.h"

typedef struct sg_registry sg_registry;

/* What the registry needs from the runner. */
typedef struct sg_hooks {
  void *ud;
  /* Loop thread: the last running singleton function returned (a stop that
   * waits for them goes on). */
  void (*idle)(void *ud);
} sg_hooks;

/* Makes the registry and listens to `sh`'s ownership. `rt_handle` is what
 * cruster_singleton_runtime returns; `wops`/`wimpl` the storage's workflow
 * side (cron slots; NULL without storage). NULL on OOM. Call before the
 * loop thread runs (or on it). */
sg_registry *sg_new(rt_loop *loop, sh_sharding *sh, const cruster_config *cfg,
                    const core_logger *lg, cruster_metrics *metrics, const sg_hooks *hooks,
                    void *rt_handle, const st_wf_ops *wops, void *wimpl);
/* After the loop is gone. NULL is a no-op. */
void sg_free(sg_registry *r);

/* cruster_runtime_register_singleton (checks everything; r NULL refused). */
cruster_status sg_register(sg_registry *r, const char *name, cruster_singleton_fn fn, void *user,
                           const cruster_singleton_opts *opts, cruster_error **err);

/* Loop thread: singleton functions running now. */
size_t sg_running(const sg_registry *r);
/* Runs (functions not returned yet) of singletons of shard (group, shard). */
size_t sg_running_in_shard(const sg_registry *r, const char *group, int32_t shard);
/* Loop thread: logs each running singleton (a stop's grace ran out). */
void sg_report_running(const sg_registry *r);

/* ---- ClusterCron (cron_job.c) ---- */

/* cruster_runtime_register_cron_job / cruster_cron_slots (r NULL refused). */
cruster_status sg_cron_register(sg_registry *r, const char *name, const char *expr,
                                cruster_cron_job_fn fn, void *user,
                                const cruster_cron_job_opts *opts, cruster_error **err);
cruster_status sg_cron_slots(sg_registry *r, const char *job, size_t limit,
                             cruster_cron_slot **out, size_t *n, cruster_error **err);

/* What cron_job.c reads of the registry. */
const st_wf_ops *sg_wf(const sg_registry *r, void **impl);
const cruster_config *sg_cfg(const sg_registry *r);
const core_logger *sg_lg(const sg_registry *r);
/* Keeps `p` until sg_free, which calls free_fn(p). 0, or -1 on OOM (then
 * nothing is kept). Any thread. */
int sg_keep(sg_registry *r, void *p, void (*free_fn)(void *p));

#endif
