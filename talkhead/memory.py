"""Process memory helpers (glibc malloc settings, paging out mapped weights); no-ops where they do not apply.

:func:`separate_large_allocations` is what FOMM's first render of a batch shape (and its first
``detect``) runs under on CPU:
that frame builds the long-lived packed convolution weights in between its own large temporaries.
With glibc's default (dynamic) mmap threshold both land in the heap, and the freed temporaries stay
behind as holes the later frames only partly reuse, which raises the peak RSS; with the first frame's
(and first ``detect``'s) large blocks given their own mappings the peak is lower (measured:
``benchmarks/README.md``, "animate peak RSS", glibc settings table). Later frames take their
temporaries from a heap that is no longer trimmed after every frame (:data:`STEADY_TRIM_THRESHOLD`).

:func:`page_out` drops a memory-mapped checkpoint's pages from the resident set once the weights they
hold have been replaced by derived copies (FOMM's packed convolution weights).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import mmap
import sys
from typing import Iterator, Optional

M_TRIM_THRESHOLD = -1
"""glibc ``mallopt`` parameter number of the trim threshold (``malloc.h``)."""
M_TOP_PAD = -2
"""glibc ``mallopt`` parameter number of the top pad (``malloc.h``)."""
M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameter number of the mmap threshold (``malloc.h``)."""
MADV_PAGEOUT = 21
"""Linux ``madvise`` advice (``linux/mman.h``, kernel 5.4+): reclaim these pages now."""

SMALL_MMAP_THRESHOLD = 128 * 1024
"""glibc's initial mmap threshold: blocks of this size and up get their own mapping."""

STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024
"""glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit: where its dynamic threshold ends up once a large
block has been freed (as it is after loading the checkpoints), fixed here after the first frame."""
STEADY_TRIM_THRESHOLD = 256 * 1024 * 1024
"""Free memory glibc keeps at the top of the heap after the first frame (its default, 128 KiB, once the
mmap threshold is fixed): a frame frees and reallocates its temporaries (8-17 MiB blocks) at the top of the
heap, which the default trims and the next frame faults in again, page by page (measured:
``benchmarks/README.md``, "glibc settings for the steady render")."""
STEADY_TOP_PAD = 64 * 1024 * 1024
"""Extra heap glibc asks the system for when the heap grows after the first frame (default 128 KiB): fewer
``brk`` calls; pages count towards the resident set only once written."""


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
    maximum of its dynamic threshold), the trim threshold at :data:`STEADY_TRIM_THRESHOLD` and the top
    pad at :data:`STEADY_TOP_PAD` (the steady render's settings). Yields whether it applied (glibc on
    Linux); elsewhere a no-op.
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
        libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)
        libc.mallopt(M_TOP_PAD, STEADY_TOP_PAD)


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


@functools.lru_cache(maxsize=1)
def _madvise():
    """glibc's ``madvise`` with its argument types set, or ``None`` where there is no glibc."""
    libc = _glibc()
    fn = getattr(libc, "madvise", None)
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def page_out(tensors) -> int:
    """Take the memory pages of ``tensors``' storages out of the process's resident set now (Linux
    ``madvise(MADV_PAGEOUT)``, kernel 5.4+); returns the bytes advised (0 where it does not apply:
    another OS, an older kernel, CUDA tensors, storages smaller than a page).

    For weights memory-mapped from a checkpoint file (``torch.load(mmap=True)`` loaded with
    ``load_state_dict(assign=True)``) once a derived copy replaces them (a packed or transformed
    convolution weight): clean file pages are dropped and read back from the file if touched again, so
    values never change; a page written since it was mapped stays (or is swapped) with its content. Only
    whole pages inside each storage are advised, nothing beside it. Not for anonymous memory: the
    kernel would write it to swap where there is some.

    Args:
        tensors: an iterable of tensors (``torch.Tensor``, any shape; storages shared by several count once).

    Returns:
        Bytes advised (whole 4 KiB pages on x86-64); it raises nothing: a refused call (``EINVAL`` on a
        kernel without ``MADV_PAGEOUT``) stops the loop and leaves the rest resident.
    """
    madvise = _madvise()
    if madvise is None:
        return 0
    page = mmap.PAGESIZE
    seen, advised = set(), 0
    for t in tensors:
        if t is None or t.device.type != "cpu":
            continue
        storage = t.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
        if start in seen:
            continue
        seen.add(start)
        first, end = -(-start // page) * page, (start + size) // page * page
        if end > first:
            if madvise(first, end - first, MADV_PAGEOUT) != 0:
                return advised  # EINVAL: no MADV_PAGEOUT here (older kernel); nothing else will work either
            advised += end - first
    return advised
