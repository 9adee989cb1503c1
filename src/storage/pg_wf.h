/* Internal: the PostgreSQL workflow storage (pg_wf.c). */
#ifndef ST_PG_WF_H
#define ST_PG_WF_H

#include "core/prefix.h"

#include "storage/pg_internal.h"
#include "storage/wf_storage.h"

typedef struct pg_wf pg_wf;

/* A pool of up to `max_conns` blocking connections to `conninfo` (copied),
 * opened on first use. NULL on OOM. */
pg_wf *pg_wf_new(const char *conninfo, size_t max_conns);
/* Closes the idle connections; no call may be running. NULL is a no-op. */
void pg_wf_free(pg_wf *w);

extern const st_wf_ops pg_wf_ops;

#endif
