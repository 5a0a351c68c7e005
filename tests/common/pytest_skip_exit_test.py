"""tests/common/pytest_skip_exit.py on tiny suites run in a subprocess by
pytest's own `pytester`: the exit code ctest sees for a pass, a skip, a
failure, a not-applicable skip, and each of them under CI spellings."""
import os

import pytest

pytest_plugins = ["pytester"]

HERE = os.path.dirname(os.path.abspath(__file__))

SUITES = {
    "pass": "def test_a():\n    pass\n",
    "skip": "import pytest\ndef test_a():\n    pass\ndef test_b():\n    pytest.skip('no package')\n",
    "skip_fail": ("import pytest\ndef test_a():\n    assert False\n"
                  "def test_b():\n    pytest.skip('no package')\n"),
    "not_applicable": ("import pytest\nfrom pytest_skip_exit import NOT_APPLICABLE\n"
                       "def test_a():\n    pytest.skip(NOT_APPLICABLE + ' Foo')\n"),
    "skip_missing": ("from pytest_skip_exit import skip_missing\n"
                     "def test_a():\n    skip_missing('package foo')\n"),
}


def run(pytester, monkeypatch, suite, ci):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(**{f"test_{suite}": SUITES[suite]})
    return pytester.runpytest_subprocess("-p", "pytest_skip_exit", "-p", "no:cacheprovider").ret


OFF_CI = {"pass": 0, "skip": 77, "skip_fail": 1, "not_applicable": 0, "skip_missing": 77}
UNDER_CI = {"pass": 0, "skip": 1, "skip_fail": 1, "not_applicable": 0, "skip_missing": 1}


@pytest.mark.parametrize("suite", sorted(OFF_CI))
def test_off_ci(pytester, monkeypatch, suite):
    assert run(pytester, monkeypatch, suite, None) == OFF_CI[suite]


@pytest.mark.parametrize("suite", sorted(UNDER_CI))
def test_under_ci(pytester, monkeypatch, suite):
    assert run(pytester, monkeypatch, suite, "true") == UNDER_CI[suite]


@pytest.mark.parametrize("ci,want", [("", 77), ("false", 77), ("0", 77), ("True", 1), ("TRUE", 1),
                                     ("1", 1), ("yes", 1), ("Yes", 1)])
def test_ci_spellings(pytester, monkeypatch, ci, want):
    assert run(pytester, monkeypatch, "skip", ci) == want
