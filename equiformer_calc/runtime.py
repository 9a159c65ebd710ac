"""Process-wide CPU runtime settings, in one place: torch's threads, OpenBLAS's threads and the
allocator.

* :func:`set_threads`: torch's intra-op threads (every ``--threads`` option and worker goes through it).
* :func:`single_threaded_blas` / :func:`set_blas_threads`: OpenBLAS limited to one thread around tiny
  linear algebra (ASE optimizers, EMT), where threads only cost.
* :func:`configure_runtime`: glibc allocator tuning, applied once; :func:`heap_free_bytes` and
  :func:`release_memory` for the memory it keeps.
* :func:`available_memory` / :func:`total_memory`: the OS probes of the memory budget
  (/proc/meminfo, a cgroup v2 limit, glibc's free heap; a GPU's free memory), read by
  :class:`~equiformer_calc.memory.MemoryBudget`.
* :func:`call_threads` / :func:`thread_policy`: the threads of one model call, from its size and
  from how many cores other processes keep busy right now (:class:`CompetitionMeter`), with the
  OpenMP wait policy :func:`default_openmp_env` chose at import.

glibc returns every large freed block to the OS and page-faults it back in at the next
allocation; an autograd pass over an edge list allocates hundreds of such blocks, a large share
of a small model's energy+forces call (benchmarks/RESULTS.md, "Model speed" and "Timings formerly
in docstrings"). Raising the mmap threshold and never trimming keeps freed memory in the heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

__all__ = ["DeviceUnavailableError", "check_device", "configure_runtime", "heap_free_bytes", "release_memory", "available_memory", "total_memory", "set_threads", "set_blas_threads", "single_threaded_blas", "thread_policy",
           "call_threads", "competition", "CompetitionMeter", "default_openmp_env", "runnable_others", "available_cores",
           "SMALL_CALL_EDGES", "SPIN_COUNT", "BUSY_CORE_THRESHOLD"]

log = logging.getLogger(__name__)
_done = False


class DeviceUnavailableError(ValueError):
    """A torch device this build of torch or this machine does not have (the message says which and why)."""


def check_device(name: Any) -> Any:
    """``torch.device(name)`` if this torch build and machine can run on it, else
    :class:`DeviceUnavailableError` naming the device and the reason (a CPU-only build, no GPU
    visible, an index past the last GPU, no MPS), so a wrong ``device=`` is an error at set-up,
    not a crash inside the first model call."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceUnavailableError(f"{name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise DeviceUnavailableError(
                f"{str(name)!r} is not available: this torch ({torch.__version__}) is a CPU-only build; use cpu "
                f"or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceUnavailableError(f"{str(name)!r} is not available: torch sees no CUDA GPU on this machine "
                                         f"(check the driver and CUDA_VISIBLE_DEVICES); use cpu")
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(f"{str(name)!r} is not available: this machine has {count} CUDA GPU(s), "
                                         f"cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceUnavailableError(f"{str(name)!r} is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"device {str(name)!r} is not supported: use cpu, cuda[:N] or mps")
    return device

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def configure_runtime() -> None:
    """Tune glibc's allocator for torch's allocation pattern (once per process; a no-op off glibc
    or when ``EQUIFORMER_CALC_NO_MALLOPT=1``).

    Blocks up to 1 GiB come from the heap instead of mmap/munmap, and freed heap memory is kept
    (never trimmed) for the next call instead of being returned to the OS and page-faulted back
    (gigabytes per call on large structures, benchmarks/RESULTS.md). The process therefore keeps
    its largest call's peak; :func:`heap_free_bytes` counts that memory as available to the next
    call (:func:`available_memory`) and :func:`release_memory` hands it back on request."""
    global _done
    if _done:
        return
    _done = True
    if os.environ.get("EQUIFORMER_CALC_NO_MALLOPT") == "1":
        return
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return
    # -1: never trim the heap's top (glibc's default top pad, so that the free memory the heap
    # keeps is memory that was used: heap_free_bytes then counts little that was never touched)
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, -1)
    log.debug("mallopt tuning %s", "applied" if ok else "refused")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_free_bytes() -> int:
    """Bytes that glibc's heap holds for this process but does not use (``mallinfo2().fordblks``):
    memory a new allocation reuses without asking the OS; 0 off glibc >= 2.33."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return 0
    fn.restype = _MallInfo2
    return int(fn().fordblks)


def release_memory() -> bool:
    """Return the heap's free memory to the OS now (``malloc_trim(0)``), e.g. after the last large
    call of a long-lived process; True if some was released. (Free blocks inside the heap stay
    counted by :func:`heap_free_bytes` after their pages go back, so until the next large call
    ``available_memory`` may count them twice.)"""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


def _cgroup_memory() -> tuple[int, int] | None:
    """(limit, used) bytes of this process's cgroup (v2) when it has a memory limit, else None."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        return None if limit == "max" else (int(limit), used)
    except (OSError, ValueError):
        return None


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes that a new allocation can use now. CPU: ``MemAvailable`` of /proc/meminfo (psutil
    elsewhere), capped by a cgroup (v2) memory limit when one is set, plus the free memory glibc's
    heap holds for this process (:func:`heap_free_bytes`); ``None`` where it cannot be read
    (then "auto" enforces no budget). CUDA: the device's free memory plus what torch's
    caching allocator holds but does not use."""
    import torch  # only here: this module is imported before torch (see default_openmp_env)

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    avail: int | None = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            import psutil  # optional

            avail = int(psutil.virtual_memory().available)
        except (ImportError, AttributeError, OSError):
            return None
    # what glibc's heap keeps for this process (configure_runtime never trims it) is free to us;
    # part of it may never have been touched (not resident, so also in MemAvailable): never more
    # than all memory
    held = heap_free_bytes()
    cgroup = _cgroup_memory()
    if cgroup is not None:
        avail = min(avail, max(cgroup[0] - cgroup[1], 0))
    total = total_memory()  # capped by the cgroup limit too
    return avail + held if total is None else min(avail + held, total)


def total_memory(device: Any = "cpu") -> int | None:
    """All the memory of the device (bytes): physical memory capped by a cgroup (v2) limit for the
    CPU, the GPU's memory for CUDA; ``None`` where unknown. The most :func:`available_memory` can
    ever be: the service derives its edge limits from it."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
    cgroup = _cgroup_memory()
    if cgroup is not None:
        total = min(total, cgroup[0])
    return total if total > 0 else None


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
    ``eigh`` of a small Hessian; benchmarks/RESULTS.md, "Timings formerly in docstrings"), worse
    when workers compete for the cores; it also keeps the numerical environment the same in every
    process.
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


#: libgomp spin count the package sets (``GOMP_SPINCOUNT``) when the user has chosen neither it
#: nor ``OMP_WAIT_POLICY`` and nothing else runs at import (:func:`default_openmp_env`): an idle
#: OpenMP thread spins briefly, then sleeps. Spinning keeps two threads as fast as fully spinning
#: ones on a quiet machine (sleeping threads are several times slower on small calls) and the
#: short spin bounds the loss when another process takes a core mid-call (benchmarks/RESULTS.md,
#: "Thread policy").
SPIN_COUNT = "10000"

#: below this many edges a call runs on one thread when idle OpenMP threads sleep
#: (``OMP_WAIT_POLICY=PASSIVE``, chosen by :func:`default_openmp_env` or by the user): waking a
#: sleeping thread costs more than a small call gains from it
SMALL_CALL_EDGES = 4000

#: other processes' CPU use (in cores, on this process's cores) from which a call leaves a core
#: to them: a thread that shares its core with a busy process makes its partner wait at every
#: OpenMP barrier (orders of magnitude slower on a small slab: benchmarks/RESULTS.md, "Thread policy")
BUSY_CORE_THRESHOLD = 0.5


def _own_running() -> int:
    """Threads of this process that are running or runnable (``/proc/self/task/*/stat`` state R)."""
    count = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        count += state == "R"
    return max(count, 1)


def runnable_others(samples: int = 5, interval: float = 0.0005, path: str = "/proc/loadavg") -> int | None:
    """Threads of other processes that are running or waiting for a CPU now: the fewest of a few
    reads ~0.5 ms apart of the running count in ``/proc/loadavg``, less this process's own
    runnable threads (a busy process is runnable at every read, a passing one is not; this
    process's own OpenMP or OpenBLAS threads may spin too); ``None`` where it cannot be read."""
    counts = []
    for k in range(samples):
        try:
            with open(path) as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        counts.append(running - _own_running())
        if k + 1 < samples:
            time.sleep(interval)
    return max(0, min(counts))


def default_openmp_env(environ: MutableMapping[str, str] | None = None, others: int | None = -1) -> str | None:
    """Choose the package's OpenMP wait policy for this process, unless the user chose a spin count
    or a wait policy, or torch is already imported (the OpenMP runtime reads these once, when torch
    loads, so ``equiformer_calc/__init__`` calls this before anything imports torch).

    * Nothing else runnable now (``others`` = 0, default: :func:`runnable_others`):
      ``GOMP_SPINCOUNT=SPIN_COUNT``, idle threads spin briefly, then sleep: as fast as spinning
      threads on a quiet machine, where sleeping ones make small calls slower.
    * Another process busy: ``OMP_WAIT_POLICY=PASSIVE``, idle threads sleep at once: under
      competition spinning burns the share of the CPU the scheduler gives us while a partner
      thread waits to run, and sleeping threads were the fastest setting there.

    Returns the variable it set (``"GOMP_SPINCOUNT"`` / ``"OMP_WAIT_POLICY"``), or ``None``.
    """
    env = os.environ if environ is None else environ
    if "GOMP_SPINCOUNT" in env or "OMP_WAIT_POLICY" in env or (environ is None and "torch" in sys.modules):
        return None
    if others == -1:
        others = runnable_others()
    if others:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        return "OMP_WAIT_POLICY"
    env["GOMP_SPINCOUNT"] = SPIN_COUNT
    return "GOMP_SPINCOUNT"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _busy_seconds(cpus: set[int] | None, path: str = "/proc/stat") -> float | None:
    """Busy CPU seconds since boot of the given CPUs (all when ``None``): user, nice, system,
    irq, softirq and steal time from ``/proc/stat``; ``None`` where it cannot be read."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    ticks = 0
    found = False
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        f = [int(x) for x in rest.split()]
        # user nice system idle iowait irq softirq steal (guest time is inside user already)
        ticks += f[0] + f[1] + f[2] + sum(f[5:8])
        found = True
    return ticks / _CLOCK_TICKS if found else None


def _snapshot(stat_path: str) -> tuple[float, float, float | None]:
    """(monotonic time, this process's CPU seconds, busy seconds of its cores)."""
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except AttributeError:
        cpus = None
    return time.monotonic(), time.process_time(), _busy_seconds(cpus, stat_path)


try:
    _CLOCK_TICKS = float(os.sysconf("SC_CLK_TCK"))
except (AttributeError, ValueError, OSError):  # not POSIX
    _CLOCK_TICKS = 100.0


class CompetitionMeter:
    """How many cores other processes keep busy, on the cores this process may use.

    It reads the machine's busy time (``/proc/stat``, per CPU of the affinity mask) and this
    process's own CPU time, and reports ``(machine busy - own) / wall time`` over the window
    since the previous update. A window shorter than ``min_window`` seconds is too coarse for
    ``/proc/stat``'s 10 ms ticks, so the previous value stands until the window is long enough.
    Thread-safe; one per process (:func:`competition`)."""

    def __init__(self, min_window: float = 0.15, stat_path: str = "/proc/stat") -> None:
        self.min_window = float(min_window)
        self.stat_path = stat_path
        self._lock = threading.Lock()
        self._value: float | None = None
        self._base = _snapshot(stat_path)

    def busy_cores(self) -> float | None:
        """Cores kept busy by other processes over the latest window of at least ``min_window``
        seconds (ending now if the window since the last update is long enough); ``None`` before
        the first such window or where ``/proc/stat`` cannot be read."""
        with self._lock:
            if time.monotonic() - self._base[0] < self.min_window:  # too short to read: no /proc read
                return self._value
            now = _snapshot(self.stat_path)
            wall = now[0] - self._base[0]
            if now[2] is not None and self._base[2] is not None:
                self._value = max(0.0, ((now[2] - self._base[2]) - (now[1] - self._base[1])) / wall)
            self._base = now
            return self._value


_meter: CompetitionMeter | None = None
_meter_lock = threading.Lock()


def competition() -> CompetitionMeter:
    """The process's :class:`CompetitionMeter` (created on first use; its first window starts when
    this module is imported, so the first model call already has one)."""
    global _meter
    with _meter_lock:
        if _meter is None:
            _meter = CompetitionMeter()
            _meter._base = _IMPORT_SNAPSHOT
        return _meter


def _sleeping_threads(environ: Mapping[str, str] | None = None) -> bool:
    """True when idle OpenMP threads sleep at once (``OMP_WAIT_POLICY=PASSIVE`` and no spin count)."""
    env = os.environ if environ is None else environ
    return env.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE" and "GOMP_SPINCOUNT" not in env


def thread_policy(edges: int, cores: int | None = None, busy: float | None = None,
                  sleeping: bool | None = None) -> int:
    """The measured default number of threads for one model call (benchmarks/RESULTS.md, "Thread
    policy"), from its size, ``busy`` (cores other processes keep busy,
    :meth:`CompetitionMeter.busy_cores`; ``None``: unknown) and whether idle OpenMP threads sleep at
    once (``sleeping``; default: read from ``OMP_WAIT_POLICY``, see :func:`default_openmp_env`).

    * Briefly spinning threads: every core on a quiet machine; one fewer for each core another
      process holds beyond :data:`BUSY_CORE_THRESHOLD` (at least one), since a spinning thread
      whose partner waits for a CPU burns the time the partner needs.
    * Sleeping threads (chosen at import when another process was busy): every core from
      :data:`SMALL_CALL_EDGES` edges up (a waiting thread gives its core away, and the scheduler
      shares the cores per thread: against busy processes two sleeping threads beat one on
      hundreds of atoms), one thread below, where waking the other costs more than it gains and
      two threads sometimes land on one core. The measurements: benchmarks/RESULTS.md, "Thread
      policy".
    """
    cores = available_cores() if cores is None else max(1, int(cores))
    sleeping = _sleeping_threads() if sleeping is None else sleeping
    if sleeping:
        return 1 if edges < SMALL_CALL_EDGES else cores
    if busy is None:
        return cores
    return max(1, min(cores, cores - math.ceil(busy - BUSY_CORE_THRESHOLD)))


@contextlib.contextmanager
def call_threads(edges: int, limit: int | None = None) -> Iterator[int]:
    """Run one model call on :func:`thread_policy`'s threads for this size and the present
    competition (never more than ``limit``, default torch's setting), restoring torch's setting
    after; yields the thread count used."""
    import torch

    before = torch.get_num_threads()
    cap = before if limit is None else max(1, min(before, int(limit)))
    wanted = min(cap, thread_policy(edges, cores=cap, busy=competition().busy_cores()))
    if wanted == before:
        yield wanted
        return
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


#: the first window of the process's meter starts here, at import
_IMPORT_SNAPSHOT = _snapshot("/proc/stat")
