"""The `mmrecall` command line."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from typer._click.exceptions import ClickException as TyperClickException
from typer.core import TyperGroup

from mmrecall.core.errors import ServiceUnavailable
from mmrecall.core.settings import get_settings
from mmrecall.recall.channels import CHANNELS


class OneLineErrors(TyperGroup):
    """A command that fails prints one line (`error: ...`) and exits 2; `mmrecall --debug CMD` shows the
    traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperClickException, click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # exits and usage errors are typer's to report
        except Exception as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            explained = isinstance(exc, ServiceUnavailable | ValueError | OSError)
            hint = "" if explained else f" ({type(exc).__name__}; mmrecall --debug ... shows the traceback)"
            typer.secho(f"error: {exc}{hint}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=OneLineErrors,
    help="Multimodal content understanding for recommender recall.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback when a command fails")] = False,
) -> None:
    ctx.obj = {"debug": debug}


data_app = typer.Typer(help="Dataset conversion into the interchange format.", no_args_is_help=True)
app.add_typer(data_app, name="data")
finetune_app = typer.Typer(help="Train encoders and G; each writes a checkpoint directory.", no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@data_app.command("import-movielens")
def import_movielens_cmd(
    raw_dir: Path,
    out_dir: Path,
    posters: Annotated[Path | None, typer.Option(help="Directory of {movieId}.jpg posters")] = None,
    strict: Annotated[bool, typer.Option(help="Fail when --posters matches no movie")] = False,
) -> None:
    """Convert an official MovieLens release (100k, 1m, latest) into the interchange format."""
    from mmrecall.core.interchange import FormatError
    from mmrecall.core.movielens import import_movielens

    try:
        summary = import_movielens(raw_dir, out_dir, posters=posters)
    except FormatError as exc:
        _fail(str(exc))
    typer.echo(
        f"{summary.layout}: {summary.items} items ({summary.with_cover} with a cover), "
        f"{summary.interactions} interactions -> {out_dir}"
    )
    if posters is not None and summary.with_cover == 0:
        message = f"no file in {posters} is named after a movie id of this release (expected e.g. {posters}/1.jpg)"
        if strict:
            _fail(message)
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def _follow(job_id: str, *, timeout: float) -> dict:
    """Wait for a queued job with a progress bar; its result, or a clear error and exit code 2."""
    from mmrecall.pipeline.runner import wait_for_job

    typer.echo(f"job {job_id} queued")
    try:
        return wait_for_job(get_settings(), job_id, timeout=timeout)
    except (RuntimeError, TimeoutError) as exc:
        _fail(str(exc))


def _run_training(kind: str, params: dict, on_worker: bool) -> dict:
    """Run a training job here (progress in the log) or as a Celery job (progress on the job row)."""
    from mmrecall.pipeline.training import run_training

    settings = get_settings()
    settings.ensure_dirs()
    if not on_worker:
        logging.getLogger().setLevel(logging.INFO)
        try:
            report = run_training(settings, kind, params)
        except (ValueError, KeyError) as exc:
            _fail(str(exc))
        typer.echo(json.dumps(report, indent=2))
        return report
    from mmrecall.pipeline.queue import submit_job

    report = _follow(submit_job(settings, f"finetune:{kind}", params), timeout=24 * 3600)
    typer.echo(json.dumps(report, indent=2))
    return report


@finetune_app.command("tag-image")
def finetune_tag_image(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (interchange format)")],
    tag_level: Annotated[int, typer.Option(help="1, 2, ... or 0 for leaf tags")] = 2,
    base: Annotated[
        str, typer.Option(help="tag-image variant: tag-image-effnet, tag-image-resnet18")
    ] = "tag-image-effnet",
    epochs: Annotated[int, typer.Option()] = 200,
    min_count: Annotated[int, typer.Option(help="Tags on fewer covers are dropped")] = 10,
    on_worker: Annotated[bool, typer.Option(help="Run as a Celery job")] = False,
) -> None:
    """Train the tag classifier head on cover images; its first FC layer becomes the image vector."""
    params = {
        "dataset": str(dataset.resolve()),
        "tag_level": tag_level,
        "base": base,
        "epochs": epochs,
        "min_count": min_count,
    }
    _run_training("tag-image", params, on_worker)


@finetune_app.command("tag-resnet")
def finetune_tag_resnet(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (interchange format)")],
    tag_level: Annotated[int, typer.Option(help="1, 2, ... or 0 for leaf tags")] = 2,
    epochs: Annotated[int, typer.Option()] = 200,
    on_worker: Annotated[bool, typer.Option(help="Run as a Celery job")] = False,
) -> None:
    """`tag-image` on the ResNet-18 backbone (set MMRECALL_IMAGE_CHECKPOINT for ImageNet weights)."""
    params = {"dataset": str(dataset.resolve()), "tag_level": tag_level, "base": "tag-image-resnet18", "epochs": epochs}
    _run_training("tag-image", params, on_worker)


@finetune_app.command("pretrain-dualstream")
def finetune_pretrain_dualstream(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (interchange format)")],
    base: Annotated[str, typer.Option(help="dual-stream variant or checkpoint directory")] = "dual-stream-base",
    epochs: Annotated[float, typer.Option()] = 2.0,
    steps: Annotated[int | None, typer.Option(help="Overrides epochs")] = None,
    batch_size: Annotated[int, typer.Option()] = 64,
    resume: Annotated[Path | None, typer.Option(help="A run directory to continue")] = None,
    on_worker: Annotated[bool, typer.Option(help="Run as a Celery job")] = False,
) -> None:
    """Pretrain the dual-stream encoder: masked tokens, masked frames, text-frame alignment."""
    params = {
        "dataset": str(dataset.resolve()),
        "base": base,
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "resume": str(resume.resolve()) if resume else None,
    }
    _run_training("pretrain-dualstream", params, on_worker)


@finetune_app.command("g")
def finetune_g(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (interchange format)")],
    features: Annotated[str, typer.Option(help="Comma-separated encoders whose vectors feed G")] = (
        "text-minilm,dual-stream-base"
    ),
    epochs: Annotated[int, typer.Option()] = 30,
    batch_size: Annotated[int, typer.Option()] = 512,
    user_tower: Annotated[str, typer.Option(help="pool (attention pooling) or seq (the sequence tower)")] = "pool",
    interests: Annotated[int, typer.Option(help="seq: interest vectors per user (elastic: rare ones drop)")] = 4,
    activate: Annotated[bool, typer.Option(help="Then re-encode the catalogue with G and rebuild the index")] = False,
    on_worker: Annotated[bool, typer.Option(help="Run as a Celery job")] = False,
) -> None:
    """Train the behaviour-aware content function G (with bias towers) on clicks."""
    if user_tower not in ("pool", "seq"):
        _fail(f"--user-tower must be pool or seq, not {user_tower!r}")
    params = {
        "dataset": str(dataset.resolve()),
        "features": [f.strip() for f in features.split(",") if f.strip()],
        "epochs": epochs,
        "batch_size": batch_size,
        "user_tower": user_tower,
        "interests": interests if user_tower == "seq" else 1,
    }
    if user_tower == "seq":
        params["history"] = 30  # the transformer reads the latest 30 items; tag preferences the latest 200
    report = _run_training("g", params, on_worker)
    if activate and report:
        activate_cmd(report["checkpoint"], wait=True)


@app.command()
def ingest(
    dataset: Path,
    wait: Annotated[bool, typer.Option(help="Wait until every item is encoded")] = True,
    interactions: Annotated[bool, typer.Option(help="Also ingest interactions.csv")] = True,
    start_worker: Annotated[bool, typer.Option(help="Start a local worker if none answers")] = False,
) -> None:
    """Bulk-ingest a dataset directory (interchange format) and enqueue encoding."""
    from mmrecall.pipeline.ingest import bulk_ingest

    settings = get_settings()
    try:
        report = bulk_ingest(settings, dataset, interactions=interactions, wait=wait, ensure_worker=start_worker)
    except (ValueError, TimeoutError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(report, indent=2))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes")] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo, threads")] = "prefork",
    beat: Annotated[
        bool, typer.Option(help="Also run the schedule (MMRECALL_TRAIN_EVERY_S); one per deployment")
    ] = False,
) -> None:
    """Run a Celery worker for this instance's queue (foreground)."""

    from mmrecall.pipeline.runner import settings_env, worker_command

    settings = get_settings()
    env = settings_env(settings)
    env.setdefault("MMRECALL_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, concurrency))))
    command = worker_command(settings, concurrency=concurrency, pool=pool, beat=beat)
    os.execvpe(command[0], command, env)


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="API processes (default: MMRECALL_API_WORKERS)")] = 0,
    balancer: Annotated[
        str,
        typer.Option(
            help="With several processes: uvicorn (its workers share the port) or haproxy (each process on its "
            "own port behind HAProxy, leastconn per request; needs the haproxy package)"
        ),
    ] = "uvicorn",
    access_log: Annotated[bool, typer.Option(help="Log every request")] = True,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import shutil

    import uvicorn

    from mmrecall.api.app import create_app
    from mmrecall.api.auth import is_loopback, parse_keys
    from mmrecall.core import logs

    settings = get_settings()
    try:
        keys = parse_keys(settings.api_keys)
    except ValueError as exc:
        _fail(str(exc))
    if not keys and not is_loopback(host):
        _fail(f"refusing to serve on {host} without API keys: set MMRECALL_API_KEYS (KEY:write,...) or bind 127.0.0.1")
    if not keys:
        typer.echo("no API keys configured: serving loopback clients only (set MMRECALL_API_KEYS to open up)")
    workers = workers or settings.api_workers
    _check_vector_store(settings)
    if balancer not in ("uvicorn", "haproxy"):
        _fail(f"--balancer is uvicorn or haproxy, not {balancer!r}")
    logs.configure(json_lines=settings.log_format == "json")
    options = {"host": host, "port": port, "log_level": "info", "access_log": access_log}
    if workers > 1:  # each process maps the same snapshot files: the index is in memory once
        # and counts its requests into shared metric files, so any process's /metrics reports them all
        metrics_dir = settings.home / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if balancer == "haproxy":
            from mmrecall.pipeline.balancer import HAProxyMissing, serve_behind_haproxy

            try:
                code = serve_behind_haproxy(workers, host=host, port=port, home=settings.home, access_log=access_log)
            except HAProxyMissing as exc:
                _fail(str(exc))
            raise typer.Exit(code)
        # uvicorn's supervisor: the processes share the listening socket, a dead one is replaced
        uvicorn.run("mmrecall.api.app:create_app", factory=True, workers=workers, **options, log_config=None)
    else:  # uvicorn's own loggers go through the root handler above (the request id, JSON if asked)
        uvicorn.run(create_app(settings), **options, log_config=None)


def _check_vector_store(settings) -> None:
    """Before serving: the configured vector store answers, and holds the serving snapshot's collection
    with vectors of its dimension (each failure a one-line reason, nothing started)."""
    from mmrecall.index.ann import checked_collection
    from mmrecall.index.store import StoreError, serving_store
    from mmrecall.storage import snapshots

    try:
        store = serving_store(settings.vector_store, home=settings.home)
        current = snapshots.current_snapshot(settings.snapshots_dir)
        if current is not None:
            checked_collection(current, store)
    except StoreError as exc:
        _fail(f"vector store: {exc}")


@app.command()
def reconcile() -> None:
    """Send again items stuck `pending`/`encoding` (their task was lost) and fail jobs that stopped.

    Workers run this sweep on their own at start-up and every MMRECALL_RECONCILE_EVERY_S."""
    from mmrecall.pipeline.reconcile import reconcile as sweep

    typer.echo(json.dumps(sweep(get_settings())))


@app.command()
def reindex(
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish")] = True,
    local: Annotated[bool, typer.Option(help="Run in this process instead of on a worker")] = False,
) -> None:
    """Rebuild the index from all stored vectors and swap it in atomically."""
    settings = get_settings()
    settings.ensure_dirs()
    if local:
        from mmrecall.pipeline.reindex import reindex as run_reindex
        from mmrecall.storage import catalogue
        from mmrecall.storage.db import session_scope

        with session_scope(settings.resolved_database_url) as session:
            job_id = catalogue.create_job(session, "reindex").id
        try:
            result = run_reindex(settings, job_id)
        except ValueError as exc:
            _fail(str(exc))
    else:
        from mmrecall.pipeline.queue import submit_job

        job_id = submit_job(settings, "reindex")
        if not wait:
            typer.echo(f"job {job_id} queued")
            return
        result = _follow(job_id, timeout=3600)
    typer.echo(json.dumps(result, indent=2))


@app.command("train")
def train_cmd(
    local: Annotated[bool, typer.Option(help="Run in this process instead of on a worker")] = False,
    epochs: Annotated[int | None, typer.Option(help="G's training epochs (default: until validation stops)")] = None,
    user_tower: Annotated[
        str | None, typer.Option(help="pool, seq, or both (train one G with each, serve the better on held-out)")
    ] = None,
    features: Annotated[str | None, typer.Option(help="Comma-separated encoders feeding G (default: active)")] = None,
    pretrain: Annotated[
        str | None,
        typer.Option(help="Comma-separated feature encoders to train first and feed G: tag-image, dual-stream"),
    ] = None,
    sequential: Annotated[
        bool, typer.Option(help="Also train the sequential channel (SASRec over item ids), served beside G")
    ] = False,
    activate: Annotated[bool, typer.Option(help="Serve the trained G: re-encode, reindex, swap")] = True,
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish")] = True,
) -> None:
    """Train G from the catalogue's items and interactions, then serve it. Blocks until the job ends and
    exits non-zero when it failed; the previous model serves until the swap."""
    from mmrecall.pipeline.jobs import run_job
    from mmrecall.pipeline.queue import submit_job
    from mmrecall.pipeline.training import train_from_catalogue
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    params: dict = {"activate": activate}
    if sequential:
        params["sequential"] = True
    if epochs is not None:
        params["epochs"] = epochs
    if user_tower is not None:
        if user_tower not in ("pool", "seq", "both"):
            _fail(f"--user-tower is pool, seq or both, not {user_tower!r}")
        params["user_tower"] = user_tower
    if features:
        params["features"] = [f.strip() for f in features.split(",") if f.strip()]
    if pretrain:
        from mmrecall.pipeline.training import PRETRAIN

        params["pretrain"] = [p.strip() for p in pretrain.split(",") if p.strip()]
        if unknown := [p for p in params["pretrain"] if p not in PRETRAIN]:
            _fail(f"--pretrain takes {', '.join(PRETRAIN)}, not {', '.join(unknown)}")
    settings = get_settings()
    settings.ensure_dirs()
    if local:
        with session_scope(settings.resolved_database_url) as session:
            job_id = catalogue.create_job(session, "train", params).id
        logging.getLogger("mmrecall.finetune").setLevel(logging.INFO)
        result = run_job(settings, job_id, lambda _job, report: train_from_catalogue(settings, job_id, params, report))
    else:
        job_id = submit_job(settings, "train", params)
        if not wait:
            typer.echo(f"job {job_id} queued")
            return
        result = _follow(job_id, timeout=24 * 3600)
    typer.echo(json.dumps(result, indent=2))


@app.command("export")
def export_cmd(
    directory: Annotated[Path, typer.Argument(help="Where to write items.jsonl and interactions.csv")],
) -> None:
    """Write the catalogue's ready items and their interactions in the interchange format."""
    from mmrecall.storage.export import export_catalogue

    settings = get_settings()
    typer.echo(json.dumps(export_catalogue(settings.resolved_database_url, directory)))


@app.command("activate")
def activate_cmd(
    encoder: Annotated[str, typer.Argument(help="A registered encoder or a checkpoint directory")],
    wait: Annotated[bool, typer.Option(help="Wait for the backfill to finish")] = True,
    local: Annotated[bool, typer.Option(help="Run in this process instead of on a worker")] = False,
) -> None:
    """Switch the catalogue to another encoder: re-encode everything through a worker, reindex, swap."""
    from mmrecall.pipeline.queue import submit_job

    if local:
        from mmrecall.pipeline.reindex import backfill
        from mmrecall.storage import catalogue
        from mmrecall.storage.db import session_scope

        settings = get_settings()
        settings.ensure_dirs()
        with session_scope(settings.resolved_database_url) as session:
            job_id = catalogue.create_job(session, "backfill", {"encoder": encoder}).id
        typer.echo(json.dumps(backfill(settings, job_id, encoder), indent=2))
        return
    job_id = submit_job(get_settings(), "backfill", {"encoder": encoder})
    if not wait:
        typer.echo(f"backfill job {job_id} queued")
        return
    typer.echo(json.dumps(_follow(job_id, timeout=24 * 3600), indent=2))


IncludeTags = Annotated[str | None, typer.Option(help="Only items with one of these comma-separated tags")]
ExcludeTags = Annotated[str | None, typer.Option(help="Only items with none of these comma-separated tags")]
ExcludeIds = Annotated[str | None, typer.Option(help="Never these comma-separated item ids")]
CreatedAfter = Annotated[float | None, typer.Option(help="Only items created after (unix seconds)")]
CreatedBefore = Annotated[float | None, typer.Option(help="Only items created before (unix seconds)")]
NewOnly = Annotated[bool, typer.Option(help="Only items without behaviour yet")]


def _filters(include_tags, exclude_tags, exclude_ids, created_after, created_before, new_only) -> dict:
    """The query-time filter fields the options gave, as /v1/recall and /v1/similar take them."""
    lists = {"include_tags": include_tags, "exclude_tags": exclude_tags, "exclude_ids": exclude_ids}
    out: dict = {name: [v.strip() for v in text.split(",") if v.strip()] for name, text in lists.items() if text}
    out.update(
        {k: v for k, v in (("created_after", created_after), ("created_before", created_before)) if v is not None}
    )
    return {**out, "new_only": True} if new_only else out


@app.command()
def similar(
    item_id: str,
    k: Annotated[int, typer.Option("-k", help="How many neighbours")] = 10,
    channel: Annotated[str, typer.Option(help="v2v or cluster")] = "v2v",
    include_tags: IncludeTags = None,
    exclude_tags: ExcludeTags = None,
    exclude_ids: ExcludeIds = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    new_only: NewOnly = False,
    api: Annotated[str | None, typer.Option(help="Ask a running API (e.g. http://127.0.0.1:8000)")] = None,
) -> None:
    """Print the k most similar items (the same JSON as GET /v1/similar/{id})."""
    from mmrecall.cli.query import QueryError, similar_items

    filters = _filters(include_tags, exclude_tags, exclude_ids, created_after, created_before, new_only)
    try:
        result = similar_items(get_settings(), item_id, k=k, channel=channel, filters=filters, api=api)
    except QueryError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@app.command()
def recall(
    user_id: Annotated[str | None, typer.Option(help="Recall from this user's stored history")] = None,
    history: Annotated[str | None, typer.Option(help="Or from these comma-separated item ids, oldest first")] = None,
    k: Annotated[int, typer.Option("-k")] = 20,
    channels: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated (default: {','.join(CHANNELS)}, and the fallbacks for a short history)"),
    ] = None,
    include_tags: IncludeTags = None,
    exclude_tags: ExcludeTags = None,
    exclude_ids: ExcludeIds = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
    new_only: NewOnly = False,
    api: Annotated[str | None, typer.Option(help="Ask a running API")] = None,
) -> None:
    """Print the merged recall set with provenance (the same JSON as POST /v1/recall)."""
    from mmrecall.cli.query import QueryError, recall_items

    body: dict = {"k": k}
    if channels:
        body["channels"] = [c.strip() for c in channels.split(",") if c.strip()]
    body |= _filters(include_tags, exclude_tags, exclude_ids, created_after, created_before, new_only)
    if user_id:
        body["user_id"] = user_id
    if history:
        body["history"] = [h.strip() for h in history.split(",") if h.strip()]
    try:
        result = recall_items(get_settings(), body, api=api)
    except QueryError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@app.command()
def status() -> None:
    """Catalogue counts by encode status, and the serving snapshot."""
    from mmrecall.storage import catalogue, snapshots
    from mmrecall.storage.db import session_scope

    settings = get_settings()
    with session_scope(settings.resolved_database_url) as session:
        counts = catalogue.count_by_status(session)
    current = snapshots.current_snapshot(settings.snapshots_dir)
    meta = snapshots.read_meta(current) if current else None
    typer.echo(json.dumps({"items": counts, "snapshot": meta, "vector_store": _store_status(settings)}, indent=2))


def _store_status(settings) -> dict:
    """Where the vectors are searched, and which collection the alias names (or why that is unknown)."""
    from mmrecall.index.store import StoreError, serving_store

    out = {"url": re.sub(r"//[^/@]+@", "//***@", settings.vector_store), "alias": settings.vector_store_alias}
    try:
        store = serving_store(settings.vector_store, home=settings.home)
        if store is not None:
            out["serving_collection"] = store.resolve(settings.vector_store_alias)
    except StoreError as exc:
        out["error"] = str(exc)
    return out


@app.command()
def encoders() -> None:
    """List the registered encoder variants."""
    from mmrecall.encoders import list_encoders

    for name in list_encoders():
        typer.echo(name)


EVAL_BASELINES = "random,popular,itemcf,mf,sasrec,text_v2v"  # evaluation.registry.BASELINES, without importing it


@app.command("eval")
def eval_cmd(
    dataset: Annotated[Path, typer.Option(help="Dataset directory (interchange format)")],
    out: Annotated[Path, typer.Option(help="Report JSON path")] = Path("report.json"),
    plot: Annotated[Path | None, typer.Option(help="PNG plot of hitRate@K per channel")] = None,
    channels: Annotated[
        str | None, typer.Option(help="Comma-separated mmrecall channels (none when only --baselines is given)")
    ] = None,
    baselines: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated baselines ({EVAL_BASELINES}; none when only --channels is given)"),
    ] = None,
    split: Annotated[str, typer.Option(help="test or valid (leave-last-item-out)")] = "test",
    protocol: Annotated[str, typer.Option(help="last, cold or both")] = "both",
    cache: Annotated[Path | None, typer.Option(help="Reuse encodings and models from here")] = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder behind the v2v channel")] = None,
    on_worker: Annotated[bool, typer.Option(help="Run as a Celery job and follow its progress")] = False,
    quick: Annotated[bool, typer.Option(help="A smoke run: 100 users, few training epochs, no tuning")] = False,
    g_train: Annotated[
        str | None, typer.Option(help="The train job's G parameters as JSON, e.g. '{\"disliked_rate\": 0}'")
    ] = None,
    sasrec_train: Annotated[
        str | None,
        typer.Option(
            help="SASRec's settings as JSON (finetune.sasrec.SASRecConfig; a dropout given is not tuned), "
            "e.g. '{\"patience\": 25}'; for the baseline and the served sequential channel"
        ),
    ] = None,
) -> None:
    """Evaluate recall channels and baselines on a dataset: JSON report, Markdown table, plot.

    MMRECALL_EVENTS says what each event is (e.g. \'{"rating": {"negative_at_most": 2}}\': 1-2 stars are
    dislikes): only positives are history and targets.

    --channels and --baselines select exactly what runs: with neither, every default channel and baseline;
    with one, only what it names."""
    for name in ("mmrecall.evaluation", "mmrecall.finetune"):  # training epochs and tuning steps, with ETA
        logging.getLogger(name).setLevel(logging.INFO)
    chosen_channels = [c.strip() for c in channels.split(",") if c.strip()] if channels else None
    chosen_baselines = [b.strip() for b in baselines.split(",") if b.strip()] if baselines else None
    if chosen_baselines is None:
        chosen_baselines = [] if chosen_channels else EVAL_BASELINES.split(",")
    elif chosen_channels is None:
        chosen_channels = []
    from mmrecall.evaluation.harness import plot_report, render_report, run_eval

    if sasrec_train:
        from dataclasses import fields

        from mmrecall.finetune.sasrec import SASRecConfig

        try:
            asked = json.loads(sasrec_train)
        except ValueError as exc:
            _fail(f"--sasrec-train is not JSON: {exc}")
        known = [f.name for f in fields(SASRecConfig)]
        if unknown := sorted(set(asked) - set(known)):
            _fail(f"--sasrec-train: unknown settings {unknown}; known: {', '.join(known)}")

    if on_worker:
        from mmrecall.pipeline.queue import submit_job

        params = {
            "dataset": str(dataset.resolve()),
            "out": str(out.resolve()),
            "split": split,
            "protocol": protocol,
            "plot": str(plot.resolve()) if plot else None,
            "cache": str(cache.resolve()) if cache else None,
            "encoder": encoder,
            "channels": chosen_channels,
            "baselines": chosen_baselines,
            "quick": quick,
        }
        report = _follow(submit_job(get_settings(), "eval", params), timeout=6 * 3600)
        typer.echo(render_report(report))
        return
    try:
        report = run_eval(
            dataset,
            channels=chosen_channels,
            protocol=protocol,
            split=split,
            cache=cache,
            encoder=encoder or get_settings().encoder,
            baselines=chosen_baselines,
            quick=quick,
            g_train=json.loads(g_train) if g_train else None,
            sasrec_train=json.loads(sasrec_train) if sasrec_train else None,
            events=get_settings().event_rules,
        )
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    typer.echo(render_report(report))
    if plot:
        plot_report(report, plot)
        typer.echo(f"\nplot: {plot}")
    typer.echo(f"report: {out}")


@app.command()
def demo(
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the API afterwards")] = True,
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Generate the demo catalogue, ingest it through a real worker, reindex, show similar items, serve."""
    from mmrecall.cli.demo import run_demo

    run_demo(get_settings(), serve=serve_api, port=port, broker_configured="MMRECALL_REDIS_URL" in os.environ)


@app.command()
def bench(
    name: Annotated[
        str,
        typer.Argument(
            help="encode, index, api, perf, faults, scaling, answers, served, homophily, store, train or soak"
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for NAME.json")] = Path("bench-out"),
    scale: Annotated[
        str,
        typer.Option(help="index: 100k, or 1m for 100k and 1M; perf, answers and store: 10k, 100k or 1m; soak: 1k-1m"),
    ] = "100k",
    dataset: Annotated[
        Path | None, typer.Option(help="served, homophily, train: a dataset directory (interchange format)")
    ] = None,
    encoder: Annotated[
        str | None, typer.Option(help="served: the encoder (default: the settings'); train: G's features")
    ] = None,
    encoders: Annotated[str | None, typer.Option(help="homophily: comma-separated encoders")] = None,
    sequential: Annotated[bool, typer.Option(help="served: `mmrecall train --sequential` (SASRec beside G)")] = False,
    user_tower: Annotated[str | None, typer.Option(help="train: G's user tower, pool or seq")] = None,
    minutes: Annotated[float | None, typer.Option(help="soak: how long the load runs (default 30)")] = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="soak: PostgreSQL to run on (default: a private server it can stop and start)"),
    ] = None,
) -> None:
    """Run a benchmark: prints a table and writes OUT/NAME.json."""
    from mmrecall.benchmarks import get_benchmark

    try:
        runner = get_benchmark(name)
    except KeyError as exc:
        _fail(str(exc))
    # only what was given: each has defaults
    given = {
        "dataset": dataset,
        "encoder": encoder,
        "encoders": encoders,
        "sequential": sequential,
        "user_tower": user_tower,
        "minutes": minutes,
        "database_url": database_url,
    }
    runner(out=out, scale=scale, redis_url=get_settings().redis_url, **{k: v for k, v in given.items() if v})
    typer.echo(f"wrote {out / (name + '.json')}")


def main() -> None:  # pragma: no cover - console entry
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
