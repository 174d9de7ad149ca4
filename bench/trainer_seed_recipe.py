#!/usr/bin/env python3
"""The seed recipe with Hugging Face Transformers' Trainer, for comparing against
`emotune train` on the same backbone and data.

    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 python bench/trainer_seed_recipe.py \
        [--model sentence-transformers/all-MiniLM-L6-v2] [--seed 42] [--out /tmp/trainer-run]

Recipe: dair-ai/emotion (read from the Hub cache's parquet files), AdamW (0.9, 0.999, 1e-8),
weight decay 0.01 (Trainer excludes biases and LayerNorm weights), lr 2e-5 linear to 0 without
warmup, batch 64 for training and evaluation, 2 epochs, evaluation after each epoch, per-batch
dynamic padding (DataCollatorWithPadding), gradient clipping at 1.0 (the Trainer's default).
Prints one JSON line per epoch: training loss (mean over the epoch), validation loss, accuracy
and weighted F1. Needs torch, transformers, pandas, pyarrow and scikit-learn.
"""

import argparse
import glob
import json
import os
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]


class Dataset(torch.utils.data.Dataset):
    def __init__(self, enc, labels):
        self.enc, self.labels = enc, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = int(self.labels[i])
        return item


def split_file(name):
    home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    pattern = os.path.join(home, "hub", "datasets--dair-ai--emotion", "snapshots", "*", "split", f"{name}-*.parquet")
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no cached parquet for split {name!r} under {home} (pattern {pattern})")
    return files[0]


class EpochLog(TrainerCallback):
    """Mean training loss over each epoch's steps, as emotune reports it."""

    def __init__(self):
        self.losses, self.rows, self.t0 = [], [], time.time()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])
        if logs and "eval_accuracy" in logs:
            row = {
                "epoch": round(state.epoch, 2),
                "step": state.global_step,
                "training_loss": float(np.mean(self.losses)) if self.losses else None,
                "validation_loss": logs["eval_loss"],
                "accuracy": logs["eval_accuracy"],
                "f1": logs["eval_f1"],
                "elapsed_s": round(time.time() - self.t0, 1),
            }
            self.losses = []
            print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--out", default="/tmp/trainer-seed-recipe")
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    train = pd.read_parquet(split_file("train"))
    val = pd.read_parquet(split_file("validation"))
    enc = lambda df: tok(list(df["text"]), truncation=True)  # noqa: E731  (padding per batch)
    train_ds = Dataset(enc(train), train["label"].to_numpy())
    val_ds = Dataset(enc(val), val["label"].to_numpy())

    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=6, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )

    def metrics(pred):
        y = pred.label_ids
        p = pred.predictions.argmax(-1)
        return {"accuracy": accuracy_score(y, p), "f1": f1_score(y, p, average="weighted")}

    targs = TrainingArguments(
        output_dir=args.out,
        num_train_epochs=args.epochs,
        learning_rate=2e-5,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=64,
        weight_decay=args.weight_decay,
        eval_strategy="epoch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=True,
    )
    cb = EpochLog()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics, callbacks=[cb])
    trainer.train()


if __name__ == "__main__":
    main()
