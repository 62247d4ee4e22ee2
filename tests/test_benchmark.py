"""The benchmark: its command line (in process), its worker jobs, and its quick mode, which runs every configuration
and writes the full report schema; the LoRA rows that train the same update must record the same losses. No speed is
asserted."""

import json
import math
from dataclasses import asdict

import pytest
from conftest import run_script

from tools import benchmark

SUMMARY = {"train_speedup_vs_naive", "train_fraction_of_bf16_ceiling", "qlora_rss_ratio",
           "q4km_decode_speedup_vs_torch_fp32", "q4km_decode_fraction_of_bandwidth", "contention_default_vs_best_min"}
# naive, default and lora_ckpt train the same LoRA update (the scripts' recipe, dropout 0, the same unquantized base
# and batches) computed differently: masked SDPA on padded batches or per-conversation SDPA on packed ones, TRL's loss
# head or the one-pass head, activation checkpointing or not, and, on a CPU with native bf16, a bf16 base under
# autocast against naive's fp32. Those are rounding differences. Measured on the quick model (random, loss near
# ln 49,152 = 10.80): every step's loss within 1e-7 relative in fp32, 4e-6 with the bf16 base. A wrong loss mask (every
# token labelled in one row) moves that row's losses by 8e-4 to 1.7e-3 relative, over 8x this tolerance.
SAME_UPDATE_LOSS_RTOL = 1e-4


@pytest.mark.parametrize(("argv", "message"), [
    (["--repeats", "2"], "--repeats 2: give at least 3"),
    (["--threads", "0"], "--threads 0: give a positive number"),
    (["--steps", "0"], "--steps 0: give a positive count"),
    (["--profile", "fastest"], "--profile fastest: give one of naive, default"),
    (["--lm_head", "trl"], "--attention and --lm_head go with --profile"),
    (["--profile", "default", "--lm_head", "fused"], "--lm_head fused: give onepass or trl"),
    (["--gguf", "/nonexistent.gguf", "--contention"], "--gguf /nonexistent.gguf: no such file"),
])
def test_a_bad_flag_is_a_usage_error_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_unset_counts_follow_quick_and_the_thread_rule(monkeypatch):
    from labcore import threads

    monkeypatch.setattr(threads, "default_threads", lambda: 7)
    cfg = benchmark.BenchConfig(quick=True).resolved()
    assert (cfg.threads, cfg.steps, cfg.max_length, cfg.new_tokens) == (7, 2, 256, 8)
    cfg = benchmark.BenchConfig(threads=1, steps=3).resolved()
    assert (cfg.threads, cfg.steps, cfg.max_length, cfg.new_tokens) == (1, 3, 512, 64)


@pytest.mark.parametrize("kind", list(benchmark.WORKERS))
def test_a_worker_gets_its_job_back_as_the_same_dataclass(kind, tmp_path, monkeypatch):
    cfg = benchmark.BenchConfig(quick=True, threads=2).resolved()
    sent = {
        "ceilings": benchmark.Job(**benchmark.job_settings(cfg)),
        "train": benchmark.train_job(cfg, "naive", tmp_path),
        "infer": benchmark.InferJob(**benchmark.job_settings(cfg), label="gguf_q8_0", backend="gguf", model_path="m.gguf", new_tokens=8,
                                    flash_attn=False),
        "contention": benchmark.ContentionJob(**benchmark.job_settings(cfg), model_path="m.gguf", new_tokens=8),
    }[kind]
    got = []
    job_type = benchmark.WORKERS[kind][0]
    monkeypatch.setitem(benchmark.WORKERS, kind, (job_type, lambda job: got.append(job) or {"ok": True}))
    spec, result = tmp_path / "job.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"kind": kind, "job": asdict(sent), "result": str(result)}))
    assert benchmark.main(["--worker", str(spec)]) == 0
    assert got == [sent] and type(got[0]) is type(sent) and json.loads(result.read_text()) == {"ok": True}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    r = run_script("tools/benchmark.py", "--quick", "--out_dir", str(out), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, json.loads((out / "benchmark.json").read_text())


@pytest.mark.slow
def test_quick_benchmark_writes_the_report_schema(quick_report):
    out, rep = quick_report
    assert set(rep["summary"]) == SUMMARY
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in rep["summary"].values())
    assert rep["config"]["quick"] is True and rep["config"]["threads"] >= 1 and rep["config"]["steps"] == 2
    assert set(rep["training"]) == {"naive", "default", "lora_ckpt", "qlora", "dropout_005"}
    assert set(rep["details"]) >= {"qlora_rss_ratio_vs_lora_with_checkpointing", "checkpointing_rss_ratio", "train_fraction_of_fp32_ceiling",
                                   "same_update_loss_rel_spread"}
    for t in rep["training"].values():
        assert len(t["step_seconds"]) == t["steps"] and t["useful_tokens_per_s"] > 0 and 0 < t["padding_efficiency"] <= 1
        assert len(t["losses"]) == t["steps"] + t["warmup_steps"] and t["loss_after_k_steps"] == t["losses"][-1]
    assert set(rep["inference"]) == {"torch_fp32", "torch_bf16", "gguf_f16", "gguf_q8_0", "gguf_q4_k_m", "gguf_q4_k_m_no_flash_attn"}
    assert rep["inference"]["gguf_q4_k_m"]["flash_attn"] is True and rep["inference"]["gguf_q4_k_m_no_flash_attn"]["flash_attn"] is False
    assert "Q8_0" in rep["inference"]["gguf_q8_0"]["weight_types_mb"] and rep["details"]["flash_attn_decode_speedup"] > 0
    for i in rep["inference"].values():
        assert i["repeats"] >= 3 and i["decode_tokens_per_s"] > 0 and i["weight_bytes"] > 0 and "fraction_of_bandwidth" in i
    assert rep["ceilings"]["bandwidth_bytes_per_s"] > 0 and set(rep["ceilings"]["gemm_flops_per_s"]) == {"float32", "bfloat16"}
    c = rep["contention"]  # its own test (tests/test_threads.py) checks the section in detail
    assert list(c["conditions"]) == ["idle", "one_busy_loop", "all_cores_busy"] and c["settings"][0] == "default"
    assert all(set(cond["rows"]) == set(c["settings"]) for cond in c["conditions"].values())
    assert rep["load_average"] and rep["load_average_end"] and rep["versions"]["torch"]
    assert (out / "benchmark.md").read_text().count("|") > 20 and (out / "benchmark.png").stat().st_size > 1000


@pytest.mark.slow
def test_lora_rows_that_train_the_same_update_reach_the_same_loss(quick_report):
    """README and docs/benchmark.md: the LoRA configurations are the same maths computed differently."""
    _, rep = quick_report
    rows = {name: rep["training"][name] for name in ("naive", "default", "lora_ckpt")}
    assert {r["lora_dropout"] for r in rows.values()} == {0.0} and not any(r["load_in_4bit"] for r in rows.values())
    for step, losses in enumerate(zip(*(r["losses"] for r in rows.values()))):
        assert all(math.isfinite(x) for x in losses)
        spread = (max(losses) - min(losses)) / min(losses)
        assert spread <= SAME_UPDATE_LOSS_RTOL, f"step {step}: losses {dict(zip(rows, losses))} differ by {spread:.1e} relative"
    assert rep["details"]["same_update_loss_rel_spread"] <= SAME_UPDATE_LOSS_RTOL
