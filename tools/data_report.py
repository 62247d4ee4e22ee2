"""Data-quality report for any supported dataset file (exam format, ShareGPT, OpenAI messages).

    python tools/data_report.py data/id2223_exam_prep_full.jsonl --test data/id2223_exam_prep_test.jsonl
    python tools/data_report.py data/general_instructions.jsonl --max-tokens 512 --model smollm2-135m
    python tools/data_report.py some.jsonl --no-tokens --max-near-dup 0.05      # gates are flags

Reports rows, unique conversations, distinct final answers, exact and near-duplicate rates (equal after lower-casing
and stripping punctuation), role-order errors, empty turns, meta-instruction rate in user turns, token lengths under
the model's chat template with the share over --max-tokens, counts per kind and topic, and train/test overlap.
Prints a table, writes JSON and a length-histogram PNG (default: evaluation_results/data_report_<file>.json/.png),
and exits 1 when a gate fails. A file shaped like the original project's (thousands of rows, a few dozen distinct
answers) fails the duplicate gates at once.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

from training.dataset_utils import REPO, _problem, meta_hits

GATES = {  # name: (flag, default, direction)
    "exact_duplicate_rate": ("max_exact_dup", 0.0, "max"),
    "near_duplicate_answer_rate": ("max_near_dup", 0.02, "max"),
    "distinct_answer_ratio": ("min_distinct_answers", 0.8, "min"),
    "role_error_rate": ("max_role_errors", 0.0, "max"),
    "empty_turn_rate": ("max_empty", 0.0, "max"),
    "meta_instruction_rate": ("max_meta", 0.01, "max"),
    "over_max_tokens_rate": ("max_over_length", 0.05, "max"),
    "test_overlap_rate": ("max_test_overlap", 0.0, "max"),
}


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
        rows.append({"messages": detail, "kind": raw.get("kind") or raw.get("category"), "topic": raw.get("topic"), "_line": lineno})
    return rows, problems, n


def token_lengths(rows: list[dict], model: str) -> list[int]:
    from transformers import AutoTokenizer

    from training.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    return [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]


def report(path: Path, test: Path | None = None, model: str | None = "smollm2-135m", max_tokens: int = 512) -> dict:
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
        hits = [r for r in test_rows if norm(r["messages"][0]["content"]) in train_q or norm(r["messages"][-1]["content"]) in train_a]
        out["test_file"] = str(test)
        out["test_rows"] = len(test_rows)
        out["test_overlap"] = len(hits)
        out["test_overlap_rate"] = round(len(hits) / max(len(test_rows), 1), 4)
    return out


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
            "over_max_tokens_rate", "test_overlap_rate"]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--test", type=Path, help="held-out file: report questions/answers it shares with FILE")
    ap.add_argument("--model", default="smollm2-135m", help="tokenizer for token lengths (model-table key or folder)")
    ap.add_argument("--no-tokens", action="store_true", help="skip token lengths (no tokenizer needed)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--out", type=Path, help="JSON path (default evaluation_results/data_report_<name>.json); the PNG lies beside it")
    for name, (flag, default, direction) in GATES.items():
        ap.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=float, default=default, help=f"gate: {direction} {name} (default {default})")
    args = ap.parse_args(argv)
    if not args.file.exists():
        sys.exit(f"error: {args.file}: file not found")
    if args.test and not args.test.exists():
        sys.exit(f"error: {args.test}: file not found")
    rep = report(args.file, args.test, None if args.no_tokens else args.model, args.max_tokens)
    rep["gates_failed"] = check_gates(rep, vars(args))
    out = args.out or REPO / "evaluation_results" / f"data_report_{args.file.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    lengths = rep.pop("_lengths", None)
    if lengths:
        png = out.with_suffix(".png")
        plot(lengths, args.max_tokens, f"{args.file.name}: {len(lengths)} conversations", png)
        rep["histogram"] = str(png)
    out.write_text(json.dumps(rep, indent=2) + "\n")
    print_table(rep)
    print(f"  written: {out}")
    if rep["gates_failed"]:
        print("GATES FAILED:\n  " + "\n  ".join(rep["gates_failed"]))
        return 1
    print("all gates passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
