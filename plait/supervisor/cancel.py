"""Cancelling a running attempt: ask nicely, then SIGTERM, then SIGKILL.

The worker is first told (CancelTask), so the task raises WorkflowCancelled at
its next Context call or await and can clean up. A task that does not notice
within ``grace`` seconds gets SIGTERM, and SIGKILL ``kill_grace`` seconds later.
The pool then restarts the worker like any other death.

The Relay sends CancelTask to the worker and tells the WorkerPool actor
``Cancel``; these deadlines belong to that actor (folded into its timer rather
than a separate actor, because the signals go to processes only the pool
owns), which clears them on ``Settle`` (the attempt ended) or when it reaps
the worker.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass
class _Cancel:
    started: float
    terminated: bool = False


class Canceller:
    """Escalation deadlines for the attempts being cancelled, by worker identity."""

    def __init__(self, grace: float = 5.0, kill_grace: float = 2.0) -> None:
        self.grace = grace
        self.kill_grace = kill_grace
        self._cancels: dict[bytes, _Cancel] = {}

    def start(self, ident: bytes, now: float) -> None:
        self._cancels.setdefault(ident, _Cancel(now))

    def clear(self, ident: bytes) -> None:
        self._cancels.pop(ident, None)

    def __contains__(self, ident: bytes) -> bool:
        return ident in self._cancels

    def due(self, now: float) -> list[tuple[bytes, int]]:
        """Signals to send now: ``(worker identity, signal)``."""
        out: list[tuple[bytes, int]] = []
        for ident, c in self._cancels.items():
            if not c.terminated and now >= c.started + self.grace:
                c.terminated = True
                out.append((ident, signal.SIGTERM))
            elif c.terminated and now >= c.started + self.grace + self.kill_grace:
                out.append((ident, signal.SIGKILL))
        return out
