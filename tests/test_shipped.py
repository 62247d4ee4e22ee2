"""The shipped tuned model: where adapters are found, how Iris lists and prepares it, the recipe rule, the intervals."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "adapters" / "smollm2-135m-id2223"
NOTES = REPO / "adapters" / "smollm2-135m-id2223-notes"  # SHIPPED continued on Study Chat with course notes: Iris's default


# ------------------------------------------------------------------------------------------------- intervals
def test_paired_bootstrap_interval_brackets_a_real_difference_and_straddles_none():
    from evaluation import metrics

    better = [(0.1 * (i % 5), 0.1 * (i % 5) + 0.05 + 0.01 * (i % 3)) for i in range(200)]
    b = metrics.paired_bootstrap(better, metrics.mean_difference)
    assert b["ci95"][0] <= b["value"] <= b["ci95"][1] and b["ci95"][0] > 0
    noise = [(0.5, 0.5 + (0.1 if i % 2 else -0.1)) for i in range(200)]
    n = metrics.paired_bootstrap(noise, metrics.mean_difference)
    assert n["ci95"][0] < 0 < n["ci95"][1]
    assert metrics.paired_bootstrap([(1, 2)], metrics.mean_difference) is None  # one item: no interval


def test_perplexity_ratio_pools_tokens_before_exponentiating():
    from evaluation import metrics

    # item 1: 10 tokens, nll 20 -> 10; item 2: 30 tokens, nll 30 -> 30: pooled exp((40 - 50) / 40)
    assert metrics.perplexity_ratio([(20.0, 10, 10.0), (30.0, 30, 30.0)]) == pytest.approx(2.718281828 ** (-10 / 40))


def test_compare_reports_intervals_for_paired_items():
    from evaluation.common import compare

    def model(label, cov, nll):
        answers = [{"set": "test", "id": f"t{i}", "answer": "x", "coverage": cov + 0.01 * (i % 3), "rouge_l": 0.1} for i in range(20)]
        return {"status": "completed", "label": label, "answers": answers, "memory": {},
                "summary": {k: 0.0 for k in ("coverage_mean", "rouge_l_mean", "leak_rate", "ended_rate", "decode_tps_mean",
                                             "ttft_s_mean", "e2e_s_mean")},
                "perplexity": {"perplexity": 1.0, "loss": 1.0, "per_item": [{"id": f"t{i}", "nll": nll, "tokens": 10} for i in range(20)]}}

    row = compare([model("base", 0.1, 30.0), model("tuned", 0.3, 20.0)])["rows"][0]
    assert row["coverage_delta_bootstrap"]["value"] == pytest.approx(0.2)
    assert row["coverage_delta_bootstrap"]["ci95"][0] > 0
    assert row["perplexity_ratio_bootstrap"]["value"] == pytest.approx(2.718281828 ** -1)


# ------------------------------------------------------------------------------------------------- shipped adapter
@pytest.mark.parametrize("adapter", [SHIPPED, NOTES], ids=["exam", "notes"])
def test_the_shipped_adapters_are_small_bf16_and_say_where_they_were_trained(adapter):
    from safetensors import safe_open

    weights = adapter / "adapter_model.safetensors"
    assert weights.stat().st_size <= 25 * 2**20
    with safe_open(weights, "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}
    record = json.loads((adapter / "run_record.json").read_text())
    assert record["status"] == "completed" and record["name"] == adapter.name
    assert record["resolved"]["device"] in ("cuda", "cpu") and "hardware" in record
    assert record["config"]["model"] == "smollm2-135m"
    if adapter == SHIPPED:
        assert record["trained_as"].startswith("recipe-")
    else:  # the grounded stage's own script, continuing the exam adapter: its command reproduces it on a fresh clone
        assert record["trained_as"] == "smollm2-135m-lora-exam-grounded" and record["config"]["data"] == "exam-grounded"
        assert record["config"]["init_adapter"] == SHIPPED.name and record["continued_from"].endswith(f"adapters/{SHIPPED.name}")


def test_find_adapter_prefers_a_local_run_then_the_shipped_one(tmp_path):
    from training.config import find_adapter

    assert find_adapter(SHIPPED.name, tmp_path) == SHIPPED
    local = tmp_path / "models" / SHIPPED.name
    local.mkdir(parents=True)
    (local / "adapter_config.json").write_text("{}")
    assert find_adapter(SHIPPED.name, tmp_path) == local
    assert find_adapter("no-such-run", tmp_path) == tmp_path / "models" / "no-such-run"


def test_iris_lists_the_shipped_model_first_labelled_tuned(monkeypatch):
    from iris import models

    monkeypatch.delenv("IRIS_ADAPTER_DIR", raising=False)
    monkeypatch.setenv("IRIS_GGUF_DIR", str(REPO / "no-such-folder"))
    monkeypatch.setenv("IRIS_HUB_MODELS", "")
    entries = list(models.registry().values())
    assert models.DEFAULT_TUNED == NOTES.name
    assert entries[0].key == f"tuned:{NOTES.name}" and "course notes" in entries[0].label and entries[0].adapter
    assert entries[1].key == f"tuned:{SHIPPED.name}" and "tuned on ID2223, shipped" in entries[1].label  # side by side
    assert any(e.key == models.EMBEDDED_KEY and "untuned" in e.label for e in entries), "the base stays selectable"


def fake_export_tool(tmp_path: Path, calls: Path) -> Path:
    """A stand-in for tools/export_to_gguf.py that writes what the real one writes, and counts its runs."""
    tool = tmp_path / "fake_export.py"
    tool.write_text(textwrap.dedent(f"""
        import json, sys, pathlib
        adapter, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[sys.argv.index("--out_dir") + 1])
        with open({str(calls)!r}, "a") as f:
            f.write("run\\n")
        run = json.loads((adapter / "run_record.json").read_text())["name"]
        (out / f"{{run}}_q8_0.gguf").write_bytes(b"GGUF")
        (out / f"{{run}}.manifest.json").write_text(json.dumps({{"status": "completed"}}))
    """))
    return tool


def test_merged_gguf_exports_once_then_reads_the_cache(tmp_path, monkeypatch):
    from iris import models

    calls = tmp_path / "calls.txt"
    monkeypatch.setattr(models, "EXPORT_TOOL", fake_export_tool(tmp_path, calls))
    first = models.merged_gguf(SHIPPED, cache=tmp_path / "cache")
    second = models.merged_gguf(SHIPPED, cache=tmp_path / "cache")
    assert first == second and first.is_file() and calls.read_text().count("run") == 1
    assert first.parent.name.startswith(SHIPPED.name + "-")  # keyed by the adapter's hash: a new adapter exports anew


def test_a_failed_export_is_one_clear_error_and_leaves_no_cached_file(tmp_path, monkeypatch):
    from iris import models

    tool = tmp_path / "failing_export.py"
    tool.write_text("import sys; sys.exit('error: convert-hf-to-gguf failed')")
    monkeypatch.setattr(models, "EXPORT_TOOL", tool)
    with pytest.raises(models.ModelError, match="convert-hf-to-gguf failed"):
        models.merged_gguf(SHIPPED, cache=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.gguf"))


@pytest.mark.slow
def test_the_shipped_adapter_merges_and_answers_in_llama_cpp(tmp_path):
    """The real path a fresh clone takes: export (verification included, on fewer items than Iris's default: the checks
    themselves are tested in test_export.py) into a cache, then generate."""
    from iris import models
    from labcore.gguf import load_llama

    path = models.merged_gguf(SHIPPED, cache=tmp_path / "cache", export_flags=("--ppl_items", "4", "--stop_budget", "200"))
    manifest = json.loads(next(path.parent.glob("*.manifest.json")).read_text())
    assert manifest["status"] == "completed" and manifest["verification"]["passed"]
    llm = load_llama(path, n_ctx=512)
    out = llm.create_chat_completion([{"role": "user", "content": "What is LoRA?"}], max_tokens=24, temperature=0)
    assert out["choices"][0]["message"]["content"].strip()


# ------------------------------------------------------------------------------------------------- recipe rule
def test_recipe_rule_skips_runaway_or_leaking_candidates_and_ranks_the_rest():
    from evaluation.eval_recipes import pick

    def m(run, ppl, cov, rouge, ended=0.9, leak=0.0):
        return {"status": "completed", "source": {"run": run}, "perplexity": {"perplexity": ppl},
                "summary": {"coverage_mean": cov, "rouge_l_mean": rouge, "ended_rate": ended, "leak_rate": leak}}

    report = {"models": [m("recipe-e1", 30, 0.10, 0.20), m("recipe-e2", 25, 0.12, 0.21), m("recipe-e3", 20, 0.30, 0.40, ended=0.5),
                         m("recipe-e2-r8", 24, 0.11, 0.22, leak=0.01), m("recipe-qlora-e2", 10, 0.9, 0.9)]}
    out = pick(report)
    assert out["winner"] == "recipe-e2"  # e3 runs away, r8 leaks, QLoRA is compared but not shipped
    assert [r["key"] for r in out["ranked"]][:2] == ["e2", "e1"]


def test_padding_free_is_a_device_choice():
    from training.config import TrainConfig

    auto = TrainConfig()
    import importlib.util

    # CUDA: padding-free only with torch's variable-length attention (one kernel per layer, training/packed_attention.py)
    assert auto.uses_padding_free("cpu") and auto.uses_padding_free("cuda") == (importlib.util.find_spec("torch.nn.attention.varlen") is not None)
    assert TrainConfig(padding_free="false").uses_padding_free("cpu") is False
    assert TrainConfig(padding_free=True).uses_padding_free("cuda") is True
    with pytest.raises(ValueError, match="padding_free"):
        TrainConfig(padding_free="sometimes")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
