"""The project's one thread-count rule, ``threads_for(others_busy, cores)``: for every GGUF that Iris, evaluation, export or
the benchmark runs, and for torch in training and evaluation (``torch_threads``). Decode and prompt threads (llama.cpp's ``n_threads`` and ``n_threads_batch``) get the same count::

    threads = clamp(floor(cores - others_busy + 0.6), 1, cores)

``cores`` are the physical cores this process may run on; ``others_busy`` is how many CPUs other processes kept busy
over the last second (``/proc/stat`` minus this process's own CPU time; nice'd processes are left out, since they
yield to ours). On 2 cores: both threads unless other processes use more than 0.6 of a core, else one. The reason is
ggml's barriers: every thread of a token waits for the slowest, so one thread that loses its core to another process
stalls them all. Measured on the 2-core Xeon (AMX) VM, Q4_K_M 135M, decode tokens/s with 1 vs 2 threads: idle 51 vs
87; one busy loop 51 vs 4 to 10; a loop busy 50% of the time 51 vs 61, 75% of the time 50 vs 39; two busy loops 34
vs 34; another engineer's llama.cpp evaluation using one CPU 50 vs 0.5. Prompt tokens/s follow (one busy loop: 266 vs
86). Spinning less does not rescue 2 threads: this build runs ggml's threads with OpenMP, where
``OMP_WAIT_POLICY=passive`` costs idle decode two thirds (2 threads: 31 vs 86), and llama.cpp's threadpool with
``poll=0`` (``llama_attach_threadpool``, which llama-cpp-python 0.3.36 does not bind; tried through ctypes) decoded
no faster under load than the default (0.5 vs 0.5 tokens/s): with OpenMP the pool's polling does not run the barriers.

A model that ``load_llama`` loads without ``n_threads`` follows the rule before each generation
(``labcore.gguf.generation_threads(llm)``, which ``iris.models.ModelPool.use`` wraps around every generation): a sampler thread
reads ``/proc/stat`` every 0.25 s. While this process generates, its threads squeeze the others (and are squeezed):
when the CPUs were saturated and our k threads got clearly less than k CPUs, the others' share is scaled up by k over
what we got, and their mean count of runnable threads (procs_running less ours) is a floor: what they want, not what
our threads left them.
``IRIS_N_THREADS=n`` fixes the count instead; without ``/proc/stat`` (not Linux) the count is all physical cores.
``default_threads()`` is the rule's answer now, for callers that pick one count for a whole run.
``python tools/benchmark.py --contention`` measures the default against every fixed count, idle and under busy loops.

    python -m labcore.threads            # print the thread rule's answer for this machine
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

THREAD_SLACK = 0.6  # measured: on 2 cores, 2 threads win while others use up to about 0.6 of a core
WINDOW_S = 1.0  # the estimate looks this far back
MIN_WINDOW_S = 0.25  # and never less
SAMPLE_S = 0.25  # sampler period
SATURATED = 0.25  # CPUs within this of all busy count as saturated
SQUEEZED = 0.25  # CPUs fewer than our threads that count as squeezed


def physical_cores() -> int:
    """Physical cores this process may run on (llama-cpp-python's own default is half the logical CPUs: one thread on
    a 2-core machine without SMT)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(available, physical))


def threads_for(others_busy: float | None, cores: int) -> int:
    """The thread rule (module docstring): all ``cores`` unless other processes keep CPUs busy; None (unknown): all."""
    if others_busy is None:
        return max(1, cores)
    return max(1, min(cores, math.floor(cores - others_busy + THREAD_SLACK)))


def estimate_others(busy_s: float, own_s: float, wall_s: float, wanted_thread_s: float, cpus: int, runnable: float | None = None) -> float:
    """CPUs that other processes wanted over a window: the busy CPU time of the window minus ours, per second. When
    the CPUs were saturated and our threads got clearly less than they asked for, the others got less than they
    wanted too (a busy loop beside our 2 threads on 2 CPUs gets less than a CPU, how much less varies): then
    their share is scaled by wanted / got, and ``runnable`` (the mean number of their runnable threads over the
    window, ``/proc/stat``'s procs_running less ours) is a floor."""
    if wall_s <= 0:
        return 0.0
    others = max(0.0, busy_s - own_s) / wall_s
    used, wanted = own_s / wall_s, wanted_thread_s / wall_s
    if used > 0 and wanted - used >= SQUEEZED and others + used >= cpus - SATURATED:
        others = max(others * min(wanted / used, float(cpus)), runnable or 0.0)
    return min(others, float(cpus))


def read_runnable_others() -> float | None:
    """Threads of other processes that are running or waiting for a CPU now: ``/proc/stat``'s procs_running (the
    whole machine) less this process's threads in state R. None without ``/proc``."""
    try:
        running = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("procs_running"))
        ours = 0
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/self/task/{task}/stat").read_text()
                ours += stat[stat.rindex(")") + 2] == "R"
    except (OSError, StopIteration, ValueError):
        return None
    return float(max(0, running - ours))


def _cpu_ids() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def read_busy_seconds(cpus: list[int] | None = None, with_nice: bool | None = None) -> float | None:
    """Busy CPU seconds since boot on ``cpus`` (default: the ones this process may use) from ``/proc/stat``: user,
    system, irq, softirq and steal (a hypervisor's other guests); nice'd time only when this process is nice'd itself
    (a nice'd process yields its CPU to ours). None without ``/proc/stat``."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    want = {f"cpu{i}" for i in (_cpu_ids() if cpus is None else cpus)}
    if with_nice is None:
        with_nice = hasattr(os, "getpriority") and os.getpriority(os.PRIO_PROCESS, 0) > 0
    ticks = 0
    found = False
    for line in lines:
        name, _, rest = line.partition(" ")
        if name in want:
            f = [int(x) for x in rest.split()] + [0] * 8
            user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
            ticks += user + system + irq + softirq + steal + (nice if with_nice else 0)
            found = True
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


@dataclass(frozen=True)
class CpuSnapshot:
    t: float  # monotonic seconds
    busy: float  # busy CPU seconds of all processes
    own: float  # this process's CPU seconds
    runnable: float | None = None  # other processes' runnable threads at this instant


class CpuMonitor:
    """Other processes' CPU use over the last second, and this process's generations (start, end, threads), for the
    thread rule. ``read_busy``, ``own`` and ``clock`` are injectable for tests; ``start()`` runs the sampler thread."""

    def __init__(self, read_busy=read_busy_seconds, own=time.process_time, clock=time.monotonic, cpus: int | None = None,
                 runnable=read_runnable_others):
        self._read_busy, self._own, self._clock, self._runnable = read_busy, own, clock, runnable
        self.cpus = cpus or len(_cpu_ids())
        self._snaps: deque[CpuSnapshot] = deque(maxlen=int(4 * WINDOW_S / SAMPLE_S) + 2)
        self._gens: list[list] = []  # [start, end or None, threads]
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.available = read_busy() is not None

    def snapshot(self) -> CpuSnapshot | None:
        busy = self._read_busy()
        return None if busy is None else CpuSnapshot(self._clock(), busy, self._own(), self._runnable())

    def record(self) -> CpuSnapshot | None:
        snap = self.snapshot()
        if snap is not None:
            with self._lock:
                self._snaps.append(snap)
        return snap

    def start(self) -> CpuMonitor:
        if self.available and self._thread is None:
            self.record()
            self._thread = threading.Thread(target=self._loop, name="iris-cpu-monitor", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            time.sleep(SAMPLE_S)
            self.record()

    def begin(self, threads: int) -> list:
        gen = [self._clock(), None, threads]
        with self._lock:
            self._gens.append(gen)
        return gen

    def end(self, gen: list) -> None:
        gen[1] = self._clock()
        with self._lock:  # forget generations that ended before any window can reach them
            horizon = gen[1] - 4 * WINDOW_S
            self._gens = [g for g in self._gens if g[1] is None or g[1] >= horizon]

    def _wanted(self, t0: float, t1: float) -> float:
        with self._lock:
            gens = list(self._gens)
        return sum(k * max(0.0, min(t1, end if end is not None else t1) - max(t0, start)) for start, end, k in gens)

    def others_busy(self, block: bool = True) -> float | None:
        """CPUs other processes wanted over the last ``WINDOW_S`` (at least ``MIN_WINDOW_S``): None without
        ``/proc/stat``, or when no window is that old yet and ``block`` is false (with ``block``, waits for one)."""
        now = self.record()
        if now is None:
            return None
        with self._lock:
            old = [s for s in self._snaps if now.t - s.t >= MIN_WINDOW_S]
        if not old:
            if not block:
                return None
            with self._lock:
                first = self._snaps[0]
            time.sleep(max(0.0, MIN_WINDOW_S - (now.t - first.t)))
            return self.others_busy(block=False)
        within = [s for s in old if now.t - s.t <= WINDOW_S + SAMPLE_S]
        base = within[0] if within else old[-1]  # the oldest within the window, else the newest older one
        with self._lock:
            counts = [s.runnable for s in self._snaps if s.t >= base.t and s.runnable is not None]
        return estimate_others(now.busy - base.busy, now.own - base.own, now.t - base.t, self._wanted(base.t, now.t), self.cpus,
                               sum(counts) / len(counts) if counts else None)


_monitor: CpuMonitor | None = None
_monitor_lock = threading.Lock()


def monitor() -> CpuMonitor:
    """The process's one CPU monitor, its sampler started on first use."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = CpuMonitor().start()
        return _monitor


def env_threads() -> int | None:
    value = os.environ.get("IRIS_N_THREADS", "").strip()
    return int(value) if value and int(value) > 0 else None


def default_threads() -> int:
    """The thread count for a run that picks one: ``IRIS_N_THREADS``, else the rule on the last second's CPU use
    (the first call waits up to 0.25 s for a measurement)."""
    return env_threads() or threads_for(monitor().others_busy(), physical_cores())


def torch_threads(explicit: int | None = None, world: int = 1) -> int:
    """Threads for torch (training, evaluation): ``explicit`` when given, else the rule's count shared by ``world``
    processes of a distributed launch."""
    return explicit or max(1, default_threads() // max(1, world))


if __name__ == "__main__":
    print(json.dumps({"physical_cores": physical_cores(), "others_busy": monitor().others_busy(), "threads": default_threads(),
                      "IRIS_N_THREADS": os.environ.get("IRIS_N_THREADS")}, indent=2))
