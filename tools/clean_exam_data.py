"""Remove meta-instruction phrases ("Briefly compare", "Relate it to ...", "Include an example from industry", ...)
from the user turns of an exam-format (or ShareGPT / messages) JSONL file.

    python tools/clean_exam_data.py IN.jsonl OUT.jsonl
    python tools/clean_exam_data.py data/my_exam.jsonl data/my_exam.jsonl --in_place   # overwrite, explicitly

Prints how many turns each pattern changed. Idempotent: cleaning a cleaned file changes nothing. Lines keep their
order and every field other than the user turns' text; a line that is not valid JSON stops the run with its number.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from labcore.io import write_text
from labcore.text import META_PATTERNS, strip_meta

USER_ROLES = {"user", "human"}


def clean_row(row: dict, counts: collections.Counter) -> dict:
    key = "messages" if "messages" in row else "conversations"
    for turn in row.get(key, []):
        role = str(turn.get("role", turn.get("from", ""))).lower()
        text_key = "content" if "content" in turn else "value"
        if role in USER_ROLES and isinstance(turn.get(text_key), str):
            cleaned, changed = strip_meta(turn[text_key])
            if changed and cleaned:
                turn[text_key] = cleaned
                counts.update(changed)
                counts["turns changed"] += 1
    return row


def clean_file(src: Path, dst: Path) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    lines = []
    with src.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {src}:{lineno}: bad JSON ({e.msg}); nothing was written") from None
            lines.append(json.dumps(clean_row(row, counts), ensure_ascii=False))
            counts["rows"] += 1
    write_text(dst, "\n".join(lines) + "\n")  # atomic: the input survives a crash even with --in_place
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--in_place", action="store_true", help="allow OUTPUT to be the INPUT file")
    args = ap.parse_args(argv)
    if not args.input.exists():
        sys.exit(f"error: {args.input}: file not found")
    if args.output.resolve() == args.input.resolve() and not args.in_place:
        sys.exit(f"error: refusing to overwrite the input {args.input}; pass --in_place to allow it, or choose another output")
    counts = clean_file(args.input, args.output)
    print(f"{counts['rows']} rows, {counts['turns changed']} user turns changed -> {args.output}")
    for name, _, _ in META_PATTERNS:
        print(f"  {name:<16} {counts[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
