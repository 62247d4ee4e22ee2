"""How much concept coverage is there to gain? A no-model baseline beside a model report, on the same held-out items.

    python evaluation/eval_lookup.py                                   # beside evaluation_results/eval_shipped.json
    python evaluation/eval_lookup.py --report evaluation_results/eval_domain.json --out /tmp/lookup.json

For each held-out item the report answered, the "lookup" answer is the training answer whose question shares the
most informative words with the item's question (IDF-weighted word overlap over data/id2223_exam_prep_full.jsonl):
what a model that memorised the training set perfectly, and recalled the closest question, would say. It is scored
with the report's own metrics (concept coverage, ROUGE-L), and compared with each model of the report over the same
items (paired bootstrap 95% intervals). The report also gives the share of the items' key concepts that occur
anywhere in the training answers of the item's topic: no amount of training on this data can teach the rest.

Writes evaluation_results/eval_lookup.json and .md.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import RESULTS, EvalError, cli_main, parse_args  # noqa: E402
from evaluation.metrics import concept_coverage, mean, mean_difference, normalize_words, paired_bootstrap, rouge_l  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass
class LookupArgs:
    report: str = field(default=str(RESULTS / "eval_shipped.json"), metadata={"help": "an eval_domain report whose answers to compare with"})
    train_file: str = field(default=str(REPO / "data" / "id2223_exam_prep_full.jsonl"), metadata={"help": "the training conversations"})
    out: str = field(default=str(RESULTS / "eval_lookup.json"), metadata={"help": "the JSON report; its Markdown goes beside it (.md)"})


def _side(conv: list[dict], role: str) -> str:
    return "\n".join(m["content"] for m in conv if m["role"] == role)


class Lookup:
    """The training answer of the most similar training question (IDF-weighted overlap of normalised words)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.words = [set(normalize_words(_side(r["conversations"], "user"))) for r in rows]
        df = Counter(w for ws in self.words for w in ws)
        self.idf = {w: math.log(len(rows) / c) for w, c in df.items()}

    def nearest(self, question: str) -> dict:
        q = set(normalize_words(question))
        best = max(range(len(self.rows)), key=lambda i: (sum(self.idf[w] for w in q & self.words[i]), -i))
        return self.rows[best]


def topic_ceiling(items: list[dict], rows: list[dict]) -> float | None:
    """Share of the items' key concepts found anywhere in the training answers of the item's topic."""
    by_topic = defaultdict(list)
    for r in rows:
        by_topic[r.get("topic")].append(_side(r["conversations"], "assistant"))
    found = total = 0
    for item in items:
        share, hits = concept_coverage(item["key_concepts"], "\n".join(by_topic.get(item.get("topic"), [])))
        if share is not None:
            found, total = found + len(hits), total + len(item["key_concepts"])
    return found / total if total else None


def _load_jsonl(path: Path) -> list[dict]:
    """The rows of a conversations file, read by the training data loader (its line-numbered errors)."""
    from training.dataset_utils import DataError, iter_jsonl

    try:
        return [row for _, row, _ in iter_jsonl(path)]
    except (OSError, DataError) as e:
        raise EvalError(f"cannot read {path}: {e}") from None


def lookup_report(report: dict, train_rows: list[dict], test_rows: list[dict]) -> dict:
    """The lookup baseline over the report's answered items, and each model's paired difference from it."""
    by_id = {r["id"]: r for r in test_rows}
    models = [m for m in report.get("models", []) if m.get("answers")]
    if not models:
        raise EvalError("the report has no answers to compare with: give an eval_domain report of completed models")
    ids = [a["id"] for a in models[0]["answers"] if a["id"] in by_id and by_id[a["id"]].get("key_concepts")]
    lookup, items = Lookup(train_rows), [by_id[i] for i in ids]
    answers = []
    for item in items:
        hit = lookup.nearest(_side(item["conversations"], "user"))
        text, reference = _side(hit["conversations"], "assistant"), _side(item["conversations"], "assistant")
        cov, found = concept_coverage(item["key_concepts"], text)
        answers.append({"id": item["id"], "nearest": hit["id"], "coverage": cov, "concepts_found": found, "rouge_l": round(rouge_l(text, reference), 4)})
    rows = []
    for m in models:
        mine = {a["id"]: a for a in m["answers"]}
        pairs = [(mine[a["id"]]["coverage"], a["coverage"]) for a in answers if mine.get(a["id"], {}).get("coverage") is not None]
        rouge = [(mine[a["id"]]["rouge_l"], a["rouge_l"]) for a in answers if a["id"] in mine]
        rows.append({"label": m["label"], "items": len(pairs), "coverage": mean(p[0] for p in pairs), "rouge_l": mean(p[0] for p in rouge),
                     "lookup_minus_model_coverage": paired_bootstrap(pairs, mean_difference),
                     "lookup_minus_model_rouge_l": paired_bootstrap(rouge, mean_difference)})
    return {"items": len(answers), "lookup": {"coverage": mean(a["coverage"] for a in answers), "rouge_l": mean(a["rouge_l"] for a in answers)},
            "topic_ceiling": topic_ceiling(items, train_rows), "models": rows, "answers": answers}


def _interval(b: dict | None) -> str:
    return "-" if not b else f"{b['value']:+.3f} [{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}]"


def markdown(record: dict) -> str:
    r = record["result"]
    lines = [
        "# Lookup baseline: how much concept coverage is there to gain?", "",
        f"Command: `{' '.join(['python evaluation/eval_lookup.py', *record['config']['argv']])}`",
        f"Beside `{record['config']['report']}`, on its {r['items']} held-out items. The lookup answer is the training answer of the "
        "most similar training question (no model): perfect recall of the training set.", "",
        "| answers from | items | concept coverage | ROUGE-L | lookup minus this: coverage [95% CI] | lookup minus this: ROUGE-L [95% CI] |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| lookup: nearest training answer | {r['items']} | {r['lookup']['coverage']:.3f} | {r['lookup']['rouge_l']:.3f} | - | - |",
    ]
    lines += [f"| {m['label']} | {m['items']} | {m['coverage']:.3f} | {m['rouge_l']:.3f} | {_interval(m['lookup_minus_model_coverage'])} | "
              f"{_interval(m['lookup_minus_model_rouge_l'])} |" for m in r["models"]]
    if r["topic_ceiling"] is not None:
        lines += ["", f"Key concepts of these items found anywhere in the training answers of their topic: {r['topic_ceiling']:.1%}. "
                  "The rest are not in the training data at all."]
    return "\n".join(lines) + "\n"


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(LookupArgs(), argv, __doc__)
    from labcore.records import record_envelope, write_report

    try:
        report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"cannot read the report {args.report}: {e}; run evaluation/eval_domain.py first") from None
    test_file = Path(report.get("items", {}).get("test_file") or REPO / "data" / "id2223_exam_prep_test.jsonl")
    result = lookup_report(report, _load_jsonl(Path(args.train_file)), _load_jsonl(test_file))
    record = record_envelope("eval", "eval_lookup", {"report": Path(args.report).name, "train_file": Path(args.train_file).name,
                                                     "test_file": test_file.name, "argv": list(sys.argv[1:] if argv is None else argv)})
    record.update(status="completed", result=result)
    md = write_report(Path(args.out), record, markdown)
    print(f"[eval_lookup] lookup coverage {result['lookup']['coverage']:.3f} on {result['items']} items; wrote {args.out} and {md}")


if __name__ == "__main__":
    main()
