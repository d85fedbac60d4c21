"""One factory for every encoder variant: configs/<name>.json -> create_encoder(name)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from encoders.base import CONFIG_FILE, WEIGHTS_FILE, Encoder, version_of, weights_digest
from encoders.config import EncoderConfig

CONFIG_DIR = Path(__file__).parent / "configs"


def list_encoders() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def checkpoint_dir(name: str) -> Path | None:
    """A finetune job's output directory, if `name` is one (it holds encoder.json and model.pt)."""
    path = Path(name)
    return path if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file() else None


def load_config(name: str) -> EncoderConfig:
    """A registered variant by name, or the config inside a checkpoint directory."""
    directory = checkpoint_dir(name)
    path = directory / CONFIG_FILE if directory else CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())} (or a checkpoint directory)")
    return EncoderConfig.from_dict(json.loads(path.read_text()))


def _builders() -> dict[str, type[Encoder]]:
    from encoders.dual_stream import DualStreamEncoder
    from encoders.g_encoder import GEncoder
    from encoders.image_encoders import ImageEncoder
    from encoders.text_image import TextImageEncoder

    return {"text-image": TextImageEncoder, "image": ImageEncoder, "tag-image": ImageEncoder,
            "dual-stream": DualStreamEncoder, "g": GEncoder}  # fmt: skip


def create_encoder(
    name: str, *, image_checkpoint: str | Path | None = None, text_model_dir: str | Path | None = None
) -> Encoder:
    """Build a registered encoder or load a checkpoint directory; paths given here override the config's."""
    config = load_config(name)
    builders = _builders()
    if config.kind not in builders:
        raise KeyError(f"encoder {name!r} has unknown kind {config.kind!r}; known: {sorted(builders)}")
    directory = checkpoint_dir(name)
    weights = directory / WEIGHTS_FILE if directory else None
    return builders[config.kind](
        config, image_checkpoint=image_checkpoint, text_model_dir=text_model_dir, weights=weights
    )


@lru_cache(maxsize=4)
def get_encoder(name: str, image_checkpoint: str | None = None, text_model_dir: str | None = None) -> Encoder:
    """Process-wide cached encoder: workers and the API build each variant once."""
    return create_encoder(name, image_checkpoint=image_checkpoint, text_model_dir=text_model_dir)


@lru_cache(maxsize=16)
def encoder_version(name: str, image_checkpoint: str | None = None, text_model_dir: str | None = None) -> str:
    """The version `create_encoder` would stamp, without building any model."""
    config = load_config(name)
    directory = checkpoint_dir(name)
    if directory and config.kind == "g":  # G ignores the image override; its digest covers its feature encoders
        from encoders.g_encoder import g_weights_digest

        return version_of(config, g_weights_digest(directory / WEIGHTS_FILE))
    if directory:
        return version_of(config, weights_digest(image_checkpoint, directory / WEIGHTS_FILE))
    checkpoint = image_checkpoint or (config.image.checkpoint if config.image else None)
    return version_of(config, weights_digest(checkpoint, text_model_dir))
