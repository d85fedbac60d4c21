"""One factory for every encoder variant: configs/<name>.json -> create_encoder(name).

Each encoder class registers the config kinds it builds (`@register_kind`, as timm registers models); the
package's `__init__` imports every such module, so the registry is complete once `mmrecall.encoders` is."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from mmrecall.encoders.base import CONFIG_FILE, WEIGHTS_FILE, Encoder, version_of, weights_digest
from mmrecall.encoders.config import EncoderConfig

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


KINDS: dict[str, type[Encoder]] = {}  # config kind -> the encoder class that builds it


def register_kind(*kinds: str):
    """Class decorator: this encoder class builds configs of these kinds."""

    def register(cls: type[Encoder]) -> type[Encoder]:
        for kind in kinds:
            if kind in KINDS:
                raise ValueError(f"encoder kind {kind!r} is registered twice ({KINDS[kind].__name__}, {cls.__name__})")
            KINDS[kind] = cls
        return cls

    return register


def create_encoder(
    name: str, *, image_checkpoint: str | Path | None = None, text_model_dir: str | Path | None = None
) -> Encoder:
    """Build a registered encoder or load a checkpoint directory; paths given here override the config's."""
    config = load_config(name)
    if config.kind not in KINDS:
        raise KeyError(f"encoder {name!r} has unknown kind {config.kind!r}; known: {sorted(KINDS)}")
    directory = checkpoint_dir(name)
    weights = directory / WEIGHTS_FILE if directory else None
    return KINDS[config.kind](config, image_checkpoint=image_checkpoint, text_model_dir=text_model_dir, weights=weights)


@lru_cache(maxsize=4)
def get_encoder(name: str, image_checkpoint: str | None = None, text_model_dir: str | None = None) -> Encoder:
    """Process-wide cached encoder: workers and the API build each variant once."""
    return create_encoder(name, image_checkpoint=image_checkpoint, text_model_dir=text_model_dir)


@lru_cache(maxsize=16)
def encoder_version(name: str, image_checkpoint: str | None = None, text_model_dir: str | None = None) -> str:
    """The version `create_encoder` would stamp, without building any model."""
    config = load_config(name)
    directory = checkpoint_dir(name)
    digest = getattr(KINDS.get(config.kind), "checkpoint_digest", None)
    if directory and digest is not None:  # e.g. G: ignores the image override, covers its feature encoders
        return version_of(config, digest(directory / WEIGHTS_FILE))
    if directory:
        return version_of(config, weights_digest(image_checkpoint, directory / WEIGHTS_FILE))
    checkpoint = image_checkpoint or (config.image.checkpoint if config.image else None)
    return version_of(config, weights_digest(checkpoint, text_model_dir))
