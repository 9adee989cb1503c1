/*
 * Install test: a C99 program built against an installed cruster, through the
 * CMake package (shared and static) and through pkg-config. It checks that the
 * library it runs with is the one whose headers it was compiled against.
 */
#include <cruster/cruster.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  char expected[32];
  snprintf(expected, sizeof expected, "%d.%d.%d", CRUSTER_VERSION_MAJOR, CRUSTER_VERSION_MINOR,
           CRUSTER_VERSION_PATCH);

  const char *version = cruster_version();
  if (version == NULL || strcmp(version, expected) != 0) {
    fprintf(stderr, "cruster_version() = \"%s\", headers say \"%s\"\n",
            version ? version : "(null)", expected);
    return 1;
  }
  if (cruster_version_number() != CRUSTER_VERSION_NUMBER) {
    fprintf(stderr, "cruster_version_number() = %d, headers say %d\n", cruster_version_number(),
            CRUSTER_VERSION_NUMBER);
    return 1;
  }
  printf("cruster %s (%d): ok\n", version, cruster_version_number());
  return 0;
}
