"""Grounded answer feedback: the verdict comes from evidence code can check, never from the model's say-so.

A student's question is matched against the course's reference items (``references.json``, built from the knowledge
base in ``data/sources/kb/``: feedback questions with their rubric key points, Q&A items and compare items with their
grading guides). When one matches, each key point of its rubric is looked for in the student's answer (lexically: the
point's content words, lightly stemmed, minus the words of the question itself), and the verdict follows from the
share of key points found. The model only writes the explanation, after a verdict Iris has already fixed. When no item
matches, Iris gives no verdict.

The held-out test split (``kind: test`` in the knowledge base) is not in the index, as it is not in the training data.

    python -m iris.grounding                 # rebuild references.json from data/sources/kb/
    python -m iris.grounding --calibrate     # the verdict rule against the knowledge base's labelled student answers
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from labcore.io import write_text

HERE = Path(__file__).resolve().parent
REFERENCES = HERE / "references.json"
KB_GLOB = str(HERE.parent / "data" / "sources" / "kb" / "*.json")

# The rule. Calibrated with ``--calibrate`` on the knowledge base's labelled answers; "correct" is deliberately strict:
# calling a wrong answer correct does harm, calling a right one partly correct only costs the student a second look.
MATCH_THRESHOLD = 0.55  # cosine similarity of question words (tf-idf) to accept a reference item
POINT_FOUND = 0.5  # share of a key point's distinctive stems that must appear in the answer
CORRECT_AT = 0.75  # share of key points found for "correct"
PARTLY_AT = 0.25  # ... for "partly correct" (one key point of four); below it, "wrong"
MIN_ANSWER_STEMS = 3  # an answer with fewer content words is "wrong" whatever it repeats

STOP = set("""a an and are as at be been being both but by can could did do does doing for from had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too under until up
very was we were what when where which while who whom why will with would you your yours also about above after again
against because before below between during each few further any all answer answers explain describe give what's use used
uses using like well way ways one two three much many make makes made get gets instead rather often usually typically
example e.g i.e etc thing things something
states state notes note gives give explains names name mentions mention says say describes""".split())  # rubric verbs too


SUFFIXES = ("izations", "ization", "ations", "ation", "ings", "ing", "ized", "izes", "ize", "ers", "er", "ed", "es", "s", "ly")


def stem(word: str) -> str:
    """A light stemmer: one common suffix off, a final "e" off, at most 7 letters ("quantized", "quantization" and
    "quantize" meet; "transformer" and "transfer" do not)."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            break
    return word.removesuffix("e")[:7] if len(word) > 4 else word


def stems(text: str) -> list[str]:
    """Content-word stems: lower-cased words of 3+ characters (numbers of any length), stop words dropped."""
    out = []
    for word in re.findall(r"[a-z0-9][a-z0-9_\-.]*[a-z0-9]|[a-z0-9]", (text or "").lower()):
        if word in STOP or (len(word) < 3 and not word[0].isdigit()):
            continue
        out.append(stem(word) if word.isalpha() else word)
    return out


@dataclass(frozen=True)
class Reference:
    id: str
    topic: str
    question: str
    answer: str  # the reference (model) answer shown to the student
    key_points: tuple[str, ...]  # the rubric


def _kb_files(pattern: str = KB_GLOB) -> list[dict]:
    return [json.loads(Path(f).read_text()) for f in sorted(glob.glob(pattern))]


def build(kb_files: list[dict]) -> list[dict]:
    """Reference items from the knowledge base: feedback questions, Q&A and compare items (never the test split)."""
    out = []
    for kb in kb_files:
        for t in kb["topics"]:
            for i, fb in enumerate(t.get("feedback", [])):
                out.append({"id": f"{t['id']}-feedback-{i}", "topic": t["title"], "question": fb["question"],
                            "answer": fb["model_answer"], "key_points": fb["key_points"]})
            for kind in ("qa", "compare"):
                for i, item in enumerate(t.get(kind, [])):
                    if item.get("guide"):
                        out.append({"id": f"{t['id']}-{kind}-{i}", "topic": t["title"], "question": item["q"],
                                    "answer": item["a"], "key_points": item["guide"]})
    return out


class Index:
    """Reference questions by their content stems, weighted by idf. ``match`` scores an item by the smaller of two
    shares: how much of the student's question the item's question covers, and how much of the item's question the
    student's covers, so "What is LoRA?" does not match "When should you use QLoRA instead of LoRA?"."""

    def __init__(self, refs: list[Reference]):
        self.refs = refs
        self.docs = [set(stems(r.question)) for r in refs]
        df = Counter(s for d in self.docs for s in d)
        self.idf = {s: math.log((1 + len(self.docs)) / (1 + n)) + 1 for s, n in df.items()}
        self.unseen = math.log(1 + len(self.docs)) + 1
        self.doc_weights = [self._weight(d) for d in self.docs]  # once, not on every match

    def _weight(self, words: set[str]) -> float:
        return math.fsum(sorted(self.idf.get(w, self.unseen) for w in words))  # sorted: the same sum on every run

    def match(self, question: str) -> tuple[Reference | None, float]:
        q = set(stems(question))
        if not q:
            return None, 0.0
        wq = self._weight(q)
        best, key = None, (0.0, 0.0)
        for ref, d, wd in zip(self.refs, self.docs, self.doc_weights):
            shared = self._weight(q & d)
            a, b = shared / wq, shared / (wd or 1.0)
            if (min(a, b), max(a, b)) > key:  # ties broken by the other share, then by index order
                best, key = ref, (min(a, b), max(a, b))
        return best, key[0]


@lru_cache(maxsize=2)
def load_index(path: str = str(REFERENCES)) -> Index:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {"references": []}
    return Index([Reference(r["id"], r["topic"], r["question"], r["answer"], tuple(r["key_points"])) for r in data["references"]])


NEGATION = re.compile(r"\b(not|no|never|cannot|can't|doesn't|don't|isn't|aren't|won't|without|neither|nor|instead of|rather than)\b", re.I)
SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")


def _point_found(point: str, answer_stems: set[str], sentences: list[tuple[set[str], bool]], asked: set[str]) -> bool:
    """A key point counts when the answer holds half its distinctive stems (those not in the question); a point that is
    a negation needs them in one sentence that negates too: "Backpropagation does not update the weights" is not
    found in "backpropagation updates the weights"."""
    distinctive = {s for s in stems(point) if s not in asked} or set(stems(point))
    if not distinctive:
        return False
    if not NEGATION.search(point):
        return len(distinctive & answer_stems) / len(distinctive) >= POINT_FOUND
    return any(negated and len(distinctive & said) / len(distinctive) >= POINT_FOUND for said, negated in sentences)


def check_points(answer: str, question: str, key_points) -> dict:
    """Which key points the answer covers (``_point_found``), and how many content words it adds to the question's."""
    asked = set(stems(question))
    sentences = [(set(stems(s)), bool(NEGATION.search(s))) for s in SENTENCE.split(answer or "") if s.strip()]
    found = [p for p in key_points if _point_found(p, set(stems(answer)), sentences, asked)]
    missing = [p for p in key_points if p not in found]
    new_words = len(set(stems(answer)) - asked)
    return {"found": found, "missing": missing, "coverage": len(found) / len(key_points) if key_points else 0.0,
            "answer_content_words": new_words}


def verdict_of(evidence: dict) -> str:
    if evidence["answer_content_words"] < MIN_ANSWER_STEMS:
        return "wrong"
    if evidence["coverage"] >= CORRECT_AT:
        return "correct"
    return "partly correct" if evidence["coverage"] >= PARTLY_AT else "wrong"


def grade(question: str, answer: str, index: Index | None = None) -> dict:
    """``{"grounded": bool, "verdict", "reference": {...}, "similarity", "found", "missing", "coverage"}``.

    ``grounded`` is False (and ``verdict`` None) when no course item matches the question well enough."""
    index = index or load_index()
    ref, sim = index.match(question)
    if ref is None or sim < MATCH_THRESHOLD:
        return {"grounded": False, "verdict": None, "similarity": round(sim, 3), "reference": None,
                "found": [], "missing": [], "coverage": None}
    evidence = check_points(answer, ref.question, ref.key_points)
    return {"grounded": True, "verdict": verdict_of(evidence), "similarity": round(sim, 3),
            "reference": {"id": ref.id, "topic": ref.topic, "question": ref.question, "answer": ref.answer},
            "found": evidence["found"], "missing": evidence["missing"], "coverage": round(evidence["coverage"], 3)}


# ------------------------------------------------------------------------------------------------ calibration
def labelled_answers(kb_files: list[dict]) -> list[dict]:
    """The knowledge base's student answers with their verdicts, each with its item's question and key points."""
    out = []
    for kb in kb_files:
        for t in kb["topics"]:
            for fb in t.get("feedback", []):
                for a in fb["answers"]:
                    out.append({"question": fb["question"], "key_points": fb["key_points"], "answer": a["student_answer"],
                                "label": a["verdict"]})
    return out


def calibrate(kb_files: list[dict]) -> dict:
    """Confusion of the rule's verdicts against the labels, on all labelled answers and on the half of the questions
    the thresholds were not chosen on (split by a hash of the question)."""
    rows = labelled_answers(kb_files)
    labels = ("correct", "partly correct", "wrong")
    report = {}
    for name, keep in (("all", lambda q: True), ("validation half", lambda q: hashlib.sha256(q.encode()).digest()[0] % 2 == 1)):
        conf = {lab: Counter() for lab in labels}
        for r in rows:
            if keep(r["question"]):
                conf[r["label"]][verdict_of(check_points(r["answer"], r["question"], r["key_points"]))] += 1
        n = sum(sum(c.values()) for c in conf.values())
        report[name] = {"answers": n, "confusion": {lab: dict(c) for lab, c in conf.items()},
                        "accuracy": round(sum(conf[lab][lab] for lab in labels) / n, 3) if n else None,
                        "wrong_called_correct": conf["wrong"]["correct"], "wrong_answers": sum(conf["wrong"].values())}
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build Iris's reference index for grounded feedback, or check its verdict rule.")
    parser.add_argument("--kb", default=KB_GLOB, help="knowledge-base JSON files (glob; default data/sources/kb/*.json)")
    parser.add_argument("--out", default=str(REFERENCES), help="where to write the index (atomic)")
    parser.add_argument("--calibrate", action="store_true", help="print the rule's confusion against the labelled answers")
    args = parser.parse_args(argv)
    kb = _kb_files(args.kb)
    if not kb:
        raise SystemExit(f"error: no knowledge-base files match {args.kb}; pass --kb with the data/sources/kb/*.json glob.")
    if args.calibrate:
        print(json.dumps(calibrate(kb), indent=1))
        return
    refs = build(kb)
    out = Path(args.out)
    write_text(out, json.dumps({"source": "data/sources/kb/*.json (feedback, qa, compare; not test)", "references": refs}, indent=0, ensure_ascii=False))
    print(f"[grounding] {len(refs)} reference items -> {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
