"""Allocator settings for a process that handles a few large arrays at a time.

Every step allocates and frees volumes of 10-50 MB (masks, distance maps, resampled images).
By default glibc maps each of them afresh from the kernel and unmaps it when freed, so every
allocation pays for zeroed pages again (about 300,000 page faults and 1-2 s of system time per
whole-body case on a small virtual machine). Keeping freed memory in the heap lets the next
volume reuse it. Peak memory is unchanged: the same arrays are alive at the peak. numpy's
transparent-huge-page advice is switched off for the same reason (:func:`avoid_huge_page_stalls`).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc's largest allowed mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
TRIM_THRESHOLD = 1024 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Let glibc serve volumes up to 32 MB from the heap and keep up to 1 GB of freed heap
    for reuse; returns False (and changes nothing) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another C library: leave it as it is
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and mallopt(_M_TOP_PAD, TOP_PAD))


def avoid_huge_page_stalls() -> bool:
    """Stop numpy advising the kernel to back its large arrays with transparent huge pages;
    returns True when the setting was changed here.

    numpy marks every array of 4 MB or more ``MADV_HUGEPAGE``. Where the kernel's THP
    ``defrag`` setting is ``madvise`` (a common default), a page fault in such an array may
    compact memory synchronously, and a case that allocates hundreds of fresh volumes pays for
    it in system time: on a 2-core virtual machine about 1 s of a 5-6 s whole-body case
    (``benchmarks/bench_pipeline.py``; system time 2.4 s with, 1.3 s without). A user's own
    ``NUMPY_MADVISE_HUGEPAGE`` is kept, as is numpy's default where it offers no switch.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return False
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:
        try:  # numpy 1.x
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return False
    _set_madvise_hugepage(False)
    return True
