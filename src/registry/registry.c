/* Registry objects common to every backend. */
#include "registry/registry_internal.h"

void cruster_registry_free(cruster_registry *r) {
  if (r && r->ops && r->ops->destroy) r->ops->destroy(r);
}
