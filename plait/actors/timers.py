"""Timers: callbacks at a time of some clock, on one thread with a heap.

Flow runs two. One reads Flow's :mod:`clock` (``FlowSettings.clock``) and
serves the durable timers: retries' backoff, sleeps, timeouts and cron ticks.
Those are durable because what they stand for is stored (a retry's due time,
a wait's deadline, a schedule's next tick) and re-armed from the Store when
Flow starts; the heap itself is only memory. The other reads monotonic time and
serves liveness: supervisor heartbeats and orphan checks.

A callback runs on the timer thread, so it must be quick and never block: in
practice it tells an actor something.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable

from plait.actors.clock import Clock, MonotonicClock

__all__ = ["Timers"]

log = logging.getLogger(__name__)

MAX_WAIT = 1.0  # look at the clock at least this often: a wall clock may jump


class Timers:
    """``call_at(when, fn)``, ``call_later(delay, fn)`` and ``every(interval, fn)``."""

    def __init__(self, clock: Clock | None = None, name: str = "plait-timers") -> None:
        self.clock: Clock = clock or MonotonicClock()
        self._poll = float(getattr(self.clock, "poll", MAX_WAIT))
        self._heap: list[tuple[float, int, Callable[[], None], float | None]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        watch = getattr(self.clock, "watch", None)
        if watch is not None:
            watch(self.wake)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        unwatch = getattr(self.clock, "unwatch", None)
        if unwatch is not None:
            unwatch(self.wake)
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """The clock jumped: look at the heap again now."""
        with self._cond:
            self._cond.notify()

    def now(self) -> float:
        return self.clock.now()

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        self._push(when, fn, None)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self._push(self.clock.now() + max(0.0, delay), fn, None)

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        self._push(self.clock.now() + interval, fn, interval)

    def _push(self, due: float, fn: Callable[[], None], period: float | None) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), fn, period))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._due():
                    left = self._heap[0][0] - self.clock.now() if self._heap else self._poll
                    self._cond.wait(min(max(left, 0.0), self._poll))
                if self._stopped:
                    return
                due, _, fn, period = heapq.heappop(self._heap)
                if period is not None:
                    # a late tick does not fire twice
                    nxt = max(due + period, self.clock.now())
                    heapq.heappush(self._heap, (nxt, next(self._order), fn, period))
            self._fire(fn)

    def _due(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= self.clock.now()

    @staticmethod
    def _fire(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a timer callback's bug must not stop every other timer
            log.exception("timer callback %r failed", fn)
