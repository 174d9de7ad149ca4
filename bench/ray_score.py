#!/usr/bin/env python3
"""Batch scoring on Ray Data, emotune against Transformers' `pipeline`, and the plain CLI, in one
run: texts/s scoring a parquet file of texts (default: the 16,000 texts of the emotion train
split) and writing parquet.

    pip install . ray transformers torch
    python bench/ray_score.py --model DIR [--input texts.parquet] [--concurrency 2] \\
                              [--batch-size 256] [--address ADDR]

1. `emotune predict --input X --output Y` (one process, every core);
2. Ray Data with `emotune.scoring.EmotuneScorer` (`--concurrency` actors, one thread each);
3. Ray Data with a class UDF around Transformers' `pipeline("text-classification")` (the same
   actors, `torch.set_num_threads(1)`), the anchor.

Without --address, a local Ray runtime with --concurrency CPUs is started (and stopped); with
--address (`auto`, or `ray://head:10001`) the same code runs on that cluster, whose workers need
`pip install emotune` and the model at the same path (or a Hub id).
"""

import argparse
import os
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class PipelineScorer:
    """Transformers' text-classification pipeline as a Ray Data class UDF (the anchor)."""

    def __init__(self, model, threads=1, batch_size=64):
        import torch
        from transformers import pipeline
        torch.set_num_threads(threads)
        self.pipe = pipeline("text-classification", model=model, top_k=None, device=-1)
        self.batch_size = batch_size

    def __call__(self, batch):
        out = self.pipe([str(t) for t in batch["text"]], batch_size=self.batch_size, truncation=True)
        best = [max(row, key=lambda s: s["score"]) for row in out]
        batch["label"] = [b["label"] for b in best]
        batch["score"] = [b["score"] for b in best]
        for label in sorted({s["label"] for s in out[0]}) if out else []:
            batch[label] = [next(s["score"] for s in row if s["label"] == label) for row in out]
        return batch


def emotion_texts(path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    with open(os.path.join(ROOT, "..", "shared", "data", "emotion", "train.txt"), encoding="utf-8") as f:
        texts = [line.rsplit(";", 1)[0] for line in f.read().splitlines()]
    pq.write_table(pa.table({"text": texts}), path)
    return len(texts)


def on_ray(args, udf, kwargs, out_dir):
    import ray
    t0 = time.perf_counter()
    # a file of one row group is one block; blocks are the units actors take, so split it
    ds = ray.data.read_parquet(args.input).repartition(args.concurrency * 8).map_batches(
        udf, fn_constructor_kwargs=kwargs, concurrency=args.concurrency, num_cpus=args.actor_cpus,
        batch_size=args.batch_size, batch_format="pandas")
    ds.write_parquet(out_dir)
    seconds = time.perf_counter() - t0
    return seconds, ray.data.read_parquet(out_dir).count()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", help="a parquet file with a `text` column (default: the emotion train texts)")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024,
                    help="rows per Ray batch (emotune groups the texts of a batch by length)")
    ap.add_argument("--actor-cpus", type=float, default=0.5,
                    help="Ray CPUs per actor: below 1 so that the read tasks find a CPU beside the actors")
    ap.add_argument("--address", help="a Ray cluster (default: a local runtime)")
    ap.add_argument("--emotune", default=os.path.join(ROOT, "target", "release", "emotune"))
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args()
    import ray
    from emotune.scoring import EmotuneScorer

    tmp = tempfile.mkdtemp(prefix="ray-score-")
    if not args.input:
        args.input = os.path.join(tmp, "texts.parquet")
        emotion_texts(args.input)
    import pyarrow.parquet as pq
    n = pq.read_metadata(args.input).num_rows
    t0 = time.perf_counter()
    subprocess.run([args.emotune, "predict", "--model", args.model, "--input", args.input, "--output",
                    os.path.join(tmp, "cli.parquet"), "-q"], check=True)
    rows = {"emotune predict (CLI)": (time.perf_counter() - t0, pq.read_metadata(os.path.join(tmp, "cli.parquet")).num_rows)}
    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    try:
        kw = {"model": args.model, "num_threads": 1}
        rows["Ray Data + emotune"] = on_ray(args, EmotuneScorer, kw, os.path.join(tmp, "ray-emotune"))
        if not args.skip_pipeline:
            rows["Ray Data + transformers pipeline"] = on_ray(args, PipelineScorer, {"model": args.model},
                                                              os.path.join(tmp, "ray-pipeline"))
    finally:
        ray.shutdown()
    print(f"{n} texts from {args.input}; {args.concurrency} actors x 1 thread, batches of {args.batch_size}")
    print(f"{'':34} {'seconds':>8} {'rows out':>9} {'texts/s':>8}")
    for name, (s, out) in rows.items():
        print(f"{name:34} {s:8.1f} {out:9d} {n / s:8.1f}")
    cli, ours = rows["emotune predict (CLI)"][0], rows["Ray Data + emotune"][0]
    print(f"Ray's overhead over the CLI: {ours / cli - 1:+.1%}")
    if "Ray Data + transformers pipeline" in rows:
        print(f"emotune on Ray against the pipeline on Ray: {rows['Ray Data + transformers pipeline'][0] / ours:.2f}x as fast")


if __name__ == "__main__":
    main()
