/* Mutual TLS between runners (transport_tls_*, require client certificates):
 * certificates are made with the openssl CLI at test time -- a CA, two
 * runner certificates signed by it (SAN IP:127.0.0.1) and a rogue one from
 * another CA. Two runners with the good certificates answer each other's
 * calls; a third runner with the rogue certificate joins etcd (the shared
 * one, CRUSTER_TEST_ETCD) and owns shards, but the good runners refuse it:
 * its calls to their entities fail, and their calls to entities it owns
 * fail, while the two good runners keep serving each other. Waits are
 * bounded by generous deadlines; no assertion depends on timing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "cluster_support.h"

#define SHARDS 12
#define ENTITIES 24

static char tls_dir[64];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  return system(cmd);
}

/* A CA and a certificate signed by it (SAN IP:127.0.0.1). */
static int make_ca(const char *ca) {
  return sh("cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=%s "
            "-keyout %s.key -out %s.pem >/dev/null 2>&1",
            tls_dir, ca, ca, ca);
}
static int make_cert(const char *name, const char *ca) {
  return sh("cd %s && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > %s.ext && "
            "openssl req -newkey rsa:2048 -nodes -subj /CN=%s -keyout %s.key -out %s.csr "
            ">/dev/null 2>&1 && "
            "openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial -days 2 "
            "-extfile %s.ext -out %s.pem >/dev/null 2>&1",
            tls_dir, name, name, name, name, name, ca, ca, name, name);
}

/* runner_poll_interval=1h: the health check (pings over this transport)
 * would mark the unreachable rogue -- or, run by the rogue, the good
 * runners -- unhealthy and move its shards; this test is about the
 * transport refusing it while it owns shards. */
static void tls_config(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap,
           "shards_per_group=12;shard_rebalance_retry_interval=300ms;runner_lock_refresh_interval=1s;"
           "send_retry_interval=50ms;runner_poll_interval=1h;transport_tls_cert=%s/%s.pem;transport_tls_key=%s/%s.key;"
           "transport_tls_ca=%s/ca.pem;transport_tls_require_client_cert=true",
           tls_dir, name, tls_dir, name, tls_dir);
}

/* Refusals whose deadline message carries the refused forward's
 * transport error ("; the last forward failed: runner ADDR: ..."). */
static int with_transport_error;

/* Calls Echo.who of entity e from c (timeout ms): 1 and *who set when
 * answered, 0 when refused (line holds the error). A refusal that reaches
 * the caller as CRUSTER_E_TIMEOUT says why the forwards failed, naming a
 * runner other than the caller. */
static int call_who(clt_child *c, int e, long timeout, char *who, size_t cap, char *line, size_t lcap) {
  clt_child_cmd(c, line, lcap, "tcall %ld Echo t%d who x%d", timeout, e, e);
  char w[64], echo[64], want[64];
  if (strncmp(line, "err ", 4) == 0) {
    /* A refusal: the peer unavailable, or no answer before the deadline. */
    int st = 0;
    if (sscanf(line, "err %d", &st) != 1 || (st != CRUSTER_E_RUNNER_UNAVAILABLE && st != CRUSTER_E_TIMEOUT))
      fail_msg("runner %s: t%d: not a refusal: %s", c->addr, e, line);
    if (st == CRUSTER_E_TIMEOUT) {
      const char *failed = strstr(line, "; the last forward failed: runner 127.0.0.1:");
      const char *inflight = strstr(line, "; the forward to runner 127.0.0.1:");
      /* (the loaded machine can make a runner detach: its shards unowned) */
      const char *none = strstr(line, " had no owner to forward to (");
      if (!failed && !inflight && !none)
        fail_msg("runner %s: t%d: the timeout does not say why: %s", c->addr, e, line);
      const char *addr = failed || inflight ? strstr(failed ? failed : inflight, "127.0.0.1:") : NULL;
      if (addr && strncmp(addr, c->addr, strlen(c->addr)) == 0)
        fail_msg("runner %s: t%d: names the caller itself: %s", c->addr, e, line);
      if (failed) {
        if (!strstr(failed, "UNAVAILABLE")) fail_msg("runner %s: t%d: no transport error: %s", c->addr, e, line);
        with_transport_error++;
      }
    }
    return 0;
  }
  if (sscanf(line, "ok %63s %63s", w, echo) != 2) fail_msg("runner %s: t%d: %s", c->addr, e, line);
  snprintf(want, sizeof(want), "x%d", e);
  assert_string_equal(echo, want);
  snprintf(who, cap, "%s", w);
  return 1;
}

static void test_mtls_refuses_a_peer_without_a_valid_certificate(void **state) {
  (void)state;
  if (sh("openssl version >/dev/null 2>&1") != 0) fail_msg("the openssl CLI is needed (scripts/dev setup)");
  snprintf(tls_dir, sizeof tls_dir, "/tmp/cruster-cltls-XXXXXX");
  assert_non_null(mkdtemp(tls_dir));
  assert_int_equal(make_ca("ca"), 0);
  assert_int_equal(make_ca("otherca"), 0);
  assert_int_equal(make_cert("r1", "ca"), 0);
  assert_int_equal(make_cert("r2", "ca"), 0);
  assert_int_equal(make_cert("rogue", "otherca"), 0);

  char prefix[96], cfg[3][1024], line[1024];
  snprintf(prefix, sizeof(prefix), "/cruster-test-cltls-%ld/", (long)getpid());
  tls_config(cfg[0], sizeof(cfg[0]), "r1");
  tls_config(cfg[1], sizeof(cfg[1]), "r2");
  /* The rogue trusts the right CA, but its own certificate is from another. */
  tls_config(cfg[2], sizeof(cfg[2]), "rogue");
  clt_child cs[3];
  for (int i = 0; i < 2; i++) clt_child_start(&cs[i], clt_shared_etcd(), prefix, NULL, cfg[i]);
  for (int i = 0; i < 2; i++) clt_child_expect_ready(&cs[i]);
  clt_wait_rendezvous(cs, 2, SHARDS);
  int64_t until = pgt_mono_ms() + TS_DEADLINE_MS;
  while (clt_child_owned(&cs[0]) == 0 || clt_child_owned(&cs[1]) == 0) {
    if (pgt_mono_ms() > until) fail_msg("a good runner took no shard within %ld ms", TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
  clt_wait_rendezvous(cs, 2, SHARDS);

  /* The good runners answer each other's calls. */
  char owner[ENTITIES][64], who[64];
  for (int i = 0; i < 2; i++) {
    int remote = 0;
    for (int e = 0; e < ENTITIES; e++) {
      if (!call_who(&cs[i], e, 60000, who, sizeof(who), line, sizeof(line)))
        fail_msg("runner %s: t%d: %s", cs[i].addr, e, line);
      if (i == 0) snprintf(owner[e], sizeof(owner[e]), "%s", who);
      else assert_string_equal(who, owner[e]);
      if (strcmp(who, cs[i].addr) != 0) remote++;
    }
    assert_true(remote > 0);
  }

  /* The rogue joins (etcd has no TLS here) and takes its shards. */
  clt_child_start(&cs[2], clt_shared_etcd(), prefix, NULL, cfg[2]);
  clt_child_expect_ready(&cs[2]);
  int64_t end = pgt_mono_ms() + TS_DEADLINE_MS;
  while (clt_child_owned(&cs[2]) == 0) {
    if (pgt_mono_ms() > end) fail_msg("the rogue runner took no shard within %ld ms", TS_DEADLINE_MS);
    ts_sleep_ms(100);
  }
  clt_wait_rendezvous(cs, 3, SHARDS);

  /* From the rogue: only its own entities answer (locally); its calls to
   * the others are refused. */
  int rogue_own = 0, rogue_refused = 0;
  int is_rogue[ENTITIES];
  for (int e = 0; e < ENTITIES; e++) {
    is_rogue[e] = 0;
    if (call_who(&cs[2], e, 2000, who, sizeof(who), line, sizeof(line))) {
      assert_string_equal(who, cs[2].addr);
      is_rogue[e] = 1;
      rogue_own++;
    } else {
      if (rogue_refused == 0) print_message("the rogue's call refused: %s\n", line);
      rogue_refused++;
    }
  }
  assert_true(rogue_refused > 0);

  /* From the good runners: the rogue's entities are refused; the others
   * are answered by the good runners. */
  int refused = 0, served = 0;
  for (int i = 0; i < 2; i++) {
    for (int e = 0; e < ENTITIES; e++) {
      if (call_who(&cs[i], e, is_rogue[e] ? 2000 : 60000, who, sizeof(who), line, sizeof(line))) {
        if (is_rogue[e]) fail_msg("runner %s reached t%d on the rogue: %s", cs[i].addr, e, line);
        assert_true(strcmp(who, cs[0].addr) == 0 || strcmp(who, cs[1].addr) == 0);
        if (strcmp(who, cs[i].addr) != 0) served++;
      } else {
        if (!is_rogue[e]) fail_msg("runner %s: t%d: %s", cs[i].addr, e, line);
        if (refused == 0) print_message("a call to the rogue refused: %s\n", line);
        refused++;
      }
    }
  }
  print_message("rogue owns %d of %d entities; %d refused from it, %d refused to it, %d served across\n",
                rogue_own, ENTITIES, rogue_refused, refused, served);
  if (rogue_own > 0) assert_true(refused > 0);
  assert_true(served > 0);
  /* The refusals said what the transport met (TLS refused the connection). */
  print_message("%d refusals carried the transport's error\n", with_transport_error);
  assert_true(with_transport_error > 0);

  for (int i = 0; i < 3; i++) clt_child_close(&cs[i]);
  sh("rm -rf '%s'", tls_dir);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mtls_refuses_a_peer_without_a_valid_certificate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
