#!/usr/bin/env python3
"""Turns the outputs of bench/gpu/run.sh into figures.json and figures.txt.

For each bench-SHAPE.json (sinkscope-run bench): tokens/s of the plain
forward, activation scan and sink scan, scan/plain and sinks/plain (targets
1.05x and 1.3x), peak device memory per variant, and the plain forward's
fraction of the bf16 matmul rate, counting FLOPs as
  2 * n_params_without_embedding * tokens + attention 4 * L * d_model * T^2 / 2 * batch
(causal: half of the QK^T and AV products). The matmul rate is measured here
with torch (8192^3 bf16, ten products after three warm-ups) when
--measure-matmul is given and a GPU is present, else --matmul-tflops.
Also the first-token probe's wall time (probe-SHAPE.json) and the test and
step summaries (steps.jsonl, test-*.json).
"""
import argparse
import glob
import json
import os
import statistics


def measure_matmul_tflops():
    import torch

    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    s = start.elapsed_time(end) / 1000 / 10
    return 2 * n**3 / s / 1e12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--matmul-tflops", type=float, default=790.0)
    ap.add_argument("--measure-matmul", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="dry run: no matmul measurement")
    a = ap.parse_args()
    fig = {"matmul_tflops_assumed": a.matmul_tflops}
    rate = a.matmul_tflops
    if a.measure_matmul and not a.cpu:
        m = measure_matmul_tflops()
        if m:
            fig["matmul_tflops_measured"] = m
            rate = m
    lines = []
    steps = []
    if os.path.exists(os.path.join(a.out, "steps.jsonl")):
        steps = [json.loads(l) for l in open(os.path.join(a.out, "steps.jsonl")) if l.strip()]
    fig["steps"] = steps
    tests = {}
    for f in sorted(glob.glob(os.path.join(a.out, "test-*.json"))):
        try:
            j = json.load(open(f))
            tests[os.path.basename(f)[:-5]] = {"tests": j.get("tests"), "failures": j.get("failures"),
                                               "disabled": j.get("disabled")}
        except Exception as e:  # a crashed binary leaves no or partial JSON
            tests[os.path.basename(f)[:-5]] = {"error": str(e)}
    fig["engine_tests"] = tests
    for f in sorted(glob.glob(os.path.join(a.out, "bench-*.json"))):
        shape = os.path.basename(f)[len("bench-"):-5]
        try:
            j = json.loads(open(f).read().strip().splitlines()[-1])
        except Exception as e:
            fig[shape] = {"error": str(e)}
            continue
        med = {k: statistics.median(v) for k, v in j["seconds"].items()}
        T, B = j["tokens"], j["batch"]
        n_params = j["n_params"]
        summary = j["provenance"]["summary"]
        r = {"tokens": T, "batch": B, "n_params": n_params, "median_seconds": med,
             "tokens_per_s": {k: T * B / v for k, v in med.items()},
             "scan_over_plain": med.get("scan", 0) / med["plain"] if "plain" in med else None,
             "sinks_over_plain": med.get("sinks", 0) / med["plain"] if "plain" in med else None,
             "device_peak_allocated_bytes": j.get("device_peak_allocated_bytes"), "summary": summary}
        r["flops_note"] = "2 x (params - 2 x vocab x d_model) x tokens + causal attention 2 x L x d_model x T^2 x batch"
        fig[shape] = r
    for f in sorted(glob.glob(os.path.join(a.out, "probe-*.json"))):
        shape = os.path.basename(f)[len("probe-"):-5]
        try:
            j = json.loads(open(f).read().strip().splitlines()[-1])
            fig.setdefault(shape, {})["first_token_probe"] = j.get("probe")
        except Exception as e:
            fig.setdefault(shape, {})["first_token_probe"] = {"error": str(e)}
    # Matmul fraction from the checkpoint shapes in the bench outputs.
    for shape, r in list(fig.items()):
        if not isinstance(r, dict) or "median_seconds" not in r or "plain" not in r["median_seconds"]:
            continue
        dims = {"7b": (4096, 32, 32000), "1b": (2048, 22, 32000), "tiny": (64, 2, 256)}.get(shape)
        if not dims:
            continue
        d, L, V = dims
        T, B = r["tokens"], r["batch"]
        matmul_params = r["n_params"] - 2 * V * d  # embedding + unembedding (not run by the scans)
        flops = 2 * matmul_params * T * B + 2 * L * d * T * T * B
        r["plain_tflops"] = flops / r["median_seconds"]["plain"] / 1e12
        r["plain_fraction_of_matmul_rate"] = r["plain_tflops"] / rate
    fig["matmul_tflops_used"] = rate
    with open(os.path.join(a.out, "figures.json"), "w") as fo:
        json.dump(fig, fo, indent=1)
    for shape, r in fig.items():
        if isinstance(r, dict) and "median_seconds" in r:
            lines.append(f"{shape}: tokens {r['tokens']} x batch {r['batch']}, params {r['n_params']:,}")
            for k, v in r["tokens_per_s"].items():
                lines.append(f"  {k:6s} {v:12.0f} tokens/s  peak device {((r['device_peak_allocated_bytes'] or {}).get(k, 0)) / 2**30:.2f} GiB")
            lines.append(f"  scan/plain {r['scan_over_plain']:.3f} (target 1.05)  sinks/plain {r['sinks_over_plain']:.3f} (target 1.3)")
            if "plain_fraction_of_matmul_rate" in r:
                lines.append(f"  plain forward {r['plain_tflops']:.1f} TFLOP/s = {100 * r['plain_fraction_of_matmul_rate']:.1f}% of {rate:.0f}")
            if r.get("first_token_probe"):
                lines.append(f"  first-token probe: {r['first_token_probe']}")
    lines.append(f"steps: {sum(1 for s in steps if s['rc'] == 0)} of {len(steps)} passed")
    for s in steps:
        if s["rc"] != 0:
            lines.append(f"  failed: {s['step']} rc {s['rc']}")
    text = "\n".join(lines)
    with open(os.path.join(a.out, "figures.txt"), "w") as fo:
        fo.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
