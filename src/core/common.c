/* Version and memory release. */
#include <cruster/common.h>
#include <stdlib.h>

#define CRUSTER_STR2(x) #x
#define CRUSTER_STR(x) CRUSTER_STR2(x)

const char *cruster_version(void) {
  return CRUSTER_STR(CRUSTER_VERSION_MAJOR) "." CRUSTER_STR(CRUSTER_VERSION_MINOR) "." CRUSTER_STR(
      CRUSTER_VERSION_PATCH);
}

int cruster_version_number(void) { return CRUSTER_VERSION_NUMBER; }

void cruster_free(void *ptr) { free(ptr); }
