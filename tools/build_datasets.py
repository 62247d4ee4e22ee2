"""Build the shipped datasets from their sources, deterministically (byte-identical on every run).

Sources (the source of truth, reviewed by hand; schema and checks: tools/kb_check.py):
  data/sources/kb/*.json            curated knowledge base of ID2223 topics: explanations with marking guides,
                                    comparisons, multiple-choice questions, questions with several graded student
                                    answers, follow-up dialogues, key points, pitfalls and held-out test questions
  data/sources/general_*.jsonl      the offline general instruction set (hand-written, ShareGPT format)

Outputs:
  data/id2223_exam_prep_full.jsonl  training conversations of ten kinds. Study Chat kinds (concept, compare,
                                    followup) carry Iris's chat system prompt; tool kinds (quiz, quiz_grade, feedback,
                                    cheat_sheet, study_plan, drill, drill_grade) are built with Iris's own prompt
                                    functions (iris/prompts.py), system prompt included, and record the tool and its
                                    arguments in "prompt" so a check can render the same request again
  data/id2223_exam_prep_grounded.jsonl  the concept and compare rows again, with the course notes Iris's Study Chat
                                    retrieves for the question in the system prompt (iris/notes.py), the row's own
                                    source item left out of the index, as for a question never seen in training
  data/id2223_exam_prep_test.jsonl  held-out questions (with the chat system prompt), reference answers, key concepts
  data/general_instructions.jsonl   ShareGPT-format general conversations
  iris/notes.json                   the course-notes index those rows and Iris's Study Chat retrieve from

    python tools/build_datasets.py           # rebuild all five files
    python tools/build_datasets.py --check   # exit 1 if the committed files differ from a rebuild
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from iris import notes as iris_notes  # noqa: E402  (the course notes Study Chat retrieves)
from iris import plan as iris_plan  # noqa: E402  (plans come from Iris's own scheduler)
from iris import prompts  # noqa: E402  (the prompts Iris sends)
from labcore.io import write_text  # noqa: E402
from tools.kb_check import check_all, words  # noqa: E402

SOURCES = REPO / "data" / "sources"
OUT_TRAIN = REPO / "data" / "id2223_exam_prep_full.jsonl"
OUT_TEST = REPO / "data" / "id2223_exam_prep_test.jsonl"
OUT_GROUNDED = REPO / "data" / "id2223_exam_prep_grounded.jsonl"
OUT_GENERAL = REPO / "data" / "general_instructions.jsonl"
SEED = 2223
LETTERS = "ABCD"
MAX_USES = 2  # each knowledge-base question (qa, compare, mcq, feedback question) appears in at most this many rows
STRICT_SHARE = 0.25  # share of tool rows sent with Iris's stricter re-ask prompt (what it sends after a parse failure)
MAX_WORDS = 300  # per assistant turn
MAX_TOKENS = 512  # per conversation under the chat template: the trainer's default max_length, so nothing is truncated


def est_tokens(messages: list[dict]) -> int:
    """A tokenizer-free upper estimate of a conversation's tokens under the chat template: letter runs, digits and
    punctuation marks, plus 5 per message, times 1.15 (SmolLM2's tokenizer measured 0.97-1.22x this count, median 1.05,
    on the built rows)."""
    pieces = sum(len(re.findall(r"[A-Za-z]+|\d|[^\w\s]", m["content"])) + 5 for m in messages)
    return int(pieces * 1.15)


def fits(messages: list[dict], turns: list[str]) -> bool:
    return all(words(t) <= MAX_WORDS for t in turns[::2]) and est_tokens(messages + [{"content": t} for t in turns]) <= MAX_TOKENS
TOOL_OF_KIND = prompts.TOOL_OF_KIND


def load_kb(kb_dir: Path = SOURCES / "kb") -> list[dict]:
    paths = sorted(kb_dir.glob("*.json"))
    problems = check_all(paths)
    if problems:
        sys.exit("error: the knowledge base does not pass tools/kb_check.py:\n  " + "\n  ".join(problems[:20])
                 + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    topics = []
    for path in paths:
        area = json.loads(path.read_text(encoding="utf-8"))
        topics += [{**t, "area": area["area"]} for t in area["topics"]]
    return sorted(topics, key=lambda t: (t["area"], t["id"]))


def norm(text: str) -> str:
    """Equality key for near-duplicates: lower-case, punctuation and spacing removed."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def short_title(topic: dict) -> str:
    """What a student types: the title before any colon, without parentheses ("Tensor (model) parallelism" ->
    "Tensor parallelism"), unless the topic names its own ``short``."""
    return topic.get("short") or re.sub(r"\s*\([^)]*\)", "", topic["title"].split(":")[0]).strip()


def row(rid: str, topics: list[dict], kind: str, messages: list[dict], turns: list[str], args: dict | None = None) -> dict:
    """A training row: the request messages (system prompt first), then the alternating turns that follow."""
    roles = ("assistant", "user")
    out = {"id": rid, "topic": ",".join(t["id"] for t in topics), "area": topics[0]["area"], "kind": kind,
           "conversations": messages + [{"role": roles[i % 2], "content": text.strip()} for i, text in enumerate(turns)]}
    if args is not None:
        out["prompt"] = {"tool": TOOL_OF_KIND[kind], "args": args}
    return out


def chat_row(rid: str, topic: dict, kind: str, turns: list[str]) -> dict:
    """A Study Chat row: Iris's chat system prompt, then user/assistant turns."""
    r = row(rid, [topic], kind, prompts.chat_prompt([], turns[0]), turns[1:])
    r["prompt"] = {"tool": "study_chat", "args": {"message": turns[0]}}
    return r


class Picker:
    """Picks knowledge-base items least used first, never more than ``MAX_USES`` times, and balances answer letters."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.uses: collections.Counter = collections.Counter()
        self.letters: collections.Counter = collections.Counter({x: 0 for x in LETTERS})

    def use(self, key: str) -> None:
        self.uses[key] += 1
        if self.uses[key] > MAX_USES:
            raise AssertionError(f"{key} used {self.uses[key]} times")

    def pick(self, topic: dict, kind: str, k: int = 1, short: bool = False) -> list[tuple[str, dict]]:
        """Up to ``k`` items of ``topic[kind]`` as (key, item), least used first, random (or ``short``est) among equals."""
        keyed = [(f"{topic['id']}.{kind}[{i}]", x) for i, x in enumerate(topic[kind])]
        free = [kx for kx in keyed if self.uses[kx[0]] < MAX_USES]
        self.rng.shuffle(free)
        free.sort(key=lambda kx: (self.uses[kx[0]], len(json.dumps(kx[1])) if short else 0))
        chosen = free[:k]
        for key, _ in chosen:
            self.use(key)
        return chosen

    def checkpoint(self) -> tuple:
        return self.uses.copy(), self.letters.copy()

    def rollback(self, saved: tuple) -> None:
        self.uses, self.letters = saved[0].copy(), saved[1].copy()

    def shuffle_mcq(self, q: dict) -> tuple[list[str], str]:
        """The options reordered so the right one sits at the least used letter so far; returns (options, letter)."""
        right = q["options"]["ABCD".index(q["answer"])]
        others = [o for o in q["options"] if o != right]
        self.rng.shuffle(others)
        least = min(self.letters.values())
        letter = self.rng.choice([x for x in LETTERS if self.letters[x] == least])
        self.letters[letter] += 1
        i = LETTERS.index(letter)
        return others[:i] + [right] + others[i:], letter


# ---------------------------------------------------------------- quiz and drill formatting (the app parses this)
def format_mcq(n: int, question: str, options: list[str]) -> str:
    return f"**Question {n}.** {question}\n" + "\n".join(f"{LETTERS[i]}) {opt}" for i, opt in enumerate(options))


def mcq_block(picker: Picker, n: int, q: dict) -> tuple[str, str, dict]:
    """(question text, answer-key line, what grading needs) for one multiple-choice question."""
    options, letter = picker.shuffle_mcq(q)
    return format_mcq(n, q["question"], options), f"{n}. {letter}: {q['explanation']}", {"kind": "mcq", "answer": letter, "explanation": q["explanation"]}


def open_block(n: int, kind: str, question: str, guide: list[str]) -> tuple[str, str, dict]:
    points = "; ".join(g.rstrip(".") for g in guide)
    return f"**Question {n}.** ({kind}) {question}", f"{n}. A good answer covers: {points}.", {"kind": kind}


def strict(rng: random.Random) -> bool:
    return rng.random() < STRICT_SHARE


# ---------------------------------------------------------------------------------------------- grading turns
def wrong_letter(rng: random.Random, right: str) -> str:
    return rng.choice([x for x in LETTERS if x != right])


def grade_reply(graded: list[tuple[float, str]]) -> str:
    """The tutor's reply to "My answers: ...": a score, then one line per question."""
    score = sum(p for p, _ in graded)
    lines = [f"{i}. {text}" for i, (_, text) in enumerate(graded, start=1)]
    return f"Score: {score:g} of {len(graded)}.\n\n" + "\n".join(lines)


def mcq_grade(rng: random.Random, meta: dict, right: bool) -> tuple[str, tuple[float, str]]:
    given = meta["answer"] if right else wrong_letter(rng, meta["answer"])
    text = (f"Right: {given}. {meta['explanation']}" if right
            else f"Not quite: you chose {given}, the answer is {meta['answer']}. {meta['explanation']}")
    return given, (float(right), text)


def first_sentences(text: str, max_words: int = 40) -> str:
    """Whole leading sentences of ``text`` up to about ``max_words`` words (at least one sentence; never cut inside
    one, and "e.g." or "i.e." do not end a sentence)."""
    sentences = re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z\"(])", text.strip())
    out = [sentences[0]]
    for sentence in sentences[1:]:
        if words(" ".join(out + [sentence])) > max_words:
            break
        out.append(sentence)
    return " ".join(out)


VERDICT_POINTS = {"correct": 1.0, "partly correct": 0.5, "wrong": 0.0}


# ------------------------------------------------------------------------------------------------- quizzes
def quiz_rows(topic: dict, picker: Picker, rng: random.Random) -> list[dict]:
    """Three quizzes of 2-5 questions; the last one continues with the student's answers and their grading."""
    rows = []
    for i, n in enumerate(rng.sample([3, 3, 4, 4, 5], 2) + [3]):
        kind = "quiz_grade" if i == 2 else "quiz"
        saved = picker.checkpoint()
        picked = picker.pick(topic, "mcq", n)
        difficulty, built = rng.choice(prompts.DIFFICULTIES), None
        for strict_ in dict.fromkeys((strict(rng), False)):  # the plain request is shorter, for the longest questions
            for k in range(len(picked), 0, -1):  # fewer questions until the conversation fits MAX_TOKENS
                picker.rollback(saved)
                picked = picker.pick(topic, "mcq", k, short=kind == "quiz_grade")
                blocks = [mcq_block(picker, j + 1, q) for j, (_, q) in enumerate(picked)]
                args = {"topic": short_title(topic), "n": len(blocks), "difficulty": difficulty, "strict": strict_}
                turns = [quiz_text(blocks)]
                if kind == "quiz_grade":
                    answers, graded = [], []
                    for j, (_, _, meta) in enumerate(blocks):
                        given, g = mcq_grade(rng, meta, right=rng.random() < 0.6 or j == 0)
                        answers.append(given)
                        graded.append(g)
                    turns += [prompts.grade_request(answers), grade_reply(graded)]
                if fits(prompts.quiz_prompt(**args), turns):
                    built = args, turns
                    break
            if built:
                break
        if not built:
            raise AssertionError(f"{topic['id']}: no quiz fits {MAX_TOKENS} tokens")
        args, turns = built
        rows.append(row(f"{topic['id']}-{kind}-{i}", [topic], kind, prompts.quiz_prompt(**args), turns, args))
    return rows


def quiz_text(blocks) -> str:
    return "\n\n".join(b[0] for b in blocks) + "\n\n**Answer key**\n" + "\n".join(b[1] for b in blocks)


# ------------------------------------------------------------------------------------------------ feedback
def feedback_rows(topic: dict, picker: Picker, rng: random.Random) -> list[dict]:
    """One row per graded student answer: the verdict, the feedback, then the model answer."""
    rows = []
    for i, fb in enumerate(topic["feedback"]):
        picker.use(f"{topic['id']}.feedback[{i}]")
        for j, a in enumerate(fb["answers"]):
            args = {"question": fb["question"], "answer": a["student_answer"], "strict": strict(rng)}
            reply = f"Verdict: {a['verdict']}.\n\n{a['feedback']}\n\nModel answer: {fb['model_answer']}"
            rows.append(row(f"{topic['id']}-feedback-{i}-{j}", [topic], "feedback", prompts.feedback_prompt(**args), [reply], args))
    return rows


# --------------------------------------------------------------------------------------------- cheat sheets
def cheat_sheet(topics: list[dict], rng: random.Random, points_per_topic: int) -> str:
    parts = []
    for t in topics:
        points = rng.sample(t["key_points"], min(points_per_topic, len(t["key_points"])))
        pitfall = rng.choice(t["pitfalls"])
        summary = t["summary"] if len(topics) == 1 else t["summary"].split(". ")[0].rstrip(".") + "."
        lines = [f"**{t['title']}**", summary] + [f"- {p}" for p in points] + [f"- Watch out: {pitfall}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def cheat_rows(topic: dict, by_id: dict, rng: random.Random) -> list[dict]:
    related = [by_id[r] for r in topic["related"] if r in by_id]
    groups = [[topic], [topic] + related[:1], [topic] + related[1:2]] if len(related) > 1 else [[topic], [topic] + related[:1]]
    rows = []
    for i, group in enumerate(groups):
        args = {"topics": [short_title(t) for t in group]}
        for per in range(6 if len(group) == 1 else 4, 0, -1):  # fewer points per topic until it fits
            sheet = cheat_sheet(group, rng, per)
            if fits(prompts.cheat_sheet_prompt(**args), [sheet]):
                break
        else:
            raise AssertionError(f"{topic['id']}: no cheat sheet on {args['topics']} fits {MAX_TOKENS} tokens")
        rows.append(row(f"{topic['id']}-cheat_sheet-{i}", group, "cheat_sheet", prompts.cheat_sheet_prompt(**args), [sheet], args))
    return rows


# ------------------------------------------------------------------------------------------------- drills
def drill_question(picker: Picker, topic: dict, n: int, kind: str, short: bool = False) -> tuple[str, str, dict] | None:
    """One drill question of ``kind`` (mcq, short answer, compare, graded) from ``topic``, or None when used up."""
    source = {"mcq": "mcq", "short answer": "qa", "compare": "compare", "graded": "feedback"}[kind]
    got = picker.pick(topic, source, short=short)
    if not got:
        return None
    _, item = got[0]
    if kind == "mcq":
        return mcq_block(picker, n, item)
    if kind == "graded":  # a feedback question: graded later with one of its student answers
        block = open_block(n, "short answer", item["question"], item["key_points"])
        return block[0], block[1], {"kind": "short answer", "feedback": item}
    return open_block(n, kind, item["q"], item["guide"])


DRILL_PATTERNS = {False: [["mcq", "short answer", "compare"], ["short answer", "mcq", "compare"], ["mcq", "short answer", "compare", "short answer"]],
                  True: [["mcq", "graded"], ["graded", "mcq"]]}


def drill_rows(topics: list[dict], picker: Picker, rng: random.Random, count: int, graded_every: int = 4) -> list[dict]:
    """Mixed drills over 2-4 topics; every ``graded_every``-th continues with the student's answers and their grading."""
    rows = []
    for i in range(count):
        graded = i % graded_every == graded_every - 1
        for _ in range(200):  # another mix when the questions are used up or the text runs over MAX_WORDS
            saved = picker.checkpoint()
            built = try_drill(topics, picker, rng, graded)
            if built and fits(prompts.drill_prompt(**built[2]), built[1]):
                break
            picker.rollback(saved)
        else:
            raise AssertionError(f"drill {i}: no mix of unused questions fits {MAX_TOKENS} tokens")
        group, turns, args = built
        kind = "drill_grade" if graded else "drill"
        rows.append(row(f"drill-{i}", group, kind, prompts.drill_prompt(**args), turns, args))
    return rows


def try_drill(topics: list[dict], picker: Picker, rng: random.Random, graded: bool):
    pattern = rng.choice(DRILL_PATTERNS[graded])
    group = rng.sample(topics, min(len(pattern), rng.choice([2, 3, 3, 4])))
    blocks = []
    for n, kind in enumerate(pattern, start=1):
        b = drill_question(picker, group[(n - 1) % len(group)], n, kind, short=graded)
        if b is None:
            return None
        blocks.append(b)
    turns = ["\n\n".join(b[0] for b in blocks) + "\n\n**What to look for**\n" + "\n".join(b[1] for b in blocks)]
    if graded:
        answers, lines = [], []
        for b in blocks:
            meta = b[2]
            if meta["kind"] == "mcq":
                given, g = mcq_grade(rng, meta, right=rng.random() < 0.6)
            else:
                a = min(meta["feedback"]["answers"], key=lambda x: words(x["student_answer"] + x["feedback"]) + rng.random())
                given, g = a["student_answer"], (VERDICT_POINTS[a["verdict"]], f"{a['verdict'].capitalize()}. {first_sentences(a['feedback'])}")
            answers.append(given)
            lines.append(g)
        turns += [prompts.grade_request(answers), grade_reply(lines)]
    return group, turns, {"topics": [short_title(t) for t in group], "n": len(blocks), "strict": strict(rng)}


# ---------------------------------------------------------------------------------------------- study plans
ACTIVITIES = [  # {q}: one of the topic's own questions; the line already names the topic
    "answer \"{q}\" from memory, then check it against your notes",
    "write a one-page summary with one worked example",
    "explain it aloud in five minutes, then check what you missed",
    "do a practice quiz and review every wrong answer",
    "list its common pitfalls and how to avoid each",
    "draw the main diagram and annotate each part",
    "write an exam-style answer to \"{q}\" in ten minutes",
    "make flashcards for the key terms and test yourself twice",
    "compare it with a related topic in a short table",
    "redo the questions you got wrong in the last quiz",
]


def activity(topic: dict, rng: random.Random) -> str:
    return rng.choice(ACTIVITIES).format(q=rng.choice(topic["qa"])["q"].rstrip("?.") + "?")


def plan_answer(topics: list[dict], weak: list[dict], start: dt.date, exam: dt.date, hours: float, rng: random.Random) -> str:
    """A plan from Iris's scheduler (so it passes ``check_plan``) with activities that name each day's topic."""
    names = {short_title(t): t for t in topics}
    schedule = iris_plan.build_schedule(start, exam, hours, list(names), [short_title(t) for t in weak])
    for day in schedule.days:
        if not day.activity:
            day.activity = activity(names[day.topics[0]], rng) if len(day.topics) == 1 else "review both topics, then do a mixed practice quiz"
    problems = iris_plan.check_plan(schedule.days, start, exam, hours, schedule.topics, schedule.weak)
    if problems:
        raise AssertionError(f"Iris's scheduler made a plan that fails check_plan: {problems}")
    return "\n".join(d.line() + "." for d in schedule.days) + f"\n\nExam day ({exam:%a %d %b}): light review only."


def plan_rows(topics: list[dict], rng: random.Random, count: int) -> list[dict]:
    rows = []
    while len(rows) < count:
        group = rng.sample(topics, rng.choice([2, 3, 4, 5]))
        weak = [t for t in group if t in rng.sample(group, rng.choice([0, 1, 1, 2]))]  # in topic order, as Iris sends them
        start = dt.date(2026, 1, 1) + dt.timedelta(rng.randrange(0, 365))
        exam = start + dt.timedelta(rng.randrange(5, 22))
        hours = rng.choice([3, 4, 5, 6, 7.5, 8, 10, 12])
        answer = plan_answer(group, weak, start, exam, hours, rng)
        args = {"start": start.isoformat(), "exam": exam.isoformat(), "hours": hours,
                "topics": [short_title(t) for t in group], "weak": [short_title(t) for t in weak]}
        if not fits(prompts.study_plan_prompt(**args), [answer]):
            continue
        rows.append(row(f"plan-{len(rows)}", group, "study_plan", prompts.study_plan_prompt(**args), [answer], args))
    return rows


# ---------------------------------------------------------------------------------------------- the files
def build_exam(topics: list[dict]) -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    picker = Picker(rng)
    by_id = {t["id"]: t for t in topics}
    train = []
    for t in topics:
        for kind, source in (("concept", "qa"), ("compare", "compare")):
            for i, x in enumerate(t[source]):
                picker.use(f"{t['id']}.{source}[{i}]")
                train.append(chat_row(f"{t['id']}-{kind}-{i}", t, kind, [x["q"], x["a"]]))
        train += [chat_row(f"{t['id']}-followup-{i}", t, "followup", [x["q1"], x["a1"], x["q2"], x["a2"]]) for i, x in enumerate(t["followups"])]
    for t in topics:  # generated kinds after every explanation row, so the picker spreads questions evenly
        train += quiz_rows(t, picker, rng)
        train += feedback_rows(t, picker, rng)
        train += cheat_rows(t, by_id, rng)
    train += drill_rows(topics, picker, rng, 200)
    train += plan_rows(topics, rng, 200)
    test = [
        {"id": f"{t['id']}-test-{i}", "topic": t["id"], "area": t["area"], "kind": "test", "key_concepts": x["key_concepts"],
         "conversations": prompts.chat_prompt([], x["question"]) + [{"role": "assistant", "content": x["reference"]}]}
        for t in topics for i, x in enumerate(t["test"])
    ]
    train_q = {norm(m["content"]) for r in train for m in r["conversations"] if m["role"] == "user"}
    leaked = [r["id"] for r in test if norm(r["conversations"][1]["content"]) in train_q]
    if leaked:
        sys.exit(f"error: held-out questions also in the training file: {leaked[:5]}. Edit data/sources/kb.")
    return train, test

def build_grounded(train: list[dict], index: iris_notes.Notes) -> list[dict]:
    """Each concept and compare row again with the notes Study Chat retrieves for its question, its own source item
    excluded (the index holds every qa and compare answer, under the id of the row built from it)."""
    out = []
    for r in train:
        if r["kind"] not in ("concept", "compare"):
            continue
        message = r["prompt"]["args"]["message"]
        notes = iris_notes.texts(index.retrieve(message, exclude={r["id"]}))
        args = {"message": message, "notes": notes}
        out.append({**r, "id": r["id"] + "-grounded", "conversations": prompts.chat_prompt([], message, notes) + r["conversations"][2:],
                    "prompt": {"tool": "study_chat", "args": args}})
    return out


def build_general() -> list[dict]:
    rows = [json.loads(line) for path in sorted(SOURCES.glob("general_*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(SEED).shuffle(rows)
    return rows


def dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if a committed file differs from a rebuild")
    args = ap.parse_args(argv)
    train, test = build_exam(load_kb())
    passages = iris_notes.kb_passages(str(SOURCES / "kb" / "*.json"))
    index = iris_notes.Notes([iris_notes.Passage(**p) for p in passages])
    outputs = {OUT_TRAIN: dumps(train), OUT_GROUNDED: dumps(build_grounded(train, index)), OUT_TEST: dumps(test),
               OUT_GENERAL: dumps(build_general()), iris_notes.NOTES: iris_notes.dumps(passages)}
    stale = []
    for path, text in outputs.items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            write_text(path, text)
            print(f"wrote {path.relative_to(REPO)}: {text.count(chr(10))} lines")
    if stale:
        sys.exit(f"error: {', '.join(stale)} differ from a rebuild: run python tools/build_datasets.py")


if __name__ == "__main__":
    main()
