"""Content encoders: pure torch. Items in, float32 L2-normalized vectors out, plus the version."""

from mmrecall.encoders import dual_stream, g_encoder, image_encoders, text_image  # noqa: F401 - they register their kinds
from mmrecall.encoders.base import ContentInput, Encoder
from mmrecall.encoders.registry import create_encoder, encoder_version, get_encoder, list_encoders, load_config

__all__ = [
    "ContentInput",
    "Encoder",
    "create_encoder",
    "encoder_version",
    "get_encoder",
    "list_encoders",
    "load_config",
]
