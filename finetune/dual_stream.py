"""Pretraining the dual-stream encoder on the catalogue itself (VideoBERT-style), three tasks:

- masked-token prediction on titles (BERT's 80/10/10 masking), predicted from the fused token states;
- masked-frame modelling: one real frame per item is replaced by a mask token, and its fused state must
  pick the true frame's features out of the batch (contrastive);
- text-frame alignment: each stream's own vector, contrasted across the batch (CLIP-style).
A fourth, small term keeps the joint vector stable across the two masked views of an item.

Frame features come from the encoder's frozen image model and are computed once (cached). Only the top
`train_text_layers` text layers train. Checkpoints (encoder directories) are written every
`checkpoint_every` steps and at the end; `resume` continues from the newest one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrecall.core.dataset import load_dataset
from mmrecall.encoders import ContentInput, create_encoder
from mmrecall.encoders.base import l2_normalize
from mmrecall.encoders.dual_stream import DualStreamEncoder
from mmrecall.finetune.common import EtaLogger, Progress, frame_features, run_dir
from mmrecall.finetune.losses import InfoNCE, MaskedLMHead

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
LATEST = "latest.txt"


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, rate: float, gen: torch.Generator):
    """BERT masking: of the chosen tokens, 80% [MASK], 10% random, 10% kept. Labels -100 elsewhere."""
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    candidates = (attention_mask == 1) & ~special
    chosen = (torch.rand(input_ids.shape, generator=gen) < rate) & candidates
    # make sure every title with a real token has at least one target
    first = candidates.float().argmax(dim=1)
    rows = candidates.any(dim=1) & ~chosen.any(dim=1)
    chosen[rows, first[rows]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=gen)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_ids = torch.randint(tokenizer.vocab_size, input_ids.shape, generator=gen)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_ids[swap]
    return masked, labels


def trainable_parameters(encoder: DualStreamEncoder) -> tuple[list, list]:
    """(new layers, top text layers); the frozen image model and the lower text layers stay fixed."""
    model = encoder.model
    text_layers = list(model.text.encoder.layer)
    keep = encoder.config.dual.train_text_layers
    for parameter in model.text.parameters():
        parameter.requires_grad = False
    top = [p for layer in text_layers[len(text_layers) - keep :] for p in layer.parameters()] if keep else []
    for parameter in top:
        parameter.requires_grad = True
    text_ids = {id(p) for p in model.text.parameters()}
    new = [p for p in model.parameters() if id(p) not in text_ids]
    for parameter in encoder.frames.parameters():
        parameter.requires_grad = False
    return new, top


def pretrain_dual_stream(
    dataset: Path,
    *,
    base: str = "dual-stream-base",
    out_root: Path,
    cache: Path | None = None,
    epochs: float = 2.0,
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 3e-4,
    text_lr: float = 3e-5,
    mask_rate: float = 0.15,
    temperature: float = 0.05,
    checkpoint_every: int = 200,
    frame_share: float = 0.5,
    resume: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    on_progress: Progress | None = None,
) -> dict:
    data = load_dataset(dataset)
    start_from = _latest(resume) if resume else None
    encoder = create_encoder(str(start_from) if start_from else base)
    if not isinstance(encoder, DualStreamEncoder):
        raise ValueError(f"{base!r} is not a dual-stream encoder")
    config = encoder.config
    n_frames = config.dual.n_frames
    cache_file = None
    if cache is not None:
        source = config.dual.frame_features.replace("/", "_")
        cache_file = cache / f"frame-features-{data.fingerprint}-{config.image.backbone}-{source}-{n_frames}.npz"
    features, offsets = frame_features(
        data.items,
        encoder.frames.stack.to_tensor,
        encoder.frames,
        n_frames=n_frames,
        cache=cache_file,
        progress=progress,
    )
    texts = [ContentInput(item.title, item.tags).text() for item in data.items]  # what the encoder sees at serving
    model = encoder.model
    new_params, text_params = trainable_parameters(encoder)
    mlm_head = MaskedLMHead(config.dual.hidden, model.text.embeddings.word_embeddings)
    frame_pred = torch.nn.Linear(config.dual.hidden, config.dual.hidden)
    heads = [*mlm_head.transform.parameters(), mlm_head.bias, *frame_pred.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": new_params + heads, "lr": lr}, {"params": text_params, "lr": text_lr}], weight_decay=0.01
    )
    total = steps or max(1, int(epochs * len(data.items) / batch_size))
    out = resume if resume else run_dir(out_root, "dual-stream")
    step = 0
    if start_from is not None:
        state = torch.load(start_from / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        mlm_head.load_state_dict(state["mlm_head"])
        frame_pred.load_state_dict(state["frame_pred"])
        step = int(state["step"])
        log.info("resuming %s at step %d", start_from, step)
    contrast = InfoNCE(temperature)
    gen = torch.Generator().manual_seed(seed + step)
    rng = np.random.default_rng(seed + step)
    eta = EtaLogger("pretrain-dualstream", total, on_progress)
    history: list[dict] = []
    model.train()
    encoder.frames.eval()
    started = time.time()
    with_frames = np.flatnonzero(offsets[1:] > offsets[:-1])
    while step < total:
        idx = _sample_batch(rng, len(data.items), with_frames, batch_size, frame_share)
        batch = encoder.tokenize([texts[i] for i in idx])
        frame_feats, frame_mask = _frames(features, offsets, idx, n_frames)
        losses = _step_losses(encoder, mlm_head, frame_pred, contrast, batch, frame_feats, frame_mask, mask_rate, gen)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        step += 1
        metrics = {k: v.item() for k, v in losses.items()} | {"loss": loss.item()}
        history.append({"step": step, **metrics})
        eta(step, metrics)
        if step % checkpoint_every == 0 or step == total:
            _save(encoder, out, step, optimizer, mlm_head, frame_pred)
    model.eval()
    report = {
        "checkpoint": str(out / f"step-{step:06d}"),
        "run": str(out),
        "steps": step,
        "seconds": round(time.time() - started, 1),
        "items": len(data.items),
        "items_with_frames": int((offsets[1:] > offsets[:-1]).sum()),
        "first_losses": history[0] if history else None,
        "last_losses": _mean_tail(history),
    }
    (out / "train_report.json").write_text(json.dumps({**report, "history": history}, indent=2))
    return report


def _sample_batch(rng, n_items: int, with_frames: np.ndarray, size: int, frame_share: float) -> np.ndarray:
    """A batch where about `frame_share` of the items have frames (when the catalogue has that many),
    so the frame tasks see enough pairs even when most items have no image."""
    size = min(size, n_items)
    wanted = min(len(with_frames), int(round(size * frame_share)))
    framed = rng.choice(with_frames, size=wanted, replace=False) if wanted else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(n_items), framed, assume_unique=True)
    return np.concatenate([framed, rng.choice(rest, size=size - wanted, replace=False)])


def _frames(features: np.ndarray, offsets: np.ndarray, idx: np.ndarray, n_frames: int):
    """Padded frame features (b, f, F) and mask (b, f) of the given items."""
    width = features.shape[1]
    out = np.zeros((len(idx), n_frames, width), np.float32)
    mask = np.zeros((len(idx), n_frames), bool)
    for row, i in enumerate(idx):
        rows = features[offsets[i] : offsets[i + 1]][:n_frames]
        out[row, : len(rows)] = rows
        mask[row, : len(rows)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def _step_losses(encoder, mlm_head, frame_pred, contrast, batch, frame_feats, frame_mask, mask_rate, gen):
    model = encoder.model
    input_ids, attention = batch["input_ids"], batch["attention_mask"]
    # view A: masked title, all frames -> masked-token prediction
    masked_ids, labels = mask_tokens(input_ids, attention, encoder.tokenizer, mask_rate, gen)
    view_a = model(masked_ids, attention, frame_feats, frame_mask)
    targets = labels != -100  # (b, t)
    logits = mlm_head(view_a["fused_tokens"][targets])  # (m, vocab)
    losses = {"mlm": F.cross_entropy(logits, labels[targets])}
    # view B: whole title, one real frame masked per item that has frames -> masked-frame modelling
    has_frames = frame_mask.any(dim=1)  # (b,)
    chosen = torch.zeros_like(frame_mask)
    if has_frames.any():
        counts = frame_mask.sum(dim=1)
        pick = (torch.rand(len(counts), generator=gen) * counts.clamp(min=1)).long()  # (b,)
        rows = torch.nonzero(has_frames).squeeze(1)
        chosen[rows, pick[rows]] = True
    view_b = model(input_ids, attention, frame_feats, frame_mask, masked_frames=chosen)
    if has_frames.sum() > 1:
        predicted = l2_normalize(frame_pred(view_b["fused_frames"][:, 1:][chosen]))  # (m, h)
        true = l2_normalize(model.frame_proj(frame_feats[chosen]).detach())  # (m, h)
        losses["mfm"] = contrast(predicted, true)
        # alignment of the two streams' own vectors, from view A where every frame is real (in view B a
        # one-frame item has its only frame masked)
        losses["align"] = contrast(view_a["text"][has_frames], view_a["frame"][has_frames])
    losses["joint"] = 0.5 * contrast(view_a["joint"], view_b["joint"])
    return losses


def _save(encoder, out: Path, step: int, optimizer, mlm_head, frame_pred) -> Path:
    target = encoder.save(out / f"step-{step:06d}")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "mlm_head": mlm_head.state_dict(),
            "frame_pred": frame_pred.state_dict(),
            "step": step,
        },
        target / STATE_FILE,
    )
    (out / LATEST).write_text(target.name)
    return target


def _latest(run: Path) -> Path:
    pointer = run / LATEST
    if not pointer.is_file():
        raise ValueError(f"{run}: no checkpoint to resume from ({LATEST} missing)")
    return run / pointer.read_text().strip()


def _mean_tail(history: list[dict], n: int = 20) -> dict:
    tail = history[-n:]
    keys = {k for row in tail for k in row if k != "step"}
    return {k: float(np.mean([row[k] for row in tail if k in row])) for k in sorted(keys)}
