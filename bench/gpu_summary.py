#!/usr/bin/env python3
"""Reads the logs scripts/gpu-check wrote to DIR and prints one JSON object: per shape and
precision, emotune's and PyTorch's training step and eval forward with their ratios; the seed
recipe's seconds (emotune's own count and the Trainer's) with their ratio, and the accuracies.

    python bench/gpu_summary.py DIR
"""

import json
import os
import re
import sys


def json_lines(path):
    rows = []
    if os.path.exists(path):
        for line in open(path, encoding="utf-8", errors="replace"):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def benches(d):
    out = []
    for prec in ("f32", "bf16"):
        ours = {r["seq"]: r for r in json_lines(os.path.join(d, f"bench-{prec}.log")) if "seq" in r}
        theirs = {r["seq"]: r for r in json_lines(os.path.join(d, f"torch-{prec}.log")) if "seq" in r}
        for seq in sorted(set(ours) | set(theirs)):
            o, t = ours.get(seq, {}), theirs.get(seq, {})
            row = {"precision": prec, "batch": o.get("batch", t.get("batch")), "seq": seq}
            for key in ("train_step_s", "eval_forward_s", "one_text_p50_s"):
                row[f"emotune_{key}"], row[f"pytorch_{key}"] = o.get(key), t.get(key)
                row[f"{key}_ratio"] = ratio(o.get(key), t.get(key))
            out.append(row)
    return out


def emotune_run(path):
    """Seconds of the whole run (emotune's count) and the last epoch's accuracy, from the table."""
    if not os.path.exists(path):
        return {}
    text = open(path, encoding="utf-8", errors="replace").read()
    run = {}
    m = re.search(r"(\d+) steps in ([0-9.]+) s", text)
    if m:
        run["steps"], run["seconds"] = int(m.group(1)), float(m.group(2))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if "|" in line]
    numeric = [r for r in rows if len(r) == 6 and re.fullmatch(r"[0-9.]+", r[4])]
    if numeric:
        run["accuracy"], run["f1"] = float(numeric[-1][4]), float(numeric[-1][5])
    return run


def trainer_run(path):
    rows = json_lines(path)
    run = {}
    epochs = [r for r in rows if "accuracy" in r]
    if epochs:
        run["accuracy"], run["f1"] = epochs[-1]["accuracy"], epochs[-1]["f1"]
    total = [r for r in rows if "total_s" in r]
    if total:
        run["seconds"] = total[-1]["total_s"]
    return run


def process_seconds(d):
    """Each step's wall seconds and exit status, as scripts/gpu-check recorded them."""
    steps = {}
    path = os.path.join(d, "summary.txt")
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            m = re.fullmatch(r"(\S+) rc=(\d+) seconds=(\d+)\s*", line)
            if m:
                steps[m.group(1)] = {"rc": int(m.group(2)), "seconds": int(m.group(3))}
    return steps


def main(d):
    summary = {"gpu": open(os.path.join(d, "gpu.txt")).read().strip() if os.path.exists(os.path.join(d, "gpu.txt")) else None}
    summary["bench"] = benches(d)
    steps = process_seconds(d)
    summary["steps"] = steps
    recipes = {}
    for prec in ("f32", "bf16"):
        ours, theirs = emotune_run(os.path.join(d, f"recipe-{prec}.log")), trainer_run(os.path.join(d, f"trainer-{prec}.log"))
        wall = [steps.get(f"{who}-{prec}", {}).get("seconds") for who in ("recipe", "trainer")]
        recipes[prec] = {
            "emotune": ours,
            "trainer": theirs,
            # Each side's own count of its run (emotune: training and evaluation; the Trainer
            # script: from its start, tokenisation included), then whole processes.
            "seconds_ratio": ratio(ours.get("seconds"), theirs.get("seconds")),
            "process_seconds_ratio": ratio(*wall),
        }
    summary["seed_recipe"] = recipes
    for prec in ("f32", "bf16"):
        run = emotune_run(os.path.join(d, f"minilm-{prec}.log"))
        if run:
            summary.setdefault("minilm", {})[prec] = run
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
