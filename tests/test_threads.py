"""The thread rule of labcore/gguf.py (fake CPU readings), its hooks in load_llama and ModelPool.use, and the
benchmark's contention section in its quick mode (report shape only: no speed is asserted)."""

import json
import math
import threading

import pytest
from conftest import run_script

from labcore import gguf
from labcore import threads as rt


@pytest.mark.parametrize(("others", "cores", "threads"), [
    (0.0, 2, 2), (0.3, 2, 2), (0.6, 2, 2),  # idle, light or half-time load: both cores (2 threads still win at 50%)
    (0.75, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (3.5, 2, 1),  # a busy loop or more: one thread, never zero
    (None, 2, 2), (None, 8, 8),  # unknown (no /proc/stat): all cores
    (0.0, 1, 1), (1.0, 8, 7), (2.2, 8, 6), (0.0, 16, 16),
])
def test_rule_given_other_processes_cpu_use(others, cores, threads):
    assert rt.threads_for(others, cores) == threads


def test_estimate_subtracts_our_own_cpu_time():
    # 1 s window, 2 CPUs: we were idle and another process kept one CPU busy
    assert rt.estimate_others(busy_s=1.02, own_s=0.02, wall_s=1.0, wanted_thread_s=0.0, cpus=2) == pytest.approx(1.0)
    # we generated with 2 threads on an otherwise idle machine: all of the busy time is ours
    assert rt.estimate_others(busy_s=1.9, own_s=1.9, wall_s=1.0, wanted_thread_s=2.0, cpus=2) == 0.0
    # tick rounding can make our own time exceed the busy time: never negative
    assert rt.estimate_others(busy_s=0.9, own_s=1.0, wall_s=1.0, wanted_thread_s=1.0, cpus=2) == 0.0


def test_estimate_scales_up_a_competitor_that_our_threads_squeezed():
    # 2 threads of ours and a busy loop share 2 CPUs: each gets 2/3; the loop wants a whole CPU
    assert rt.estimate_others(busy_s=2.0, own_s=4 / 3, wall_s=1.0, wanted_thread_s=2.0, cpus=2) == pytest.approx(1.0)
    # two loops beside our one thread: we got 2/3 of the one we wanted, they got 4/3 and want 2
    assert rt.estimate_others(busy_s=2.0, own_s=2 / 3, wall_s=1.0, wanted_thread_s=1.0, cpus=2) == pytest.approx(2.0)
    # not saturated (1.7 of 2 CPUs busy): no scaling, however few of our threads ran
    assert rt.estimate_others(busy_s=1.7, own_s=1.5, wall_s=1.0, wanted_thread_s=2.0, cpus=2) == pytest.approx(0.2)


def test_runnable_threads_are_a_floor_only_when_we_were_squeezed():
    # a busy loop that our 2 threads squeezed to 0.4 CPU (CFS favours threads that sleep at barriers): scaled, 0.5
    # would still say 2 threads; its runnable thread says it wants a whole CPU
    assert rt.estimate_others(busy_s=2.0, own_s=1.6, wall_s=1.0, wanted_thread_s=2.0, cpus=2) == pytest.approx(0.5)
    assert rt.estimate_others(busy_s=2.0, own_s=1.6, wall_s=1.0, wanted_thread_s=2.0, cpus=2, runnable=1.0) == pytest.approx(1.0)
    # a nice'd busy loop (its CPU time is not counted) barely squeezes us: its runnable thread does not count either
    assert rt.estimate_others(busy_s=1.95, own_s=1.95, wall_s=1.0, wanted_thread_s=2.0, cpus=2, runnable=1.0) == 0.0
    # we were idle: runnable threads never add to what the CPU time says
    assert rt.estimate_others(busy_s=0.3, own_s=0.0, wall_s=1.0, wanted_thread_s=0.0, cpus=2, runnable=1.0) == pytest.approx(0.3)


def test_runnable_reading_counts_other_processes_only():
    n = rt.read_runnable_others()
    if n is None:
        pytest.skip("no /proc")
    assert n >= 0


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def fake_monitor(readings: dict[float, tuple[float, float]]):
    """A monitor whose /proc/stat and process-time readings follow ``readings`` (time -> (busy s, own s, runnable))."""
    clock = FakeClock()

    def at(i):
        return readings[max(t for t in readings if t <= clock.t)][i]

    return rt.CpuMonitor(read_busy=lambda: at(0), own=lambda: at(1), clock=clock, cpus=2, runnable=lambda: at(2)), clock


def test_monitor_reads_the_last_second_and_accounts_our_generations():
    # t 100..101: idle machine; 101..102: a busy loop appears (1 CPU) while we are idle
    mon, clock = fake_monitor({100.0: (0.0, 0.0, 0), 101.0: (0.0, 0.0, 0), 102.0: (1.0, 0.0, 1), 103.0: (3.0, 4 / 3, 1)})
    mon.record()
    clock.t = 101.0
    mon.record()
    assert mon.others_busy(block=False) == 0.0
    clock.t = 102.0
    assert mon.others_busy(block=False) == pytest.approx(1.0)  # the window starts at 101, not 100
    # 102..103: we generate with 2 threads and get 4/3 CPU, the loop 2/3: its demand is still one CPU
    gen = mon.begin(2)
    clock.t = 103.0
    mon.end(gen)
    assert mon._wanted(102.0, 103.0) == pytest.approx(2.0)
    assert mon.others_busy(block=False) == pytest.approx(1.0)
    assert rt.threads_for(mon.others_busy(block=False), 2) == 1
    # 103..104: the loop got only 0.4 of a CPU beside our 2 threads; its runnable thread (mean 1) keeps the answer at 1
    readings = {104.0: (3.0 + 2.0, 4 / 3 + 1.6, 1)}
    mon2, clock2 = fake_monitor({100.0: (3.0, 4 / 3, 1), **readings})
    clock2.t = 103.0
    mon2.record()
    gen = mon2.begin(2)
    clock2.t = 104.0
    mon2.end(gen)
    assert mon2.others_busy(block=False) == pytest.approx(1.0)


def test_monitor_without_a_window_or_without_proc_stat():
    mon, clock = fake_monitor({100.0: (0.0, 0.0, 0)})
    mon.record()
    clock.t = 100.1  # younger than MIN_WINDOW_S
    assert mon.others_busy(block=False) is None
    blind = rt.CpuMonitor(read_busy=lambda: None)
    assert not blind.available and blind.others_busy() is None and blind.start()._thread is None


def test_the_real_monitor_reads_this_machine():
    busy = rt.read_busy_seconds()
    if busy is None:
        pytest.skip("no /proc/stat")
    others = rt.CpuMonitor().others_busy()
    assert others is not None and 0.0 <= others <= len(rt._cpu_ids()) and math.isfinite(others)


class FakeLlm:
    def __init__(self, mode, threads=2):
        self.iris_threads, self.n_threads, self.n_threads_batch = mode, threads, threads


def test_generation_threads_applies_the_rule_to_auto_models_only(monkeypatch):
    mon, clock = fake_monitor({100.0: (0.0, 0.0, 0)})
    monkeypatch.setattr(rt, "_monitor", mon)
    monkeypatch.setattr(gguf, "physical_cores", lambda: 2)
    calls = []

    def fake_set(llm, n, nb=None):
        calls.append(n)
        llm.n_threads = llm.n_threads_batch = n

    monkeypatch.setattr(gguf, "set_threads", fake_set)
    monkeypatch.setattr(mon, "others_busy", lambda block=True: 1.0)
    auto, fixed, foreign = FakeLlm("auto"), FakeLlm("fixed"), object()
    with gguf.generation_threads(auto) as llm:
        assert llm is auto and auto.n_threads == 1
    with gguf.generation_threads(fixed):
        assert fixed.n_threads == 2
    with gguf.generation_threads(foreign) as llm:
        assert llm is foreign
    assert calls == [1]
    assert [g[2] for g in mon._gens] == [1, 2] and all(g[1] is not None for g in mon._gens)
    monkeypatch.setattr(mon, "others_busy", lambda block=True: 0.1)
    with gguf.generation_threads(auto):
        assert auto.n_threads == 2


def test_default_threads_honours_the_environment(monkeypatch):
    monkeypatch.setenv("IRIS_N_THREADS", "3")
    assert rt.default_threads() == 3
    monkeypatch.setenv("IRIS_N_THREADS", "0")
    monkeypatch.setattr(rt, "monitor", lambda: type("M", (), {"others_busy": lambda self: 1.0})())
    monkeypatch.setattr(rt, "physical_cores", lambda: 4)
    assert rt.default_threads() == 3


def test_model_pool_sets_threads_around_each_generation(monkeypatch):
    from iris.models import ModelEntry, ModelPool

    seen = []

    class Hook:
        def __init__(self, llm):
            self.llm = llm

        def __enter__(self):
            seen.append(("enter", self.llm))
            return self.llm

        def __exit__(self, *exc):
            seen.append(("exit", self.llm))

    monkeypatch.setattr(gguf, "generation_threads", Hook)
    entries = {"m": ModelEntry("m", "M", path=__file__)}
    pool = ModelPool(entries=entries, loader=lambda path, n_ctx: "llm")
    with pool.use("m") as llm:
        assert llm == "llm" and seen == [("enter", "llm")]
    assert seen == [("enter", "llm"), ("exit", "llm")]


def test_load_llama_threads_on_a_real_model(monkeypatch):
    """The embedded model: default load is "auto" and generation_threads changes the llama.cpp context's counts."""
    import llama_cpp

    from labcore.gguf import embedded_gguf

    monkeypatch.delenv("IRIS_N_THREADS", raising=False)
    llm = gguf.load_llama(embedded_gguf(), n_ctx=128)
    assert llm.iris_threads == "auto"
    mon = rt.monitor()
    monkeypatch.setattr(mon, "others_busy", lambda block=True: 5.0)  # everything busy: one thread
    with gguf.generation_threads(llm):
        assert llama_cpp.llama_n_threads(llm.ctx) == 1 and llama_cpp.llama_n_threads_batch(llm.ctx) == 1
        out = llm.create_completion("Hello", max_tokens=2)
    assert out["choices"][0]["text"] is not None
    if rt.physical_cores() > 1:
        monkeypatch.setattr(mon, "others_busy", lambda block=True: 0.0)
        with gguf.generation_threads(llm):
            assert llama_cpp.llama_n_threads(llm.ctx) == rt.physical_cores()
    monkeypatch.setenv("IRIS_N_THREADS", "1")
    assert gguf.load_llama(embedded_gguf(), n_ctx=128).iris_threads == "fixed"
    assert gguf.load_llama(embedded_gguf(), n_ctx=128, n_threads=1).iris_threads == "fixed"


def test_monitor_is_one_per_process():
    mons = []
    threads = [threading.Thread(target=lambda: mons.append(rt.monitor())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is mons[0] for m in mons)


def test_contention_benchmark_quick_writes_its_report(tmp_path):
    r = run_script("tools/benchmark.py", "--contention", "--quick", "--out_dir", str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "benchmark_contention.json").read_text())
    c = rep["contention"]
    cores = c["physical_cores"]
    assert c["settings"] == ["default"] + [str(k) for k in range(1, cores + 1)]
    assert list(c["conditions"]) == ["idle", "one_busy_loop", "all_cores_busy"]
    assert [cond["busy_loops"] for cond in c["conditions"].values()] == [0, 1, cores]
    for cond in c["conditions"].values():
        assert set(cond["rows"]) == set(c["settings"]) and cond["best"] in c["settings"][1:]
        assert len(cond["load_average_start"]) == 3 and len(cond["load_average_end"]) == 3 and cond["attempts"] == 1
        for name, row in cond["rows"].items():
            assert len(row["runs"]) == c["repeats"] >= 3
            assert row["decode_tokens_per_s"] > 0 and row["prompt_tokens_per_s"] > 0 and row["ratio_to_best"] > 0
            if name != "default":
                assert row["threads"] == int(name)
            else:
                assert all(1 <= r["threads"] == r["threads_batch"] <= cores for r in row["runs"])
        assert cond["default_vs_best"] == pytest.approx(cond["rows"]["default"]["ratio_to_best"])
    assert c["cpu_model"] and c["rule"].startswith("threads = ") and isinstance(c["within_20_percent"], bool)
    assert rep["summary"]["contention_default_vs_best_min"] == pytest.approx(min(x["default_vs_best"] for x in c["conditions"].values()))
    md = (tmp_path / "benchmark_contention.md").read_text()
    assert md.count("\n| ") == 2 + 3 and "default / best" in md
