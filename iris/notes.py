"""Course notes for Study Chat: the passages of the knowledge base most relevant to a question, put in the prompt.

A 135M model cannot hold the course in its weights (``evaluation_results/eval_lookup.md``: even perfect recall of the
training answers covers few of a new question's key concepts), so Iris hands it the relevant course text with each
question. The passages come from the knowledge base (``data/sources/kb/``): each topic's summary, key points and
pitfalls, and its worked Q&A and compare answers. The held-out test split is never in the index.

Retrieval is BM25 over content-word stems (``iris.grounding.stems``), with no model and no download; it runs in
milliseconds on a laptop. ``notes.json`` (built by ``python -m iris.notes``) holds the passages, so the app also works
where ``data/`` is not shipped (the Space layout).

    python -m iris.notes                               # rebuild iris/notes.json from data/sources/kb/
    python -m iris.notes --ask "Why does QLoRA use NF4?"   # the passages a question gets
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

try:
    from iris.grounding import KB_GLOB, _kb_files, stems
except ImportError:  # the Space layout: modules flat beside app.py
    from grounding import KB_GLOB, _kb_files, stems

HERE = Path(__file__).resolve().parent
NOTES = HERE / "notes.json"

K = 3  # passages per question: about 350 words, 450 tokens (the grounded training rows fit 1,024 tokens)
MIN_SCORE = 4.0  # BM25 score below which a passage is not relevant enough to show (chit-chat gets no notes)
K1, B = 1.2, 0.75  # BM25's usual term-saturation and length-normalisation constants
CHAT_WORDS = set(stems("thanks thank hello hey please help study studying bye okay great good nice cool sure yes"))


@dataclass(frozen=True)
class Passage:
    id: str  # <topic id>-<kind>-<i>; for qa and compare items the id of the training row built from them
    topic: str  # the topic's title
    kind: str  # summary | key_point | pitfall | concept (a qa item) | compare
    text: str


def passages(kb_files: list[dict]) -> list[dict]:
    """Every passage of the knowledge base, in file and topic order (never the test split)."""
    out = []
    for kb in kb_files:
        for t in kb["topics"]:
            texts = [("summary", f"{t['title']}: {t['summary']}")]
            texts += [("key_point", p) for p in t["key_points"]]
            texts += [("pitfall", f"A common mistake: {p}") for p in t["pitfalls"]]
            texts += [("concept", f"{x['q']} {x['a']}") for x in t["qa"]]  # "concept": the kind of the row built from a qa item
            texts += [("compare", f"{x['q']} {x['a']}") for x in t["compare"]]
            seen: Counter = Counter()
            for kind, text in texts:
                out.append({"id": f"{t['id']}-{kind}-{seen[kind]}", "topic": t["title"], "kind": kind, "text": " ".join(text.split())})
                seen[kind] += 1
    return out


class Notes:
    """BM25 over the passages' content-word stems."""

    def __init__(self, items: list[Passage]):
        self.items = items
        self.docs = [Counter(stems(f"{p.topic}. {p.text}")) for p in items]  # the topic's title counts, not shown
        lengths = [sum(d.values()) for d in self.docs]
        avg = (sum(lengths) / len(lengths)) if lengths else 1.0
        self.norms = [K1 * (1 - B + B * length / avg) for length in lengths]  # BM25's length term, once per passage
        df = Counter(s for d in self.docs for s in d)
        n = len(self.docs)
        self.idf = {s: math.log(1 + (n - c + 0.5) / (c + 0.5)) for s, c in df.items()}

    def scores(self, question: str) -> list[float]:
        q = set(stems(question)) - CHAT_WORDS
        out = []
        for d, norm in zip(self.docs, self.norms):
            out.append(math.fsum(sorted(self.idf[w] * d[w] * (K1 + 1) / (d[w] + norm) for w in q if w in d)))
        return out

    def retrieve(self, question: str, k: int = K, exclude: frozenset[str] | set[str] = frozenset(), min_score: float = MIN_SCORE) -> list[Passage]:
        """The ``k`` best passages scoring at least ``min_score``, best first (ties by index order); passages whose id
        is in ``exclude`` are skipped (a training row's own source item, so it is grounded as an unseen question is)."""
        if k <= 0:
            return []
        ranked = sorted(((s, i) for i, s in enumerate(self.scores(question)) if s >= min_score and self.items[i].id not in exclude),
                        key=lambda x: (-x[0], x[1]))
        return [self.items[i] for _, i in ranked[:k]]


def texts(found: list[Passage]) -> list[str]:
    """What the prompt carries (``iris.prompts.chat_system`` formats it)."""
    return [p.text for p in found]


def sources(found: list[Passage]) -> str:
    """Where the notes came from, for the student: topic titles in order of first appearance."""
    titles = list(dict.fromkeys(p.topic for p in found))
    return "; ".join(titles)


@lru_cache(maxsize=2)
def load(path: str = str(NOTES)) -> Notes:
    """The index from ``notes.json``; an empty index (no notes, the chat still works) when the file is missing."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {"passages": []}
    return Notes([Passage(**p) for p in data["passages"]])


def dumps(items: list[dict]) -> str:
    """``notes.json``'s text (``tools/build_datasets.py --check`` compares it byte for byte)."""
    return json.dumps({"source": "data/sources/kb/*.json (summary, key points, pitfalls, qa, compare; not test)",
                       "passages": items}, indent=0, ensure_ascii=False) + "\n"


def kb_passages(kb_glob: str = KB_GLOB) -> list[dict]:
    """``passages`` of the knowledge-base files matching ``kb_glob``, read in file-name order."""
    files = _kb_files(kb_glob)
    if not files:
        raise SystemExit(f"error: no knowledge-base files match {kb_glob}; pass --kb with the data/sources/kb/*.json glob.")
    return passages(files)


def build_file(kb_glob: str = KB_GLOB, out: Path = NOTES) -> int:
    from labcore.io import write_text

    items = kb_passages(kb_glob)
    write_text(out, dumps(items))
    return len(items)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build Iris's course-notes index, or show what a question retrieves.")
    parser.add_argument("--kb", default=KB_GLOB, help="knowledge-base JSON files (glob; default data/sources/kb/*.json)")
    parser.add_argument("--out", default=str(NOTES), help="where to write the index (atomic)")
    parser.add_argument("--ask", help="print the passages this question retrieves from the index at --out, with their scores")
    parser.add_argument("--k", type=int, default=K, help=f"passages per question (default {K})")
    args = parser.parse_args(argv)
    if args.ask:
        index = load(args.out)
        scores = index.scores(args.ask)
        for p in index.retrieve(args.ask, args.k):
            print(f"{scores[index.items.index(p)]:6.2f}  {p.id}  {p.text[:160]}")
        return
    n = build_file(args.kb, Path(args.out))
    print(f"[notes] {n} passages -> {args.out} ({Path(args.out).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
