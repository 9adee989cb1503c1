/*
 * fuzz_cron -- a libFuzzer target for cron expressions (include/cruster/cron.h).
 *
 * Input: byte 0 picks the zone (UTC, Europe/Berlin, America/New_York,
 * Asia/Kolkata, Australia/Lord_Howe -- half-hour DST --, Australia/Sydney, or
 * an unknown one), bytes 1..8 the instant to search from (any int64, so
 * extreme and negative ones too), the rest is the expression (cut at its
 * first NUL). The expression is parsed; when it parses, up to 8 next fire
 * times are chained from the instant.
 *
 * Besides ASan and UBSan it checks the API's promises and aborts when one
 * breaks: a parse error is CRUSTER_E_INVALID_ARGUMENT (or NOT_FOUND for the
 * unknown zone) with a message "cron: position N: ..." where N is within
 * the expression (+1 for its end); a successful parse keeps the expression;
 * next fire times are whole seconds, strictly after the instant searched
 * from, never after 2101-01-02, and a search that fails says CRUSTER_E_NOT_FOUND.
 *
 * ctest runs it for a few seconds over fuzz/corpus_cron (test "fuzz_cron").
 * By hand: mkdir -p /tmp/cc && build-asan/fuzz/fuzz_cron /tmp/cc fuzz/corpus_cron
 */
#include <cruster/cron.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const ZONES[] = {NULL,
                                    "Europe/Berlin",
                                    "America/New_York",
                                    "Asia/Kolkata",
                                    "Australia/Lord_Howe",
                                    "Australia/Sydney",
                                    "Nowhere/Atlantis"};

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "fuzz_cron: broken promise: %s (line %d)\n", #cond, __LINE__); \
      abort();                                                                       \
    }                                                                                \
  } while (0)

/* 2101-01-02T00:00:00Z in ms: no fire time is later (the search ends with
 * local 2100, which is at most a day past UTC 2100). */
#define END_MS INT64_C(4134067200000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 9)
    return 0;
  const char *zone = ZONES[data[0] % (sizeof ZONES / sizeof *ZONES)];
  uint64_t u = 0;
  for (int i = 1; i <= 8; i++)
    u = u << 8 | data[i];
  int64_t after;
  memcpy(&after, &u, sizeof after);
  size_t len = size - 9;
  char *expr = malloc(len + 1);
  if (!expr)
    return 0;
  memcpy(expr, data + 9, len);
  expr[len] = '\0';
  size_t slen = strlen(expr);

  cruster_cron *c = NULL;
  cruster_error *err = NULL;
  cruster_status rc = cruster_cron_parse(expr, zone, &c, &err);
  if (rc != CRUSTER_OK) {
    CHECK(c == NULL && err != NULL);
    CHECK(cruster_error_status(err) == rc);
    const char *msg = cruster_error_message(err);
    int pos = 0;
    if (rc == CRUSTER_E_INVALID_ARGUMENT && sscanf(msg, "cron: position %d: ", &pos) == 1)
      CHECK(pos >= 1 && (size_t)pos <= slen + 1);
    else
      CHECK(rc == CRUSTER_E_NOT_FOUND && strstr(msg, "Nowhere/Atlantis") != NULL);
    cruster_error_free(err);
    free(expr);
    return 0;
  }
  CHECK(c != NULL && err == NULL);
  CHECK(strcmp(cruster_cron_expr(c), expr) == 0);
  CHECK(strcmp(cruster_cron_tz(c), zone ? zone : "UTC") == 0);
  for (int i = 0; i < 8; i++) {
    int64_t next = 0;
    rc = cruster_cron_next(c, after, &next, &err);
    if (rc != CRUSTER_OK) {
      CHECK(rc == CRUSTER_E_NOT_FOUND && err != NULL);
      cruster_error_free(err);
      break;
    }
    CHECK(err == NULL);
    CHECK(next > after && next % 1000 == 0 && next < END_MS);
    after = next;
  }
  cruster_cron_free(c);
  free(expr);
  return 0;
}
