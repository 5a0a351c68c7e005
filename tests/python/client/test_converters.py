"""Every converter's columns and row counts (and values) checked against the
C++ CLI's `sinkscope --json get JOB` of the same job: the expected tables are
built here from the CLI's protobuf JSON (C++ JsonPrinter, proto field names,
every primitive field printed) by walking plain dicts, sharing no code with
sinkscope.frames."""
from __future__ import annotations

import math

import pytest

from conftest import cli_json, get_result
from jobs import SPECS


def scalars(d: dict) -> dict:
    """The scalar members of a JSON message (no sub-messages, no lists)."""
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}


def records(cli: dict, kind: str) -> list:
    return [r[kind] for r in cli.get("results", []) if kind in r]


def last(cli: dict, kind: str) -> dict:
    r = records(cli, kind)
    return r[-1] if r else {}


def blockref(d: dict, prefix: str = "") -> dict:
    return {prefix + "block": d.get("block", 0), prefix + "layer": d.get("layer", 0),
            prefix + "sublayer": d.get("sublayer", "")}


def expected_tables(job_type: str, cli: dict) -> dict:
    """{table: (columns or None, rows)} from the CLI's JSON."""
    t = {}
    if job_type == "scan":
        blocks = records(cli, "scan_block")
        t["blocks"] = ([k for k in scalars(blocks[0])], [scalars(b) for b in blocks])
        entries = [{"block": b["block"], "layer": b["layer"], "sublayer": b["sublayer"], "stream": s,
                    "rank": i, **e} for b in blocks for s in ("resid_top", "output_top")
                   for i, e in enumerate(b[s])]
        t["entries"] = (["block", "layer", "sublayer", "stream", "rank", "value", "sequence",
                         "position", "channel"], entries)
        t["median_abs"] = (None, [{"block": b["block"], "sequence": i, "median_abs": m}
                                  for b in blocks for i, m in enumerate(b["median_abs"])])
        s = last(cli, "scan_summary")
        t["spike_tokens"] = (["sequence", "position"], s["spike_tokens"])
        t["spike_channels"] = (["channel"], [{"channel": c} for c in s["spike_channels"]])
        t["spike_entries"] = (None, [{"rank": i, **e} for i, e in enumerate(s["spike_entries"])])
        t["step_blocks"] = (["kind", "block", "layer", "sublayer"],
                            [{"kind": "step_up", **blockref(b)} for b in s["step_up_blocks"]] +
                            [{"kind": "step_down", **blockref(b)} for b in s["step_down_blocks"]])
        t["summary"] = (None, [{"peak_abs": s["peak_abs"], "spike_mean_over_sequences":
                                s["spike_mean_over_sequences"],
                                **blockref(s["peak_block"], "peak_block."),
                                **{f"thresholds.{k}": v for k, v in s["thresholds"].items()}}])
        if "attributions" in s:
            t["attributions"] = (None, [{"rank": i, "block": j + 1, "contribution": c, "share": sh,
                                         "channel": a["channel"]}
                                        for i, a in enumerate(s["attributions"])
                                        for j, (c, sh) in enumerate(zip(a["contributions"], a["shares"]))])
    elif job_type == "sinks":
        layers = records(cli, "sink_layer")
        heads = [h for l in layers for h in l["heads"]]
        t["heads"] = (list(scalars(heads[0])), heads)
        t["layers"] = (list(scalars(layers[0])), [scalars(l) for l in layers])
        s = last(cli, "sink_summary")
        t["sink_heads"] = (["layer", "head"], s.get("sink_heads", []))
        t["summary"] = (None, [{**scalars(s), **{f"params.{k}": v for k, v in s["params"].items()}}])
    elif job_type == "first_token_probe":
        r = last(cli, "first_token_probe")
        h = r["first_spike_block_histogram"]
        t["histogram"] = (["block", "layer", "sublayer", "first_spike_block_histogram"],
                          [{"block": b, "first_spike_block_histogram": n} for b, n in enumerate(h) if b])
        t["exceptions"] = (["kind", "token_id"],
                           [{"kind": k, "token_id": v} for k in ("not_spiking_at_first", "spiking_in_control")
                            for v in r[k]])
        t["summary"] = (list(scalars(r)), [scalars(r)])
    elif job_type == "spike_similarity":
        s = last(cli, "spike_similarity")
        t["spike_tokens"] = (["index", "sequence", "position", "token_id"],
                             [{"index": i, **x, "token_id": s["token_ids"][i]}
                              for i, x in enumerate(s["spike_tokens"])])
        mats = [m for m in ("before", "after", "normalized") if m in s]
        t["cosine"] = (["matrix"] + list(scalars(s[mats[0]])),
                       [{"matrix": m, **scalars(s[m])} for m in mats])
        t["pairs"] = (["matrix", "i", "j", "value"],
                      [{"matrix": m, "i": k // s[m]["n"], "j": k % s[m]["n"], "value": v}
                       for m in mats for k, v in enumerate(s[m]["values"])])
    elif job_type == "self_attention_profile":
        layers = records(cli, "self_attention_layer")
        t["groups"] = (["layer"] + list(scalars(layers[0]["groups"][0])),
                       [{"layer": l["layer"], **g} for l in layers for g in l["groups"]])
        t["heads"] = (["layer"] + list(scalars(layers[0]["heads"][0])),
                      [{"layer": l["layer"], **h} for l in layers for h in l["heads"]])
        t["per_token"] = (["layer", "sequence", "position", "value"],
                          [{"layer": l["layer"], "sequence": s, "position": p, "value": v}
                           for l in layers for s, seq in enumerate(l["per_token"])
                           for p, v in enumerate(seq["values"])])
    elif job_type == "perplexity":
        chunks = records(cli, "perplexity_chunk")
        t["chunks"] = (list(scalars(chunks[0])), chunks)
        s = last(cli, "perplexity_summary")
        t["summary"] = (None, [{**scalars(s), **{f"eval.{k}": v for k, v in s["eval"].items()}}])
    elif job_type in ("constant_substitution", "sink_ablation"):
        chunks = records(cli, "intervention_chunk")
        t["chunks"] = (list(scalars(chunks[0])), chunks)
        s = last(cli, "intervention_summary")
        kl = s["kl"]
        n_all = int(kl["n_spike"]) + int(kl["n_after_spike"]) + int(kl["n_rest"])
        t["kl"] = (["position_class", "kl", "n"],
                   [{"position_class": c, "kl": kl[c], "n": n_all if c == "all" else kl["n_" + c]}
                    for c in ("spike", "after_spike", "rest", "all")])
        t["perplexity"] = (["run", "loss", "perplexity"],
                           [{"run": "baseline", "loss": s["baseline_loss"],
                             "perplexity": s["baseline_perplexity"]},
                            {"run": "intervened", "loss": s["intervened_loss"],
                             "perplexity": s["intervened_perplexity"]}])
        he = s.get("head_effects", [])
        t["head_effects"] = (["layer", "head", "z_norm_baseline", "z_norm_intervened",
                              "distance_baseline", "distance_intervened"], he)
        t["residual_shifts"] = (["block", "layer", "sublayer", "relative_change_spike",
                                 "relative_change_rest"],
                                [{**blockref(r["block"]), **scalars(r)} for r in s.get("residual_shifts", [])])
        t["interventions"] = (None, [{"index": i, "kind": next(iter(iv))}
                                     for i, iv in enumerate(s["interventions"])])
    elif job_type == "ffn_quadratic":
        blocks = records(cli, "ffn_quadratic_block")
        t["blocks"] = (list(scalars(blocks[0])), [scalars(b) for b in blocks])
        t["norms"] = (["block", "layer", "sublayer", "channel", "frobenius_norm"],
                      [{"block": b["block"], "channel": k, "frobenius_norm": v}
                       for b in blocks for k, v in enumerate(b["frobenius_norms"])])
        t["channels"] = (None, [{"block": b["block"], **scalars(c)} for b in blocks for c in b["channels"]])
        t["eigenvalues"] = (None, [{"block": b["block"], "channel": c["channel"], "index": i, "eigenvalue": v}
                                   for b in blocks for c in b["channels"]
                                   for i, v in enumerate(c["eigenvalues"])])
    elif job_type == "silu_regime":
        blocks = records(cli, "silu_regime_block")
        t["tokens"] = (["block", "layer"] + list(scalars(blocks[0]["tokens"][0])),
                       [{"block": b["block"], "layer": b["layer"], **x} for b in blocks for x in b["tokens"]])
    elif job_type == "vo_circuit":
        layers = records(cli, "vo_circuit_layer")
        t["layers"] = (None, [scalars(l) for l in layers])
        t["alignment"] = (None, [{"layer": l["layer"], "index": i, "token_alignment": v}
                                 for l in layers for i, v in enumerate(l["token_alignment"])])
    elif job_type == "profile":
        s = last(cli, "profile_summary")
        rows = []
        for r in s["rows"]:
            if "failure" in r:
                rows.append({"model": r["model"], "ok": False, "error": r["failure"]["message"]})
            else:
                rows.append({**scalars(r), "ok": True,
                             "peak_block": r.get("peak_block", {}).get("block"),
                             "error": ""})
        t["rows"] = (None, rows)
        t["layers"] = (["model", "layer", "sink_ratio"],
                       [{"model": r["model"], "layer": s["params"]["sinks"]["layers"][i], "sink_ratio": v}
                        for r in s["rows"] for i, v in enumerate(r.get("layer_sink_ratios", []))])
    elif job_type == "activations":
        pieces = records(cli, "activation_tensor")
        keys = []
        for p in pieces:
            k = (p["hook"], p.get("sequence", 0))
            if k not in keys:
                keys.append(k)
        t["tensors"] = (None, [{"hook": h, "sequence": s} for h, s in keys])
    return t


def same(got, want) -> bool:
    import numbers
    import numpy as np
    if isinstance(want, bool) or isinstance(got, (bool, np.bool_)):
        return bool(got) == bool(want)
    if isinstance(want, str) and isinstance(got, numbers.Number):
        want = float(want.replace("Infinity", "inf"))  # int64 / NaN / Infinity as strings
    if isinstance(want, (int, float)):
        try:
            g = float(got)
        except (TypeError, ValueError):
            return False
        w = float(want)
        if math.isnan(w):
            return math.isnan(g)
        return math.isclose(g, w, rel_tol=2e-6, abs_tol=1e-9)
    return got == want


@pytest.mark.parametrize("name", list(SPECS))
def test_converters_match_cli_json(name, results, binaries, server):
    r = get_result(results, name)
    cli = cli_json(binaries, server, "get", r.job.id)
    assert cli["id"] == r.job.id and cli["state"] == "JOB_STATE_COMPLETED"
    assert len(cli["results"]) == len(r.records)
    frames = r.frames()
    want = expected_tables(SPECS[name][0], cli)
    assert want, f"no expectations for {SPECS[name][0]}"
    for table, (columns, rows) in want.items():
        assert table in frames, f"{name}: no table {table!r} (has {list(frames)})"
        df = frames[table]
        if columns is not None:
            assert list(df.columns) == columns, f"{name}.{table}: columns"
        assert len(df) == len(rows), f"{name}.{table}: {len(df)} rows, CLI {len(rows)}"
        for i, row in enumerate(rows):
            for col, v in row.items():
                assert col in df.columns, f"{name}.{table}: no column {col!r}"
                g = df.iloc[i][col]
                assert same(g, v), f"{name}.{table}[{i}].{col}: client {g!r}, CLI {v!r}"
    # The provenance table is the summary's Provenance.
    prov = [rec for rec in cli["results"] if any("provenance" in v for v in rec.values())]
    if prov:
        p = next(iter(prov[-1].values()))["provenance"]
        row = frames["provenance"].iloc[0]
        for k, v in p.items():
            assert same(row[k], v), f"{name}.provenance.{k}"


@pytest.mark.parametrize("name", ["sinks", "spike_similarity"])
def test_matrices_match_cli_json(name, results, binaries, server):
    r = get_result(results, name)
    cli = cli_json(binaries, server, "get", r.job.id)
    if name == "sinks":
        layers = records(cli, "sink_layer")
        m = r.matrix("max_importance")
        assert m.shape == (len(layers), len(layers[0]["heads"]))
        for i, l in enumerate(layers):
            for j, h in enumerate(l["heads"]):
                assert same(m[i, j], h["max_importance"])
    else:
        s = last(cli, "spike_similarity")
        for name_ in ("before", "after", "normalized"):
            m = r.matrix(name_)
            n = s[name_]["n"]
            assert m.shape == (n, n)
            for k, v in enumerate(s[name_]["values"]):
                assert same(m[k // n, k % n], v)


def test_from_cli_json_roundtrip(results, binaries, server):
    # A Result built from the CLI's JSON gives the same tables as the client's.
    import sinkscope
    r = get_result(results, "sinks")
    cli = cli_json(binaries, server, "get", r.job.id)
    r2 = sinkscope.Result.from_json(cli)
    for name, df in r.frames().items():
        assert df.equals(r2.frames()[name]), name
