"""In-memory timers: retries' backoff, heartbeat ticks, orphan checks.

One thread and a heap. A callback runs on the timer thread, so it must be
quick and never block: in practice it tells an actor something. Durable timers
(that survive a Flow restart) come with the durability issue; until then a
restarted Flow re-queues ready nodes at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Timers"]

log = logging.getLogger(__name__)


class Timers:
    """``call_later(delay, fn)`` and ``every(interval, fn)`` on one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None], float | None]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="plait-timers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self._push(time.monotonic() + max(0.0, delay), fn, None)

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        self._push(time.monotonic() + interval, fn, interval)

    def _push(self, due: float, fn: Callable[[], None], period: float | None) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), fn, period))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._due():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                due, _, fn, period = heapq.heappop(self._heap)
                if period is not None:
                    nxt = max(due + period, time.monotonic())  # a late tick does not fire twice
                    heapq.heappush(self._heap, (nxt, next(self._order), fn, period))
            self._fire(fn)

    def _due(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= time.monotonic()

    @staticmethod
    def _fire(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a timer callback's bug must not stop every other timer
            log.exception("timer callback %r failed", fn)
