"""Load GGUF models in llama-cpp-python safely on every CPU, and fast where that is safe.

Known hazard: llama-cpp-python compiled by pip with GCC 12 and native flags on a CPU with AMX (Sapphire Rapids and
later) builds ggml's AMX backend with a broken tile configuration, and every quantized GGUF dies with SIGSEGV on
its first inference. Loading with ``use_extra_bufts = false`` (llama.cpp's ``--no-repack``) avoids the AMX buffers.

``load_llama`` decides once per machine and build: on a CPU without AMX, or a ggml build without AMX, nothing
changes (the fast path). Otherwise a one-off probe decodes two tokens with a quantized GGUF in a subprocess; if
the probe crashes, models load with the extra buffers disabled. The verdict is cached next to the models, keyed by
the library file and the CPU flags. ``IRIS_GGUF_REPACK=1`` or ``0`` forces either path.

    python -m iris.gguf_runtime          # print the verdict for this machine
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

CACHE = Path(os.environ.get("PEFTLAB_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
_patch_lock = threading.Lock()
_verdict: dict | None = None


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _library_key() -> str:
    import llama_cpp

    lib = next(Path(llama_cpp.__file__).parent.glob("lib/libggml-cpu*"), None) or Path(llama_cpp.__file__)
    stat = lib.stat()
    flags = " ".join(sorted(f for f in _cpu_flags() if f.startswith(("amx", "avx512"))))
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
    if "amx_tile" not in _cpu_flags() or "AMX" not in info:
        _verdict = {"repack": True, "reason": "no AMX in this CPU or this ggml build: default path"}
        return _verdict
    cache = CACHE / "gguf_runtime.json"
    key = _library_key()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            _verdict = cached["verdict"]
            return _verdict
    except (OSError, ValueError, KeyError):
        pass
    from training.models import embedded_gguf  # a quantized (Q4_1) GGUF that ships with the project

    r = subprocess.run([sys.executable, "-c", _PROBE, str(embedded_gguf())], capture_output=True, text=True, timeout=300)
    if r.returncode == 0 and "probe-ok" in r.stdout:
        _verdict = {"repack": True, "reason": "AMX build passed the quantized-GGUF probe: default path"}
    else:
        _verdict = {"repack": False, "reason": f"AMX build crashed on a quantized GGUF (exit {r.returncode}): loading with use_extra_bufts=false"}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "verdict": _verdict}, indent=2))
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


def default_threads() -> int:
    """Physical cores this process may run on (llama-cpp-python's own default is half the logical CPUs: one thread on
    a 2-core machine without SMT)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(available, physical))


def load_llama(model_path: str | os.PathLike, **kwargs):
    """``llama_cpp.Llama`` that will not crash on this machine; unless given: ``verbose=False``, all physical cores, and
    flash attention (llama.cpp's own default is "auto"; llama-cpp-python's is off: on the 135M model it costs about a
    tenth of the decode speed, ``python tools/benchmark.py`` measures both)."""
    from llama_cpp import Llama

    kwargs.setdefault("verbose", False)
    kwargs.setdefault("flash_attn", True)
    if kwargs.get("n_threads") is None:
        kwargs["n_threads"] = default_threads()
    if kwargs.get("n_threads_batch") is None:
        kwargs["n_threads_batch"] = kwargs["n_threads"]
    safe = not verdict()["repack"]
    with _no_extra_bufts() if safe else contextlib.nullcontext():
        llm = Llama(model_path=str(model_path), **kwargs)
    llm.iris_safe_mode = safe
    return llm


if __name__ == "__main__":
    print(json.dumps(verdict(), indent=2))
