"""The paper's figures from job results, as matplotlib Figures.

Every function takes a :class:`sinkscope.Result` (of the job type it names)
and returns a ``matplotlib.figure.Figure`` built without pyplot (no global
state, no GUI: it renders with Agg wherever it is saved, and a notebook shows
it inline). ``save(fig, "name")`` writes name.png and name.svg.

    fig = sinkscope.plot.top_magnitudes(scan_result)        # Fig. 1 / 7
    sinkscope.plot.save(fig, "out/top3")

``figures(result)`` returns every figure that applies to a result (the report
page uses it). Figures of the mechanism jobs (spike attribution, SiLU regime,
||U_k||_F and S_k spectra) need those job types in the server's proto.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["top_magnitudes", "spike_attribution", "sink_ratio", "attention_distance",
           "cosine_similarity", "silu_regime", "ffn_norms", "ffn_spectra", "vo_circuit",
           "perplexity", "intervention_effects", "self_attention", "first_token_histogram",
           "profile_bars", "profile_curves", "figures", "save", "FIGURES"]

_C = {"resid": "#1f77b4", "output": "#ff7f0e", "step_up": "#d62728", "step_down": "#2ca02c",
      "spike": "#d62728", "other": "#7f7f7f", "sink": "#d62728", "baseline": "#4c72b0",
      "intervened": "#dd8452"}


class SinkscopeFigure(Figure):
    """A matplotlib Figure that a notebook shows inline (PNG) without pyplot."""

    def _repr_png_(self):
        import io
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100)
        return buf.getvalue()


def _figure(w: float = 7.0, h: float = 4.0) -> Figure:
    fig = SinkscopeFigure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, result, what: str):
    prov = result.provenance
    model = prov.get("model") or result.job.request.model
    fig.suptitle(f"{what} - {model} ({prov.get('dtype', '?')}, {prov.get('device', '?')})",
                 fontsize=10)


def _need(result, *types: str):
    if result.type not in types:
        raise ValueError(f"this figure needs a {' / '.join(types)} result, got {result.type!r}")


def save(fig: Figure, path: str, formats: Sequence[str] = ("png", "svg"), dpi: int = 120) -> List[str]:
    """Writes `fig` as path.png and path.svg (a suffix in `path` is replaced);
    returns the paths written."""
    stem, ext = os.path.splitext(path)
    if ext.lstrip(".") not in ("png", "svg", "pdf"):
        stem = path
    d = os.path.dirname(stem)
    if d:
        os.makedirs(d, exist_ok=True)
    out = []
    for fmt in formats:
        p = f"{stem}.{fmt}"
        fig.savefig(p, format=fmt, dpi=dpi)
        out.append(p)
    return out


def to_svg(fig: Figure) -> str:
    """The figure as an SVG document (text)."""
    import io
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Activation scan (Fig. 1 / 7) and block attribution
# ---------------------------------------------------------------------------
def _mark_blocks(ax, result, spike_blocks: Sequence[int]):
    steps = result.frame("step_blocks")
    for b in spike_blocks:
        ax.axvspan(b - 0.5, b + 0.5, color=_C["spike"], alpha=0.08, lw=0)
    for kind, style in (("step_up", "--"), ("step_down", ":")):
        for i, b in enumerate(steps.loc[steps.kind == kind, "block"]):
            ax.axvline(b, color=_C[kind], ls=style, lw=1.2,
                       label=f"{kind.replace('_', '-')} block" if i == 0 else None)


def top_magnitudes(result, log: bool = True) -> Figure:
    """Fig. 1 / 7: the top-k |value| of the post-residual stream (left) and of
    the block output (right) for every block 1..2L; spike blocks (some entry
    massive) shaded, step-up blocks dashed red, step-down dotted green.
    One line per rank (top-1, top-2, ...) in each axes."""
    _need(result, "scan")
    entries = result.frame("entries")
    blocks = result.frame("blocks")
    spike_blocks = blocks.loc[blocks.n_massive > 0, "block"].tolist()
    fig = _figure(11, 4)
    axes = fig.subplots(1, 2, sharex=True)
    for ax, stream, title in ((axes[0], "resid_top", "post-residual (resid_mid / resid_post)"),
                              (axes[1], "output_top", "block output (attn_out / mlp_out)")):
        e = entries[entries.stream == stream]
        for rank in sorted(e["rank"].unique()):
            r = e[e["rank"] == rank].sort_values("block")
            ax.plot(r.block, r.value.abs(), marker="o", ms=3, lw=1.2, label=f"top-{rank + 1}")
        _mark_blocks(ax, result, spike_blocks)
        ax.set_xlabel("block")
        ax.set_ylabel("|value|")
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")
    _title(fig, result, "Top magnitudes across blocks")
    return fig


def spike_attribution(result, entry: int = 0, max_entries: int = 16) -> Figure:
    """Per-block attribution of a spike: for spike entry `entry` (ScanSummary
    attributions, same order as spike_entries), the embedding and every block
    output up to the peak block stacked into the peak value (exact:
    resid_p[e] = embed[e] + sum_{j<=p} out_j[e]); left stacked shares of each
    spike entry, right the chosen entry's contribution per block. Needs the
    scan's block attribution (mechanism proto). At most `max_entries` entries
    (the largest) are stacked."""
    _need(result, "scan")
    s = result.summary
    all_atts = list(getattr(s, "attributions", []))
    atts = all_atts[:max_entries]
    if not atts:
        raise ValueError("this scan has no block attribution (server without the mechanism "
                         "proto, or no spike entries)")
    fig = _figure(11, 4)
    ax0, ax1 = fig.subplots(1, 2)
    n_blocks = max(a.peak_block for a in atts)
    cmap = _cmap(n_blocks + 1)
    labels = [f"({a.sequence},{a.position},{a.channel})" for a in atts]
    x = np.arange(len(atts))
    # Stacked shares: embed first, then block 1..peak; positive and negative stacks apart.
    parts = [("embed", [a.embed_share for a in atts])] + [
        (f"block {j + 1}", [a.shares[j] if j < len(a.shares) and j < a.peak_block else 0.0
                            for a in atts]) for j in range(n_blocks)]
    pos = np.zeros(len(atts))
    neg = np.zeros(len(atts))
    for i, (name, vals) in enumerate(parts):
        v = np.asarray(vals, dtype=float)
        if not np.any(np.abs(v) > 1e-3):
            continue
        bottom = np.where(v >= 0, pos, neg)
        ax0.bar(x, v, bottom=bottom, color=cmap[i], label=name, width=0.7)
        pos += np.where(v >= 0, v, 0)
        neg += np.where(v < 0, v, 0)
    ax0.axhline(1.0, color="k", lw=0.8, ls="--")
    ax0.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax0.set_xlabel("spike entry (sequence, position, channel)")
    ax0.set_ylabel("share of peak value")
    ax0.legend(fontsize=6, ncol=2)
    a = all_atts[entry]
    blocks = np.arange(1, len(a.contributions) + 1)
    colors = [_C["step_up"] if b in a.step_up_blocks else _C["step_down"] if b in a.step_down_blocks
              else _C["other"] for b in blocks]
    ax1.bar(blocks, a.contributions, color=colors)
    ax1.axvline(a.peak_block + 0.5, color="k", lw=0.8, ls=":")
    ax1.set_xlabel("block")
    ax1.set_ylabel("contribution to the spike entry")
    ax1.set_title(f"entry ({a.sequence},{a.position},{a.channel}): peak {a.peak_value:.4g} at block {a.peak_block}, "
                  f"embed {a.embed:.3g}", fontsize=8)
    _title(fig, result, "Block attribution of spikes")
    return fig


def _cmap(n: int):
    from matplotlib import colormaps
    cm = colormaps["tab20"]
    return [cm(i % 20) for i in range(max(n, 1))]


# ---------------------------------------------------------------------------
# Sinks (eq. 27-28, Fig. 6)
# ---------------------------------------------------------------------------
def sink_ratio(result) -> Figure:
    """Sink ratio s_eps per layer (left, bars; the model's ratio dashed) and
    the (layer x head) heatmap of max_k alpha_k (right; sink heads marked x)."""
    _need(result, "sinks")
    layers = result.frame("layers")
    m = result.matrix("max_importance")
    eps = float(result.summary.params.epsilon)
    fig = _figure(11, 4)
    ax0, ax1 = fig.subplots(1, 2, width_ratios=[1, 1.2])
    ax0.bar(layers.layer, layers.sink_ratio, color=_C["sink"], alpha=0.8, label="sink ratio")
    ax0.axhline(result.summary.sink_ratio, color="k", ls="--", lw=1, label="model")
    ax0.set_xlabel("layer")
    ax0.set_ylabel("sink ratio s_eps")
    ax0.set_ylim(0, 1)
    ax0.set_xticks(layers.layer)
    ax0.legend(fontsize=7)
    im = ax1.imshow(m, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis",
                    extent=(-0.5, m.shape[1] - 0.5, -0.5, m.shape[0] - 0.5) if m.size else None)
    sinks = result.frame("sink_heads")
    row_of = {int(l): i for i, l in enumerate(layers.layer)}
    if len(sinks):
        ax1.scatter(sinks["head"], [row_of.get(int(l), -1) for l in sinks["layer"]], marker="x",
                    color="w", s=40, label=f"sink head (> {eps:g})")
        ax1.legend(fontsize=7, loc="upper right")
    ax1.set_yticks(range(len(layers)), [str(l) for l in layers.layer])
    ax1.set_xticks(range(m.shape[1]) if m.ndim == 2 else [])
    ax1.set_xlabel("head")
    ax1.set_ylabel("layer")
    fig.colorbar(im, ax=ax1, label="max_k alpha_k")
    _title(fig, result, "Attention sinks")
    return fig


def attention_distance(result) -> Figure:
    """Fig. 6: mean attention distance of sink heads against the other heads:
    left, every head by layer (sink heads red); right, the group means with
    and without the sink key."""
    _need(result, "sinks")
    heads = result.frame("heads")
    s = result.summary
    fig = _figure(11, 4)
    ax0, ax1 = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    for is_sink, name in ((False, "other heads"), (True, "sink heads")):
        h = heads[heads.is_sink_head == is_sink]
        ax0.scatter(h.layer + rng.uniform(-0.15, 0.15, len(h)), h.mean_attention_distance,
                    color=_C["sink" if is_sink else "other"], s=18, label=name)
    ax0.set_xlabel("layer")
    ax0.set_ylabel("mean attention distance (tokens)")
    ax0.legend(fontsize=7)
    x = np.arange(2)
    w = 0.38
    ax1.bar(x - w / 2, [s.sink_heads_distance, s.other_heads_distance], w, label="with sink key",
            color=_C["sink"])
    ax1.bar(x + w / 2, [s.sink_heads_distance_without_sink, s.other_heads_distance_without_sink], w,
            label="without sink key", color=_C["other"])
    ax1.set_xticks(x, ["sink heads", "other heads"])
    ax1.set_xlabel("head group")
    ax1.set_ylabel("mean attention distance (tokens)")
    ax1.legend(fontsize=7)
    _title(fig, result, "Attention distance of sink vs other heads")
    return fig


# ---------------------------------------------------------------------------
# Spike similarity (Fig. 5)
# ---------------------------------------------------------------------------
def cosine_similarity(result) -> Figure:
    """Fig. 5: pairwise cosine similarity of the spike tokens' hidden states
    before the step-up block, after it, and after the next layer's RMSNorm
    (one heatmap each, shared colour scale -1..1)."""
    _need(result, "spike_similarity")
    mats = result.matrices()
    cos = result.frame("cosine").set_index("matrix")
    names = [n for n in ("before", "after", "normalized") if n in mats]
    fig = _figure(4 * len(names) + 1, 4)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    toks = result.frame("spike_tokens")
    ticks = [f"{t.sequence},{t.position}" for t in toks.itertuples()]
    im = None
    for ax, name in zip(axes, names):
        im = ax.imshow(mats[name], vmin=-1, vmax=1, cmap="RdBu_r")
        row = cos.loc[name]
        ax.set_title(f"{name}: {row.hook}\nmean off-diag {row.mean_off_diagonal:.3f}", fontsize=8)
        ax.set_xlabel("spike token (sequence, position)")
        ax.set_ylabel("spike token (sequence, position)")
        if len(ticks) <= 16:
            ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=6)
            ax.set_yticks(range(len(ticks)), ticks, fontsize=6)
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="cosine similarity")
    b = result.summary.step_up_block
    _title(fig, result, f"Spike-token similarity around step-up block {b.block} (layer {b.layer})")
    return fig


# ---------------------------------------------------------------------------
# Mechanism jobs (Fig. 2, 3, 4, 8)
# ---------------------------------------------------------------------------
def silu_regime(result) -> Figure:
    """Fig. 2: per MLP block, every token's cos(x, SiLU(x)) against
    ||SiLU(x)|| / ||x|| (x = mlp.hook_pre): spike tokens (red) sit in SiLU's
    near-identity regime (cosine ~ 1, ratio ~ 1), the others do not."""
    _need(result, "silu_regime")
    blocks = result.of_kind("silu_regime_block")
    if not blocks:
        raise ValueError("silu_regime result without blocks")
    fig = _figure(4 * len(blocks) + 1, 4)
    axes = np.atleast_1d(fig.subplots(1, len(blocks), squeeze=False)[0])
    for ax, b in zip(axes, blocks):
        for spike, name in ((False, "other tokens"), (True, "spike tokens")):
            t = [x for x in b.tokens if x.is_spike_token == spike]
            ax.scatter([x.cosine for x in t], [x.norm_ratio for x in t], s=14 if spike else 6,
                       color=_C["spike" if spike else "other"], alpha=0.9 if spike else 0.5,
                       label=f"{name} ({len(t)})")
        ax.set_xlabel("cos(x, SiLU(x))")
        ax.set_ylabel("||SiLU(x)|| / ||x||")
        ax.set_title(f"block {b.block} (layer {b.layer} mlp)", fontsize=9)
        ax.legend(fontsize=7)
    _title(fig, result, "SiLU regime at spike tokens")
    return fig


def ffn_norms(result, log: bool = True) -> Figure:
    """Fig. 3: ||U_k||_F for every (MLP block, channel k) as a heatmap (log
    colour scale); outlier channels are the spike channels of the amplifier."""
    _need(result, "ffn_quadratic")
    from matplotlib.colors import LogNorm
    blocks = result.of_kind("ffn_quadratic_block")
    m = result.matrix("frobenius_norms")
    fig = _figure(11, 1.2 + 0.5 * max(len(blocks), 2))
    ax = fig.subplots()
    positive = m[m > 0]
    norm = LogNorm(vmin=max(positive.min(), 1e-12), vmax=positive.max()) if log and positive.size else None
    im = ax.imshow(m, aspect="auto", origin="lower", norm=norm, cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(blocks)), [str(b.block) for b in blocks])
    ax.set_xlabel("channel k")
    ax.set_ylabel("MLP block")
    fig.colorbar(im, ax=ax, label="||U_k||_F")
    _title(fig, result, "FFN quadratic form norms ||U_k||_F")
    return fig


def ffn_spectra(result, block: Optional[int] = None) -> Figure:
    """Fig. 4 / 8: leading eigenvalues |lambda_i| of S_k = (U_k + U_k^T)/2 of
    the top channels (solid) and of sampled ordinary channels (dotted) of one
    MLP block (default: the block with the largest ||U_k||_F): a spike
    channel's S_k is dominated by one eigenvalue (rank-one amplifier)."""
    _need(result, "ffn_quadratic")
    blocks = result.of_kind("ffn_quadratic_block")
    if not blocks:
        raise ValueError("ffn_quadratic result without blocks")
    if block is None:
        b = max(blocks, key=lambda x: max(x.frobenius_norms) if len(x.frobenius_norms) else 0)
    else:
        b = next(x for x in blocks if x.block == block)
    fig = _figure(7, 4)
    ax = fig.subplots()
    for c in b.channels:
        ev = np.abs(np.asarray(c.eigenvalues, dtype=float))
        ax.plot(np.arange(1, len(ev) + 1), ev, marker="o" if c.is_top else ".", ms=4,
                ls="-" if c.is_top else ":", color=None if c.is_top else _C["other"],
                label=f"k={c.channel} ({'top' if c.is_top else 'sample'}, ratio {c.eigen_ratio:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("|lambda_i| of S_k")
    ax.set_title(f"block {b.block} (layer {b.layer} mlp)", fontsize=9)
    ax.legend(fontsize=6)
    _title(fig, result, "Spectra of S_k")
    return fig


def vo_circuit(result) -> Figure:
    """eq. 22: per layer, cos(W_VO^T h~, s*) of the requested position-0 tokens
    (points) against the vocabulary sample's 10-90% range (band) and median."""
    _need(result, "vo_circuit")
    layers = result.of_kind("vo_circuit_layer")
    fig = _figure(7, 4)
    ax = fig.subplots()
    x = np.array([l.layer for l in layers])
    q = np.array([list(l.sample_quantiles) + [np.nan] * (3 - len(l.sample_quantiles)) for l in layers])
    if len(layers):
        ax.fill_between(x, q[:, 0], q[:, 2], color=_C["other"], alpha=0.3, label="vocab sample 10-90%")
        ax.plot(x, q[:, 1], color=_C["other"], label="vocab sample median")
    n_tok = max((len(l.token_alignment) for l in layers), default=0)
    ids = list(getattr(result.summary, "token_ids", []))
    for i in range(n_tok):
        ax.plot(x, [l.token_alignment[i] for l in layers], marker="o", ms=4,
                label=f"token {ids[i] if i < len(ids) else i}")
    ax.set_xlabel("layer")
    ax.set_ylabel("cos(W_VO^T h~, s*)")
    ax.legend(fontsize=7)
    _title(fig, result, "Position-0 VO circuit")
    return fig


# ---------------------------------------------------------------------------
# Evaluation and interventions (finding 6)
# ---------------------------------------------------------------------------
def perplexity(result) -> Figure:
    """Perplexity per chunk (points) and over the whole evaluation (dashed)."""
    _need(result, "perplexity", "constant_substitution", "sink_ablation")
    chunks = result.frame("chunks")
    fig = _figure(7, 4)
    ax = fig.subplots()
    if result.type == "perplexity":
        ax.plot(chunks["index"], chunks.perplexity, marker="o", ms=3, label="chunk perplexity")
        ax.axhline(result.summary.perplexity, color="k", ls="--", lw=1, label="overall")
    else:
        ax.plot(chunks["index"], chunks.baseline_perplexity, marker="o", ms=3, label="baseline",
                color=_C["baseline"])
        ax.plot(chunks["index"], chunks.intervened_perplexity, marker="o", ms=3, label="intervened",
                color=_C["intervened"])
    ax.set_xlabel("chunk")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    _title(fig, result, "Perplexity by chunk")
    return fig


def intervention_effects(result) -> Figure:
    """Finding 6: perplexity baseline vs intervened (left) and
    KL(baseline || intervened) by position class (right: spike tokens, the
    token after a spike, the rest, all), nats per position."""
    _need(result, "constant_substitution", "sink_ablation")
    ppl = result.frame("perplexity")
    kl = result.frame("kl")
    fig = _figure(10, 4)
    ax0, ax1 = fig.subplots(1, 2)
    ax0.bar(ppl.run, ppl.perplexity, color=[_C["baseline"], _C["intervened"]])
    for i, v in enumerate(ppl.perplexity):
        ax0.annotate(f"{v:.4g}", (i, v), ha="center", va="bottom", fontsize=8)
    ax0.set_xlabel("run")
    ax0.set_ylabel("perplexity")
    ax1.bar(kl.position_class, kl.kl, color=[_C["spike"], "#9467bd", _C["other"], "k"])
    for i, (v, n) in enumerate(zip(kl.kl, kl.n)):
        ax1.annotate(f"n={n}", (i, v), ha="center", va="bottom", fontsize=7)
    ax1.set_xlabel("position class")
    ax1.set_ylabel("KL(baseline || intervened), nats")
    ivs = result.frame("interventions")
    what = ", ".join(f"{r.kind} {r.mode or r.method}" for r in ivs.itertuples()) or result.type
    _title(fig, result, f"Intervention: {what}")
    return fig


def self_attention(result) -> Figure:
    """§3.1.3: mean self-attention A[t, t] of the first token, delimiters and
    other tokens per profiled layer (grouped bars)."""
    _need(result, "self_attention_profile")
    g = result.frame("groups")
    layers = sorted(g.layer.unique())
    fig = _figure(7, 4)
    ax = fig.subplots()
    w = 0.8 / 3
    for i, (group, color) in enumerate((("first", _C["sink"]), ("delimiter", "#9467bd"),
                                        ("other", _C["other"]))):
        vals = [g[(g.layer == l) & (g.group == group)]["mean"].sum() for l in layers]
        ax.bar(np.arange(len(layers)) + (i - 1) * w, vals, w, label=group, color=color)
    ax.set_xticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("mean A[t, t]")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    _title(fig, result, "Self-attention of first, delimiter and other tokens")
    return fig


def first_token_histogram(result) -> Figure:
    """Table 2 companion: block where the probed tokens' spikes first appear
    (bars), with the ratios at position 0 and in the control in the title."""
    _need(result, "first_token_probe")
    h = result.frame("histogram")
    s = result.summary
    fig = _figure(7, 4)
    ax = fig.subplots()
    ax.bar(h.block, h.first_spike_block_histogram, color=_C["spike"])
    ax.set_xlabel("block")
    ax.set_ylabel("tokens whose spike first appears")
    ax.set_title(f"spike at position 0: {s.ratio_at_first:.1%}; in control: "
                 f"{s.ratio_in_control:.1%} of {s.n_tokens} tokens", fontsize=9)
    _title(fig, result, "First-token probe")
    return fig


# Figures per job type, in report order; a function that needs data the
# result lacks (e.g. attribution on an old server) is skipped by figures().
# ---------------------------------------------------------------------------
# Profile (the paper's Tables 3-8)
# ---------------------------------------------------------------------------
_PROFILE_METRICS = (("perplexity", "perplexity"), ("sink_ratio", "sink ratio (eq. 28)"),
                    ("spike", "spike (mean max |h|)"))


def _profile_rows(result_or_frame):
    if hasattr(result_or_frame, "frame"):
        _need(result_or_frame, "profile")
        return result_or_frame.frame("rows"), result_or_frame
    return result_or_frame, None


def profile_bars(result) -> Figure:
    """A comparison side by side: one bar per model for perplexity, sink
    ratio and spike (the paper's table columns), in the rows' order; failed
    rows are named with an x."""
    rows, res = _profile_rows(result)
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, 3)
    x = np.arange(len(rows))
    colors = _cmap(len(rows))
    for ax, (col, label) in zip(axes, _PROFILE_METRICS):
        vals = rows[col].astype(float).to_numpy()
        ax.bar(x, np.nan_to_num(vals), color=colors[:len(rows)])
        for i, ok in enumerate(rows["ok"]):
            if not ok:
                ax.text(i, 0, "x", ha="center", va="bottom", color="k")
        ax.set_xticks(x, list(rows["model"]), rotation=30, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        if col == "sink_ratio":
            ax.set_ylim(0, max(1e-3, float(np.nanmax(vals)) * 1.2) if len(vals) else 1)
        if col == "spike" and len(vals) and np.nanmax(vals) > 0 and (
                np.nanmax(vals) / max(np.nanmin(vals[vals > 0]) if (vals > 0).any() else 1, 1e-9) > 50):
            ax.set_yscale("log")
    if res is not None:
        _title(fig, res, "Profile")
    else:
        fig.suptitle("Profile", fontsize=10)
    return fig


def profile_curves(result) -> Figure:
    """Perplexity, sink ratio and spike against the training step, one line
    per run: the rows whose model names carry a step ("run@1000",
    "run-step1000"; sinkscope.frames.checkpoint_step). Accepts a profile
    Result or a rows DataFrame (e.g. several profiles concatenated)."""
    rows, res = _profile_rows(result)
    rows = rows[rows["ok"] & rows["step"].notna()]
    if rows.empty:
        raise ValueError("no profiled checkpoint has a step in its name (run@STEP)")
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, 3)
    runs = list(dict.fromkeys(rows["run"]))
    colors = _cmap(len(runs))
    for ax, (col, label) in zip(axes, _PROFILE_METRICS):
        for run, color in zip(runs, colors):
            r = rows[rows["run"] == run].sort_values("step")
            ax.plot(r["step"].astype(float), r[col].astype(float), marker="o", ms=3, color=color,
                    label=run)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        if col == "spike" and (rows[col].astype(float) > 0).all():
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    if res is not None:
        _title(fig, res, "Profile over checkpoints")
    else:
        fig.suptitle("Profile over checkpoints", fontsize=10)
    return fig


FIGURES: Dict[str, List[Callable[[Any], Figure]]] = {
    "scan": [top_magnitudes, spike_attribution],
    "sinks": [sink_ratio, attention_distance],
    "spike_similarity": [cosine_similarity],
    "silu_regime": [silu_regime],
    "ffn_quadratic": [ffn_norms, ffn_spectra],
    "vo_circuit": [vo_circuit],
    "perplexity": [perplexity],
    "constant_substitution": [intervention_effects, perplexity],
    "sink_ablation": [intervention_effects, perplexity],
    "self_attention_profile": [self_attention],
    "first_token_probe": [first_token_histogram],
    "profile": [profile_bars, profile_curves],
}


def figures(result) -> Dict[str, Figure]:
    """Every figure that applies to `result`: {function name: Figure}."""
    out = {}
    for fn in FIGURES.get(result.type, []):
        try:
            out[fn.__name__] = fn(result)
        except (ValueError, KeyError, StopIteration):
            continue
    return out
