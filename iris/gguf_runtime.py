"""Load GGUF models in llama-cpp-python safely on every CPU, and fast where that is safe.

Known hazard: llama-cpp-python compiled by pip with GCC 12 and native flags on a CPU with AMX (Sapphire Rapids and
later) builds ggml's AMX backend with a broken tile configuration, and every quantized GGUF dies with SIGSEGV on
its first inference. Loading with ``use_extra_bufts = false`` (llama.cpp's ``--no-repack``) avoids the AMX buffers.

``load_llama`` decides once per machine and build: on a CPU without AMX, or a ggml build without AMX, nothing
changes (the fast path). Otherwise a one-off probe decodes two tokens with a quantized GGUF in a subprocess; if
the probe crashes, models load with the extra buffers disabled. The verdict is cached next to the models, keyed by
the library file and the CPU flags. ``IRIS_GGUF_REPACK=1`` or ``0`` forces either path.

Threads: one rule, ``threads_for(others_busy, cores)``, for every GGUF that Iris or the benchmark runs. Decode and
prompt threads (llama.cpp's ``n_threads`` and ``n_threads_batch``) get the same count::

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
(``generation_threads(llm)``, which ``iris.models.ModelPool.use`` wraps around every generation): a sampler thread
reads ``/proc/stat`` every 0.25 s. While this process generates, its threads squeeze the others (and are squeezed):
when the CPUs were saturated and our k threads got clearly less than k CPUs, the others' share is scaled up by k over
what we got, and their mean count of runnable threads (procs_running less ours) is a floor: what they want, not what
our threads left them.
``IRIS_N_THREADS=n`` fixes the count instead; without ``/proc/stat`` (not Linux) the count is all physical cores.
``default_threads()`` is the rule's answer now, for callers that pick one count for a whole run.
``python tools/benchmark.py --contention`` measures the default against every fixed count, idle and under busy loops.

    python -m iris.gguf_runtime          # print the verdict and the thread rule's answer for this machine
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PEFTLAB_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
_patch_lock = threading.Lock()
_verdict: dict | None = None


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _library_key() -> str:
    import llama_cpp

    lib = next(Path(llama_cpp.__file__).parent.glob("lib/libggml-cpu*"), None) or Path(llama_cpp.__file__)
    stat = lib.stat()
    flags = " ".join(sorted(f for f in _cpu_flags() if f.startswith(("amx", "avx512"))))
    probe = hashlib.sha256(_PROBE.encode()).hexdigest()[:8]  # a changed probe decides again
    return hashlib.sha256(f"{llama_cpp.__version__}|{lib}|{stat.st_size}|{stat.st_mtime_ns}|{flags}|{probe}".encode()).hexdigest()[:16]


_PROBE = r"""
import sys
from llama_cpp import Llama
# A batched prompt evaluation (the AMX kernels run on batches: scoring and long prompts) and a short decode.
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_batch=128, n_ubatch=128, n_threads=2, logits_all=True, verbose=False)
llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6))
llm.create_completion("Hello", max_tokens=2)
print("probe-ok")
"""


def verdict() -> dict:
    """``{"repack": bool, "reason": str}``: whether the default (repacking, AMX-capable) path is safe here."""
    global _verdict
    if _verdict is not None:
        return _verdict
    forced = os.environ.get("IRIS_GGUF_REPACK")
    if forced in ("0", "1"):
        _verdict = {"repack": forced == "1", "reason": f"forced by IRIS_GGUF_REPACK={forced}"}
        return _verdict
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if "amx_tile" not in _cpu_flags() or "AMX" not in info:
        _verdict = {"repack": True, "reason": "no AMX in this CPU or this ggml build: default path"}
        return _verdict
    cache = CACHE / "gguf_runtime.json"
    key = _library_key()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            _verdict = cached["verdict"]
            return _verdict
    except (OSError, ValueError, KeyError):
        pass
    from training.models import embedded_gguf  # a quantized (Q4_1) GGUF that ships with the project

    r = subprocess.run([sys.executable, "-c", _PROBE, str(embedded_gguf())], capture_output=True, text=True, timeout=300)
    if r.returncode == 0 and "probe-ok" in r.stdout:
        _verdict = {"repack": True, "reason": "AMX build passed the quantized-GGUF probe: default path"}
    else:
        _verdict = {"repack": False, "reason": f"AMX build crashed on a quantized GGUF (exit {r.returncode}): loading with use_extra_bufts=false"}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "verdict": _verdict}, indent=2))
    return _verdict


@contextlib.contextmanager
def _no_extra_bufts():
    """llama-cpp-python 0.3.36's ``Llama()`` has no argument for it: patch the default model params while loading."""
    import llama_cpp.llama as llama_module

    lib = llama_module.llama_cpp
    original = lib.llama_model_default_params

    def patched():
        params = original()
        params.use_extra_bufts = False
        return params

    with _patch_lock:
        lib.llama_model_default_params = patched
        try:
            yield
        finally:
            lib.llama_model_default_params = original


# ------------------------------------------------------------------------------------------------ threads
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


def _env_threads() -> int | None:
    value = os.environ.get("IRIS_N_THREADS", "").strip()
    return int(value) if value and int(value) > 0 else None


def default_threads() -> int:
    """The thread count for a run that picks one: ``IRIS_N_THREADS``, else the rule on the last second's CPU use
    (the first call waits up to 0.25 s for a measurement)."""
    return _env_threads() or threads_for(monitor().others_busy(), physical_cores())


def set_threads(llm, n_threads: int, n_threads_batch: int | None = None) -> None:
    """Change a loaded model's decode and prompt threads (llama.cpp's ``llama_set_n_threads``) in place."""
    import llama_cpp

    n_threads_batch = n_threads_batch or n_threads
    llama_cpp.llama_set_n_threads(llm.ctx, n_threads, n_threads_batch)
    llm.n_threads, llm.n_threads_batch = n_threads, n_threads_batch
    llm.context_params.n_threads, llm.context_params.n_threads_batch = n_threads, n_threads_batch


@contextlib.contextmanager
def generation_threads(llm):
    """Wrap one generation (prompt and decode) of ``llm``: a model ``load_llama`` loaded with the default threads gets
    the rule's count now, one loaded with a fixed count keeps it; both are recorded so the monitor can tell this
    process's load from the others'. Objects ``load_llama`` did not make pass through unchanged."""
    mode = getattr(llm, "iris_threads", None)
    if mode not in ("auto", "fixed"):
        yield llm
        return
    mon = monitor()
    if mode == "auto":
        k = threads_for(mon.others_busy(), physical_cores())
        if k != llm.n_threads or k != llm.n_threads_batch:
            set_threads(llm, k)
    gen = mon.begin(llm.n_threads)
    try:
        yield llm
    finally:
        mon.end(gen)

def load_llama(model_path: str | os.PathLike, **kwargs):
    """``llama_cpp.Llama`` that will not crash on this machine; unless given: ``verbose=False``, flash attention
    (llama.cpp's own default is "auto"; llama-cpp-python's is off: on the 135M model it costs about a tenth of the
    decode speed, ``python tools/benchmark.py`` measures both) and threads by the rule (``n_threads`` and
    ``n_threads_batch`` alike: ``IRIS_N_THREADS`` fixes them, otherwise ``generation_threads`` re-applies the rule
    before each generation). ``llm.iris_threads`` says which: "auto" or "fixed"."""
    from llama_cpp import Llama

    kwargs.setdefault("verbose", False)
    kwargs.setdefault("flash_attn", True)
    auto = kwargs.get("n_threads") is None and _env_threads() is None
    if kwargs.get("n_threads") is None:
        kwargs["n_threads"] = default_threads()
    if kwargs.get("n_threads_batch") is None:
        kwargs["n_threads_batch"] = kwargs["n_threads"]
    safe = not verdict()["repack"]
    with _no_extra_bufts() if safe else contextlib.nullcontext():
        llm = Llama(model_path=str(model_path), **kwargs)
    llm.iris_safe_mode = safe
    llm.iris_threads = "auto" if auto else "fixed"
    return llm


if __name__ == "__main__":
    others = monitor().others_busy()
    print(json.dumps({**verdict(), "physical_cores": physical_cores(), "others_busy": others,
                      "threads": default_threads(), "IRIS_N_THREADS": os.environ.get("IRIS_N_THREADS")}, indent=2))
