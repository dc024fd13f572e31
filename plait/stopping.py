"""SIGINT and SIGTERM for the processes plait runs (Flow, supervisors, the CLI).

Only the main thread may install signal handlers: elsewhere (a Flow or a
supervisor run in a thread by a test) the block runs with the handlers as they
were, and whoever started the thread stops it. Handlers are restored after.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["on_signals", "stop_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def on_signals(action: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Inside the block, SIGINT or SIGTERM calls ``action(signal)``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: action(signal.Signals(signum)))
                for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """Inside the block, SIGINT or SIGTERM sets ``stop`` (a new Event if None)."""
    event = stop or threading.Event()
    with on_signals(lambda _sig: event.set()):
        yield event
