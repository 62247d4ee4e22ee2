"""The course question bank: the exam-prep data's quiz and drill questions, parsed once into ``question_bank.json``.

When a small model's quiz does not parse even after a re-ask, Iris shows questions from this bank instead, and
says so. The bank ships inside the app folder, so the Space needs no data/ folder. Rebuild it after the data changes:

    python -m iris.bank                                   # reads data/id2223_exam_prep_full.jsonl
    python -m iris.bank --data other.jsonl --out /tmp/bank.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from functools import lru_cache
from pathlib import Path

from labcore.io import write_text

try:
    from iris import logic
except ImportError:  # the Space layout: these modules sit flat beside app.py
    import logic

HERE = Path(__file__).resolve().parent
BANK = HERE / "question_bank.json"
TITLE_PATTERNS = [  # the exam-prep data's quiz requests; a topic's title is the shortest name seen
    r"quiz about (.+?)\?$", r"[Qq]uiz me on (.+?):", r"questions on (.+?)(?: for exam practice)?[.?]$",
    r"test myself on (.+?)\. Give", r"covering (.+?)\.$",
]
STOP = {"and", "the", "of", "for", "in", "on", "a", "an", "to", "ml", "with"}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP and len(w) > 1}


def quiz_title(prompt: str) -> str | None:
    for pattern in TITLE_PATTERNS:
        match = re.search(pattern, prompt)
        if match:
            return match.group(1).strip()
    return None


def _turn(row: dict, role: str) -> str:
    return next(m["content"] for m in row["conversations"] if m["role"] == role)


def build(rows: list[dict]) -> dict:
    """``{"topics": {title: {"id": topic_id, "questions": [question dicts]}}}`` from quiz and drill rows."""
    titles: dict[str, str] = {}
    for r in rows:
        if r.get("kind") in ("quiz", "quiz_grade"):
            recorded = (r.get("prompt") or {}).get("args", {}).get("topic")  # the builder records the request's arguments
            title = recorded or quiz_title(_turn(r, "user"))
            if title and (r["topic"] not in titles or len(title) < len(titles[r["topic"]])):
                titles[r["topic"]] = title
    topics: dict[str, dict] = {}
    for r in rows:
        if r.get("kind") not in ("quiz", "quiz_grade", "drill", "drill_grade"):
            continue
        ids = r["topic"].split(",")
        quiz = r["kind"].startswith("quiz")
        for q in logic.parse_questions(_turn(r, "assistant"), mcq_only=quiz):
            topic_id = ids[0] if quiz else ids[(q.number - 1) % len(ids)]  # drill question i is on topic i
            if not q.valid or topic_id not in titles:
                continue
            entry = topics.setdefault(titles[topic_id], {"id": topic_id, "questions": []})
            if all(x["text"] != q.text for x in entry["questions"]):
                entry["questions"].append(q.to_dict())
    return {"source": "data/id2223_exam_prep_full.jsonl", "topics": dict(sorted(topics.items()))}


@lru_cache(maxsize=1)
def load(path: str = str(BANK)) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {"topics": {}}


def match_topics(query: str, bank: dict) -> list[str]:
    """Bank topics that ``query`` names, best first: most shared words, then the shortest title."""
    q = _words(query)
    if not q:
        return []
    scored = []
    for title, entry in bank["topics"].items():
        t = _words(title) | _words(entry["id"].replace("_", " "))
        shared = len(q & t)
        if shared and shared / len(q) >= 0.5:
            scored.append((-shared, len(t), title))
    return [title for *_, title in sorted(scored)]


def lookup(topic: str, n: int, kinds=("mcq",), exclude=(), path: str | None = None, seed: int | None = None) -> list[dict]:
    """Up to ``n`` bank questions of the given kinds on ``topic`` (renumbered from 1); empty when none match."""
    bank = load(path or str(BANK))
    rng = random.Random(seed)
    out = []
    for title in match_topics(topic, bank):
        pool = [q for q in bank["topics"][title]["questions"] if q["kind"] in kinds and q["text"] not in exclude]
        rng.shuffle(pool)
        out += [dict(q) for q in pool[: n - len(out)]]
        if len(out) >= n:
            break
    for i, q in enumerate(out):
        q["number"] = i + 1
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build Iris's question bank from the exam-prep data (quiz and drill rows).")
    parser.add_argument("--data", default=str(HERE.parent / "data" / "id2223_exam_prep_full.jsonl"), help="exam-prep JSONL file")
    parser.add_argument("--out", default=str(BANK), help="where to write the bank (atomic)")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        raise SystemExit(f"error: {args.data} does not exist; pass --data with the exam-prep JSONL file.")
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    bank = build(rows)
    out = Path(args.out)
    write_text(out, json.dumps(bank, indent=1, ensure_ascii=False))
    n = sum(len(t["questions"]) for t in bank["topics"].values())
    print(f"[bank] {n} questions on {len(bank['topics'])} topics -> {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
