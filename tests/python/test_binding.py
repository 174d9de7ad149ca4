"""The Python binding (`pip install .`) against the CLI: `Classifier.predict` equals
`emotune predict` on every tiny fixture (labels identical, scores within 1e-6), `scores` is the
same numbers as a float32 array, errors arrive as exceptions with the CLI's messages, and two
Python threads may call one classifier at once. Run by scripts/test after `pip install .`:

    python3 tests/python/test_binding.py
"""

import json
import os
import subprocess
import threading
import unittest

import numpy as np

import emotune

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
BIN = os.path.join(ROOT, "target", "release", "emotune")
FIXTURES = ["tiny-distilbert", "tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-bert-multilabel"]
TEXTS = ["i feel so happy and grateful today", "im scared of the dark", "", "ok", "wow " * 20]


def cli(model, texts):
    out = subprocess.run([BIN, "predict", "--model", model, "--format", "jsonl", *texts], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def fixture(name):
    return os.path.join(SHARED, "fixtures", name)


class Binding(unittest.TestCase):
    def test_predict_equals_the_cli_on_every_fixture(self):
        texts = [t for t in TEXTS if t.strip()]
        for name in FIXTURES:
            c = emotune.Classifier(fixture(name))
            ours, theirs = c.predict(texts), cli(fixture(name), texts)
            self.assertEqual(len(ours), len(theirs))
            for a, b in zip(ours, theirs):
                self.assertEqual((a["text"], a["label"], a.get("labels")), (b["text"], b["label"], b.get("labels")), name)
                for label, p in b["scores"].items():
                    self.assertAlmostEqual(a["scores"][label], p, delta=1e-6, msg=f"{name} {label}")
            scores = c.scores(texts)
            self.assertEqual((scores.dtype, scores.shape), (np.float32, (len(texts), len(c.labels))))
            want = np.array([[b["scores"][l] for l in c.labels] for b in theirs], dtype=np.float32)
            np.testing.assert_allclose(scores, want, atol=1e-6)

    def test_the_models_facts(self):
        single, multi = emotune.Classifier(fixture("tiny-bert")), emotune.Classifier(fixture("tiny-bert-multilabel"))
        self.assertEqual(single.labels, ["sadness", "joy", "love", "anger", "fear", "surprise"])
        self.assertIsNone(single.thresholds)
        self.assertEqual(multi.problem_type, "multi_label_classification")
        self.assertEqual(len(multi.thresholds), 28)
        self.assertEqual(emotune.Classifier(fixture("tiny-bert-multilabel"), threshold=0.25).thresholds, [0.25] * 28)
        top = single.predict("i feel great", top_k=2)[0]["top"]
        self.assertEqual(len(top), 2)
        self.assertEqual(single.predict("one text")[0]["text"], "one text")

    def test_errors_are_exceptions_with_the_clis_messages(self):
        with self.assertRaisesRegex(emotune.EmotuneError, "no-such-model: no such directory"):
            emotune.Classifier("./no-such-model")
        os.environ["HF_HOME"], os.environ["HF_HUB_OFFLINE"] = os.path.join(SHARED, "hf"), "1"
        with self.assertRaisesRegex(emotune.EmotuneError, "no trained classification head"):
            emotune.Classifier("sentence-transformers/all-MiniLM-L6-v2")
        with self.assertRaisesRegex(ValueError, 'device="tpu"'):
            emotune.Classifier(fixture("tiny-bert"), device="tpu")
        with self.assertRaisesRegex(ValueError, 'quantize="int4"'):
            emotune.Classifier(fixture("tiny-bert"), quantize="int4")
        with self.assertRaisesRegex(ValueError, "num_threads must be at least 1"):
            emotune.Classifier(fixture("tiny-bert"), num_threads=0)
        c = emotune.Classifier(fixture("tiny-bert"), num_threads=1)
        with self.assertRaisesRegex(emotune.EmotuneError, "batch size must be at least 1"):
            c.predict(["a"], batch_size=0)
        with self.assertRaisesRegex(ValueError, "texts must be a str or a sequence of str"):
            c.predict([1, 2])
        with self.assertRaisesRegex(emotune.EmotuneError, "--threshold applies to multi-label models"):
            emotune.Classifier(fixture("tiny-bert"), threshold=0.5)

    def test_two_threads_at_once_get_the_right_answers(self):
        c = emotune.Classifier(fixture("tiny-distilbert"), num_threads=2)
        texts = [f"text number {i} of a thread's batch" for i in range(200)]
        want = c.scores(texts)
        got, errors = [None, None], []

        def work(i):
            try:
                got[i] = c.scores(texts)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        for g in got:
            np.testing.assert_array_equal(g, want)


if __name__ == "__main__":
    unittest.main()
