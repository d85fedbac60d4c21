"""G's user side as plain arrays for the serving process (`mmrecall.recall.towers` loads them): the
pooling or sequence tower's weights, the user-bias table and, for the sequence tower, each user's active
interests. Written into the snapshot at reindex; the API never imports torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def export_seq_tower(model, active: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    tower, config = model.user_tower, model.config
    arrays = {
        "positions": tower.positions.weight,
        "gaps": tower.gaps.weight,
        "queries": tower.queries,
        "norm_w": tower.norm.weight,
        "norm_b": tower.norm.bias,
        "key_w": tower.key.weight,
        "key_b": tower.key.bias,
        "out_w": tower.out.weight,
        "out_b": tower.out.bias,
    }
    if tower.tag_query is not None:
        arrays |= {"tag_w": tower.tag_query.weight, "tag_b": tower.tag_query.bias}
    out = {k: v.detach().numpy() for k, v in arrays.items()} | encoder_layer_arrays(tower.encoder.layers)
    out |= {
        "layers": np.array(config.seq_layers),
        "heads": np.array(config.seq_heads),
        "tag_vocab": np.array(config.tag_vocab, dtype=str),
    }
    if active:
        out["active_users"] = np.array(list(active), dtype=str)
        out["active_mask"] = np.stack(list(active.values())).astype(bool)
    return out


def encoder_layer_arrays(layers) -> dict[str, np.ndarray]:
    """torch TransformerEncoderLayers (pre-LayerNorm, one ReLU feed-forward) as arrays `l{i}_*`, the names
    recall.towers.transformer_blocks reads."""
    arrays = {}
    for i, layer in enumerate(layers):
        p = f"l{i}_"
        arrays |= {
            p + "in_w": layer.self_attn.in_proj_weight,
            p + "in_b": layer.self_attn.in_proj_bias,
            p + "out_w": layer.self_attn.out_proj.weight,
            p + "out_b": layer.self_attn.out_proj.bias,
            p + "norm1_w": layer.norm1.weight,
            p + "norm1_b": layer.norm1.bias,
            p + "norm2_w": layer.norm2.weight,
            p + "norm2_b": layer.norm2.bias,
            p + "lin1_w": layer.linear1.weight,
            p + "lin1_b": layer.linear1.bias,
            p + "lin2_w": layer.linear2.weight,
            p + "lin2_b": layer.linear2.bias,
        }
    return {k: v.detach().numpy() for k, v in arrays.items()}


def export_user_tower(model, path: Path, active: dict[str, np.ndarray] | None = None) -> Path:
    """user_tower_arrays written to one .npz (what a snapshot holds; recall.towers.load_user_tower reads it)."""
    np.savez(path, **user_tower_arrays(model, active))
    return path


def user_tower_arrays(model, active: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A TwoTower's user side (torch module) as arrays for recall.towers.tower_from_arrays; `active`: user id
    -> the interests that serve them (sequence tower)."""
    tower = model.user_tower
    if model.config.user_tower == "seq":
        arrays = export_seq_tower(model, active)
        arrays |= {"hashes": np.array(model.config.hashes), "history": np.array(model.config.history)}
        if model.config.use_bias:
            arrays["user_bias"] = model.user_bias.table.weight.detach().numpy()
        return arrays
    arrays = {
        "query": tower.query.detach().numpy(),
        "key_w": tower.key.weight.detach().numpy(),
        "key_b": tower.key.bias.detach().numpy(),
        "out_w": tower.out.weight.detach().numpy(),
        "out_b": tower.out.bias.detach().numpy(),
        "recency": tower.recency.weight.detach().numpy()[:, 0],
        "hashes": np.array(model.config.hashes),
        "history": np.array(model.config.history),
    }
    if model.config.use_bias:
        arrays["user_bias"] = model.user_bias.table.weight.detach().numpy()
    return arrays
