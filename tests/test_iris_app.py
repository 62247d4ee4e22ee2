"""Iris end to end: the real app in a subprocess with the embedded model, every api_name called with gradio_client.

Generation is capped at a few tokens (IRIS_MAX_TOKENS_CAP) and the context at 512 tokens so the suite stays fast; with so few tokens the quiz
and drill take their re-ask and question-bank path, which is what a student sees when a small model's quiz
does not parse.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = "embedded:smollm2-135m"
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def running_iris(gguf_dir: Path, log: Path, cap: int = 6):
    """Launch ``python iris/app.py`` the way a user does (evaluation/eval_feedback.py's launcher); yields its url."""
    from evaluation.eval_feedback import running_app

    env = {"IRIS_MAX_TOKENS_CAP": str(cap), "IRIS_N_CTX": "512", "IRIS_GGUF_DIR": str(gguf_dir), "IRIS_HUB_MODELS": "",
           "IRIS_ADAPTER_DIR": str(gguf_dir / "no-adapters")}
    with running_app(env, log, startup_s=180) as url:
        yield url


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    from labcore.gguf import embedded_gguf

    folder = tmp_path_factory.mktemp("gguf_export")
    run = "smollm2-135m-lora-exam"
    (folder / f"{run}_q4_k_m.gguf").symlink_to(embedded_gguf())  # stands in for an exported file
    (folder / f"{run}_lora.gguf").write_bytes(b"GGUF")
    (folder / f"{run}.manifest.json").write_text(json.dumps({
        "kind": "export", "name": run, "status": "completed", "base_model": "smollm2-135m", "run": run,
        "files": {"q4_k_m": {"path": f"{run}_q4_k_m.gguf", "quant": "Q4_K_M"}, "lora": {"path": f"{run}_lora.gguf", "quant": "LORA"}},
    }))
    from gradio_client import Client

    with running_iris(folder, folder / "iris.log") as url:
        yield Client(url, verbose=False), url


def test_api_lists_every_tool(iris):
    client, _ = iris
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {f"/{n}" for n in ("study_chat", "quiz", "quiz_grade", "feedback", "cheat_sheet", "study_plan", "mixed_drill", "drill_grade")} <= names


def test_study_chat_streams(iris):
    client, _ = iris
    job = client.submit(EMBEDDED, "What is LoRA?", [], api_name="/study_chat")
    history, cleared, _note = job.result(timeout=300)
    assert cleared == "" and [m["role"] for m in history] == ["user", "assistant"]
    answer = "".join(part["text"] for part in history[1]["content"])
    assert answer and "<|im" not in answer
    assert len(job.outputs()) >= 2  # partial answers arrived before the final one
    again, _, _ = client.predict(EMBEDDED, "And QLoRA?", history, api_name="/study_chat")  # the returned history feeds the next turn
    assert [m["role"] for m in again] == ["user", "assistant"] * 2 and again[2]["content"][0]["text"] == "And QLoRA?"


def test_study_chat_hands_the_model_course_notes_unless_told_not_to(iris):
    client, _ = iris
    _, _, note = client.predict(EMBEDDED, "Why does QLoRA store the base model in NF4?", [], api_name="/study_chat")
    assert note.startswith("Course notes in the prompt: ") and "QLoRA" in note  # as many as the 512-token test window holds
    _, _, note = client.predict(EMBEDDED, "Why does QLoRA store the base model in NF4?", [], False, api_name="/study_chat")
    assert "Course notes" not in note


def test_long_history_is_trimmed_not_refused(iris):
    client, _ = iris
    def msg(role, text):  # Gradio 6's message format, as study_chat returns it
        return {"role": role, "content": [{"type": "text", "text": text}]}

    history = []
    for i in range(12):  # about 12 x 2 x 150 tokens, far beyond the test server's 512-token window
        history += [msg("user", f"Question {i}: " + "gradient " * 150), msg("assistant", "An answer. " * 50)]
    out, _, note = client.predict(EMBEDDED, "And what is QLoRA?", history, api_name="/study_chat")
    assert "Dropped the" in note and "oldest messages" in note
    assert out[-1]["role"] == "assistant" and len(out) == len(history) + 2


def test_quiz_then_grade(iris):
    client, _ = iris
    markdown, data = client.predict(EMBEDDED, "LoRA", 3, "easy", api_name="/quiz")
    assert data["status"] in ("ok", "partial", "fallback") and data["message"] in markdown
    assert len(data["attempts"]) == 2  # a few tokens never make a quiz: the stricter re-ask ran
    questions = data["questions"]
    assert questions and all(sorted(q["options"]) == list("ABCD") and q["answer"] in set("ABCD") for q in questions)
    assert "**Question 1.**" in markdown and "Answer key" not in markdown
    right = [q["answer"] for q in questions]
    graded_md, graded = client.predict(data, right, api_name="/quiz_grade")
    assert graded["score"] == graded["total"] == len(questions) and f"Score: {len(questions)} / {len(questions)}" in graded_md
    wrong = ["A" if a != "A" else "B" for a in right]
    assert client.predict(data, wrong, api_name="/quiz_grade")[1]["score"] == 0


def test_feedback(iris):
    client, _ = iris
    markdown, data = client.predict(EMBEDDED, "What is a feature store?", "A feature store is a shop that sells clothes.", api_name="/feedback")
    assert data["grounded"] and data["verdict"] == "wrong" and "### Verdict: wrong" in markdown and "Key points missing" in markdown
    assert set(data) >= {"feedback", "found", "missing", "model_answer", "reference", "status"}
    markdown, data = client.predict(EMBEDDED, "How long should pasta boil?", "Ten minutes.", api_name="/feedback")
    assert data["verdict"] is None and data["status"] == "unverified" and "### No verdict" in markdown


def test_plain_string_history_is_accepted(iris):
    client, _ = iris
    history = [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "A low-rank update of frozen weights."}]
    out, _, _ = client.predict(EMBEDDED, "And QLoRA?", history, api_name="/study_chat")  # what OpenAI-style clients send
    assert [m["role"] for m in out] == ["user", "assistant"] * 2


def test_uploads_are_capped_and_outputs_named(iris):
    import urllib.error
    import urllib.request

    client, url = iris
    body = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n\r\n" + b"0" * 200_000 + b"\r\n--x--\r\n"
    request = urllib.request.Request(url + "gradio_api/upload", data=body, headers={"Content-Type": "multipart/form-data; boundary=x"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code in (400, 413)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    names = [r["label"] for endpoint in api.values() for r in endpoint["returns"]]
    assert names and not [n for n in names if n.startswith("value_")], names


def test_cheat_sheet_downloads_markdown(iris):
    client, _ = iris
    markdown, path = client.predict(EMBEDDED, "LoRA, QLoRA", api_name="/cheat_sheet")
    if path is None:  # a few tokens can be empty: then the message must say so
        assert "no usable cheat sheet" in markdown
    else:
        text = Path(path).read_text()
        assert path.endswith(".md") and text.startswith("# Cheat sheet: LoRA and QLoRA") and "Generated by Iris" in text


def test_study_plan_respects_dates_and_hours(iris):
    client, _ = iris
    start, exam = date(2026, 6, 22), date(2026, 7, 4)
    markdown, data = client.predict(EMBEDDED, start.isoformat(), exam.isoformat(), 5, "Backpropagation, Decoding, Optimizers",
                                    "Decoding", api_name="/study_plan")
    assert data["status"] == "ok" and data["checks"] == []
    days = [date.fromisoformat(d["day"]) for d in data["days"]]
    assert days and all(start <= d < exam and d.weekday() != 6 for d in days)
    weeks = {}
    for d in data["days"]:
        monday = date.fromisoformat(d["day"]) - timedelta(days=date.fromisoformat(d["day"]).weekday())
        weeks[monday] = weeks.get(monday, 0) + d["hours"]
    assert max(weeks.values()) <= 5
    hours = data["topic_hours"]
    assert hours["Decoding"] > hours["Backpropagation"] and hours["Optimizers"] > 0
    assert "Exam day (Sat 04 Jul)" in markdown


def test_mixed_drill_then_grade(iris):
    client, _ = iris
    markdown, data = client.predict(EMBEDDED, "LoRA, feature stores", 4, api_name="/mixed_drill")
    questions = data["questions"]
    assert data["status"] in ("ok", "partial", "fallback") and len(questions) >= 2
    answers = [q["answer"] if q["kind"] == "mcq" else q["answer"] for q in questions]  # the references score full marks
    graded_md, graded = client.predict(data, answers, api_name="/drill_grade")
    assert graded["score"] == graded["total"] == len(questions) and "Score:" in graded_md
    assert client.predict(data, [""] * len(questions), api_name="/drill_grade")[1]["score"] == 0


def test_exported_models_are_listed_from_manifests(iris):
    _, url = iris
    import urllib.request

    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    dropdown = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "model")
    labels = [choice[0] for choice in dropdown["props"]["choices"]]
    assert labels[0].startswith("SmolLM2-135M-Instruct") and "smollm2-135m-lora-exam · Q4_K_M" in labels
    assert not any("LORA" in label for label in labels)


def test_exported_model_answers(iris):
    client, _ = iris
    _, data = client.predict("export:smollm2-135m-lora-exam:q4_k_m", "What is GGUF?", "A file format.", api_name="/feedback")
    assert "verdict" in data


def test_bad_input_is_refused_clearly(iris):
    client, _ = iris
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Message is 50,000 characters; the limit is 4,000"):
        client.predict(EMBEDDED, "x" * 50_000, [], api_name="/study_chat")
    with pytest.raises(AppError, match="Your answer is 50,000 characters"):
        client.predict(EMBEDDED, "What is LoRA?", "y" * 50_000, api_name="/feedback")
    with pytest.raises(AppError, match="Unknown model '/etc/passwd'"):
        client.predict("/etc/passwd", "LoRA", 3, "easy", api_name="/quiz")
    with pytest.raises(AppError, match="No quiz to grade"):
        client.predict({}, ["A"], api_name="/quiz_grade")
    with pytest.raises(AppError, match="must be after the start date"):
        client.predict(EMBEDDED, "2026-07-04", "2026-07-01", 5, "LoRA", "", api_name="/study_plan")


def test_eight_concurrent_requests_across_tools_all_succeed(iris):
    client, _ = iris
    calls = [
        ((EMBEDDED, "What is dropout?", []), "/study_chat"),
        ((EMBEDDED, "QLoRA", 2, "medium"), "/quiz"),
        ((EMBEDDED, "What is a feature store?", "A database of features."), "/feedback"),
        ((EMBEDDED, "GGUF"), "/cheat_sheet"),
        ((EMBEDDED, "2026-03-02", "2026-03-20", 6, "LoRA, GGUF", "GGUF"), "/study_plan"),
        ((EMBEDDED, "LoRA, dropout", 2), "/mixed_drill"),
        ((EMBEDDED, "What is attention?", []), "/study_chat"),
        ((EMBEDDED, "Tokenization", 1, "hard"), "/quiz"),
    ]
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(lambda a=args, n=n: client.predict(*a, api_name=n)) for args, n in calls]
        results = [j.result(timeout=600) for j in jobs]
    assert len(results) == 8 and all(r is not None for r in results)
    assert results[1][1]["questions"] and results[4][1]["checks"] == [] and results[5][1]["questions"]
    assert results[0][0][-1]["role"] == "assistant"


def test_repeat_guard_stops_the_real_model_copying_itself():
    """The embedded model, greedy, lists the same definition over and over; with ``logic.NoRepeatNgram`` no 6-token run
    of its reply recurs, and the guard works under a quiz grammar (what Iris passes for quizzes and drills)."""
    from iris import grammars, logic
    from labcore.gguf import embedded_gguf, load_llama

    llm = load_llama(embedded_gguf(), n_ctx=512, n_threads=2, verbose=False)

    def reply(guard: bool, **kw) -> list[int]:
        llm.reset()
        extra = {"logits_processor": [logic.NoRepeatNgram(6)]} if guard else {}
        out = llm.create_chat_completion(messages=[{"role": "user", "content": "List 15 uses of dropout, one per line, numbered."}],
                                         temperature=0.0, repeat_penalty=1.0, max_tokens=120, **extra, **kw)
        return llm.tokenize(out["choices"][0]["message"]["content"].encode(), add_bos=False)

    def repeats(ids: list[int]) -> int:
        grams = [tuple(ids[i:i + 6]) for i in range(len(ids) - 5)]
        return len(grams) - len(set(grams))

    assert repeats(reply(False)) > 10  # the failure the guard exists for
    assert repeats(reply(True)) == 0
    guarded = llm.detokenize(reply(True, grammar=grammars.compiled(grammars.quiz(1)))).decode()
    assert guarded.startswith("**Question 1.**")
