#!/usr/bin/env python3
"""Loads a directory written by `emotune train` with Hugging Face Transformers, unchanged,
and compares its logits with `emotune predict --logits` on the same texts.

usage: check_transformers.py MODEL_DIR [EMOTUNE_BINARY]
Needs torch and transformers (e.g. `pip install torch transformers`)."""
import json
import subprocess
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

TEXTS = [
    "i feel so happy and grateful today",
    "i am furious that they cancelled the trip again",
    "i was terrified walking home alone in the dark",
    "i miss her so much it hurts",
    "i cant believe i won, what a surprise",
    "i love spending quiet evenings with you",
]


def main():
    model_dir = sys.argv[1]
    binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/emotune"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        enc = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
        hf = model(**enc).logits
    out = subprocess.run(
        [binary, "predict", "--model", model_dir, "--logits", *TEXTS],
        check=True, capture_output=True, text=True,
    ).stdout
    ours = torch.tensor([json.loads(line)["logits"] for line in out.splitlines()])
    err = (hf - ours).abs().max().item()
    labels_hf = [model.config.id2label[i] for i in hf.argmax(-1).tolist()]
    labels_ours = [json.loads(line)["label"] for line in out.splitlines()]
    print(f"{type(model).__name__} from {model_dir}: max |logit difference| = {err:.3e}")
    print("transformers:", labels_hf)
    print("emotune:     ", labels_ours)
    ok = err <= 1e-4 and labels_hf == labels_ours
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
