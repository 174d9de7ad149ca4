"""emotune from Python: `Classifier` loads a text-classification model (a directory or a Hub id,
through the Hugging Face cache, honouring HF_HOME, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE) as
`emotune predict` does, and answers as it prints."""

from ._emotune import Classifier, EmotuneError, __version__

__all__ = ["Classifier", "EmotuneError", "__version__"]
