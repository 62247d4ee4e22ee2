"""Chat with a GGUF model from the terminal, and print tokens/s.

    python test_gguf.py                                   # newest GGUF in gguf_export/, else the embedded model
    python test_gguf.py gguf_export/smollm2-135m-lora-exam_q4_k_m.gguf --prompt "What is a feature store?"
    python test_gguf.py --max_tokens 128                  # without --prompt: the original's smoke prompts, or an
                                                          # interactive chat when stdin is a terminal

Loads through labcore.gguf, so quantized files also work on CPUs where a plain llama-cpp-python build crashes.
Greedy decoding with the serving repeat penalty (1.15) unless --temperature is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))

SMOKE_PROMPTS = [
    "Explain overfitting in simple terms.",
    "Summarize gradient descent.",
    "Difference between LoRA and QLoRA?",
    "What is a feature store, and why is it useful?",
    "Explain train-serve skew and how to prevent it.",
]


def default_model() -> Path:
    """The newest tuned export in gguf_export/ (never a LoRA-only file, nor the ``<run>_base_f16.gguf`` that export writes
    last for its checks); else the embedded base."""
    found = sorted((p for p in (REPO / "gguf_export").glob("*.gguf") if not p.name.endswith("_lora.gguf") and "_base_" not in p.name),
                   key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]
    from labcore.gguf import embedded_gguf

    return embedded_gguf()


def answer(llm, messages: list[dict], args) -> str:
    t0 = time.perf_counter()
    first, text, n = None, [], 0
    for chunk in llm.create_chat_completion(messages, max_tokens=args.max_tokens, temperature=args.temperature,
                                            top_p=0.9, repeat_penalty=1.15, stream=True):
        delta = chunk["choices"][0]["delta"].get("content")
        if delta:
            first = first or time.perf_counter()
            n += 1
            text.append(delta)
            print(delta, end="", flush=True)
    end = time.perf_counter()
    decode = (n - 1) / (end - first) if first and n > 1 else 0.0
    print(f"\n  [{n} chunks, first token {((first or end) - t0) * 1000:.0f} ms, decode {decode:.1f} tok/s]")
    return "".join(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", type=Path, help="GGUF file (default: newest in gguf_export/, else the embedded model)")
    ap.add_argument("--prompt")
    ap.add_argument("--max_tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    path = args.path or default_model()
    if not path.exists():
        sys.exit(f"error: {path}: no such GGUF file (export one with python tools/export_to_gguf.py RUN)")
    from labcore.gguf import load_llama

    print(f"model: {path}")
    try:
        llm = load_llama(path, n_ctx=2048, n_threads=args.threads)
    except ValueError as e:
        sys.exit(f"error: {path}: llama-cpp-python could not load it ({e})")
    if args.prompt:
        answer(llm, [{"role": "user", "content": args.prompt}], args)
    elif sys.stdin.isatty():
        history: list[dict] = []
        print("interactive chat; an empty line or Ctrl-D quits")
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                break
            history.append({"role": "user", "content": line})
            history.append({"role": "assistant", "content": answer(llm, history, args)})
            history = history[-8:]  # keep the context small
    else:
        for prompt in SMOKE_PROMPTS:
            print(f"\n>>> {prompt}")
            answer(llm, [{"role": "user", "content": prompt}], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
