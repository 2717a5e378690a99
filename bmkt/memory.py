"""How this process gets and gives back memory: settings made when bmkt is imported.

bmkt builds many large, short-lived arrays (tens of millions of events at a
million customers). Where fresh memory is expensive -- virtual machines that
hand free pages back to the host, so that the first touch of a page is a trip
through the hypervisor -- how the C allocator and numpy ask the kernel for
memory decides a good part of the run time. Two settings are made at
``import bmkt``, each chosen by an environment variable:

* :func:`hugepages_off_unless_asked` (``NUMPY_MADVISE_HUGEPAGE=1`` keeps
  numpy's default);
* :func:`keep_freed_memory`, only when ``BMKT_KEEP_FREED_MEMORY=1`` is
  exported (opt-in); :func:`release_memory` hands what is kept back to the
  system.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536  # glibc's DEFAULT_MMAP_MAX

#: The environment variable that turns :func:`keep_freed_memory` on when ``1``.
KEEP_FREED_MEMORY_ENV = "BMKT_KEEP_FREED_MEMORY"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def _glibc() -> Any:
    """The C library of this process (a ``ctypes.CDLL``) when it is glibc, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # here: a Python built without ctypes still imports bmkt

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (ImportError, OSError, AttributeError):
        return None
    return libc


def hugepages_off_unless_asked() -> None:
    """Stop numpy asking the kernel for transparent huge pages, unless the user chose.

    numpy marks every array of 4 MB or more with ``madvise(MADV_HUGEPAGE)``.
    Where the kernel's THP ``defrag`` setting is ``madvise`` (the common
    default) and memory is fragmented (virtual machines that return free
    pages to the host), each such page fault waits on direct compaction: on
    the benchmark VM, allocating 2 GB took 29 s instead of 0.8 s, and the 1M
    customer job ran 320 s instead of 265 s. bmkt builds many large
    per-customer arrays, so it turns the advice off. Export
    ``NUMPY_MADVISE_HUGEPAGE=1`` to keep numpy's default; the setting is also
    put in the environment so that processes started afterwards (papermill
    kernels, a local Spark session's Python workers) get the same. Executors
    of a Spark cluster need it in ``spark.executorEnv``.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return  # the user chose; numpy read it at import
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    from numpy._core import multiarray  # numpy >= 2 (pyproject)

    setter = getattr(multiarray, "_set_madvise_hugepage", None)  # private: may go away
    if setter is not None:
        setter(False)


def keep_freed_memory() -> bool:
    """Let glibc keep memory freed by this process for its next allocations.

    By default glibc serves every allocation of 32 MB or more (most of
    bmkt's arrays: a column of 50M events is 400 MB) with its own ``mmap``
    and returns it to the kernel when freed, and it trims the heap's free
    top. The next array then starts on fresh pages, which the kernel zeroes
    on first touch. On the benchmark VM that first touch cost 1.5-20 us a
    page, depending on what the host had to back: the 1M-customer job spent
    95 of its 309 CPU seconds in the kernel, most of it zeroing pages.

    With ``BMKT_KEEP_FREED_MEMORY=1`` exported, this sets ``M_MMAP_MAX=0``
    (allocations come from the heap, where freed blocks are reused) and an
    unlimited ``M_TRIM_THRESHOLD`` (the heap is not trimmed), so the process
    holds on to the memory of its largest step until :func:`release_memory`
    or its end. Only the main thread's large blocks are covered: glibc
    still maps a worker thread's blocks above 64 MB apart and unmaps them
    when freed. It is opt-in: two pairs of runs of the 1M job on the
    benchmark VM took 153.3 and 156.5 s with it, 155.4 and 157.4 s without;
    and a heap that never shrinks can hold more than the live memory (holes
    between blocks in use), which was not measured at 10M customers, where
    the job peaks at 20 of 24 GB. A no-op where the C library is not glibc.

    Returns
    -------
    bool
        Whether the setting was made.
    """
    value = os.environ.get(KEEP_FREED_MEMORY_ENV, "").strip().lower()
    if value not in _ON:
        if value not in _OFF:
            warnings.warn(
                f"{KEEP_FREED_MEMORY_ENV}={os.environ[KEEP_FREED_MEMORY_ENV]!r} is not understood "
                "(use 1 to keep freed memory, 0 for glibc's default); glibc's default stays.",
                RuntimeWarning,
                stacklevel=2,
            )
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt takes an int: -1 becomes SIZE_MAX, "never trim"
    if libc.mallopt(_M_MMAP_MAX, 0) != 1:
        log.debug("mallopt refused M_MMAP_MAX; glibc's defaults stay")
        return False
    if libc.mallopt(_M_TRIM_THRESHOLD, -1) != 1:
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)  # both or neither
        log.debug("mallopt refused M_TRIM_THRESHOLD; glibc's defaults stay")
        return False
    return True


def release_memory() -> bool:
    """Give the memory this process has freed but kept (:func:`keep_freed_memory`) back to the system.

    Calls glibc's ``malloc_trim(0)``, which returns the free pages of every
    heap, not only its top. Useful in a notebook kernel between large jobs;
    the next large step then starts on fresh pages again.

    Returns
    -------
    bool
        Whether any memory was returned (``False`` also where the C library
        is not glibc).
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
