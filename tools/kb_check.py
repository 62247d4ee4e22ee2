"""Check the knowledge-base sources (data/sources/kb/*.json) against their schema and the writing rules.

    python tools/kb_check.py                          # every file in data/sources/kb
    python tools/kb_check.py data/sources/kb/x.json   # one file

Prints one line per problem (file, topic id, field, what is wrong) and exits 1 when there is any. The dataset
builder runs the same checks before it writes anything. The schema of one topic:

    id, title, summary, key_points[>=8], pitfalls[>=3], related[topic ids]
    qa[>=8]:        {q, a, guide[2-5]}        guide: the points a full answer must make (a marking guide)
    compare[>=2]:   {q, a, guide[2-5]}
    mcq[>=8]:       {question, options[4], answer: A-D, explanation}   the explanation names no option letter
    feedback[>=4]:  {question, model_answer, key_points[2-5],
                     answers[2-3]: {student_answer, verdict: correct|partly correct|wrong, feedback}}
                    the answers of one question have different verdicts; feedback text carries no "Model answer:"
    followups[>=3]: {q1, a1, q2, a2}          q2 builds only on what a1 said
    test[>=3]:      {question, reference, key_concepts[>=2]}   each key concept appears verbatim in the reference

Word limits keep every training answer within 40-300 words once the builder adds its framing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

KB = Path(__file__).resolve().parent.parent / "data" / "sources" / "kb"
VERDICTS = ("correct", "partly correct", "wrong")
LETTER_REF = re.compile(r"\b(?i:option|answer|choice)s?\s+\(?[A-D]\b|\(\s*[A-D]\s*\)|\b[A-D]\)|^[A-D][.:)]|\b[A-D] (?i:is (?:correct|wrong|right|incorrect))")
MAX_CORRECT_LONGEST = 2  # per topic, of its multiple-choice questions: at most this many whose right option is the longest


def words(text: str) -> int:
    return len(str(text).split())


def _need(problems, where, item, fields):
    for f in fields:
        if f not in item or item[f] in ("", [], None):
            problems.append(f"{where}: missing {f}")
            return False
    return True


def right_is_longest(options: list[str], answer: str) -> bool:
    """Whether the right option (letter ``answer``) is the single longest, in characters."""
    lengths = [len(o) for o in options]
    i = "ABCD".index(answer)
    return lengths[i] == max(lengths) and lengths.count(max(lengths)) == 1


def check_topic(t: dict) -> list[str]:
    p: list[str] = []
    tid = t.get("id", "?")
    if not _need(p, tid, t, ["id", "title", "summary", "key_points", "pitfalls", "related", "qa", "compare", "mcq", "feedback", "followups", "test"]):
        return p
    for field, least in (("key_points", 8), ("pitfalls", 3), ("qa", 8), ("compare", 2), ("mcq", 8), ("feedback", 4), ("followups", 3), ("test", 3)):
        if len(t[field]) < least:
            p.append(f"{tid}.{field}: {len(t[field])} items, at least {least}")
    for kind in ("qa", "compare"):
        for i, x in enumerate(t[kind]):
            where = f"{tid}.{kind}[{i}]"
            if _need(p, where, x, ["q", "a", "guide"]):
                if not 2 <= len(x["guide"]) <= 5:
                    p.append(f"{where}.guide: {len(x['guide'])} points, want 2-5")
                if not 40 <= words(x["a"]) <= 280:
                    p.append(f"{where}.a: {words(x['a'])} words, want 40-280")
                if words(" ".join(x["guide"])) > 90:
                    p.append(f"{where}.guide: {words(' '.join(x['guide']))} words, want at most 90")
    longest = 0
    for i, q in enumerate(t["mcq"]):
        where = f"{tid}.mcq[{i}]"
        if not _need(p, where, q, ["question", "options", "answer", "explanation"]):
            continue
        if len(q["options"]) != 4 or len({o.strip().lower() for o in q["options"]}) != 4:
            p.append(f"{where}.options: want 4 different options")
            continue
        if q["answer"] not in ("A", "B", "C", "D"):
            p.append(f"{where}.answer: {q['answer']!r}, want one letter A-D")
            continue
        if LETTER_REF.search(q["explanation"]) or any(LETTER_REF.search(o) for o in q["options"]):
            p.append(f"{where}: names an option letter; options are shuffled by the builder, refer to them by content")
        longest += right_is_longest(q["options"], q["answer"])
    if longest > MAX_CORRECT_LONGEST:
        p.append(f"{tid}.mcq: the right option is the longest in {longest} questions, at most {MAX_CORRECT_LONGEST}: lengthen distractors")
    for i, fb in enumerate(t["feedback"]):
        where = f"{tid}.feedback[{i}]"
        if not _need(p, where, fb, ["question", "model_answer", "key_points", "answers"]):
            continue
        if not 2 <= len(fb["key_points"]) <= 5:
            p.append(f"{where}.key_points: {len(fb['key_points'])}, want 2-5")
        if words(fb["model_answer"]) > 90:
            p.append(f"{where}.model_answer: {words(fb['model_answer'])} words, want at most 90")
        verdicts = [a.get("verdict") for a in fb["answers"]]
        if not 2 <= len(fb["answers"]) <= 3 or len(set(verdicts)) != len(verdicts):
            p.append(f"{where}.answers: want 2-3 answers with different verdicts, got {verdicts}")
        for j, a in enumerate(fb["answers"]):
            if not _need(p, f"{where}.answers[{j}]", a, ["student_answer", "verdict", "feedback"]):
                continue
            if a["verdict"] not in VERDICTS:
                p.append(f"{where}.answers[{j}].verdict: {a['verdict']!r}, want one of {VERDICTS}")
            if re.search(r"model answer\s*:", a["feedback"], re.I):
                p.append(f"{where}.answers[{j}].feedback: contains 'Model answer:'; that text belongs in model_answer")
            if words(a["feedback"]) + words(fb["model_answer"]) > 240:
                p.append(f"{where}.answers[{j}]: feedback + model answer is {words(a['feedback']) + words(fb['model_answer'])} words, want at most 240")
    for i, f in enumerate(t["followups"]):
        _need(p, f"{tid}.followups[{i}]", f, ["q1", "a1", "q2", "a2"])
    for i, x in enumerate(t["test"]):
        where = f"{tid}.test[{i}]"
        if _need(p, where, x, ["question", "reference", "key_concepts"]):
            missing = [c for c in x["key_concepts"] if c.lower() not in x["reference"].lower()]
            if missing:
                p.append(f"{where}.key_concepts: not in the reference: {missing}")
    return p


def _read(path: Path):
    """The area object of ``path``, or the one-line problem that stops it from being read."""
    try:
        area = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{path.name}: cannot read ({path}): {e}"
    if not isinstance(area, dict) or "area" not in area or not isinstance(area.get("topics"), list):
        return None, f"{path.name}: want an object with 'area' and a list 'topics' ({path})"
    return area, None


def check_file(path: Path) -> list[str]:
    area, problem = _read(path)
    return [problem] if problem else [f"{path.name}: {msg}" for t in area["topics"] for msg in check_topic(t)]


def check_all(paths: list[Path]) -> list[str]:
    """Every file's problems, plus topic ids used twice and ``related`` ids that no file defines."""
    problems, areas, ids = [], {}, {}
    for path in paths:
        area, problem = _read(path)
        if problem:
            problems.append(problem)
            continue
        areas[path] = area
        problems += [f"{path.name}: {msg}" for t in area["topics"] for msg in check_topic(t)]
        for t in area["topics"]:
            if t.get("id") in ids:
                problems.append(f"{path.name}: topic id {t['id']!r} also in {ids[t['id']]}")
            ids[t.get("id")] = path.name
    for path, area in areas.items():
        for t in area["topics"]:
            unknown = [r for r in t.get("related", []) if r not in ids]
            if unknown:
                problems.append(f"{path.name}: {t.get('id')}.related: unknown topic ids {unknown}")
    return problems


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    given = [Path(a) for a in args]
    missing = [str(p) for p in given if not p.is_file()]
    if missing:
        print(f"error: not a file: {', '.join(missing)}", file=sys.stderr)
        return 2
    # The named files are checked together with the rest of the knowledge base, so "related" ids resolve.
    paths = given + [p for p in sorted(KB.glob("*.json")) if p.name not in {g.name for g in given}]
    problems = check_all(paths)
    if given:
        names = {p.name for p in given}
        problems = [m for m in problems if m.split(":")[0] in names]
    paths = given or paths
    for msg in problems:
        print(msg)
    print(f"{len(problems)} problems in {len(paths)} file(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
