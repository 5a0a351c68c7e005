#!/usr/bin/env python3
"""The architecture lab on one host: train every variant x seed of a recipe file with
`sinkscope-run train` (worker/engine/train.h), profile each checkpoint on the held-out
split as it is written (TrainRecipe.profile_every), and write the rows.

    python3 bench/lab/run_lab.py --recipe examples/lab/variants.json \
        --corpus ../shared/corpora/tinyshakespeare.txt --out /tmp/lab --jobs 2

Runs `--jobs` trainings at once, one intra-op thread each. Writes OUT/rows.jsonl (one
line per profiled checkpoint: variant, seed, step, training / held-out loss, and the
profile row: perplexity, sink ratio, spike, step-up / step-down blocks, ...) and
OUT/table.md (the final checkpoint's row per variant: mean and spread over seeds) and
OUT/curves.png (spike, sink ratio, perplexity against step, one line per run).
A run that exists (OUT/VARIANT-sSEED/step-N) resumes from its last checkpoint.
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def train(binary, spec, variant, seed, corpus, out, threads):
    run_dir = os.path.join(out, f"{variant}-s{seed}")
    model = dict(spec["base_model"], **spec["variants"][variant])
    cfg = os.path.join(out, f"{variant}-s{seed}.json")
    with open(cfg, "w") as f:
        json.dump({"model": model, "recipe": dict(spec["recipe"], seed=seed)}, f)
    args = [binary, "train", "--config", cfg, "--corpus", corpus, "--out", run_dir, "--json",
            "--log-every", "100", "--threads", str(threads)]
    if os.path.isdir(run_dir) and any(d.startswith("step-") for d in os.listdir(run_dir)):
        args += ["--resume", run_dir]
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{variant} seed {seed}: {p.stderr.strip()}")
    records = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    rows = []
    last_heldout = None
    for r in records:
        if "heldout_loss" in r:
            last_heldout = r["heldout_loss"]
        if "profile" in r:
            rows.append({"variant": variant, "seed": seed, "step": r["step"], "loss": r["loss"],
                         "heldout_loss": r.get("heldout_loss", last_heldout),
                         "tokens_per_s": r["tokens_per_s"], **r["profile"]})
    print(f"{variant} seed {seed}: {len(records)} records, {time.time() - t0:.0f} s, "
          f"final {rows[-1] if rows else None}", file=sys.stderr, flush=True)
    return rows


def table(rows, variants):
    final = {}
    for r in rows:
        key = (r["variant"], r["seed"])
        if key not in final or r["step"] > final[key]["step"]:
            final[key] = r

    def cell(vals, fmt):
        if len(vals) == 1:
            return fmt.format(vals[0])
        return (fmt + " ({}-{})").format(statistics.mean(vals), fmt.format(min(vals)), fmt.format(max(vals)))

    lines = ["| variant | seeds | PPL | sink ratio | spike (max abs h) | peak block | step-up blocks | sink heads | top sink key |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in variants:
        rs = [r for (var, _), r in sorted(final.items()) if var == v]
        if not rs:
            continue
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            v, len(rs), cell([r["perplexity"] for r in rs], "{:.3f}"),
            cell([100 * r["sink_ratio"] for r in rs], "{:.1f}%"),
            cell([r["spike"] for r in rs], "{:.1f}"),
            " / ".join(str(r["peak_block"]) for r in rs),
            " / ".join(str(r["step_up_blocks"]) for r in rs),
            " / ".join(f'{r["n_sink_heads"]}/{r["n_heads"]}' for r in rs),
            " / ".join(str(r["top_sink_key"]) for r in rs)))
    return "\n".join(lines) + "\n"


def curves(rows, variants, path):
    """spike, sink ratio and perplexity against step, one line per variant x seed."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {path} (build/venv/bin/python has it)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for vi, v in enumerate(variants):
        for seed in sorted({r["seed"] for r in rows if r["variant"] == v}):
            rs = sorted((r for r in rows if r["variant"] == v and r["seed"] == seed), key=lambda r: r["step"])
            steps = [r["step"] for r in rs]
            style = dict(color=colors[vi % len(colors)], ls="-" if seed == min(r["seed"] for r in rows) else "--",
                         marker="o", ms=3, label=f"{v} s{seed}")
            axes[0].plot(steps, [r["spike"] for r in rs], **style)
            axes[1].plot(steps, [100 * r["sink_ratio"] for r in rs], **style)
            axes[2].plot(steps, [r["perplexity"] for r in rs], **style)
    for ax, title in zip(axes, ["spike: max |h| over blocks (mean over chunks)", "sink ratio (%, eps 0.3, T 64)",
                                "held-out perplexity (bytes)"]):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=os.path.join(ROOT, "examples", "lab", "variants.json"))
    ap.add_argument("--corpus", required=True, help="UTF-8 text; byte-level tokens")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "worker", "engine", "sinkscope-run"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    ap.add_argument("--variants", nargs="*", help="a subset (default: all of the recipe file)")
    ap.add_argument("--steps", type=int, help="override the recipe's steps (a quick look)")
    ap.add_argument("--report", action="store_true", help="only redraw table.md / curves.png from OUT/rows.jsonl")
    a = ap.parse_args()
    spec = json.load(open(a.recipe))
    if a.steps:
        spec["recipe"]["steps"] = a.steps
        spec["recipe"]["warmup_steps"] = min(spec["recipe"]["warmup_steps"], a.steps)
        spec["recipe"]["checkpoint_every"] = min(spec["recipe"]["checkpoint_every"], a.steps)
        spec["recipe"]["eval_every"] = min(spec["recipe"]["eval_every"], a.steps)
    variants = a.variants or list(spec["variants"])
    os.makedirs(a.out, exist_ok=True)
    if a.report:
        rows = [json.loads(line) for line in open(os.path.join(a.out, "rows.jsonl"))]
        variants = [v for v in variants if any(r["variant"] == v for r in rows)]
        with open(os.path.join(a.out, "table.md"), "w") as f:
            f.write(table(rows, variants))
        curves(rows, variants, os.path.join(a.out, "curves.png"))
        print(table(rows, variants))
        return
    jobs = [(v, s) for s in spec["seeds"] for v in variants]
    rows = []
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(train, a.bin, spec, v, s, a.corpus, a.out, a.threads) for v, s in jobs]
        for f in concurrent.futures.as_completed(futures):
            rows += f.result()
            with open(os.path.join(a.out, "rows.jsonl"), "w") as out:
                for r in sorted(rows, key=lambda r: (r["variant"], r["seed"], r["step"])):
                    out.write(json.dumps(r) + "\n")
    md = table(rows, variants)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(md)
    curves(rows, variants, os.path.join(a.out, "curves.png"))
    print(md)


if __name__ == "__main__":
    main()
