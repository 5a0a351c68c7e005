#include "tests/engine/test_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
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

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<VocabCase> LoadVocabCases(const std::string& inp_path, const std::string& out_path) {
  const std::string text = ReadAll(inp_path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  for (size_t pos = 0; pos < text.size();) {
    size_t next = text.find(sep, pos);
    if (next == std::string::npos) next = text.size();
    inputs.push_back(text.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::ifstream out(out_path);
  std::vector<VocabCase> cases;
  std::string line;
  for (size_t i = 0; std::getline(out, line); ++i) {
    VocabCase c;
    c.input = i < inputs.size() ? inputs[i] : "";
    std::istringstream ls(line);
    int64_t id;
    while (ls >> id) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  EXPECT_EQ(inputs.size(), cases.size()) << "inputs in " << inp_path << " vs lines in " << out_path;
  return cases;
}

}  // namespace sinkscope::testing
