"""Domain evaluation: base vs general-only vs general+exam vs exam-only fine-tunes, on ID2223 exam material.

    python evaluation/eval_domain.py                          # the embedded SmolLM2-135M grid, all 252 test items + the domain prompts
    python evaluation/eval_domain.py --items 20 --max_new_tokens 128     # a quicker pass
    python evaluation/eval_domain.py base:llama-3.2-3b llama-3.2-3b-qlora-finetome llama-3.2-3b-qlora-finetome-exam llama-3.2-3b-qlora-exam

Models whose adapter is missing are reported as missing, with the command that trains them; the rest are evaluated.
Writes evaluation_results/eval_domain.json (atomically, when every model is done).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import RESULTS, EvalError, ModelArgs, cli_main, evaluate, parse_args, resolve_spec  # noqa: E402

ARGS = ModelArgs(models=["base:smollm2-135m", "smollm2-135m-lora-finetome", "smollm2-135m-lora-finetome-exam", "smollm2-135m-lora-exam"],
                 prompts="domain", out=str(RESULTS / "eval_domain.json"))


def verdict(report: dict) -> dict:
    """Is every exam-tuned model above the base on concept coverage and held-out perplexity?"""
    out = {}
    for r in report["comparison"].get("rows", []):
        if "-exam" in r["label"]:  # exam-only, finetome-exam, and named variants such as the demo run
            out[r["label"]] = {"coverage_above_base": (r["coverage_delta"] or 0) > 0, "perplexity_below_base": (r["perplexity_delta"] or 0) < 0}
    return out


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(ARGS, argv, __doc__)
    sources = [resolve_spec(s, Path(args.root)) for s in args.models]
    if all(s.missing for s in sources if not s.spec.startswith("base:")) and len(sources) > 1:
        raise EvalError("none of the fine-tuned models exists: " + "; ".join(f"{s.missing}, run {s.command}" for s in sources if s.missing))
    report = evaluate("eval_domain", sources, args, argv, finish=lambda r: r.update(verdict=verdict(r)))
    for label, v in report["verdict"].items():
        print(f"[eval_domain] {label}: coverage above base: {v['coverage_above_base']}, perplexity below base: {v['perplexity_below_base']}")


if __name__ == "__main__":
    main()
