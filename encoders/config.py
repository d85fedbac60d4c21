"""Architecture configs: one small JSON file per registered variant (encoders/configs/<name>.json), or
an `encoder.json` inside a checkpoint directory written by a finetune job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class TextConfig:
    kind: str = "minilm"  # "minilm": pretrained all-MiniLM-L6-v2; "tiny-bert": small random BERT (tests)
    max_length: int = 64  # tokens kept from "title. tags"
    hidden: int = 32  # tiny-bert only: hidden size
    layers: int = 2  # tiny-bert only: transformer layers
    heads: int = 2  # tiny-bert only: attention heads
    # dynamic int8: the Linear layers' weights quantized once at load, activations per batch (fbgemm/oneDNN)
    int8: bool = False
    # > 0: a batch runs sorted by token count, this many rows at a time, each group padded only to its own
    # longest text (titles vary in length, so one padded batch spends much of its work on padding)
    bucket_rows: int = 0


@dataclass(frozen=True)
class ImageConfig:
    backbone: str = "resnet18"  # see encoders.backbones: resnet*, resnet-tiny, efficientnet-lite0, open_clip:NAME
    image_size: int = 224  # square input side after resize + center crop (a fixed-size backbone overrides)
    checkpoint: str | None = None  # local backbone weights; None = the backbone's default
    # "torch": eager PyTorch; "onnxruntime": the frozen backbone exported to ONNX at first use and run by ONNX
    # Runtime (the same vectors, faster convolutions on CPU: encoders/onnx_runtime.py)
    runtime: str = "torch"


@dataclass(frozen=True)
class TagHeadConfig:
    vector_dim: int = 256  # width of the first FC layer: its output is the image vector
    tags: tuple[str, ...] = ()  # the classifier's labels, in output order
    tag_level: int = 2  # tags were cut to this level (0 = leaf)
    dropout: float = 0.2


@dataclass(frozen=True)
class DualStreamConfig:
    hidden: int = 256  # width of both streams after projection and of the fusion layers
    out_dim: int = 256  # joint and per-stream vector size
    n_frames: int = 8  # frames per item: the cover is frame 0, the rest sampled from the video
    temporal_layers: int = 2  # transformer layers over the frame sequence
    fusion_layers: int = 1  # cross-attention layers between the streams (each direction)
    heads: int = 4
    frame_features: str = "backbone"  # "backbone": pooled backbone features; or a tag-image checkpoint dir
    train_text_layers: int = 3  # pretraining updates only the top N text layers (0 = freeze the text stream)


@dataclass(frozen=True)
class EncoderConfig:
    name: str
    kind: str = "text-image"  # which encoder class builds it: text-image, image, tag-image, dual-stream
    text: TextConfig | None = field(default_factory=TextConfig)
    image: ImageConfig | None = field(default_factory=ImageConfig)
    tag_head: TagHeadConfig | None = None
    dual: DualStreamConfig | None = None
    text_weight: float = 1.0  # text-image: share of the text vector in the fused vector
    image_weight: float = 0.5  # text-image: share of the image vector; items without a cover get zeros there
    seed: int = 0  # seeds random init so every worker process builds the same weights

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        data = dict(data)
        parts = {"text": TextConfig, "image": ImageConfig, "tag_head": TagHeadConfig, "dual": DualStreamConfig}
        for key, part in parts.items():
            value = data.get(key, {} if key in ("text", "image") else None)
            if value is not None:
                known = {f.name for f in fields(part)}
                unknown = set(value) - known
                if unknown:
                    raise ValueError(f"encoder config {data.get('name')!r}: unknown {key} fields {sorted(unknown)}")
                if "tags" in value:
                    value = {**value, "tags": tuple(value["tags"])}
                value = part(**value)
            data[key] = value
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
