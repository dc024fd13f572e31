"""Giving memory back to the operating system after big work.

CPython frees objects into its own allocator and glibc's, and both keep the
pages: a Flow that once held a 10,000-node plan, or a worker whose task built
it, would stay at that high-water mark for good. After big work (a long task
in a worker, a big workflow's keeper in Flow) :func:`release` collects
cycles and asks glibc to return its free pages (``malloc_trim``). It costs a
few milliseconds, so callers use it only after work that took far longer.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

__all__ = ["release"]

_trim: Callable[[int], int] | None = None
_looked = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform == "linux":
            import ctypes  # here: a process that never releases does not pay the import

            try:
                _trim = ctypes.CDLL(None).malloc_trim  # glibc only: musl has none
            except (OSError, AttributeError):
                _trim = None
    return _trim


def release(*, collect: bool = True) -> bool:
    """Return free heap pages to the OS where the C library can (glibc), after
    collecting garbage cycles unless ``collect`` is false (a full collection
    holds the GIL for as long as it takes to visit every live object). True if
    the C library was asked."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
