"""Every way of getting image weights: packaged EfficientNet-Lite0, torchvision and open_clip local files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrecall.encoders import ContentInput, create_encoder, encoder_version
from mmrecall.encoders.backbones import build_backbone, efficientnet_lite0_file


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights() -> None:
    backbone = build_backbone("efficientnet-lite0")
    packaged = torch.load(efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    assert backbone.dim == 1280 and backbone.mean == (0.5, 0.5, 0.5)
    # the stem convolution is the package's, not a random init
    assert torch.equal(backbone.module.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(backbone.module.bn2.running_var, packaged["_bn1.running_var"])


def test_efficientnet_features_separate_different_images() -> None:
    encoder = create_encoder("image-effnet")
    stripes = Image.new("RGB", (224, 224), "white")
    for x in range(0, 224, 16):
        stripes.paste((0, 0, 0), (x, 0, x + 8, 224))
    items = [
        ContentInput(image=stripes),
        ContentInput(image=stripes.rotate(90)),
        ContentInput(image=Image.new("RGB", (224, 224), (250, 120, 0))),
    ]
    v = encoder.encode(items)
    assert v[0] @ v[1] > v[0] @ v[2]  # stripes resemble stripes more than a flat orange square


def test_open_clip_local_checkpoint(tmp_path: Path) -> None:
    import open_clip

    from mmrecall.encoders.backbones import OPEN_CLIP_CONFIGS

    open_clip.add_model_config(OPEN_CLIP_CONFIGS / "tiny-clip.json")
    torch.manual_seed(7)
    model = open_clip.create_model("tiny-clip")
    path = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    loaded = build_backbone("open_clip:tiny-clip", path)
    for key, value in model.visual.state_dict().items():
        assert torch.equal(loaded.module.visual.state_dict()[key], value)
    assert loaded.image_size == 32
    loaded.module.eval()
    assert loaded.module(torch.zeros(1, 3, 32, 32)).shape == (1, loaded.dim)


def test_unknown_backbone_fails_loudly() -> None:
    with pytest.raises(ValueError, match="unknown image backbone"):
        build_backbone("vgg-imaginary")


def test_checkpoint_directory_roundtrip(tmp_path: Path) -> None:
    encoder = create_encoder("tiny-tag-image")
    with torch.no_grad():
        encoder.head.fc1.weight.mul_(-1)  # something a training run would change
    directory = encoder.save(tmp_path / "ckpt")
    loaded = create_encoder(str(directory))
    assert (
        loaded.version == encoder_version(str(directory)) and loaded.version != create_encoder("tiny-tag-image").version
    )
    items = [ContentInput(image=Image.new("RGB", (40, 40), "red")), ContentInput(title="no cover")]
    v = loaded.encode(items)
    assert np.allclose(v, encoder.encode(items), atol=1e-6)
    assert np.allclose(np.linalg.norm(v[0]), 1) and not v[1].any()  # no cover: a zero row


def _cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b).min())


def test_onnxruntime_runs_the_weights_the_backbone_holds_now() -> None:
    """The ONNX Runtime path gives the eager features, and after new weights are loaded into the backbone
    (a checkpoint after build, or training) it runs those, not the ones it exported first."""
    from mmrecall.encoders.config import ImageConfig
    from mmrecall.encoders.image import ImageStack

    eager = ImageStack(ImageConfig(backbone="resnet-tiny", image_size=64))
    onnx = ImageStack(ImageConfig(backbone="resnet-tiny", image_size=64, runtime="onnxruntime"))
    onnx.backbone.module.load_state_dict(eager.backbone.module.state_dict())
    pixels = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        assert _cosine_min(onnx.features(pixels), eager.features(pixels)) > 0.9999
        changed = {k: v * 1.5 if v.is_floating_point() else v for k, v in eager.backbone.module.state_dict().items()}
        before = onnx.features(pixels)
        onnx.backbone.module.load_state_dict(changed)
        eager.backbone.module.load_state_dict(changed)
        after = onnx.features(pixels)
        assert _cosine_min(after, eager.features(pixels)) > 0.9999
        assert not torch.allclose(before, after, atol=1e-3)
    with pytest.raises(ValueError, match="unknown image runtime 'tensorrt'"):
        ImageStack(ImageConfig(backbone="resnet-tiny", runtime="tensorrt"))


def test_registered_effnet_runs_on_onnxruntime_with_the_eager_vectors() -> None:
    """image-effnet as registered serves through ONNX Runtime; its vectors are eager PyTorch's."""
    encoder = create_encoder("image-effnet")
    assert encoder.image.onnx is not None
    covers = [Image.new("RGB", (300, 200), color) for color in ("red", (20, 160, 40), (240, 240, 10))]
    pixels = encoder.image.to_tensor(covers)
    with torch.no_grad():
        served = encoder.image.features(pixels)
        eager = encoder.image.backbone.module(pixels)
    assert _cosine_min(served, eager) > 0.9999
