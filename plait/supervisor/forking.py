"""Forking a child that runs one function and exits: the zygote, its workers, and
the supervisor of ``plait dev``.

Forking copies a process's memory, not its threads: a lock another thread held
stays held in the child for ever. So plait forks only from a process with one
thread (:func:`single_threaded`), and the child never returns into its parent's
stack: it leaves through ``os._exit`` whatever happens, so no ``finally`` or
context manager of the parent runs twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("plait.supervisor")

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1


def single_threaded() -> bool:
    """Whether this process has one thread, native ones included (Linux's /proc
    counts them; ``threading`` knows only Python's)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


def default_signals() -> None:
    """As a fresh interpreter has them: Ctrl-C raises KeyboardInterrupt, SIGTERM kills."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies, even by SIGKILL (Linux's
    ``PR_SET_PDEATHSIG``); exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != parent:
        os._exit(1)


def fork_call(run: Callable[[], int | None],
              signals: Callable[[], None] = default_signals) -> int:
    """Fork a child that sets its signal handlers (``signals``), runs ``run`` and
    exits with its code (1 if it raised); returns the child's pid.

    SIGINT and SIGTERM stay blocked from before the fork until the child has set
    its handlers, so one sent in between waits for them instead of running the
    parent's (Linux keeps a blocked signal pending even where it is ignored)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # What exists now stays shared with the child until written: keep the collector
    # of either process from writing to it (Python's advice for fork without exec).
    gc.freeze()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return pid
    code = 1
    try:
        signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        code = run() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # the process edge: report, then exit with a failure code
        log.exception("process %d failed", os.getpid())
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, parent pid)`` of process ``pid`` from /proc; None if it is gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces or parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def descendants(pid: int, depth: int = 1) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...) from /proc;
    with ``depth=2``, grandchildren and below."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        stat = proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] != "Z":  # None: not a process, or it exited
            parents.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    todo = [(pid, 0)]
    while todo:
        parent, level = todo.pop()
        for child in parents.get(parent, []):
            if level + 1 >= depth:
                found.append(child)
            todo.append((child, level + 1))
    return found


def process_tree(pid: int) -> list[int]:
    """Every process below ``pid``, read from its threads' ``children`` files (a
    few reads, not a scan of every process on the host); the whole scan where the
    kernel does not offer those files."""
    if not Path(f"/proc/self/task/{threading.get_native_id()}/children").exists():
        return descendants(pid)
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # it ended meanwhile
        for tid in tasks:
            try:
                children = [int(c) for c in
                            Path(f"/proc/{parent}/task/{tid}/children").read_text().split()]
            except OSError:
                continue  # the thread ended meanwhile
            found += children
            todo += children
    return found
