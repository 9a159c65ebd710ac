"""Process-wide CPU runtime settings that make the model faster, applied once.

glibc returns every large freed block to the OS and page-faults it back in at the next
allocation; an autograd pass over an edge list allocates hundreds of such blocks, and this
was measured to take ~40% of a small model's energy+forces call on 2 cores (see
benchmarks/RESULTS.md). Raising the mmap and trim thresholds keeps freed memory in the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["configure_runtime", "thread_policy", "available_cores", "SMALL_CALL_EDGES"]

log = logging.getLogger(__name__)
_done = False

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def configure_runtime() -> None:
    """Tune glibc's allocator for torch's allocation pattern (once per process; a no-op off glibc
    or when ``EQUIFORMER_CALC_NO_MALLOPT=1``)."""
    global _done
    if _done:
        return
    _done = True
    if os.environ.get("EQUIFORMER_CALC_NO_MALLOPT") == "1":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    # 1 GiB thresholds: large blocks come from (and return to) the heap instead of mmap/munmap
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 1 << 30) and mallopt(_M_TOP_PAD, 256 << 20)
    log.debug("mallopt tuning %s", "applied" if ok else "refused")


#: below this many edges a model call runs on one thread (benchmarks/speed.py, "Thread policy"):
#: its operators are too small to gain from a second thread, and a single thread never waits
#: for a descheduled partner when other processes compete for the cores
SMALL_CALL_EDGES = 4000


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_policy(atoms: int, edges: int, cores: int | None = None) -> tuple[int, str]:
    """The measured default (threads, OMP_WAIT_POLICY) for one model call of this size: one thread
    below :data:`SMALL_CALL_EDGES` edges, else every available core; idle OpenMP threads sleep
    (``PASSIVE``) instead of spinning, which costs little on a quiet machine and avoids 10-20x
    slowdowns when other processes compete for the cores (benchmarks/RESULTS.md, "Thread policy")."""
    cores = available_cores() if cores is None else max(1, int(cores))
    return (1 if edges < SMALL_CALL_EDGES else cores), "PASSIVE"
