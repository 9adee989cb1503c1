/*
 * cruster/registry.h -- runner registries (cluster membership).
 *
 * A registry tells a runner which other runners exist and holds the shard
 * locks. Passing NULL where a registry is asked for selects single-node mode:
 * this runner owns every shard of every configured shard group and no other
 * runner exists.
 *
 * The one backend is etcd v3 (3.4 or later), reached through its JSON
 * gateway over HTTP. Keys under the configured prefix P (the layout of the
 * original cruster, so its tools read ours):
 *   P "runners/<host>:<port>"  {"address":{"host":..,"port":..},"weight":..,"healthy":..}
 *                               under the runner's lease
 *   P "shards/<group>:<n>"     "<host>:<port>" of the lock holder, under its lease
 *   P "machine_id_counter"     decimal text, no lease
 */
#ifndef CRUSTER_REGISTRY_H
#define CRUSTER_REGISTRY_H

#include "common.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A runner registry backend. Opaque. */
typedef struct cruster_registry cruster_registry;

/*
 * Options of the etcd registry. Initialise with CRUSTER_ETCD_OPTS_INIT (which
 * sets `size` and the defaults), then set what you need. The struct and the
 * strings it points to are only read during cruster_registry_etcd_new.
 *
 * It grows like every options struct of this API (see cruster_call_opts in
 * client.h): fields are only appended; `size` must be at least
 * CRUSTER_ETCD_OPTS_SIZE_V1; the fields an older caller's struct lacks take
 * their defaults; bytes beyond what this library knows must be zero.
 */
typedef struct cruster_etcd_opts {
  /** sizeof(cruster_etcd_opts) as compiled by the caller. */
  size_t size;
  /**
   * Required. The etcd client URLs, comma-separated, each "http://host:port"
   * (or https://), e.g. "http://127.0.0.1:2379,http://10.0.0.2:2379". Spaces
   * around the commas are ignored. A request that cannot reach one endpoint
   * is tried on the next; later requests start at the one that worked. At
   * most 16 endpoints, 4096 bytes in all.
   */
  const char *endpoints;
  /** Required. The key prefix, ending with '/' (e.g. "/cluster-tests/");
   *  1..1024 bytes without control characters. */
  const char *prefix;
  /** The runner lease's TTL in milliseconds: > 0, a whole number of
   *  seconds (etcd leases are in seconds), at most one day. Default 30000. */
  int64_t lease_ttl_ms;
  /** The deadline of one etcd request, in ms: 1..600000. Default 5000. */
  int64_t request_timeout_ms;
  /** How often the runner list is read as a safety net beside the watch,
   *  in ms: 1..3600000. Default 5000. */
  int64_t poll_interval_ms;
  /**
   * The lease-deadline model's safety margin, in ms. The lease is provably
   * alive until (send time of the last successful keep-alive + the TTL it
   * returned); once now passes that deadline minus this margin without a
   * newer successful keep-alive the registry reports the lease uncertain (the
   * runner must stop running its shards). 0 = a quarter of the TTL. Must be
   * below the TTL.
   */
  int64_t lease_margin_ms;
  /** Non-zero turns the lease-deadline model off (the lease is then reported
   *  lost only when etcd says so). Default 0: on. */
  int lease_deadline_off;
} cruster_etcd_opts;

#define CRUSTER_ETCD_OPTS_INIT {sizeof(cruster_etcd_opts), NULL, NULL, 30000, 5000, 5000, 0, 0}
/** The size of the first version of cruster_etcd_opts (through `lease_deadline_off`). */
#define CRUSTER_ETCD_OPTS_SIZE_V1 \
  (offsetof(cruster_etcd_opts, lease_deadline_off) + sizeof(int))

/*
 * cruster_registry_etcd_new
 *   Creates an etcd registry from `opts` (validated and copied). Nothing is
 *   contacted yet: the runtime it is handed to connects when it starts.
 *   Hand it to cruster_runtime_new, which takes ownership of it, or free it
 *   with cruster_registry_free.
 * Returns: CRUSTER_OK with *out set; CRUSTER_E_INVALID_ARGUMENT (opts or out
 *   NULL, opts.size too small or a newer option set, or a field out of range:
 *   the message names the field -- no or empty endpoints, an endpoint that is
 *   not an http(s) URL, a prefix without its trailing '/', lease_ttl_ms <= 0
 *   or not whole seconds, ...); CRUSTER_E_NOMEM.
 * Threads: any.
 */
CRUSTER_API cruster_status cruster_registry_etcd_new(const cruster_etcd_opts *opts,
                                                     cruster_registry **out, cruster_error **err);

/*
 * cruster_registry_free
 *   Frees a registry that was never handed to a runtime. NULL is a no-op.
 *   Never call it on a registry a runtime owns.
 * Threads: any.
 */
CRUSTER_API void cruster_registry_free(cruster_registry *registry);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_REGISTRY_H */
