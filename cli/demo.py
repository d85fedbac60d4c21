"""`mmrecall demo`: the whole data path on the embedded demo catalogue, through a real worker."""

from __future__ import annotations

import atexit
from pathlib import Path

import typer

from mmrecall.core.demo_data import generate_demo
from mmrecall.core.settings import Settings

DEMO_CATALOGUE = "demo-catalogue"  # generated under MMRECALL_HOME: an installed package never writes beside itself
EXAMPLES = ("food-baking-000", "sports-tennis-003", "pets-cats-007")
DEMO_USER = "u000"  # whose personalised recall the demo prints (every demo user likes two level-2 tags)


def run_demo(
    settings: Settings,
    *,
    serve: bool = True,
    port: int = 8000,
    demo_dir: Path | None = None,
    broker_configured: bool = False,
) -> None:
    """broker_configured: the user named a broker (MMRECALL_REDIS_URL); otherwise, where none answers at the
    default URL, the demo runs a private one on loopback for as long as it runs."""
    from mmrecall.cli.query import recall_items, similar_items
    from mmrecall.pipeline.ingest import bulk_ingest
    from mmrecall.pipeline.queue import BrokerUnavailable, check_broker, submit_job, workers_alive
    from mmrecall.pipeline.runner import PrivateRedis, start_worker, wait_for_job, wait_for_workers
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    demo_dir = demo_dir or settings.home.resolve() / DEMO_CATALOGUE
    if not (demo_dir / "items.jsonl").is_file():
        typer.echo(f"generating the demo catalogue in {demo_dir}")
        generate_demo(demo_dir)
    settings = settings.model_copy(update={"media_roots": [*settings.media_roots, demo_dir]})
    settings.ensure_dirs()
    if not broker_configured:
        try:
            check_broker(settings)
        except BrokerUnavailable:
            broker = PrivateRedis().start()
            atexit.register(broker.kill)
            typer.echo(f"no Redis answers at {settings.redis_url}: running a private one at {broker.url} until exit")
            settings = settings.model_copy(update={"redis_url": broker.url})
    if not workers_alive(settings):
        typer.echo("no worker answers: starting one (log in MMRECALL_HOME/worker.log)")
        worker = start_worker(settings, concurrency=2, log_path=str(settings.home / "worker.log"))
        atexit.register(worker.terminate)
        wait_for_workers(settings)
    report = bulk_ingest(settings, demo_dir)
    typer.echo(
        f"ingested {report['items']} items: {report['ready']} ready, {report['failed']} failed "
        f"in {report['seconds']}s ({report['items_per_s']} items/s)"
    )
    result = wait_for_job(settings, submit_job(settings, "reindex"))
    typer.echo(f"reindexed {result['count']} vectors ({result['factory']}) into snapshot {result['snapshot']}")
    for item_id in EXAMPLES:
        found = similar_items(settings, item_id, k=5)
        with session_scope(settings.resolved_database_url) as session:
            title = catalogue.get_item(session, item_id).title
        typer.echo(f"\nsimilar to {item_id} ({title}):")
        for row in found["results"]:
            typer.echo(f"  {row['score']:.3f}  {row['id']:<22} {row['title']}")
    typer.echo(f"\ntraining G from the catalogue ({report['interactions_added']} interactions), then reindexing")
    trained = wait_for_job(settings, submit_job(settings, "train", {}))
    typer.echo(
        f"trained G in {trained['train_s']}s (best epoch {trained.get('best_epoch')}, valid hitRate@50 "
        f"{trained.get('valid_hitrate@50', float('nan')):.3f}); serving snapshot {trained['snapshot']}"
    )
    print_user_recall(settings, DEMO_USER, recall_items)
    if serve:
        import uvicorn

        from mmrecall.api.app import create_app

        typer.echo(f"\nserving the API on http://127.0.0.1:{port} (docs at /docs, inspector at /ui); Ctrl-C to stop")
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


def print_user_recall(settings: Settings, user_id: str, recall_items) -> None:
    """One user's recall as POST /v1/recall answers it: each item with the channels that recalled it and,
    for item-to-item channels, the history item that triggered it."""
    from collections import Counter

    from mmrecall.recall.service import stored_history
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    rows, _ = stored_history(settings.resolved_database_url, user_id)
    with session_scope(settings.resolved_database_url) as session:
        tags = Counter(tag for item, _ in rows for tag in catalogue.get_item(session, item).tags)
    liked = ", ".join(f"{tag} ({n})" for tag, n in tags.most_common(3))
    answer = recall_items(settings, {"user_id": user_id, "k": 10})
    typer.echo(f"\npersonalised recall for {user_id} ({len(rows)} interactions; most often {liked}):")
    for row in answer["results"]:
        why = ", ".join(
            source["channel"] + (f" <- {source['trigger']}" if source.get("trigger") else "")
            for source in row["sources"]
        )
        typer.echo(f"  {row['score']:.3f}  {row['id']:<22} {row['title']:<40} {why}")
    typer.echo(f"candidates per channel: {answer['channels']} (the inspector shows this at /ui/user/{user_id})")
