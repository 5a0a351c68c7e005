"""`python3 -m sinkscope report JOB_ID -o report.html` against the real
server, and the page opened in headless Chromium (Debian `chromium`, over the
DevTools protocol): every figure shown (one inline <svg> per figure, laid out
with a non-zero size), a screenshot taken, no console errors, and nothing
requested but the page itself (self-contained)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cdp import Browser, chromium_binary
from conftest import get_result, require
from sinkscope import plot


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    require(binary, "chromium (Debian package `chromium`, scripts/setup-debian.sh)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        require(False, "websocket-client (scripts/python-requirements.txt)")
    b = Browser(binary)
    yield b
    b.close()


def _report(server, job_id, path):
    out = subprocess.run([sys.executable, "-m", "sinkscope", "--server", server.address, "report",
                          job_id, "-o", str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(path)
    return path


@pytest.mark.parametrize("name", ["scan", "sinks", "spike_similarity", "sink_ablation",
                                  "self_attention_profile", "ffn_quadratic", "silu_regime",
                                  "profile_run"])
def test_report_in_chromium(name, results, server, browser, tmp_path):
    r = get_result(results, name)
    page = _report(server, r.job.id, tmp_path / f"{name}.html")
    html = page.read_text()
    assert r.job.id in html and "<script" not in html
    n_figures = len(plot.figures(r))
    assert n_figures >= 1
    browser.load("file://" + str(page))
    info = browser.evaluate("""JSON.stringify({
        figures: document.querySelectorAll('figure[data-figure]').length,
        svgs: Array.from(document.querySelectorAll('figure[data-figure] > svg')).map(s => {
            const b = s.getBoundingClientRect(); return [b.width, b.height,
            s.querySelectorAll('path, use, image, text').length]; }),
        tables: document.querySelectorAll('table').length,
        title: document.title})""")
    import json
    info = json.loads(info)
    assert info["figures"] == n_figures
    assert len(info["svgs"]) == n_figures
    for w, h, n_elems in info["svgs"]:
        assert w > 200 and h > 100 and n_elems > 20
    assert info["tables"] == 2 + len(r.frames())  # job, provenance, one per DataFrame
    assert r.job.id in info["title"]
    shot = browser.screenshot(str(tmp_path / f"{name}.png"))
    assert os.path.getsize(shot) > 20000
    assert browser.console_errors() == []
    # Self-contained: only the page itself and data: URIs (heatmaps embedded in the SVGs).
    reqs = browser.requests()
    assert reqs[0] == "file://" + str(page)
    assert all(u.startswith("data:") for u in reqs[1:]), reqs


def test_report_unknown_job(server):
    out = subprocess.run([sys.executable, "-m", "sinkscope", "--server", server.address, "report",
                          "j-0000000000000000"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 5  # NOT_FOUND
    assert "NOT_FOUND" in out.stderr


def test_figures_and_tables_commands(results, server, tmp_path):
    r = get_result(results, "sinks")
    out = subprocess.run([sys.executable, "-m", "sinkscope", "--server", server.address, "figures",
                          r.job.id, "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    written = out.stdout.split()
    assert len(written) == 2 * len(plot.figures(r))
    assert all(os.path.getsize(p) > 1000 for p in written)
    out = subprocess.run([sys.executable, "-m", "sinkscope", "--server", server.address, "tables",
                          r.job.id, "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import pandas as pd
    heads = pd.read_csv(tmp_path / f"{r.job.id}-heads.csv")
    assert list(heads.columns) == list(r.frame("heads").columns) and len(heads) == len(r.frame("heads"))
