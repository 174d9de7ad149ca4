"""Ray Data with emotune on a local Ray runtime that the test starts (2 CPUs, loopback, no
dashboard) and shuts down: 2 actors score 3,000 rows with `emotune.scoring.EmotuneScorer`;
every input row comes back once, with the scores `emotune predict` gives it. Run by
scripts/test after `pip install .` (and `pip install ray`):

    python3 tests/python/test_ray.py
"""

import json
import os
import subprocess
import tempfile
import unittest

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from emotune.scoring import EmotuneScorer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
BIN = os.path.join(ROOT, "target", "release", "emotune")
MODEL = os.path.join(SHARED, "fixtures", "tiny-distilbert")
ROWS = 3000


class RayData(unittest.TestCase):
    def test_two_actors_score_every_row_once_as_the_cli_does(self):
        with open(os.path.join(SHARED, "data", "emotion", "train.txt"), encoding="utf-8") as f:
            texts = [line.rsplit(";", 1)[0] for line in f.read().splitlines()[:ROWS]]
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "in.parquet")
            pq.write_table(pa.table({"id": np.arange(ROWS), "text": texts}), src)
            cli_out = os.path.join(tmp, "cli.jsonl")
            subprocess.run([BIN, "predict", "--model", MODEL, "--input", src, "--output", cli_out, "-q"], check=True)
            with open(cli_out, encoding="utf-8") as f:
                want = [json.loads(line) for line in f]
            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
            try:
                # Each actor computes on one thread but asks Ray for half a CPU: with whole
                # CPUs the two actors would hold both and the read tasks would wait forever.
                # one row group is one block, and a block goes to one actor: split it for two
                ds = ray.data.read_parquet(src).repartition(8).map_batches(
                    EmotuneScorer, fn_constructor_kwargs={"model": MODEL, "num_threads": 1},
                    concurrency=2, num_cpus=0.5, batch_size=256, batch_format="pandas")
                got = ds.to_pandas()
            finally:
                ray.shutdown()
        self.assertEqual(len(got), ROWS)
        self.assertEqual(sorted(got["id"].tolist()), list(range(ROWS)), "every row once")
        got = got.sort_values("id")
        labels = list(want[0]["scores"].keys())
        for (_, row), w in zip(got.iterrows(), want):
            self.assertEqual((row["text"], row["label"]), (w["text"], w["label"]))
            for label in labels:
                self.assertAlmostEqual(float(row[label]), w["scores"][label], delta=1e-6)


if __name__ == "__main__":
    unittest.main()
