/* The idempotency tests of tests/unit/test_idempotency.c with the
 * PostgreSQL message storage, plus its own: restart, rows stored before
 * migration 3, every candidate id taken. */
#define TS_STORAGE_PG 1
#include "../unit/test_idempotency.c"
