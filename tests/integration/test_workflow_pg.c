/* The workflow tests of tests/unit/test_workflow.c with the PostgreSQL
 * storage, plus what only a database shows (test_workflow_pg_only.h). */
#define TS_STORAGE_PG 1
#include "../unit/test_workflow.c"
