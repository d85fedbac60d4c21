"""`mmrecall bench served --dataset DIR`: what a user of the service gets, measured end to end.

A fresh home; the dataset's items and every interaction but each user's last (by timestamp, then file
order) ingested as `mmrecall ingest` does, through a real worker; `mmrecall train` (G from the catalogue,
re-encode, reindex with the recall set tuned, swap); `mmrecall serve`; then for
every user `POST /v1/recall {"user_id", "k": 50}`, merged and each channel alone, over HTTP. Reported:
hitRate@10/50 of the held-out item, the items a user had already seen among the answers (must be 0), and
title search on random titles (the exact title first; the title without its year in the top 3).
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

from mmrecall.benchmarks.common import table, write_result
from mmrecall.benchmarks.homophily import cover_shares
from mmrecall.core.interchange import InteractionRecord, read_interactions, read_items, write_interactions
from mmrecall.core.settings import Settings
from mmrecall.pipeline.ingest import bulk_ingest
from mmrecall.pipeline.queue import submit_job
from mmrecall.pipeline.runner import free_port, settings_env, start_worker, wait_for_api, wait_for_job, wait_for_workers
from mmrecall.recall.channels import CHANNELS
from mmrecall.storage.snapshots import load_snapshot

K = 50
TRAIN_TIMEOUT_S = 6 * 3600  # G on MovieLens takes about 40 minutes on 2 cores
TITLE_QUERIES = 50


def held_out_split(dataset: Path, out: Path) -> tuple[dict[str, InteractionRecord], dict[str, set[str]]]:
    """Write `out` as the dataset without each user's last interaction (timestamp, then file order; the
    items are referenced, not copied); return (user -> that held-out interaction, user -> the items ingested
    for them: what recall must never return)."""
    rows = list(read_interactions(dataset))
    last: dict[str, int] = {}
    for at, row in enumerate(rows):
        best = last.get(row.user_id)
        if best is None or (row.timestamp, at) >= (rows[best].timestamp, best):
            last[row.user_id] = at
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.jsonl").write_text((dataset / "items.jsonl").read_text())
    held = set(last.values())
    write_interactions(out, (row for at, row in enumerate(rows) if at not in held))
    seen: dict[str, set[str]] = defaultdict(set)
    for at, row in enumerate(rows):
        if at not in held:
            seen[row.user_id].add(row.item_id)
    return {user: rows[at] for user, at in last.items()}, seen


def recall_hits(
    url: str, targets: dict[str, InteractionRecord], seen: dict[str, set[str]], served: tuple[str, ...] = CHANNELS
) -> dict:
    """Per channel (and merged): hitRate@10/50 over the users, seen items returned, p50 latency."""
    found: dict[str, dict] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, channels in [("merged", list(served)), *((c, [c]) for c in served)]:
            hits10 = hits50 = seen_returned = 0
            timings = []
            for user, target in targets.items():
                started = time.perf_counter()
                answer = http.post("/v1/recall", json={"user_id": user, "k": K, "channels": channels})
                timings.append(time.perf_counter() - started)
                answer.raise_for_status()
                ids = [r["id"] for r in answer.json()["results"]]
                hits10 += target.item_id in ids[:10]
                hits50 += target.item_id in ids[:K]
                seen_returned += len(seen[user] & set(ids))
            timings.sort()
            found[name] = {
                "hitRate@10": round(hits10 / len(targets), 4),
                "hitRate@50": round(hits50 / len(targets), 4),
                "seen_returned": seen_returned,
                "p50_ms": round(1000 * timings[len(timings) // 2], 1),
            }
    return found


def served_homophily(snapshot_dir: Path, dataset: Path) -> dict[str, float]:
    """Cover homophily (benchmarks.homophily) on the vectors the workers stored, as the snapshot serves them."""
    index = load_snapshot(snapshot_dir).index
    covered = {item.id for item in read_items(dataset, resolve_media=False) if item.cover}
    has_cover = np.array([item in covered for item in index.ids])
    return cover_shares(np.asarray(index.vectors, np.float32), has_cover)


def title_search(url: str, dataset: Path, *, queries: int = TITLE_QUERIES, seed: int = 0) -> dict:
    """Random titles as queries: the exact title must come first; the title without its year in the top 3."""
    items = [item for item in read_items(dataset, resolve_media=False) if item.title]
    picks = random.Random(seed).sample(items, min(queries, len(items)))
    exact_first = yearless_top3 = 0
    misses = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for item in picks:
            exact = [r["id"] for r in http.get("/v1/search", params={"q": item.title, "k": 10}).json()["results"]]
            exact_first += exact[:1] == [item.id]
            yearless = item.title.rsplit(" (", 1)[0] if item.title.endswith(")") else item.title
            top = [r["id"] for r in http.get("/v1/search", params={"q": yearless, "k": 3}).json()["results"]]
            yearless_top3 += item.id in top
            if exact[:1] != [item.id] or item.id not in top:
                misses.append(item.title)
    return {"queries": len(picks), "exact_first": exact_first, "yearless_top3": yearless_top3, "misses": misses}


def run(out: Path, dataset: Path | None = None, encoder: str | None = None, sequential: bool = False, **_kw) -> dict:
    if dataset is None:
        raise ValueError("bench served needs --dataset DIR (a dataset in the interchange format)")
    result: dict = {"dataset": str(dataset)}
    with tempfile.TemporaryDirectory(prefix="mmrecall-served-") as tmp:
        home = Path(tmp) / "home"
        settings = Settings(home=home, queue=f"served-{int(time.time())}", **({"encoder": encoder} if encoder else {}))
        settings.ensure_dirs()
        result["encoder"] = settings.encoder
        targets, seen = held_out_split(dataset, Path(tmp) / "train")
        worker = start_worker(settings, concurrency=2, log_path=str(home / "worker.log"))
        server = None
        try:
            wait_for_workers(settings)
            started = time.perf_counter()
            report = bulk_ingest(settings.model_copy(update={"media_roots": [dataset.resolve()]}), Path(tmp) / "train")
            result["ingest_s"] = round(time.perf_counter() - started, 1)
            result["items"], result["failed"] = report["items"], report["failed"]
            started = time.perf_counter()  # `mmrecall train`: G from the catalogue, re-encode, reindex, swap
            params = {"sequential": True} if sequential else {}
            trained = wait_for_job(settings, submit_job(settings, "train", params), timeout=TRAIN_TIMEOUT_S)
            result["train_s"] = round(time.perf_counter() - started, 1)
            result["train"] = {
                k: trained.get(k) for k in ("best_epoch", "valid_hitrate@50", "snapshot", "encoder", "sequential")
            }
            result["cover_homophily"] = served_homophily(settings.snapshots_dir / trained["snapshot"], dataset)
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "mmrecall.cli", "serve", "--port", str(port), "--no-access-log"],
                env=settings_env(settings),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"http://127.0.0.1:{port}"
            wait_for_api(url, timeout=120)
            started = time.perf_counter()
            # the sequential channel answers only when the train job trained it
            served = CHANNELS if sequential else tuple(c for c in CHANNELS if c != "sequential")
            result["recall"] = recall_hits(url, targets, seen, served)
            result["recall_s"] = round(time.perf_counter() - started, 1)
            result["users"] = len(targets)
            result["title_search"] = title_search(url, dataset)
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            worker.terminate()
            worker.wait(60)
    rows = [{"channel": name, **measured} for name, measured in result["recall"].items()]
    print(table(rows, ["channel", "hitRate@10", "hitRate@50", "seen_returned", "p50_ms"]))
    print(f"cover homophily (share of the 10 nearest with a cover): {result['cover_homophily']}")
    search = result["title_search"]
    print(
        f"title search: exact title first {search['exact_first']}/{search['queries']}, "
        f"title without year in top 3 {search['yearless_top3']}/{search['queries']}"
    )
    write_result(out, "served", result)
    return result
