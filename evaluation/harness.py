"""`mmrecall eval`: dataset directory -> protocols -> channels -> metrics -> report, table and plot."""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmrecall.core.dataset import Split, category_tags, cold_items_split, leave_last_out, load_dataset
from mmrecall.core.events import EventRule
from mmrecall.core.provenance import provenance
from mmrecall.evaluation.channels import Channel, EvalContext
from mmrecall.evaluation.metrics import KS, LIST_K, MetricAccumulator
from mmrecall.evaluation.registry import BASELINES, channel_factories

log = logging.getLogger(__name__)
BATCH = 256
QUICK_USERS = 100  # users of a --quick smoke run
OPT_IN = {
    "personal_nobias",
    "personal_nologq",
    "personal_nohard",
    "personal_seq_nocate",
    "personal_seq_nomask",
    "personal_seq_k1",
    "personal_seq_nofuture",
    "personal_seq",
    "multi_interest_seq",
    "merged_seq",
    "sequential",
    "merged_sequential",
}  # when named
Progress = Callable[[str, int, int], None]


def evaluate_channel(
    channel: Channel, split: Split, ctx: EvalContext, *, reference: np.ndarray | None, exclude_history: bool
) -> dict[str, float]:
    data = ctx.data
    metrics = MetricAccumulator(data.n_items, category_tags(data), reference)
    allowed = split.allowed(data.n_items)
    for start in range(0, len(split.query_users), BATCH):
        users = split.query_users[start : start + BATCH]
        histories = split.histories[start : start + BATCH]
        extra = {}
        if channel.uses_times and split.history_times is not None:
            extra["times"] = split.history_times[start : start + BATCH]
        scores = channel.scores(users, histories, **extra).astype(np.float32, copy=False)
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        for row, history in enumerate(histories):
            if exclude_history:
                scores[row, history] = -np.inf
            metrics.add(scores[row], split.targets[start + row])
    return metrics.summary()


def tune(name: str, ctx: EvalContext, valid: Split, reference: np.ndarray | None) -> dict:
    """Pick a channel's parameters by hitRate@50 on the valid split (never on test)."""
    factory = channel_factories([name])[name]
    grid = factory().param_grid
    if not grid:
        return {}
    best, best_score = {}, -1.0
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        channel = factory()
        channel.params.update(params)
        channel.fit(ctx, valid)
        score = evaluate_channel(channel, valid, ctx, reference=None, exclude_history=True)["hitrate@50"]
        log.info("tune %s %s: valid hitrate@50 %.4f", name, params, score)
        if score > best_score:
            best, best_score = params, score
    return best


def run_eval(
    dataset_dir: Path,
    *,
    channels: Sequence[str] | None = None,
    protocol: str = "both",
    split: str = "test",
    cache: Path | None = None,
    encoder: str = "text-minilm",
    g_features: Sequence[str] = (),
    g_train: dict | None = None,
    sasrec_train: dict | None = None,
    baselines: Sequence[str] = BASELINES,
    progress: bool = True,
    on_progress: Progress | None = None,
    quick: bool = False,
    workdir: Path | None = None,
    events: Mapping[str, EventRule] | None = None,
) -> dict:
    """channels: mmrecall's channels to run (None: the default set; [] none); baselines likewise.
    events: what each interaction event is (core.events; default: its defaults): only positives are history
    and targets; the served rows' catalogues also get each user's negative feedback up to their last
    training interaction.
    quick: a smoke run: 100 users, 2 training epochs for G and SASRec, no tuning on the valid split.
    workdir: where the served rows' homes are built and kept (default: a temporary directory, removed)."""
    known = channel_factories(channels or ())
    names = list(channels) if channels is not None else [n for n in known if n not in OPT_IN and n not in BASELINES]
    unknown = [n for n in names if n not in known] + [n for n in baselines if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown channels {unknown}; known: {', '.join(known)}")
    names = list(dict.fromkeys([*baselines, *names]))  # the baselines lead the report
    if protocol not in ("last", "cold", "both"):
        raise ValueError(f"protocol must be last, cold or both, not {protocol!r}")
    data = load_dataset(dataset_dir, events)
    if quick:
        data = data.first_users(QUICK_USERS)
        g_train = {"epochs": 2, **(g_train or {})}
        sasrec_train = {"epochs": 2, "eval_every": 1, **(sasrec_train or {})}
    ctx = EvalContext(
        data,
        cache=cache,
        encoder=encoder,
        g_features=tuple(g_features),
        g_train=g_train or {},
        sasrec_train=sasrec_train or {},
        progress=progress,
        workdir=workdir,
    )
    try:
        return _run(ctx, dataset_dir, names, known, protocol, split, encoder, quick, on_progress)
    finally:
        if workdir is None and ctx.workdir is not None:
            shutil.rmtree(ctx.workdir, ignore_errors=True)


def _run(ctx: EvalContext, dataset_dir: Path, names, known, protocol, split, encoder, quick, on_progress) -> dict:
    data = ctx.data
    progress = ctx.progress
    reference = ctx.vectors("text-minilm")  # one space for intra-list distance, whatever the channel
    report: dict = {
        **provenance(),
        "dataset": str(dataset_dir),
        "protocol": protocol,
        "split": split,
        "items": data.n_items,
        "users": data.n_users,
        "interactions": len(data.users),
        "encoder": encoder,
        "channels": {},
        "cold": {},
        "params": {},
        "seconds": {},
    }
    valid = leave_last_out(data, "valid")
    params = {name: {} if quick else tune(name, ctx, valid, reference) for name in names}
    report["params"] = params
    runs: list[tuple[str, Split, bool]] = []
    if protocol in ("last", "both"):
        runs.append(("channels", leave_last_out(data, split), True))
    if protocol in ("cold", "both"):
        runs.append(("cold", cold_items_split(data), False))
    steps = [(key, s, ex, name) for key, s, ex in runs for name in names]
    for done, (key, the_split, exclude, name) in enumerate(tqdm(steps, desc="evaluating", disable=not progress)):
        started = time.time()
        channel = known[name]()
        channel.params.update(params[name])
        channel.fit(ctx, the_split)
        report[key][name] = evaluate_channel(channel, the_split, ctx, reference=reference, exclude_history=exclude)
        if getattr(channel, "tuned", None):
            report["params"][f"{key}/{name}"] = channel.tuned
        trained = ctx.models.get(((id(the_split), getattr(channel, "variant", None)), "report"))
        if trained:
            report.setdefault("training", {})[f"{key}/{name}"] = {k: v for k, v in trained.items() if k != "epochs"}
        report["seconds"][f"{key}/{name}"] = round(time.time() - started, 2)
        if on_progress:
            on_progress(f"{key}/{name}", done + 1, len(steps))
    return report


COLUMNS = [
    *(f"hitrate@{k}" for k in KS),
    f"recall@{LIST_K}",
    f"ndcg@{LIST_K}",
    "coverage",
    "diversity",
    f"ild@{LIST_K}",
]


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| channel | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in results.items():
        cells = [f"{row[c]:.4f}" if c in row else "" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(report: dict) -> str:
    parts = [f"# {report['dataset']}  ({report['items']} items, {report['users']} users)"]
    if report["channels"]:
        parts += [
            f"\n## leave-last-item-out, {report['split']} split, full ranking\n",
            markdown_table(report["channels"]),
        ]
    if report["cold"]:
        parts += [
            "\n## cold items (20% of items unseen in training; ranking among cold items)\n",
            markdown_table(report["cold"]),
        ]
    return "\n".join(parts)


def short_name(channel: str) -> str:
    """`v2v@/long/path/checkpoints/tag-image/20261125T0737` -> `v2v@tag-image/20261125T0737` for legends."""
    head, _, spec = channel.partition("@")
    if "/" in spec:
        return f"{head}@{'/'.join(Path(spec).parts[-2:])}"
    return channel


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in (("channels", "leave-last-item-out"), ("cold", "cold items")) if report[k]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for name, row in report[key].items():
            ax.plot(KS, [row[f"hitrate@{k}"] for k in KS], marker="o", label=short_name(name))
        ax.set_title(f"{title} ({report['split'] if key == 'channels' else 'test'})")
        ax.set_xlabel("K")
        ax.set_ylabel("hitRate@K")
        ax.set_xticks(KS)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(Path(report["dataset"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
