"""One factory for every encoder variant: configs/<name>.json -> create_encoder(name)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from encoders.base import Encoder, version_of, weights_digest
from encoders.config import EncoderConfig

CONFIG_DIR = Path(__file__).parent / "configs"


def list_encoders() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def load_config(name: str) -> EncoderConfig:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")
    return EncoderConfig.from_dict(json.loads(path.read_text()))


def _builders() -> dict[str, type[Encoder]]:
    from encoders.text_image import TextImageEncoder

    return {"text-image": TextImageEncoder}


def create_encoder(
    name: str, *, image_checkpoint: str | Path | None = None, text_model_dir: str | Path | None = None
) -> Encoder:
    """Build a registered encoder; checkpoint paths override the config's (runtime settings)."""
    config = load_config(name)
    builders = _builders()
    if config.kind not in builders:
        raise KeyError(f"encoder {name!r} has unknown kind {config.kind!r}; known: {sorted(builders)}")
    return builders[config.kind](config, image_checkpoint=image_checkpoint, text_model_dir=text_model_dir)


@lru_cache(maxsize=4)
def get_encoder(name: str, image_checkpoint: str | None = None, text_model_dir: str | None = None) -> Encoder:
    """Process-wide cached encoder: workers and the API build each variant once."""
    return create_encoder(name, image_checkpoint=image_checkpoint, text_model_dir=text_model_dir)


@lru_cache(maxsize=16)
def encoder_version(name: str, image_checkpoint: str | None = None, text_model_dir: str | None = None) -> str:
    """The version `create_encoder` would stamp, without building any model."""
    config = load_config(name)
    checkpoint = image_checkpoint or (config.image.checkpoint if config.image else None)
    return version_of(config, weights_digest(checkpoint, text_model_dir))
