// Helpers shared by the tests: where ../shared is, temporary directories.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "tests/common/skip.h"

namespace sinkscope::testing {

/// The shared/ data directory ($SINKSCOPE_SHARED_DIR, else ../shared from the
/// source tree). Empty when it does not exist.
std::string SharedDir();
/// Absolute path of a file under shared/, or "" when shared/ or the file is missing.
std::string SharedFile(const std::string& relative);
/// A fresh empty temporary directory, removed with its contents when the test binary exits.
std::string MakeTempDir(const std::string& prefix);

/// The whole file as bytes ("" when it cannot be read).
std::string ReadAll(const std::string& path);

/// One case of llama.cpp's tokenizer test vectors: input text, expected ids (no BOS).
struct VocabCase {
  std::string input;
  std::vector<int64_t> ids;
};
/// llama.cpp's tests/test-tokenizer-0 files (same split as test-tokenizer-0.cpp):
/// `inp_path` holds the inputs, each followed by "\n__ggml_vocab_test__\n";
/// `out_path` one line of expected ids per input. Expects (gtest) as many
/// lines as inputs.
std::vector<VocabCase> LoadVocabCases(const std::string& inp_path, const std::string& out_path);

/// Asserts `status` is INVALID_ARGUMENT and its message contains `what`.
inline void ExpectInvalidArgumentNaming(const absl::Status& status, const std::string& what) {
  ASSERT_FALSE(status.ok()) << "expected an error naming " << what;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(what), std::string::npos) << status;
}

}  // namespace sinkscope::testing

/// Skips the current test when a shared/ file is missing, with the path.
#define SKIP_IF_NO_SHARED(var, rel)                                              \
  std::string var = ::sinkscope::testing::SharedFile(rel);                       \
  if (var.empty()) {                                                             \
    SINKSCOPE_SKIP_MISSING("shared data missing: " << (rel)                      \
                           << " (set SINKSCOPE_SHARED_DIR or place ../shared)"); \
  }                                                                              \
  do {                                                                           \
  } while (0)
