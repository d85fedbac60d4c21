"""A child process's lifetime tied to its parent's (Linux's parent-death signal)."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent dies, however it dies (even SIGKILL), so
    nothing it started outlives it holding a port or finishing work nobody waits for. Elsewhere: a no-op."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
