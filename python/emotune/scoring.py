"""A batch UDF for data engines (Ray Data's `map_batches`, and any engine that hands a function
batches as a pandas DataFrame or a dict of NumPy arrays): the model is loaded once per actor and
each batch gains the predicted `label`, its `score` and one float32 column per label.

    import ray
    from emotune.scoring import EmotuneScorer

    ds = ray.data.read_parquet("texts.parquet")
    ds = ds.map_batches(EmotuneScorer, fn_constructor_kwargs={"model": "my-model", "num_threads": 1},
                        concurrency=2, batch_size=256)
    ds.write_parquet("scores/")
"""

from typing import Any, Optional

import numpy as np

from ._emotune import Classifier


class EmotuneScorer:
    """Scores the text column of each batch with one `Classifier` (loaded at construction).

    model, num_threads and the other keyword arguments are `Classifier`'s; text_column names
    the column of texts; batch_size is the forward pass's (the engine's batch may be larger).
    """

    def __init__(self, model: str, text_column: str = "text", batch_size: int = 64,
                 num_threads: Optional[int] = None, **classifier: Any) -> None:
        self.classifier = Classifier(model, num_threads=num_threads, **classifier)
        self.text_column, self.batch_size = text_column, batch_size
        self.labels = self.classifier.labels

    def __call__(self, batch: Any) -> Any:
        texts = [str(t) for t in batch[self.text_column]]
        scores = self.classifier.scores(texts, batch_size=self.batch_size)
        best = scores.argmax(axis=1) if len(texts) else np.zeros(0, dtype=np.int64)
        batch["label"] = np.array([self.labels[i] for i in best], dtype=object)
        batch["score"] = scores[np.arange(len(texts)), best] if len(texts) else np.zeros(0, np.float32)
        for j, label in enumerate(self.labels):
            batch[label] = scores[:, j]
        return batch
