"""The one encoder contract: a batch of items in, float32 (n, d) L2-normalized vectors out."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmrecall.encoders.config import EncoderConfig


@dataclass
class ContentInput:
    """What an encoder sees of an item; media already decoded (see encoders.media.load_content)."""

    title: str = ""
    tags: list[str] = field(default_factory=list)
    image: Image.Image | None = None  # the cover: frame 0
    frames: list[Image.Image] = field(default_factory=list)  # frames 1.. (sampled from the video)
    item_id: str | None = None  # only id-aware encoders (G, for its item bias) look at it

    def all_frames(self) -> list[Image.Image]:
        return ([self.image] if self.image is not None else []) + self.frames

    def text(self) -> str:
        tags = ", ".join(tag.replace("/", " ") for tag in self.tags)
        return f"{self.title}. {tags}" if tags else self.title


CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "model.pt"


def l2_normalize(matrix: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(matrix, dim=-1, eps=1e-12)


def file_digest(path: str | Path | None) -> str:
    if not path:
        return ""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def weights_digest(*paths: str | Path | None) -> str:
    """Digest of the local weight files (or model directories, by config and weights) an encoder loads."""
    parts = []
    for path in paths:
        if not path:
            continue
        if Path(path).is_dir():
            weights = next(Path(path).glob("*.safetensors"), None)
            parts.append(file_digest(Path(path) / "config.json") + file_digest(weights))
        else:
            parts.append(file_digest(path))
    return ":".join(parts)


def version_of(config: EncoderConfig, weights_digest: str = "") -> str:
    """Changes whenever the architecture or the weights do; cheap, so readers need no model."""
    payload = json.dumps(config.to_dict(), sort_keys=True) + weights_digest
    return f"{config.name}@{hashlib.sha1(payload.encode()).hexdigest()[:10]}"


class Encoder(ABC):
    """Subclasses build their modules into `self.net` in __init__ and implement `preprocess` and `forward`.

    `self.net` holds every weight the encoder uses, so a checkpoint directory (encoder.json + model.pt)
    written by `save` rebuilds it exactly.
    """

    net: torch.nn.ModuleDict

    def __init__(self, config: EncoderConfig, *, weights_digest: str = "") -> None:
        self.config = config
        self.version = version_of(config, weights_digest)

    def load_weights(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    def save(self, directory: Path) -> Path:
        """Write a checkpoint directory that `create_encoder(str(directory))` loads."""
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        return directory

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def uses_images(self) -> bool:
        """False for text-only variants: callers then skip decoding media they would throw away."""
        return self.config.image is not None

    @property
    def n_frames(self) -> int:
        """Frames per item this encoder looks at (1: the cover only)."""
        return self.config.dual.n_frames if self.config.dual is not None else 1

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def preprocess(self, items: Sequence[ContentInput]) -> dict[str, torch.Tensor]:
        """CPU-side work: tokenize, resize and normalize. Kept apart so it can overlap with forward."""

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batched model forward -> float32 (n, dim), L2-normalized."""

    @torch.inference_mode()
    def encode(self, items: Sequence[ContentInput]) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), np.float32)
        return self.forward(self.preprocess(items)).float().cpu().numpy()
