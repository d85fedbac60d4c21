"""Architecture configs, one small JSON file per registered variant (encoders/configs/<name>.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TextConfig:
    kind: str = "minilm"  # "minilm": pretrained all-MiniLM-L6-v2; "tiny-bert": small random BERT (tests)
    max_length: int = 64  # tokens kept from "title. tags"
    hidden: int = 32  # tiny-bert only: hidden size
    layers: int = 2  # tiny-bert only: transformer layers
    heads: int = 2  # tiny-bert only: attention heads


@dataclass(frozen=True)
class ImageConfig:
    arch: str = "resnet18"  # torchvision ResNet name, or "resnet-tiny" (one block per stage)
    image_size: int = 224  # square input side after resize + center crop
    checkpoint: str | None = None  # local state dict; None = seeded random init


@dataclass(frozen=True)
class EncoderConfig:
    name: str
    kind: str = "text-image"  # which encoder class builds it
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig | None = field(default_factory=ImageConfig)
    text_weight: float = 1.0  # share of the text vector in the fused vector
    image_weight: float = 0.5  # share of the image vector; items without a cover get zeros here
    seed: int = 0  # seeds random init so every worker process builds the same weights

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        data = dict(data)
        text = TextConfig(**data.pop("text", {}))
        image_data = data.pop("image", {})
        image = None if image_data is None else ImageConfig(**image_data)
        return cls(text=text, image=image, **data)

    def to_dict(self) -> dict:
        return asdict(self)
