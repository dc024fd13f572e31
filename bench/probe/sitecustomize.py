"""Timestamps at plait's message edges, for ``bench/timeline.py`` only.

``bench/timeline.py`` puts this directory on ``PYTHONPATH`` and sets
``PLAIT_PROBE`` to a directory; every Python process of the cluster then imports
this module at start-up (that is what ``sitecustomize`` is for), wraps plait's
``encode``, ``decode`` and ``Database.append``, and appends one line per call to
``<dir>/<pid>.log``: wall-clock nanoseconds (one clock for every process),
pid, thread name, and what happened. Without ``PLAIT_PROBE`` it does nothing.

A note costs ~15 µs here (a probed chain hop is ~0.3 ms slower than the
benchmark's), and every 64th note also writes its block to the file: stage
medians come out somewhat high, unevenly, so read them as shares.
"""

from __future__ import annotations

import os

if os.environ.get("PLAIT_PROBE"):
    import sys
    import threading
    import time
    from collections.abc import Callable
    from typing import Any

    import plait.actors.database as _database
    import plait.protocol.codec as _codec

    _DIR = os.environ["PLAIT_PROBE"]
    _BLOCK = 64  # lines per write
    _lines: list[tuple[int, str, str]] = []
    _lock = threading.Lock()  # Flow's threads note into one buffer

    def _forked() -> None:  # a child notes only its own, under a lock nobody holds
        global _lock
        _lock = threading.Lock()
        _lines.clear()

    os.register_at_fork(after_in_child=_forked)

    def _note(what: str) -> None:
        line = (time.time_ns(), threading.current_thread().name.replace(" ", "_"), what)
        with _lock:
            _lines.append(line)
            if len(_lines) < _BLOCK:
                return
            block = _lines[:]
            _lines.clear()
        pid = os.getpid()
        with open(f"{_DIR}/{pid}.log", "a") as f:
            f.write("".join(f"{t} {pid} {name} {what}\n" for t, name, what in block))

    def _encode(message: Any) -> bytes:
        _note("enc " + type(message).__name__)
        return _original_encode(message)

    def _decode(frame: bytes, **kwargs: Any) -> Any:
        message = _original_decode(frame, **kwargs)
        _note("dec " + type(message).__name__)
        return message

    def _append(self: Any, *args: Any, **kwargs: Any) -> None:
        _note("commit-begin")
        _original_append(self, *args, **kwargs)
        _note("commit-end")

    _original_encode: Callable[..., bytes] = _codec.encode
    _original_decode: Callable[..., Any] = _codec.decode
    _original_append: Callable[..., None] = _database.Database.append

    # Modules imported so far (plait's facade pulls in several) hold their own
    # reference to encode/decode: swap those too, not only the codec's.
    _swaps = {id(_original_encode): _encode, id(_original_decode): _decode}
    for _module in list(sys.modules.values()):
        if getattr(_module, "__name__", "").startswith("plait"):
            for _name, _value in list(vars(_module).items()):
                if id(_value) in _swaps:
                    setattr(_module, _name, _swaps[id(_value)])
    _database.Database.append = _append  # type: ignore[method-assign]
