"""evaluation/eval_lookup.py: the no-model lookup baseline beside a model report."""

from __future__ import annotations

import json

import pytest

from evaluation import eval_lookup as L


def row(id_, topic, question, answer, concepts=None):
    r = {"id": id_, "topic": topic, "conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    return {**r, "key_concepts": concepts} if concepts is not None else r


TRAIN = [row("t0", "dropout", "How does dropout work at inference?", "At inference dropout is off and activations are scaled."),
         row("t1", "lora", "What does LoRA train?", "LoRA trains two low-rank matrices beside a frozen weight."),
         row("t2", "lora", "Why is LoRA cheap?", "Only the low-rank factors get gradients and optimizer state.")]
TEST = [row("q0", "lora", "Which matrices does LoRA train, and why?", "Two low-rank matrices A and B; the base stays frozen.", ["low-rank", "frozen", "rank r"]),
        row("q1", "dropout", "What changes for dropout at inference time?", "Nothing is dropped; activations are rescaled.", ["rescaled", "inverted dropout"])]


def test_nearest_question_wins_on_informative_words():
    lookup = L.Lookup(TRAIN)
    assert lookup.nearest("Which matrices does LoRA train?")["id"] == "t1"
    assert lookup.nearest("dropout at inference")["id"] == "t0"


def test_topic_ceiling_counts_concepts_anywhere_in_the_topic():
    # q0: "low-rank" and "frozen" occur in LoRA training answers, "rank r" nowhere; q1: neither concept occurs
    assert L.topic_ceiling(TEST, TRAIN) == pytest.approx(2 / 5)


def test_report_pairs_the_lookup_with_each_model_on_the_same_items():
    answers = [{"id": "q0", "coverage": 0.0, "rouge_l": 0.1}, {"id": "q1", "coverage": 0.5, "rouge_l": 0.2}]
    report = {"models": [{"label": "base", "answers": answers}]}
    out = L.lookup_report(report, TRAIN, TEST)
    assert [a["nearest"] for a in out["answers"]] == ["t1", "t0"]
    assert out["answers"][0]["coverage"] == pytest.approx(2 / 3) and out["answers"][1]["coverage"] == 0.0
    diff = out["models"][0]["lookup_minus_model_coverage"]
    assert diff["value"] == pytest.approx((2 / 3 - 0.0 + 0.0 - 0.5) / 2) and diff["items"] == 2
    with pytest.raises(L.EvalError, match="no answers"):
        L.lookup_report({"models": [{"label": "x", "answers": []}]}, TRAIN, TEST)


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in TRAIN))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in TEST))
    answers = [{"id": "q0", "coverage": 1 / 3, "rouge_l": 0.3}, {"id": "q1", "coverage": 0.0, "rouge_l": 0.1}]
    (tmp_path / "r.json").write_text(json.dumps({"items": {"test_file": str(tmp_path / "test.jsonl")}, "models": [{"label": "m", "answers": answers}]}))
    L.main(["--report", str(tmp_path / "r.json"), "--train_file", str(tmp_path / "train.jsonl"), "--out", str(tmp_path / "o.json")])
    record = json.loads((tmp_path / "o.json").read_text())
    assert record["status"] == "completed" and record["result"]["items"] == 2
    assert "| m | 2 |" in (tmp_path / "o.md").read_text()
    with pytest.raises(SystemExit):
        L.main(["--report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o2.json")])
    assert "run evaluation/eval_domain.py first" in capsys.readouterr().err
