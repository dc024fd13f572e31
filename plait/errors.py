"""One exception root, subclassed by what the caller can do about it."""

from __future__ import annotations

from typing import Any


class PlaitError(Exception):
    """Root of every error plait raises on purpose."""

    code = "plait_error"


class PromiseViolation(PlaitError):
    """A diff broke a promise; the workflow was terminated.

    Carries which promise, the node it is attached to, the node that proposed
    the offending diff, and a summary of that diff.
    """

    code = "promise_violation"

    def __init__(
        self,
        reason: str,
        *,
        promise: str = "",
        owner: str | None = None,
        proposer: str | None = None,
        diff: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.promise = promise
        self.owner = owner
        self.proposer = proposer
        self.diff = diff or {}


class PlanError(PlaitError):
    """A diff breaks a structural rule of the plan (unknown node, cycle, edge into a
    started node). Like a violation, it is the proposer's bug, not the engine's."""

    code = "plan_error"


class NonDeterminismError(PlaitError):
    """A replayed task diverged from its recorded history."""

    code = "non_determinism"

    def __init__(self, message: str, *, expected: Any = None, actual: Any = None,
                 call_site: str | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual
        self.call_site = call_site


class TaskFailed(PlaitError):
    """A task (or the workflow's root) failed after exhausting its attempts."""

    code = "task_failed"

    def __init__(self, message: str, *, node: str | None = None, attempts: int = 0,
                 cause: str | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.attempts = attempts
        self.cause = cause


class StepFailed(PlaitError):
    """A replayed durable step raises what its function raised when it ran, but that
    exception's type could not be rebuilt here (not imported in this worker, not an
    ``Exception``, or not makeable without its ``__init__``): ``type`` names it and
    ``message`` is its text."""

    code = "step_failed"

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type = type_name
        self.message = message


class WorkflowCancelled(PlaitError):
    """The workflow was cancelled before it finished."""

    code = "cancelled"


class ProtocolError(PlaitError):
    """A message could not be understood; `code` is stable and goes on the wire."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class MessageTooLarge(ProtocolError):
    """A message a worker would send is over its supervisor's limit. Not retried:
    another attempt would build it as big again."""

    def __init__(self, reason: str) -> None:
        super().__init__("too_large", reason)


class DatabaseInUse(PlaitError):
    """Another Flow holds the database: stop it, or give this one another file.
    Two Flows on one file would both run its unfinished workflows."""


class GraphvizMissing(PlaitError):
    """Graphviz's ``dot`` program, which draws SVG, PNG and PDF, is not installed:
    install Graphviz, or ask for DOT or JSON, which need no program."""


class ShapeError(PlaitError, ValueError):
    """A Shape expression cannot be enforced (for example, ambiguous alternatives)."""

    code = "bad_shape"
