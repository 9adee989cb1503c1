/*
 * cruster/common.h -- export macros, version, memory release.
 *
 * Part of the cruster C99 API. Include <cruster/cruster.h> rather than this
 * file directly.
 */
#ifndef CRUSTER_COMMON_H
#define CRUSTER_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  if defined(CRUSTER_BUILDING)
#    define CRUSTER_API __declspec(dllexport)
#  else
#    define CRUSTER_API
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define CRUSTER_API __attribute__((visibility("default")))
#else
#  define CRUSTER_API
#endif

#define CRUSTER_VERSION_MAJOR 0
#define CRUSTER_VERSION_MINOR 1
#define CRUSTER_VERSION_PATCH 0
/** The version as one number: major * 10000 + minor * 100 + patch. */
#define CRUSTER_VERSION_NUMBER \
  (CRUSTER_VERSION_MAJOR * 10000 + CRUSTER_VERSION_MINOR * 100 + CRUSTER_VERSION_PATCH)

/** Longest entity type, method, or shard group name, in bytes. */
#define CRUSTER_MAX_NAME_LEN 255
/**
 * Longest entity id, in bytes. An entity id is 1..CRUSTER_MAX_ENTITY_ID_LEN
 * bytes of UTF-8 without C0 control characters (U+0001..U+001F) or DEL
 * (U+007F): calls with such an id fail with CRUSTER_E_INVALID_ARGUMENT, and
 * the message names the byte and its offset. Other characters, spaces and
 * C1 controls included, are allowed.
 */
#define CRUSTER_MAX_ENTITY_ID_LEN 1024
/** Longest idempotency key, in bytes. */
#define CRUSTER_MAX_KEY_LEN 65536

/*
 * cruster_version
 *   Returns the library's version as "MAJOR.MINOR.PATCH". The string is
 *   static; never free it.
 * Threads: any.
 */
CRUSTER_API const char *cruster_version(void);

/*
 * cruster_version_number
 *   Returns CRUSTER_VERSION_NUMBER of the library actually linked (compare it
 *   with the macro of the headers you compiled against).
 * Threads: any.
 */
CRUSTER_API int cruster_version_number(void);

/*
 * cruster_free
 *   Frees a buffer or string the library allocated and handed to you
 *   (replies of cruster_send_sync, rendered metrics, ...). NULL is a no-op.
 * Threads: any.
 */
CRUSTER_API void cruster_free(void *ptr);

#ifdef __cplusplus
}
#endif
#endif /* CRUSTER_COMMON_H */
