"""PEFT method comparison: LoRA vs QLoRA at the same model size (the first spec is the reference).

    python evaluation/eval_models.py                                   # smollm2-135m-lora-exam vs smollm2-135m-qlora-exam
    python evaluation/eval_models.py smollm2-135m-lora-finetome smollm2-135m-qlora-finetome
    python evaluation/eval_models.py llama-3.2-1b-lora-finetome llama-3.2-1b-qlora-finetome --items 30

QLoRA adapters are evaluated on the full-precision base (as the GGUF export merges them); the report says so.
Writes evaluation_results/eval_models.json (atomically, when every model is done).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import RESULTS, ModelArgs, cli_main, evaluate, parse_args, resolve_spec  # noqa: E402

ARGS = ModelArgs(models=["smollm2-135m-lora-exam", "smollm2-135m-qlora-exam"], prompts="general", out=str(RESULTS / "eval_models.json"))


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(ARGS, argv, __doc__)
    evaluate("eval_models", [resolve_spec(s, Path(args.root)) for s in args.models], args, argv)


if __name__ == "__main__":
    main()
