"""A lexical judge of generated multiple-choice questions: is the marked answer the option the course material supports?

No model can grade a 135M model's quiz here, so this judge reads the knowledge base (``data/sources/kb/``: each
topic's summary, key points, Q&A answers and feedback model answers; never its multiple-choice items). For each option
it takes the option's distinctive stems, weighted by idf over the course sentences (``iris.grounding.stems``, minus the question's and those shared by every
option) and finds the course sentence that holds the largest share of them. The judge picks the option with the
highest support when it is unique and at least ``DECIDE_AT``; otherwise it abstains.

It is a proxy, so it is validated where the answers are known: on the course question bank (``iris/question_bank.json``),
whose items the judge's text never includes. ``python -m evaluation.mcq_judge`` prints that validation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache

from evaluation.common import parse_args
from iris import bank, grounding

DECIDE_AT = 0.5
LETTERS = "ABCD"


@lru_cache(maxsize=1)
def idf() -> dict[str, float]:
    sets = [s for topic in course_sentences().values() for s in topic]
    df = {}
    for s in sets:
        for w in s:
            df[w] = df.get(w, 0) + 1
    return {w: math.log((1 + len(sets)) / (1 + n)) + 1 for w, n in df.items()}


def _share(words: set[str], sentence: set[str], weights: dict[str, float]) -> float:
    total = sum(weights.get(w, 1.0) for w in words)
    return sum(weights.get(w, 1.0) for w in words & sentence) / total if total else 0.0


@lru_cache(maxsize=1)
def course_sentences() -> dict[str, list[set[str]]]:
    """topic id -> the stem sets of its course sentences (not its multiple-choice items)."""
    out: dict[str, list[set[str]]] = {}
    for kb in grounding._kb_files():
        for t in kb["topics"]:
            texts = [t.get("summary", ""), *t.get("key_points", []), *(qa["a"] for qa in t.get("qa", [])),
                     *(fb["model_answer"] for fb in t.get("feedback", []))]
            sentences = [s for text in texts for s in re.split(r"(?<=[.!?;])\s+", text) if s.strip()]
            out[t["id"]] = [set(grounding.stems(s)) for s in sentences]
    return out


def judge(question: dict, topic_ids: list[str]) -> dict:
    """``{"pick": letter | None, "support": {letter: share}, "agrees": bool | None}`` for one generated question."""
    sentences = [s for tid in topic_ids for s in course_sentences().get(tid, [])]
    options = {k: set(grounding.stems(v)) for k, v in (question.get("options") or {}).items() if k in LETTERS}
    if len(options) < 4 or not sentences:
        return {"pick": None, "support": {}, "agrees": None}
    asked = set(grounding.stems(question.get("text", "")))
    shared = set.intersection(*options.values())
    support, weights = {}, idf()
    for letter, words in options.items():
        distinctive = words - asked - shared
        support[letter] = max((_share(distinctive, s, weights) for s in sentences), default=0.0) if distinctive else 0.0
    best = max(support.values())
    top = [k for k, v in support.items() if v == best]
    pick = top[0] if len(top) == 1 and best >= DECIDE_AT else None
    return {"pick": pick, "support": {k: round(v, 2) for k, v in support.items()},
            "agrees": None if pick is None else pick == question.get("answer")}


def summarize(judged: list[dict]) -> dict:
    decided = [j for j in judged if j["pick"] is not None]
    agree = sum(bool(j["agrees"]) for j in decided)
    return {"questions": len(judged), "decided": len(decided), "agree": agree,
            "agree_rate": agree / len(decided) if decided else None, "decided_rate": len(decided) / len(judged) if judged else None}


def validate() -> dict:
    """The judge against the question bank's known answers (what its agreement rate means on generated quizzes)."""
    judged = [judge(q, [entry["id"]]) for entry in bank.load()["topics"].values() for q in entry["questions"] if q["kind"] == "mcq"]
    return summarize(judged)


@dataclass
class Args:
    """No flags: ``python -m evaluation.mcq_judge`` validates the judge on the question bank."""


ARGS = Args()


def main(argv: list[str] | None = None) -> None:
    parse_args(ARGS, argv, "Validate the lexical MCQ judge on the course question bank, whose answers are known.")
    print(json.dumps(validate(), indent=1))


if __name__ == "__main__":
    main()
