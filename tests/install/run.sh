#!/usr/bin/env bash
# Install test: installs a built cruster into a temporary prefix and builds and
# runs small consumers against it, the ways users consume it:
#   - CMake: find_package(cruster CONFIG) -> cruster::cruster,
#     cruster::cruster_static, cruster::cpp (consumer/CMakeLists.txt)
#   - pkg-config: `pkg-config cruster`, shared and static; `cruster-cpp`
#   - examples/counter copied out of the tree, built with find_package
#
# Usage: tests/install/run.sh BUILD_DIR
#   BUILD_DIR is a configured and built cruster build tree. The compilers and
#   the sanitizer setting are taken from its CMakeCache.txt. Nothing outside a
#   temporary directory is written (it is removed at the end, unless
#   CRUSTER_KEEP_INSTALL_TEST=1). Quiet on success; prints the log on failure.
set -euo pipefail

if [[ $# -ne 1 || ! -f $1/CMakeCache.txt ]]; then
  echo "usage: $0 BUILD_DIR   (a configured and built cruster build tree)" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(cd "$here/../.." && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/cruster-install-test.XXXXXX")
log=$work/log
if [[ ${CRUSTER_KEEP_INSTALL_TEST:-0} == 1 ]]; then
  trap 'echo "install test files kept in $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi

fail() {
  echo "install test FAILED: $*" >&2
  echo "---- log ($log) ----" >&2
  cat "$log" >&2
  exit 1
}
# step DESCRIPTION COMMAND...: runs COMMAND with its output in the log.
step() {
  local what=$1
  shift
  echo "---- $what: $*" >>"$log"
  "$@" >>"$log" 2>&1 || fail "$what"
}

cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt"; }
cc=$(cache_value CMAKE_C_COMPILER)
cxx=$(cache_value CMAKE_CXX_COMPILER)
libdir=$(cache_value CMAKE_INSTALL_LIBDIR)
san_flags=()
# CRUSTER_SANITIZE as CMakeLists.txt reads it: ON/address = ASan + UBSan, thread = TSan.
case $(cache_value CRUSTER_SANITIZE | tr '[:upper:]' '[:lower:]') in
  on | true | 1 | yes | y | address | asan)
    # shellcheck disable=SC2054 # the commas belong to the flag
    san_flags=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
    ;;
  thread | tsan)
    san_flags=(-fsanitize=thread -fno-omit-frame-pointer)
    ;;
esac

prefix=$work/prefix
[[ $libdir == /* ]] || libdir=$prefix/$libdir

# ---- install -----------------------------------------------------------------
step "cmake --install" cmake --install "$build" --prefix "$prefix"

for h in "$source_dir"/include/cruster/*.h "$source_dir"/cpp/include/cruster/*.hpp; do
  [[ -e $h ]] || continue # no C++ headers in this checkout yet
  [[ -f $prefix/include/cruster/$(basename "$h") ]] || fail "header $(basename "$h") not installed"
done
version=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")$/\1/p' "$libdir/cmake/cruster/crusterConfigVersion.cmake")
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "no version in crusterConfigVersion.cmake"
major=${version%%.*}
[[ -f $libdir/libcruster.so.$version && ! -L $libdir/libcruster.so.$version ]] ||
  fail "libcruster.so.$version missing"
[[ $(readlink "$libdir/libcruster.so.$major") == "libcruster.so.$version" ]] ||
  fail "libcruster.so.$major is not a link to libcruster.so.$version"
[[ $(readlink "$libdir/libcruster.so") == "libcruster.so.$major" ]] ||
  fail "libcruster.so is not a link to libcruster.so.$major"
readelf -d "$libdir/libcruster.so.$version" | grep -q "SONAME.*\[libcruster\.so\.$major\]" ||
  fail "SONAME of libcruster.so is not libcruster.so.$major"
[[ -f $libdir/libcruster.a ]] || fail "libcruster.a missing"
[[ -f $libdir/pkgconfig/cruster.pc ]] || fail "cruster.pc missing"

# ---- CMake consumer ------------------------------------------------------------
cmake_args=(-S "$here/consumer" -B "$work/cmake-consumer"
  -DCMAKE_PREFIX_PATH="$prefix" -DCRUSTER_EXPECT_VERSION="$version"
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx")
if ((${#san_flags[@]})); then
  cmake_args+=(-DCMAKE_C_FLAGS="${san_flags[*]}" -DCMAKE_CXX_FLAGS="${san_flags[*]}"
    -DCMAKE_EXE_LINKER_FLAGS="${san_flags[*]}")
fi
step "configure the CMake consumer" cmake "${cmake_args[@]}"
found_dir=$(sed -n 's/^cruster_DIR:PATH=//p' "$work/cmake-consumer/CMakeCache.txt")
[[ $found_dir == "$libdir/cmake/cruster" ]] ||
  fail "find_package found cruster in '$found_dir', not in the test prefix"
step "build the CMake consumer" cmake --build "$work/cmake-consumer"
for exe in consumer_c_shared consumer_c_static consumer_cpp; do
  step "run $exe" "$work/cmake-consumer/$exe"
done
readelf -d "$work/cmake-consumer/consumer_c_shared" | grep -q "NEEDED.*libcruster\.so\.$major" ||
  fail "consumer_c_shared does not load libcruster.so.$major"
if readelf -d "$work/cmake-consumer/consumer_c_static" | grep -q "NEEDED.*libcruster"; then
  fail "consumer_c_static loads libcruster.so instead of linking libcruster.a"
fi

# ---- pkg-config consumer -------------------------------------------------------
export PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
step "pkg-config finds cruster" pkg-config --exists --print-errors cruster
[[ $(pkg-config --modversion cruster) == "$version" ]] || fail "pkg-config --modversion cruster"
[[ $(pkg-config --variable=libdir cruster) == "$libdir" ]] ||
  fail "cruster.pc names libdir $(pkg-config --variable=libdir cruster), not $libdir"
read -r -a pc_cflags <<<"$(pkg-config --cflags cruster)"
read -r -a pc_libs <<<"$(pkg-config --libs cruster)"
read -r -a pc_static_libs <<<"$(pkg-config --static --libs cruster | sed 's/-lcruster\b/-l:libcruster.a/')"
strict=(-std=c99 -Wall -Wextra -pedantic -Werror)
step "build the pkg-config consumer (shared)" "$cc" "${strict[@]}" "${san_flags[@]}" "${pc_cflags[@]}" \
  "$here/consumer/consumer.c" -o "$work/pc_shared" "${pc_libs[@]}"
step "run the pkg-config consumer (shared)" env LD_LIBRARY_PATH="$libdir" "$work/pc_shared"
step "build the pkg-config consumer (static)" "$cc" "${strict[@]}" "${san_flags[@]}" "${pc_cflags[@]}" \
  "$here/consumer/consumer.c" -o "$work/pc_static" "${pc_static_libs[@]}"
step "run the pkg-config consumer (static)" "$work/pc_static"
[[ -f $libdir/pkgconfig/cruster-cpp.pc ]] || fail "cruster-cpp.pc missing"
read -r -a pc_cpp_cflags <<<"$(pkg-config --cflags cruster-cpp)"
read -r -a pc_cpp_libs <<<"$(pkg-config --libs cruster-cpp)"
step "build the pkg-config consumer (C++)" "$cxx" -std=c++17 -Wall -Wextra -Werror "${san_flags[@]}" \
  "${pc_cpp_cflags[@]}" "$here/consumer/consumer.cpp" -o "$work/pc_cpp" "${pc_cpp_libs[@]}"
step "run the pkg-config consumer (C++)" env LD_LIBRARY_PATH="$libdir" "$work/pc_cpp"

# ---- an example copied out of the tree, built against the prefix -----------------
cp -r "$source_dir/examples/counter" "$work/counter-alone"
alone_args=(-S "$work/counter-alone" -B "$work/counter-alone/build" -DCMAKE_PREFIX_PATH="$prefix"
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx")
if ((${#san_flags[@]})); then
  alone_args+=(-DCMAKE_C_FLAGS="${san_flags[*]}" -DCMAKE_CXX_FLAGS="${san_flags[*]}"
    -DCMAKE_EXE_LINKER_FLAGS="${san_flags[*]}")
fi
step "configure the counter example alone" cmake "${alone_args[@]}"
step "build the counter example alone" cmake --build "$work/counter-alone/build"
for exe in counter_c counter_cpp; do
  out=$("$work/counter-alone/build/$exe" 2>/dev/null) || fail "$exe (built alone) failed"
  [[ $out == *"counter-1 = 5"* ]] || fail "$exe (built alone) printed: $out"
done

echo "install test passed: cruster $version into a temporary prefix; CMake (shared, static, C++) and pkg-config (shared, static, C++) consumers and the counter example copied out alone built and ran"
