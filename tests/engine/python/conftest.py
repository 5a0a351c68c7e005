"""Shared helpers of the engine's Python-driven tests (run from ctest).

The references are PyPI packages (`tokenizers`, `gguf`, `transformers`,
`safetensors`); a missing one skips on a developer machine and fails under
CI (tests/common/pytest_skip_exit.py), as tests/common/skip.h does for the C++ tests.
"""
import importlib
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "common"))
from pytest_skip_exit import in_ci, skip_missing  # noqa: E402,F401


def need(module):
    """Imports `module`, or skips (fails under CI) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        skip_missing(f"Python package {module} ({e})")


def shared_path(rel):
    """A file under the shared folder, or None when it is missing."""
    root = os.environ.get("SINKSCOPE_SHARED_DIR") or os.environ.get("SINKSCOPE_DEFAULT_SHARED_DIR") or ""
    p = os.path.join(root, rel)
    return p if root and os.path.exists(p) else None


def require_shared(rel):
    """The shared file `rel`; skips when it is missing (fails under CI=true)."""
    p = shared_path(rel)
    if not p:
        skip_missing(f"shared {rel}")
    return p


def run_bin():
    b = os.environ.get("SINKSCOPE_RUN_BIN")
    if not b or not os.path.exists(b):
        pytest.fail(f"SINKSCOPE_RUN_BIN does not name the sinkscope-run binary: {b!r}")
    return b


def sinkscope_run(*args):
    """Runs sinkscope-run; returns its stdout's JSON (fails with its stderr)."""
    p = subprocess.run([run_bin(), *args], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"sinkscope-run {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return json.loads(p.stdout)


def sinkscope_run_lines(*args):
    """Runs sinkscope-run; returns the JSON of each stdout line."""
    p = subprocess.run([run_bin(), *args], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"sinkscope-run {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def sinkscope_run_error(*args):
    """Runs sinkscope-run expecting failure; returns its stderr."""
    p = subprocess.run([run_bin(), *args], capture_output=True, text=True)
    assert p.returncode != 0, f"sinkscope-run {' '.join(args)} succeeded: {p.stdout}"
    return p.stderr
