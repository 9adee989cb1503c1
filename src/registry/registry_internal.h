/* Internal: the runner-registry interface (etcd in cluster mode). A NULL
 * registry means single-node mode. */
#ifndef RG_REGISTRY_INTERNAL_H
#define RG_REGISTRY_INTERNAL_H

#include "core/prefix.h"

#include <cruster/registry.h>

typedef struct rg_ops {
  const char *name;
  void (*destroy)(cruster_registry *r);
} rg_ops;

struct cruster_registry {
  const rg_ops *ops;
  void *impl;
};

#endif
