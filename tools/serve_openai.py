"""Serve a GGUF with llama-cpp-python's own OpenAI-compatible server, safely on AMX CPUs too.

    python tools/serve_openai.py                          # the embedded SmolLM2-135M-Instruct (Q4_1)
    python tools/serve_openai.py --model recipe-e1        # a run's export, from gguf_export/recipe-e1.manifest.json
    python tools/serve_openai.py --model path/to/x.gguf --port 8000 --n_ctx 4096 --threads 2

This is llama_cpp.server (its create_app and Settings, served by uvicorn: the same endpoints as
``python -m llama_cpp.server``) with one change: the model loads through labcore/gguf.py's decision. With
llama-cpp-python built by pip with GCC 12 on a CPU with AMX, every quantized GGUF crashes the stock server with
SIGSEGV on its first request; there the model is loaded with ``use_extra_bufts=false`` (llama.cpp's --no-repack).
Elsewhere nothing changes. docs/serving.md has the measurements and the alternatives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labcore import gguf  # noqa: E402

EXPORTS = REPO / "gguf_export"
PREFERRED = ("q8_0", "q4_k_m", "f16")  # a run's export: the first of these it has, else any non-LoRA file


def resolve_model(model: str | None) -> Path:
    """A GGUF path from a path, a run name with gguf_export/<run>.manifest.json, or None (the embedded model)."""
    if not model:
        from labcore.gguf import embedded_gguf

        return embedded_gguf()
    if Path(model).is_file():
        return Path(model).resolve()
    manifest = EXPORTS / f"{model}.manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"--model {model!r}: neither a GGUF file nor a run with {manifest.relative_to(REPO)}")
    files = {k.lower(): v for k, v in json.loads(manifest.read_text()).get("files", {}).items()}
    for key in [*PREFERRED, *files]:
        path = EXPORTS / str(files.get(key, {}).get("path", ""))
        if key in files and key != "lora" and path.is_file():
            return path
    raise SystemExit(f"{manifest.relative_to(REPO)} lists no GGUF file that exists")


def patch_model_loading() -> str:
    """Make llama_cpp.server load every model (the default one and any reload) the way labcore.gguf decides."""
    from llama_cpp.server.model import LlamaProxy

    verdict = gguf.verdict()
    if verdict["repack"]:
        return verdict["reason"]
    original = LlamaProxy.load_llama_from_model_settings

    def load(settings):
        with gguf._no_extra_bufts():
            return original(settings)

    LlamaProxy.load_llama_from_model_settings = staticmethod(load)
    return verdict["reason"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a GGUF file, or a run name with gguf_export/<run>.manifest.json (default: the embedded model)")
    p.add_argument("--model_alias", help="the model id clients see and send (default: the GGUF file name without .gguf)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n_ctx", type=int, default=2048, help="context size in tokens (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores)")
    p.add_argument("--api_key", default=None, help="require this bearer token (default: none)")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's load and timing logs")
    args = p.parse_args(argv)

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    path = resolve_model(args.model)
    alias = args.model_alias or path.stem
    threads = args.threads or gguf.default_threads()
    print(f"GGUF runtime: {patch_model_loading()}", flush=True)
    model = ModelSettings(model=str(path), model_alias=alias, n_ctx=args.n_ctx, n_threads=threads, n_threads_batch=threads,
                          flash_attn=True, verbose=args.verbose)  # flash attention: as labcore/gguf.load_llama
    server = ServerSettings(host=args.host, port=args.port, api_key=args.api_key)
    app = create_app(server_settings=server, model_settings=[model])  # loads the model
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/v1"
    key = args.api_key or "none"  # the openai client needs some key; the server checks it only with --api_key
    auth = f" -H 'Authorization: Bearer {key}'" if args.api_key else ""
    print(f"""Serving {path} as model {alias!r} at {url}  (API docs: {url[:-3]}/docs)
  curl {url}/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{alias}", "messages": [{{"role": "user", "content": "What is LoRA?"}}], "max_tokens": 64}}'
  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}', api_key='{key}'); \\
print(c.chat.completions.create(model='{alias}', messages=[{{'role': 'user', 'content': 'What is LoRA?'}}]).choices[0].message.content)"
""", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")


if __name__ == "__main__":
    main()
