"""The Answer Feedback probe (data/feedback_probe.jsonl) and evaluation/eval_feedback.py.

Fast: the probe is well formed, and Iris's verdict rule (iris.grounding.grade, what /feedback uses) never calls one of
its wrong answers correct and gives no verdict where no course item matches. Slow: the script grades a mix of rows
through the real app's API with the embedded model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from evaluation import eval_feedback as ef
from iris import grounding

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = "embedded:smollm2-135m"


@pytest.fixture(scope="module")
def probe() -> list[dict]:
    return ef.load_probe(ef.PROBE)


def test_probe_is_well_formed(probe):
    labels = Counter(r["label"] for r in probe)
    assert set(labels) <= set(ef.ALL_LABELS)
    assert sum(labels[lab] for lab in ef.LABELS) >= 30
    assert all(labels[lab] >= 10 for lab in ef.LABELS), labels
    assert labels[ef.NO_REF] >= 4
    assert len({r["id"] for r in probe}) == len(probe)
    assert all(r.get("note") for r in probe)
    # every labelled question has all three kinds of answer
    by_question = {}
    for r in probe:
        by_question.setdefault(r["question"], set()).add(r["label"])
    assert all(kinds == set(ef.LABELS) for kinds in by_question.values() if ef.NO_REF not in kinds)
    assert len([q for q, kinds in by_question.items() if ef.NO_REF not in kinds]) >= 10


def test_probe_questions_match_course_items_or_none(probe):
    index = grounding.load_index()
    for r in probe:
        _, sim = index.match(r["question"])
        if r["label"] == ef.NO_REF:
            assert sim < grounding.MATCH_THRESHOLD, (r["id"], sim)
        else:
            assert sim >= grounding.MATCH_THRESHOLD, (r["id"], sim)


def test_rule_never_calls_a_wrong_probe_answer_correct(probe):
    verdicts = {r["id"]: grounding.grade(r["question"], r["answer"])["verdict"] for r in probe}
    wrong_called_correct = [r["id"] for r in probe if r["label"] == "wrong" and verdicts[r["id"]] == "correct"]
    assert wrong_called_correct == []
    assert [r["id"] for r in probe if r["label"] == ef.NO_REF and verdicts[r["id"]] is not None] == []


def test_a_few_items_mix_labels(probe):
    picked = ef.select(probe, 8)
    assert len(picked) == 8 and {r["label"] for r in picked} == set(ef.ALL_LABELS)
    assert ef.select(probe, None) == probe and ef.select(probe, 10_000) == probe


def test_no_cap_is_the_apps_zero():
    assert ef.app_env(None)["IRIS_MAX_TOKENS_CAP"] == "0" and ef.app_env(8)["IRIS_MAX_TOKENS_CAP"] == "8"


def test_summary_and_report(tmp_path):
    rows = [
        {"id": "a", "label": "correct", "verdict": "correct", "grounded": True, "found": ["p"], "missing": [], "seconds": 1.0},
        {"id": "b", "label": "wrong", "verdict": "correct", "grounded": True, "found": ["p"], "missing": [], "seconds": 2.0},
        {"id": "c", "label": "partly correct", "verdict": "wrong", "grounded": True, "found": [], "missing": ["p"], "seconds": 1.0},
        {"id": "d", "label": "no reference", "verdict": None, "grounded": False, "found": [], "missing": [], "seconds": 1.0},
        {"id": "e", "label": "no reference", "verdict": "error", "error": "AppError: boom", "seconds": 0.5},
    ]
    s = ef.summarize(rows)
    assert s["wrong_called_correct"] == 1 and s["wrong_called_correct_share"] == 1.0
    assert s["no_reference_no_verdict"] == 1 and s["errors"] == 1 and not s["requirements_met"]
    assert s["confusion"]["no reference"] == {"none": 1, "error": 1} and s["accuracy"]["partly correct"] == 0.0
    record = {"config": {"argv": ["--items", "5"]}, "model": EMBEDDED, "model_label": "x", "max_tokens_cap": 8, "hardware": {"cpu": "cpu", "cpu_count": 2},
              "finished": "now", "wall_seconds": 5.0, "probe": "p.jsonl", "probe_rows": 5, "items": 5, "summary": s, "rows": rows}
    md = ef.write_report(tmp_path / "r.json", record, ef.markdown)
    text = md.read_text()
    assert "`python evaluation/eval_feedback.py --items 5`" in text and "(5 rows; --items 5)" in text
    assert "**FAIL**" in text and "| wrong | 1 | 0 | 0 | 0 | 0 | 1 | 0.0% |" in text and "| b | wrong | correct |" in text
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["wrong_called_correct"] == 1
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_bad_probe_is_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q", "answer": "a", "label": "maybe"}) + "\n")
    with pytest.raises(ef.EvalError, match="label 'maybe'"):
        ef.load_probe(bad)


@pytest.mark.slow
def test_eval_feedback_through_the_app(tmp_path):
    out = tmp_path / "eval_feedback.json"
    env = {**os.environ, "IRIS_ADAPTER_DIR": str(tmp_path / "no-adapters"), "HF_HUB_OFFLINE": "1"}  # no tuned-model export at startup
    r = subprocess.run([sys.executable, str(REPO / "evaluation" / "eval_feedback.py"), "--model", EMBEDDED, "--max_tokens_cap", "8",
                        "--items", "8", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert record["model"] == EMBEDDED and len(rows) == 8 and {row["label"] for row in rows} == set(ef.ALL_LABELS)
    assert record["summary"]["wrong_called_correct"] == 0 and record["summary"]["errors"] == 0
    assert all(row["verdict"] is None and row["status"] == "unverified" for row in rows if row["label"] == ef.NO_REF)
    assert all(row["grounded"] and row["verdict"] in ef.LABELS for row in rows if row["label"] != ef.NO_REF)
    assert all(isinstance(row["seconds"], float) for row in rows) and record["hardware"]["cpu"]
    assert "Wrong answers called correct | 0 / 2" in out.with_suffix(".md").read_text()
    assert "8/8" in r.stdout  # progress per row
