"""Vector indexes over float32 numpy arrays (faiss underneath). Never imports torch or encoders."""

from mmrecall.index.ann import VectorIndex, choose_factory
from mmrecall.index.live import LiveIndex

__all__ = ["LiveIndex", "VectorIndex", "choose_factory"]
