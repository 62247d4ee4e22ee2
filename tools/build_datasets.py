"""Build the shipped datasets from their sources, deterministically (byte-identical on every run).

Sources (the source of truth, reviewed by hand):
  data/sources/kb/*.json            curated knowledge base: 63 ID2223 topics, each with explanations, comparisons,
                                    multiple-choice questions, graded student answers, follow-up dialogues, key
                                    points, pitfalls and held-out test questions
  data/sources/general_handwritten.jsonl + general_generated.py   the offline general instruction set

Outputs:
  data/id2223_exam_prep_full.jsonl  training conversations of seven kinds (concept, compare, quiz, feedback,
                                    cheat_sheet, study_plan, drill), some multi-turn
  data/id2223_exam_prep_test.jsonl  held-out questions with reference answers and key concepts
  data/general_instructions.jsonl   ShareGPT-format general conversations

    python tools/build_datasets.py           # rebuild all three files
    python tools/build_datasets.py --check   # exit 1 if the committed files differ from a rebuild
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from iris.plan import DEFAULT_ACTIVITIES  # noqa: E402  (the plans the dataset teaches use the activities Iris fills in)

SOURCES = REPO / "data" / "sources"
OUT_TRAIN = REPO / "data" / "id2223_exam_prep_full.jsonl"
OUT_TEST = REPO / "data" / "id2223_exam_prep_test.jsonl"
OUT_GENERAL = REPO / "data" / "general_instructions.jsonl"
SEED = 2223
LETTERS = "ABCD"


def load_kb() -> list[dict]:
    topics = []
    for path in sorted((SOURCES / "kb").glob("*.json")):
        area = json.loads(path.read_text(encoding="utf-8"))
        for t in area["topics"]:
            topics.append({**t, "area": area["area"]})
    return topics


def words(text: str) -> int:
    return len(text.split())


def norm(text: str) -> str:
    """Equality key for near-duplicates: lower-case, punctuation and spacing removed."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def conv(topic: dict, kind: str, turns: list[str], idx: int) -> dict:
    roles = ["user", "assistant"]
    return {
        "id": f"{topic['id']}-{kind}-{idx}",
        "topic": topic["id"],
        "area": topic["area"],
        "kind": kind,
        "conversations": [{"role": roles[i % 2], "content": text.strip()} for i, text in enumerate(turns)],
    }


# ---------------------------------------------------------------- quiz and drill formatting (the app parses this)
def format_mcq(n: int, q: dict) -> str:
    options = "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(q["options"]))
    return f"**Question {n}.** {q['question']}\n{options}"


def format_quiz(questions: list[dict]) -> str:
    body = "\n\n".join(format_mcq(i + 1, q) for i, q in enumerate(questions))
    key = "\n".join(f"{i + 1}. {q['answer']}: {q['explanation']}" for i, q in enumerate(questions))
    return f"{body}\n\n**Answer key**\n{key}"


QUIZ_PROMPTS = [
    "Quiz me on {title}: {n} multiple-choice questions, please.",
    "Can you make a {n}-question multiple-choice quiz about {title}?",
    "I want to test myself on {title}. Give me {n} MCQs with an answer key.",
    "Write {n} multiple-choice questions on {title} for exam practice.",
    "{n} quick multiple-choice questions on {title}?",
    "Make a short quiz ({n} questions, four options each) covering {title}.",
]

FEEDBACK_PROMPTS = [
    "Question: {q}\nMy answer: {a}\nHow did I do?",
    "Can you grade my answer?\n\nQ: {q}\nA: {a}",
    "Here is my answer to an exam question. Is it right?\n\nQuestion: {q}\n\nAnswer: {a}",
    "I answered \"{q}\" like this: {a}\nWhat am I missing?",
    "Please give me feedback.\nQuestion: {q}\nStudent answer: {a}",
]

CHEAT_PROMPTS = [
    "Make me a cheat sheet on {topics}.",
    "Cheat sheet for {topics}, please.",
    "I need a one-page summary of {topics} for the exam.",
    "Can you condense {topics} into a revision sheet?",
    "Give me the key facts on {topics} as a cheat sheet.",
]

DRILL_PROMPTS = [
    "Give me a mini exam mixing {topics}.",
    "Drill me: a few mixed questions on {topics}.",
    "Can you set a short practice exam on {topics}?",
    "I want a mixed-question drill covering {topics}.",
]

PLAN_PROMPTS = [
    "My exam is on {exam}. Today is {today}. I can study about {hours} hours a week. Topics: {topics}. I'm weakest at {weak}. Make me a day-by-day plan.",
    "Plan my revision: exam on {exam}, starting {today}, {hours} h per week, covering {topics}. Weak spots: {weak}.",
    "Can you build a study schedule? Start {today}, exam {exam}, roughly {hours} hours each week. Topics are {topics}, and I struggle with {weak}.",
    "I have {hours} hours a week until my exam on {exam} (today is {today}). I need to cover {topics}, and I'm weakest at {weak}. What should I do each day?",
]


def join_titles(titles: list[str]) -> str:
    return titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]


def quiz_rows(topic: dict, rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    pool = topic["mcq"]
    for i in range(3):
        n = [3, 4, 3][i]
        while True:
            picked = tuple(sorted(rng.sample(range(len(pool)), n)))
            if picked not in seen:
                seen.add(picked)
                break
        questions = [pool[j] for j in picked]
        answer = format_quiz(questions)
        while words(answer) > 300 and len(questions) > 2:
            questions = questions[:-1]
            answer = format_quiz(questions)
        prompt = rng.choice(QUIZ_PROMPTS).format(title=short_title(topic), n=len(questions))
        rows.append(conv(topic, "quiz", [prompt, answer], i))
    return rows


def feedback_rows(topic: dict, rng: random.Random) -> list[dict]:
    rows = []
    for i, fb in enumerate(topic["feedback"]):
        prompt = rng.choice(FEEDBACK_PROMPTS).format(q=fb["question"], a=fb["student_answer"])
        answer = f"Verdict: {fb['verdict']}.\n\n{fb['feedback']}"
        rows.append(conv(topic, "feedback", [prompt, answer], i))
    return rows


def cheat_sheet(topics: list[dict], rng: random.Random, points_per_topic: int) -> str:
    parts = []
    for t in topics:
        points = rng.sample(t["key_points"], min(points_per_topic, len(t["key_points"])))
        pitfall = rng.choice(t["pitfalls"])
        lines = [f"**{t['title']}**", t["summary"] if len(topics) == 1 else t["summary"].split(". ")[0].rstrip(".") + "."]
        lines += [f"- {p}" for p in points]
        lines.append(f"- Watch out: {pitfall}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def cheat_rows(topic: dict, by_id: dict, rng: random.Random) -> list[dict]:
    rows = []
    related = [by_id[r] for r in topic["related"] if r in by_id]
    groups = [[topic], [topic] + related[:1], [topic] + related[1:2]] if len(related) > 1 else [[topic], [topic] + related[:1]]
    for i, group in enumerate(groups):
        per = 6 if len(group) == 1 else 4
        sheet = cheat_sheet(group, rng, per)
        while words(sheet) > 300 and per > 2:
            per -= 1
            sheet = cheat_sheet(group, rng, per)
        prompt = rng.choice(CHEAT_PROMPTS).format(topics=join_titles([short_title(t) for t in group]))
        rows.append(conv(topic, "cheat_sheet", [prompt, sheet], i))
    return rows


def lead(text: str, max_words: int = 45) -> str:
    """The first sentences of a model answer, up to about ``max_words`` words."""
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")):
        if out and words(" ".join(out + [sentence])) > max_words:
            break
        out.append(sentence)
    return " ".join(out)


def drill(topics: list[dict], rng: random.Random) -> tuple[str, str]:
    """Four questions of mixed kinds (multiple choice, short answer, comparison) and what a good answer covers."""
    qs, key = [], []
    for n, t in enumerate(topics, start=1):
        kind = ["mcq", "short", "compare", "mcq"][(n - 1) % 4] if len(topics) > 1 else "mcq"
        if kind == "mcq":
            q = rng.choice(t["mcq"])
            qs.append(format_mcq(n, q))
            key.append(f"{n}. {q['answer']}: {q['explanation']}")
        else:
            item = rng.choice(t["qa"] if kind == "short" else t["compare"])
            qs.append(f"**Question {n}.** ({'short answer' if kind == 'short' else 'compare'}) {item['q']}")
            key.append(f"{n}. A good answer covers: {lead(item['a'])}")
    return "\n\n".join(qs), "**What to look for**\n" + "\n".join(key)


def drill_rows(topics: list[dict], rng: random.Random, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        group = rng.sample(topics, rng.choice([3, 3, 4]))
        questions, key = drill(group, rng)
        prompt = rng.choice(DRILL_PROMPTS).format(topics=join_titles([short_title(t) for t in group]))
        answer = f"{questions}\n\n{key}"
        if words(answer) > 300:
            group = group[:3]
            questions, key = drill(group, rng)
            answer = f"{questions}\n\n{key}"
        row = conv(group[0], "drill", [prompt, answer], i)
        row["id"] = f"drill-{i}"
        row["topic"] = ",".join(t["id"] for t in group)
        rows.append(row)
    return rows




def short_title(topic: dict) -> str:
    return topic["title"].split(":")[0].split(" (")[0]


def study_plan(topics: list[dict], weak: list[dict], start: dt.date, exam: dt.date, hours: int, rng: random.Random) -> str:
    """A day-by-day plan: Sundays off, weak topics twice, a mock exam on the last day, never more than ``hours`` per
    calendar week (the hours of each week are split evenly over its study days, in half-hour steps)."""
    days = [start + dt.timedelta(d) for d in range((exam - start).days) if (start + dt.timedelta(d)).weekday() != 6]
    order = list(topics) + list(weak)
    rng.shuffle(order)
    items = [(t, DEFAULT_ACTIVITIES[i % len(DEFAULT_ACTIVITIES)]) for i, t in enumerate(order)]
    per_week: dict = {}
    for d in days:
        per_week[d.isocalendar()[:2]] = per_week.get(d.isocalendar()[:2], 0) + 1
    lines, total = [], 0.0
    for i, day in enumerate(days):
        h = max(0.5, int(hours / per_week[day.isocalendar()[:2]] * 2) / 2)
        total += h
        label = f"- {day.strftime('%a %d %b')}, {h:g} h:"
        if i == len(days) - 1:
            lines.append(f"{label} mock exam covering every topic, then revisit {join_titles([short_title(t) for t in weak])}.")
        else:
            t, activity = items[i % len(items)]
            lines.append(f"{label} {short_title(t)}: {activity}{' (weak topic)' if t in weak else ''}.")
    head = (f"{len(days)} study days, {total:g} hours in all, at most {hours} h in any week, Sundays off. "
            f"Weak topics appear twice; the last day is a mock exam.")
    return head + "\n\n" + "\n".join(lines) + f"\n\nExam day ({exam.strftime('%a %d %b')}): light review only."


def plan_rows(topics: list[dict], rng: random.Random, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        group = rng.sample(topics, rng.choice([3, 4, 5]))
        weak = rng.sample(group, rng.choice([1, 1, 2]))
        start = dt.date(2026, 1, 1) + dt.timedelta(rng.randrange(0, 330))
        exam = start + dt.timedelta(rng.randrange(7, 15))
        hours = rng.choice([4, 5, 6, 8, 10, 12])
        answer = study_plan(group, weak, start, exam, hours, rng)
        prompt = rng.choice(PLAN_PROMPTS).format(
            exam=exam.isoformat(), today=start.isoformat(), hours=hours,
            topics=join_titles([short_title(t) for t in group]), weak=join_titles([short_title(t) for t in weak]),
        )
        row = conv(group[0], "study_plan", [prompt, answer], i)
        row["id"] = f"plan-{i}"
        row["topic"] = ",".join(t["id"] for t in group)
        rows.append(row)
    return rows


def build_exam(topics: list[dict]) -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    by_id = {t["id"]: t for t in topics}
    train = []
    for t in topics:
        train += [conv(t, "concept", [x["q"], x["a"]], i) for i, x in enumerate(t["qa"])]
        train += [conv(t, "compare", [x["q"], x["a"]], i) for i, x in enumerate(t["compare"])]
        train += [conv(t, "followup", [x["q1"], x["a1"], x["q2"], x["a2"]], i) for i, x in enumerate(t["followups"])]
        train += quiz_rows(t, rng)
        train += feedback_rows(t, rng)
        train += cheat_rows(t, by_id, rng)
    train += drill_rows(topics, rng, 200)
    train += plan_rows(topics, rng, 200)
    test = [
        {
            "id": f"{t['id']}-test-{i}", "topic": t["id"], "area": t["area"], "kind": "test",
            "key_concepts": x["key_concepts"],
            "conversations": [{"role": "user", "content": x["question"]}, {"role": "assistant", "content": x["reference"]}],
        }
        for t in topics for i, x in enumerate(t["test"])
    ]
    train_q = {norm(r["conversations"][0]["content"]) for r in train}
    leaked = [r["id"] for r in test if norm(r["conversations"][0]["content"]) in train_q]
    if leaked:
        sys.exit(f"error: held-out questions also in the training file: {leaked[:5]}. Edit data/sources/kb.")
    return train, test


def build_general() -> list[dict]:
    rows = [json.loads(line) for line in (SOURCES / "general_handwritten.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    spec = importlib.util.spec_from_file_location("general_generated", SOURCES / "general_generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows += module.generate()
    random.Random(SEED).shuffle(rows)
    return rows


def dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if a committed file differs from a rebuild")
    args = ap.parse_args(argv)
    train, test = build_exam(load_kb())
    outputs = {OUT_TRAIN: dumps(train), OUT_TEST: dumps(test), OUT_GENERAL: dumps(build_general())}
    stale = []
    for path, text in outputs.items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
            print(f"wrote {path.relative_to(REPO)}: {text.count(chr(10))} rows")
    if stale:
        sys.exit(f"error: {', '.join(stale)} differ from a rebuild: run python tools/build_datasets.py")


if __name__ == "__main__":
    main()
