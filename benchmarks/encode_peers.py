"""Our encoders against what a user would otherwise run on the same model, inputs and batch size:

- text: sentence-transformers' own `encode()` of all-MiniLM-L6-v2 (fp32, the same token limit) beside our
  text encoder with its speed options off, each alone, and as registered (`text-minilm`), tokenizing included;
- image: the backbone in eager PyTorch (timm's tf_efficientnet_lite0 with the packaged weights; torchvision's
  resnet18) beside ours as registered, on the same pre-processed covers.

Each row reports items/s (the best of a few interleaved rounds: the machine is shared), the ratio to the
peer and the cosine of its vectors to the peer's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from mmrecall.encoders import ContentInput, load_config
from mmrecall.encoders.image import ImageStack
from mmrecall.encoders.registry import KINDS

TEXT_ENCODER = "text-minilm"


ROUNDS = 3


def timed(encode_all: Callable[[], np.ndarray], count: int) -> tuple[np.ndarray, float]:
    """(vectors, items/s) of one call."""
    started = time.perf_counter()
    with torch.inference_mode():
        vectors = encode_all()
    return vectors, count / (time.perf_counter() - started)


def compare(runs: dict[str, Callable[[], np.ndarray]], count: int, rounds: int) -> list[dict]:
    """Each run's best items/s over `rounds` interleaved rounds (after one warm-up round), its ratio to the
    first run's (the peer), and its vectors' cosine to the peer's."""
    best, vectors = dict.fromkeys(runs, 0.0), {}
    for round_ in range(rounds + 1):
        for label, encode_all in runs.items():
            vectors[label], rate = timed(encode_all, count)
            if round_:
                best[label] = max(best[label], rate)
    peer = next(iter(runs))
    return [
        {
            "encoder": label,
            "items_per_s": best[label],
            "vs_peer": best[label] / best[peer],
            **(cosines(vectors[label], vectors[peer]) if label != peer else {}),
        }
        for label in runs
    ]


def in_batches(encode: Callable[[Sequence], np.ndarray], inputs: Sequence, batch_size: int) -> np.ndarray:
    return np.concatenate([encode(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def cosines(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean())}


def text_variants() -> dict[str, dict]:
    """Label -> TextConfig overrides of the registered text encoder."""
    rows = load_config(TEXT_ENCODER).text.bucket_rows or 16
    return {
        "ours fp32, one padded batch": {"int8": False, "bucket_rows": 0},
        f"ours fp32, length groups of {rows}": {"int8": False, "bucket_rows": rows},
        f"ours int8 (smoothed), length groups of {rows}": {"int8": True, "bucket_rows": rows},
    }


def text_rows(items: Sequence[ContentInput], batch_size: int, rounds: int = ROUNDS) -> list[dict]:
    """The peer first, then each variant (the one `text-minilm` runs is marked)."""
    from sentence_transformers import SentenceTransformer

    from mmrecall.encoders.text import minilm_dir

    base = load_config(TEXT_ENCODER)
    texts = [item.text() for item in items]
    peer = SentenceTransformer(str(minilm_dir()), device="cpu")
    peer.max_seq_length = base.text.max_length  # the same tokens in: ours keeps the first 64 of "title. tags"
    # the peer gets all texts in one call, as a user would: sentence-transformers then sorts them by length
    runs: dict[str, Callable[[], np.ndarray]] = {
        "sentence-transformers encode(), fp32": lambda: peer.encode(
            texts, batch_size=batch_size, normalize_embeddings=True
        )
    }
    for label, overrides in text_variants().items():
        config = replace(base, text=replace(base.text, **overrides))
        encoder = KINDS[config.kind](config)
        label += f" = {TEXT_ENCODER}" if config.text == base.text else ""
        runs[label] = lambda encoder=encoder: in_batches(encoder.encode, items, batch_size)
    return compare(runs, len(items), rounds)


# registered image encoder -> what a user would run instead: the same backbone and weights in eager PyTorch
IMAGE_PEERS = {"image-effnet": "timm tf_efficientnet_lite0, eager", "image-resnet18": "torchvision resnet18, eager"}


def image_rows(images: Sequence, batch_size: int, rounds: int = ROUNDS) -> list[dict]:
    """Per registered image encoder: its backbone in eager PyTorch (the peer), then ours as registered, on
    the same pre-processed pixels in the same batches (decoding and resizing are the same for both)."""
    rows = []
    for name, peer_label in IMAGE_PEERS.items():
        stack = ImageStack(load_config(name).image)
        pixels = stack.to_tensor(images)  # (n, 3, s, s)
        rows += compare(_image_runs(stack, name, peer_label, pixels, batch_size), len(pixels), rounds)
    return rows


def _image_runs(stack: ImageStack, name: str, peer_label: str, pixels: torch.Tensor, batch_size: int) -> dict:
    eager = stack.backbone.module
    ours = f"ours ({name}: {'onnxruntime' if stack.onnx is not None else 'torch'})"
    return {
        peer_label: lambda: in_batches(lambda batch: eager(batch).numpy(), pixels, batch_size),
        ours: lambda: in_batches(lambda batch: stack.features(batch).numpy(), pixels, batch_size),
    }
