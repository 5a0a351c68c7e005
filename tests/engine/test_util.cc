#include "tests/engine/test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
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
  const char* env = std::getenv("SINKSCOPE_SHARED_DIR");
  std::string dir = env ? env : "../shared";
  return Exists(dir) ? dir : "";
}

std::string SharedFile(const std::string& relative) {
  std::string dir = SharedDir();
  if (dir.empty()) return "";
  std::string p = dir + "/" + relative;
  return Exists(p) ? p : "";
}

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp ? tmp : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  char* d = ::mkdtemp(buf.data());
  return d ? std::string(d) : std::string();
}

}  // namespace sinkscope::testing
