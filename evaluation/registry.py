"""Every channel the harness knows, by its report name: the baselines and mmrecall's own channels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mmrecall.evaluation.channels import (
    G_VARIANTS,
    Channel,
    GChannel,
    ItemCFChannel,
    MFChannel,
    MultiInterestSeqChannel,
    PopularChannel,
    RandomChannel,
    SASRecChannel,
    VectorV2VChannel,
)
from mmrecall.evaluation.recall_channels import RecallSetChannel
from mmrecall.recall.channels import CHANNELS, REGISTRY

SERVED_G = ("personal", "personal_seq")  # G's rows that are served rows, not harness ablations


def channel_factories(extra: Sequence[str] = ()) -> dict[str, Callable[[], Channel]]:
    """Every channel the harness knows, by its report name.

    `extra` may name v2v over any encoder as `v2v@ENCODER` (a registry name or a checkpoint directory),
    so one report can compare encoders side by side.
    """
    factories: dict[str, Callable[[], Channel]] = {
        "random": RandomChannel,
        "popular": PopularChannel,
        "itemcf": ItemCFChannel,
        "mf": MFChannel,
        "sasrec": SASRecChannel,
        "text_v2v": lambda: VectorV2VChannel("text_v2v", "text-minilm"),
        # ablations of G's training, scored exactly by the harness (the served rows are below)
        **{name: (lambda name=name: GChannel(name, name)) for name in G_VARIANTS if name not in SERVED_G},
        "multi_interest_seq": MultiInterestSeqChannel,
    }
    for name in (*CHANNELS, "merged"):  # served: what /v1/recall answers (evaluation.recall_channels)
        factories[name] = lambda name=name: RecallSetChannel(name)
    for name, served in REGISTRY.items():  # served when a request names them (u2i2i)
        if not served.default and not served.fallback:
            factories[name] = lambda name=name: RecallSetChannel(name)
    # the sequential channel is served when the train job trains it: its rows come from such a state
    factories["sequential"] = lambda: RecallSetChannel("sequential", tower="pool+sequential")
    factories["merged_sequential"] = lambda: RecallSetChannel(
        "merged", tower="pool+sequential", report_name="merged_sequential"
    )
    for name in ("personal", "merged"):  # served, G trained with the sequence tower
        factories[f"{name}_seq"] = lambda name=name: RecallSetChannel(name, tower="seq", report_name=f"{name}_seq")
    for name in extra:
        if name.startswith("v2v@"):
            encoder = name.split("@", 1)[1]
            factories[name] = lambda name=name, encoder=encoder: VectorV2VChannel(name, encoder)
    return factories


BASELINES = ("random", "popular", "itemcf", "mf", "sasrec", "text_v2v")
