"""Encode throughput: raw batched forward vs the full pipeline through real Celery workers.

Raw: the encoder's forward on pre-processed batches in this process (all cores to torch).
Pipeline: items ingested through the service function, encoded by a real worker pool on the real
Redis (decode, preprocessing, forward, storing vectors), timed from enqueue until all are `ready`.
Both use the same encoder and the same batch size. Then the default encoder's pipeline through one worker
process and through two separate workers on one queue (`pipeline_items_per_s_by_worker_processes`), and
the text encoder against sentence-transformers' own `encode()` on the same texts (benchmarks.encode_peers):
the demo catalogue's titles, or a dataset's (`--dataset DIR`).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import torch

from mmrecall.benchmarks.common import peak_rss_gb, table, write_result
from mmrecall.benchmarks.encode_peers import image_rows, text_rows
from mmrecall.core.dataset import load_dataset
from mmrecall.core.demo_data import generate_demo
from mmrecall.core.interchange import read_items
from mmrecall.core.settings import Settings
from mmrecall.encoders import ContentInput, get_encoder
from mmrecall.encoders.images import load_image
from mmrecall.encoders.media import load_content
from mmrecall.pipeline.ingest import ingest_items
from mmrecall.pipeline.runner import start_worker, wait_for_items, wait_for_workers

ENCODERS = ("text-minilm", "skeleton-base", "image-effnet", "dual-stream-base")  # the default first


def raw_throughput(encoder_name: str, records, batch_size: int) -> float:
    encoder = get_encoder(encoder_name)
    contents = [
        load_content(r.title, r.tags, r.cover, r.frames, r.video, images=encoder.uses_images, n_frames=encoder.n_frames)
        for r in records
    ]
    batches = [encoder.preprocess(contents[i : i + batch_size]) for i in range(0, len(contents), batch_size)]
    with torch.inference_mode():
        encoder.forward(batches[0])  # warm-up
        started = time.perf_counter()
        for batch in batches:
            encoder.forward(batch)
    return len(contents) / (time.perf_counter() - started)


def pipeline_throughput(
    encoder_name: str, records, batch_size: int, home: Path, redis_url: str, concurrency: int, workers: int = 1
) -> float:
    """Items/s through `workers` worker processes (each a pool of `concurrency`, as separate hosts would run
    them: their own node names, one queue), the cores shared out between all their processes."""
    settings = Settings(
        home=home / f"{encoder_name}-{workers}x{concurrency}",
        redis_url=redis_url,
        queue=f"bench-{uuid.uuid4().hex[:8]}",
        encoder=encoder_name,
        encode_batch_size=batch_size,
        torch_threads=max(1, (os.cpu_count() or 1) // (workers * concurrency)),
    )
    settings.ensure_dirs()
    pool = "solo" if concurrency == 1 else "prefork"
    logs = [str(settings.home / f"worker-{i}.log") for i in range(workers)]
    processes = [
        start_worker(settings, concurrency=concurrency, pool=pool, log_path=log, host=f"host-{i}")
        for i, log in enumerate(logs)
    ]
    try:
        wait_for_workers(settings, timeout=300, count=workers)
        warm_count = batch_size * concurrency * workers
        warm = [r.model_copy(update={"id": f"warm-{i}"}) for i, r in enumerate(records[:warm_count])]
        wait_for_items(settings, ingest_items(settings, warm), progress=False)  # models load once per process
        started = time.perf_counter()
        ids = ingest_items(settings, records)
        counts = wait_for_items(settings, ids, progress=False, poll_s=0.05)
        elapsed = time.perf_counter() - started
    finally:
        for worker in processes:
            worker.terminate()
        for worker in processes:
            worker.wait(30)
    if counts.get("ready", 0) != len(records):
        raise RuntimeError(f"pipeline did not encode every item: {counts}")
    return len(records) / elapsed


def run(
    out: Path,
    seconds: float = 8.0,
    batch_size: int = 32,
    concurrency: int = 2,
    encoders=ENCODERS,
    worker_scaling: bool = True,
    dataset: Path | None = None,
    text_items: int = 2048,
    **_kw,
) -> dict:
    """Each encoder gets enough items for about `seconds` of raw forward, so polling granularity and
    start-up do not dominate the pipeline figure. worker_scaling: also the 1 and 2 worker processes rows."""
    redis_url = os.environ.get("MMRECALL_REDIS_URL", "redis://127.0.0.1:6379/0")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmrecall-bench-") as tmp:
        pool = list(read_items(generate_demo(Path(tmp) / "data", per_leaf=500, users=1)))
        for name in encoders:
            probe = raw_throughput(name, pool[: batch_size * 4], batch_size)
            items = int(min(len(pool), max(batch_size * 8, probe * seconds)))
            records = pool[:items]
            raw = raw_throughput(name, records, batch_size)
            pipe = pipeline_throughput(name, records, batch_size, Path(tmp), redis_url, concurrency)
            rows.append(
                {
                    "encoder": name,
                    "batch": batch_size,
                    "items": len(records),
                    "raw_items_per_s": raw,
                    "pipeline_items_per_s": pipe,
                    "ratio": pipe / raw,
                }
            )
            print(f"  {name}: raw {raw:.1f}/s, pipeline {pipe:.1f}/s")
        # the default encoder through one worker process, then two separate workers (as on two hosts)
        records = pool[: rows[0]["items"]]
        by_workers = {
            str(n): pipeline_throughput(encoders[0], records, batch_size, Path(tmp), redis_url, 1, workers=n)
            for n in ((1, 2) if worker_scaling else ())
        }
        if dataset is not None:
            texts = [ContentInput(item.title, list(item.tags)) for item in load_dataset(dataset).items[:text_items]]
        else:
            texts = [ContentInput(record.title, list(record.tags)) for record in pool[:text_items]]
        text_peers = text_rows(texts, batch_size)
        covers = [load_image(r.cover) for r in pool if r.cover][: batch_size * 8]
        image_peers = image_rows(covers, batch_size)
    print(table(rows, ["encoder", "batch", "items", "raw_items_per_s", "pipeline_items_per_s", "ratio"]))
    print(f"text, {len(texts)} titles in batches of {batch_size} ({'dataset' if dataset else 'demo catalogue'}):")
    print(table(text_peers, ["encoder", "items_per_s", "vs_peer", "cos_min", "cos_mean"]))
    print(f"image backbones, {len(covers)} demo covers in batches of {batch_size}:")
    print(table(image_peers, ["encoder", "items_per_s", "vs_peer", "cos_min", "cos_mean"]))
    scaling = [{"worker_processes": n, "items_per_s": v} for n, v in by_workers.items()]
    print(table(scaling, ["worker_processes", "items_per_s"]))
    result = {
        "rows": rows,
        "pipeline_items_per_s_by_worker_processes": by_workers,
        "text_vs_sentence_transformers": {"titles": str(dataset or "demo"), "items": len(texts), "rows": text_peers},
        "image_vs_eager": {"covers": len(covers), "rows": image_peers},
        "worker_processes": concurrency,
        "torch_threads_raw": torch.get_num_threads(),
        "peak_rss_gb": peak_rss_gb(),
    }
    write_result(out, "encode", result)
    return result
