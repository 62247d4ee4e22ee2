"""Dataset loading and validation shared by every training, evaluation and data tool.

Every supported file is normalised to one shape, a list of ``{"role", "content"}`` messages:

* ShareGPT (FineTome-100k, ``data/general_instructions.jsonl``): ``{"conversations": [{"from": "human", "value": ...}]}``
* the exam format (``data/id2223_exam_prep_full.jsonl``): ``{"conversations": [{"role": "user", "content": ...}]}``
  plus optional ``id``, ``topic`` and ``kind`` fields
* OpenAI style: ``{"messages": [{"role": "user", "content": ...}]}``

Validation names the file and the physical line of each problem, with the column of a JSON error and the column and
byte offset of a byte that is not UTF-8; a missing file or a directory is one error too. ``strict=True`` (training:
``--strict_data true``) stops at the first bad line; ``strict=False`` (``--strict_data false``) skips bad lines and
prints how many were skipped for each reason. A UTF-8 byte-order mark (BOM) is accepted, with a one-line note.

    python -c "from training.dataset_utils import load_conversations; print(len(load_conversations('data/id2223_exam_prep_full.jsonl')))"
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAM_DATA = REPO / "data" / "id2223_exam_prep_full.jsonl"
EXAM_GROUNDED_DATA = REPO / "data" / "id2223_exam_prep_grounded.jsonl"  # Study Chat rows with course notes
EXAM_TEST_DATA = REPO / "data" / "id2223_exam_prep_test.jsonl"
GENERAL_DATA = REPO / "data" / "general_instructions.jsonl"
FINETOME_ID = "mlabonne/FineTome-100k"

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}


BOM = "\ufeff"
SKIP_HINT = "or pass --strict_data false (strict=False in Python) to skip bad lines"


class DataError(ValueError):
    """A dataset problem, with the file and line in its one-line message."""


@dataclass
class LoadReport:
    """What a load did: where the data came from, what it skipped (per reason) and where it skipped a BOM."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    bom_lines: list[int] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.source}: kept {self.rows_kept} of {self.rows_read} conversations"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
            text += f" (skipped: {reasons})"
        return text

    def notes(self) -> list[str]:
        """One line per thing the load accepted but changed: today only a skipped UTF-8 byte-order mark."""
        if not self.bom_lines:
            return []
        lines = ", ".join(map(str, self.bom_lines[:5])) + (f" and {len(self.bom_lines) - 5} more" if len(self.bom_lines) > 5 else "")
        where = f"line{'s' if len(self.bom_lines) > 1 else ''} {lines}"
        return [f"note: {self.source}: skipped a UTF-8 byte-order mark (BOM) at the start of {where}"]


def _problem(row: object) -> tuple[str, str] | tuple[None, list[dict]]:
    """Return (reason, detail) for a bad row, or (None, messages) for a good one."""
    if not isinstance(row, dict):
        return "not an object", f"expected a JSON object, got {type(row).__name__}"
    turns = row.get("messages", row.get("conversations"))
    if turns is None:
        return "missing field", 'no "conversations" or "messages" field'
    if not isinstance(turns, list) or not turns:
        return "missing field", '"conversations"/"messages" must be a non-empty list'
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return "missing field", f"turn {i} is not an object"
        raw_role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if raw_role is None:
            return "missing field", f'turn {i} has no "role"/"from"'
        if content is None:
            return "missing field", f'turn {i} has no "content"/"value"'
        role = ROLE_MAP.get(str(raw_role).lower())
        if role is None:
            return "unknown role", f"turn {i} has unknown role {raw_role!r} (expected one of {sorted(ROLE_MAP)})"
        if not isinstance(content, str) or not content.strip():
            return "empty content", f"turn {i} ({role}) has empty content"
        messages.append({"role": role, "content": content})
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        return "turns do not alternate", "a system turn appears after the first turn"
    if not body:
        return "missing field", "only a system turn, no user/assistant turns"
    for i, m in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            return "turns do not alternate", f"turn {i + len(messages) - len(body)} is {m['role']!r}, expected {want!r}"
    if body[-1]["role"] != "assistant":
        return "ends on a user turn", "the conversation ends on a user turn (nothing to learn)"
    return None, messages


def _open(path: Path):
    """The file, opened for bytes; a missing file, a directory or an unreadable file is one DataError."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file: pass a .jsonl file (one conversation per line)")
    if not path.exists():
        raise DataError(f"{path}: file not found: pass the path of a .jsonl file")
    try:
        return path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None


def _decode(raw: bytes, offset: int) -> tuple[str | None, str]:
    """(the line as text, "") or (None, where the first byte that is not UTF-8 sits); ``offset`` is the line's start."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        column = len(raw[: e.start].decode("utf-8").removeprefix(BOM)) + 1
        return None, f"not UTF-8: byte 0x{raw[e.start]:02x} at column {column} (byte offset {offset + e.start} of the file)"


def _parse(text: str) -> tuple[str | None, str | list[dict], object]:
    """(reason, detail, row) for a bad line, (None, messages, row) for a good one.

    ``text`` is one physical line without its BOM and line break, so a JSON error's column is the column an editor
    shows (leading whitespace counts; the BOM, which editors hide, does not)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"column {e.colno}" + (" (end of line)" if e.pos >= len(text) else "")
        return "bad JSON", f"bad JSON ({e.msg} at {where})", None
    reason, detail = _problem(row)
    return reason, detail, row


def iter_jsonl(path: str | os.PathLike, strict: bool = True, report: LoadReport | None = None):
    """Yield ``(line_number, row, messages)`` for each valid conversation of a JSONL file.

    A UTF-8 BOM at the start of a line is skipped and its line noted in ``report.bom_lines``."""
    path = Path(path)
    report = report if report is not None else LoadReport(source=str(path))
    with _open(path) as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise DataError(f"{path}:1: the file is UTF-16 (it starts with a UTF-16 byte-order mark). Re-save it as UTF-8.")
            text, detail = _decode(raw, offset)
            offset += len(raw)
            if text is not None:
                text = text.rstrip("\r\n")
                if text.startswith(BOM):
                    text = text[len(BOM):]
                    report.bom_lines.append(lineno)
                if not text.strip():
                    continue
                reason, detail, row = _parse(text)
            else:
                reason = "not UTF-8"
            report.rows_read += 1
            if reason is not None:
                if strict:
                    fix = "Re-save the file as UTF-8" if reason == "not UTF-8" else "Fix the line"
                    raise DataError(f"{path}:{lineno}: {detail}. {fix}, {SKIP_HINT}.")
                report.skipped[reason] += 1
                continue
            report.rows_kept += 1
            yield lineno, row, detail


def load_conversations(path: str | os.PathLike, strict: bool = True, verbose: bool = False, report: LoadReport | None = None) -> list[dict]:
    """Load any supported JSONL file into rows ``{"messages": [...], **metadata}``; ``report`` (filled in) says what
    the load skipped or changed, for a run record."""
    report = report if report is not None else LoadReport(source=str(path))
    rows = []
    for lineno, row, messages in iter_jsonl(path, strict=strict, report=report):
        meta = {k: v for k, v in row.items() if k not in ("conversations", "messages")}
        rows.append({"messages": messages, **meta, "_line": lineno})
    for note in report.notes():
        print(note)
    if verbose or report.skipped:
        print(report.summary())
    return rows


def load_parquet_sharegpt(path: str | os.PathLike) -> list[dict]:
    """A ShareGPT Parquet file (as FineTome-100k ships) into the same row shape; bad rows raise with their index."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    rows = []
    for i, row in enumerate(ds):
        reason, detail = _problem(row)
        if reason is not None:
            raise DataError(f"{path}: row {i}: {detail}")
        rows.append({"messages": detail, "_line": i + 1})
    return rows


def load_finetome(local_path: str | None = None) -> tuple[list[dict], str]:
    """FineTome-100k from the HF cache, else a local ShareGPT JSONL/Parquet, else the shipped general set.

    Returns the rows and a one-line description of the source that was used.
    """
    if local_path:
        p = Path(local_path)
        rows = load_parquet_sharegpt(p) if p.suffix == ".parquet" else load_conversations(p, strict=False)
        return rows, f"local ShareGPT file {p}"
    try:
        import datasets
        import huggingface_hub.constants as hub_constants

        # Cache only: never start a download (and its retries) from a training script.
        saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
        try:
            ds = datasets.load_dataset(FINETOME_ID, split="train")
        finally:
            datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
        rows = []
        for i, row in enumerate(ds):
            reason, detail = _problem(row)
            if reason is None:
                rows.append({"messages": detail, "_line": i + 1})
        return rows, f"{FINETOME_ID} from the Hugging Face cache"
    except Exception as e:  # offline, not cached: fall back to what the repository ships
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        if not GENERAL_DATA.exists():
            raise DataError(
                f"{FINETOME_ID} is not in the Hugging Face cache ({why}) and {GENERAL_DATA} does not exist. "
                "Pass --general_data_path with a local ShareGPT JSONL/Parquet file."
            ) from None
        return load_conversations(GENERAL_DATA, strict=True), (
            f"{GENERAL_DATA.relative_to(REPO)} (offline general set; {FINETOME_ID} is not cached: {why})"
        )


def sample(rows: list, n: int | None, seed: int) -> list:
    """Deterministic sample of ``n`` rows (all rows, shuffled, when n is None or larger than the data)."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    if n is not None:
        idx = idx[:n]
    return [rows[i] for i in idx]


def split_holdout(rows: list, holdout: int | float, seed: int) -> tuple[list, list]:
    """Deterministic train/held-out split; ``holdout`` is a count or a fraction."""
    n = int(round(len(rows) * holdout)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
    shuffled = sample(rows, None, seed)
    return shuffled[n:], shuffled[:n]


def data_hash(rows: list[dict]) -> str:
    """sha256 over the normalised messages, so a record names exactly the data a run saw."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r["messages"], ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def tokenize_conversations(rows: list[dict], tokenizer, chat_template: str, max_length: int, policy: str = "truncate"):
    """Tokenise with a chat template that marks generations; enforce ``max_length`` by truncating or dropping.

    Returns ``input_ids``/``assistant_masks`` rows (the trainer turns the mask into labels: loss on assistant tokens
    only) and counts that the run prints and records, so nothing is cut silently: ``truncated`` (kept, cut to
    ``max_length``), ``dropped_over_length`` (policy "drop") and ``dropped_no_assistant_tokens`` (no assistant token
    left within ``max_length``, so nothing to learn); ``over_max_length`` is all three together.
    """
    if policy not in ("truncate", "drop"):
        raise ValueError(f"over-length policy must be 'truncate' or 'drop', got {policy!r}")
    out, cut = [], collections.Counter()
    lengths = []
    for r in rows:
        enc = tokenizer.apply_chat_template(r["messages"], chat_template=chat_template, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        lengths.append(len(ids))
        over = len(ids) > max_length
        if over and policy == "drop":
            cut["dropped_over_length"] += 1
            continue
        ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask):
            cut["dropped_no_assistant_tokens"] += 1  # truncation removed every assistant token: nothing left to learn
            continue
        cut["truncated"] += over
        out.append({"input_ids": ids, "assistant_masks": mask})
    stats = {
        "max_length": max_length, "policy": policy, "over_max_length": sum(n > max_length for n in lengths),
        "truncated": cut["truncated"], "dropped_over_length": cut["dropped_over_length"],
        "dropped_no_assistant_tokens": cut["dropped_no_assistant_tokens"],
        "kept": len(out), "tokens": sum(len(x["input_ids"]) for x in out),
        "loss_tokens": sum(sum(x["assistant_masks"]) for x in out),
        "mean_length": round(sum(lengths) / len(lengths), 1) if lengths else 0,
    }
    stats["summary"] = length_summary(stats)
    return out, stats


def length_summary(stats: dict) -> str:
    """What ``max_length`` did, as printed and recorded: e.g. "2 conversations truncated to 512 tokens; 1 dropped: no
    assistant tokens left within 512 tokens"."""
    n = stats["max_length"]
    parts = []
    if stats["truncated"]:
        parts.append(f"{_conversations(stats['truncated'])} truncated to {n} tokens")
    for key, why in (("dropped_over_length", f"over {n} tokens"), ("dropped_no_assistant_tokens", f"no assistant tokens left within {n} tokens")):
        if stats[key]:
            parts.append(f"{stats[key] if parts else _conversations(stats[key])} dropped: {why}")
    return "; ".join(parts) or f"no conversation over {n} tokens"


def _conversations(n: int) -> str:
    return f"{n} conversation{'' if n == 1 else 's'}"
