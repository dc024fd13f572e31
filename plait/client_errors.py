"""What the client raises: Flow's error replies and unfinished outcomes as exceptions.

Flow answers a request it cannot honour with an ``Error`` whose ``code`` is
stable; a workflow that did not succeed ends with a ``WorkflowResult`` whose
``error`` says why. Both become exceptions of :mod:`plait.errors` (or the
client's own below), so that callers catch causes, not codes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from plait.errors import (
    NonDeterminismError,
    PlaitError,
    PlanError,
    PromiseViolation,
    ProtocolError,
    TaskFailed,
    WorkflowCancelled,
)
from plait.protocol.messages import Error, WorkflowResult

__all__ = ["FlowError", "FlowUnavailable", "NotFound", "Refused", "ReplayDiverged", "ResultTimeout",
           "error_from_reply", "outcome_error", "rejection_error"]


class FlowUnavailable(PlaitError):
    """Flow did not answer within the client's timeout (down, or wrong address), or
    said it cannot answer now (restoring a workflow, stopping): worth retrying."""

    code = "unavailable"


class FlowError(PlaitError):
    """Flow answered a request with an error (``code`` is the wire's stable code)."""

    def __init__(self, code: str, reason: str, detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.detail = dict(detail or {})


class NotFound(FlowError):
    """No such workflow, node or schedule in Flow."""


class Refused(FlowError):
    """Flow refused an operator's control: the workflow has ended, a node to restart
    is still running, an attribute names no node or edge..."""


class ResultTimeout(PlaitError, TimeoutError):
    """``Run.result(timeout=...)`` expired before the workflow finished."""

    code = "timeout"


class ReplayDiverged(TaskFailed, NonDeterminismError):
    """The workflow failed because a task's replay diverged from its history.

    Both a :class:`TaskFailed` (the workflow failed) and a
    :class:`NonDeterminismError` (why); ``call_site`` is the divergent call's
    ``file:line`` as the worker reported it.
    """


def error_from_reply(error: Error) -> PlaitError:
    """The exception a Flow error reply means for the caller."""
    if error.code == "not_found":
        return NotFound(error.code, error.reason, error.detail)
    if error.code == "rejected" and error.detail.get("kind"):
        return rejection_error(error.detail)
    if error.code in {"malformed", "too_large", "unknown_type", "bad_version"}:
        return ProtocolError(error.code, error.reason)
    if error.code == "unavailable":  # Flow is starting or stopping: try again later
        return FlowUnavailable(f"Flow cannot answer now: {error.reason}")
    return FlowError(error.code, error.reason, error.detail)


def rejection_error(rejection: Mapping[str, Any]) -> PlaitError:
    """A rejection dict (``Rejection.to_dict()``) as the matching exception."""
    reason = str(rejection.get("reason") or rejection.get("message") or "rejected")
    kind = rejection.get("kind", "violation")
    if kind == "plan":
        return PlanError(reason)
    if kind == "nondeterminism":
        return NonDeterminismError(reason)
    violation = PromiseViolation(
        str(rejection.get("message") or reason), promise=str(rejection.get("promise") or ""),
        owner=rejection.get("owner"), proposer=rejection.get("proposer"),
        diff=dict(rejection.get("diff") or {}),
    )
    violation.reason = reason  # str() is the whole story; .reason just the broken rule
    return violation


# "... at examples/x.py:12" or "replay diverged at x.py:12:": the divergent line
_SITE = re.compile(r"\bat (\S+?:\d+)\b")


def outcome_error(result: WorkflowResult) -> PlaitError:
    """Why a finished workflow has no result, as the exception ``Run.result`` raises."""
    error = dict(result.error or {})
    message = str(error.get("message") or error.get("reason") or result.status)
    if result.status == "violated":
        inner = error.get("rejection")
        return rejection_error({"kind": "violation", **error, **(inner or {})})
    if result.status == "cancelled":
        return WorkflowCancelled(f"workflow {result.workflow_id} was cancelled")
    node = error.get("node")
    where = f" in {node}" if node else ""
    text = f"workflow {result.workflow_id} failed{where}: {error.get('type', 'Error')}: {message}"
    attempts = int(error.get("attempt") or error.get("attempts") or 0)
    if error.get("type") == "NonDeterminismError":
        diverged = ReplayDiverged(text, node=node, attempts=attempts, cause=error["type"])
        sites = _SITE.findall(message)
        diverged.call_site = sites[-1] if sites else None  # the run's, not the history's
        return diverged
    return TaskFailed(text, node=node, attempts=attempts, cause=error.get("type"))
