"""Flow's clock: the one source of time for durable timers and event timestamps.

Retries' backoff, sleeps, timeouts and cron ticks all read ``FlowSettings.clock``
(anything with ``now() -> float``, seconds since the epoch), so tests replace
real time with a :class:`FakeClock` and fire a week of timers in a millisecond.
A clock may offer ``watch(fn)``: ``fn`` is called whenever time jumps, which
wakes the timer thread at once. Supervisor heartbeats and other liveness checks
are not durable and keep to the machine's monotonic time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["Clock", "FakeClock", "FileClock", "MonotonicClock", "WallClock"]


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    """Real time (the default)."""

    def now(self) -> float:
        return time.time()


class MonotonicClock:
    """The machine's monotonic time: for liveness, never stored."""

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """Time that moves only when told; ``advance`` wakes whoever watches it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._watchers: list[Callable[[], None]] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            now, watchers = self._now, list(self._watchers)
        for fn in watchers:
            fn()
        return now

    def watch(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._watchers.append(fn)

    def unwatch(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if fn in self._watchers:
                self._watchers.remove(fn)


class FileClock:
    """Time read from a file holding one number (for tests that run Flow in another
    process: they move its time by rewriting the file). Timers poll it often."""

    poll = 0.02

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._last = 0.0

    def now(self) -> float:
        with contextlib.suppress(OSError, ValueError):  # mid-rewrite: time stands still
            self._last = float(self.path.read_text().strip())
        return self._last

    @staticmethod
    def write(path: str, t: float) -> None:
        """Set the time atomically (write aside, then rename)."""
        tmp = Path(f"{path}.tmp")
        tmp.write_text(repr(t))
        tmp.replace(path)
