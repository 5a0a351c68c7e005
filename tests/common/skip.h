// Skips that CI cannot pass by: a test whose dependency (shared/ data, the
// prometheus binary, a PyPI package) is missing skips on a developer machine
// and FAILS under CI=true. The test main (gtest_main.cc) exits with
// kSkipReturnCode when tests skipped and none failed, so ctest reports the
// executable as skipped (SKIP_RETURN_CODE), never as a silent pass.
#pragma once

#include <cstdlib>
#include <cstring>

#include <gtest/gtest.h>

namespace sinkscope::testing {

/// Exit code of a test binary in which some tests skipped and none failed.
constexpr int kSkipReturnCode = 77;

/// True when the environment says this is a CI run (CI=true or CI=1).
inline bool InCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && (std::strcmp(ci, "true") == 0 || std::strcmp(ci, "1") == 0);
}

}  // namespace sinkscope::testing

/// Skips (developer machine) or fails (CI=true) because a dependency is missing.
/// Use inside a TEST body; `msg` is streamed (names the missing file or program).
#define SINKSCOPE_SKIP_MISSING(msg)                                              \
  if (::sinkscope::testing::InCi()) {                                           \
    GTEST_FAIL() << "missing dependency under CI=true: " << msg;                \
  } else                                                                        \
    GTEST_SKIP() << "missing dependency: " << msg
