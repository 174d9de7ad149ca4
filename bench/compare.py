#!/usr/bin/env python3
"""emotune against PyTorch on this machine, in one run: per shape, `emotune bench --json` and
`bench/torch_bench.py` (fp32, and PyTorch's bf16 autocast with --bf16; emotune has no bf16
path yet, so its fp32 step is compared with both) one after the other, then a table of median
step times and their ratios, and of inference: one-text latency p50/p99 and texts/s at batch
1, 8 and --batch (ratios are emotune's time over PyTorch's: below 1, emotune is faster).

    python bench/compare.py [--seq 40 ...] [--steps 5] [--bf16] [--emotune target/release/emotune]

Run it on a quiet machine: both sides use every core. Needs torch and transformers for the
PyTorch side (pip install torch transformers).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_json(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "..", "shared", "fixtures", "distilbert-base-uncased.config.json"))
    ap.add_argument("--seq", type=int, action="append")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also measure PyTorch with bf16 autocast")
    ap.add_argument("--emotune", default=os.path.join(ROOT, "target", "release", "emotune"))
    ap.add_argument("--json-out", help="write every measurement here as JSON lines")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--threads", type=int, help="threads for both sides (default: each one's own)")
    args = ap.parse_args()
    seqs = args.seq or [24, 40, 64, 87]
    common = ["--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--latency-runs", str(args.latency_runs)]
    if args.threads:
        common += ["--threads", str(args.threads)]

    rows = []
    for seq in seqs:
        shape = ["--seq", str(seq)]
        r = {"seq": seq}
        r["emotune"] = run_json([args.emotune, "bench", "--config", args.config, "--json", *common, *shape])[0]
        r["pytorch"] = run_json([sys.executable, os.path.join(HERE, "torch_bench.py"), "--config", args.config, *common, *shape])[0]
        if args.bf16:
            r["pytorch-bf16"] = run_json(
                [sys.executable, os.path.join(HERE, "torch_bench.py"), "--config", args.config, "--bf16", *common, *shape]
            )[0]
        rows.append(r)
        print(f"seq {seq}: " + ", ".join(f"{k} {v['train_step_s']:.3f} s" for k, v in r.items() if k != "seq"),
              file=sys.stderr, flush=True)

    if args.json_out:
        with open(args.json_out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    cols = ["emotune", "pytorch"] + (["pytorch-bf16"] if args.bf16 else [])
    print(f"batch {args.batch}; median of {args.steps} steps after {args.warmup} warm-up; seconds per training step "
          "(forward / backward / optimiser)\n")
    print("| tokens | " + " | ".join(cols) + " | emotune / pytorch" + (" | emotune / pytorch bf16" if args.bf16 else "") + " |")
    print("|---" * (len(cols) + 2 + (1 if args.bf16 else 0)) + "|")
    for r in rows:
        cells = [f"{r[c]['train_step_s']:.3f} ({r[c]['forward_s']:.2f} / {r[c]['backward_s']:.2f} / {r[c]['optimizer_s']:.2f})"
                 for c in cols]
        ratio = r["emotune"]["train_step_s"] / r["pytorch"]["train_step_s"]
        extra = ""
        if args.bf16:
            extra = f" | {r['emotune']['train_step_s'] / r['pytorch-bf16']['train_step_s']:.2f}"
        print(f"| {r['seq']} | " + " | ".join(cells) + f" | {ratio:.2f}{extra} |")
    print("\n| tokens | emotune eval fwd s | pytorch eval fwd s | ratio | emotune peak MB | pytorch peak MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        e, p = r["emotune"], r["pytorch"]
        print(f"| {r['seq']} | {e['eval_forward_s']:.3f} | {p['eval_forward_s']:.3f} | "
              f"{e['eval_forward_s'] / p['eval_forward_s']:.2f} | {e['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} |")

    print(f"\nInference: one text ({args.latency_runs} runs, p50 / p99 ms) and texts/s per batch size")
    print("\n| tokens | emotune 1-text ms | pytorch 1-text ms | p50 ratio | batch | emotune texts/s | pytorch texts/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        e, p = r["emotune"], r["pytorch"]
        lat = (f"{e['one_text_p50_s'] * 1e3:.1f} / {e['one_text_p99_s'] * 1e3:.1f} | "
               f"{p['one_text_p50_s'] * 1e3:.1f} / {p['one_text_p99_s'] * 1e3:.1f} | "
               f"{e['one_text_p50_s'] / p['one_text_p50_s']:.2f}")
        for i, (te, tp) in enumerate(zip(e["throughput"], p["throughput"])):
            first = f"| {r['seq']} | {lat}" if i == 0 else "| | | |"
            print(f"{first} | {te['batch']} | {te['texts_per_s']:.1f} | {tp['texts_per_s']:.1f} | "
                  f"{tp['texts_per_s'] / te['texts_per_s']:.2f} |")


if __name__ == "__main__":
    main()
