"""`mmrecall bench answers`: what the recall service answers on a fixed synthetic catalogue, to compare
two versions of the code. Every answer goes through the functions the API runs (`recall_answer` for
/v1/recall, `similar_to` for /v1/similar), in process; the file's digest is equal exactly when the answers are.

150 histories of 1-40 random items (k = 100, every channel) and 50 items' neighbours (v2v and cluster),
over `perf`'s low-rank 256-d vectors and the real reindex job.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from mmrecall.benchmarks.common import low_rank_vectors, write_result
from mmrecall.benchmarks.perf import DIM, SCALES, store_catalogue, timed_reindex
from mmrecall.core.settings import Settings
from mmrecall.recall.service import recall_answer
from mmrecall.recall.serving import ServiceSources, ServingIndex, similar_to
from mmrecall.recall.sources import history_rows


def answers(settings: Settings, ids: list[str], *, recalls: int = 150, similars: int = 50) -> dict:
    serving = ServingIndex(settings)
    serving.refresh()
    rng = np.random.default_rng(1)
    out: dict = {"recall": [], "similar": []}
    for _ in range(recalls):
        history = [ids[j] for j in rng.integers(len(ids), size=int(rng.integers(1, 40)))]
        sources = ServiceSources(serving.state, settings.resolved_database_url)
        known = history_rows(sources, history)
        out["recall"].append(recall_answer(sources, known, k=100, merge_weights=settings.merge))
    picks = rng.integers(len(ids), size=similars)
    for j, channel in zip(picks, ["v2v", "cluster"] * (similars // 2 + 1), strict=False):
        out["similar"].append(similar_to(serving, ids[int(j)], 50, channel))
    return out


def run(out: Path, scale: str = "100k", **_kw) -> dict:
    n = SCALES.get(scale, SCALES["100k"])
    with tempfile.TemporaryDirectory(prefix="mmrecall-answers-") as tmp:
        settings = Settings(home=Path(tmp))
        settings.ensure_dirs()
        ids = store_catalogue(settings, low_rank_vectors(n, DIM, seed=11))
        timed_reindex(settings)
        found = answers(settings, ids)
    text = json.dumps(found, sort_keys=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers-full.json").write_text(text)
    result = {
        "scale": scale,
        "items": n,
        "recall_answers": len(found["recall"]),
        "similar_answers": len(found["similar"]),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    print(
        f"{result['recall_answers']} recall and {result['similar_answers']} similar answers at {n:,} items: "
        f"sha256 {result['sha256']}"
    )
    write_result(out, "answers", result)
    return result
