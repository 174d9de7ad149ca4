#!/usr/bin/env python3
"""Integrated Gradients, Captum against emotune: Captum's `LayerIntegratedGradients` on the
model's embedding layer (`model.<base>.embeddings`), the baseline being the text with every
token that is not a special token replaced by the padding token, `n_steps` Gauss-Legendre
points (Captum's default method), attributions summed over the hidden size per token.

    # the references of the test suite (tests/explain.rs), for the tiny fixtures:
    python bench/captum_anchor.py fixtures --out tests/golden/captum_ig.json
    # a trained model: Captum against `emotune predict --explain` on the same texts
    python bench/captum_anchor.py compare --model DIR [--dtype bf16] [--emotune target/release/emotune]
    # time: one text of 24 tokens, 32 steps, Captum and `emotune bench --explain` (f32 and
    # bf16) in one run; DIR e.g. a DistilBERT-base-shaped model from `emotune bench --write-model`
    python bench/captum_anchor.py time --model DIR

Needs torch, transformers and captum (pip install captum).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
FIXTURES = ["tiny-distilbert", "tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-bert-multilabel"]


def texts(n):
    path = os.path.join(SHARED, "data", "emotion", "validation.txt")
    with open(path, encoding="utf-8") as f:
        return [line.rsplit(";", 1)[0] for line in f.read().splitlines()[:n]]


class Explainer:
    def __init__(self, model_dir, target="logit"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from captum.attr import LayerIntegratedGradients

        self.torch = torch
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.multi = self.model.config.problem_type == "multi_label_classification"
        self.target = target
        base = getattr(self.model, self.model.base_model_prefix)
        self.lig = LayerIntegratedGradients(self.forward, base.embeddings)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        logits = self.model(**kw).logits
        if self.target == "probability":
            return self.torch.sigmoid(logits) if self.multi else self.torch.softmax(logits, -1)
        return logits

    def explain(self, text, steps=32, label=None):
        torch = self.torch
        enc = self.tok(text, return_tensors="pt", truncation=True, return_special_tokens_mask=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        special = enc["special_tokens_mask"].bool()
        baseline = torch.where(special, ids, torch.full_like(ids, self.tok.pad_token_id))
        extra = (mask, enc["token_type_ids"]) if "token_type_ids" in enc else (mask,)
        with torch.no_grad():
            logits = self.model(**{k: v for k, v in enc.items() if k != "special_tokens_mask"}).logits[0]
        if label is None:
            label = int(logits.argmax())
        attr, delta = self.lig.attribute(inputs=ids, baselines=baseline, additional_forward_args=extra,
                                         target=label, n_steps=steps, method="gausslegendre",
                                         return_convergence_delta=True)
        with torch.no_grad():
            f = self.forward(torch.cat([ids, baseline]), torch.cat([mask, mask]),
                             *([torch.cat([extra[1], extra[1]])] if len(extra) > 1 else []))[:, label]
        return {"text": text, "input_ids": ids[0].tolist(), "label": label,
                "attributions": attr.sum(-1)[0].tolist(), "delta": float(delta[0]),
                "difference": float(f[0] - f[1])}


def fixtures(args):
    import torch
    torch.manual_seed(0)
    out = {"captum": __import__("captum").__version__, "torch": torch.__version__, "steps": args.steps,
           "method": "gausslegendre", "models": []}
    for name in FIXTURES:
        for target in (["logit", "probability"] if name == "tiny-bert" else ["logit"]):
            ex = Explainer(os.path.join(SHARED, "fixtures", name), target)
            cases = [ex.explain(t, args.steps) for t in texts(args.texts)]
            out["models"].append({"fixture": name, "target": target, "cases": cases})
            worst = max(abs(c["delta"]) / max(abs(c["difference"]), 1e-12) for c in cases)
            print(f"{name} ({target}): {len(cases)} texts, largest |delta| / |F(x) - F(x')| {worst:.2e}")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def compare(args):
    ex = Explainer(args.model, args.target)
    ts = texts(args.texts)
    cmd = [args.emotune, "predict", "--model", args.model, "--explain", "--explain-target", args.target,
           "--explain-steps", str(args.steps), "--dtype", args.dtype, "--format", "jsonl", *ts]
    lines = [json.loads(l) for l in subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()]
    worst_rel, worst_completeness = 0.0, 0.0
    for text, line in zip(ts, lines):
        ours = line["explanation"]
        ref = ex.explain(text, args.steps, ours["label_id"])
        a, b = [t["score"] for t in ours["tokens"]], ref["attributions"]
        assert len(a) == len(b), f"{text!r}: {len(a)} tokens against Captum's {len(b)}"
        rel = max(abs(x - y) for x, y in zip(a, b)) / max(abs(y) for y in b)
        worst_rel = max(worst_rel, rel)
        worst_completeness = max(worst_completeness, abs(ours["delta"]) / abs(ours["difference"]))
        print(f"{rel:.2e}  delta {ours['delta']:+.2e} (Captum {ref['delta']:+.2e})  {text[:60]}")
    print(f"{len(ts)} texts: largest difference from Captum, relative to the largest attribution: {worst_rel:.2e}; "
          f"largest |delta| / |F(x) - F(x')|: {worst_completeness:.2e}")


def time_both(args):
    import torch
    ours = []
    for dtype in ["f32", "bf16"]:
        cmd = [args.emotune, "bench", "--explain", "--model", args.model, "--seq", str(args.tokens),
               "--explain-steps", str(args.steps), "--latency-runs", str(args.runs), "--dtype", dtype, "--json"]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        ours += [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    text = ours[0]["text"]
    ex = Explainer(args.model)
    n = len(ex.tok(text)["input_ids"])
    assert n == args.tokens, f"{n} tokens in {text!r}"
    ex.explain(text, args.steps)
    captum = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        ex.explain(text, args.steps)
        captum.append(time.perf_counter() - t0)
    c = statistics.median(captum)
    print(f"{n} tokens, {args.steps} steps; torch {torch.__version__}, {torch.get_num_threads()} threads; {text!r}")
    print(f"Captum LayerIntegratedGradients (f32): median {c * 1e3:.1f} ms over {args.runs} runs")
    for r in ours:
        print(f"emotune ({r['dtype']}): median {r['median_s'] * 1e3:.1f} ms over {r['runs']} runs; "
              f"ratio to Captum {r['median_s'] / c:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default=os.path.join(ROOT, "tests", "golden", "captum_ig.json"))
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--target", default="logit", choices=["logit", "probability"])
    c.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                   help="emotune's (bf16: on AMX tiles, against Captum's float32)")
    t = sub.add_parser("time")
    t.add_argument("--model", required=True)
    t.add_argument("--tokens", type=int, default=24)
    t.add_argument("--runs", type=int, default=10)
    for p in (f, c, t):
        p.add_argument("--steps", type=int, default=32)
        p.add_argument("--texts", type=int, default=20)
        p.add_argument("--emotune", default=os.path.join(ROOT, "target", "release", "emotune"))
    args = ap.parse_args()
    {"fixtures": fixtures, "compare": compare, "time": time_both}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
