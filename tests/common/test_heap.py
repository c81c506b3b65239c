"""common.heap.trim_heap: freed heap pages go back to the OS on glibc."""

from __future__ import annotations

import ctypes.util
import platform

import numpy as np
import psutil
import pytest

from common.heap import trim_heap


@pytest.mark.skipif(
    platform.system() != "Linux" or "musl" in (ctypes.util.find_library("c") or ""),
    reason="glibc malloc_trim only",
)
def test_freed_holes_in_the_heap_leave_resident_memory():
    proc = psutil.Process()
    # A freed 32 MB block raises glibc's mmap threshold: the 1 MB arrays after it come from the heap.
    big = np.ones(32 * 2**20, dtype=np.uint8)
    del big
    arrays = [np.ones(2**20, dtype=np.uint8) for _ in range(256)]
    keep = arrays[1::2]  # every other array stays: the freed ones are holes that malloc cannot shrink away
    del arrays
    trim_heap()  # settle what an earlier test left
    before = proc.memory_info().rss
    del keep[:-1]
    after_free = proc.memory_info().rss
    assert trim_heap()
    after_trim = proc.memory_info().rss
    assert before - after_free < 32 * 2**20  # free() alone returns little
    assert after_free - after_trim > 64 * 2**20  # trimming returns most of the freed 128 MB


def test_trim_heap_is_safe_to_call_anywhere():
    assert trim_heap() in (True, False)
