"""Evaluate one model in this process: load, answer the items, score held-out perplexity, write one JSON result.

Started by ``evaluation.common.run_worker`` as ``python -m evaluation.worker JOB.json OUT.json`` so that the memory
figures (peak RSS sampled while loading, while generating and while scoring perplexity; CUDA peak when present)
belong to this model alone. Generation comes first, so the perplexity pass's large logit buffers do not inflate the
generation peak.

Both backends see exactly the same token ids: prompts and test conversations are rendered with the Hugging Face
tokenizer and chat template of the run (or its base), and llama.cpp evaluates those ids directly.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from evaluation import metrics
from evaluation.common import REPO, Settings, Source, summarize_answers
from labcore.io import cached_sha256, write_json
from labcore.threads import default_threads

# llama.cpp's general.file_type values for the quantizations this project meets
FILE_TYPES = {"0": "F32", "1": "F16", "2": "Q4_0", "3": "Q4_1", "7": "Q8_0", "8": "Q5_0", "9": "Q5_1", "15": "Q4_K_M", "17": "Q5_K_M", "18": "Q6_K", "32": "BF16"}


def folder_hashes(folder: str | None, patterns=("*.safetensors", "*.gguf", "*.bin")) -> dict | None:
    if not folder:
        return None
    return {p.name: cached_sha256(p) for pat in patterns for p in sorted(Path(folder).glob(pat))}


def provenance(src: Source) -> dict:
    out = {"base_sha256": folder_hashes(src.base_path) if src.format == "pytorch" else None,
           "adapter_sha256": folder_hashes(src.adapter_dir, ("adapter_model.safetensors",)),
           "gguf_sha256": cached_sha256(Path(src.gguf_path)) if src.gguf_path else None, "run_record": None}
    if src.base_path and (Path(src.base_path) / "materialized.json").exists():
        out["base_materialized_from"] = json.loads((Path(src.base_path) / "materialized.json").read_text())
    if src.run:
        from evaluation.common import run_record

        root = Path(src.adapter_dir).parent.parent if src.adapter_dir else REPO
        rec = run_record(root, src.run)
        if rec:  # the adapter's run record, without its bulky parts
            out["run_record"] = {k: rec.get(k) for k in ("name", "status", "created", "git_commit", "model_source", "data", "config",
                                                         "global_step", "final_train_loss", "wall_seconds", "chat_template_sha256")}
    return out


# ------------------------------------------------------------------------------------------------- backends
def _threads(settings: Settings) -> int:
    return settings.threads or default_threads()


def _stop_ids(tokenizer, extra=()) -> set[int]:
    ids = {tokenizer.eos_token_id, *extra}
    return {int(i) for i in ids if i is not None}


class Stamps:
    """A generate() streamer that only records when each chunk arrives: generate() calls put() once with the prompt,
    then once per new token, so times[1] is the first new token."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

class TorchModel:
    """Base (+ adapter, merged by default) in PyTorch: fp32 on CPU, bf16/fp16 on CUDA."""

    format = "pytorch"

    def __init__(self, src: Source, settings: Settings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.settings = torch, settings
        torch.set_num_threads(_threads(settings))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if self.device == "cpu" else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.dtype = str(dtype).removeprefix("torch.")
        self.tokenizer = AutoTokenizer.from_pretrained(src.tokenizer_dir or src.base_path)
        model = AutoModelForCausalLM.from_pretrained(src.base_path, dtype=dtype).to(self.device)
        self.merged = None
        if src.adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, src.adapter_dir)
            if settings.merge:
                model = model.merge_and_unload()
            self.merged = settings.merge
        self.model = model.eval()
        gen_eos = self.model.generation_config.eos_token_id
        self.stop_ids = _stop_ids(self.tokenizer, gen_eos if isinstance(gen_eos, list) else [gen_eos])

    def generate(self, ids: list[int], seed: int) -> tuple[list[int], float | None, float]:
        """(completion ids, seconds to the first new token, seconds in all)."""
        from transformers import GenerationConfig

        torch, s = self.torch, self.settings
        cfg = dict(max_new_tokens=s.max_new_tokens, eos_token_id=sorted(self.stop_ids), repetition_penalty=s.repeat_penalty,
                   pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids))
        cfg.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0) if s.sampling else cfg.update(do_sample=False)
        torch.manual_seed(seed)
        clock = Stamps()
        x = torch.tensor([ids], device=self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=GenerationConfig(**cfg), streamer=clock)
        total = time.perf_counter() - t0
        ttft = clock.times[1] - t0 if len(clock.times) > 1 else None
        return out[0, len(ids):].tolist(), ttft, total

    def generate_batch(self, prompts: list[list[int]], seed: int) -> list[tuple[list[int], None, float]]:
        """Greedy or sampled answers to several prompts at once (left-padded); per-answer timings are not measured,
        each answer carries the batch's wall time."""
        from transformers import GenerationConfig

        torch, s = self.torch, self.settings
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        cfg = dict(max_new_tokens=s.max_new_tokens, eos_token_id=sorted(self.stop_ids), repetition_penalty=s.repeat_penalty, pad_token_id=pad)
        cfg.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0) if s.sampling else cfg.update(do_sample=False)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=GenerationConfig(**cfg))
        total = time.perf_counter() - t0
        answers = []
        for row in out[:, width:].tolist():
            stop = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            answers.append((row[: stop + 1] if stop is not None else row, None, total))
        return answers

    def logits(self, ids: list[int]):
        torch = self.torch
        with torch.inference_mode():
            return self.model(torch.tensor([ids], device=self.device)).logits[0].float().cpu().numpy()

    def cuda_peak_mb(self) -> float | None:
        return round(self.torch.cuda.max_memory_allocated() / 2**20, 1) if self.device == "cuda" else None


class GGUFModel:
    """A GGUF file in llama-cpp-python, fed the Hugging Face tokenizer's ids; a second instance with logits_all
    scores perplexity (generation runs without per-position logits, as in serving)."""

    format = "gguf"

    def __init__(self, src: Source, settings: Settings, n_ctx: int):
        from transformers import AutoTokenizer

        from labcore.gguf import load_llama, verdict

        self.settings, self.src, self.load_llama = settings, src, load_llama
        self.tokenizer = AutoTokenizer.from_pretrained(src.tokenizer_dir)
        self.threads = _threads(settings)
        self.llm = load_llama(src.gguf_path, n_ctx=n_ctx, n_threads=self.threads, n_threads_batch=self.threads, seed=settings.seed)
        self.runtime = verdict()
        self.stop_ids = _stop_ids(self.tokenizer, [self.llm.token_eos()])
        self.dtype = src.quant or FILE_TYPES.get(str(self.llm.metadata.get("general.file_type")), "unknown")
        self.merged = None
        if self.llm.n_vocab() < len(self.tokenizer):
            raise RuntimeError(f"{src.gguf_path} has {self.llm.n_vocab()} tokens, the tokenizer in {src.tokenizer_dir} {len(self.tokenizer)}: not the same model")

    def generate(self, ids: list[int], seed: int) -> tuple[list[int], float | None, float]:
        s, llm = self.settings, self.llm
        llm.reset()  # no KV-cache reuse between prompts: every prompt is processed in full, as in PyTorch
        llm.set_seed(seed)
        kw = dict(temp=s.temperature, top_p=s.top_p, top_k=0, min_p=0.0) if s.sampling else dict(temp=0.0)
        out, first = [], None
        t0 = time.perf_counter()
        for token in llm.generate(list(ids), repeat_penalty=s.repeat_penalty, reset=True, **kw):
            first = first or time.perf_counter()
            out.append(int(token))
            if token in self.stop_ids or len(out) >= s.max_new_tokens:
                break
        total = time.perf_counter() - t0
        return out, (first - t0) if first else None, total

    def start_scoring(self, n_ctx: int):
        """Swap the generation instance for one that keeps the logits of every position."""
        del self.llm
        self.llm = self.load_llama(self.src.gguf_path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=self.threads,
                                   n_threads_batch=self.threads, logits_all=True)

    def logits(self, ids: list[int]):
        self.llm.reset()
        self.llm.eval(list(ids))
        return self.llm.scores[: len(ids)]

    def tokenizer_agrees(self, text: str, ids: list[int]) -> bool:
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=True)) == list(ids)

    def cuda_peak_mb(self):
        return None


# ------------------------------------------------------------------------------------------------- the job
def answer_record(item: dict, prompt_ids: list[int], completion: list[int], ttft, total: float, tokenizer, stop_ids) -> dict:
    ended = metrics.ended_by_itself(completion, stop_ids)
    text = tokenizer.decode(completion[:-1] if ended else completion, skip_special_tokens=False).strip()
    rec = {"set": item["set"], "id": item["id"], "prompt": item["messages"][-1]["content"], "answer": text,
           "prompt_tokens": len(prompt_ids), "completion_tokens": len(completion), "ended_by_itself": ended,
           "ttft_s": round(ttft, 4) if ttft is not None else None, "e2e_s": round(total, 3),
           "decode_tps": round((len(completion) - 1) / (total - ttft), 2) if ttft is not None and len(completion) > 1 and total > ttft else None,
           "leaks": metrics.leaks(text), "coverage": None, "concepts_found": None, "rouge_l": None}
    if "reference" in item:
        rec["coverage"], rec["concepts_found"] = metrics.concept_coverage(item.get("key_concepts") or [], text)
        rec["rouge_l"] = round(metrics.rouge_l(text, item["reference"]), 4)
        rec["reference"] = item["reference"]
        rec["key_concepts"] = item.get("key_concepts")
    return rec


def batch_size(model, settings: Settings) -> int:
    if not hasattr(model, "generate_batch"):
        return 1
    return settings.batch_size or (64 if getattr(model, "device", "cpu") == "cuda" else 1)


def generate_all(model, items: list[dict], settings: Settings, tag: str) -> list[dict]:
    """Answer every item, one prompt at a time, or in length-sorted batches where ``batch_size`` > 1; answers keep
    the items' order."""
    prompts = [list(model.tokenizer.apply_chat_template(i["messages"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for i in items]
    size = batch_size(model, settings)
    order = sorted(range(len(items)), key=lambda k: len(prompts[k])) if size > 1 else list(range(len(items)))
    answers: list[dict | None] = [None] * len(items)
    for start in range(0, len(order), size):
        chunk = order[start: start + size]
        if size > 1:
            outs = model.generate_batch([prompts[k] for k in chunk], settings.seed + start)
        else:
            outs = [model.generate(prompts[chunk[0]], settings.seed + chunk[0])]
        for k, (completion, ttft, total) in zip(chunk, outs):
            rec = answers[k] = answer_record(items[k], prompts[k], completion, ttft, total, model.tokenizer, model.stop_ids)
            cov = f", coverage {rec['coverage']:.2f}" if rec["coverage"] is not None else ""
            print(f"{tag} {start + len(chunk)}/{len(items)} {items[k]['id']}: {rec['completion_tokens']} tokens in {total:.1f} s{cov}", flush=True)
    return answers


def perplexity_rows(tokenizer, settings: Settings) -> list[tuple[str, list[int], list[int]]]:
    from evaluation.prompts import spread, with_notes
    from training.chat_templates import training_template
    from training.dataset_utils import load_conversations, tokenize_conversations

    rows = load_conversations(settings.test_file)
    rows = [{**rows[i], "messages": with_notes(rows[i]["messages"], settings.notes)} for i in spread(len(rows), settings.ppl_items)]
    data, _ = tokenize_conversations(rows, tokenizer, training_template(tokenizer), settings.max_length, "truncate")
    return [(r.get("id", str(i)), d["input_ids"], d["assistant_masks"]) for i, (r, d) in enumerate(zip(rows, data))]


def run_job(src: Source, settings: Settings, items: list[dict], position: str = "1/1") -> dict:
    from training.callbacks.logging_callback import PeakRSS

    tag = f"[{position} {src.label}]"
    rss = PeakRSS(interval=0.05).start()
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    result = {"status": "running", "source": {**src.__dict__, **provenance(src)}, "threads": _threads(settings)}
    memory = {"rss_before_load_mb": mb(rss.sample())}
    rss.reset()

    t = time.perf_counter()
    if src.format == "gguf":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src.tokenizer_dir)
        longest = max(len(tok.apply_chat_template(i["messages"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]) for i in items)
        model = GGUFModel(src, settings, n_ctx=longest + settings.max_new_tokens + 8)
        result["gguf_runtime"] = model.runtime
        result["source"]["quant"] = model.dtype
    else:
        model = TorchModel(src, settings)
    result.update(load_seconds=round(time.perf_counter() - t, 2), device=getattr(model, "device", "cpu"), dtype=model.dtype,
                  merged_adapter=model.merged, stop_ids=sorted(model.stop_ids))
    memory["peak_rss_load_mb"] = mb(rss.peak)
    print(f"{tag} loaded in {result['load_seconds']} s ({mb(rss.peak)} MB RSS)", flush=True)

    t = time.perf_counter()
    answers = generate_all(model, items, settings, tag)
    result["generation_batch_size"] = batch_size(model, settings)
    result["generate_seconds"] = round(time.perf_counter() - t, 2)
    memory["peak_rss_generate_mb"] = mb(rss.peak)

    rss.reset()
    t = time.perf_counter()
    rows = perplexity_rows(model.tokenizer, settings)
    if isinstance(model, GGUFModel):
        model.start_scoring(max(len(ids) for _, ids, _ in rows))
    total_nll, count, per_item = 0.0, 0, []
    for k, (item_id, ids, mask) in enumerate(rows, start=1):
        nll, n = metrics.masked_nll(model.logits(ids), ids, mask)
        total_nll, count = total_nll + nll, count + n
        per_item.append({"id": item_id, "nll": round(nll, 4), "tokens": n})
        if k % 25 == 0 or k == len(rows):
            print(f"{tag} perplexity {k}/{len(rows)}: running {metrics.perplexity(total_nll, count):.3f}", flush=True)
    ppl = {"loss": total_nll / count if count else None, "perplexity": metrics.perplexity(total_nll, count), "tokens": count,
           "items": len(rows), "max_length": settings.max_length, "seconds": round(time.perf_counter() - t, 2), "per_item": per_item}
    if isinstance(model, GGUFModel) and rows:
        text = model.tokenizer.decode(rows[0][1], skip_special_tokens=False)
        ppl["gguf_tokenizer_agrees"] = model.tokenizer_agrees(text, rows[0][1])
    memory["peak_rss_perplexity_mb"] = mb(rss.peak)
    rss.stop()
    memory["peak_rss_mb"] = max(memory["peak_rss_load_mb"], memory["peak_rss_generate_mb"])
    memory["model_rss_mb"] = round(memory["peak_rss_mb"] - memory["rss_before_load_mb"], 1)
    memory["cuda_peak_mb"] = model.cuda_peak_mb()
    result.update(status="completed", memory=memory, perplexity=ppl, summary=summarize_answers(answers), answers=answers)
    return result


def main(argv: list[str]) -> int:
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    src, settings = Source(**job["source"]), Settings(**job["settings"])
    try:
        result = run_job(src, settings, job["items"], job.get("position", "1/1"))
    except Exception as e:
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    write_json(out_path, result, indent=None)
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
