"""Every plot function on a real result writes a non-empty PNG (and SVG);
axes labels and the number of plotted series are asserted, and what the
series show is checked against the planted fixture where it has a truth."""
from __future__ import annotations

import os

import numpy as np
import pytest
from matplotlib.container import BarContainer

import planted
from conftest import get_result
import sinkscope
from sinkscope import plot


def _save(fig, tmp_path, name):
    paths = plot.save(fig, str(tmp_path / name))
    assert [os.path.splitext(p)[1] for p in paths] == [".png", ".svg"]
    png, svg = paths
    with open(png, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 5000
    with open(svg) as f:
        assert "<svg" in f.read(2000)
    return png


def _labels(ax):
    return ax.get_xlabel(), ax.get_ylabel()


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_top_magnitudes(results, tmp_path):
    r = get_result(results, "scan")
    fig = plot.top_magnitudes(r)
    _save(fig, tmp_path, "top3")
    a0, a1 = fig.axes[:2]
    for ax in (a0, a1):
        assert _labels(ax) == ("block", "|value|")
        series = [l for l in ax.lines if l.get_label().startswith("top-")]
        assert [l.get_label() for l in series] == ["top-1", "top-2", "top-3"]
        for l in series:
            assert list(l.get_xdata()) == list(range(1, 2 * planted.N_LAYERS + 1))
        vlines = {l.get_label(): l.get_xdata()[0] for l in ax.lines if "block" in l.get_label()}
        assert vlines["step-up block"] == planted.STEP_UP_BLOCK
        assert vlines["step-down block"] == planted.STEP_DOWN_BLOCK
    # Top-1 of the post-residual between the MLPs is the planted ~1280 spike.
    top1 = a0.lines[0]
    y = dict(zip(top1.get_xdata(), top1.get_ydata()))
    assert y[planted.STEP_UP_BLOCK] > 600 and y[planted.STEP_UP_BLOCK - 1] < 100


def test_spike_attribution(results, tmp_path):
    r = get_result(results, "scan")
    if not len(getattr(r.summary, "attributions", [])):
        from conftest import NOT_IN_PROTO, require
        require(False, f"{NOT_IN_PROTO} ScanSummary.attributions (mechanism branch)")
    fig = plot.spike_attribution(r)
    _save(fig, tmp_path, "attribution")
    a0, a1 = fig.axes[:2]
    assert _labels(a0) == ("spike entry (sequence, position, channel)", "share of peak value")
    assert _labels(a1) == ("block", "contribution to the spike entry")
    # Stacked segments: the step-up block carries (nearly) all of each spike.
    names = [c.get_label() for c in _bars(a0)]
    assert f"block {planted.STEP_UP_BLOCK}" in names
    n_entries = len(r.summary.attributions)
    assert all(len(c) == n_entries for c in _bars(a0))
    heights = [p.get_height() for p in _bars(a1)[0]]
    assert len(heights) == 2 * planted.N_LAYERS
    assert int(np.argmax(np.abs(heights))) + 1 == planted.STEP_UP_BLOCK


def test_sink_ratio(results, tmp_path):
    r = get_result(results, "sinks")
    fig = plot.sink_ratio(r)
    _save(fig, tmp_path, "sinks")
    a0, a1 = fig.axes[:2]
    assert _labels(a0) == ("layer", "sink ratio s_eps")
    assert _labels(a1) == ("head", "layer")
    bars = _bars(a0)
    assert len(bars) == 1 and len(bars[0]) == planted.N_LAYERS
    heights = [p.get_height() for p in bars[0]]
    assert heights[2] == pytest.approx(0.5) and heights[3] == pytest.approx(0.25)
    assert len(a1.images) == 1 and a1.images[0].get_array().shape == (planted.N_LAYERS, planted.N_HEADS)
    marks = a1.collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(marks).astype(int).tolist())) == sorted(
        (h, l) for l, h in planted.SINK_HEADS)


def test_attention_distance(results, tmp_path):
    r = get_result(results, "sinks")
    fig = plot.attention_distance(r)
    _save(fig, tmp_path, "distance")
    a0, a1 = fig.axes[:2]
    assert _labels(a0) == ("layer", "mean attention distance (tokens)")
    assert _labels(a1) == ("head group", "mean attention distance (tokens)")
    assert [c.get_label() for c in a0.collections] == ["other heads", "sink heads"]
    assert len(a0.collections[1].get_offsets()) == len(planted.SINK_HEADS)
    assert len(a0.collections[0].get_offsets()) == planted.N_LAYERS * planted.N_HEADS - 3
    bars = _bars(a1)
    assert [b.get_label() for b in bars] == ["with sink key", "without sink key"]
    assert all(len(b) == 2 for b in bars)


def test_cosine_similarity(results, tmp_path):
    r = get_result(results, "spike_similarity")
    fig = plot.cosine_similarity(r)
    _save(fig, tmp_path, "cosine")
    axes = [a for a in fig.axes if a.images]
    assert len(axes) == 3
    n = len(r.frame("spike_tokens"))
    for ax in axes:
        assert _labels(ax) == ("spike token (sequence, position)", "spike token (sequence, position)")
        assert ax.images[0].get_array().shape == (n, n)
    after = axes[1].images[0].get_array()
    assert after.min() > 0.99  # all spike tokens one vector after the step-up block


def test_intervention_effects_and_perplexity(results, tmp_path):
    for name in ("constant_substitution", "sink_ablation"):
        r = get_result(results, name)
        fig = plot.intervention_effects(r)
        _save(fig, tmp_path, name)
        a0, a1 = fig.axes[:2]
        assert _labels(a0) == ("run", "perplexity")
        assert _labels(a1) == ("position class", "KL(baseline || intervened), nats")
        assert len(_bars(a0)[0]) == 2 and len(_bars(a1)[0]) == 4
        assert [p.get_height() for p in _bars(a1)[0]] == pytest.approx(list(r.frame("kl").kl))
        fig = plot.perplexity(r)
        _save(fig, tmp_path, name + "-ppl")
        ax = fig.axes[0]
        assert _labels(ax) == ("chunk", "perplexity")
        assert [l.get_label() for l in ax.lines] == ["baseline", "intervened"]
    r = get_result(results, "perplexity")
    fig = plot.perplexity(r)
    _save(fig, tmp_path, "ppl")
    ax = fig.axes[0]
    assert [l.get_label() for l in ax.lines] == ["chunk perplexity", "overall"]
    assert len(ax.lines[0].get_xdata()) == len(r.frame("chunks"))


def test_self_attention_and_first_token(results, tmp_path):
    r = get_result(results, "self_attention_profile")
    fig = plot.self_attention(r)
    _save(fig, tmp_path, "selfattn")
    ax = fig.axes[0]
    assert _labels(ax) == ("layer", "mean A[t, t]")
    bars = _bars(ax)
    assert [b.get_label() for b in bars] == ["first", "delimiter", "other"]
    assert all(len(b) == 3 for b in bars)
    assert [p.get_height() for p in bars[0]] == pytest.approx([1.0] * 3, abs=1e-5)
    r = get_result(results, "first_token_probe")
    fig = plot.first_token_histogram(r)
    _save(fig, tmp_path, "probe")
    ax = fig.axes[0]
    assert _labels(ax) == ("block", "tokens whose spike first appears")
    assert len(_bars(ax)[0]) == 2 * planted.N_LAYERS


def test_silu_regime(results, tmp_path):
    r = get_result(results, "silu_regime")
    fig = plot.silu_regime(r)
    _save(fig, tmp_path, "silu")
    for ax in fig.axes:
        if ax.collections:
            assert _labels(ax) == ("cos(x, SiLU(x))", "||SiLU(x)|| / ||x||")
            assert len(ax.collections) == 2


def test_ffn_figures(results, tmp_path):
    r = get_result(results, "ffn_quadratic")
    fig = plot.ffn_norms(r)
    _save(fig, tmp_path, "ffn-norms")
    ax = fig.axes[0]
    assert _labels(ax) == ("channel k", "MLP block")
    assert ax.images[0].get_array().shape == (planted.N_LAYERS, planted.D_MODEL)
    fig = plot.ffn_spectra(r)
    _save(fig, tmp_path, "ffn-spectra")
    ax = fig.axes[0]
    assert _labels(ax) == ("eigenvalue index i", "|lambda_i| of S_k")
    assert len(ax.lines) >= 1


def test_vo_circuit(results, tmp_path):
    r = get_result(results, "vo_circuit")
    fig = plot.vo_circuit(r)
    _save(fig, tmp_path, "vo")
    assert _labels(fig.axes[0]) == ("layer", "cos(W_VO^T h~, s*)")


def test_vo_circuit_shows_the_float64_values(results, tmp_path):
    # bytelm-demo (non-zero alignments): the median line and one line per
    # requested token plot the values of the float64 reference (test_jobs.py).
    from test_jobs import vo_circuit_bytelm_reference
    from jobs import BYTELM_IDS
    import planted_reference
    r = get_result(results, "vo_circuit_bytelm")
    fig = plot.vo_circuit(r)
    _save(fig, tmp_path, "vo-bytelm")
    _, tok, vocab = vo_circuit_bytelm_reference()
    lines = {l.get_label(): l for l in fig.axes[0].lines}
    assert set(lines) == {"vocab sample median"} | {f"token {t}" for t in BYTELM_IDS}
    np.testing.assert_allclose(lines["vocab sample median"].get_xydata(),
                               [[0, planted_reference.quantiles(vocab)[1]]], rtol=1e-5, atol=1e-6)
    for t, want in zip(BYTELM_IDS, tok):
        np.testing.assert_allclose(lines[f"token {t}"].get_xydata(), [[0, want]], rtol=1e-5, atol=1e-6)


def test_figures_of_every_result(results):
    # plot.figures() finds at least one figure for every job type that has one.
    for name, r in results.items():
        if isinstance(r, Exception) or r.type not in plot.FIGURES:
            continue
        figs = plot.figures(r)
        assert figs, f"no figure for {name}"


def test_wrong_result_type(results):
    r = get_result(results, "sinks")
    with pytest.raises(ValueError, match="scan"):
        plot.top_magnitudes(r)
