"""The same fine-tune in PyTorch (adapter merged into its base) vs its GGUF exports F16, Q8_0 and Q4_K_M.

    python evaluation/eval_pytorch_vs_gguf.py                                  # smollm2-135m-lora-exam and gguf_export/smollm2-135m-lora-exam_*.gguf
    python evaluation/eval_pytorch_vs_gguf.py --run smollm2-135m-lora-finetome --quants q8_0,q4_k_m
    python evaluation/eval_pytorch_vs_gguf.py --run base:smollm2-135m --gguf path/to/SmolLM2-135M-Instruct.Q4_1.gguf

Reports, per quantization, the speed ratio (decode tokens/s, time to first token, end-to-end) and the quality delta
(held-out perplexity on the same token ids, concept coverage, ROUGE-L, identical greedy answers) against PyTorch.
A missing GGUF is named with the export command. Writes evaluation_results/eval_pytorch_vs_gguf.json.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import GGUF_DIR, QUANTS, RESULTS, EvalArgs, EvalError, cli_main, evaluate, parse_args, resolve_spec  # noqa: E402


@dataclass
class Args(EvalArgs):
    run: str = field(default="smollm2-135m-lora-exam", metadata={"help": "the PyTorch reference: a run name or base:<model>"})
    quants: str = field(default=",".join(QUANTS), metadata={"help": "comma-separated quantizations: the GGUF files <gguf_dir>/<run>_<quant>.gguf"})
    gguf_dir: str = field(default=str(GGUF_DIR), metadata={"help": "folder of the exports"})
    gguf: list[str] | None = field(default=None, metadata={"help": "GGUF files to compare instead of --quants"})


ARGS = Args(prompts="general", out=str(RESULTS / "eval_pytorch_vs_gguf.json"))


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(ARGS, argv, __doc__)
    name = args.run.removeprefix("base:")
    files = args.gguf or [str(Path(args.gguf_dir) / f"{name}_{q.strip().lower()}.gguf") for q in args.quants.split(",") if q.strip()]
    sources = [resolve_spec(args.run, Path(args.root))] + [resolve_spec(f, Path(args.root)) for f in files]
    ref = sources[0]
    if ref.missing:  # the GGUF files are exported from it, so it comes first
        raise EvalError(f"{ref.missing}" + (f": produce it with {ref.command}" if ref.command else ""))
    if all(s.missing for s in sources[1:]):
        commands = sorted({s.command for s in sources[1:] if s.command})
        raise EvalError(f"no GGUF file to compare ({', '.join(Path(s.gguf_path).name for s in sources[1:])} missing): produce them with {' and '.join(commands)}")
    evaluate("eval_pytorch_vs_gguf", sources, args, argv)


if __name__ == "__main__":
    main()
