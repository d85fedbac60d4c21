"""Workers on several hosts: two worker processes with different host names on one broker share its
queue, and the task a killed worker had taken but not acknowledged is delivered to the other one by the
broker (Redis's visibility timeout), not by mmrecall's reconcile sweep, which this test turns off."""

from __future__ import annotations

import re
import time
from pathlib import Path

from mmrecall.benchmarks.faults import isolated_settings, kill, make_items, wait_terminal
from mmrecall.pipeline.ingest import ingest_items
from mmrecall.pipeline.runner import start_worker, wait_for_workers

TASK = re.compile(r"\[([0-9a-f-]{36})\] (received|succeeded)")


def task_ids(log: Path) -> tuple[set[str], set[str]]:
    """(received, succeeded) task ids in a worker's log."""
    received, succeeded = set(), set()
    for task, what in TASK.findall(log.read_text(errors="replace") if log.exists() else ""):
        (received if what == "received" else succeeded).add(task)
    return received, succeeded


def test_two_hosts_share_the_queue_and_a_killed_workers_task_goes_to_the_other(tmp_path: Path, redis_url: str) -> None:
    settings = isolated_settings(
        tmp_path,
        redis_url,
        queue_prefix="mmrecall-hosts",
        broker_visibility_s=3.0,
        reconcile_after_s=3600.0,  # the sweep would re-enqueue a lost batch too: here only the broker may
        reconcile_every_s=3600.0,
    )
    logs = {host: tmp_path / f"worker-{host}.log" for host in ("host-a", "host-b")}
    workers = {host: start_worker(settings, pool="solo", log_path=str(log), host=host) for host, log in logs.items()}
    try:
        assert wait_for_workers(settings, count=2) == 2
        ids = ingest_items(settings, make_items(settings, "h", 96, size=640))  # 12 batches of 8 large covers
        deadline = time.time() + 120
        while time.time() < deadline:  # host-a busy with a batch it has not acknowledged yet
            received, succeeded = task_ids(logs["host-a"])
            if received - succeeded:
                break
            time.sleep(0.005)
        kill(workers["host-a"])
        received_a, succeeded_a = task_ids(logs["host-a"])
        taken_by_a = received_a - succeeded_a
        assert taken_by_a, "host-a was killed with no task in hand"
        found = wait_terminal(settings, ids, timeout=180)
        assert {status for status, _ in found.values()} == {"ready"}, found
        received_b, succeeded_b = task_ids(logs["host-b"])
        assert taken_by_a <= succeeded_b  # the broker gave host-a's unacknowledged batch to host-b
        assert succeeded_b - taken_by_a  # host-b served the shared queue beside host-a as well
        assert "@host-a" in logs["host-a"].read_text() and "@host-b" in logs["host-b"].read_text()
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.terminate()
                process.wait(30)


def test_workers_run_at_a_lower_cpu_priority_than_the_api(tmp_path: Path, redis_url: str) -> None:
    """MMRECALL_WORKER_NICE (10 by default): beside the API on one machine, a training yields the CPU."""
    import psutil

    settings = isolated_settings(tmp_path / "home", redis_url, queue_prefix="mmrecall-nice", worker_nice=7)
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=str(settings.home / "worker.log"))
    try:
        wait_for_workers(settings, timeout=90)
        assert psutil.Process(worker.pid).nice() == psutil.Process().nice() + 7
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_job_runs_in_a_process_of_its_own_that_ends_with_it_or_with_its_worker(
    tmp_path: Path, redis_url: str
) -> None:
    """Train and reindex run in a child of the worker (pipeline/isolated.py): the job's memory goes back
    to the system when it ends, its error reaches the job row as the job wrote it, and a SIGKILLed worker
    takes its job's process with it (no orphan training activating a model)."""
    import psutil

    from mmrecall.core.demo_data import generate_demo
    from mmrecall.pipeline.ingest import bulk_ingest
    from mmrecall.pipeline.queue import submit_job
    from mmrecall.storage import catalogue
    from mmrecall.storage.db import session_scope

    settings = isolated_settings(tmp_path / "home", redis_url, queue_prefix="mmrecall-isolated")

    def job(job_id: str, timeout: float = 180) -> catalogue.Job:
        deadline = time.time() + timeout
        while True:
            with session_scope(settings.resolved_database_url) as session:
                row = catalogue.get_job(session, job_id)
                session.expunge(row)
            if row.state in ("succeeded", "failed") or time.time() > deadline:
                return row
            time.sleep(0.2)

    def job_process(worker) -> psutil.Process:
        deadline = time.time() + 60
        while time.time() < deadline:
            for child in psutil.Process(worker.pid).children(recursive=True):
                if "mmrecall.pipeline.isolated" in " ".join(child.cmdline()):
                    return child
            time.sleep(0.02)
        raise AssertionError("the job's process never appeared")

    log = str(settings.home / "worker.log")
    worker = start_worker(settings, concurrency=1, pool="solo", log_path=log)
    try:
        wait_for_workers(settings, timeout=90)
        failed = job(submit_job(settings, "train", {"epochs": 1, "features": ["tiny-test"]}))
        assert failed.state == "failed"
        assert failed.error.startswith("ValueError: the catalogue holds no interactions"), failed.error
        wait_for_workers(settings, timeout=60)  # a solo worker answers again once its task has returned

        demo = generate_demo(settings.media_roots[0] / "demo", per_leaf=3, users=12)
        assert bulk_ingest(settings, demo)["failed"] == 0
        params = {"epochs": 2, "features": ["tiny-test"], "activate": False}
        job_id = submit_job(settings, "train", params)
        child = job_process(worker)
        assert job(job_id).state == "succeeded"
        assert psutil.wait_procs([child], timeout=15)[0] == [child]  # it ended with its job, and its memory went
        wait_for_workers(settings, timeout=60)

        submit_job(settings, "train", {"epochs": 200, "features": ["tiny-test"], "activate": False})
        child = job_process(worker)
        kill(worker)
        gone, alive = psutil.wait_procs([child], timeout=15)
        assert child in gone and not alive
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)
