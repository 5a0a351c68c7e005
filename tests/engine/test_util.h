// Helpers shared by the tests: where ../shared is, temporary directories.
#pragma once

#include <string>

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
