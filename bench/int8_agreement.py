#!/usr/bin/env python3
"""How far `--quantize int8` moves a trained model's predictions: classifies every text of a
`text;label` file (dair-ai/emotion's plain-text split) with `emotune predict` in float32 and in
int8, and prints the share of texts on which they agree, each one's accuracy and the change.

    python bench/int8_agreement.py --model DIR [--data ../shared/data/emotion/validation.txt]
                                   [--emotune target/release/emotune]

Standard library only. Each `predict` runs in its own process, one after the other.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def predict(emotune, model, texts_file, extra):
    t0 = time.perf_counter()
    out = subprocess.run([emotune, "predict", "--model", model, "--input", texts_file, "--format", "jsonl", *extra],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line)["label"] for line in out.splitlines() if line.strip()], time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained emotune (or Transformers) model directory")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "emotion", "validation.txt"))
    ap.add_argument("--emotune", default=os.path.join(ROOT, "target", "release", "emotune"))
    args = ap.parse_args()
    texts, gold = [], []
    with open(args.data, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text, sep, label = line.rstrip("\n").rpartition(";")
            if not sep or not text:
                sys.exit(f"{args.data}:{n}: expected `text;label`")
            texts.append(text)
            gold.append(label)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write("\n".join(texts) + "\n")
        texts_file = f.name
    try:
        f32, f32_s = predict(args.emotune, args.model, texts_file, [])
        int8, int8_s = predict(args.emotune, args.model, texts_file, ["--quantize", "int8"])
    finally:
        os.unlink(texts_file)
    if not (len(f32) == len(int8) == len(gold)):
        sys.exit(f"predicted {len(f32)} / {len(int8)} labels for {len(gold)} texts")
    n = len(gold)
    agree = sum(a == b for a, b in zip(f32, int8)) / n
    acc32 = sum(a == g for a, g in zip(f32, gold)) / n
    acc8 = sum(a == g for a, g in zip(int8, gold)) / n
    print(json.dumps({"texts": n, "agreement": round(agree, 5), "accuracy_f32": round(acc32, 5),
                      "accuracy_int8": round(acc8, 5), "accuracy_change": round(acc8 - acc32, 5),
                      "predict_f32_s": round(f32_s, 2), "predict_int8_s": round(int8_s, 2)}))


if __name__ == "__main__":
    main()
