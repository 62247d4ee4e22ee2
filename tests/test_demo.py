"""The demo's resume logic: which steps a re-run skips, and which a changed setting redoes (steps stubbed out)."""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import sys

import pytest
from conftest import REPO

from tools import demo


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A finished 12-step demo in a scratch repository; run_step records its calls instead of running them."""
    import training.models

    monkeypatch.setattr(demo, "REPO", tmp_path)
    monkeypatch.setattr(training.models, "CACHE", tmp_path / ".cache")
    (tmp_path / ".cache/models/smollm2-135m").mkdir(parents=True)
    (tmp_path / ".cache/models/smollm2-135m/materialized.json").write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/id2223_exam_prep_full.jsonl").write_text("")
    (tmp_path / "evaluation_results").mkdir()
    (tmp_path / "evaluation_results/data_report_id2223_exam_prep_full.json").write_text("{}")
    adapter = tmp_path / "models" / demo.RUN
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "training_logs").mkdir()
    (tmp_path / "training_logs" / f"{demo.RUN}.json").write_text(json.dumps({"status": "completed", "config": {"max_steps": 12}}))
    report = tmp_path / "evaluation_results/demo_eval_domain.json"
    report.write_text(json.dumps({"config": {"settings": {"items": 12, "ppl_items": 60, "max_new_tokens": 96}}}))
    later = (adapter / "adapter_model.safetensors").stat().st_mtime + 5
    os.utime(report, (later, later))
    calls = {}

    def run_step(n, total, name, cmd, done):
        calls[n] = (cmd, done)
        return 0.0

    monkeypatch.setattr(demo, "run_step", run_step)
    monkeypatch.setattr(demo, "summary", lambda *a: None)
    return tmp_path, calls


def test_rerun_with_the_same_settings_skips_training_and_evaluation(repo):
    _, calls = repo
    assert demo.main([]) == 0
    assert calls[1][1] and calls[2][1] and calls[3][1] and calls[4][1]


def test_new_max_steps_retrain_from_scratch(repo):
    root, calls = repo
    stale = root / "checkpoints" / demo.RUN / "checkpoint-6"
    stale.mkdir(parents=True)
    assert demo.main(["--max_steps", "40"]) == 0
    cmd, done = calls[3]
    assert not done and "--resume" not in cmd and cmd[cmd.index("--max_steps") + 1] == "40"
    assert cmd[cmd.index("--per_device_train_batch_size") + 1] == "4", "4 conversations per step, whatever the script's recipe"
    assert not stale.exists(), "the other schedule's checkpoints must not be resumed"


def test_interrupted_run_of_the_same_schedule_resumes(repo):
    root, calls = repo
    record = root / "training_logs" / f"{demo.RUN}.json"
    record.write_text(json.dumps({"status": "running", "config": {"max_steps": 12}}))
    (root / "checkpoints" / demo.RUN / "checkpoint-6").mkdir(parents=True)
    assert demo.main([]) == 0
    cmd, done = calls[3]
    assert not done and "--resume" in cmd


def test_new_items_re_evaluate(repo):
    _, calls = repo
    assert demo.main(["--items", "30"]) == 0
    assert calls[3][1] and not calls[4][1]


def test_the_evaluation_steps_are_valid_eval_domain_command_lines(repo):
    from evaluation import eval_domain
    from evaluation.common import parse_args

    _, calls = repo
    assert demo.main(["--items", "7", "--ppl_items", "9", "--shipped_items", "11", "--max_new_tokens", "13"]) == 0
    step4, step6 = (parse_args(eval_domain.ARGS, calls[n][0][2:], None) for n in (4, 6))
    assert step4.models == ["base:smollm2-135m", demo.RUN] and (step4.items, step4.ppl_items, step4.max_new_tokens) == (7, 9, 13)
    assert (step6.items, step6.ppl_items, step6.max_new_tokens, step6.sampling, step6.repeat_penalty) == (11, 9, 256, True, 1.15)


@pytest.mark.parametrize(("flag", "value"), [("--max_steps", "-1"), ("--max_steps", "0"), ("--items", "0"), ("--ppl_items", "0"),
                                             ("--max_new_tokens", "0"), ("--shipped_items", "0")])
def test_counts_below_one_are_refused_naming_the_flag(repo, flag, value, capsys):
    _, calls = repo
    with pytest.raises(SystemExit) as e:
        demo.main([flag, value])
    assert e.value.code == 2 and f"error: {flag} {value}: give 1 or more" in capsys.readouterr().err and not calls


def test_a_count_that_is_not_a_number_is_refused(repo, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--ppl_items", "x"])
    assert e.value.code == 2 and "argument --ppl_items: invalid int value: 'x'" in capsys.readouterr().err


def test_help_explains_every_flag(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tools/demo.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "tools" / "demo.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f.metadata["help"] and f"--{f.name} " in out for f in dataclasses.fields(demo.ARGS))


def test_the_shipped_comparison_runs_once_per_adapter_and_item_count(repo):
    root, calls = repo
    assert demo.main([]) == 0
    cmd, done = calls[6]
    assert not done, "no report yet: the base-against-shipped step runs"
    assert "base:smollm2-135m@q8_0" in cmd and f"adapters/{demo.SHIPPED}@q8_0" in cmd and cmd[cmd.index("--items") + 1] == "40"
    assert cmd[cmd.index("--notes") + 1] == "3", "both models get the course notes Study Chat sends"
    report = root / "evaluation_results" / "demo_shipped.json"
    report.write_text(json.dumps({"config": {"settings": {"items": 40, "ppl_items": 60, "max_new_tokens": 256}}}))
    assert demo.main([]) == 0 and not calls[6][1], "a report made without the notes is redone"
    report.write_text(json.dumps({"config": {"settings": {"items": 40, "ppl_items": 60, "max_new_tokens": 256, "notes": 3, "max_length": 1536}}}))
    assert demo.main([]) == 0 and calls[6][1], "a current report is not redone"
    assert demo.main(["--shipped_items", "60"]) == 0 and not calls[6][1]
