"""tools/benchmark_gpu.py: its settings, and the whole machinery on the CPU with tiny shapes (--quick)."""

from __future__ import annotations

import json

import pytest
import torch

from tools import benchmark_gpu as bg


def test_settings_fill_defaults_per_mode_and_refuse_bad_values(capsys):
    assert (bg.Settings().with_defaults().steps, bg.Settings(quick=True).with_defaults().conversations) == (8, 4)
    parsed = bg.parse(bg.Settings(), ["--quick", "--steps", "3"]).with_defaults()
    assert (parsed.quick, parsed.steps, parsed.warmup, parsed.conversations) == (True, 3, 1, 4)
    for argv, message in ((["--steps", "0"], "--steps 0"), (["--rows", "trl_fast"], "unknown row"), (["--warmup", "0"], "--warmup 0")):
        with pytest.raises(SystemExit):
            bg.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_full_run_needs_a_gpu():
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        bg.main(["--out_dir", "/nonexistent"])


def test_summary_ratios_targets_and_loss_agreement():
    def row(name, tps, mem, loss):
        r = bg.BY_NAME[name]
        return {"row": name, "status": "completed", "size": r.size, "method": r.method, "kind": r.kind, "parameters": 1000,
                "tokens_per_s": tps, "peak_memory_mb": mem, "loss_after_k": loss}

    rows = [row("trl_defaults_lora_1b", 100, 10, 2.0), row("project_lora_1b", 250, 8, 2.01), row("trl_best_lora_1b", 200, 9, 2.0),
            row("trl_defaults_qlora_3b", 50, 5, 3.0), row("project_qlora_3b", 90, 4, 3.2), {"row": "project_qlora_1b", "status": "failed"}]
    s = bg.summarize(rows, rate=6000 * 250)  # 250 tokens/s x 6 x 1000 parameters = the whole rate
    assert s["lora_1b_vs_trl_defaults"] == 2.5 and s["lora_1b_vs_trl_best"] == 1.25 and s["qlora_3b_vs_trl_defaults"] == 1.8
    assert s["lora_1b_peak_mem_vs_trl_defaults"] == 0.8 and s["lora_1b_mfu"] == pytest.approx(1.0)
    assert [k for k, t in s["targets"].items() if not t["met"]] == ["qlora_3b_vs_trl_defaults"]
    agree = s["loss_agreement"]["rows"]
    assert agree["project_lora_1b"]["within_tolerance"] and not agree["project_qlora_3b"]["within_tolerance"]
    assert not s["loss_agreement"]["all_within"]


@pytest.mark.slow
def test_quick_run_writes_the_report_with_every_row(tmp_path):
    assert bg.main(["--quick", "--out_dir", str(tmp_path), "--work_dir", str(tmp_path / "models")]) == 0
    report = json.loads((tmp_path / "benchmark_gpu.json").read_text())
    assert [r["row"] for r in report["rows"]] == [r.name for r in bg.ROWS]
    assert all(r["status"] == "completed" for r in report["rows"]), [r.get("error") for r in report["rows"]]
    assert set(bg.TARGETS) <= set(report["summary"]) and all(report["summary"][k] is not None for k in bg.TARGETS)
    for r in report["rows"]:
        assert r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0 and len(r["losses"]) == report["settings"]["steps"] + report["settings"]["warmup"]
        assert r["conversations"] == 4 * 3 and 0 < r["mfu"] < 1
    by = {r["row"]: r for r in report["rows"]}
    assert by["trl_defaults_lora_1b"]["activation_checkpointing"] and not by["trl_defaults_lora_1b"]["padding_free"]
    assert by["trl_best_lora_1b"]["padding_free"] and not by["trl_best_lora_1b"]["activation_checkpointing"]
    assert by["project_lora_1b"]["padding_free"] and by["project_qlora_3b"]["attention"] == "packed_sdpa"
    # the same update computed three ways: the project's rows reach the TRL-defaults loss within the tolerance
    assert report["summary"]["loss_agreement"]["all_within"] and len(report["summary"]["loss_agreement"]["rows"]) == 4
    assert by["project_lora_1b_checkpointed"]["activation_checkpointing"] and not by["project_lora_1b"]["activation_checkpointing"]
    assert (tmp_path / "benchmark_gpu.md").read_text().count("| completed |") == len(bg.ROWS) and (tmp_path / "benchmark_gpu.png").stat().st_size > 1000
