// The main of every GoogleTest binary: gtest's, plus an exit code of
// kSkipReturnCode (ctest SKIP_RETURN_CODE) when some tests skipped and none
// failed, so that skips are reported as skips.
#include <gtest/gtest.h>

#include "tests/common/skip.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  if (rc != 0) return rc;
  const ::testing::UnitTest* u = ::testing::UnitTest::GetInstance();
  return u->skipped_test_count() > 0 ? sinkscope::testing::kSkipReturnCode : 0;
}
