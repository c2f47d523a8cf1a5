"""Process memory helpers (glibc malloc settings); no-ops where they do not apply.

:func:`separate_large_allocations` is what FOMM's first render of a batch shape (and its first
``detect``) runs under on CPU:
that frame builds the long-lived packed convolution weights in between its own large temporaries.
With glibc's default (dynamic) mmap threshold both land in the heap, and the freed temporaries stay
behind as holes the later frames only partly reuse, which raises the peak RSS; with the first frame's
(and first ``detect``'s) large blocks given their own mappings the peak is lower (measured:
``benchmarks/README.md``, "animate peak RSS", glibc settings table). Later frames are not affected
(their temporaries come from the heap as before: no extra page faults per frame).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from typing import Iterator, Optional

M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameter number of the mmap threshold (``malloc.h``)."""

SMALL_MMAP_THRESHOLD = 128 * 1024
"""glibc's initial mmap threshold: blocks of this size and up get their own mapping."""

STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit: where its dynamic threshold ends up once a large
block has been freed (as it is after loading the checkpoints), fixed here after the first frame."""


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt thresholds to speak of)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def separate_large_allocations() -> Iterator[bool]:
    """Inside: every allocation of 128 KiB or more gets its own memory mapping (glibc
    ``M_MMAP_THRESHOLD``), so it is returned to the system when freed and long-lived blocks made in
    between do not pin heap holes; on exit the threshold is fixed at 32 MiB (glibc's own 64-bit
    maximum of its dynamic threshold). Yields whether it applied (glibc on Linux); elsewhere a no-op.
    Process-wide (malloc has no per-thread setting); values computed inside are unaffected.
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_THRESHOLD, SMALL_MMAP_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)


def return_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``, which also releases
    whole free pages in the middle of the heap); returns whether it applied (glibc on Linux).

    For after dropping a large long-lived object (a model's weights): without it the freed pages stay
    in the process's resident set until malloc reuses them.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
