"""Converters: result records -> tidy pandas DataFrames and numpy arrays.

One row per block / head / chunk / channel / token; columns are the proto's
field names (a BlockRef becomes its three columns block, layer, sublayer;
`stream`, `rank`, `matrix`, `position_class`, `kind` name what a tidy row is
when the proto has it as a field name or a list position). Every job type has
its tables in CONVERTERS; a job type without one (e.g. a type newer than this
module) gets generic tables: one per record kind, plus one per repeated
sub-message field, exploded with the parent's scalar fields.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd
from google.protobuf import descriptor as _d

from . import proto as P
from .proto import pb

__all__ = ["CONVERTERS", "MATRICES", "frames_of", "matrices_of", "messages_frame", "jobs_frame",
           "message_row", "generic_frames"]

FD = _d.FieldDescriptor
_rep = P._rep


def _scalar_fields(desc: _d.Descriptor) -> List[_d.FieldDescriptor]:
    return [f for f in sorted(desc.fields, key=lambda f: f.number)
            if f.type != FD.TYPE_MESSAGE and not _rep(f)]


def _value(msg, f: _d.FieldDescriptor, enums: Optional[Dict[str, str]] = None):
    v = getattr(msg, f.name)
    if f.type == FD.TYPE_ENUM:
        prefix = (enums or {}).get(f.name)
        if prefix is None:
            # strip the enum's own upper-case prefix, e.g. JOB_STATE_
            names = [x.name for x in f.enum_type.values]
            import os
            prefix = os.path.commonprefix(names)
            prefix = prefix[: prefix.rfind("_") + 1] if "_" in prefix else ""
        return P.enum_name(f.enum_type, v, prefix)
    if f.type == FD.TYPE_BYTES:
        return v.decode("utf-8", "replace")
    return v


def message_row(msg, prefix: str = "", enums: Optional[Dict[str, str]] = None,
                lists: bool = True, nested: bool = True) -> Dict[str, Any]:
    """Scalar fields of `msg` as {name: value}; repeated scalars as lists (when
    `lists`); singular sub-messages flattened as "field.sub" (when `nested`;
    a BlockRef / HeadRef as their own field names prefixed by the field's)."""
    row: Dict[str, Any] = {}
    for f in sorted(msg.DESCRIPTOR.fields, key=lambda f: f.number):
        name = prefix + f.name
        if _rep(f):
            if f.type != FD.TYPE_MESSAGE and lists:
                row[name] = [(_value_item(f, x)) for x in getattr(msg, f.name)]
            continue
        if f.type == FD.TYPE_MESSAGE:
            if nested and f.message_type.full_name != "google.protobuf.Timestamp":
                row.update(message_row(getattr(msg, f.name), name + ".", enums, lists, nested))
            continue
        row[name] = _value(msg, f, enums)
    return row


def _value_item(f: _d.FieldDescriptor, x):
    if f.type == FD.TYPE_ENUM:
        return P.enum_name(f.enum_type, x, "")
    return x


def messages_frame(msgs: Iterable[Any], enums: Optional[Dict[str, str]] = None,
                   lists: bool = True, nested: bool = True, columns: Optional[List[str]] = None,
                   **extra: Any) -> pd.DataFrame:
    """One row per message (message_row); `extra` columns are prepended."""
    msgs = list(msgs)
    rows = [{**extra, **message_row(m, enums=enums, lists=lists, nested=nested)} for m in msgs]
    if columns is None and not rows and msgs == []:
        return pd.DataFrame()
    return pd.DataFrame(rows, columns=columns)


def _frame(rows: List[Dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def _fields(msg_cls, skip: Sequence[str] = ()) -> List[str]:
    return [f.name for f in _scalar_fields(msg_cls.DESCRIPTOR) if f.name not in skip]


def _blockref(b) -> Dict[str, Any]:
    return {"block": b.block, "layer": b.layer, "sublayer": b.sublayer}


def _provenance(result) -> pd.DataFrame:
    prov = result.summary.provenance if result.summary is not None and \
        "provenance" in result.summary.DESCRIPTOR.fields_by_name else pb.Provenance()
    return _frame([message_row(prov)], _fields(pb.Provenance))


def jobs_frame(jobs: Iterable["pb.Job"]) -> pd.DataFrame:
    """One row per Job: id, owner, type, state, model, attempts, queue_position,
    create_time, start_time, end_time (UTC pandas Timestamps, NaT when unset),
    error_code, error_message, client_request_id."""
    cols = ["id", "owner", "type", "state", "model", "attempts", "queue_position", "create_time",
            "start_time", "end_time", "error_code", "error_message", "client_request_id"]
    rows = []
    for j in jobs:
        def ts(t, field):
            return pd.Timestamp(t.ToDatetime(), tz="UTC") if j.HasField(field) else pd.NaT
        rows.append({"id": j.id, "owner": j.owner, "type": P.job_type_of(j),
                     "state": P.state_name(j.state), "model": j.request.model,
                     "attempts": j.attempts, "queue_position": j.queue_position,
                     "create_time": ts(j.create_time, "create_time"),
                     "start_time": ts(j.start_time, "start_time"),
                     "end_time": ts(j.end_time, "end_time"),
                     "error_code": j.error.code, "error_message": j.error.message,
                     "client_request_id": j.client_request_id})
    return _frame(rows, cols)


# ---------------------------------------------------------------------------
# Per job type
# ---------------------------------------------------------------------------
def scan_frames(result) -> Dict[str, pd.DataFrame]:
    """Activation scan tables:
    blocks: one row per block (ScanBlock scalars: block, layer, sublayer,
        resid_hook, output_hook, max_abs, n_massive);
    entries: one row per (block, stream, rank): stream "resid_top" or
        "output_top", rank 0.., ActivationEntry value, sequence, position, channel;
    median_abs: one row per (block, sequence);
    spike_tokens (sequence, position); spike_channels (channel);
    spike_entries (rank, value, sequence, position, channel);
    step_blocks: kind "step_up" / "step_down", block, layer, sublayer;
    summary: peak_abs, peak_block (block, layer, sublayer), spike_mean_over_sequences,
        thresholds (top_k, abs_threshold, rel_threshold, step_fraction);
    attribution_entries / attributions: block attribution of the spike
        entries (servers with the mechanism proto; see attribution_frames);
    provenance."""
    blocks = result.of_kind("scan_block")
    bcols = _fields(pb.ScanBlock)
    entry_cols = ["block", "layer", "sublayer", "stream", "rank"] + _fields(pb.ActivationEntry)
    entries, medians = [], []
    for b in blocks:
        for stream in ("resid_top", "output_top"):
            for rank, e in enumerate(getattr(b, stream)):
                entries.append({"block": b.block, "layer": b.layer, "sublayer": b.sublayer,
                                "stream": stream, "rank": rank, **message_row(e)})
        for s, m in enumerate(b.median_abs):
            medians.append({"block": b.block, "layer": b.layer, "sublayer": b.sublayer,
                            "sequence": s, "median_abs": m})
    out = {
        "blocks": _frame([message_row(b, lists=False) for b in blocks], bcols),
        "entries": _frame(entries, entry_cols),
        "median_abs": _frame(medians, ["block", "layer", "sublayer", "sequence", "median_abs"]),
    }
    sums = result.of_kind("scan_summary")
    s = sums[-1] if sums else pb.ScanSummary()
    out["spike_tokens"] = _frame([message_row(t) for t in s.spike_tokens], _fields(pb.SpikeToken))
    out["spike_channels"] = _frame([{"channel": c} for c in s.spike_channels], ["channel"])
    out["spike_entries"] = _frame([{"rank": i, **message_row(e)} for i, e in enumerate(s.spike_entries)],
                                  ["rank"] + _fields(pb.ActivationEntry))
    steps = [{"kind": "step_up", **_blockref(b)} for b in s.step_up_blocks] + \
            [{"kind": "step_down", **_blockref(b)} for b in s.step_down_blocks]
    out["step_blocks"] = _frame(steps, ["kind", "block", "layer", "sublayer"])
    summary = {"peak_abs": s.peak_abs, **{f"peak_block.{k}": v for k, v in _blockref(s.peak_block).items()},
               "spike_mean_over_sequences": s.spike_mean_over_sequences,
               **{f"thresholds.{k}": v for k, v in message_row(s.thresholds).items()}}
    out["summary"] = _frame([summary], list(summary))
    if "attributions" in s.DESCRIPTOR.fields_by_name:
        out.update(attribution_frames(s))
    out["provenance"] = _provenance(result)
    return out


def sinks_frames(result) -> Dict[str, pd.DataFrame]:
    """Sinks tables: heads (one row per (layer, head), HeadSinkStats fields);
    layers (layer, sink_ratio, n_sink_heads); sink_heads (layer, head);
    summary (SinkSummary scalars and params.*); provenance."""
    layers = result.of_kind("sink_layer")
    heads = [message_row(h) for l in layers for h in l.heads]
    out = {"heads": _frame(heads, _fields(pb.HeadSinkStats)),
           "layers": _frame([message_row(l) for l in layers], _fields(pb.SinkLayer))}
    sums = result.of_kind("sink_summary")
    s = sums[-1] if sums else pb.SinkSummary()
    out["sink_heads"] = _frame([message_row(h) for h in s.sink_heads], _fields(pb.HeadRef))
    row = {k: v for k, v in message_row(s, lists=True).items() if not k.startswith("provenance.")}
    out["summary"] = _frame([row], list(row))
    out["provenance"] = _provenance(result)
    return out


def sinks_matrices(result) -> Dict[str, np.ndarray]:
    """max_importance, sink_fraction, gu_first_key_score, mean_attention_distance:
    float64 [n analysed layers, n_heads], rows in layer order (see 'layers')."""
    layers = result.of_kind("sink_layer")
    out = {}
    for name in ("max_importance", "sink_fraction", "gu_first_key_score",
                 "mean_attention_distance", "mean_attention_distance_without_sink"):
        out[name] = np.array([[getattr(h, name) for h in l.heads] for l in layers], dtype=np.float64)
    out["layers"] = np.array([l.layer for l in layers], dtype=np.int64)
    return out


def first_token_frames(result) -> Dict[str, pd.DataFrame]:
    """First-token probe tables: histogram (one row per block 1..2L: block,
    layer, sublayer, first_spike_block_histogram = spikes first seen there);
    exceptions (kind "not_spiking_at_first" / "spiking_in_control", token_id);
    summary (FirstTokenProbeResult scalars); params; provenance."""
    recs = result.of_kind("first_token_probe")
    r = recs[-1] if recs else pb.FirstTokenProbeResult()
    hist = [{"block": b, "layer": (b - 1) // 2, "sublayer": "attn" if b % 2 else "mlp",
             "first_spike_block_histogram": n}
            for b, n in enumerate(r.first_spike_block_histogram) if b >= 1]
    exc = [{"kind": k, "token_id": t} for k in ("not_spiking_at_first", "spiking_in_control")
           for t in getattr(r, k)]
    scal = message_row(r, lists=False, nested=False)
    return {"histogram": _frame(hist, ["block", "layer", "sublayer", "first_spike_block_histogram"]),
            "exceptions": _frame(exc, ["kind", "token_id"]),
            "summary": _frame([scal], list(scal)),
            "params": _frame([message_row(r.params)], list(message_row(r.params))),
            "provenance": _provenance(result)}


_COSINES = ("before", "after", "normalized")


def spike_similarity_frames(result) -> Dict[str, pd.DataFrame]:
    """Spike similarity tables: spike_tokens (index, sequence, position,
    token_id); cosine (one row per matrix "before" / "after" / "normalized":
    hook, n, mean_off_diagonal, min_off_diagonal); pairs (matrix, i, j, value);
    summary (step_up_block, thresholds); provenance."""
    recs = result.of_kind("spike_similarity")
    s = recs[-1] if recs else pb.SpikeSimilaritySummary()
    toks = [{"index": i, **message_row(t), "token_id": s.token_ids[i] if i < len(s.token_ids) else None}
            for i, t in enumerate(s.spike_tokens)]
    cos, pairs = [], []
    for name in _COSINES:
        if not s.HasField(name):
            continue
        m = getattr(s, name)
        cos.append({"matrix": name, **message_row(m, lists=False)})
        for k, v in enumerate(m.values):
            pairs.append({"matrix": name, "i": k // m.n, "j": k % m.n, "value": v})
    summ = {**{f"step_up_block.{k}": v for k, v in _blockref(s.step_up_block).items()},
            **{f"thresholds.{k}": v for k, v in message_row(s.thresholds).items()}}
    return {"spike_tokens": _frame(toks, ["index"] + _fields(pb.SpikeToken) + ["token_id"]),
            "cosine": _frame(cos, ["matrix"] + _fields(pb.CosineMatrix)),
            "pairs": _frame(pairs, ["matrix", "i", "j", "value"]),
            "summary": _frame([summ], list(summ)),
            "provenance": _provenance(result)}


def spike_similarity_matrices(result) -> Dict[str, np.ndarray]:
    """before / after / normalized: float64 [n, n] cosine matrices (rows and
    columns in spike_tokens order; 'normalized' absent for a last-layer block)."""
    recs = result.of_kind("spike_similarity")
    out = {}
    if recs:
        s = recs[-1]
        for name in _COSINES:
            if s.HasField(name):
                m = getattr(s, name)
                out[name] = np.array(m.values, dtype=np.float64).reshape(m.n, m.n)
    return out


def self_attention_frames(result) -> Dict[str, pd.DataFrame]:
    """Self-attention profile tables: groups (layer, group, mean, count);
    heads (layer, head, first, delimiter, other); per_token (layer, sequence,
    position, value = A[t, t] averaged over heads); summary (layers,
    delimiter_ids); delimiters (text, ids); provenance."""
    layers = result.of_kind("self_attention_layer")
    groups = [{"layer": l.layer, **message_row(g)} for l in layers for g in l.groups]
    heads = [{"layer": l.layer, **message_row(h)} for l in layers for h in l.heads]
    per_tok = [{"layer": l.layer, "sequence": s, "position": t, "value": v}
               for l in layers for s, seq in enumerate(l.per_token) for t, v in enumerate(seq.values)]
    sums = result.of_kind("self_attention_summary")
    s = sums[-1] if sums else pb.SelfAttentionSummary()
    return {"groups": _frame(groups, ["layer"] + _fields(pb.GroupSelfAttention)),
            "heads": _frame(heads, ["layer"] + _fields(pb.HeadSelfAttention)),
            "per_token": _frame(per_tok, ["layer", "sequence", "position", "value"]),
            "summary": _frame([{"layers": list(s.layers), "delimiter_ids": list(s.delimiter_ids)}],
                              ["layers", "delimiter_ids"]),
            "delimiters": _frame([{"text": d.text, "ids": list(d.ids)} for d in s.resolved_delimiters],
                                 ["text", "ids"]),
            "provenance": _provenance(result)}


def perplexity_frames(result) -> Dict[str, pd.DataFrame]:
    """Perplexity tables: chunks (one row per chunk: PerplexityChunk fields);
    summary (PerplexitySummary scalars, eval.*); provenance."""
    chunks = result.of_kind("perplexity_chunk")
    sums = result.of_kind("perplexity_summary")
    s = sums[-1] if sums else pb.PerplexitySummary()
    row = {k: v for k, v in message_row(s).items() if not k.startswith("provenance.")}
    return {"chunks": _frame([message_row(c) for c in chunks], _fields(pb.PerplexityChunk)),
            "summary": _frame([row], list(row)),
            "provenance": _provenance(result)}


_CLASSES = ("spike", "after_spike", "rest", "all")


def intervention_frames(result) -> Dict[str, pd.DataFrame]:
    """Intervention (constant substitution / sink ablation) tables:
    chunks (one row per chunk: InterventionChunk fields);
    kl (one row per position class "spike" / "after_spike" / "rest" / "all":
        kl = KL(baseline || intervened) mean over positions (nats), n positions);
    perplexity (one row per run "baseline" / "intervened": loss, perplexity);
    head_effects (one row per ablated head: HeadAblationEffect fields);
    residual_shifts (block, layer, sublayer, relative_change_spike, relative_change_rest);
    interventions (index, kind "substitution" / "ablation", mode / method,
        block, layer, sublayer, channels_only, channels, positions, heads, sink_positions);
    summary; provenance."""
    chunks = result.of_kind("intervention_chunk")
    sums = result.of_kind("intervention_summary")
    s = sums[-1] if sums else pb.InterventionSummary()
    kl = s.kl
    n_all = kl.n_spike + kl.n_after_spike + kl.n_rest
    kl_rows = [{"position_class": c, "kl": getattr(kl, c),
                "n": n_all if c == "all" else getattr(kl, "n_" + c)} for c in _CLASSES]
    ppl = [{"run": "baseline", "loss": s.baseline_loss, "perplexity": s.baseline_perplexity},
           {"run": "intervened", "loss": s.intervened_loss, "perplexity": s.intervened_perplexity}]
    shifts = [{**_blockref(r.block), "relative_change_spike": r.relative_change_spike,
               "relative_change_rest": r.relative_change_rest} for r in s.residual_shifts]
    ivs = []
    for i, iv in enumerate(s.interventions):
        kind = iv.WhichOneof("intervention")
        row = {"index": i, "kind": kind, "mode": None, "method": None, "block": None, "layer": None,
               "sublayer": None, "channels_only": None, "channels": None, "positions": None,
               "heads": None, "sink_positions": None}
        if kind == "substitution":
            x = iv.substitution
            row.update(mode=x.mode, **_blockref(x.block), channels_only=x.channels_only,
                       channels=list(x.channels), positions=list(x.positions))
        elif kind == "ablation":
            x = iv.ablation
            row.update(method=x.method, heads=[(h.layer, h.head) for h in x.heads],
                       sink_positions=list(x.sink_positions))
        ivs.append(row)
    summ = {k: v for k, v in message_row(s, lists=False).items()
            if not k.startswith(("provenance.", "kl."))}
    return {"chunks": _frame([message_row(c) for c in chunks], _fields(pb.InterventionChunk)),
            "kl": _frame(kl_rows, ["position_class", "kl", "n"]),
            "perplexity": _frame(ppl, ["run", "loss", "perplexity"]),
            "head_effects": _frame([message_row(h) for h in s.head_effects], _fields(pb.HeadAblationEffect)),
            "residual_shifts": _frame(shifts, ["block", "layer", "sublayer", "relative_change_spike",
                                               "relative_change_rest"]),
            "interventions": _frame(ivs, ["index", "kind", "mode", "method", "block", "layer", "sublayer",
                                          "channels_only", "channels", "positions", "heads",
                                          "sink_positions"]),
            "summary": _frame([summ], list(summ)),
            "provenance": _provenance(result)}


def intervention_matrices(result) -> Dict[str, np.ndarray]:
    """substitution_values: float32 [d] vector written by each substitution, by index."""
    recs = result.of_kind("intervention_summary")
    out = {}
    if recs:
        for i, iv in enumerate(recs[-1].interventions):
            if iv.WhichOneof("intervention") == "substitution":
                out[f"substitution_values_{i}"] = np.array(iv.substitution.values, dtype=np.float32)
    return out


def generic_frames(result) -> Dict[str, pd.DataFrame]:
    """Tables of a job type without a converter: per record kind, one row per
    record (scalars, repeated scalars as lists, sub-messages as "field.sub");
    per repeated sub-message field F of kind K, table "K.F": one row per
    element, with the record's scalar fields first."""
    out: Dict[str, pd.DataFrame] = {}
    by_kind: Dict[str, List[Any]] = {}
    for r in result.raw_records:
        by_kind.setdefault(P.record_kind(r), []).append(P.record_body(r))
    for kind, msgs in by_kind.items():
        out[kind] = messages_frame(msgs)
        desc = msgs[0].DESCRIPTOR
        keys = [f.name for f in _scalar_fields(desc)]
        for f in desc.fields:
            if _rep(f) and f.type == FD.TYPE_MESSAGE:
                rows = []
                for m in msgs:
                    parent = {k: getattr(m, k) for k in keys}
                    for i, sub in enumerate(getattr(m, f.name)):
                        rows.append({**parent, "index": i, **message_row(sub)})
                out[f"{kind}.{f.name}"] = pd.DataFrame(rows)
    if result.summary is not None and "provenance" in result.summary.DESCRIPTOR.fields_by_name:
        out["provenance"] = _provenance(result)
    return out


# ---------------------------------------------------------------------------
# Mechanism jobs (mechanism.proto; used when the server's proto has them)
# ---------------------------------------------------------------------------
def _scalars(msg) -> Dict[str, Any]:
    return message_row(msg, lists=False, nested=False)


def attribution_frames(summary) -> Dict[str, pd.DataFrame]:
    """Block attribution of a scan's spike entries (ScanSummary.attributions):
    attribution_entries: one row per spike entry (rank, SpikeAttribution scalars:
        sequence, position, channel, peak_value, peak_block, embed, embed_share,
        sum_to_peak; step_up_blocks / step_down_blocks as lists);
    attributions: one row per (entry, block): rank, sequence, position, channel,
        block, layer, sublayer, contribution, share (block j's output at the entry)."""
    atts = list(getattr(summary, "attributions", []))
    entries, rows = [], []
    for i, a in enumerate(atts):
        entries.append({"rank": i, **message_row(a, lists=False),
                        "step_up_blocks": list(a.step_up_blocks),
                        "step_down_blocks": list(a.step_down_blocks)})
        for j, (c, sh) in enumerate(zip(a.contributions, a.shares)):
            b = j + 1
            rows.append({"rank": i, "sequence": a.sequence, "position": a.position,
                         "channel": a.channel, "block": b, "layer": (b - 1) // 2,
                         "sublayer": "attn" if b % 2 else "mlp", "contribution": c, "share": sh})
    ecols = ["rank"] + (list(message_row(atts[0], lists=False)) if atts else []) + \
        ["step_up_blocks", "step_down_blocks"]
    return {"attribution_entries": _frame(entries, ecols),
            "attributions": _frame(rows, ["rank", "sequence", "position", "channel", "block", "layer",
                                          "sublayer", "contribution", "share"])}


def ffn_quadratic_frames(result) -> Dict[str, pd.DataFrame]:
    """ffn-quadratic tables (paper eq. 16-19, Fig. 3, 4, 8):
    blocks: one row per MLP block (FfnQuadraticBlock scalars);
    norms: one row per (block, channel k): frobenius_norm = ||U_k||_F;
    outliers: (block, rank, channel) of the outlier channels;
    channels: one row per analysed (block, channel): FfnChannelSpectrum scalars
        (channel, is_top, frobenius_norm, eigen_ratio, residual);
    eigenvalues: (block, channel, is_top, index, eigenvalue) of S_k;
    top_rows: (block, channel, FfnRow fields); summary; provenance."""
    blocks = result.of_kind("ffn_quadratic_block")
    brows, norms, outl, chans, eig, rows = [], [], [], [], [], []
    for b in blocks:
        ref = {"block": b.block, "layer": b.layer, "sublayer": b.sublayer}
        brows.append(_scalars(b))
        norms += [{**ref, "channel": k, "frobenius_norm": v} for k, v in enumerate(b.frobenius_norms)]
        outl += [{**ref, "rank": i, "channel": c} for i, c in enumerate(b.outlier_channels)]
        for c in b.channels:
            chans.append({**ref, **_scalars(c)})
            eig += [{"block": b.block, "channel": c.channel, "is_top": c.is_top, "index": i,
                     "eigenvalue": v} for i, v in enumerate(c.eigenvalues)]
            rows += [{"block": b.block, "channel": c.channel, **message_row(r)} for r in c.top_rows]
    s = result.summary
    summ = {k: v for k, v in message_row(s).items() if not k.startswith("provenance.")} if s else {}
    return {"blocks": pd.DataFrame(brows),
            "norms": _frame(norms, ["block", "layer", "sublayer", "channel", "frobenius_norm"]),
            "outliers": _frame(outl, ["block", "layer", "sublayer", "rank", "channel"]),
            "channels": pd.DataFrame(chans),
            "eigenvalues": _frame(eig, ["block", "channel", "is_top", "index", "eigenvalue"]),
            "top_rows": pd.DataFrame(rows),
            "summary": pd.DataFrame([summ]),
            "provenance": _provenance(result)}


def ffn_quadratic_matrices(result) -> Dict[str, np.ndarray]:
    """frobenius_norms: float32 [n blocks, d_model] (||U_k||_F; rows in block
    order); eigenvectors_B: float32 [n analysed channels, d_model] (s* per channel)."""
    blocks = result.of_kind("ffn_quadratic_block")
    out = {"frobenius_norms": np.array([list(b.frobenius_norms) for b in blocks], dtype=np.float32),
           "blocks": np.array([b.block for b in blocks], dtype=np.int64)}
    for b in blocks:
        if len(b.channels):
            out[f"eigenvectors_{b.block}"] = np.array([list(c.leading_eigenvector) for c in b.channels],
                                                      dtype=np.float32)
        n = int(round(len(b.top_eigenvector_cosine) ** 0.5))
        if n:
            out[f"top_eigenvector_cosine_{b.block}"] = np.array(
                b.top_eigenvector_cosine, dtype=np.float64).reshape(n, n)
    return out


def silu_regime_frames(result) -> Dict[str, pd.DataFrame]:
    """silu-regime tables (Fig. 2): tokens: one row per (block, token):
    block, layer, SiluToken fields (sequence, position, is_spike_token, cosine,
    norm_ratio, max_abs_output); blocks: one row per block (scalars, and
    spike_tokens.* / other_tokens.* SiluStats); provenance."""
    blocks = result.of_kind("silu_regime_block")
    toks = [{"block": b.block, "layer": b.layer, **message_row(t)} for b in blocks for t in b.tokens]
    return {"tokens": pd.DataFrame(toks),
            "blocks": pd.DataFrame([message_row(b, lists=False) for b in blocks]),
            "provenance": _provenance(result)}


def vo_circuit_frames(result) -> Dict[str, pd.DataFrame]:
    """vo-circuit tables (eq. 22): layers: one row per layer (VoCircuitLayer
    scalars, sample_quantiles as a list); alignment: one row per (layer,
    token): index, token_id, token_alignment; provenance."""
    layers = result.of_kind("vo_circuit_layer")
    ids = list(getattr(result.summary, "token_ids", [])) if result.summary is not None else []
    al = [{"layer": l.layer, "index": i, "token_id": ids[i] if i < len(ids) else None,
           "token_alignment": v} for l in layers for i, v in enumerate(l.token_alignment)]
    return {"layers": pd.DataFrame([message_row(l) for l in layers]),
            "alignment": _frame(al, ["layer", "index", "token_id", "token_alignment"]),
            "provenance": _provenance(result)}


def _activation_tensors(result) -> Dict[tuple, Dict[str, Any]]:
    out: Dict[tuple, Dict[str, Any]] = {}
    for t in result.of_kind("activation_tensor"):
        key = (t.hook, t.sequence)
        e = out.setdefault(key, {"shape": list(t.shape), "dims": list(t.dims), "numel": t.numel,
                                 "values": np.zeros(int(t.numel), dtype=np.float32), "pieces": 0})
        e["values"][int(t.offset):int(t.offset) + len(t.values)] = np.asarray(t.values, dtype=np.float32)
        e["pieces"] += 1
    return out


def activations_frames(result) -> Dict[str, pd.DataFrame]:
    """activations tables: tensors: one row per (hook, sequence): shape, dims,
    numel, pieces (the arrays themselves: matrices(), keys "HOOK/SEQUENCE");
    provenance."""
    rows = [{"hook": h, "sequence": s, "shape": e["shape"], "dims": e["dims"], "numel": e["numel"],
             "pieces": e["pieces"]} for (h, s), e in _activation_tensors(result).items()]
    return {"tensors": _frame(rows, ["hook", "sequence", "shape", "dims", "numel", "pieces"]),
            "provenance": _provenance(result)}


def activations_matrices(result) -> Dict[str, np.ndarray]:
    """"HOOK/SEQUENCE" -> float32 array of the sliced shape (pieces joined by offset)."""
    return {f"{h}/{s}": e["values"].reshape(e["shape"]) for (h, s), e in _activation_tensors(result).items()}


_STEP = re.compile(r"^(?P<run>.*?)(?:@|[-_.]step[-_]?|[-_.]ckpt[-_]?)(?P<step>\d+)$")


def checkpoint_step(model: str):
    """(run, step) of a checkpoint's model name: "run@1000", "run-step1000",
    "run_ckpt1000" -> ("run", 1000); (model, None) when the name holds no step."""
    m = _STEP.match(model)
    return (m.group("run"), int(m.group("step"))) if m else (model, None)


def profile_frames(result) -> Dict[str, pd.DataFrame]:
    """Profile tables:
    rows: one row per model, in order (ProfileRow scalars; ok; run and step
      parsed from NAME@STEP-style names; the block lists as lists of paper
      block numbers; spike_channels / spike_positions as lists; error);
    layers: one row per (model, layer): the layer's sink ratio;
    params: the evaluation, sink and threshold parameters every row used;
    provenance: each row's (model, dtype, device, code version ...)."""
    sums = result.of_kind("profile_summary")
    rows_msgs = list(sums[-1].rows) if sums else result.of_kind("profile_row")
    rows, layers, prov = [], [], []
    scalars = [f.name for f in _scalar_fields(pb.ProfileRow.DESCRIPTOR)]
    for r in rows_msgs:
        ok = not r.HasField("failure")
        row = {k: getattr(r, k) for k in scalars}
        run, step = checkpoint_step(r.model)
        row.update({"ok": ok, "run": run, "step": step,
                    "peak_block": r.peak_block.block if r.HasField("peak_block") else None,
                    "step_up_blocks": [b.block for b in r.step_up_blocks],
                    "step_down_blocks": [b.block for b in r.step_down_blocks],
                    "spike_channels": list(r.spike_channels),
                    "spike_positions": list(r.spike_positions),
                    "error": r.failure.message if not ok else ""})
        if not ok:
            for k in scalars:
                if k != "model":
                    row[k] = np.nan
        rows.append(row)
        for layer, ratio in enumerate(r.layer_sink_ratios):
            layers.append({"model": r.model, "index": layer, "sink_ratio": ratio})
        if ok:
            prov.append({"model": r.model, **message_row(r.provenance)})
    if sums and len(sums[-1].params.sinks.layers) and layers:
        ids = list(sums[-1].params.sinks.layers)
        for d in layers:
            d["layer"] = ids[d.pop("index")] if d["index"] < len(ids) else d.pop("index")
    else:
        for d in layers:
            d["layer"] = d.pop("index")
    cols = ["model", "ok", "run", "step"] + [k for k in scalars if k != "model"] + [
        "peak_block", "step_up_blocks", "step_down_blocks", "spike_channels", "spike_positions",
        "error"]
    params = message_row(sums[-1].params) if sums else {}
    return {"rows": _frame(rows, cols),
            "layers": _frame(layers, ["model", "layer", "sink_ratio"]),
            "params": _frame([params], list(params)),
            "provenance": pd.DataFrame(prov)}


def train_frames(result) -> Dict[str, pd.DataFrame]:
    """Training run tables (issue 26):
    curve: one row per TrainStep record of the completing attempt, in step
      order (step, steps, loss, lr, grad_norm, tokens_per_s, elapsed_s, eta_s,
      heldout_loss (NaN where not evaluated), checkpoint, replayed, tokens);
    summary: the TrainSummary's scalars (run_name, step, resumed_from_step,
      final_loss, last_checkpoint, n_params, ...) and its checkpoints list;
    profile (with TrainRequest.profile_every): the self-profiles' rows as
      profile_frames gives them (run and step columns from RUN@STEP)."""
    cols = ["step", "steps", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s",
            "heldout_loss", "checkpoint", "replayed", "tokens"]
    rows = []
    for t in result.of_kind("train_step"):
        row = {k: getattr(t, k) for k in cols if k != "heldout_loss"}
        row["heldout_loss"] = t.heldout_loss if t.HasField("heldout_loss") else np.nan
        rows.append(row)
    curve = _frame(rows, cols)
    if len(curve):
        curve = curve.sort_values("step", kind="stable").reset_index(drop=True)
    sums = result.of_kind("train_summary")
    summary = {}
    if sums:
        s = sums[-1]
        summary = {f.name: getattr(s, f.name) for f in _scalar_fields(pb.TrainSummary.DESCRIPTOR)}
        if not s.HasField("final_heldout_loss"):
            summary["final_heldout_loss"] = np.nan
        summary["checkpoints"] = list(s.checkpoints)
    out = {"curve": curve, "summary": _frame([summary] if summary else [], list(summary))}
    if result.of_kind("profile_row"):
        # Self-profiles (TrainRequest.profile_every): the profile job's rows, by checkpoint.
        out["profile"] = profile_frames(result)["rows"]
    return out


CONVERTERS: Dict[str, Callable[[Any], Dict[str, pd.DataFrame]]] = {
    "scan": scan_frames,
    "sinks": sinks_frames,
    "first_token_probe": first_token_frames,
    "spike_similarity": spike_similarity_frames,
    "self_attention_profile": self_attention_frames,
    "perplexity": perplexity_frames,
    "constant_substitution": intervention_frames,
    "sink_ablation": intervention_frames,
    "ffn_quadratic": ffn_quadratic_frames,
    "silu_regime": silu_regime_frames,
    "vo_circuit": vo_circuit_frames,
    "activations": activations_frames,
    "profile": profile_frames,
    "train": train_frames,
}

MATRICES: Dict[str, Callable[[Any], Dict[str, np.ndarray]]] = {
    "sinks": sinks_matrices,
    "spike_similarity": spike_similarity_matrices,
    "constant_substitution": intervention_matrices,
    "sink_ablation": intervention_matrices,
    "ffn_quadratic": ffn_quadratic_matrices,
    "activations": activations_matrices,
}


def frames_of(result) -> Dict[str, pd.DataFrame]:
    """All tables of a Result (CONVERTERS, else generic_frames)."""
    return CONVERTERS.get(result.type, generic_frames)(result)


def matrices_of(result) -> Dict[str, np.ndarray]:
    """All numpy arrays of a Result (MATRICES, else none)."""
    fn = MATRICES.get(result.type)
    return fn(result) if fn else {}
