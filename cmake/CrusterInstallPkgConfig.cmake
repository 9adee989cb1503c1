# Run by `cmake --install` (see install(CODE) in the top-level CMakeLists.txt):
# writes cruster.pc for the prefix in effect at install time and installs it
# to <libdir>/pkgconfig. DESTDIR is honoured by file(INSTALL).
#
# Inputs: CRUSTER_PC_TEMPLATE, CRUSTER_PC_OUTPUT, CRUSTER_PC_VERSION,
#         CRUSTER_PC_LIBDIR and CRUSTER_PC_INCLUDEDIR (relative to the prefix,
#         or absolute), and CMAKE_INSTALL_PREFIX.

set(CRUSTER_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")

# Relative directories are written as ${prefix}/..., absolute ones as they are.
foreach(kind LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CRUSTER_PC_${kind}}")
    set(CRUSTER_PC_${kind}_VALUE "${CRUSTER_PC_${kind}}")
    set(CRUSTER_PC_${kind}_FULL "${CRUSTER_PC_${kind}}")
  else()
    set(CRUSTER_PC_${kind}_VALUE "\${prefix}/${CRUSTER_PC_${kind}}")
    set(CRUSTER_PC_${kind}_FULL "${CMAKE_INSTALL_PREFIX}/${CRUSTER_PC_${kind}}")
  endif()
endforeach()

configure_file("${CRUSTER_PC_TEMPLATE}" "${CRUSTER_PC_OUTPUT}" @ONLY)
file(INSTALL DESTINATION "${CRUSTER_PC_LIBDIR_FULL}/pkgconfig" TYPE FILE
     FILES "${CRUSTER_PC_OUTPUT}")
# cruster-cpp.pc: the header-only C++ layer (Requires: cruster, nlohmann_json).
if(CRUSTER_PC_CPP_TEMPLATE)
  configure_file("${CRUSTER_PC_CPP_TEMPLATE}" "${CRUSTER_PC_CPP_OUTPUT}" @ONLY)
  file(INSTALL DESTINATION "${CRUSTER_PC_LIBDIR_FULL}/pkgconfig" TYPE FILE
       FILES "${CRUSTER_PC_CPP_OUTPUT}")
endif()
