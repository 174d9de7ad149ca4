#!/usr/bin/env python3
"""The seed recipe with Hugging Face Transformers' Trainer, for comparing against
`emotune train` on the same backbone and data.

    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 python bench/trainer_seed_recipe.py \
        [--model sentence-transformers/all-MiniLM-L6-v2] [--seed 42] [--out /tmp/trainer-run] \
        [--save-initial DIR]

Recipe: dair-ai/emotion (read from the Hub cache's parquet files), AdamW (0.9, 0.999, 1e-8),
weight decay 0.01 (Trainer excludes biases and LayerNorm weights), lr 2e-5 linear to 0 without
warmup, batch 64 for training and evaluation, 2 epochs, evaluation after each epoch, per-batch
dynamic padding (DataCollatorWithPadding), gradient clipping at 1.0 (the Trainer's default).
Prints one JSON line per epoch: training loss (mean over the epoch), validation loss, accuracy
and weighted F1, and a last line with the whole run's seconds. Needs torch and transformers;
pandas and pyarrow to read the Hub cache's parquet.

On a GPU (scripts/gpu-check runs it so): `--device cuda [--bf16]` (the Trainer's own device
handling and `bf16=True`), `--data-dir DIR` reads DIR/{train,validation}.txt (`text;label`
lines, as ../shared/data/emotion) where there is no Hub cache, and `--random-config CONFIG`
trains a randomly initialised model of that shape (with --model's tokenizer), to time the
recipe at a size whose pretrained weights are not at hand.
"""

import argparse
import glob
import json
import os
import time

import numpy as np
import torch
from transformers import (
    AutoConfig,
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


def weighted_f1(y, p, k):
    """scikit-learn's f1_score(average="weighted"), without scikit-learn."""
    total = 0.0
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        prec_den, rec_den = np.sum(p == c), np.sum(y == c)
        f1 = 2 * tp / (prec_den + rec_den) if prec_den + rec_den else 0.0
        total += f1 * rec_den
    return total / len(y)


def read_split(args, name):
    """(texts, label ids) of a split: plain `text;label` lines, or the Hub cache's parquet."""
    if args.data_dir:
        texts, labels = [], []
        with open(os.path.join(args.data_dir, f"{name}.txt"), encoding="utf-8") as f:
            for line in f:
                text, label = line.rstrip("\n").rsplit(";", 1)
                texts.append(text)
                labels.append(LABELS.index(label))
        return texts, np.array(labels)
    import pandas as pd

    df = pd.read_parquet(split_file(name))
    return list(df["text"]), df["label"].to_numpy()


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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="the Trainer's bf16=True (autocast)")
    ap.add_argument("--data-dir", help="read DIR/{train,validation}.txt (text;label) instead of the Hub cache")
    ap.add_argument("--random-config", help="a config.json: train a randomly initialised model of that shape")
    ap.add_argument("--save-initial", metavar="DIR",
                    help="save the model as initialised (head included) to DIR before training, for "
                         "`emotune train --model DIR` from the same weights")
    args = ap.parse_args()
    started = time.time()

    tok = AutoTokenizer.from_pretrained(args.model)
    enc = lambda texts: tok(texts, truncation=True)  # noqa: E731  (padding per batch)
    train_texts, train_labels = read_split(args, "train")
    val_texts, val_labels = read_split(args, "validation")
    train_ds = Dataset(enc(train_texts), train_labels)
    val_ds = Dataset(enc(val_texts), val_labels)

    names = dict(num_labels=6, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    if args.random_config:
        torch.manual_seed(args.seed)
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(args.random_config, **names))
    else:
        # float32 whatever the checkpoint stores (an f16 copy is what fits on the GPU machine).
        model = AutoModelForSequenceClassification.from_pretrained(args.model, dtype=torch.float32, **names)

    if args.save_initial:
        model.save_pretrained(args.save_initial)
        tok.save_pretrained(args.save_initial)

    def metrics(pred):
        y = pred.label_ids
        p = pred.predictions.argmax(-1)
        return {"accuracy": float(np.mean(p == y)), "f1": weighted_f1(y, p, len(LABELS))}

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
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
    )
    cb = EpochLog()
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics, callbacks=[cb])
    trainer.train()
    print(json.dumps({"device": args.device, "bf16": args.bf16, "total_s": round(time.time() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
