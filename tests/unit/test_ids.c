/* The id and hashing functions reproduce behaviour.md 1.6 bit for bit. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <cruster/ids.h>
#include <stdio.h>
#include <string.h>

#include "core/hash.h"

#define SHARD(s, n) cruster_shard_for((s), strlen(s), (n))

static void shard_for_matches_test_vectors(void **state) {
  (void)state;
  assert_int_equal(SHARD("counter-1", 300), 159);
  assert_int_equal(SHARD("counter-1", 2048), 1187);
  assert_int_equal(SHARD("", 300), 281);
  assert_int_equal(SHARD("cluster/RunnerHealth", 300), 138);
  assert_int_equal(SHARD("cluster/RunnerHealth", 2048), 1094);
  assert_int_equal(SHARD("cluster-tests/singleton-test", 300), 214);
}

static void shard_for_rejects_bad_arguments(void **state) {
  (void)state;
  assert_int_equal(cruster_shard_for("x", 1, 0), -1);
  assert_int_equal(cruster_shard_for("x", 1, -5), -1);
  assert_int_equal(cruster_shard_for(NULL, 3, 300), -1);
  /* NULL with length 0 is the empty id. */
  assert_int_equal(cruster_shard_for(NULL, 0, 300), 281);
  assert_int_equal(cruster_shard_for("anything", 8, 1), 0);
}

static void shard_for_uses_len_not_nul(void **state) {
  (void)state;
  /* Only the first 9 bytes count. */
  assert_int_equal(cruster_shard_for("counter-1-and-more", 9, 300), 159);
}

static void h64_matches_test_vectors(void **state) {
  (void)state;
  assert_true(cruster_hash64("hello", 5) == UINT64_C(0x597c55e166fe33f7));
  assert_true(cruster_hash64("", 0) == UINT64_C(0xef46db3751d8e999));
  assert_true(core_h64("hello", 5) == UINT64_C(0x597c55e166fe33f7));
}

static void hex128_matches_test_vector(void **state) {
  (void)state;
  char out[33];
  memset(out, 'x', sizeof out);
  cruster_hex128("order-42", 8, out);
  assert_string_equal(out, "6581f9bf68f1efe731ec84097a9afe64");
  /* First half is H64, second half djb2_64 with the HEX128 seed. */
  cruster_hex128("hello", 5, out);
  assert_memory_equal(out, "597c55e166fe33f7", 16);
  assert_int_equal(strlen(out), 32);
}

static void prid_matches_test_vector(void **state) {
  (void)state;
  int64_t id = cruster_persisted_request_id("Workflow/OrderWorkflow", "order-42", "execute",
                                            "order-42", 8);
  assert_true(id == INT64_C(442300771230671127));
}

static void prid_separates_fields_and_is_non_negative(void **state) {
  (void)state;
  int64_t a = cruster_persisted_request_id("ab", "c", "t", "k", 1);
  int64_t b = cruster_persisted_request_id("a", "bc", "t", "k", 1);
  assert_true(a != b);
  int64_t c = cruster_persisted_request_id("T", "id", "tag", NULL, 0);
  int64_t d = cruster_persisted_request_id("T", "id", "tag", "", 0);
  assert_true(c == d);
  assert_true(c >= 0);
  /* The key changes the id. */
  assert_true(cruster_persisted_request_id("T", "id", "tag", "x", 1) != c);
}

static void djb2_primitives_wrap(void **state) {
  (void)state;
  assert_int_equal(core_djb2_32("", 0), 5381u);
  assert_int_equal(core_djb2_32("a", 1), 5381u * 33u + 'a');
  assert_true(core_djb2_64(5381, "a", 1) == UINT64_C(5381) * 33 + 'a');
  assert_true(core_djb2_64(7, "", 0) == 7);
}

static void fallback_reply_id_is_djb2_of_big_endian_fields(void **state) {
  (void)state;
  const unsigned char bytes[12] = {0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x7F, 0xFF, 0xFF, 0xFF};
  uint64_t want = core_djb2_64(5381, bytes, sizeof bytes) & UINT64_C(0x7FFFFFFFFFFFFFFF);
  assert_true(core_fallback_reply_id(0x0102, INT32_MAX) == (int64_t)want);
  assert_true(core_fallback_reply_id(-1, -1) >= 0);
  assert_true(core_fallback_reply_id(1, 0) != core_fallback_reply_id(1, 1));
}

static const char *const nodes[] = {"node1:9000", "node2:9000", "node3:9000"};

static void rendezvous_matches_test_vectors(void **state) {
  (void)state;
  assert_int_equal(cruster_rendezvous_owner("default", 0, nodes, NULL, 3), 2);
  assert_int_equal(cruster_rendezvous_owner("default", 1, nodes, NULL, 3), 2);
  assert_int_equal(cruster_rendezvous_owner("default", 2, nodes, NULL, 3), 0);
  const int32_t ones[] = {1, 1, 1};
  assert_int_equal(cruster_rendezvous_owner("default", 2, nodes, ones, 3), 0);
}

static void rendezvous_balance_over_300_shards(void **state) {
  (void)state;
  int count[3] = {0, 0, 0};
  for (int32_t s = 0; s < 300; s++) {
    int o = cruster_rendezvous_owner("default", s, nodes, NULL, 3);
    assert_in_range(o, 0, 2);
    count[o]++;
  }
  assert_int_equal(count[0], 108);
  assert_int_equal(count[1], 88);
  assert_int_equal(count[2], 104);
}

static void rendezvous_score_is_h64_of_key(void **state) {
  (void)state;
  /* With one candidate per call, compare against H64 of the spelled-out key
   * to pin the key format "<group>:<shard>\0<runner>\0<w>". */
  for (int32_t s = 0; s < 50; s++) {
    char key[64];
    uint64_t best = 0;
    int owner = -1;
    for (int i = 0; i < 3; i++) {
      int n = snprintf(key, sizeof key, "default:%d", (int)s);
      key[n++] = '\0';
      size_t l = strlen(nodes[i]);
      memcpy(key + n, nodes[i], l);
      n += (int)l;
      key[n++] = '\0';
      key[n++] = '0';
      uint64_t h = core_h64(key, (size_t)n);
      if (owner < 0 || h >= best) best = h, owner = i;
    }
    assert_int_equal(cruster_rendezvous_owner("default", s, nodes, NULL, 3), owner);
  }
}

static void rendezvous_excludes_weight_zero_and_negative(void **state) {
  (void)state;
  const int32_t w[] = {0, -1, 0};
  assert_int_equal(cruster_rendezvous_owner("default", 0, nodes, w, 3), -1);
  const int32_t only2[] = {0, 1, -3};
  for (int32_t s = 0; s < 100; s++)
    assert_int_equal(cruster_rendezvous_owner("default", s, nodes, only2, 3), 1);
  assert_int_equal(cruster_rendezvous_owner("default", 0, nodes, NULL, 0), -1);
  assert_int_equal(cruster_rendezvous_owner(NULL, 0, nodes, NULL, 3), -1);
}

static void rendezvous_higher_weight_wins_more_and_includes_weight_one_score(void **state) {
  (void)state;
  const int32_t w[] = {1, 1, 4};
  int count[3] = {0, 0, 0};
  for (int32_t s = 0; s < 300; s++) {
    int o = cruster_rendezvous_owner("default", s, nodes, w, 3);
    count[o]++;
    /* Raising a weight only adds hashes to the max: a shard node3 owned at
     * weight 1 stays node3's. */
    if (cruster_rendezvous_owner("default", s, nodes, NULL, 3) == 2) assert_int_equal(o, 2);
  }
  assert_true(count[2] > count[0] + count[1]);
}

static void rendezvous_ties_go_to_last(void **state) {
  (void)state;
  /* The same runner listed twice has identical scores: the last copy wins. */
  const char *const dup[] = {"node1:9000", "node1:9000"};
  assert_int_equal(cruster_rendezvous_owner("default", 7, dup, NULL, 2), 1);
}

static void rendezvous_long_group_name(void **state) {
  (void)state;
  char group[600];
  memset(group, 'g', sizeof group - 1);
  group[sizeof group - 1] = '\0';
  int o = cruster_rendezvous_owner(group, 3, nodes, NULL, 3);
  assert_in_range(o, 0, 2);
}

static void snowflake_parts_split_layout(void **state) {
  (void)state;
  int64_t ms = 123456789;
  int64_t id = (ms << 22) | (INT64_C(1023) << 12) | 4095;
  int64_t unix_ms;
  int32_t machine, seq;
  cruster_snowflake_parts(id, &unix_ms, &machine, &seq);
  assert_true(unix_ms == CRUSTER_SNOWFLAKE_EPOCH_MS + ms);
  assert_int_equal(machine, 1023);
  assert_int_equal(seq, 4095);
  cruster_snowflake_parts(id, NULL, NULL, NULL); /* all out-pointers optional */
  cruster_snowflake_parts((INT64_C(5) << 22) | (INT64_C(7) << 12) | 9, NULL, &machine, &seq);
  assert_int_equal(machine, 7);
  assert_int_equal(seq, 9);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(shard_for_matches_test_vectors),
      cmocka_unit_test(shard_for_rejects_bad_arguments),
      cmocka_unit_test(shard_for_uses_len_not_nul),
      cmocka_unit_test(h64_matches_test_vectors),
      cmocka_unit_test(hex128_matches_test_vector),
      cmocka_unit_test(prid_matches_test_vector),
      cmocka_unit_test(prid_separates_fields_and_is_non_negative),
      cmocka_unit_test(djb2_primitives_wrap),
      cmocka_unit_test(fallback_reply_id_is_djb2_of_big_endian_fields),
      cmocka_unit_test(rendezvous_matches_test_vectors),
      cmocka_unit_test(rendezvous_balance_over_300_shards),
      cmocka_unit_test(rendezvous_score_is_h64_of_key),
      cmocka_unit_test(rendezvous_excludes_weight_zero_and_negative),
      cmocka_unit_test(rendezvous_higher_weight_wins_more_and_includes_weight_one_score),
      cmocka_unit_test(rendezvous_ties_go_to_last),
      cmocka_unit_test(rendezvous_long_group_name),
      cmocka_unit_test(snowflake_parts_split_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
