"""Giving memory back to the operating system after big work.

CPython frees objects into its own allocator and glibc's, and both keep the
pages: a Flow that once held a 10,000-node plan, or a worker whose task built
it, would stay at that high-water mark for good. After big work (a long task
in a worker, a big workflow's keeper in Flow) :func:`release` collects
cycles and asks glibc to return its free pages (``malloc_trim``). It costs a
millisecond or two, so callers use it only after work that took far longer.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable

__all__ = ["release"]


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
