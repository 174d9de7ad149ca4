#!/usr/bin/env python3
"""PyTorch baseline for `emotune bench`: the same model shape, batches and measurements.

Builds a randomly initialised DistilBertForSequenceClassification (or BERT) from a config file,
trains it on synthetic batches of random token ids with AdamW (weight decay 0.01 except biases
and LayerNorm, lr 2e-5) and prints, per shape, one JSON object with the keys emotune prints:
the median seconds of a training step split into forward, backward and optimiser, the eval
forward time, texts/s at batch 1, 8 and --batch-size, one-text latency p50/p99 over --latency-runs
passes and peak resident memory.

    python bench/torch_bench.py --config ../shared/fixtures/distilbert-base-uncased.config.json \
        --seq 40 [--bf16] [--steps 5 --warmup 2]

`--quantize int8` measures inference of PyTorch's own dynamic quantisation
(`torch.ao.quantization.quantize_dynamic`, every nn.Linear in qint8); training keys are null.
`--bf16` runs forward and loss under torch.autocast("cpu", dtype=torch.bfloat16), as Transformers'
Trainer does with `bf16=True`; weights, gradients and optimiser state stay float32.
Needs torch and transformers (pip install torch transformers).
"""

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def percentile(values, q):
    """Nearest rank, as emotune computes it."""
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(q / 100 * len(v)))) - 1]


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch-size", "--batch", dest="batch", type=int, default=64)
    ap.add_argument("--seq", type=int, action="append", help="tokens per row (repeatable); default 24 40 64 87")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--latency-runs", type=int, default=50, help="forward passes of one text for p50/p99")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's)")
    ap.add_argument("--skip-training", action="store_true", help="measure inference only")
    ap.add_argument("--quantize", choices=["int8"],
                    help="torch.ao.quantization.quantize_dynamic (qint8, every nn.Linear); inference only")
    args = ap.parse_args()
    seqs = args.seq or [24, 40, 64, 87]
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.config, num_labels=6)
    gen = torch.Generator().manual_seed(0)
    dev = torch.device(args.device)
    autocast = (lambda: torch.autocast(args.device, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext

    for seq in seqs:
        reset_peak_rss()
        model = AutoModelForSequenceClassification.from_config(config).to(dev)
        ids = torch.randint(1000, config.vocab_size, (args.batch, seq), generator=gen).to(dev)
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 6, (args.batch,), generator=gen).to(dev)
        train = None
        if not (args.skip_training or args.quantize):
            train = time_training(model, ids, mask, labels, args, autocast)
        model.eval()
        if args.quantize:
            # PyTorch's own dynamic int8: every nn.Linear (weights per tensor, activations per batch)
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        report = time_inference(model, ids, mask, args, autocast)
        med = lambda key: statistics.median(train[key]) if train else None  # noqa: E731
        steps = [a + b + c for a, b, c in zip(train["fwd"], train["bwd"], train["optim"])] if train else None
        print(json.dumps({
            "impl": "pytorch-int8" if args.quantize else "pytorch-bf16" if args.bf16 else "pytorch",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": args.device,
            "bf16": args.bf16,
            "batch": args.batch,
            "seq": seq,
            "quantize": args.quantize,
            "train_step_s": statistics.median(steps) if steps else None,
            "forward_s": med("fwd"),
            "backward_s": med("bwd"),
            "optimizer_s": med("optim"),
            **report,
            "peak_rss_mb": peak_rss_mb(),
            "steps": args.steps,
        }), flush=True)
        del model


def sync():
    """Waits for the GPU's queued work, so it is timed where it was issued (as emotune does)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_training(model, ids, mask, labels, args, autocast):
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-5, betas=(0.9, 0.999), eps=1e-8,
    )
    t = {"fwd": [], "bwd": [], "optim": []}
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with autocast():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.item()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            t["fwd"].append(t1 - t0)
            t["bwd"].append(t2 - t1)
            t["optim"].append(t3 - t2)
    return t


def time_inference(model, ids, mask, args, autocast):
    def timed(rows, warmup, runs):
        times = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            with autocast():
                model(input_ids=ids[:rows], attention_mask=mask[:rows]).logits.float().tolist()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return times

    with torch.inference_mode():
        eval_s = statistics.median(timed(args.batch, args.warmup, args.steps))
        one_t = timed(1, max(args.warmup, 3), args.latency_runs)
        throughput = [{"batch": b, "texts_per_s": b / statistics.median(timed(b, args.warmup, args.steps))}
                      for b in (1, 8) if b < args.batch]
    return {
        "eval_forward_s": eval_s,
        "predict_texts_per_s": args.batch / eval_s,
        "one_text_p50_s": percentile(one_t, 50),
        "one_text_p99_s": percentile(one_t, 99),
        "latency_runs": args.latency_runs,
        "throughput": throughput + [{"batch": args.batch, "texts_per_s": args.batch / eval_s}],
    }


if __name__ == "__main__":
    main()
