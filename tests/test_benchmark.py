"""The benchmark's quick mode runs every configuration and writes the full report schema (no speed assertions)."""

import json
import math

import pytest
from conftest import run_script

SUMMARY = {"train_speedup_vs_naive", "train_fraction_of_bf16_ceiling", "qlora_rss_ratio",
           "q4km_decode_speedup_vs_torch_fp32", "q4km_decode_fraction_of_bandwidth", "contention_default_vs_best_min"}


@pytest.mark.slow
def test_quick_benchmark_writes_the_report_schema(tmp_path):
    r = run_script("tools/benchmark.py", "--quick", "--out", str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(rep["summary"]) == SUMMARY
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in rep["summary"].values())
    t = rep["training"]
    assert set(t) == {"naive", "default", "lora_ckpt", "qlora", "dropout_005"}
    assert t["naive"]["lm_head"] == "trl" and t["default"]["lm_head"] == "onepass" and t["qlora"]["lm_head"] == "onepass"
    assert t["naive"]["padding_free"] is False and t["default"]["padding_free"] is True
    assert t["naive"]["attention"] == "sdpa" and t["default"]["attention"] == "packed_sdpa"
    assert t["naive"]["activation_checkpointing"] and not t["default"]["activation_checkpointing"] and t["lora_ckpt"]["activation_checkpointing"]
    assert t["qlora"]["load_in_4bit"] is True and t["qlora"]["activation_checkpointing"]
    assert t["dropout_005"]["lora_dropout"] == 0.05 and all(r["lora_dropout"] == 0.0 for n, r in t.items() if n != "dropout_005")
    assert set(rep["details"]) >= {"qlora_rss_ratio_vs_lora_with_checkpointing", "checkpointing_rss_ratio", "train_fraction_of_fp32_ceiling"}
    for t in rep["training"].values():
        assert len(t["step_seconds"]) == t["steps"] and t["useful_tokens_per_s"] > 0 and 0 < t["padding_efficiency"] <= 1
        assert math.isfinite(t["loss_after_k_steps"])
    assert set(rep["inference"]) == {"torch_fp32", "torch_bf16", "gguf_f16", "gguf_q8_0", "gguf_q4_k_m", "gguf_q4_k_m_no_flash_attn"}
    assert rep["inference"]["gguf_q4_k_m"]["flash_attn"] and not rep["inference"]["gguf_q4_k_m_no_flash_attn"]["flash_attn"]
    assert "Q8_0" in rep["inference"]["gguf_q8_0"]["weight_types_mb"] and rep["details"]["flash_attn_decode_speedup"] > 0
    for i in rep["inference"].values():
        assert i["repeats"] >= 3 and i["decode_tokens_per_s"] > 0 and i["weight_bytes"] > 0 and "fraction_of_bandwidth" in i
    assert rep["ceilings"]["bandwidth_bytes_per_s"] > 0 and set(rep["ceilings"]["gemm_flops_per_s"]) == {"float32", "bfloat16"}
    c = rep["contention"]  # its own test (tests/test_threads.py) checks the section in detail
    assert list(c["conditions"]) == ["idle", "one_busy_loop", "all_cores_busy"] and c["settings"][0] == "default"
    assert all(set(cond["rows"]) == set(c["settings"]) for cond in c["conditions"].values())
    assert rep["load_average"] and rep["load_average_end"] and rep["versions"]["torch"]
    assert (tmp_path / "benchmark.md").read_text().count("|") > 20 and (tmp_path / "benchmark.png").stat().st_size > 1000
