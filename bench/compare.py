#!/usr/bin/env python3
"""emotune against PyTorch on this machine, in one run: per shape, `emotune bench --json` and
`bench/torch_bench.py` (fp32, and with --bf16 both in bf16: `emotune bench --dtype bf16` against
PyTorch's bf16 autocast) one after the other, then a table of median step times and their
ratios, and of inference: one-text latency p50/p99 and texts/s at batch 1, 8 and --batch-size
(ratios are emotune's time over PyTorch's: below 1, emotune is faster). emotune computes bf16
(training and inference) on CPUs with AMX tiles, and on AMD CPUs with AVX-512 BF16; elsewhere it
says so and runs fp32, and the tables mark it.

    python bench/compare.py [--seq 40 ...] [--steps 5] [--bf16] [--int8] [--skip-training]
                            [--emotune target/release/emotune]

`--int8` adds emotune's `--quantize int8` and PyTorch's own dynamic int8 quantisation
(`torch.ao.quantization.quantize_dynamic`) to the inference table.

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
    ap.add_argument("--batch-size", "--batch", dest="batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also measure PyTorch with bf16 autocast")
    ap.add_argument("--emotune", default=os.path.join(ROOT, "target", "release", "emotune"))
    ap.add_argument("--json-out", help="write every measurement here as JSON lines")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--threads", type=int, help="threads for both sides (default: each one's own)")
    ap.add_argument("--int8", action="store_true",
                    help="also emotune --quantize int8 against PyTorch's quantize_dynamic (inference)")
    ap.add_argument("--skip-training", action="store_true", help="inference only")
    args = ap.parse_args()
    seqs = args.seq or [24, 40, 64, 87]
    common = ["--batch-size", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--latency-runs", str(args.latency_runs)]
    if args.threads:
        common += ["--threads", str(args.threads)]

    rows = []
    if args.skip_training:
        common += ["--skip-training"]
    bench = [args.emotune, "bench", "--config", args.config, "--json"]
    torch_bench = [sys.executable, os.path.join(HERE, "torch_bench.py"), "--config", args.config]
    for seq in seqs:
        shape = ["--seq", str(seq)]
        r = {"seq": seq}
        r["emotune"] = run_json([*bench, *common, *shape])[0]
        r["pytorch"] = run_json([*torch_bench, *common, *shape])[0]
        if args.bf16:
            r["pytorch-bf16"] = run_json([*torch_bench, "--bf16", *common, *shape])[0]
            # on AMX tiles, or vdpbf16ps on AMD, where the CPU has them
            r["emotune-bf16"] = run_json([*bench, "--dtype", "bf16", *common, *shape])[0]
        if args.int8:
            r["emotune-int8"] = run_json([*bench, "--quantize", "int8", *common, *shape])[0]
            r["pytorch-int8"] = run_json([*torch_bench, "--quantize", "int8", *common, *shape])[0]
        rows.append(r)
        print(f"seq {seq}: " + ", ".join(f"{k} one text {v['one_text_p50_s'] * 1e3:.1f} ms" for k, v in r.items() if k != "seq"),
              file=sys.stderr, flush=True)

    if args.json_out:
        with open(args.json_out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"CPU (as emotune sees it): {rows[0]['emotune'].get('cpu', 'not reported')}\n")
    if not args.skip_training:
        print_training(rows, args)
    print_inference(rows, args)


def print_training(rows, args):
    cols = ["emotune", "pytorch"] + (["emotune-bf16", "pytorch-bf16"] if args.bf16 else [])
    print(f"batch {args.batch}; median of {args.steps} steps after {args.warmup} warm-up; seconds per training step "
          "(forward / backward / optimiser)\n")
    bf16_heads = " | emotune / pytorch bf16 | emotune bf16 / pytorch bf16 | emotune bf16 / emotune"
    print("| tokens | " + " | ".join(cols) + " | emotune / pytorch" + (bf16_heads if args.bf16 else "") + " |")
    print("|---" * (len(cols) + 2 + (3 if args.bf16 else 0)) + "|")
    for r in rows:
        cells = [f"{r[c]['train_step_s']:.3f} ({r[c]['forward_s']:.2f} / {r[c]['backward_s']:.2f} / {r[c]['optimizer_s']:.2f})"
                 for c in cols]
        ratio = r["emotune"]["train_step_s"] / r["pytorch"]["train_step_s"]
        extra = ""
        if args.bf16 and not r["emotune-bf16"]["bf16"]:
            print("NOTE: emotune-bf16 trained in fp32 (this CPU has no bf16 engine: AMX, or AVX-512 BF16 on AMD)")
        if args.bf16:
            e, eb, pb = (r[c]["train_step_s"] for c in ("emotune", "emotune-bf16", "pytorch-bf16"))
            extra = f" | {e / pb:.2f} | {eb / pb:.2f} | {eb / e:.2f}"
        print(f"| {r['seq']} | " + " | ".join(cells) + f" | {ratio:.2f}{extra} |")
    print()


def print_inference(rows, args):
    """Per shape and measurement, each implementation's figure and the ratios that matter
    (emotune's time over PyTorch's: below 1, emotune is faster)."""
    cols = ["emotune", "pytorch"] + (["emotune-int8", "pytorch-int8"] if args.int8 else [])
    ratios = [("emotune", "pytorch")] + ([("emotune-int8", "pytorch-int8"), ("emotune-int8", "pytorch")] if args.int8 else [])
    if args.bf16:
        cols += ["emotune-bf16", "pytorch-bf16"]
        ratios += [("emotune-bf16", "pytorch-bf16"), ("emotune-bf16", "pytorch")]
        if any(r["emotune-bf16"]["quantize"] != "bf16" for r in rows):
            print("NOTE: emotune-bf16 ran in fp32 (this CPU has no bf16 engine: AMX, or AVX-512 BF16 on AMD)\n")
    print(f"Inference: one text ({args.latency_runs} runs, ms), eval forward of {args.batch} texts (s), "
          "texts/s per batch size; ratios are emotune's time over the other's\n")
    print("| tokens | measure | " + " | ".join(cols) + " | " + " | ".join(f"{a} / {b}" for a, b in ratios) + " |")
    print("|---" * (2 + len(cols) + len(ratios)) + "|")
    for r in rows:
        measures = [("1 text p50 ms", lambda x: x["one_text_p50_s"] * 1e3, False),
                    ("1 text p99 ms", lambda x: x["one_text_p99_s"] * 1e3, False),
                    (f"eval {args.batch}×{r['seq']} s", lambda x: x["eval_forward_s"], False)]
        for i, t in enumerate(r["emotune"]["throughput"]):
            measures.append((f"texts/s at {t['batch']}", lambda x, i=i: x["throughput"][i]["texts_per_s"], True))
        for name, get, rate in measures:
            vals = {c: get(r[c]) for c in cols}
            # a rate's time ratio is the inverse of the rates' ratio
            cells = [f"{(vals[b] / vals[a]) if rate else (vals[a] / vals[b]):.2f}" for a, b in ratios]
            print(f"| {r['seq']} | {name} | " + " | ".join(f"{vals[c]:.1f}" if vals[c] >= 10 else f"{vals[c]:.3f}" for c in cols)
                  + " | " + " | ".join(cells) + " |")
    print("\nPeak MB: " + "; ".join(f"seq {r['seq']}: " + ", ".join(f"{c} {r[c]['peak_rss_mb']:.0f}" for c in cols) for r in rows))


if __name__ == "__main__":
    main()
