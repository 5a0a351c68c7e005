"""examples/sinkscope-tour.ipynb executes top to bottom (nbclient, the venv's
kernel) against a real server with the demo catalog (bytelm-demo,
tinyshakespeare), its address from SINKSCOPE_SERVER as a user would pass it;
the committed notebook carries no outputs."""
from __future__ import annotations

import os

import pytest

from conftest import ROOT, require

NOTEBOOK = os.path.join(ROOT, "examples", "sinkscope-tour.ipynb")


def test_notebook_outputs_stripped():
    import nbformat
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs(server, tmp_path, monkeypatch):
    from conftest import shared_file
    require(bool(shared_file("models/bytelm-demo/tokenizer.json")
                 and shared_file("corpora/tinyshakespeare.txt")),
            "the notebook runs on shared/ bytelm-demo (with its tokenizer) and tinyshakespeare")
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("SINKSCOPE_SERVER", server.address)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as for a user
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    # Figures were displayed, and the files the last cell writes exist.
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5
    assert (tmp_path / "figures" / "sink-ratio.png").stat().st_size > 5000
    assert (tmp_path / "sinks-report.html").stat().st_size > 10000
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "FAILED_PRECONDITION" in text and "INVALID_ARGUMENT" in text
