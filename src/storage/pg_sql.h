/* Internal: the prepared statements of the PostgreSQL storage. Times the
 * runtime compares against its own clock (deliver_at) travel as Unix ms.
 *
 * Plans: every statement is planned once per connection (generic plans),
 * often while the table is empty, so estimates say "1 row" everywhere and
 * cannot tell a lookup from a scan of a whole index. Sequential scans are
 * off on our connections, and a statement that finds rows by id or by
 * entity tests "processed_at IS NULL" -- true exactly when NOT processed,
 * as every write below keeps them together -- which no partial index's
 * predicate follows from: the planner's only choice is the lookup. Only
 * statements meant to walk unanswered messages say NOT processed: the
 * claim's main scans and next due (on the claimable_now and due indexes), and the rare
 * reset, reconcile and attach scan, which read the whole table. */
#ifndef ST_PG_SQL_H
#define ST_PG_SQL_H

#include "core/prefix.h"

/* Columns of a message row, as parsed by row_env() (pg_result.c): seq,
 * request_id, shard_group, shard_id, entity_type, entity_id, tag, payload,
 * internal, is_request, keyed, deliver_at_ms, attempts. */
#define PG_MSG_COLUMNS                                                                        \
  "m.seq, m.request_id, m.shard_group, m.shard_id, m.entity_type, m.entity_id, m.tag, "     \
  "m.payload, m.internal, m.is_request, m.keyed, "                                          \
  "coalesce((extract(epoch FROM m.deliver_at) * 1000)::int8, 0), m.attempts"

/* Stores a keyed message unless a call with its identity is stored.
 * Identity = entity type, entity id, method (tag) and the idempotency key's
 * bytes ($14), compared as such; $1 holds the call's candidate request ids
 * (core_key_candidates, PRID first). Rows stored before migration 3 have no
 * key (idem_key NULL): they match on type, id and method at the PRID only,
 * as before, until retention removes them. A new message takes the first
 * candidate no row holds. It is claimed for direct delivery ($11) only when
 * no older undelivered message of the same entity exists, which keeps
 * per-entity send order. One row back: kind 0 = inserted (claimed?, id),
 * kind 1 = duplicate (id, reply, processed?, same payload?), kind 2 = every
 * candidate holds another call. No row: a concurrent insert took the free
 * candidate (try again). */
#define PG_SQL_INSERT                                                                         \
  "WITH cand AS MATERIALIZED (SELECT o.ord, m.request_id,"                                  \
  "    m.keyed AND m.entity_type = $4::text AND m.entity_id = $5::text AND m.tag = $6::text"  \
  "      AND coalesce(m.idem_key = $14::bytea, o.ord = 1) AS same,"                          \
  "    m.payload = $7::bytea AS same_payload, m.processed, m.reply_status, m.reply_payload,"  \
  "    m.reply_message"                                                                     \
  "  FROM unnest($1::int8[]) WITH ORDINALITY AS o(id, ord)"                                 \
  "  JOIN cruster_messages m ON m.request_id = o.id),"                                      \
  " slot AS (SELECT o.id FROM unnest($1::int8[]) WITH ORDINALITY AS o(id, ord)"             \
  "  WHERE NOT EXISTS (SELECT 1 FROM cand WHERE cand.same)"                                 \
  "    AND NOT EXISTS (SELECT 1 FROM cand WHERE cand.request_id = o.id)"                    \
  "  ORDER BY o.ord LIMIT 1),"                                                              \
  " c AS (SELECT CASE WHEN $11::bool AND (SELECT w.seq"                                     \
  "    FROM cruster_messages w WHERE w.entity_type = $4::text AND w.entity_id = $5::text" \
  "      AND w.processed_at IS NULL AND (w.deliver_at IS NULL OR w.deliver_at <= to_timestamp($13::int8 / 1000.0))" \
  "      ORDER BY w.seq DESC LIMIT 1"                                                      \
  "  ) IS NULL THEN $12::text END AS claimer),"                                                     \
  " ins AS (INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, entity_id," \
  "    tag, payload, internal, is_request, keyed, deliver_at, claimed_by, claimed_at, attempts," \
  "    idem_key)"                                                                           \
  "  SELECT slot.id, $2::text, $3::int4, $4::text, $5::text, $6::text, $7::bytea, $8::bool," \
  "    $9::bool, TRUE, CASE WHEN $10::int8 > 0 THEN to_timestamp($10::int8 / 1000.0) END," \
  "    c.claimer, CASE WHEN c.claimer IS NOT NULL THEN now() END,"                          \
  "    CASE WHEN c.claimer IS NOT NULL THEN 1 ELSE 0 END, $14::bytea FROM slot, c"          \
  "  ON CONFLICT (request_id) DO NOTHING RETURNING request_id, claimed_by IS NOT NULL AS claimed)" \
  " SELECT 0::int4, ins.claimed, ins.request_id, NULL::int4, NULL::bytea, NULL::text, FALSE,"  \
  "  TRUE FROM ins"                                                                         \
  " UNION ALL SELECT 1::int4, FALSE, cand.request_id, cand.reply_status, cand.reply_payload," \
  "  cand.reply_message, cand.processed, coalesce(cand.same_payload, FALSE) FROM cand"     \
  "  WHERE cand.same"                                                                       \
  " UNION ALL SELECT 2::int4, FALSE, 0::int8, NULL::int4, NULL::bytea, NULL::text, FALSE, FALSE" \
  "  WHERE NOT EXISTS (SELECT 1 FROM cand WHERE cand.same)"                                 \
  "    AND (SELECT count(*) FROM cand) >= cardinality($1::int8[])"

/* A keyed call looked up by its identity (as PG_SQL_INSERT compares it):
 * $1 candidates, $2 type, $3 id, $4 tag, $5 key. */
#define PG_SQL_GET_KEYED                                                                      \
  "SELECT m.request_id, m.processed, m.reply_status, m.reply_payload, m.reply_message"      \
  " FROM unnest($1::int8[]) WITH ORDINALITY AS o(id, ord)"                                  \
  " JOIN cruster_messages m ON m.request_id = o.id"                                         \
  " WHERE m.keyed AND m.entity_type = $2::text AND m.entity_id = $3::text"                  \
  "  AND m.tag = $4::text AND coalesce(m.idem_key = $5::bytea, o.ord = 1)"                  \
  " ORDER BY o.ord LIMIT 1"

/* An unkeyed message: its id is fresh, so no duplicate branch (a leaner
 * plan). Same parameters; no row back means the id was taken. */
#define PG_SQL_INSERT_FRESH                                                                   \
  "INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, entity_id,"  \
  "  tag, payload, internal, is_request, keyed, deliver_at, claimed_by, claimed_at, attempts)" \
  " SELECT $1::int8, $2::text, $3::int4, $4::text, $5::text, $6::text, $7::bytea, $8::bool,"  \
  "  $9::bool, $10::bool, CASE WHEN $11::int8 > 0 THEN to_timestamp($11::int8 / 1000.0) END," \
  "  c.claimer, CASE WHEN c.claimer IS NOT NULL THEN now() END,"                            \
  "  CASE WHEN c.claimer IS NOT NULL THEN 1 ELSE 0 END"                                     \
  " FROM (SELECT CASE WHEN $12::bool AND (SELECT w.seq"                                     \
  "    FROM cruster_messages w WHERE w.entity_type = $4::text AND w.entity_id = $5::text" \
  "      AND w.processed_at IS NULL AND (w.deliver_at IS NULL OR w.deliver_at <= to_timestamp($14::int8 / 1000.0))" \
  "      ORDER BY w.seq DESC LIMIT 1"                                                      \
  "  ) IS NULL THEN $13::text END AS claimer) c"                                                    \
  " ON CONFLICT (request_id) DO NOTHING RETURNING claimed_by IS NOT NULL"

/* The first exit reply wins; it marks a keyed message processed. */
#define PG_SQL_REPLY                                                                          \
  "UPDATE cruster_messages SET processed = TRUE, processed_at = now(), claimed_by = NULL,"   \
  "  claimed_at = NULL, reply_status = $2::int4, reply_payload = $3::bytea,"                \
  "  reply_message = $4::text"                                                              \
  " WHERE request_id = $1::int8 AND processed_at IS NULL"

/* An unkeyed message is done with once answered: nobody can ask again. */
#define PG_SQL_DONE "DELETE FROM cruster_messages WHERE request_id = $1::int8 AND processed_at IS NULL"
/* The same for all such messages of one job at once. */
#define PG_SQL_DONE_MANY                                                                      \
  "DELETE FROM cruster_messages WHERE request_id = ANY($1::int8[]) AND processed_at IS NULL"

/* Gives a claimed message back. $2 = 1: a failed delivery (counts, and
 * waits a doubling backoff from $3 ms, at most 30 s); 0: never handed to a
 * handler (does not count, no wait). What counts is exactly what the claim
 * charged (claim_charged, schema v4): a claim behind the entity's head
 * charged nothing, so giving it back unused takes nothing away, and a
 * failed delivery of it adds the attempt its claim did not. A row no longer
 * claimed (the reconcile gave it back) keeps its count. */
#define PG_SQL_RELEASE                                                                        \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL,"                       \
  "  attempts = CASE WHEN claimed_by IS NULL THEN attempts"                                 \
  "    WHEN $2::int4 = 1 THEN attempts + CASE WHEN claim_charged THEN 0 ELSE 1 END"         \
  "    WHEN claim_charged THEN greatest(attempts - 1, 0) ELSE attempts END,"                \
  "  retry_at = CASE WHEN $2::int4 = 1 THEN now() + make_interval(secs => least(30.0,"      \
  "    $3::int8 / 1000.0 * power(2, least(greatest(attempts - 1"                            \
  "      + CASE WHEN claimed_by IS NOT NULL AND NOT claim_charged THEN 1 ELSE 0 END, 0), 20)))) END" \
  " WHERE request_id = $1::int8 AND processed_at IS NULL"

/* Park: a suspended workflow execution's message goes back unclaimed, due
 * at $2 (Unix ms; 253402300799999 = 9999-12-31, "when woken") -- or at
 * once when its wake counter moved since the run read it ($3 >= 0). $4 = 1:
 * the run made progress, its attempts start again. */
#define PG_SQL_PARK                                                                           \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL, retry_at = NULL,"      \
  "  deliver_at = CASE WHEN $3::int8 >= 0 AND wake_seq <> $3::int8 THEN NULL"               \
  "    ELSE to_timestamp($2::int8 / 1000.0) END,"                                           \
  "  attempts = CASE WHEN $4::int4 = 1 THEN 0 ELSE attempts END"                            \
  " WHERE request_id = $1::int8 AND processed_at IS NULL"
/* The latest deliver_at a park stores (9999-12-31T23:59:59.999Z). */
#define PG_PARK_FOREVER_MS 253402300799999LL

/* RELEASE with $2 = 0 for many messages at once (those a poll claimed and
 * full mailboxes could not take). */
#define PG_SQL_RELEASE_MANY                                                                   \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL,"                       \
  "  attempts = CASE WHEN claimed_by IS NOT NULL AND claim_charged"                         \
  "    THEN greatest(attempts - 1, 0) ELSE attempts END, retry_at = NULL"                   \
  " WHERE request_id = ANY($1::int8[]) AND processed_at IS NULL"

/* Takes back a claim the poll just made, as if it had not: the message was
 * not handed over ($2: its attempts before the claim). */
#define PG_SQL_UNCLAIM                                                                        \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL, attempts = $2::int4"   \
  " WHERE request_id = $1::int8 AND processed_at IS NULL AND claimed_by = $3::text"

/* The job guard, the first statement of every job (pg_batch.c, "the job
 * guard"). The session setting cruster.job holds the number of the last
 * job that committed on the connection: this statement sets it to the
 * job's own number ($2) inside the job's transaction, so an aborted job
 * leaves it as it was. A job sent while an earlier one was in flight
 * expects that one ($1): if it did not commit, the cast fails and this job
 * changes nothing -- it runs again after the failed one's operations. */
#define PG_SQL_JOB_GUARD                                                                      \
  "SELECT set_config('cruster.job', CASE WHEN current_setting('cruster.job') = $1::text"    \
  "  THEN $2::text ELSE 'job ' || $1::text || ' did not commit' END, false)::int8"

/* Claims due messages, oldest first; a message never overtakes an older one
 * of its entity that waits for a retry. Only the head of an entity's queue
 * (no older due undelivered message of the entity) counts a delivery
 * attempt: the messages queued behind it in the mailbox are not handed to a
 * handler yet, so a runner killed by the head's handler must not charge them
 * (they would be dead-lettered with it); claim_charged records which it
 * was, for the release. A message past the retry limit
 * ($4 > 0 and more than $4 + 1 attempts) becomes a dead letter here, in the
 * same row: processed, with reply status -18 (CRUSTER_E_DEAD_LETTER).
 *
 * Per-entity order: "prev" is the message just before each candidate in
 * its entity's queue (the nearest older due undelivered one, found by a
 * backward probe). The candidate may be claimed only when prev is none, is
 * itself a candidate, or is claimed under this runtime's token ($2: being
 * delivered here, so the candidate queues behind it in the mailbox). Any
 * other prev -- a row someone else holds locked (SKIP LOCKED passed over
 * it) or a claim under another token (one the reset or the reconcile is
 * giving back) -- blocks the candidate and every younger candidate of its
 * entity ("blocked", a running OR over the entity's candidates in seq
 * order); they wait for a later poll. */
#define PG_SQL_CLAIM_F(FI, FT)                                                                \
  "WITH due AS (SELECT d.request_id, d.seq, d.entity_type, d.entity_id, d.attempts"        \
  "  FROM cruster_messages d"                                                              \
  "  WHERE d.request_id IN ((SELECT i.request_id FROM cruster_messages i"                  \
  "      WHERE NOT i.processed AND i.claimed_by IS NULL AND i.deliver_at IS NULL"          \
  "        AND (i.retry_at IS NULL OR i.retry_at <= now())" FI " ORDER BY i.seq LIMIT $1::int4)" \
  "    UNION ALL (SELECT t.request_id FROM cruster_messages t"                              \
  "      WHERE NOT t.processed AND t.claimed_by IS NULL AND t.deliver_at IS NOT NULL"      \
  "        AND t.deliver_at <= to_timestamp($3::int8 / 1000.0)" FT                           \
  "        ORDER BY t.deliver_at LIMIT $1::int4))"                                          \
  "    AND NOT d.processed AND d.claimed_by IS NULL"                                        \
  "    AND (d.deliver_at IS NULL OR d.deliver_at <= to_timestamp($3::int8 / 1000.0))"       \
  "    AND (d.retry_at IS NULL OR d.retry_at <= now())"                                     \
  "    AND NOT EXISTS (SELECT 1 FROM cruster_messages o WHERE o.entity_type = d.entity_type" \
  "      AND o.entity_id = d.entity_id AND o.processed_at IS NULL AND o.seq < d.seq"              \
  "      AND o.claimed_by IS NULL AND o.deliver_at IS NULL AND o.retry_at IS NOT NULL"        \
  "      AND o.retry_at > now())"         \
  "  ORDER BY d.seq LIMIT $1::int4 FOR UPDATE SKIP LOCKED),"                                \
  " judged AS (SELECT due.request_id, due.seq, due.entity_type, due.entity_id,"             \
  "    due.attempts AS before, p.seq AS prev,"                                              \
  "    p.seq IS NOT NULL AND p.claimed_by IS DISTINCT FROM $2::text"                        \
  "      AND NOT EXISTS (SELECT 1 FROM due q WHERE q.seq = p.seq) AS bad"                  \
  "  FROM due LEFT JOIN LATERAL (SELECT h.seq, h.claimed_by FROM cruster_messages h"        \
  "    WHERE h.entity_type = due.entity_type AND h.entity_id = due.entity_id"               \
  "      AND h.processed_at IS NULL AND h.seq < due.seq"                                    \
  "      AND (h.deliver_at IS NULL OR h.deliver_at <= to_timestamp($3::int8 / 1000.0))"      \
  "      ORDER BY h.seq DESC LIMIT 1) p ON TRUE),"                                          \
  " counted AS (SELECT request_id, before, prev IS NULL AS charged,"                       \
  "    before + CASE WHEN prev IS NULL THEN 1 ELSE 0 END AS attempts,"                      \
  "    $4::int8 > 0 AND before > $4::int8 AS dead,"                                          \
  "    bool_or(bad) OVER (PARTITION BY entity_type, entity_id ORDER BY seq) AS blocked"     \
  "  FROM judged)"                                                                          \
  " UPDATE cruster_messages m SET attempts = counted.attempts, claim_charged = counted.charged," \
  "   claimed_by = CASE WHEN counted.dead THEN NULL ELSE $2::text END,"                     \
  "   claimed_at = CASE WHEN counted.dead THEN NULL ELSE now() END,"                        \
  "   processed = counted.dead,"                                                            \
  "   processed_at = CASE WHEN counted.dead THEN now() END,"                                \
  "   reply_status = CASE WHEN counted.dead THEN -18 END,"                                  \
  "   reply_message = CASE WHEN counted.dead THEN 'max retries exceeded' END"               \
  " FROM counted WHERE m.request_id = counted.request_id AND NOT counted.blocked"           \
  " RETURNING " PG_MSG_COLUMNS ", m.processed, counted.before"

#define PG_SQL_CLAIM PG_SQL_CLAIM_F("", "")

/* "The shard of row x is owned": its key -- its group's position in the
 * configured groups (G, a text[]) times shards_per_group (N) plus its
 * number; NULL for a group not listed -- is one of K (an int8[]). */
#define PG_OWNED_BY(x, G, N, K)                                                               \
  " AND (array_position(" G "::text[], " x ".shard_group) - 1)::int8 * " N "::int8 + "       \
  x ".shard_id = ANY(" K "::int8[])"

/* Only some shards are owned (cluster mode): both LIMITed scans keep
 * just the rows of owned shards ($5 groups, $6 shards_per_group, $7 the
 * owned shards' keys), so the rows
 * of other runners' shards never take the places of ours, however old.
 * The poll is planned with its values, so "= ANY" of the constant array is
 * a hash probe per row. */
#define PG_SQL_CLAIM_OWNED                                                                    \
  PG_SQL_CLAIM_F(PG_OWNED_BY("i", "$5", "$6", "$7"), PG_OWNED_BY("t", "$5", "$6", "$7"))

/* When the next stored message becomes due (Unix ms, 0 = none); F filters
 * its rows (alias m). */
#define PG_SQL_NEXT_DUE_F(F)                                                                  \
  "SELECT coalesce(least((SELECT (extract(epoch FROM min(deliver_at)) * 1000)::int8"        \
  "    FROM cruster_messages m WHERE NOT processed AND claimed_by IS NULL"                  \
  "    AND deliver_at IS NOT NULL AND deliver_at > to_timestamp($1::int8 / 1000.0)"         \
  "    AND retry_at IS NULL" F "),"                                                          \
  "  (SELECT (extract(epoch FROM min(greatest(deliver_at, retry_at))) * 1000)::int8"       \
  "    FROM cruster_messages m WHERE NOT processed AND claimed_by IS NULL"                  \
  "    AND retry_at IS NOT NULL AND retry_at > now()" F ")), 0)"
#define PG_SQL_NEXT_DUE PG_SQL_NEXT_DUE_F("")
/* Of the owned shards only ($2..$4 as $5..$7 of PG_SQL_CLAIM_OWNED). */
#define PG_SQL_NEXT_DUE_OWNED PG_SQL_NEXT_DUE_F(PG_OWNED_BY("m", "$2", "$3", "$4"))

#define PG_SQL_GET                                                                            \
  "SELECT processed, reply_status, reply_payload, reply_message FROM cruster_messages"      \
  " WHERE request_id = $1::int8"

#define PG_SQL_LIST_DEAD                                                                      \
  "SELECT " PG_MSG_COLUMNS " FROM cruster_messages m"                                       \
  " WHERE m.reply_status = -18 ORDER BY m.seq LIMIT $1::int4"

#define PG_SQL_REDELIVER                                                                      \
  "UPDATE cruster_messages SET processed = FALSE, processed_at = NULL, attempts = 0,"        \
  "  claimed_by = NULL, claimed_at = NULL, retry_at = NULL, reply_status = NULL,"          \
  "  reply_payload = NULL, reply_message = NULL"                                            \
  " WHERE request_id = $1::int8 AND coalesce(reply_status, 0) = -18"                      \
  " RETURNING request_id, entity_type, entity_id, shard_group, shard_id"

/* The entities with stored unanswered messages when this runtime attached
 * (at most $1 of them): they are ordered by asking PostgreSQL, not from
 * memory. */
#define PG_SQL_SCAN                                                                           \
  "SELECT DISTINCT entity_type, entity_id FROM cruster_messages WHERE NOT processed LIMIT $1::int4"

/* The fast insert: rows of unkeyed messages, each with a fresh id, for
 * entities this runtime knows have no other stored unanswered message, so
 * no probe is needed and each is claimed for direct delivery. $1 is the
 * claim token; each row then has PG_FAST_PARAMS parameters. The statement
 * for N rows is built at attach (pg_fast_sql_build, pg_ops.c). */
#define PG_SQL_FAST_HEAD                                                                      \
  "INSERT INTO cruster_messages (request_id, shard_group, shard_id, entity_type, entity_id,"  \
  "  tag, payload, internal, is_request, claimed_by, claimed_at, attempts) VALUES "
#define PG_SQL_FAST_ROW                                                                       \
  "($%d::int8, $%d::text, $%d::int4, $%d::text, $%d::text, $%d::text, $%d::bytea, $%d::bool," \
  " $%d::bool, $1::text, now(), 1)"
#define PG_FAST_PARAMS 9

/* Gives back every claim not made under this runtime's current token ($1)
 * and not of a message being handled here ($2). Single-node, such claims
 * are stale: an earlier life of this runner died with the messages
 * undelivered (run at start), or a lost connection left a claim of an
 * earlier token of this life in doubt (run after the loss). */
#define PG_SQL_RECONCILE                                                                      \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL"                        \
  " WHERE claimed_by IS NOT NULL AND claimed_by <> $1::text AND NOT processed"              \
  "  AND NOT (request_id = ANY($2::int8[]))"

/* Cluster mode: the same for the claims of this runtime's own earlier
 * tokens only -- those starting with its life's prefix ($3, "address#life.",
 * pg_reconcile.c). Other runners' claims are theirs: a shard's new owner
 * gives back what a dead one left (PG_SQL_ACQUIRE_UNCLAIM). */
#define PG_SQL_RECONCILE_OWN                                                                  \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL"                        \
  " WHERE claimed_by IS NOT NULL AND claimed_by <> $1::text AND NOT processed"              \
  "  AND left(claimed_by, length($3::text)) = $3::text"                                     \
  "  AND NOT (request_id = ANY($2::int8[]))"

/* Cluster mode, shards just acquired ($1 group, $2 int4[] shards): gives
 * back every claim on their messages not made by this life of this runtime
 * (not starting with $3, its prefix) and not of a message being handled
 * here ($4): their maker died or let the shards go. */
#define PG_SQL_ACQUIRE_UNCLAIM                                                                \
  "UPDATE cruster_messages SET claimed_by = NULL, claimed_at = NULL"                        \
  " WHERE shard_group = $1::text AND shard_id = ANY($2::int4[])"                            \
  "  AND claimed_by IS NOT NULL AND NOT processed"                                          \
  "  AND left(claimed_by, length($3::text)) <> $3::text"                                    \
  "  AND NOT (request_id = ANY($4::int8[]))"

/* ... then, in the same transaction, the entities of those shards with
 * stored unanswered messages (at most $3): they are ordered by asking. */
#define PG_SQL_ACQUIRE_SCAN                                                                   \
  "SELECT DISTINCT entity_type, entity_id, shard_id FROM cruster_messages"                  \
  " WHERE NOT processed AND shard_group = $1::text AND shard_id = ANY($2::int4[])"          \
  " LIMIT $3::int4"

/* Retention: processed messages older than $1 ms; dead letters stay until
 * redelivered. */
#define PG_SQL_CLEANUP                                                                        \
  "WITH d AS (DELETE FROM cruster_messages WHERE request_id IN (SELECT request_id"          \
  "  FROM cruster_messages"                                                                   \
  "  WHERE processed AND processed_at < now() - make_interval(secs => $1::int8 / 1000.0)"   \
  "  AND reply_status <> -18 LIMIT 10000) RETURNING request_id),"                            \
  " j AS (DELETE FROM cruster_journal WHERE request_id IN (SELECT request_id FROM d)),"       \
  " f AS (DELETE FROM cruster_deferreds WHERE request_id IN (SELECT request_id FROM d))"     \
  " SELECT count(*) FROM d"

#endif
