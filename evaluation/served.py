"""Serving state for an evaluation split, built the way production builds it, and queried the way the API
queries it.

For a split: a fresh home (SQLite catalogue, snapshots); the dataset's items stored and encoded by the
function the workers' encode task runs (`pipeline.encode.encode_items`); the split's training interactions
stored as `/v1/interactions` stores them; then `pipeline.training.train_from_catalogue`, the `mmrecall
train` job: export, train G, re-encode, reindex (v2v table, clusters, ECi + EPi item vectors, the user
tower, the recall set tuned on G's held-out interactions), swap. A query is then the `/v1/recall` route's
own two calls: the user's stored history (`recall.service.stored_history`) and `history_recall` over the
serving index, so every mmrecall row of a report is what the API answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmrecall.core.dataset import Dataset, Split
from mmrecall.core.interchange import InteractionRecord
from mmrecall.core.settings import Settings
from mmrecall.pipeline.encode import encode_items
from mmrecall.pipeline.ingest import ingest_interactions, ingest_items
from mmrecall.pipeline.training import train_from_catalogue
from mmrecall.recall.channels import CHANNELS
from mmrecall.recall.filters import RecallFilter
from mmrecall.recall.service import history_recall, stored_history
from mmrecall.recall.serving import ServingIndex
from mmrecall.storage import catalogue
from mmrecall.storage.db import session_scope

log = logging.getLogger(__name__)
ENCODE_CHUNK = 256  # items per encode call (the workers' batches are of this order)


@dataclass
class ServedSplit:
    settings: Settings
    serving: ServingIndex
    report: dict = field(default_factory=dict)  # wall times and the train job's result

    def answer(self, user_id: str, *, k: int, channels=CHANNELS, new_only: bool = False) -> dict | None:
        """What POST /v1/recall {"user_id", "k", "channels", "new_only"} answers (None: no stored history)."""
        settings = self.settings
        rows, seen = stored_history(
            self.serving.database_url, user_id, settings.event_rules, read_exclude_s=settings.read_exclude_s
        )
        if not rows:
            return None
        history, times = [item for item, _ in rows], dict(rows)
        return history_recall(
            self.serving,
            history,
            times,
            k=k,
            channels=list(channels),
            user_id=user_id,
            seen_items=seen,
            recall_filter=RecallFilter(new_only=new_only),
            in_memory_only=False,
        )


def split_interactions(data: Dataset, split: Split) -> list[InteractionRecord]:
    """The split's training interactions as records (user, then time order: the order training reads), then
    each user's negative feedback (event "dislike") up to their last training interaction."""
    records = [
        InteractionRecord(
            user_id=data.user_ids[u], item_id=data.items[i].id, timestamp=float(t), weight=float(w), event=None
        )
        for u, i, t, w in zip(
            split.train_users.tolist(),
            split.train_items.tolist(),
            split.train_times.tolist(),
            split.train_weights.tolist(),
            strict=True,
        )
    ]
    if data.negative_users is None or data.negative_times is None or not len(data.negative_users):
        return records
    last = np.full(data.n_users, -np.inf)
    np.maximum.at(last, split.train_users, split.train_times)
    negatives = (data.negative_users.tolist(), data.negative_items.tolist(), data.negative_times.tolist())
    for u, i, t in zip(*negatives, strict=True):
        if t <= last[u]:
            records.append(
                InteractionRecord(user_id=data.user_ids[u], item_id=data.items[i].id, timestamp=t, event="dislike")
            )
    return records


def build_served(
    data: Dataset, split: Split, home: Path, *, encoder: str, train: dict, progress: bool = True
) -> ServedSplit:
    """A home serving the split, from nothing: see the module docstring. `train`: the train job's params."""
    # its own catalogue and snapshots, whatever the environment says (an eval job runs inside a worker whose
    # MMRECALL_DATABASE_URL is the deployment's); a deployment's merge override would hide the tuned one
    home = home.resolve()
    settings = Settings(home=home, encoder=encoder, database_url=f"sqlite:///{home / 'mmrecall.db'}", merge={})
    settings.ensure_dirs()
    report: dict = {"home": str(home)}
    started = time.time()
    ids = ingest_items(settings, data.items, enqueue=False)
    for start in tqdm(range(0, len(ids), ENCODE_CHUNK), desc="encoding (workers' function)", disable=not progress):
        encode_items(settings, ids[start : start + ENCODE_CHUNK])
    with session_scope(settings.resolved_database_url) as session:
        report["items"] = catalogue.count_by_status(session)
    report["interactions"] = ingest_interactions(settings, split_interactions(data, split))
    report["ingest_s"] = round(time.time() - started, 1)
    started = time.time()
    with session_scope(settings.resolved_database_url) as session:
        job_id = catalogue.create_job(session, "train", train).id
    trained = train_from_catalogue(settings, job_id, dict(train))
    report["train_s"] = round(time.time() - started, 1)
    report["train"] = {k: v for k, v in trained.items() if k not in ("skipped_examples",)}
    serving = ServingIndex(settings)
    serving.refresh()
    report["recall"] = serving.state.recall
    log.info("served state for %s/%s: %s", split.protocol, split.split, report)
    return ServedSplit(settings, serving, report)


def dense_scores(answer: dict | None, item_index: dict[str, int], n_items: int) -> np.ndarray:
    """An answer's results scored by rank (best highest) over the dataset's items, -inf where not recalled."""
    scores = np.full(n_items, -np.inf, np.float32)
    if answer:
        rows = [item_index[r["id"]] for r in answer["results"]]
        scores[rows] = np.arange(len(rows), 0, -1)
    return scores
