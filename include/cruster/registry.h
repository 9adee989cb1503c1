/*
 * cruster/registry.h -- runner registries (cluster membership).
 *
 * A registry tells a runner which other runners exist and holds the shard
 * locks. Passing NULL where a registry is asked for selects single-node mode:
 * this runner owns every shard of every configured shard group and no other
 * runner exists.
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
 * cruster_registry_free
 *   Frees a registry that was never handed to a runtime. NULL is a no-op.
 */
CRUSTER_API void cruster_registry_free(cruster_registry *registry);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_REGISTRY_H */
