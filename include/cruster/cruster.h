/*
 * cruster/cruster.h -- the one header to include.
 *
 * cruster: distributed, sharded entities and durable workflows for C and C++.
 * See README.md and docs/ for an overview; every function is documented in
 * the header that declares it.
 */
#ifndef CRUSTER_CRUSTER_H
#define CRUSTER_CRUSTER_H

#include "common.h"
#include "status.h"
#include "config.h"
#include "ids.h"
#include "metrics.h"
#include "storage.h"
#include "pg.h"
#include "registry.h"
#include "runtime.h"
#include "entity.h"
#include "client.h"
#include "workflow.h"
#include "singleton.h"
#include "cron.h"
#include "cron_job.h"

#endif /* CRUSTER_CRUSTER_H */
