// Install test: a C++17 program linking cruster::cpp, which must bring the C
// headers, the shared library, nlohmann_json and C++17 along.
#include <cruster/cruster.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

static_assert(__cplusplus >= 201703L, "cruster::cpp must request C++17");

int main() {
  const nlohmann::json info = {{"version", cruster_version()},
                               {"number", cruster_version_number()}};
  const std::string expected = std::to_string(CRUSTER_VERSION_MAJOR) + "." +
                               std::to_string(CRUSTER_VERSION_MINOR) + "." +
                               std::to_string(CRUSTER_VERSION_PATCH);
  if (info["version"].get<std::string>() != expected ||
      info["number"].get<int>() != CRUSTER_VERSION_NUMBER) {
    std::cerr << "installed library does not match its headers: " << info.dump() << '\n';
    return 1;
  }
  std::cout << info.dump() << ": ok\n";
  return 0;
}
