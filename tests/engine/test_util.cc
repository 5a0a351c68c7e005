#include "tests/engine/test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

namespace sinkscope::testing {
namespace {
bool Exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
}  // namespace

std::string SharedDir() {
  // The environment at test time wins over the build's default (CMake cache).
  const char* env = std::getenv("SINKSCOPE_SHARED_DIR");
  const char* fallback = std::getenv("SINKSCOPE_DEFAULT_SHARED_DIR");
  std::string dir = env && *env ? env : fallback && *fallback ? fallback : "../shared";
  return Exists(dir) ? dir : "";
}

std::string SharedFile(const std::string& relative) {
  std::string dir = SharedDir();
  if (dir.empty()) return "";
  std::string p = dir + "/" + relative;
  return Exists(p) ? p : "";
}

namespace {
/// Removes every directory MakeTempDir created when the test binary exits.
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    for (const auto& d : dirs) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }
};
TempDirs& Registry() {
  static TempDirs r;
  return r;
}
}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp ? tmp : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  char* d = ::mkdtemp(buf.data());
  if (!d) return std::string();
  Registry().dirs.push_back(d);
  return std::string(d);
}

}  // namespace sinkscope::testing
