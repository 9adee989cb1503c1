/* The entity runtime tests of tests/unit/test_entity.c, run with the
 * PostgreSQL message storage instead of the memory one. */
#define TS_STORAGE_PG 1
#include "../unit/test_entity.c"
