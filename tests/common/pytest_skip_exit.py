"""Skips reported as skips for every pytest suite ctest runs (loaded with
`-p pytest_skip_exit`, tests/common on PYTHONPATH; see tests/python/CMakeLists.txt
and tests/engine/CMakeLists.txt), as tests/common/gtest_main.cc does for GoogleTest:

- a run in which tests skipped and none failed exits 77 (ctest
  SKIP_RETURN_CODE), so ctest shows "Skipped", never "Passed";
- under CI (CI=true / 1 / yes, any case) such a run exits 1: CI cannot pass by
  skipping (the skip helpers below already fail there; this catches a bare
  pytest.skip).

A skip whose reason contains NOT_APPLICABLE (e.g. a job type this checkout's
proto does not define) is not a missing dependency and counts as a pass.
"""
from __future__ import annotations

import os

import pytest

SKIP_RETURN_CODE = 77
NOT_APPLICABLE = "job type not in this checkout's proto:"


def in_ci() -> bool:
    """True when the environment says this is a CI run (CI=true/1/yes, any case)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_missing(message: str):
    """Skips the test (or, called at import, the module) because a dependency is
    missing; fails under CI (as SINKSCOPE_SKIP_MISSING in tests/common/skip.h)."""
    if in_ci():
        pytest.fail(f"missing dependency under CI: {message}", pytrace=False)
    pytest.skip(f"missing dependency: {message}", allow_module_level=True)


def _counted_skips(session) -> list:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    return [r for r in reporter.stats.get("skipped", [])
            if NOT_APPLICABLE not in str(getattr(r, "longrepr", ""))]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if exitstatus != 0:
        return
    skips = _counted_skips(session)
    if not skips:
        return
    if in_ci():
        session.exitstatus = 1
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(f"pytest_skip_exit: {len(skips)} test(s) skipped under CI: "
                            "a skip is a failure there", red=True)
    else:
        session.exitstatus = SKIP_RETURN_CODE
