"""Data-quality report for any supported dataset file (exam format, ShareGPT, OpenAI messages).

    python tools/data_report.py data/id2223_exam_prep_full.jsonl --test data/id2223_exam_prep_test.jsonl
    python tools/data_report.py data/general_instructions.jsonl --max_tokens 512 --model smollm2-135m
    python tools/data_report.py some.jsonl --no_tokens --max_near_dup 0.05      # gates are flags

Reports rows, unique conversations, distinct final answers, exact and near-duplicate rates (equal after lower-casing
and stripping punctuation), role-order errors, empty turns, meta-instruction rate in user turns, token lengths under
the model's chat template with the share over --max_tokens, counts per kind and topic, and train/test overlap.

Gates on what a fine-tune learns from the exam file (each applies where the file has the rows it needs):
  prompt_mismatch_rate   tool-shaped rows (quiz, feedback, plans, drills, Study Chat) whose request is not exactly
                         what Iris sends: the row's recorded tool and arguments are rendered with iris/prompts.py and
                         compared with its system and user messages; a row that records none counts as a mismatch
  plan_invalid_rate      study plans that fail Iris's check_plan (dates, weekly hours, every topic covered, weak
                         topics more time), read with Iris's own plan parser
  correct_longest_rate   multiple-choice questions whose right option is the single longest (chance is 25%)
  top_opening_rate       rows whose assistant turns share the most frequent 8-word opening (words only, digits and
                         punctuation ignored, so "Step 1 - Find the 20%" and "Step 2 - Find the 5%" count as one)
  test_near_dup_rate     test questions whose best TF-IDF cosine (words and word pairs) against any training
                         question (user turns, quiz and drill questions) or any other test question reaches
                         --near_dup_threshold (default 0.68: above it, pairs read as the same question reworded;
                         the report lists the closest pairs). TF-IDF misses paraphrases with few shared words,
                         so read the top pairs too
Prints a table, writes JSON and a length-histogram PNG (default: evaluation_results/data_report_<file>.json/.png),
and exits 1 when a gate fails. A file shaped like the original project's (thousands of rows, a few dozen distinct
answers) fails the duplicate gates at once.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import sys
from datetime import date
from pathlib import Path

from iris import logic, prompts
from iris import plan as iris_plan
from labcore.io import write_json  # noqa: E402
from labcore.text import meta_hits  # noqa: E402
from tools.kb_check import right_is_longest
from training.dataset_utils import REPO, _problem

TOOL_OF_KIND = prompts.TOOL_OF_KIND
MCQ_KINDS = ("quiz", "quiz_grade", "drill", "drill_grade")

GATES = {  # name: (flag, default, direction)
    "exact_duplicate_rate": ("max_exact_dup", 0.0, "max"),
    "near_duplicate_answer_rate": ("max_near_dup", 0.02, "max"),
    "distinct_answer_ratio": ("min_distinct_answers", 0.8, "min"),
    "role_error_rate": ("max_role_errors", 0.0, "max"),
    "empty_turn_rate": ("max_empty", 0.0, "max"),
    "meta_instruction_rate": ("max_meta", 0.01, "max"),
    "over_max_tokens_rate": ("max_over_length", 0.05, "max"),
    "test_overlap_rate": ("max_test_overlap", 0.0, "max"),
    "prompt_mismatch_rate": ("max_prompt_mismatch", 0.0, "max"),
    "plan_invalid_rate": ("max_plan_invalid", 0.0, "max"),
    "correct_longest_rate": ("max_correct_longest", 0.35, "max"),
    "top_opening_rate": ("max_top_opening", 0.02, "max"),
    "test_near_dup_rate": ("max_test_near_dup", 0.0, "max"),
}
NEAR_DUP_THRESHOLD = 0.68  # measured: 0.69-0.73 for a reworded question (model.no_sync, v1 files of commit 315e017);
# 0.66 and below for pairs that share a topic but ask different things ("How does ReAct differ from chain-of-thought
# prompting?" ~ "Explain chain-of-thought prompting.")


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def read_rows(path: Path) -> tuple[list[dict], collections.Counter, int]:
    """Valid rows, problems per reason (bad lines are counted, not fatal), and the number of lines read."""
    rows, problems, n = [], collections.Counter(), 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        n += 1
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            problems["bad JSON"] += 1
            continue
        reason, detail = _problem(raw)
        if reason is not None:
            problems[reason] += 1
            continue
        rows.append({"messages": detail, "kind": raw.get("kind") or raw.get("category"), "topic": raw.get("topic"),
                     "prompt": raw.get("prompt"), "_line": lineno})
    return rows, problems, n


def token_lengths(rows: list[dict], model: str) -> list[int]:
    from transformers import AutoTokenizer

    from training.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    return [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]


def report(path: Path, test: Path | None = None, model: str | None = "smollm2-135m", max_tokens: int = 512,
           near_dup_threshold: float = NEAR_DUP_THRESHOLD) -> dict:
    rows, problems, n_lines = read_rows(path)
    convs = [json.dumps(r["messages"], sort_keys=True) for r in rows]
    finals = [r["messages"][-1]["content"] for r in rows]
    near = [norm(a) for a in finals]
    user_turns = [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]
    meta = collections.Counter(h for t in user_turns for h in meta_hits(t))
    meta_turns = sum(1 for t in user_turns if meta_hits(t))
    out = {
        "file": str(path),
        "rows": n_lines,
        "valid_rows": len(rows),
        "unique_conversations": len(set(convs)),
        "distinct_answers": len(set(finals)),
        "distinct_answers_near": len(set(near)),
        "exact_duplicate_rate": round(1 - len(set(convs)) / max(len(rows), 1), 4),
        "near_duplicate_answer_rate": round(1 - len(set(near)) / max(len(rows), 1), 4),
        "distinct_answer_ratio": round(len(set(near)) / max(len(rows), 1), 4),
        "problems": dict(problems),
        "role_error_rate": round((problems["turns do not alternate"] + problems["unknown role"] + problems["ends on a user turn"]) / max(n_lines, 1), 4),
        "empty_turn_rate": round(problems["empty content"] / max(n_lines, 1), 4),
        "meta_instruction_rate": round(meta_turns / max(len(user_turns), 1), 4),
        "meta_instruction_patterns": dict(meta),
        "multi_turn": sum(1 for r in rows if sum(m["role"] == "user" for m in r["messages"]) > 1),
        "answer_words": _stats([len(a.split()) for a in finals]),
        "kinds": dict(collections.Counter(r["kind"] for r in rows if r["kind"]).most_common()),
        "topics": dict(collections.Counter(t for r in rows if r["topic"] for t in str(r["topic"]).split(",")).most_common()),
    }
    out.update(serving_checks(rows))
    out.update(opening_check(rows))
    if model:
        lengths = token_lengths(rows, model)
        out["tokens"] = {"model": model, **_stats(lengths), "max_tokens": max_tokens,
                         "over": sum(x > max_tokens for x in lengths)}
        out["over_max_tokens_rate"] = round(out["tokens"]["over"] / max(len(lengths), 1), 4)
        out["_lengths"] = lengths
    if test:
        test_rows, _, _ = read_rows(test)
        train_q = {norm(m["content"]) for r in rows for m in r["messages"] if m["role"] == "user"}
        train_a = set(near)
        hits = [r for r in test_rows if norm(first_user(r)) in train_q or norm(r["messages"][-1]["content"]) in train_a]
        out["test_file"] = str(test)
        out["test_rows"] = len(test_rows)
        out["test_overlap"] = len(hits)
        out["test_overlap_rate"] = round(len(hits) / max(len(test_rows), 1), 4)
        out.update(near_duplicate_check(rows, test_rows, near_dup_threshold))
    return out


def first_turn(row: dict, role: str) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == role)


def first_user(row: dict) -> str:
    return first_turn(row, "user")


# --------------------------------------------------------------------------------- what Iris sends and parses
def _prompt_matches(r: dict, tool: str) -> bool:
    rec = r.get("prompt")
    if not isinstance(rec, dict) or rec.get("tool") != tool or not isinstance(rec.get("args"), dict):
        return False
    try:
        want = prompts.render(tool, rec["args"])
    except (KeyError, TypeError, ValueError):
        return False
    return r["messages"][: len(want)] == want


def _plan_inputs(r: dict):
    """(start, exam, hours, topics, weak) of a study-plan row: its recorded arguments, else read from its prompt."""
    rec = r.get("prompt") if isinstance(r.get("prompt"), dict) else {}
    args = rec.get("args") if rec.get("tool") == "study_plan" else None
    if isinstance(args, dict):
        try:
            return date.fromisoformat(args["start"]), date.fromisoformat(args["exam"]), float(args["hours"]), list(args["topics"]), list(args.get("weak") or [])
        except (KeyError, TypeError, ValueError):
            return None
    text = first_user(r)
    exam = re.search(r"exam(?: is)?(?: on)?\s+(\d{4}-\d{2}-\d{2})", text, re.I)
    dates = re.findall(r"\d{4}-\d{2}-\d{2}", text)
    hours = re.search(r"([\d.]+)\s*(?:h\b|hours?\b)", text)
    topics = re.search(r"(?:Topics:|Topics are|covering|cover)\s+(.+?)(?:\.\s|\.$|, and I)", text)
    weak = re.search(r"(?:weakest at|Weak spots:|struggle with)\s+(.+?)(?:\.\s|\.$)", text)
    if not (exam and len(dates) >= 2 and hours and topics):
        return None
    start = next(d for d in dates if d != exam.group(1))
    heads = {h.strip() for line in r["messages"][-1]["content"].splitlines() for m in [iris_plan.LINE.match(line)] if m
             for h in m.group(5).partition(":")[0].split("+") if "mock" not in h.lower()}
    topic_list = _names(topics.group(1), heads)
    weak_list = _names(weak.group(1), heads | set(topic_list)) if weak else []
    return date.fromisoformat(start), date.fromisoformat(exam.group(1)), float(hours.group(1)), topic_list, weak_list


def _names(text: str, known: set[str]) -> list[str]:
    """Topic names in a "A, B and C" list, for rows that do not record their arguments: names seen in the plan
    first (they may contain "and" or commas themselves), then whatever is left, split at commas and "and"."""
    found = []
    for name in sorted(known, key=len, reverse=True):
        if name and name in text:
            found.append(name)
            text = text.replace(name, "|")
    return found + [p.strip() for p in re.split(r"\||,|\band\b", text) if p.strip()]


def plan_problems(r: dict) -> list[str]:
    inputs = _plan_inputs(r)
    if inputs is None:
        return ["the plan's dates, hours and topics cannot be read from the row"]
    start, exam, hours, topics, weak = inputs
    topics = topics + [w for w in weak if w.lower() not in {t.lower() for t in topics}]  # as Iris's build_schedule does
    days = iris_plan.parse_plan_lines(r["messages"][-1]["content"], start, topics)
    return iris_plan.check_plan(days, start, exam, hours, topics, weak)


def serving_checks(rows: list[dict]) -> dict:
    """Prompt match with Iris, plan validity and the correct-option-longest rate, for files with tool kinds."""
    out = {}
    tool_rows = [(r, TOOL_OF_KIND[r["kind"]]) for r in rows if r.get("kind") in TOOL_OF_KIND]
    if tool_rows:
        bad = [r for r, tool in tool_rows if not _prompt_matches(r, tool)]
        out["prompt_rows"] = len(tool_rows)
        out["prompt_mismatch_rate"] = round(len(bad) / len(tool_rows), 4)
        out["prompt_mismatch_examples"] = [r.get("_line") for r in bad[:5]]
    plans = [r for r in rows if r.get("kind") == "study_plan"]
    if plans:
        failing = [(r, p) for r in plans for p in [plan_problems(r)] if p]
        out["plans"] = len(plans)
        out["plan_invalid_rate"] = round(len(failing) / len(plans), 4)
        out["plan_problem_examples"] = [f"line {r['_line']}: {p[0]}" for r, p in failing[:5]]
    mcqs = [q for r in rows if r.get("kind") in MCQ_KINDS
            for q in logic.parse_questions(first_turn(r, "assistant"), mcq_only=False)
            if q.kind == "mcq" and q.valid]
    if mcqs:
        longest = [q for q in mcqs if right_is_longest([q.options[x] for x in "ABCD"], q.answer)]
        out["mcq_questions"] = len(mcqs)
        out["correct_longest_rate"] = round(len(longest) / len(mcqs), 4)
        out["answer_letters"] = dict(sorted(collections.Counter(q.answer for q in mcqs).items()))
    return out


def opening(text: str, k: int = 8) -> str:
    return " ".join(re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())[:k])


def opening_check(rows: list[dict]) -> dict:
    """The most frequent 8-word opening of assistant turns, as a share of rows (a row counts once)."""
    counts = collections.Counter(o for r in rows for o in {opening(m["content"]) for m in r["messages"] if m["role"] == "assistant"} if o)
    if not counts:
        return {}
    top, n = counts.most_common(1)[0]
    return {"top_opening": top, "top_opening_rows": n, "top_opening_rate": round(n / max(len(rows), 1), 4)}


# ------------------------------------------------------------------------------------ test/train near-duplicates
STOP = set("""a an the of to in on for and or is are be it its this that with as by at from what why how when which
does do can you your i my me we our if than then so not no into about between""".split())


def _terms(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9_]+", text.lower()) if w not in STOP and len(w) > 1]


def training_questions(rows: list[dict]) -> list[str]:
    """Every question a training row asks: user turns (a feedback prompt's "Question:" line) and quiz/drill questions."""
    out = []
    for r in rows:
        for m in r["messages"]:
            if m["role"] == "user":
                q = re.search(r"(?m)^(?:Question|Q):\s*(.+)$", m["content"])
                out.append(q.group(1) if q else m["content"])
        if r.get("kind") in MCQ_KINDS:
            out += [q.text for q in logic.parse_questions(first_turn(r, "assistant"), mcq_only=False)]
    return out


def near_duplicate_check(rows: list[dict], test_rows: list[dict], threshold: float) -> dict:
    """Best TF-IDF cosine (words, sublinear tf) of each test question against every training question and every
    other test question."""
    train_q = training_questions(rows)
    test_q = [first_user(r) for r in test_rows]
    docs = [collections.Counter(_terms(q)) for q in train_q + test_q]
    df = collections.Counter(t for d in docs for t in d)
    idf = {t: math.log((1 + len(docs)) / (1 + c)) + 1 for t, c in df.items()}
    vecs = []
    for d in docs:
        v = {t: (1 + math.log(c)) * idf[t] for t, c in d.items()}
        norm_ = math.sqrt(sum(x * x for x in v.values())) or 1.0
        vecs.append({t: x / norm_ for t, x in v.items()})
    index = collections.defaultdict(list)
    for i, v in enumerate(vecs):
        for t, x in v.items():
            index[t].append((i, x))
    pairs = []
    for k, r in enumerate(test_rows):
        me = len(train_q) + k
        scores = collections.defaultdict(float)
        for t, x in vecs[me].items():
            for i, y in index[t]:
                if i != me:
                    scores[i] += x * y
        best, cos = max(scores.items(), key=lambda kv: kv[1], default=(None, 0.0))
        other = "" if best is None else (train_q + test_q)[best] + (" (test)" if best >= len(train_q) else "")
        pairs.append((round(cos, 3), r.get("_line"), test_q[k], other))
    pairs.sort(key=lambda p: -p[0])
    flagged = [p for p in pairs if p[0] >= threshold]
    return {"near_dup_threshold": threshold, "test_near_dups": len(flagged),
            "test_near_dup_rate": round(len(flagged) / max(len(test_rows), 1), 4),
            "test_near_dup_top": [{"cosine": c, "test_line": line, "test": t, "closest": q} for c, line, t, q in pairs[:8]]}


def _stats(xs: list[int]) -> dict:
    if not xs:
        return {}
    s = sorted(xs)
    return {"min": s[0], "p50": s[len(s) // 2], "p95": s[int(len(s) * 0.95) - 1 if len(s) > 1 else 0], "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def check_gates(rep: dict, limits: dict) -> list[str]:
    failed = []
    for name, (flag, _, direction) in GATES.items():
        if name not in rep:
            continue
        value, limit = rep[name], limits[flag]
        if (direction == "max" and value > limit) or (direction == "min" and value < limit):
            failed.append(f"{name} = {value} ({'above' if direction == 'max' else 'below'} {limit}; --{flag.replace('_', '-')})")
    return failed


def plot(lengths: list[int], max_tokens: int, title: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(lengths, bins=40, color="#4c72b0")
    ax.axvline(max_tokens, color="#c44e52", linestyle="--", label=f"max length {max_tokens}")
    ax.set_xlabel("tokens per conversation (chat template)")
    ax.set_ylabel("conversations")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def print_table(rep: dict) -> None:
    keys = ["rows", "valid_rows", "unique_conversations", "distinct_answers", "exact_duplicate_rate", "near_duplicate_answer_rate",
            "distinct_answer_ratio", "role_error_rate", "empty_turn_rate", "meta_instruction_rate", "multi_turn",
            "over_max_tokens_rate", "test_overlap_rate", "prompt_mismatch_rate", "plan_invalid_rate", "correct_longest_rate",
            "top_opening_rate", "test_near_dup_rate"]
    print(f"data report: {rep['file']}")
    for k in keys:
        if k in rep:
            print(f"  {k:<28} {rep[k]}")
    if rep.get("problems"):
        print(f"  {'problems':<28} {rep['problems']}")
    if rep.get("tokens"):
        t = rep["tokens"]
        print(f"  {'tokens (' + t['model'] + ')':<28} min {t['min']}  p50 {t['p50']}  p95 {t['p95']}  max {t['max']}  over {t['max_tokens']}: {t['over']}")
    if rep.get("answer_words"):
        print(f"  {'answer words':<28} {rep['answer_words']}")
    if rep.get("kinds"):
        print(f"  {'kinds':<28} {rep['kinds']}")
    if rep.get("topics"):
        print(f"  {'topics':<28} {len(rep['topics'])} distinct")
    if rep.get("top_opening"):
        print(f"  {'most frequent opening':<28} {rep['top_opening']!r} ({rep['top_opening_rows']} rows)")
    for p in rep.get("test_near_dup_top", [])[:3]:
        print(f"  {'closest test/train pair':<28} {p['cosine']}: {p['test'][:60]!r} ~ {p['closest'][:60]!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--test", type=Path, help="held-out file: report questions/answers it shares with FILE")
    ap.add_argument("--model", default="smollm2-135m", help="tokenizer for token lengths (model-table key or folder)")
    ap.add_argument("--no_tokens", action="store_true", help="skip token lengths (no tokenizer needed)")
    ap.add_argument("--max_tokens", type=int, default=512)
    ap.add_argument("--near_dup_threshold", type=float, default=NEAR_DUP_THRESHOLD,
                    help=f"TF-IDF cosine at which a test question counts as a near-duplicate of a training one (default {NEAR_DUP_THRESHOLD})")
    ap.add_argument("--out", type=Path, help="JSON path (default evaluation_results/data_report_<name>.json); the PNG lies beside it")
    for name, (flag, default, direction) in GATES.items():
        ap.add_argument(f"--{flag}", type=float, default=default, help=f"gate: {direction} {name} (default {default})")
    args = ap.parse_args(argv)
    if not args.file.exists():
        sys.exit(f"error: {args.file}: file not found")
    if args.test and not args.test.exists():
        sys.exit(f"error: {args.test}: file not found")
    rep = report(args.file, args.test, None if args.no_tokens else args.model, args.max_tokens, args.near_dup_threshold)
    rep["gates_failed"] = check_gates(rep, vars(args))
    out = args.out or REPO / "evaluation_results" / f"data_report_{args.file.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    lengths = rep.pop("_lengths", None)
    if lengths:
        png = out.with_suffix(".png")
        plot(lengths, args.max_tokens, f"{args.file.name}: {len(lengths)} conversations", png)
        rep["histogram"] = str(png)
    write_json(out, rep)
    print_table(rep)
    print(f"  written: {out}")
    if rep["gates_failed"]:
        print("GATES FAILED:\n  " + "\n  ".join(rep["gates_failed"]))
        return 1
    print("all gates passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
