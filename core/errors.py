"""Errors that say what is wrong with the deployment, not with the code: the API answers them with 503 and
a reason, the CLI with one line."""

from __future__ import annotations


class ServiceUnavailable(RuntimeError):
    """A dependency (broker, worker, database) does not answer; trying again later may succeed."""
