#!/usr/bin/env python3
"""Multi-label GoEmotions with Hugging Face Transformers' Trainer, the anchor for
`emotune train --dataset google-research-datasets/go_emotions` on the same backbone.

    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 python bench/trainer_goemotions.py \
        [--model sentence-transformers/all-MiniLM-L6-v2] [--lr 2e-5] [--epochs 2] [--seed 42]

Data: the `simplified` config from the Hub cache's parquet files (28 labels, a list of label ids
per comment). Model: `problem_type="multi_label_classification"` (sigmoid outputs,
BCEWithLogitsLoss over every label, float multi-hot targets). Recipe: the Trainer's defaults as
emotune's (AdamW 0.9/0.999/1e-8, weight decay 0.01 except biases and LayerNorm, linear decay
without warmup unless --warmup-ratio, batch 64, clipping at 1.0, per-batch padding), evaluation
after each epoch. Prints one JSON line per epoch (validation loss, micro and macro F1 at 0.5),
then the validation and test macro F1 at 0.5 and with per-label thresholds tuned on validation
(each label's F1-best of 0.05, 0.10, ..., 0.95, ties to the one nearest 0.5, as emotune tunes).
Needs torch, transformers, pandas, pyarrow and scikit-learn.
"""

import argparse
import glob
import json
import os
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


def split_file(name):
    home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    pattern = os.path.join(home, "hub", "datasets--google-research-datasets--go_emotions", "snapshots", "*",
                           "simplified", f"{name}-*.parquet")
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(f"no cached parquet for split {name!r} under {home} (pattern {pattern})")
    return files[0]


def label_names():
    import pyarrow.parquet as pq
    meta = json.loads(pq.ParquetFile(split_file("train")).schema_arrow.metadata[b"huggingface"])
    return meta["info"]["features"]["labels"]["feature"]["names"]


class Dataset(torch.utils.data.Dataset):
    def __init__(self, enc, hot):
        self.enc, self.hot = enc, hot

    def __len__(self):
        return len(self.hot)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.hot[i]
        return item


def multi_hot(lists, k):
    hot = np.zeros((len(lists), k), dtype=np.float32)
    for i, ls in enumerate(lists):
        hot[i, list(ls)] = 1.0
    return hot


def tune(probs, gold):
    best = []
    for l in range(gold.shape[1]):
        f1, t_best = 0.0, 0.5
        for t in [i * 0.05 for i in range(1, 20)]:
            f = f1_score(gold[:, l], probs[:, l] >= t, zero_division=0)
            if f > f1 or (f == f1 and f > 0 and abs(t - 0.5) < abs(t_best - 0.5)):
                f1, t_best = f, t
        best.append(t_best)
    return np.array(best, dtype=np.float32)


class EpochLog(TrainerCallback):
    def __init__(self):
        self.losses, self.t0 = [], time.time()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])
        if logs and "eval_micro_f1" in logs:
            print(json.dumps({
                "epoch": round(state.epoch, 2), "step": state.global_step,
                "training_loss": float(np.mean(self.losses)) if self.losses else None,
                "validation_loss": logs["eval_loss"], "micro_f1": logs["eval_micro_f1"],
                "macro_f1": logs["eval_macro_f1"], "elapsed_s": round(time.time() - self.t0, 1),
            }), flush=True)
            self.losses = []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--warmup-ratio", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="/tmp/trainer-goemotions")
    args = ap.parse_args()

    names = label_names()
    k = len(names)
    tok = AutoTokenizer.from_pretrained(args.model)
    frames = {s: pd.read_parquet(split_file(s)) for s in ["train", "validation", "test"]}
    data = {s: Dataset(tok(list(df["text"]), truncation=True), multi_hot(df["labels"], k)) for s, df in frames.items()}
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=k, problem_type="multi_label_classification",
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )

    def metrics(pred):
        p = 1 / (1 + np.exp(-pred.predictions)) >= 0.5
        y = pred.label_ids.astype(bool)
        return {"micro_f1": f1_score(y, p, average="micro", zero_division=0),
                "macro_f1": f1_score(y, p, average="macro", zero_division=0)}

    targs = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, learning_rate=args.lr,
        warmup_steps=args.warmup_ratio,  # Transformers 5: a float in [0, 1) is a ratio of the steps
        per_device_train_batch_size=64, per_device_eval_batch_size=64, weight_decay=0.01, eval_strategy="epoch",
        logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True, use_cpu=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data["train"], eval_dataset=data["validation"],
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics, callbacks=[EpochLog()])
    trainer.train()

    probs = {s: 1 / (1 + np.exp(-trainer.predict(data[s]).predictions)) for s in ["validation", "test"]}
    tuned = tune(probs["validation"], data["validation"].hot.astype(bool))
    for s in ["validation", "test"]:
        y = data[s].hot.astype(bool)
        print(json.dumps({
            "split": s,
            "macro_f1_at_0.5": f1_score(y, probs[s] >= 0.5, average="macro", zero_division=0),
            "macro_f1_tuned": f1_score(y, probs[s] >= tuned, average="macro", zero_division=0),
            "micro_f1_at_0.5": f1_score(y, probs[s] >= 0.5, average="micro", zero_division=0),
            "micro_f1_tuned": f1_score(y, probs[s] >= tuned, average="micro", zero_division=0),
        }), flush=True)


if __name__ == "__main__":
    main()
