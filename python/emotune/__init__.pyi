from ._emotune import Classifier as Classifier, EmotuneError as EmotuneError, __version__ as __version__

__all__ = ["Classifier", "EmotuneError", "__version__"]
