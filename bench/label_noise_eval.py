"""Scores a label-error search against planted flips (bench/plant_noise.py).

    python bench/label_noise_eval.py --flips NOISE/flips.jsonl --report REPORT.csv
    python bench/label_noise_eval.py --flips NOISE/flips.jsonl --dynamics RUN/training_dynamics.jsonl

--report: the rows `check-data --label-errors --label-errors-out` flagged; prints precision,
recall and F1 of them against the flips. --dynamics: a plain run's AUM ranking; prints precision
and recall at k (k = the number of flips) and the same scores for the rows with a negative AUM.
Rows are matched by their line in the training file.
"""

import argparse
import csv
import json


def line_of(location):
    return int(location.rsplit(":", 1)[1])


def scores(flagged, planted):
    hit = len(flagged & planted)
    p = hit / len(flagged) if flagged else 0.0
    r = hit / len(planted) if planted else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return f"flagged {len(flagged)}, correct {hit}: precision {p:.3f}, recall {r:.3f}, F1 {f1:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flips", required=True)
    ap.add_argument("--report")
    ap.add_argument("--dynamics")
    args = ap.parse_args()
    planted = {json.loads(l)["line"] for l in open(args.flips, encoding="utf-8")}
    if args.report:
        with open(args.report, encoding="utf-8", newline="") as f:
            flagged = {line_of(r["location"]) for r in csv.DictReader(f)}
        print(f"confident learning: {scores(flagged, planted)}")
    if args.dynamics:
        rows = [json.loads(l) for l in open(args.dynamics, encoding="utf-8")]
        rows.sort(key=lambda r: r["aum"])
        k = len(planted)
        top = {line_of(r["location"]) for r in rows[:k]}
        print(f"AUM, lowest {k} (k = flips): {scores(top, planted)}")
        negative = {line_of(r["location"]) for r in rows if r["aum"] < 0}
        print(f"AUM < 0: {scores(negative, planted)}")


if __name__ == "__main__":
    main()
