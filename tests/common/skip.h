// Skips that CI cannot pass by: a test whose dependency (shared/ data, the
// prometheus binary, a PyPI package) is missing skips on a developer machine
// and FAILS under CI=true. The test main (gtest_main.cc) exits with
// kSkipReturnCode when tests skipped and none failed, so ctest reports the
// executable as skipped (SKIP_RETURN_CODE), never as a silent pass.
#pragma once

#include <cctype>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace sinkscope::testing {

/// Exit code of a test binary in which some tests skipped and none failed.
constexpr int kSkipReturnCode = 77;

/// True when the environment says this is a CI run: CI is "true", "1" or
/// "yes", in any case (GitHub/GitLab set "true", some runners "True" or "yes").
/// The same rule as in_ci() in tests/common/pytest_skip_exit.py.
inline bool InCi() {
  const char* ci = std::getenv("CI");
  if (ci == nullptr) return false;
  std::string v(ci);
  for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return v == "true" || v == "1" || v == "yes";
}

}  // namespace sinkscope::testing

/// Skips (developer machine) or fails (CI=true) because a dependency is missing.
/// Use inside a TEST body; `msg` is streamed (names the missing file or program).
#define SINKSCOPE_SKIP_MISSING(msg)                                              \
  if (::sinkscope::testing::InCi()) {                                           \
    GTEST_FAIL() << "missing dependency under CI=true: " << msg;                \
  } else                                                                        \
    GTEST_SKIP() << "missing dependency: " << msg
