"""Plants label noise in dair-ai/emotion's training split, for the label-error evidence.

    python bench/plant_noise.py --mode uniform   --out /tmp/noise-uniform
    python bench/plant_noise.py --mode lookalike --out /tmp/noise-lookalike

Writes OUT/train.txt (the split with 10% of its labels flipped at a fixed seed), OUT/validation.txt
(the clean validation split, copied) and OUT/flips.jsonl (line, given label, planted label).
`uniform`: 10% of all rows, each moved to a uniformly drawn other label. `lookalike`: 10% of all
rows, drawn among the rows whose label has a look-alike, moved to it (joy->love, love->joy,
anger->fear, fear->anger, sadness->anger).
"""

import argparse
import json
import pathlib
import random
import shutil

LOOKALIKE = {"joy": "love", "love": "joy", "anger": "fear", "fear": "anger", "sadness": "anger"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/emotion", help="directory with train.txt and validation.txt")
    ap.add_argument("--mode", choices=["uniform", "lookalike"], required=True)
    ap.add_argument("--fraction", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data, out = pathlib.Path(args.data), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [line.rsplit(";", 1) for line in (data / "train.txt").read_text(encoding="utf-8").splitlines()]
    labels = sorted({label for _, label in rows})
    rng = random.Random(args.seed)
    count = round(args.fraction * len(rows))
    candidates = [i for i, (_, label) in enumerate(rows) if args.mode == "uniform" or label in LOOKALIKE]
    chosen = sorted(rng.sample(candidates, count))
    flips = []
    for i in chosen:
        given = rows[i][1]
        planted = rng.choice([l for l in labels if l != given]) if args.mode == "uniform" else LOOKALIKE[given]
        rows[i][1] = planted
        flips.append({"line": i + 1, "original": given, "planted": planted})
    (out / "train.txt").write_text("".join(f"{t};{l}\n" for t, l in rows), encoding="utf-8")
    shutil.copy(data / "validation.txt", out / "validation.txt")
    with open(out / "flips.jsonl", "w", encoding="utf-8") as f:
        for flip in flips:
            f.write(json.dumps(flip) + "\n")
    print(f"{out}: {len(flips)} of {len(rows)} labels flipped ({args.mode}, seed {args.seed})")


if __name__ == "__main__":
    main()
