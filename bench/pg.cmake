# bench_pg_rpc: persisted RPC round trips through PostgreSQL storage vs
# pgbench's single-row INSERT on the same server. Included from
# bench/CMakeLists.txt (include(${CMAKE_CURRENT_SOURCE_DIR}/pg.cmake)); needs
# CRUSTER_TEST_PG at run time (scripts/dev bench sets it).
add_executable(bench_pg_rpc ${CMAKE_CURRENT_LIST_DIR}/bench_pg_rpc.c)
target_compile_definitions(bench_pg_rpc PRIVATE _POSIX_C_SOURCE=200809L)
target_link_libraries(bench_pg_rpc PRIVATE cruster_static)

# bench_pg_hot_entity: how fast one hot entity is served (a steady stream of
# persisted notifies to one entity); the rate test_pg_hot_entity used to assert.
add_executable(bench_pg_hot_entity ${CMAKE_CURRENT_LIST_DIR}/bench_pg_hot_entity.c)
target_compile_definitions(bench_pg_hot_entity PRIVATE _POSIX_C_SOURCE=200809L)
target_link_libraries(bench_pg_hot_entity PRIVATE cruster_static)

# bench_workflow: durable workflows (3 activities, each one INSERT in its
# transaction) at 1/16/64 executions in flight vs pgbench's single-row
# INSERT, commits per workflow, and 100,000 executions asleep (RSS, threads).
add_executable(bench_workflow ${CMAKE_CURRENT_LIST_DIR}/bench_workflow.c)
target_compile_definitions(bench_workflow PRIVATE _POSIX_C_SOURCE=200809L)
target_link_libraries(bench_workflow PRIVATE cruster_static)
