"""Giving memory back to the operating system after big work.

CPython frees objects into its own allocator and glibc's, and both keep the
pages: a Flow that once held a 10,000-node plan, or a worker whose task built
it, would stay at that high-water mark for good. After big work (a long task
in a worker, a big workflow's keeper in Flow) :func:`release` collects
cycles and asks glibc to return its free pages (``malloc_trim``). It costs a
millisecond or two, so callers use it only after work that took far longer.

:func:`tune_gc` sets the cycle collector's pace in plait's own processes
(Flow, supervisor, zygote, worker): see its docstring for why.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable

__all__ = ["GC_THRESHOLD", "release", "tune_gc"]

# Collect the youngest generation every 20,000 new container objects instead of
# Python's 700 (the older generations keep their ratios).
GC_THRESHOLD = (20_000, 10, 10)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    import ctypes  # here: a process that never releases does not pay the import

    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None


def release() -> bool:
    """Collect garbage cycles, then return free heap pages to the OS where the C
    library can (glibc). True if the C library was asked."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def tune_gc() -> None:
    """Collect cycles less often: plait's own processes (never a client's).

    Python's collector runs after every 700 new container objects, and each run
    looks at every young object; objects that survive a few runs are looked at
    again in the older generations. A big proposal allocates hundreds of
    thousands of objects that all survive until it is sent or applied (a
    10,000-child map: its specs, its wire dict, the decoded frame), so they are
    walked over and over: about a third of the time a worker takes to build and
    encode such a map. The messages of a running workflow make no cycles worth
    collecting sooner (reference counting frees them), so collecting every
    20,000 objects costs no memory that shows (the bench's PSS of the cluster is
    unchanged) and saves time on every workload (bench/RESULTS.md, "What
    changed").
    """
    gc.set_threshold(*GC_THRESHOLD)
