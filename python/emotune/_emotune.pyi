"""Types of the native module (src/python.rs)."""

from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

class EmotuneError(RuntimeError):
    """An error of emotune (a missing file, a model it cannot load, ...), with the CLI's message."""

class Classifier:
    """A text-classification model (DistilBERT, BERT, RoBERTa, XLM-RoBERTa; single- or
    multi-label) loaded for inference, as `emotune predict` loads it.

    model: a model directory or a Hub id (`id@revision` for a revision).
    device: "cpu", "cuda", "cuda:N" or "auto" (a GPU when this build has CUDA and one is present).
    quantize: "int8" to run the encoder's linear layers in int8 (CPU only).
    dtype: "f32" or "bf16" (bf16 where the device has it; otherwise float32, with a warning).
    max_length: truncate texts to this many tokens (default: the model's maximum).
    num_threads: threads for this classifier's compute (default: one per core); give each Ray
        actor its share so that several on one machine do not oversubscribe the cores.
    threshold: multi-label models: one threshold for every label, in place of the saved ones.

    Compute runs with the GIL released: several Python threads may call one classifier at once.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        quantize: Optional[str] = None,
        dtype: str = "f32",
        max_length: Optional[int] = None,
        num_threads: Optional[int] = None,
        threshold: Optional[float] = None,
    ) -> None: ...
    @property
    def labels(self) -> list[str]:
        """The labels, in id order."""
    @property
    def thresholds(self) -> Optional[list[float]]:
        """A multi-label model's per-label thresholds; None for a single-label model."""
    @property
    def problem_type(self) -> str:
        """"single_label_classification" or "multi_label_classification"."""
    def predict(
        self, texts: Union[str, Sequence[str]], batch_size: int = 64, top_k: Optional[int] = None
    ) -> list[dict[str, Any]]:
        """Each text's prediction as `emotune predict` prints it: {"text", "label", "score",
        "scores": {label: probability}}, plus "labels" (multi-label) and "top" (with top_k)."""
    def scores(self, texts: Union[str, Sequence[str]], batch_size: int = 64) -> npt.NDArray[np.float32]:
        """Probabilities, shape (len(texts), len(labels)): softmax, or sigmoid per label for a
        multi-label model."""
