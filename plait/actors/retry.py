"""Retry policies as Flow sees them: plain dicts from supervisors' Hello messages.

A task's ``Retry(max_attempts, initial, backoff, maximum, non_retryable)`` travels
as ``TaskInfo.retry``; Flow never imports task code, so it reads the dict and
falls back to the default for anything missing or malformed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.protocol.messages import TaskInfo

__all__ = ["SUPERVISOR_LOST", "RetryPolicy"]

SUPERVISOR_LOST: dict[str, Any] = {
    "type": "SupervisorLost", "retryable": True,
    "message": "the supervisor running this attempt stopped answering",
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    initial: float = 1.0
    backoff: float = 2.0
    maximum: float = 60.0
    non_retryable: frozenset[str] = frozenset()

    @classmethod
    def of(cls, info: TaskInfo | None) -> RetryPolicy:
        """The task's policy; the default when the task or its policy is unknown."""
        if info is None or not info.retry:
            return cls()
        return cls.from_dict(info.retry)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RetryPolicy:
        default = cls()
        names = d.get("non_retryable") or ()
        return cls(
            max_attempts=_number(d.get("max_attempts"), default.max_attempts, int),
            initial=_number(d.get("initial"), default.initial, float),
            backoff=_number(d.get("backoff"), default.backoff, float),
            maximum=_number(d.get("maximum"), default.maximum, float),
            non_retryable=frozenset(str(n) for n in names) if isinstance(names, list | tuple)
            else frozenset(),
        )

    def retries(self, error: Mapping[str, Any], attempt: int) -> bool:
        """Whether a failure of attempt ``attempt`` with ``error`` is tried again."""
        retryable = error.get("retryable", True) is not False
        return (retryable and str(error.get("type")) not in self.non_retryable
                and attempt < self.max_attempts)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the attempt after ``attempt``."""
        try:
            grown = self.initial * self.backoff ** min(max(0, attempt - 1), 64)
        except OverflowError:  # a steep backoff: long past the cap
            return self.maximum
        return float(min(grown, self.maximum))


def _number(value: Any, default: Any, kind: type) -> Any:
    # Finite only: inf attempts made int() raise, inf or nan delays broke the timers.
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and 0 <= value < math.inf:
        return kind(value)
    return default
