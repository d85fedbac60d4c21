"""Content encoders: pure torch. Items in, float32 L2-normalized vectors out, plus the version."""

from encoders.base import ContentInput, Encoder
from encoders.registry import create_encoder, encoder_version, get_encoder, list_encoders, load_config

__all__ = [
    "ContentInput",
    "Encoder",
    "create_encoder",
    "encoder_version",
    "get_encoder",
    "list_encoders",
    "load_config",
]
