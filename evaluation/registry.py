"""Every channel the harness knows, by its report name: the baselines and mmrecall's own channels."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mmrecall.evaluation.channels import (
    G_VARIANTS,
    Channel,
    GChannel,
    GV2VChannel,
    ItemCFChannel,
    MFChannel,
    MultiInterestSeqChannel,
    PopularChannel,
    RandomChannel,
    SASRecChannel,
    VectorV2VChannel,
)
from mmrecall.evaluation.recall_channels import RecallSetChannel


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
        "v2v": lambda: VectorV2VChannel("v2v", lambda ctx: ctx.encoder),
        "v2v_g": GV2VChannel,
        **{name: (lambda name=name: GChannel(name, name)) for name in G_VARIANTS},
        "personal_content": lambda: GChannel("personal_content", "personal", content_items=True),
        "multi_interest_seq": MultiInterestSeqChannel,
    }
    for name in ("cluster", "multi_interest", "merged"):
        factories[name] = lambda name=name: RecallSetChannel(name)
    factories["merged_seq"] = lambda: RecallSetChannel("merged", variant="personal_seq", report_name="merged_seq")
    for name in extra:
        if name.startswith("v2v@"):
            encoder = name.split("@", 1)[1]
            factories[name] = lambda name=name, encoder=encoder: VectorV2VChannel(name, encoder)
    return factories


BASELINES = ("random", "popular", "itemcf", "mf", "sasrec", "text_v2v")
