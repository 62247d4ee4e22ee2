"""Iris, the ID2223 study assistant: six tools over local GGUF models, each a tab and a Gradio API endpoint.

    python iris/app.py                      # http://127.0.0.1:7860, the embedded SmolLM2-135M and gguf_export/*
    python iris/app.py --port 8000 --host 0.0.0.0
    IRIS_HUB_MODELS="user/repo:model-q4_k_m.gguf" python iris/app.py

API names: study_chat (streamed), quiz, quiz_grade, feedback, cheat_sheet, study_plan, mixed_drill, drill_grade.
Environment: IRIS_HOST / GRADIO_SERVER_NAME, IRIS_PORT / GRADIO_SERVER_PORT, IRIS_GGUF_DIR, IRIS_HUB_MODELS,
IRIS_ADAPTER_DIR (shipped adapters; default adapters/), IRIS_DEFAULT_MODEL, IRIS_N_CTX (2048), IRIS_QUEUE_SIZE (32), IRIS_MAX_TOKENS_CAP (tests: bound every tool's max tokens).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import sys
import tempfile
import threading
from datetime import date
from pathlib import Path

import gradio as gr
from gradio.components.chatbot import ChatbotDataMessages
from pydantic import model_validator

from labcore.io import write_text

try:
    from iris import bank, grammars, logic, models, notes, plan, tasks
except ImportError:  # run as a script or as a Space: the modules sit beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bank
    import grammars
    import logic
    import notes
    import plan
    import tasks

    import models

N_CTX = int(os.environ.get("IRIS_N_CTX", "2048"))
CAP = int(os.environ.get("IRIS_MAX_TOKENS_CAP", "0")) or None
QUEUE_SIZE = int(os.environ.get("IRIS_QUEUE_SIZE", "32"))
MAX_DRILL = 6
MAX_UPLOAD = "1kb"
MAX_TOPICS = 12
DIFFICULTIES = ["easy", "medium", "hard"]
POOL = models.ModelPool(n_ctx=N_CTX)
FILES = Path(tempfile.mkdtemp(prefix="iris-files-"))


# ------------------------------------------------------------------------------------------ model plumbing
def _model_key(key) -> str:
    if not isinstance(key, str) or not key:
        raise logic.InputError("Pick a model from the dropdown.")
    POOL.entry(key)  # unknown keys are refused before anything runs
    return key


def _generate(key: str):
    def generate(messages: list[dict], tool: str, grammar: str | None = None) -> str:
        with POOL.use(key) as llm:
            out = llm.create_chat_completion(messages=messages, grammar=grammars.compiled(grammar) if grammar else None, **logic.sampling(tool, CAP))
        return out["choices"][0]["message"].get("content") or ""

    return generate


def _stream(key: str):
    def stream(messages: list[dict], tool: str):
        with POOL.use(key) as llm:  # held until the last token, or until the consumer closes the stream
            for chunk in llm.create_chat_completion(messages=messages, stream=True, **logic.sampling(tool, CAP)):
                piece = chunk["choices"][0].get("delta", {}).get("content")
                if piece:
                    yield piece

    return stream


def _count(key: str):
    def count(text: str) -> int:
        with POOL.use(key) as llm:
            return POOL.count_tokens(llm, text)

    return count


def _errors(fn):
    """Bad input and unloadable models become a one-line ``gr.Error``; generators (streams) included."""
    known = (logic.InputError, models.ModelError)
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args):
            try:
                yield from fn(*args)
            except known as e:
                raise gr.Error(str(e)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except known as e:
            raise gr.Error(str(e)) from None
    return wrapper


def _topics(name: str, text, required: bool = True) -> list[str]:
    topics = logic.split_topics(logic.check_text(name, text, required=required))
    if len(topics) > MAX_TOPICS:
        raise logic.InputError(f"{name} lists {len(topics)} topics; at most {MAX_TOPICS}.")
    return topics


def _status(result: dict) -> str:
    icon = {"ok": "✅", "partial": "⚠️", "fallback": "ℹ️", "unverified": "ℹ️", "failed": "❌"}.get(result.get("status"), "")
    note = f"{icon} {result.get('message', '')}".strip()
    if result.get("leak_flags"):
        note += f" (removed from the model's output: {', '.join(result['leak_flags'])})"
    return note


# ------------------------------------------------------------------------------------------------ handlers
@_errors
def study_chat(model_key, message, history, use_notes=True):
    key = _model_key(model_key)
    message = logic.check_text("Message", message)
    history = logic.normalize_history(history)
    out = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
    max_tokens = logic.settings("study_chat", CAP)["max_tokens"]
    found = notes.load().retrieve(message) if use_notes is not False else []
    note = ""
    for text, dropped, flags, kept in tasks.stream_chat(_stream(key), history, message, _count(key), N_CTX, max_tokens, notes.texts(found)):
        out[-1]["content"] = text
        note = (f"Course notes in the prompt: {notes.sources(found[:kept])}. " if kept else "") + (
            f"Dropped the {dropped} oldest messages to fit the context window. " if dropped else "") + (
            f"Removed from the answer: {', '.join(flags)}." if flags else "")
        yield out, "", note
    if not out[-1]["content"]:
        out[-1]["content"] = "(The model returned no answer; try rephrasing.)"
    yield out, "", note


@_errors
def quiz(model_key, topic, n, difficulty):
    key = _model_key(model_key)
    topic = logic.check_text("Topic", topic, limit=300)
    n = logic.check_int("Number of questions", n, 1, logic.MAX_QUESTIONS)
    difficulty = difficulty if difficulty in DIFFICULTIES else "medium"
    result = tasks.run_quiz(_generate(key), topic, n, difficulty, bank=bank.lookup)
    return f"{_status(result)}\n\n{logic.render_quiz(result['questions'])}", result


def _check_questions(data, name: str) -> list[dict]:
    questions = (data or {}).get("questions") if isinstance(data, dict) else None
    if not questions or not isinstance(questions, list) or len(questions) > 20:
        raise logic.InputError(f"No {name} to grade: generate one first.")
    for q in questions:
        if not isinstance(q, dict) or "answer" not in q or "number" not in q:
            raise logic.InputError(f"The {name} data is malformed: pass the JSON that the {name} endpoint returned.")
        logic.check_text("A question", str(q.get("text", "")) + str(q.get("answer", "")), required=False, limit=2 * logic.MAX_FIELD_CHARS)
    return questions


def _check_answers(answers) -> object:
    text = answers if isinstance(answers, str) else str(answers)
    logic.check_text("Your answers", text, required=False, limit=6 * logic.MAX_FIELD_CHARS)
    return answers


@_errors
def quiz_grade(quiz_data, answers):
    graded = logic.grade_quiz(_check_questions(quiz_data, "quiz"), _check_answers(answers))
    return logic.render_grade(graded), graded


@_errors
def feedback(model_key, question, answer):
    key = _model_key(model_key)
    question = logic.check_text("Question", question)
    answer = logic.check_text("Your answer", answer)
    result = tasks.run_feedback(_generate(key), question, answer)
    return (_status(result) + "\n\n" if result["message"] or result["leak_flags"] else "") + logic.render_feedback(result), result


@_errors
def cheat_sheet(model_key, topics):
    key = _model_key(model_key)
    topic_list = _topics("Topics", topics)
    result = tasks.run_cheat_sheet(_generate(key), topic_list, POOL.entry(key).label)
    if result["status"] != "ok":
        return _status(result), None
    path = FILES / f"cheat_sheet_{logic.slug(' '.join(topic_list))}_{os.getpid()}_{id(result)}.md"
    write_text(path, result["markdown"])  # atomic: a download never sees half a file
    return (_status(result) + "\n\n" if result["leak_flags"] else "") + result["markdown"], str(path)


@_errors
def study_plan(model_key, start, exam, hours, topics, weak):
    key = _model_key(model_key)
    start_day = plan.parse_date("Start date", logic.check_text("Start date", start or date.today().isoformat(), limit=40))
    exam_day = plan.parse_date("Exam date", logic.check_text("Exam date", exam, limit=40))
    try:
        hours = float(hours)
    except (TypeError, ValueError):
        raise logic.InputError(f"Hours per week must be a number, not {hours!r}.") from None
    result = tasks.run_study_plan(_generate(key), start_day, exam_day, hours, _topics("Topics", topics), _topics("Weak topics", weak, required=False))
    return result["markdown"], result


@_errors
def mixed_drill(model_key, topics, n):
    key = _model_key(model_key)
    topic_list = _topics("Topics", topics)
    n = logic.check_int("Number of questions", n, 2, MAX_DRILL)
    result = tasks.run_drill(_generate(key), topic_list, n, bank=bank.lookup)
    return f"{_status(result)}\n\n{logic.render_quiz(result['questions'])}", result


@_errors
def drill_grade(drill_data, answers):
    graded = logic.grade_drill(_check_questions(drill_data, "drill"), _check_answers(answers))
    return logic.render_drill_grade(graded), graded


# ------------------------------------------------------------------------------------ UI-only glue (private)
def show_quiz_answers(data):
    questions = (data or {}).get("questions") or []
    updates = []
    for i in range(logic.MAX_QUESTIONS):
        if i < len(questions):
            q = questions[i]
            choices = [(f"{letter}) {q['options'][letter]}", letter) for letter in logic.LETTERS]
            updates.append(gr.Radio(choices=choices, value=None, label=f"Question {q['number']}. {q['text']}", visible=True))
        else:
            updates.append(gr.Radio(choices=[], value=None, visible=False))
    return [*updates, gr.Button(visible=bool(questions)), ""]


def show_drill_answers(data):
    questions = (data or {}).get("questions") or []
    updates = []
    for i in range(MAX_DRILL):
        if i < len(questions):
            q = questions[i]
            hint = "type A, B, C or D" if q.get("kind") == "mcq" else "a few sentences"
            updates.append(gr.Textbox(value="", label=f"Question {q['number']} ({hint})", visible=True))
        else:
            updates.append(gr.Textbox(value="", visible=False))
    return [*updates, gr.Button(visible=bool(questions)), ""]


def _prepare(entry) -> None:
    try:
        path = models.resolve(entry)
        print(f"[iris] {entry.label} is ready: {path}", flush=True)
    except models.ModelError as e:
        print(f"[iris] {e}", flush=True)


def collect(*answers):
    return list(answers)


def model_choices():
    return [(e.label, e.key) for e in POOL.entries().values()]


def refresh_models(current):
    choices = model_choices()
    keys = [k for _, k in choices]
    return gr.Dropdown(choices=choices, value=current if current in keys else (keys[0] if keys else None))


# ------------------------------------------------------------------------------------------------------- UI
class _Messages(ChatbotDataMessages):
    """Gradio 6's chat history, also accepting ``{"role", "content": "plain text"}`` as OpenAI-style clients send it."""

    @model_validator(mode="before")
    @classmethod
    def _plain_text(cls, data):
        if isinstance(data, list):
            return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m, dict) and isinstance(m.get("content"), str) else m
                    for m in data]
        return data


def build() -> gr.Blocks:
    choices = model_choices()
    keys = [k for _, k in choices]
    default = os.environ.get("IRIS_DEFAULT_MODEL") if os.environ.get("IRIS_DEFAULT_MODEL") in keys else (keys[0] if keys else None)
    limit = logic.MAX_FIELD_CHARS
    with gr.Blocks(title="Iris · ID2223 study assistant") as demo:
        gr.Markdown("# Iris · ID2223 study assistant\nRuns locally on the selected GGUF model. Small models make mistakes: check answers against the course material.")
        with gr.Row():
            model = gr.Dropdown(choices=choices, value=default, label="Model", scale=4, elem_id="model",
                                allow_custom_value=True)  # keys are checked against the registry in every handler
            refresh = gr.Button("Refresh list", scale=1)
        refresh.click(refresh_models, model, model, api_visibility="private")

        with gr.Tab("Study Chat"):
            gr.Markdown("Ask anything about ID2223 in your own words; Iris answers and keeps the conversation going. "
                        "With course notes on, it hands the model the passages of the course notes that match your question.")
            chatbot = gr.Chatbot(label="Chat", height=420, elem_id="chatbot")
            chatbot.data_model = _Messages  # on the instance: a subclass would make Gradio write an app.pyi beside this file
            message = gr.Textbox(label="Message", placeholder="Ask about any ID2223 topic", max_length=limit, elem_id="chat-message")
            chat_note = gr.Markdown(label="note")
            with gr.Row():
                send = gr.Button("Send", variant="primary", scale=4)
                use_notes = gr.Checkbox(value=True, label="Use course notes", scale=1, elem_id="chat-notes")
            send.click(study_chat, [model, message, chatbot, use_notes], [chatbot, message, chat_note], api_name="study_chat")
            message.submit(study_chat, [model, message, chatbot, use_notes], [chatbot, message, chat_note], api_visibility="private")

        with gr.Tab("Quiz Generator"):
            gr.Markdown("Multiple-choice questions on one topic: pick an answer to each and Iris scores them. "
                        "(Mixed Drill covers several topics and adds written questions.)")
            with gr.Row():
                quiz_topic = gr.Textbox(label="Topic", value="LoRA", max_length=300, elem_id="quiz-topic")
                quiz_n = gr.Slider(1, logic.MAX_QUESTIONS, value=3, step=1, label="Number of questions")
                quiz_level = gr.Radio(DIFFICULTIES, value="medium", label="Difficulty")
            quiz_button = gr.Button("Generate quiz", variant="primary", elem_id="quiz-generate")
            quiz_md = gr.Markdown(label="quiz_markdown", elem_id="quiz-view")
            quiz_data = gr.JSON(label="quiz", visible=False)
            radios = [gr.Radio(choices=[], visible=False, elem_id=f"quiz-answer-{i}") for i in range(logic.MAX_QUESTIONS)]
            quiz_answers = gr.JSON(visible=False)
            grade_button = gr.Button("Check my answers", visible=False, elem_id="quiz-check")
            grade_md = gr.Markdown(label="score_markdown", elem_id="quiz-score")
            grade_data = gr.JSON(label="score", visible=False)
            quiz_button.click(quiz, [model, quiz_topic, quiz_n, quiz_level], [quiz_md, quiz_data], api_name="quiz").then(
                show_quiz_answers, quiz_data, [*radios, grade_button, grade_md], api_visibility="private")
            grade_button.click(collect, radios, quiz_answers, api_visibility="private").then(
                quiz_grade, [quiz_data, quiz_answers], [grade_md, grade_data], api_name="quiz_grade")

        with gr.Tab("Answer Feedback"):
            gr.Markdown("Paste an exam question and your answer. When the question matches a course item, the verdict comes from "
                        "that item's key points found in your answer; the explanation is the model's. No match, no verdict.")
            fb_question = gr.Textbox(label="Exam question", lines=2, max_length=limit)
            fb_answer = gr.Textbox(label="Your answer", lines=5, max_length=limit)
            fb_button = gr.Button("Get feedback", variant="primary")
            fb_md = gr.Markdown(label="feedback_markdown")
            fb_data = gr.JSON(label="feedback", visible=False)
            fb_button.click(feedback, [model, fb_question, fb_answer], [fb_md, fb_data], api_name="feedback")

        with gr.Tab("Cheat Sheet"):
            gr.Markdown("A one-page summary of the topics you list, to read here or download as Markdown.")
            cs_topics = gr.Textbox(label="Topics (comma-separated)", value="LoRA, QLoRA", max_length=limit)
            cs_button = gr.Button("Write cheat sheet", variant="primary")
            cs_md = gr.Markdown(label="cheat_sheet_markdown")
            cs_file = gr.File(label="Download as Markdown")
            cs_button.click(cheat_sheet, [model, cs_topics], [cs_md, cs_file], api_name="cheat_sheet")

        with gr.Tab("Study Planner"):
            gr.Markdown("A day-by-day revision schedule up to your exam: Iris computes dates, hours and topics; the model suggests activities.")
            with gr.Row():
                sp_start = gr.Textbox(label="Start date (YYYY-MM-DD)", value=date.today().isoformat(), max_length=40)
                sp_exam = gr.Textbox(label="Exam date (YYYY-MM-DD)", max_length=40)
                sp_hours = gr.Number(label="Hours per week", value=6, minimum=0.5, maximum=80)
            sp_topics = gr.Textbox(label="Topics (comma-separated)", max_length=limit)
            sp_weak = gr.Textbox(label="Weak topics (comma-separated, optional)", max_length=limit)
            sp_button = gr.Button("Plan my revision", variant="primary")
            sp_md = gr.Markdown(label="plan_markdown")
            sp_data = gr.JSON(label="plan", visible=False)
            sp_button.click(study_plan, [model, sp_start, sp_exam, sp_hours, sp_topics, sp_weak], [sp_md, sp_data], api_name="study_plan")

        with gr.Tab("Mixed Drill"):
            gr.Markdown("A short practice exam over several topics, mixing multiple-choice with short-answer and compare questions; "
                        "written answers are graded by the key terms they cover.")
            with gr.Row():
                dr_topics = gr.Textbox(label="Topics (comma-separated)", value="LoRA, feature stores", max_length=limit)
                dr_n = gr.Slider(2, MAX_DRILL, value=3, step=1, label="Number of questions")
            dr_button = gr.Button("Start drill", variant="primary")
            dr_md = gr.Markdown(label="drill_markdown")
            dr_data = gr.JSON(label="drill", visible=False)
            boxes = [gr.Textbox(visible=False, lines=2, max_length=limit) for _ in range(MAX_DRILL)]
            dr_answers = gr.JSON(visible=False)
            dr_grade_button = gr.Button("Grade my drill", visible=False)
            dr_grade_md = gr.Markdown(label="score_markdown")
            dr_grade_data = gr.JSON(label="score", visible=False)
            dr_button.click(mixed_drill, [model, dr_topics, dr_n], [dr_md, dr_data], api_name="mixed_drill").then(
                show_drill_answers, dr_data, [*boxes, dr_grade_button, dr_grade_md], api_visibility="private")
            dr_grade_button.click(collect, boxes, dr_answers, api_visibility="private").then(
                drill_grade, [dr_data, dr_answers], [dr_grade_md, dr_grade_data], api_name="drill_grade")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=4)  # the per-model lock serializes the model itself
    return demo


demo = build()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Iris, the ID2223 study assistant (Gradio). Listens on 127.0.0.1 unless told otherwise.")
    parser.add_argument("--host", default=os.environ.get("IRIS_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="interface to listen on; 0.0.0.0 exposes it (env IRIS_HOST or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("IRIS_PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860),
                        help="port (env IRIS_PORT or GRADIO_SERVER_PORT; default 7860)")
    args = parser.parse_args(argv)
    entries = POOL.entries()
    tuned = [e for e in entries.values() if e.adapter]
    if tuned:  # merge and export the default tuned model now, so the first request finds it ready
        threading.Thread(target=_prepare, args=(tuned[0],), daemon=True).start()
    print(f"[iris] {len(entries)} models; listening on http://{args.host}:{args.port}", flush=True)
    # No tool takes a file: uploads are capped at MAX_UPLOAD so nobody can fill a public Space's disk through /upload.
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(FILES)], max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
