"""evaluation/eval_iris.py without a model: deterministic held-out inputs, metric counting, the feedback label mapping,
and a whole run (loader patched to a fake llama) that writes the JSON and Markdown reports."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

from evaluation import eval_iris as E
from iris import grammars, logic, plan
from training.dataset_utils import EXAM_DATA, EXAM_TEST_DATA


@pytest.fixture(scope="module")
def test_rows():
    return E.load_test_rows(EXAM_TEST_DATA)


@pytest.fixture(scope="module")
def inputs(test_rows):
    return E.build_inputs(test_rows, E.course_topics(test_rows))


# ------------------------------------------------------------------------------------------------- a fake model
def quiz_text(n: int, prefix: str = "") -> str:
    blocks = [f"**Question {i}.** Which statement about topic number {i} is true?\nA) first {i}\nB) second {i}\nC) third {i}\nD) fourth {i}"
              for i in range(1, n + 1)]
    key = "\n".join(f"{i}. B: because the second option is right." for i in range(1, n + 1))
    return prefix + "\n\n".join(blocks) + "\n\n**Answer key**\n" + key


def tool_of(messages: list[dict]) -> str:
    return next(t for t, prompt in logic.SYSTEM_PROMPTS.items() if messages[0]["content"] == prompt)


class FakeLlama:
    """``create_chat_completion`` as llama-cpp-python returns it; replies by tool; records every call."""

    def __init__(self, replies: dict, finish: str = "stop"):
        self.replies, self.finish, self.calls, self.resets, self.closed = replies, finish, [], 0, False

    def reset(self):
        self.resets += 1

    def close(self):
        self.closed = True

    def create_chat_completion(self, messages, **kwargs):
        tool = tool_of(messages)
        self.calls.append({"tool": tool, "messages": messages, "kwargs": kwargs})
        reply = self.replies[tool]
        text = reply(messages) if callable(reply) else reply
        return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": self.finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


GOOD = {"quiz": lambda m: quiz_text(int(re.search(r"a (\d+)-question", m[1]["content"]).group(1)), prefix="Assistant: "),
        "mixed_drill": quiz_text(4), "study_plan": "", "feedback": "Verdict: correct. You covered the main idea."}
BAD = {"quiz": "Sure! Here is a quiz.", "mixed_drill": "Question one: what?", "study_plan": "Study hard.", "feedback": "Nice try."}


# ------------------------------------------------------------------------------------------------- inputs
def test_inputs_are_deterministic_and_follow_the_brief(test_rows, inputs):
    topics = E.course_topics(test_rows)
    assert E.build_inputs(test_rows, topics) == inputs
    assert E.build_inputs(test_rows, topics, seed=1) != inputs
    assert {k: len(v) for k, v in inputs.items()} == {"quizzes": 20, "drills": 10, "plans": 10, "feedback": 36}
    quizzes = inputs["quizzes"]
    assert [q["difficulty"] for q in quizzes[:4]] == ["easy", "medium", "hard", "easy"]
    assert all(q["n"] == 3 for q in quizzes) and len({q["topic_id"] for q in quizzes}) == 20  # spread, no repeats
    areas = {r["area"] for r in test_rows if r["topic"] in {q["topic_id"] for q in quizzes}}
    assert areas == {r["area"] for r in test_rows}  # the quizzes span every area of the course
    titles = {t for _, t in topics}
    for d in inputs["drills"]:
        assert d["n"] == 4 and 2 <= len(d["topics"]) <= 3 and set(d["topics"]) <= titles
        assert not any("," in t for t in d["topics"])  # the app would split such a title in a topic list
    for p in inputs["plans"]:
        start, exam = date.fromisoformat(p["start"]), date.fromisoformat(p["exam"])
        assert 10 <= (exam - start).days <= 40 and 4 <= p["hours"] <= 12
        assert 3 <= len(p["topics"]) <= 6 and 1 <= len(p["weak"]) <= 2 and set(p["weak"]) <= set(p["topics"])
        plan.build_schedule(start, exam, p["hours"], p["topics"], p["weak"])  # a valid request: no InputError
    seeds = [i["seed"] for kind in inputs.values() for i in kind]
    assert len(set(seeds)) == len(seeds)
    small = E.build_inputs(test_rows, topics, quizzes=2, drills=1, plans=1, feedback=1)
    assert {k: len(v) for k, v in small.items()} == {"quizzes": 2, "drills": 1, "plans": 1, "feedback": 3}


def test_feedback_inputs_are_held_out_with_labels_by_construction(test_rows, inputs):
    by_id = {r["id"]: r for r in test_rows}
    training_turns = set()
    for line in EXAM_DATA.read_text(encoding="utf-8").splitlines():
        if line.strip():
            training_turns |= {m["content"] for m in json.loads(line)["conversations"]}
    fb = inputs["feedback"]
    assert [f["label"] for f in fb[:3]] == ["correct", "incorrect", "partly correct"]
    assert len({f["test_id"] for f in fb}) == 12 and len({f["topic"] for f in fb}) == 12
    for f in fb:
        row = by_id[f["test_id"]]  # from the test split
        assert f["question"] == row["question"] and f["topic"] == row["topic"]
        assert f["question"] not in training_turns and f["answer"] not in training_turns  # held out
        if f["label"] == "correct":
            assert f["answer"] == row["reference"]
        elif f["label"] == "incorrect":
            other = by_id[f["wrong_from"]]
            assert f["answer"] == other["reference"] and other["topic"] != row["topic"] and f["wrong_topic"] == other["topic"]
        else:
            assert row["reference"].startswith(f["answer"]) and 15 <= len(f["answer"]) < len(row["reference"])
            assert f["answer"].endswith((".", "!", "?"))


def test_first_sentence_and_label_parsing():
    assert E.first_sentence("LoRA freezes W, e.g. the attention weights. It trains A and B.") == "LoRA freezes W, e.g. the attention weights."
    assert E.first_sentence("The loss is 0.5 here. Then (b) it drops.") == "The loss is 0.5 here."
    assert E.first_sentence("One sentence only") == "One sentence only"
    assert E.verdict_label("correct") == "correct"
    assert E.verdict_label("partly correct") == "partly correct"
    assert E.verdict_label("wrong") == "incorrect"
    assert E.verdict_label(None) == E.NO_VERDICT
    # every spelling parse_feedback accepts lands on one of the three labels
    for text, label in [("Verdict: partially correct.", "partly correct"), ("Verdict: mostly correct.", "partly correct"),
                        ("**Verdict:** Incorrect.", "incorrect"), ("Verdict: wrong", "incorrect"), ("Verdict: correct.", "correct"),
                        ("Good job overall.", E.NO_VERDICT)]:
        assert E.verdict_label(logic.parse_feedback(text)["verdict"]) == label, text
    assert set(logic.VERDICT_NAMES.values()) | {None} == set(E.VERDICT_LABEL)


# ------------------------------------------------------------------------------------------------- metrics
def test_question_metrics_count_only_complete_first_attempts():
    items = [{"id": f"q{i}", "n": 3} for i in range(4)]
    records = [
        {"id": "q0", "result": {"requested": 3, "status": "ok", "attempts": [{"parsed": 2}, {"parsed": 3}]}},  # ok after a re-ask
        {"id": "q1", "result": {"requested": 3, "status": "ok", "attempts": [{"parsed": 3}]}},
        {"id": "q2", "result": {"requested": 3, "status": "fallback", "attempts": [{"parsed": 0}, {"parsed": 0}]}},
        {"id": "q3", "result": None, "error": "ValueError: boom"},
    ]
    m = E.question_metrics(items, records)
    assert (m["first_try_parsed"], m["first_try_rate"]) == (1, 0.25)
    assert (m["from_model_ok"], m["from_model_ok_rate"], m["reasked"], m["errors"]) == (2, 0.5, 2, 1)
    assert m["status_counts"] == {"ok": 2, "partial": 0, "fallback": 1, "failed": 0, "error": 1}
    assert m["first_try_questions_mean"] == pytest.approx(5 / 3)
    assert E.question_metrics([], [])["first_try_rate"] is None


def test_plan_feedback_and_leak_metrics():
    plans = [{"id": "p1", "result": {"model_draft_problems": [], "checks": [], "model_activities": 4, "days": [{}] * 4, "leak_flags": []}},
             {"id": "p2", "result": {"model_draft_problems": ["not covered: LoRA"], "checks": [], "model_activities": 0, "days": [{}] * 5,
                                     "leak_flags": ["next_turn_cut"]}},
             {"id": "p3", "result": {"model_draft_problems": ["no plan lines could be read"], "checks": ["a day appears twice"],
                                     "model_activities": 2, "days": [{}] * 4, "leak_flags": []}}]
    m = E.plan_metrics(plans)
    assert (m["draft_accepted"], m["final_sound"], m["model_activities_mean"]) == (1, 2, 2.0)
    assert m["draft_accepted_rate"] == pytest.approx(1 / 3) and m["model_activity_share_mean"] == pytest.approx((1 + 0 + 0.5) / 3)

    items = [{"id": f"f{i}", "label": label} for i, label in enumerate(["correct", "incorrect", "partly correct", "incorrect", "correct"])]
    verdicts = ["correct", "correct", None, "wrong", "partly correct"]
    records = [{"id": f"f{i}", "result": {"verdict": v, "re_asked": v is None, "leak_flags": []}} for i, v in enumerate(verdicts)]
    f = E.feedback_metrics(items, records)
    assert (f["answers"], f["right"], f["accuracy"]) == (5, 2, 0.4)
    assert f["accuracy_correct"] == 0.5 and f["accuracy_incorrect"] == 0.5 and f["accuracy_partly_correct"] == 0.0
    assert (f["incorrect_answers"], f["incorrect_called_correct"], f["incorrect_called_correct_rate"]) == (2, 1, 0.5)
    assert (f["no_verdict"], f["re_asked"]) == (1, 1)
    assert f["confusion"] == {"correct": {"correct": 1, "partly correct": 1}, "partly correct": {E.NO_VERDICT: 1},
                              "incorrect": {"correct": 1, "incorrect": 1}}

    leaks = E.leak_metrics({"plans": plans, "feedback": records + [{"id": "x", "result": None}]})
    assert (leaks["outputs"], leaks["flagged"], leaks["rate"]) == (8, 1, 1 / 8)
    assert leaks["flags"] == {"next_turn_cut": 1} and leaks["rate_by_kind"] == {"plans": 1 / 3, "feedback": 0.0}


# ------------------------------------------------------------------------------------------------- running
def test_evaluate_model_drives_iris_tasks_with_iris_settings():
    start, exam, topics, weak = date(2026, 3, 2), date(2026, 3, 20), ["LoRA", "Dropout", "RAG"], ["RAG"]
    schedule = plan.build_schedule(start, exam, 6, topics, weak)
    for d in schedule.days:
        d.activity = "do a practice quiz"
    draft = "\n".join(d.line() for d in schedule.days)  # a draft that follows the rules
    inputs = {"quizzes": [{"id": "quiz-01", "topic": "LoRA", "n": 3, "difficulty": "easy", "seed": 5}],
              "drills": [{"id": "drill-01", "topics": ["LoRA", "RAG"], "n": 4, "seed": 6}],
              "plans": [{"id": "plan-01", "start": start.isoformat(), "exam": exam.isoformat(), "hours": 6, "topics": topics, "weak": weak, "seed": 7}],
              "feedback": [{"id": "fb-01-partly", "question": "What is a feature store?", "label": "partly correct", "seed": 8,
                            "answer": "The shared data layer: feature pipelines write features, training and inference pipelines read them."}]}
    llm = FakeLlama({**GOOD, "study_plan": draft})
    lines = []
    out = E.evaluate_model("fake", llm, inputs, log=lambda *a, **k: lines.append(a[0]))
    for call in llm.calls:  # exactly Iris's settings, plus the request's seed and Iris's grammar
        kwargs = {k: v for k, v in call["kwargs"].items() if k not in ("seed", "grammar")}
        guard = kwargs.pop("logits_processor", None)
        assert kwargs == {k: v for k, v in logic.settings(call["tool"]).items() if k != "no_repeat_ngram"}
        expected_n = logic.NO_REPEAT_NGRAM.get(call["tool"])
        assert (guard[0].n if guard else None) == expected_n  # quizzes and drills get a fresh no-repeat guard
    assert [c["kwargs"].get("grammar") for c in llm.calls[:2]] == [grammars.compiled(grammars.quiz(3)), grammars.compiled(grammars.drill(4))]
    assert "grammar" not in llm.calls[2]["kwargs"]  # the study plan's layout comes from code
    assert [c["kwargs"]["seed"] for c in llm.calls] == [5, 6, 7, 8] and llm.resets == 4
    assert llm.calls[0]["messages"] == logic.quiz_prompt("LoRA", 3, "easy")
    assert len(lines) == 4 and "quiz 1/1 quiz-01: ok, first try 3/3" in lines[0]
    m = out["metrics"]
    assert m["quiz"]["first_try_rate"] == 1.0 and m["drill"]["first_try_rate"] == 1.0
    assert m["plan"]["draft_accepted_rate"] == 1.0 and m["plan"]["model_activities_mean"] == len(schedule.days) - 1  # Iris writes the mock exam's
    assert m["feedback"]["accuracy"] == 1.0
    assert m["leakage"]["flags"] == {"role_or_special_token": 1}  # the quiz reply's "Assistant: "
    rec = out["outputs"]["quizzes"][0]
    assert rec["result"]["status"] == "ok" and rec["calls"][0]["raw"].startswith("Assistant: ") and rec["calls"][0]["finish_reason"] == "stop"


def test_main_writes_json_and_markdown(tmp_path, monkeypatch, capsys):
    import labcore.gguf

    good, bad = tmp_path / "good.gguf", tmp_path / "bad-model.gguf"
    good.write_bytes(b"GGUF")
    bad.write_bytes(b"GGUF")
    loaded = []

    def fake_load(path, **kwargs):
        assert kwargs["n_ctx"] == 2048 and kwargs["n_threads"] == 1
        loaded.append(FakeLlama(GOOD if "good" in str(path) else BAD))
        return loaded[-1]

    monkeypatch.setattr(labcore.gguf, "load_llama", fake_load)
    out = tmp_path / "res" / "eval_iris.json"
    E.main([f"ref={good}", str(bad), "--quizzes", "2", "--drills", "1", "--plans", "1", "--feedback", "1", "--threads", "1", "--out", str(out)])
    record = json.loads(out.read_text())
    assert {"kind", "name", "config", "versions", "hardware", "git_commit", "generation", "inputs", "models", "comparison",
            "status", "markdown", "wall_seconds"} <= set(record)
    assert record["name"] == "eval_iris" and record["status"] == "completed" and all(llm.closed for llm in loaded)
    assert [m["label"] for m in record["models"]] == ["ref", "bad-model"]
    assert set(record["inputs"]) >= {"quizzes", "drills", "plans", "feedback", "test_file_sha256"}
    assert len(record["models"][1]["outputs"]["feedback"]) == 3
    row = record["comparison"]["rows"][0]
    assert record["comparison"]["reference"] == "ref" and row["label"] == "bad-model"
    assert row["deltas"]["quiz.first_try_rate"] == -1.0
    assert row["deltas"]["feedback.accuracy"] == 0.0  # verdicts come from the course rubric, whatever the model writes
    assert record["models"][1]["metrics"]["quiz"]["status_counts"]["fallback"] == 2  # the bank stood in
    md = out.with_suffix(".md").read_text()
    assert "| Metric | ref | bad-model | Δ bad-model |" in md and "Feedback confusion" in md
    assert not list(out.parent.glob(".*tmp*"))  # atomic writes leave no temporary files
    assert "quiz 2/2" in capsys.readouterr().out


def test_grammar_both_runs_each_request_in_both_modes_back_to_back(tmp_path, monkeypatch):
    import labcore.gguf

    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF")
    loaded = []
    monkeypatch.setattr(labcore.gguf, "load_llama", lambda path, **kw: loaded.append(FakeLlama(GOOD)) or loaded[-1])
    out = tmp_path / "eval_iris.json"
    E.main([f"m={good}", "--quizzes", "2", "--drills", "1", "--plans", "0", "--feedback", "0", "--grammar", "both", "--out", str(out)])
    record = json.loads(out.read_text())
    assert [(m["label"], m["grammar"]) for m in record["models"]] == [("m", True), ("m, no grammar", False)]
    calls = loaded[0].calls  # quiz 1 with, then without a grammar; then quiz 2; then the drill
    assert [("grammar" in c["kwargs"], c["tool"]) for c in calls] == [(True, "quiz"), (False, "quiz")] * 2 + [(True, "mixed_drill"), (False, "mixed_drill")]
    assert {"tokens_per_second", "seconds_per_request", "judge_agree_rate"} <= set(record["models"][1]["metrics"]["quiz"])


def test_bad_command_lines(tmp_path, capsys):
    def fails(*argv) -> str:
        with pytest.raises(SystemExit) as e:
            E.main(list(argv))
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("\n") == 1, err
        return err

    assert "error: no such GGUF file" in fails(str(tmp_path / "missing.gguf"))
    a = tmp_path / "a.gguf"
    a.write_bytes(b"GGUF")
    assert "share a label" in fails(str(a), f"a={a}")
    assert "empty label" in fails(f"={a}")
    assert E.parse_model(f"base={a}") == ("base", a) and E.parse_model(str(a)) == ("a", a)


@pytest.mark.parametrize("flag", ["--quizzes", "--drills", "--plans", "--feedback"])
def test_request_counts_may_be_zero_but_not_negative(flag, capsys):
    assert getattr(E.parse_args(E.ARGS, ["a.gguf", flag, "0"], None), flag[2:]) == 0  # 0: none of these requests
    with pytest.raises(SystemExit) as e:
        E.main(["a.gguf", flag, "-1"])
    assert e.value.code == 2 and f"error: {flag} -1: give 0 or more" in capsys.readouterr().err


def test_models_are_required(capsys):
    with pytest.raises(SystemExit) as e:
        E.main(["--quizzes", "1"])
    assert e.value.code == 2 and "--models" in capsys.readouterr().err
