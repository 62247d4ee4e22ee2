"""Shipped datasets, the builder, the cleaning tool and the data report."""

from __future__ import annotations

import collections
import json
import re
from datetime import date
from pathlib import Path

import pytest
from conftest import run_script

from iris import prompts, tasks
from iris.prompts import SYSTEM_PROMPTS
from labcore.text import meta_hits
from tools import build_datasets, clean_exam_data, data_report, kb_check
from training import dataset_utils as du

TRAIN, TEST, GENERAL = du.EXAM_DATA, du.EXAM_TEST_DATA, du.GENERAL_DATA


def test_builder_reproduces_the_shipped_files_byte_for_byte():
    r = run_script("tools/build_datasets.py", "--check", timeout=300)
    assert r.returncode == 0, r.stderr


def test_exam_training_file_meets_the_dataset_bar():
    rows = du.load_conversations(TRAIN)
    assert len(rows) >= 2000
    assert len({json.dumps(r["messages"]) for r in rows}) == len(rows)
    finals = [r["messages"][-1]["content"] for r in rows]
    assert len(set(finals)) >= 1800
    near = {re.sub(r"[^a-z0-9]+", " ", a.lower()).strip() for a in finals}
    assert 1 - len(near) / len(rows) < 0.02
    kinds = collections.Counter(r["kind"] for r in rows)
    kinds["quiz"] += kinds["quiz_grade"]
    kinds["drill"] += kinds["drill_grade"]
    for kind in ("concept", "compare", "quiz", "feedback", "cheat_sheet", "study_plan", "drill"):
        assert kinds[kind] >= 150, kind
    assert sum(1 for r in rows if sum(m["role"] == "user" for m in r["messages"]) >= 2) >= 200
    assert len({t for r in rows for t in r["topic"].split(",")}) >= 60
    for r in rows:
        for i, m in enumerate(r["messages"]):
            if m["role"] == "assistant":
                grading_turn = r["kind"] in ("quiz_grade", "drill_grade") and i == len(r["messages"]) - 1
                assert (15 if grading_turn else 40) <= len(m["content"].split()) <= 300, r["id"]
            else:
                assert not meta_hits(m["content"]), r["id"]
    verdicts = collections.Counter(r["messages"][-1]["content"].split(".")[0] for r in rows if r["kind"] == "feedback")
    assert set(verdicts) == {"Verdict: correct", "Verdict: partly correct", "Verdict: wrong"}


def test_held_out_split_is_disjoint_and_covers_every_area():
    train = du.load_conversations(TRAIN)
    test = du.load_conversations(TEST)
    assert len(test) >= 200
    norm = data_report.norm
    train_q = {norm(m["content"]) for r in train for m in r["messages"] if m["role"] == "user"}
    assert not [r["id"] for r in test if norm(data_report.first_user(r)) in train_q]
    assert all(r["messages"][0] == {"role": "system", "content": SYSTEM_PROMPTS["study_chat"]} for r in test)
    assert all(r["key_concepts"] and r["messages"][-1]["role"] == "assistant" for r in test)
    for r in test:
        for c in r["key_concepts"]:
            assert c.lower() in r["messages"][-1]["content"].lower(), (r["id"], c)
    assert {r["area"] for r in test} == {r["area"] for r in train}


def test_general_set_is_sharegpt_varied_and_multi_turn():
    lines = [json.loads(x) for x in GENERAL.read_text().splitlines()]
    assert len(lines) >= 550
    assert all("conversations" in x and {"from", "value"} <= set(x["conversations"][0]) for x in lines)
    rows = du.load_conversations(GENERAL)
    multi = sum(1 for r in rows if sum(m["role"] == "user" for m in r["messages"]) >= 2)
    assert multi / len(rows) >= 0.25
    cats = collections.Counter(x["category"] for x in lines)
    assert {"explanation", "summary", "email_letter", "list_sorting", "step_by_step", "tips", "rewriting"} <= set(cats)


# ------------------------------------------------------------------ train/serve parity
def captured_requests(kind: str, args: dict) -> list[list[dict]]:
    """The requests Iris's own task function sends for ``args`` (first try and stricter re-ask), via a fake model."""
    sent = []

    def generate(messages, tool, grammar=None):
        sent.append(messages)
        return "nothing parseable"

    if kind in ("quiz", "quiz_grade"):
        tasks.run_quiz(generate, args["topic"], args["n"], args["difficulty"])
    elif kind == "feedback":
        tasks.run_feedback(generate, args["question"], args["answer"])
        # Rows with the strict suffix were Iris's re-ask before the verdict came from the rubric (and a grammar fixed
        # it); the model keeps them as one more phrasing of the same request.
        sent.append(prompts.feedback_prompt(args["question"], args["answer"], strict=True))
    elif kind == "cheat_sheet":
        tasks.run_cheat_sheet(generate, args["topics"], "model")
    elif kind == "study_plan":
        tasks.run_study_plan(generate, date.fromisoformat(args["start"]), date.fromisoformat(args["exam"]), args["hours"], args["topics"], args["weak"])
    elif kind in ("drill", "drill_grade"):
        tasks.run_drill(generate, args["topics"], args["n"])
    else:
        sent.append(tasks.chat_messages([], args["message"], lambda text: len(text.split()), 4096, 512, args.get("notes", ()))[0])
    return sent


def test_every_kind_of_training_row_is_the_request_iris_sends():
    rows = du.load_conversations(TRAIN)
    by_kind = collections.defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    assert set(by_kind) == set(data_report.TOOL_OF_KIND)
    for kind, group in by_kind.items():
        for r in group[:: max(1, len(group) // 5)]:  # about five rows of each kind, spread over the file
            args = r["prompt"]["args"]
            assert r["messages"][:2] in captured_requests(kind, args), (kind, r["id"])


# ------------------------------------------------------------------ data v2 gates
FIXTURES = Path(__file__).parent / "fixtures"


def test_v2_gates_fail_on_a_file_built_like_v1_and_pass_on_the_shipped_files(tmp_path):
    """The fixtures are rows of the v1 files (commit 315e017): the exam file's first plans that fail and pass
    check_plan, quizzes, drills, feedback and concept rows, the quiz row whose question test item 245 reworded;
    and the general file's first 150 rows."""
    rep = data_report.report(FIXTURES / "exam_v1_sample.jsonl", FIXTURES / "exam_v1_test_sample.jsonl", model=None)
    limits = {flag: default for flag, default, _ in data_report.GATES.values()}
    failed = {f.split(" =")[0] for f in data_report.check_gates(rep, limits)}
    assert failed >= {"prompt_mismatch_rate", "plan_invalid_rate", "correct_longest_rate", "top_opening_rate", "test_near_dup_rate"}
    assert rep["plan_invalid_rate"] == 0.5  # 15 of the 30 sampled plans fail Iris's check_plan
    general = data_report.report(FIXTURES / "general_v1_sample.jsonl", model=None)
    assert "top_opening_rate" in {f.split(" =")[0] for f in data_report.check_gates(general, limits)}

    rep = data_report.report(TRAIN, TEST, model=None)
    assert data_report.check_gates(rep, limits) == []
    assert rep["prompt_mismatch_rate"] == 0 and rep["plan_invalid_rate"] == 0 and rep["correct_longest_rate"] <= 0.35
    letters = rep["answer_letters"]
    assert max(letters.values()) - min(letters.values()) <= 0.05 * sum(letters.values())
    general = data_report.report(GENERAL, model=None)
    assert data_report.check_gates(general, limits) == []


def test_prompt_gate_catches_a_reworded_request_and_a_missing_record():
    rows = [r for r in du.load_conversations(TRAIN) if r["kind"] == "quiz"][:4]
    assert data_report.serving_checks(rows)["prompt_mismatch_rate"] == 0
    rows[0]["messages"][1] = {**rows[0]["messages"][1], "content": rows[0]["messages"][1]["content"].replace("Can you make", "Make")}
    del rows[1]["prompt"]
    assert data_report.serving_checks(rows)["prompt_mismatch_rate"] == 0.5


def test_plan_gate_reads_a_plan_that_drops_a_topic():
    plan_row = next(r for r in du.load_conversations(TRAIN) if r["kind"] == "study_plan" and len(r["prompt"]["args"]["topics"]) >= 3)
    assert data_report.plan_problems(plan_row) == []
    dropped = plan_row["prompt"]["args"]["topics"][-1]
    answer = "\n".join(line for line in plan_row["messages"][-1]["content"].splitlines() if dropped not in line)
    plan_row["messages"][-1] = {"role": "assistant", "content": answer}
    assert any("not covered" in p for p in data_report.plan_problems(plan_row))


def test_kb_check_names_what_breaks_the_rules():
    topic = json.loads(next((du.REPO / "data" / "sources" / "kb").glob("*.json")).read_text())["topics"][0]
    assert kb_check.check_topic(topic) == []
    bad = json.loads(json.dumps(topic))
    bad["mcq"][0]["explanation"] = "Option B is right because of the all-reduce."
    bad["feedback"][0]["answers"][1]["verdict"] = bad["feedback"][0]["answers"][0]["verdict"]
    bad["qa"][0].pop("guide")
    problems = kb_check.check_topic(bad)
    assert any("mcq[0]" in p and "letter" in p for p in problems)
    assert any("feedback[0].answers" in p and "different verdicts" in p for p in problems)
    assert any("qa[0]: missing guide" in p for p in problems)


def test_builder_uses_each_question_at_most_twice_and_balances_letters():
    topics = build_datasets.load_kb()
    train, _ = build_datasets.build_exam(topics)
    mcq_text = collections.Counter()
    for r in train:
        if r["kind"] in data_report.MCQ_KINDS:
            mcq_text.update(q.text for q in data_report.logic.parse_questions(r["conversations"][2]["content"], mcq_only=False))
    assert max(mcq_text.values()) <= build_datasets.MAX_USES
    assert {t["id"] for t in topics} >= {"llm_agents", "scaling_laws", "streaming_feature_pipelines", "model_deployment"}


# ------------------------------------------------------------------ cleaning
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conv(q, a="An answer with enough words."):
    return {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_clean_removes_meta_phrases_reports_them_and_is_idempotent(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [
        conv("Briefly compare LoRA and QLoRA. Relate it to the Hopsworks lab."),
        conv("What is a feature store? Include an example from industry."),
        conv("Explain dropout. Answer in 3 sentences."),
        {"conversations": [{"from": "human", "value": "Briefly explain RAG."}, {"from": "gpt", "value": "Retrieval first. Relate it to search."}]},
        conv("What is attention?"),
    ])
    out = tmp_path / "out.jsonl"
    r = run_script("tools/clean_exam_data.py", str(src), str(out))
    assert r.returncode == 0, r.stderr
    assert re.search(r"briefly\s+2", r.stdout) and re.search(r"relate_it_to\s+1", r.stdout) and re.search(r"include_example\s+1", r.stdout)
    assert "4 user turns changed" in r.stdout
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["conversations"][0]["content"] == "Compare LoRA and QLoRA."
    assert rows[1]["conversations"][0]["content"] == "What is a feature store?"
    assert rows[2]["conversations"][0]["content"] == "Explain dropout."
    assert rows[3]["conversations"][0]["value"] == "Explain RAG."
    assert rows[3]["conversations"][1]["value"] == "Retrieval first. Relate it to search."  # answers are left alone
    assert rows[4] == conv("What is attention?")
    again = tmp_path / "again.jsonl"
    r = run_script("tools/clean_exam_data.py", str(out), str(again))
    assert "0 user turns changed" in r.stdout and again.read_text() == out.read_text()


def test_clean_refuses_to_overwrite_its_input_and_names_bad_lines(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [conv("Briefly explain GGUF.")])
    before = src.read_text()
    with pytest.raises(SystemExit, match="--in_place") as e:
        clean_exam_data.main([str(src), str(src)])
    assert src.read_text() == before
    assert clean_exam_data.main([str(src), str(src), "--in_place"]) == 0 and "Explain GGUF." in src.read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(conv("q")) + "\n{oops\n")
    with pytest.raises(SystemExit, match="bad.jsonl:2") as e:
        clean_exam_data.main([str(bad), str(tmp_path / "o.jsonl")])
    assert e.value.code != 0 and not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------ report
def test_report_figures_on_planted_problems(tmp_path):
    rows = [conv(f"Question {i}?", f"Answer number {i} with details.") for i in range(10)]
    rows += [rows[0], rows[1]]  # 2 exact duplicates
    rows += [conv("Another?", "ANSWER number 3, with details!")]  # near-duplicate answer
    rows += [conv("Briefly compare A and B."), conv("Explain C. Relate it to D.")]  # meta phrases
    rows += [{"conversations": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}]  # role order
    rows += [{"conversations": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}]  # empty turn
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    test = write_jsonl(tmp_path / "t.jsonl", [conv("question 4", "Unrelated."), conv("Fresh question?", "Fresh.")])
    rep = data_report.report(path, test, model=None)
    assert rep["rows"] == 17 and rep["valid_rows"] == 15
    assert rep["unique_conversations"] == 13
    assert rep["exact_duplicate_rate"] == round(2 / 15, 4)
    assert rep["distinct_answers_near"] == 11  # 10 numbered answers (one near-duplicated) + the shared meta answer
    assert rep["problems"] == {"turns do not alternate": 1, "empty content": 1}
    assert rep["meta_instruction_rate"] == round(2 / 15, 4)
    assert rep["meta_instruction_patterns"] == {"briefly": 1, "relate_it_to": 1}
    assert rep["test_overlap"] == 1
    failed = data_report.check_gates(rep, {flag: default for flag, default, _ in data_report.GATES.values()})
    assert {f.split(" =")[0] for f in failed} >= {"exact_duplicate_rate", "role_error_rate", "empty_turn_rate", "meta_instruction_rate", "test_overlap_rate"}


def test_report_flags_a_file_shaped_like_the_original(tmp_path, capsys):
    answers = [f"Canned answer {i}: this text is reused over and over." for i in range(45)]
    rows = [conv(f"Briefly compare topic {i % 331} and topic {(i + 1) % 331}.", answers[i % 331 % 45]) for i in range(6521)]
    path = write_jsonl(tmp_path / "original_like.jsonl", rows)
    assert data_report.main([str(path), "--no_tokens", "--out", str(tmp_path / "rep.json")]) == 1
    out = capsys.readouterr().out
    assert "near_duplicate_answer_rate" in out and "distinct_answer_ratio" in out and "meta_instruction_rate" in out
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["distinct_answers"] == 45 and rep["unique_conversations"] == 331


@pytest.mark.slow
def test_shipped_files_pass_the_report_gates(tmp_path):
    r = run_script("tools/data_report.py", str(TRAIN), "--test", str(TEST), "--out", str(tmp_path / "train.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "train.png").stat().st_size > 1000
    # multi-turn general conversations run longer (7% over 512 tokens); the trainer truncates them and counts them
    r = run_script("tools/data_report.py", str(GENERAL), "--out", str(tmp_path / "general.json"), "--max_over_length", "0.08")
    assert r.returncode == 0, r.stdout + r.stderr


def test_kb_check_names_a_file_it_cannot_read(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"area": "x", "topics": [')
    assert kb_check.main([str(broken)]) == 1
    assert "broken.json: cannot read" in capsys.readouterr().out
    assert kb_check.main([str(tmp_path / "missing.json")]) == 2
