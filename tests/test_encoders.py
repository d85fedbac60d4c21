import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrecall.encoders import ContentInput, create_encoder, encoder_version, list_encoders, load_config
from mmrecall.encoders.backbones import build_backbone
from mmrecall.encoders.media import MediaError, load_image
from tests.golden import GOLDEN_DIR, golden_inputs


@pytest.fixture(scope="module")
def tiny():
    return create_encoder("tiny-test")


def test_registry_lists_and_fails_loudly() -> None:
    names = list_encoders()
    assert {"tiny-test", "skeleton-base", "text-minilm"} <= set(names)
    with pytest.raises(KeyError, match="known: .*tiny-test"):
        create_encoder("no-such-encoder")


def test_contract_unit_float32_and_version(tiny) -> None:
    vectors = tiny.encode(golden_inputs())
    assert vectors.dtype == np.float32 and vectors.shape == (3, tiny.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert tiny.version == encoder_version("tiny-test") and tiny.version.startswith("tiny-test@")
    assert tiny.encode([]).shape == (0, tiny.dim)


def test_two_builds_give_identical_vectors(tiny) -> None:
    """Workers in different processes must agree: random-init parts are seeded."""
    again = create_encoder("tiny-test")
    assert np.allclose(tiny.encode(golden_inputs()), again.encode(golden_inputs()), atol=1e-6)


def test_batch_composition_does_not_change_a_vector(tiny) -> None:
    inputs = golden_inputs()
    alone = tiny.encode(inputs[:1])
    together = tiny.encode(inputs)
    assert np.allclose(alone[0], together[0], atol=1e-5)


def test_golden_vectors(tiny) -> None:
    path = GOLDEN_DIR / "tiny-test.npy"
    vectors = tiny.encode(golden_inputs())
    if os.environ.get("MMRECALL_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    expected = np.load(path)
    assert np.allclose(vectors, expected, atol=1e-4), "preprocessing or model changed: regenerate only if intended"


def test_local_image_checkpoint_is_loaded(tmp_path: Path, tiny) -> None:
    torch.manual_seed(123)
    backbone = build_backbone("resnet-tiny").module
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in backbone.state_dict().items()}}, path)
    loaded = create_encoder("tiny-test", image_checkpoint=path)
    assert loaded.version != tiny.version and loaded.version == encoder_version("tiny-test", str(path))
    for key, value in backbone.state_dict().items():
        assert torch.equal(loaded.image_model.state_dict()[key], value)
    inputs = golden_inputs()
    assert not np.allclose(loaded.encode(inputs)[0], tiny.encode(inputs)[0], atol=1e-3)


def test_checkpoint_that_does_not_fit_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, path)
    with pytest.raises((ValueError, RuntimeError)):
        create_encoder("tiny-test", image_checkpoint=path)


def test_local_text_model_directory(tmp_path: Path) -> None:
    """A Hugging Face model folder on disk replaces the packaged MiniLM."""
    from transformers import BertConfig, BertModel

    from mmrecall.encoders.text import load_tokenizer

    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    model.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    encoder = create_encoder("text-minilm", text_model_dir=tmp_path / "bert")
    assert encoder.dim == 48
    assert encoder.encode([ContentInput("hello")]).shape == (1, 48)


def test_media_errors_have_reasons(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_bytes(b"this is not an image")
    with pytest.raises(MediaError, match="unreadable|corrupt"):
        load_image(tmp_path / "text.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError):
        load_image(tmp_path / "truncated.jpg")
    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    with pytest.raises(MediaError, match="too large"):
        load_image(tmp_path / "big.png", max_pixels=1_000_000)
    assert load_image(tmp_path / "ok.jpg").mode == "RGB"


def test_the_default_encoder_has_no_random_backbone_and_covers_do_not_split_the_catalogue() -> None:
    """The default reads text alone (a fused encoder splits a catalogue where only some items have a
    cover); the homophily measure sees such a split on tiny data."""
    from mmrecall.benchmarks.homophily import cover_shares
    from mmrecall.core.settings import Settings

    default = load_config(Settings().encoder)
    assert default.image is None or default.image.checkpoint or default.image.backbone == "efficientnet-lite0"
    rng = np.random.default_rng(0)
    text = rng.normal(size=(400, 16))
    has_cover = rng.random(400) < 0.3
    blind = text / np.linalg.norm(text, axis=1, keepdims=True)
    split = np.concatenate([text, np.where(has_cover[:, None], 3.0, -3.0) * np.ones((400, 4))], axis=1)
    split /= np.linalg.norm(split, axis=1, keepdims=True)
    shares = cover_shares(blind.astype(np.float32), has_cover)
    assert abs(shares["with_cover"] - 0.3) < 0.1 and abs(shares["without_cover"] - 0.3) < 0.1
    assert cover_shares(split.astype(np.float32), has_cover) == {"with_cover": 1.0, "without_cover": 0.0}


def _variant(name: str, **text_overrides):
    from dataclasses import replace

    from mmrecall.encoders.registry import KINDS

    config = load_config(name)
    config = replace(config, text=replace(config.text, **text_overrides))
    return KINDS[config.kind](config)


TITLES = [
    "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy",
    "Heat (1995). Action, Crime, Thriller",
    "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964). Comedy, War",
    "Up (2009)",
    "The Lord of the Rings: The Fellowship of the Ring (2001). Adventure, Fantasy",
    "Jaws",
    "Three Colors: Blue (Trois couleurs: Bleu) (1993). Drama",
]


def test_length_groups_give_the_vectors_of_one_padded_batch() -> None:
    """Running a batch sorted by token count in small groups, each padded only to its own longest text,
    changes the work, not the vectors (padding is masked out of attention and pooling)."""
    items = [ContentInput(title) for title in TITLES]
    whole, grouped = _variant("tiny-test", bucket_rows=0), _variant("tiny-test", bucket_rows=2)
    mask = grouped.preprocess(items)["attention_mask"]
    assert len(set(mask.sum(1).tolist())) > 2  # the titles really differ in length
    assert np.allclose(whole.encode(items), grouped.encode(items), atol=1e-5)


def test_int8_text_encoder_stays_within_cosine_099_of_float() -> None:
    """Smoothed dynamic int8 MiniLM: every vector within cosine 0.99 of the float model's on these titles,
    and the similarities between titles (what recall ranks by) within 0.05."""
    items = [ContentInput(title) for title in TITLES]
    exact = _variant("text-minilm", int8=False, bucket_rows=0).encode(items)
    quantized = _variant("text-minilm", int8=True).encode(items)
    assert ((exact * quantized).sum(1) >= 0.99).all()
    assert np.abs(exact @ exact.T - quantized @ quantized.T).max() <= 0.05
    assert not np.array_equal(exact, quantized)  # it did run quantized
