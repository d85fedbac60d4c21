"""A job's work in a process of its own, so the worker's memory does not keep the job's working set.

A training or an index build at 100k items takes the worker from about 1.2 GB to over 2 GB, and the
allocator keeps most of it after the job returns (bench soak: +67-133% for a worker that ran a
training). Run in a child, the job's memory goes back to the system when the child exits, whatever pool
the worker uses. The child is a fresh interpreter, not a fork of the worker: the worker's OpenMP threads
and pooled database connections do not survive a fork. It dies with its worker (Linux's parent-death
signal), so a SIGKILLed worker leaves no orphan training to activate a model nobody watches.

`python -m mmrecall.pipeline.isolated MODULE:FUNCTION RESULT_PATH ARG...` calls FUNCTION(settings, *ARGS)
and writes its JSON result, or its error, to RESULT_PATH.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from mmrecall.core.lifetime import die_with_parent

log = logging.getLogger(__name__)


class JobProcessError(RuntimeError):
    """The job's process failed: its own error, or the signal that ended it."""


def run_isolated(target: str, *args: str) -> dict:
    """Run `target` ("module:function", called as function(settings, *args)) in a child Python process;
    its result dict, or JobProcessError with the child's error or the signal that killed it."""
    with tempfile.TemporaryDirectory(prefix="mmrecall-job-") as tmp:
        result_path = Path(tmp) / "result.json"
        started = time.time()
        command = [sys.executable, "-m", "mmrecall.pipeline.isolated", target, str(result_path), *args]
        child = subprocess.Popen(command, env={**os.environ, "MMRECALL_JOB_PARENT": str(os.getpid())})
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        log.info(
            "%s%s ran in process %d: %.0fs, peak resident %.0f MB, exit %d",
            target,
            args,
            child.pid,
            time.time() - started,
            usage.ru_maxrss / 1024,
            child.returncode,
        )
        outcome = json.loads(result_path.read_text()) if result_path.is_file() else None
    if outcome is not None and "result" in outcome:
        return outcome["result"]
    if outcome is not None:
        raise JobProcessError(outcome["error"])
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        hint = " (the system's out-of-memory killer, or an operator)" if name == "SIGKILL" else ""
        raise JobProcessError(f"the job's process {child.pid} was ended by {name}{hint}")
    raise JobProcessError(f"the job's process {child.pid} exited with status {child.returncode} and no result")


def main(argv: list[str]) -> int:
    # armed here rather than between fork and exec (preexec_fn is unsafe in the worker's threaded process)
    die_with_parent(signal.SIGKILL)
    if os.getppid() != int(os.environ.get("MMRECALL_JOB_PARENT", "0")):  # the worker died before it was armed
        return 1
    target, result_path, args = argv[0], Path(argv[1]), argv[2:]
    from mmrecall.core.settings import get_settings

    settings = get_settings()
    if settings.torch_threads > 0:  # as the worker's own processes (workers.app)
        import torch

        torch.set_num_threads(settings.torch_threads)
    module, _, name = target.partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(settings, *args)
    except Exception as exc:
        traceback.print_exc()
        result_path.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    result_path.write_text(json.dumps({"result": result}, default=str))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # no interpreter teardown (seconds with torch loaded): the job's row and result are written, and the
    # worker answers again (a ping, the next task) as soon as this process is gone
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
