"""PEFT method comparison: LoRA vs QLoRA at the same model size (the first spec is the reference).

    python evaluation/eval_models.py                                   # smollm2-135m-lora-exam vs smollm2-135m-qlora-exam
    python evaluation/eval_models.py smollm2-135m-lora-finetome smollm2-135m-qlora-finetome
    python evaluation/eval_models.py llama-3.2-1b-lora-finetome llama-3.2-1b-qlora-finetome --limit 30

QLoRA adapters are evaluated on the full-precision base (as the GGUF export merges them); the report says so.
Writes evaluation_results/eval_models.json (atomically, when every model is done).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import RESULTS, add_settings_args, evaluate, main_guard, resolve_spec, settings_from_args  # noqa: E402

DEFAULT = ["smollm2-135m-lora-exam", "smollm2-135m-qlora-exam"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("specs", nargs="*", default=DEFAULT, help="run names, base:<model> or .gguf files (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS / "eval_models.json"), help="report path (default: %(default)s)")
    add_settings_args(p, prompts="general")
    args = p.parse_args(argv)
    sources = [resolve_spec(s, Path(args.root)) for s in args.specs]
    evaluate("eval_models", sources, settings_from_args(args), Path(args.out), argv, jobs=args.jobs)


if __name__ == "__main__":
    main_guard(main)
