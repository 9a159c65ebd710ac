"""Process-wide CPU runtime settings, in one place: torch's threads, OpenBLAS's threads and the
allocator.

* :func:`set_threads`: torch's intra-op threads (every ``--threads`` option and worker goes through it).
* :func:`single_threaded_blas` / :func:`set_blas_threads`: OpenBLAS limited to one thread around tiny
  linear algebra (ASE optimizers, EMT), where threads only cost.
* :func:`configure_runtime`: glibc allocator tuning, applied once.

glibc returns every large freed block to the OS and page-faults it back in at the next
allocation; an autograd pass over an edge list allocates hundreds of such blocks, and this
was measured to take ~40% of a small model's energy+forces call on 2 cores (see
benchmarks/RESULTS.md). Raising the mmap and trim thresholds keeps freed memory in the heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Iterator

__all__ = ["configure_runtime", "set_threads", "set_blas_threads", "single_threaded_blas", "thread_policy",
           "available_cores", "SMALL_CALL_EDGES"]

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


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads of this process (``None`` or 0: leave torch's default)."""
    if not threads:
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be a positive number, got {threads}")
    import torch

    torch.set_num_threads(int(threads))


def _openblas_thread_controls() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """``(get, set)`` thread-count functions of every OpenBLAS loaded in this process (Linux).

    EMT and BFGS work on tiny matrices, where threaded BLAS is several times *slower* (BFGS's
    ``eigh`` of a ~120x120 Hessian: 2 ms single-threaded vs 10-40 ms threaded, worse when workers
    compete for the cores); it also keeps the numerical environment the same in every process.
    """
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    controls.append((get, set_))
    return controls


def set_blas_threads(threads: int) -> None:
    """Set the threads of every OpenBLAS loaded in this process (e.g. 1 in a worker process)."""
    for _, set_ in _openblas_thread_controls():
        set_(int(threads))


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the body with OpenBLAS limited to one thread, restoring the previous setting after."""
    previous = [(int(get()), set_) for get, set_ in _openblas_thread_controls()]
    for _, set_ in previous:
        set_(1)
    try:
        yield
    finally:
        for n, set_ in previous:
            set_(n)


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
