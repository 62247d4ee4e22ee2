"""Evaluation: metric functions on known inputs, perplexity by hand, spec errors, every script's command line, the
summary, and real evaluations of a tiny model."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_conversations, run_script

from evaluation import metrics, prompts
from evaluation.common import EvalError, ModelArgs, Settings, compare, parse_args, resolve_spec, summarize_answers
from evaluation.prompts import DOMAIN, GENERAL, spread


# ------------------------------------------------------------------------------------------------- metrics
def test_concept_coverage_is_case_plural_and_hyphen_tolerant():
    answer = "We use PSEUDOLABELING, handle class-imbalances, train an anomaly detector and keep the KV-caches small."
    cov, found = metrics.concept_coverage(["pseudo-labeling", "class imbalance", "Anomaly detectors", "KV cache", "dropout"], answer)
    assert cov == pytest.approx(4 / 5)
    assert "dropout" not in found
    assert metrics.concept_coverage([], answer) == (None, [])
    assert not metrics.concept_found("LoRA", "we explored exploration")  # whole words only
    assert metrics.concept_found("feature store", "Feature stores keep features consistent")


def test_rouge_l_on_known_values():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" (5 tokens of 6 each)
    assert metrics.rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    assert metrics.rouge_l("a b c", "a b c") == 1.0
    assert metrics.rouge_l("a b c", "d e f") == 0.0
    assert metrics.rouge_l("", "a") == 0.0
    assert metrics.lcs_length("abcbdab", "bdcaba") == 4
    # precision 2/2, recall 2/4 -> F1 = 2/3
    assert metrics.rouge_l("a c", "a b c d") == pytest.approx(2 / 3)


def test_leakage_and_stopping():
    assert metrics.leaks("Overfitting means fitting noise.") == []
    assert "role_or_special_token" in metrics.leaks("Fitting noise.<|im_start|>user\nmore")
    assert "role_or_special_token" in metrics.leaks("Sure.\nUser: and then?")
    assert "briefly" in metrics.leaks("Briefly explain the trade-off.")
    assert metrics.ended_by_itself([5, 6, 2], {2})
    assert not metrics.ended_by_itself([5, 6, 7], {2})
    assert not metrics.ended_by_itself([], {2})


def test_aggregates_skip_missing_values():
    assert metrics.mean([1, None, 3]) == 2
    assert metrics.median([5, 1, None, 3]) == 3
    assert metrics.share([True, False, None, True]) == pytest.approx(2 / 3)
    assert metrics.mean([]) is None and metrics.share([]) is None


def test_masked_nll_uniform_logits_give_vocabulary_sized_perplexity():
    vocab, ids, mask = 10, [1, 4, 2, 7, 3], [0, 0, 1, 1, 1]
    nll, n = metrics.masked_nll(np.zeros((len(ids), vocab)), ids, mask)
    assert n == 3 and nll == pytest.approx(3 * math.log(vocab))
    assert metrics.perplexity(nll, n) == pytest.approx(vocab)
    # one position predicted with certainty-ish: logit 50 on the right token
    logits = np.zeros((len(ids), vocab))
    logits[1, ids[2]] = 50.0
    nll2, _ = metrics.masked_nll(logits, ids, mask)
    assert nll2 == pytest.approx(2 * math.log(vocab), abs=1e-6)


def test_masked_nll_matches_torch_cross_entropy_on_a_tiny_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.chat_templates import training_template
    from training.dataset_utils import tokenize_conversations

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [{"messages": [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "A low-rank adapter for fine-tuning."}]}]
    (row,), _ = tokenize_conversations(rows, tok, training_template(tok), 512)
    ids, mask = row["input_ids"], row["assistant_masks"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    nll, n = metrics.masked_nll(logits.numpy(), ids, mask)
    labels = torch.tensor([i if m else -100 for i, m in zip(ids, mask)])
    expected = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
    assert n == sum(mask[1:]) and n > 5
    assert nll == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------- prompts, specs
def test_prompt_lists_and_test_items():
    assert len(GENERAL) == 10 and len(DOMAIN) == 10 and "What is a feature store, and why is it useful?" in DOMAIN
    assert spread(252, 4) == [0, 63, 126, 189] and spread(5, None) == [0, 1, 2, 3, 4] and spread(3, 10) == [0, 1, 2]
    items = prompts.test_items(limit=3)
    assert len(items) == 3 and all(i["key_concepts"] and i["reference"] and i["messages"][-1]["role"] == "user" for i in items)
    assert len({i["topic"] for i in prompts.test_items(limit=63)}) > 50  # spread over the topics, not the first few


def test_bad_specs_give_one_clear_line(tmp_path):
    with pytest.raises(EvalError, match="unknown run name 'no-such-run'") as e:
        resolve_spec("no-such-run", tmp_path)
    assert "llama-3.2-1b-lora-finetome" in str(e.value)  # runs with a script, named as the user types them (the model's dots kept)
    with pytest.raises(EvalError, match="unknown base model"):
        resolve_spec("base:no-such-model", tmp_path)
    src = resolve_spec("smollm2-135m-qlora-finetome-exam", tmp_path)  # a known run, not trained under tmp_path
    assert "is missing" in src.missing and src.command == "python training/train_smollm2_135m_qlora_finetome_exam.py"
    gguf = resolve_spec(str(tmp_path / "gguf_export" / "my-run_q8_0.gguf"), tmp_path)
    assert "is missing" in gguf.missing and gguf.command == "python tools/export_to_gguf.py my-run" and gguf.quant == "Q8_0"


def test_missing_inputs_on_the_command_line_exit_with_one_line(tmp_path, tiny_model_dir, capsys):
    from evaluation import eval_domain, eval_models, eval_pytorch_vs_gguf

    def fails(main, *argv) -> str:
        with pytest.raises(SystemExit) as e:
            main(list(argv))
        err = capsys.readouterr().err
        assert e.value.code == 1 and "Traceback" not in err
        return err.strip().splitlines()[-1]

    last = fails(eval_models.main, "smollm2-135m-lora-exam", "smollm2-135m-qlora-exam", "--root", str(tmp_path), "--out", str(tmp_path / "r.json"))
    assert last.startswith("error: nothing to evaluate") and "python training/train_smollm2_135m_qlora_exam.py" in last
    last = fails(eval_pytorch_vs_gguf.main, "--run", f"base:{tiny_model_dir}", "--gguf", str(tmp_path / "x_q4_k_m.gguf"), "--out", str(tmp_path / "r.json"))
    assert "x_q4_k_m.gguf missing" in last and "python tools/export_to_gguf.py x" in last
    assert "unknown run name 'typo-run'" in fails(eval_domain.main, "typo-run", "--root", str(tmp_path))
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------------- command lines
EVAL_SCRIPTS = ["eval_domain", "eval_models", "eval_pytorch_vs_gguf", "eval_recipes", "eval_iris", "eval_feedback", "summarize", "mcq_judge"]


@pytest.mark.parametrize("script", EVAL_SCRIPTS)
def test_help_explains_every_flag(script, monkeypatch, capsys):
    """``python evaluation/<script>.py --help``, run as the file itself: every field of its arguments is a flag with help."""
    path = REPO / "evaluation" / f"{script}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: ")
    for f in dataclasses.fields(importlib.import_module(f"evaluation.{script}").ARGS):
        assert f.metadata.get("help"), f"--{f.name} has no help"
        assert f"--{f.name} " in out


# (script, flag): every count whose "all" (or default) is the flag left out refuses 0, naming the flag.
ZERO_REFUSED = [("eval_domain", "--items"), ("eval_domain", "--ppl_items"), ("eval_domain", "--threads"), ("eval_models", "--items"),
                ("eval_models", "--jobs"), ("eval_pytorch_vs_gguf", "--ppl_items"), ("eval_recipes", "--items"),
                ("eval_recipes", "--max_new_tokens"), ("eval_iris", "--threads"), ("eval_feedback", "--items"),
                ("eval_feedback", "--max_tokens_cap")]


def _fail_fast_args(script: str, tmp: Path) -> list[str]:
    """Arguments under which ``script`` stops at once, inside ``tmp``, should it ever accept the count: a regression must
    fail this test, not train or evaluate in the repository."""
    if script == "eval_iris":
        return [str(tmp / "missing.gguf"), "--out", str(tmp / "r.json")]
    if script == "eval_feedback":
        return ["--probe", str(tmp / "missing.jsonl"), "--out", str(tmp / "r.json")]
    return ["--root", str(tmp), "--out", str(tmp / "r.json"), *(["--skip_training", "--backend", "pytorch"] if script == "eval_recipes" else [])]


@pytest.mark.parametrize(("script", "flag"), ZERO_REFUSED)
def test_a_zero_count_is_refused_naming_the_flag(script, flag, tmp_path, capsys):
    main = importlib.import_module(f"evaluation.{script}").main
    with pytest.raises(SystemExit) as e:
        main([*_fail_fast_args(script, tmp_path), flag, "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: {flag} 0: give " in err, err


def test_model_specs_come_first_or_after_models():
    args = parse_args(ModelArgs(), ["base:x", "run-a", "--items", "3", "--no_merge"], None)
    assert args.models == ["base:x", "run-a"] and args.items == 3 and not args.merge and args.ppl_items is None
    assert parse_args(ModelArgs(), ["--no_merge", "--items", "3", "--models", "base:x", "run-a"], None) == args
    settings = args.settings()
    assert type(settings) is Settings and settings.items == 3 and not settings.merge
    with pytest.raises(ValueError, match="--ppl_items 0"):
        Settings(ppl_items=0)


def _answer(i, cov, tps, text=None):
    """One scored answer to held-out item ``t<i>``."""
    return {"set": "test", "id": f"t{i}", "answer": text or f"answer {i}", "coverage": cov, "rouge_l": cov, "leaks": [], "ended_by_itself": True,
            "prompt_tokens": 10, "completion_tokens": 20, "ttft_s": 0.1, "decode_tps": tps, "e2e_s": 2.0 / tps * 10}


def test_compare_and_summaries_on_synthetic_results():
    a = [_answer(0, 0.2, 10, "x y"), _answer(1, 0.4, 10, "z")]
    b = [_answer(0, 0.6, 20, "x y"), _answer(1, 0.8, 20, "w")]
    models = [{"label": m, "status": "completed", "answers": ans, "summary": summarize_answers(ans), "perplexity": {"perplexity": p, "loss": math.log(p)},
               "memory": {"peak_rss_mb": mem}} for m, ans, p, mem in (("A", a, 20.0, 1000), ("B", b, 10.0, 500))]
    models.insert(1, {"label": "C", "status": "missing"})
    out = compare(models)
    (row,) = out["rows"]
    assert out["reference"] == "A" and row["label"] == "B"
    assert row["coverage_delta"] == pytest.approx(0.4) and row["perplexity_delta"] == pytest.approx(-10)
    assert row["decode_speed_ratio"] == pytest.approx(2) and row["peak_rss_ratio"] == pytest.approx(0.5)
    assert row["identical_answers"] == 0.5


def _report(labels: list[str], argv: list[str]) -> dict:
    """A report as eval_domain.py writes it, with made-up numbers."""
    models = [{"label": label, "status": "completed", "answers": (ans := [_answer(0, 0.1 * k, 10 + k), _answer(1, 0.2, 10)]),
               "summary": summarize_answers(ans), "perplexity": {"perplexity": 30.0 - k}, "memory": {"peak_rss_mb": 900},
               "source": {"format": "pytorch"}} for k, label in enumerate(labels)]
    return {"kind": "eval", "name": "eval_domain", "created": "today", "config": {"argv": argv}, "hardware": {"cpu": "cpu"},
            "generation": {"mode": "greedy", "max_new_tokens": 8}, "items": {"test_items": 2}, "models": models,
            "comparison": compare(models), "wall_seconds": 1.0}


def test_summary_covers_every_answer_quality_report_labelled_by_file_and_says_what_it_skips(tmp_path, capsys):
    from evaluation.summarize import build

    results = tmp_path / "results"
    results.mkdir()
    (results / "eval_domain.json").write_text(json.dumps(_report(["base", "exam run"], ["--items", "30"])))
    (results / "demo_eval_domain.json").write_text(json.dumps(_report(["base", "demo run"], ["base:smollm2-135m", "demo run"])))
    (results / "eval_iris.json").write_text(json.dumps({"kind": "eval", "name": "eval_iris", "models": [{"status": "completed", "metrics": {}}]}))
    (results / "eval_iris.md").write_text("# Iris\n")
    (results / "eval_feedback.json").write_text(json.dumps({"kind": "eval", "name": "eval_feedback", "summary": {}, "rows": []}))
    (results / "benchmark.json").write_text(json.dumps({"kind": "benchmark", "name": "benchmark"}))
    (results / "broken.json").write_text("{")
    text = build(results, tmp_path / "no-logs", results / "summary.md")
    assert text.count("\n## ") == 3
    assert "\n## demo_eval_domain.json\n" in text and "\n## eval_domain.json\n" in text
    assert "`python evaluation/eval_domain.py base:smollm2-135m 'demo run'` -> `demo_eval_domain.json`" in text
    assert "| demo run | PyTorch |" in text and "| exam run | PyTorch |" in text
    assert (results / "demo_eval_domain.png").stat().st_size > 1000 and "![demo_eval_domain.json](demo_eval_domain.png)" in text
    skipped = text.split("\n## Not summarized here\n", 1)[1]
    assert "- `eval_iris.json`: a report of eval_iris.py, which measures something other than answer quality; its own table is eval_iris.md" in skipped
    assert "- `eval_feedback.json`: a report of eval_feedback.py" in skipped and "- `benchmark.json`: a benchmark report" in skipped
    assert "- `broken.json`: unreadable" in skipped
    assert "[summarize] skipped broken.json: unreadable" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- real evaluations
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A tiny LoRA adapter trained for one step by the real training script: <root>/models/tiny-llama-lora-exam."""
    root = tmp_path_factory.mktemp("evalroot")
    data = root / "exam.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_conversations(8)))
    r = run_script("training/train_smollm2_135m_lora_exam.py", "--model", str(tiny_model_dir), "--data_path", str(data), "--root", str(root),
                   "--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--threads", "1",
                   "--save_steps", "50", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return root


def _tiny_items(n=2):
    return prompts.test_items(limit=n)


@pytest.mark.slow
def test_tiny_end_to_end_report_has_the_full_schema(tiny_run, tiny_model_dir):
    out = tiny_run / "results" / "eval_models.json"
    r = run_script("evaluation/eval_models.py", f"base:{tiny_model_dir}", "tiny-llama-lora-exam", "--root", str(tiny_run), "--out", str(out),
                   "--items", "2", "--prompts", "none", "--max_new_tokens", "6", "--ppl_items", "3", "--threads", "1", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[1/2 tiny-llama (base)] 1/2" in r.stdout and "[2/2 tiny-llama-lora-exam] 2/2" in r.stdout  # progress per model and item
    rep = json.loads(out.read_text())
    for key in ("kind", "name", "status", "created", "config", "versions", "git_commit", "hardware", "load_average", "generation", "items",
                "models", "comparison", "wall_seconds"):
        assert key in rep, key
    assert rep["kind"] == "eval" and rep["status"] == "completed" and rep["generation"]["mode"] == "greedy"
    assert rep["items"]["test_items"] == 2 and len(rep["items"]["test_file_sha256"]) == 64
    base, tuned = rep["models"]
    for m in (base, tuned):
        assert m["status"] == "completed", m.get("error")
        assert set(m["memory"]) >= {"rss_before_load_mb", "peak_rss_load_mb", "peak_rss_generate_mb", "peak_rss_perplexity_mb", "cuda_peak_mb"}
        assert m["memory"]["peak_rss_generate_mb"] >= m["memory"]["rss_before_load_mb"] > 0
        assert m["perplexity"]["items"] == 3 and m["perplexity"]["tokens"] > 0 and m["perplexity"]["perplexity"] > 1
        assert len(m["answers"]) == 2
        for a in m["answers"]:
            assert 0 < a["completion_tokens"] <= 6 and a["prompt_tokens"] > 10 and a["e2e_s"] > 0
            assert set(a) >= {"answer", "coverage", "rouge_l", "leaks", "ended_by_itself", "ttft_s", "decode_tps", "reference", "key_concepts"}
        assert set(m["summary"]) >= {"coverage_mean", "rouge_l_mean", "leak_rate", "ended_rate", "decode_tps_mean", "ttft_s_mean", "e2e_s_mean"}
    src = tuned["source"]
    assert src["run"] == "tiny-llama-lora-exam" and src["method"] == "lora" and len(src["adapter_sha256"]["adapter_model.safetensors"]) == 64
    assert src["run_record"]["config"]["model"] == str(tiny_model_dir) and src["run_record"]["global_step"] == 1
    assert len(base["source"]["base_sha256"]["model.safetensors"]) == 64
    assert rep["comparison"]["reference"] == "tiny-llama (base)" and rep["comparison"]["rows"][0]["label"] == "tiny-llama-lora-exam"

    from evaluation.summarize import build

    text = build(out.parent, tiny_run / "training_logs", out.parent / "summary.md")
    assert "## eval_models.json" in text and "| tiny-llama-lora-exam | PyTorch + lora adapter (merged) |" in text
    assert "`python evaluation/eval_models.py " + " ".join(rep["config"]["argv"]) + "` -> `eval_models.json`" in text  # the command that made it
    assert (out.parent / "eval_models.png").stat().st_size > 1000


@pytest.mark.slow
def test_two_greedy_runs_give_identical_answers_and_seeded_sampling_repeats(tiny_run):
    from evaluation.worker import run_job

    src = resolve_spec("tiny-llama-lora-exam", tiny_run)
    items = _tiny_items(2)
    greedy = [run_job(src, Settings(max_new_tokens=8, ppl_items=2, threads=1), items) for _ in range(2)]
    assert [a["answer"] for a in greedy[0]["answers"]] == [a["answer"] for a in greedy[1]["answers"]]
    assert greedy[0]["perplexity"]["per_item"] == greedy[1]["perplexity"]["per_item"]
    # A random tiny model's greedy answer is degenerate (it repeats one token); seeded sampling shows real variety.
    sampled = [run_job(src, Settings(max_new_tokens=8, ppl_items=1, threads=1, sampling=True, temperature=1.0, seed=s), items) for s in (7, 7, 8)]
    texts = [[a["answer"] for a in r["answers"]] for r in sampled]
    assert texts[0] == texts[1] and any(texts[0])
    assert texts[0] != texts[2]


@pytest.mark.slow
def test_gguf_perplexity_matches_pytorch_on_the_same_tokens(embedded_model_dir):
    """The embedded Q4_1 GGUF and its dequantised PyTorch checkpoint score the same token ids almost identically."""
    from evaluation.worker import GGUFModel, TorchModel, perplexity_rows
    from labcore.gguf import embedded_gguf

    settings = Settings(ppl_items=2, threads=2)
    torch_model = TorchModel(resolve_spec("base:smollm2-135m"), settings)
    gguf_model = GGUFModel(resolve_spec(str(embedded_gguf())), settings, n_ctx=64)
    rows = perplexity_rows(torch_model.tokenizer, settings)
    assert rows == perplexity_rows(gguf_model.tokenizer, settings)
    gguf_model.start_scoring(max(len(ids) for _, ids, _ in rows))
    for _, ids, mask in rows:
        a, n = metrics.masked_nll(torch_model.logits(ids), ids, mask)
        b, m = metrics.masked_nll(gguf_model.logits(ids), ids, mask)
        assert n == m > 0
        assert abs(a - b) / n < 0.05, (a / n, b / n)  # mean per-token NLL within 0.05 nats
    assert gguf_model.tokenizer_agrees(torch_model.tokenizer.decode(rows[0][1]), rows[0][1])


@pytest.mark.slow
def test_a_killed_evaluation_leaves_no_report(tiny_run, tiny_model_dir):
    import psutil

    out = tiny_run / "killed" / "eval_models.json"
    proc = subprocess.Popen([sys.executable, str(REPO / "evaluation" / "eval_models.py"), f"base:{tiny_model_dir}", "--root", str(tiny_run),
                             "--out", str(out), "--items", "20", "--max_new_tokens", "64", "--threads", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until the worker is answering items
        if "1/30" in line or time.time() > deadline:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the evaluation runs its model in a subprocess"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "the worker dies with the evaluation"
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())
