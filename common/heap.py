"""Hand the C heap's free pages back to the operating system between units of long-lived work."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim_heap"]


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        func = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if func is not None:
        func.argtypes, func.restype = [ctypes.c_size_t], ctypes.c_int
    return func


def trim_heap() -> bool:
    """Return the heap's free memory to the OS (glibc ``malloc_trim(0)``); True if anything was released.

    glibc raises its mmap threshold after a large block is freed, so the next large arrays come from the heap and
    their pages stay resident after they are freed: a Ray worker that polygonises one chunk after another keeps the
    high-water mark of the largest chunk for its whole life. Call this after each unit of work, not inside a loop
    (re-faulting the pages costs time).
    """
    func = _malloc_trim()
    return bool(func(0)) if func is not None else False
