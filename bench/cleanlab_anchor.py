"""emotune's confident learning against cleanlab's, on the same probabilities.

    pip install cleanlab
    # the out-of-fold probabilities and the flagged rows of one emotune run:
    emotune check-data ... --label-errors --save-probabilities P.jsonl --label-errors-out R.csv
    python bench/cleanlab_anchor.py compare --probabilities P.jsonl --report R.csv
    # the golden cases tests/golden/cleanlab_issues.json (read by `cargo test label_errors`):
    python bench/cleanlab_anchor.py golden --out tests/golden/cleanlab_issues.json
    # the hand-worked example of src/label_errors/confident.rs through cleanlab:
    python bench/cleanlab_anchor.py selftest

compare: cleanlab.filter.find_label_issues (its defaults: prune_by_noise_rate, ranked by
self-confidence) on the probabilities emotune wrote, read as float32 (the values emotune used),
then the Jaccard index of the two flagged sets and whether the rankings agree.
"""

import argparse
import csv
import json

import numpy as np
from cleanlab.count import compute_confident_joint, get_confident_thresholds
from cleanlab.filter import find_label_issues


def read_probabilities(path):
    rows = [json.loads(l) for l in open(path, encoding="utf-8")]
    probs = np.array([r["probabilities"] for r in rows], dtype=np.float32).astype(np.float64)
    labels = np.array([r["label_id"] for r in rows])
    return [r["location"] for r in rows], labels, probs


def compare(args):
    locations, labels, probs = read_probabilities(args.probabilities)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by=args.rank_by)
    theirs = [locations[i] for i in ranked]
    with open(args.report, encoding="utf-8", newline="") as f:
        ours = [r["location"] for r in csv.DictReader(f)]
    a, b = set(ours), set(theirs)
    jaccard = len(a & b) / max(1, len(a | b))
    print(f"rows {len(labels)}; emotune flagged {len(a)}, cleanlab {len(b)}, both {len(a & b)}: Jaccard {jaccard:.4f}")
    print(f"same ranking: {ours == theirs}")
    if jaccard < 0.95:
        raise SystemExit("Jaccard below 0.95")


def case(rng, n, k, noise):
    """n rows of k classes: probabilities from a noisy model, labels with some flipped."""
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 2.5 * np.eye(k)[true]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = true.copy()
    flip = rng.random(n) < noise
    labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    return probs.astype(np.float32), labels


def golden(args):
    rng = np.random.default_rng(7)
    cases = []
    for n, k, noise in [(300, 3, 0.1), (800, 6, 0.2), (500, 4, 0.05)]:
        probs32, labels = case(rng, n, k, noise)
        probs = probs32.astype(np.float64)
        cases.append({
            "k": k,
            "labels": labels.tolist(),
            "probabilities": [float(v) for v in probs32.ravel()],
            "thresholds": get_confident_thresholds(labels, probs).tolist(),
            "joint": compute_confident_joint(labels, probs).tolist(),
            "issues_self_confidence": find_label_issues(labels, probs, return_indices_ranked_by="self_confidence").tolist(),
            "issues_normalized_margin": find_label_issues(labels, probs, return_indices_ranked_by="normalized_margin").tolist(),
        })
    import cleanlab
    doc = {"made_by": f"bench/cleanlab_anchor.py golden, cleanlab {cleanlab.__version__}", "cases": cases}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    print(f"{args.out}: {len(cases)} cases")


def selftest(_args):
    probs = np.array([[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.1, 0.7, 0.2], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    labels = np.array([0, 0, 0, 1, 1, 2])
    print("thresholds", get_confident_thresholds(labels, probs))
    print("confident joint", compute_confident_joint(labels, probs, calibrate=False).tolist())
    print("calibrated", compute_confident_joint(labels, probs).tolist())
    print("issues", find_label_issues(labels, probs, return_indices_ranked_by="self_confidence").tolist())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--probabilities", required=True)
    c.add_argument("--report", required=True)
    c.add_argument("--rank-by", default="self_confidence", choices=["self_confidence", "normalized_margin"])
    g = sub.add_parser("golden")
    g.add_argument("--out", default="tests/golden/cleanlab_issues.json")
    sub.add_parser("selftest")
    args = ap.parse_args()
    {"compare": compare, "golden": golden, "selftest": selftest}[args.command](args)


if __name__ == "__main__":
    main()
