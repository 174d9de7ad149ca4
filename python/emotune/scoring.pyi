from typing import Any, Optional

class EmotuneScorer:
    """Scores the text column of each batch (a pandas DataFrame or a dict of NumPy arrays) with
    one Classifier, loaded once: adds `label`, `score` and a float32 column per label."""

    labels: list[str]
    def __init__(self, model: str, text_column: str = "text", batch_size: int = 64,
                 num_threads: Optional[int] = None, **classifier: Any) -> None: ...
    def __call__(self, batch: Any) -> Any: ...
