"""Side-by-side performance benchmark: training configurations and inference formats, against measured ceilings.

    python tools/benchmark.py                       # embedded model; GGUFs from gguf_export/<run>_*.gguf
    python tools/benchmark.py --quick --out /tmp/b  # tiny random model, seconds (what the test suite runs)
    python tools/benchmark.py --profile default     # where one training step's time goes (torch profiler)
    python tools/benchmark.py --contention          # only the thread-count section (minutes)

Every configuration runs in its own subprocess with the same data, threads and token counts; the first steps are
warm-up and excluded; figures are medians over --repeats (at least 3). The load average is recorded at the start and
end, since these machines are shared. Results: evaluation_results/benchmark.json (with a top-level "summary"),
benchmark.md and benchmark.png.

Training (LoRA unless named), all through training.run.build_model and TRL's fused LM head as in the trainer:
naive = SFTTrainer's defaults (fp32, padded batches, SDPA with a mask, activation checkpointing on, TRL's loss head);
default = the training scripts' configuration (padding-free batches with per-conversation attention, no activation
checkpointing, on CPU the one-pass loss head of training/lm_head.py, bf16 where the CPU/GPU has it); lora_ckpt =
default plus activation checkpointing; qlora = the QLoRA scripts' configuration (4-bit NF4 base, activation
checkpointing on); dropout_005 = default with the original's LoRA dropout 0.05 (what its random masks cost; the
scripts use 0). naive keeps the scripts' LoRA recipe, so every LoRA row trains the same update.
Useful tokens are the loss-carrying (assistant) tokens; padding efficiency = real tokens / tokens in the batch.
Inference: PyTorch generate (fp32, bf16) vs llama-cpp-python F16, Q8_0, Q4_K_M (flash attention on, as Iris loads
them; Q4_K_M once more with it off), each generating a fixed number of tokens (end-of-turn ignored) after a fixed
prompt, greedy; decode tokens/s = (tokens - 1) / (time of the last token - time of the first). Ceilings: memory read
bandwidth and GEMM FLOP/s (fp32, bf16) at the model's shapes; decode is compared with bandwidth / bytes per token,
LoRA training with GEMM FLOP/s / (4 x params).
Contention (threads): the GGUF (the run's Q4_K_M; --gguf) loaded once with Iris's default threads (the rule in
labcore/gguf.py, re-applied before each generation as Iris does) and once per fixed count 1..physical cores,
idle, beside one busy loop (another process at equal priority) and beside one busy loop per core; settings
interleaved, the order rotated each repeat. Each condition records the load average and the CPU other processes
used (labcore.gguf's monitor): an idle or one-loop condition that finds more than 0.3 CPU of outside load waits
15 s and looks again before measuring, at most 8 times (not in --quick), and the report says so. Per setting: medians
of prompt and decode tokens/s and their ratio to the best fixed count; a collapsed setting's generation stops after
8 tokens once it has decoded for 10 s. --contention writes benchmark_contention.json/.md instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RUN = "smollm2-135m-lora-exam"

from labcore.threads import physical_cores  # noqa: E402  (the thread rule's core count; stdlib only)


def median(xs):
    return statistics.median(xs) if xs else None


def pctl(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else None


# ------------------------------------------------------------------------------------------------ workers
def worker_ceilings(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    n = (1 << 28) if not args.quick else (1 << 22)  # 1 GiB of fp32 (16 MiB in quick mode)
    x = torch.ones(n, dtype=torch.float32)
    times = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    bandwidth = n * 4 / median(times[1:])
    shapes = [(512, 576, 1536), (512, 1536, 576), (512, 576, 576)] if not args.quick else [(64, 64, 64)]
    gemm = {}
    for dtype in ("float32", "bfloat16"):
        rates = []
        for m, k, nn in shapes:
            a = torch.randn(m, k, dtype=getattr(torch, dtype))
            b = torch.randn(k, nn, dtype=getattr(torch, dtype))
            ts = []
            for _ in range(args.repeats + 2):
                t = time.perf_counter()
                for _ in range(5):
                    a @ b
                ts.append((time.perf_counter() - t) / 5)
            rates.append(2 * m * k * nn / median(ts[2:]))
        gemm[dtype] = median(rates)
    return {"bandwidth_bytes_per_s": bandwidth, "gemm_flops_per_s": gemm, "shapes": shapes, "buffer_bytes": n * 4}


CONFIGS = {
    # name: (TrainConfig overrides, attention implementation or None for the project's default)
    "naive": (dict(padding_free=False, precision="fp32", activation_checkpointing="on", lm_head="trl"), "sdpa"),  # SFTTrainer's defaults
    "default": ({}, None),  # the training scripts' configuration
    "lora_ckpt": (dict(activation_checkpointing="on"), None),  # the default plus activation checkpointing, QLoRA's memory setting
    "qlora": (dict(load_in_4bit=True), None),
    "dropout_005": (dict(lora_dropout=0.05), None),  # the default with the original's LoRA dropout
}


def training_setup(args):
    """One training configuration as the trainer builds it: training.run.build_model, and TRL's fused LM head with
    the outputs SFTTrainer asks of it, then the configuration's loss head. Returns (cfg, precision, lm_head, model,
    step, batches); step(batch) runs one optimizer step and returns its loss."""
    import torch
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from training import dataset_utils as du
    from training.chat_templates import training_template
    from training.config import TrainConfig
    from training.run import apply_lm_head, build_model, resolve_precision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides, attention = CONFIGS[args.config]
    attention = getattr(args, "attention", None) or attention
    if getattr(args, "lm_head", None):
        overrides = {**overrides, "lm_head": args.lm_head}
    cfg = TrainConfig(model=args.model, **overrides)
    precision = resolve_precision(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = build_model(cfg, args.model_path, dtype, precision, "cpu", attn_implementation=attention)
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    lm_head = apply_lm_head(cfg, model, "cpu")
    model.train()
    tok = AutoTokenizer.from_pretrained(args.model_path)
    rows = du.sample(du.load_conversations(args.data), args.batch * (args.steps + args.warmup), seed=0)
    data, _ = du.tokenize_conversations(rows, tok, training_template(tok), args.max_length, "truncate")
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tok.get_vocab() else 0
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=cfg.uses_padding_free("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batches = []
    for i in range(args.steps + args.warmup):
        batch_rows = data[i * args.batch:(i + 1) * args.batch]
        examples = [{"input_ids": r["input_ids"], "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])]} for r in batch_rows]
        batch = {k: v for k, v in collate(examples).items() if k in ("input_ids", "labels", "attention_mask", "position_ids")}
        batches.append((batch, sum(len(r["input_ids"]) for r in batch_rows)))

    def step(batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(**batch, use_cache=False, fused_lm_head=True)
            loss = -out.log_probs.sum() / out.label_mask.sum().clamp(min=1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return cfg, precision, lm_head, model, step, batches


def worker_train(args) -> dict:
    """K optimizer steps of one training configuration on the same conversations; per-step times after warm-up."""
    from training.callbacks.logging_callback import PeakRSS

    rss = PeakRSS().start()
    cfg, precision, lm_head, model, step, batches = training_setup(args)
    times, useful, real, total, losses = [], 0, 0, 0, []
    for i, (batch, n_real) in enumerate(batches):
        t = time.perf_counter()
        losses.append(step(batch))
        dt = time.perf_counter() - t
        if i >= args.warmup:
            times.append(dt)
            useful += int((batch["labels"][:, 1:] != -100).sum())
            real += n_real
            total += batch["input_ids"].numel()
    peak = rss.stop()
    params = sum(p.numel() for p in model.parameters())
    return {
        "config": args.config, "precision": precision, "padding_free": cfg.uses_padding_free("cpu"), "load_in_4bit": cfg.load_in_4bit,
        "activation_checkpointing": cfg.checkpointing, "attention": model.get_base_model().config._attn_implementation, "lm_head": lm_head,
        "lora_dropout": cfg.lora_dropout,
        "steps": args.steps, "warmup_steps": args.warmup, "batch": args.batch,
        "step_seconds": times, "step_p50_s": median(times), "step_p90_s": pctl(times, 0.9),
        "useful_tokens_per_s": useful / sum(times), "tokens_per_s": real / sum(times),
        "padding_efficiency": real / total, "peak_rss_mb": round(peak / 2**20, 1), "parameters": params,
        "loss_after_k_steps": losses[-1], "losses": losses,
    }


def profile_training(args) -> None:
    """Where one training step of a configuration spends its time: torch.profiler's top operators, after a warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    args.steps, args.warmup = 1, 1
    *_, step, batches = training_setup(args)
    step(batches[0][0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[1][0])
    print(f"[benchmark] profile of one {args.config} step ({batches[1][1]} tokens, batch {args.batch}, {args.threads} threads"
          f"{', attention ' + args.attention if args.attention else ''}{', lm_head ' + args.lm_head if args.lm_head else ''}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def worker_infer(args) -> dict:
    """Prompt tokens/s, time to first token and decode tokens/s for a fixed prompt and a fixed number of new tokens."""
    from training.callbacks.logging_callback import PeakRSS

    rss = PeakRSS().start()
    prompt_text = "Explain the difference between a feature pipeline, a training pipeline and an inference pipeline, with an example."
    n_new = args.new_tokens
    runs = []
    if args.backend == "torch":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evaluation.worker import Stamps

        torch.set_num_threads(args.threads)
        tok = AutoTokenizer.from_pretrained(args.model_path)
        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=getattr(torch, args.dtype)).eval()
        ids = tok.apply_chat_template([{"role": "user", "content": prompt_text}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        for _ in range(args.repeats + 1):
            stamps = Stamps()
            with torch.no_grad():
                t = time.perf_counter()
                out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=tok.eos_token_id, streamer=stamps)
            assert out.shape[1] - ids.shape[1] == n_new
            # stamps[0]: the prompt is handed over; stamps[1]: first new token; stamps[-1]: last new token
            ttft = stamps.times[1] - t
            runs.append({"ttft_s": ttft, "prompt_tokens_per_s": ids.shape[1] / ttft,
                         "decode_tokens_per_s": (n_new - 1) / (stamps.times[-1] - stamps.times[1])})
        prompt_len = ids.shape[1]
    else:
        from labcore.gguf import load_llama

        llm = load_llama(args.model_path, n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, flash_attn=args.flash_attn == "1")
        ids = llm.tokenize(f"<|im_start|>user\n{prompt_text}<|im_end|>\n<|im_start|>assistant\n".encode(), add_bos=False, special=True)
        size = Path(args.model_path).stat().st_size
        for _ in range(args.repeats + 1):
            llm.reset()
            stamps = []
            t = time.perf_counter()
            # generate() evaluates the prompt, then yields each token as it is sampled: the same stamps as the streamer
            # above (a token is yielded before it is fed back, as generate() in transformers returns it unfed)
            for _tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
                stamps.append(time.perf_counter())
                if len(stamps) == n_new:
                    break
            ttft = stamps[0] - t
            runs.append({"ttft_s": ttft, "prompt_tokens_per_s": len(ids) / ttft, "decode_tokens_per_s": (n_new - 1) / (stamps[-1] - stamps[0])})
        prompt_len = len(ids)
    runs = runs[1:]  # the first repeat is warm-up
    peak = rss.stop()
    return {
        "backend": args.backend, "format": args.label, "prompt_tokens": prompt_len, "new_tokens": n_new, "repeats": len(runs),
        "ttft_s": median([r["ttft_s"] for r in runs]), "prompt_tokens_per_s": median([r["prompt_tokens_per_s"] for r in runs]),
        "decode_tokens_per_s": median([r["decode_tokens_per_s"] for r in runs]), "runs": runs,
        "weight_bytes": size, "peak_rss_mb": round(peak / 2**20, 1),
        **({"flash_attn": args.flash_attn == "1", "weight_types_mb": gguf_weight_types(args.model_path)} if args.backend == "gguf" else {}),
    }


# another process at equal priority that keeps one CPU busy, and ends when the benchmark does, however it ends
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(100_000):\n        pass\n"
OUTSIDE_LOAD = 0.3  # CPUs of load beyond our own busy loops that make a condition be measured again


def stop(procs) -> None:
    for p in procs:
        p.kill()
        p.wait()


def worker_contention(args) -> dict:
    """Iris's default thread count against every fixed count, idle and beside busy loops (see the module docstring)."""
    from labcore import gguf
    from labcore import threads as rule
    from labcore.hardware import cpu_model

    cores = rule.physical_cores()
    n_new, settle, wait, tries = args.new_tokens, (0.3 if args.quick else 1.5), 15.0, (1 if args.quick else 8)
    llms = {"default": gguf.load_llama(args.model_path, n_ctx=1024)}
    llms.update({str(k): gguf.load_llama(args.model_path, n_ctx=1024, n_threads=k, n_threads_batch=k) for k in range(1, cores + 1)})
    question = "Explain the difference between a feature pipeline, a training pipeline and an inference pipeline, with an example."
    notes = " ".join(f"Note {i}: a feature pipeline writes features, a training pipeline reads them and writes a model, and an "
                     "inference pipeline reads both." for i in range(1, 6))  # a prompt long enough to time (~150 tokens)
    ids = llms["default"].tokenize(f"<|im_start|>user\n{notes}\n{question}<|im_end|>\n<|im_start|>assistant\n".encode(), add_bos=False, special=True)

    def generate(llm) -> dict:
        with gguf.generation_threads(llm):  # what iris.models.ModelPool.use does around each generation
            llm.reset()
            stamps, t = [], time.perf_counter()
            for _tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
                stamps.append(time.perf_counter())
                # a collapsed setting (well under a token per 0.1 s) stops after 8 tokens and 10 s of decoding
                if len(stamps) == n_new or (len(stamps) >= min(8, n_new) and stamps[-1] - stamps[0] > 10.0):
                    break
            return {"threads": llm.n_threads, "threads_batch": llm.n_threads_batch, "new_tokens": len(stamps),
                    "prompt_tokens_per_s": len(ids) / (stamps[0] - t), "decode_tokens_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])}

    for llm in llms.values():  # warm-up
        generate(llm)
    conditions = {}
    for name, loops in (("idle", 0), ("one_busy_loop", 1), ("all_cores_busy", cores)):
        attempts = []
        procs = []
        try:
            for attempt in range(1, tries + 1):  # outside load: wait and look again, before measuring
                procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(loops)]
                time.sleep(settle)
                others_before = rule.monitor().others_busy()
                outside = None if others_before is None else max(0.0, others_before - loops)
                attempts.append({"others_busy_before": others_before, "outside_load": outside, "load_average": os.getloadavg()})
                if outside is None or outside <= OUTSIDE_LOAD or loops >= cores or attempt == tries:
                    break
                print(f"[benchmark] contention {name}: {outside:.2f} CPU of outside load, looking again in {wait:.0f} s", flush=True)
                stop(procs)
                time.sleep(wait)
            print(f"[benchmark] contention {name}: other processes use {others_before if others_before is None else round(others_before, 2)} CPU", flush=True)
            load_start = os.getloadavg()
            runs = {s: [] for s in llms}
            order = list(llms)
            for r in range(args.repeats):
                for s in order[r % len(order):] + order[:r % len(order)]:
                    runs[s].append(generate(llms[s]))
            load_end = os.getloadavg()
        finally:
            stop(procs)
        rows = {}
        for s, rs in runs.items():
            threads = sorted({r["threads"] for r in rs})
            rows[s] = {"threads": threads if len(threads) > 1 else threads[0], "runs": rs,
                       "decode_tokens_per_s": median([r["decode_tokens_per_s"] for r in rs]),
                       "prompt_tokens_per_s": median([r["prompt_tokens_per_s"] for r in rs])}
        fixed = [s for s in rows if s != "default"]
        best = max(fixed, key=lambda s: rows[s]["decode_tokens_per_s"])
        best_prompt = max(fixed, key=lambda s: rows[s]["prompt_tokens_per_s"])
        for r in rows.values():
            r["ratio_to_best"] = r["decode_tokens_per_s"] / rows[best]["decode_tokens_per_s"]
            r["prompt_ratio_to_best"] = r["prompt_tokens_per_s"] / rows[best_prompt]["prompt_tokens_per_s"]
        conditions[name] = {
            "busy_loops": loops, "attempts": len(attempts), "attempt_log": attempts, "outside_load": attempts[-1]["outside_load"],
            "others_busy_before": attempts[-1]["others_busy_before"], "load_average_start": load_start, "load_average_end": load_end,
            "best": best, "best_prompt": best_prompt, "default_vs_best": rows["default"]["ratio_to_best"],
            "default_vs_best_prompt": rows["default"]["prompt_ratio_to_best"], "rows": rows,
        }
    worst = min(c["default_vs_best"] for c in conditions.values())
    return {
        "model": str(args.model_path), "cpu_model": cpu_model(), "physical_cores": cores, "cpus": len(rule._cpu_ids()),
        "rule": f"threads = clamp(floor(cores - others_busy + {rule.THREAD_SLACK}), 1, cores), before each generation",
        "iris_n_threads": os.environ.get("IRIS_N_THREADS"), "prompt_tokens": len(ids), "new_tokens": n_new, "repeats": args.repeats,
        "settings": list(llms), "conditions": conditions, "default_vs_best_min": worst, "within_20_percent": worst >= 0.8,
    }


def contention_markdown(c: dict) -> str:
    fixed = [s for s in c["settings"] if s != "default"]
    head = "| condition | load avg (1 min) start, end | other CPU use | default: threads | " + " | ".join(
        f"{s} thread{'s' if s != '1' else ''}" for s in fixed) + " | default | default / best |"
    lines = [f"Threads under contention: {c['cpu_model']}, {c['physical_cores']} physical cores, {c['prompt_tokens']}-token prompt, "
             f"{c['new_tokens']} new tokens, medians of {c['repeats']}; default = {c['rule']}. Decode tokens/s (prompt tokens/s):",
             "", head, "| --- | --- | ---: | --- |" + " ---: |" * (len(fixed) + 2)]
    for name, cond in c["conditions"].items():
        d = cond["rows"]["default"]
        cells = [f"{cond['rows'][s]['decode_tokens_per_s']:.1f} ({cond['rows'][s]['prompt_tokens_per_s']:.0f})" for s in fixed]
        others = "n/a" if cond["others_busy_before"] is None else f"{cond['others_busy_before']:.2f} CPU"
        again = f", after {cond['attempts'] - 1} waits for outside load" if cond["attempts"] > 1 else ""
        if (cond["outside_load"] or 0) > OUTSIDE_LOAD and cond["busy_loops"] < c["physical_cores"]:
            again += f", NOT as intended: {cond['outside_load']:.2f} CPU of outside load"
        lines.append(f"| {name} ({cond['busy_loops']} busy loop{'s' if cond['busy_loops'] != 1 else ''}{again}) | "
                     f"{cond['load_average_start'][0]:.2f}, {cond['load_average_end'][0]:.2f} | {others} | {d['threads']} | " + " | ".join(cells)
                     + f" | {d['decode_tokens_per_s']:.1f} ({d['prompt_tokens_per_s']:.0f}) | {cond['default_vs_best']:.2f} ({cond['default_vs_best_prompt']:.2f}) |")
    lines += ["", f"Default within 20% of the best fixed count in every condition (decode): {c['within_20_percent']} "
              f"(worst ratio {c['default_vs_best_min']:.2f}).", ""]
    return "\n".join(lines)


def gguf_weight_types(path) -> dict[str, float]:
    """MB of weights per storage type: a "Q4_K_M" file of a model whose rows are not a multiple of 256 wide (SmolLM2:
    576) holds mostly Q5_0/Q8_0 fallbacks, which is what its decode speed measures."""
    from gguf import GGUFReader

    sizes: dict[str, float] = {}
    for t in GGUFReader(path).tensors:
        sizes[t.tensor_type.name] = sizes.get(t.tensor_type.name, 0.0) + int(t.n_bytes) / 1e6
    return {k: round(v, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])}


# ------------------------------------------------------------------------------------------------ driver
def spawn(kind: str, args, **extra) -> dict:
    """One configuration in a fresh interpreter: its memory and warm-up are its own."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", kind, "--worker_out", out, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    if args.quick:
        cmd.append("--quick")
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    label = extra.get("config") or extra.get("label") or kind
    print(f"[benchmark] {kind}: {label} ...", flush=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: benchmark worker {kind} {label} failed (exit {r.returncode}):\n" + "\n".join(r.stderr.strip().splitlines()[-8:]))
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def quick_fixture(tmp: Path) -> tuple[str, dict[str, Path]]:
    """A tiny random Llama with the embedded tokenizer, and its GGUFs, for the quick mode."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tools.export_to_gguf import convert_f16, quantize
    from training.models import materialize_embedded

    tok = AutoTokenizer.from_pretrained(materialize_embedded())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model_dir = tmp / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ggufs = {"f16": tmp / "tiny_f16.gguf", "q8_0": tmp / "tiny_q8_0.gguf", "q4_k_m": tmp / "tiny_q4_k_m.gguf"}
    convert_f16(model_dir, ggufs["f16"])
    quantize(ggufs["f16"], ggufs["q8_0"], "q8_0")
    quantize(ggufs["f16"], ggufs["q4_k_m"], "q4_k_m")
    return str(model_dir), ggufs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny random model and few steps: checks the machinery in seconds")
    ap.add_argument("--run", default=RUN, help="run whose GGUF exports are benchmarked (gguf_export/<run>_*.gguf)")
    ap.add_argument("--threads", type=int, default=physical_cores(), help="threads of every configuration but the contention "
                    "section's (default: labcore.threads.physical_cores, the thread rule's count on an idle machine)")
    ap.add_argument("--repeats", type=int, default=3, help="measured repeats per inference configuration (>= 3)")
    ap.add_argument("--steps", type=int, default=6, help="measured training steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="training steps excluded as warm-up")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--profile", choices=list(CONFIGS), help="instead of the benchmark: profile one training step of this configuration")
    ap.add_argument("--attention", help="with --profile: another attention implementation (e.g. sdpa, the library's masked path)")
    ap.add_argument("--lm_head", choices=["onepass", "trl"], help="with --profile: another loss head (trl: TRL's fused head, SFTTrainer's default)")
    ap.add_argument("--contention", action="store_true", help="only the thread-count section: benchmark_contention.json/.md")
    ap.add_argument("--gguf", type=Path, help="GGUF for the contention section (default: the run's Q4_K_M, else the "
                    "embedded model; --quick: the tiny random model's)")
    ap.add_argument("--out", type=Path, default=REPO / "evaluation_results", help="folder for benchmark.json/.md/.png")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker_out", help=argparse.SUPPRESS)
    for hidden in ("config", "model", "model_path", "data", "backend", "dtype", "label", "flash_attn"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.steps, args.warmup, args.batch, args.max_length, args.new_tokens = map(int, (args.steps, args.warmup, args.batch, args.max_length, args.new_tokens))
        fn = {"ceilings": worker_ceilings, "train": worker_train, "infer": worker_infer, "contention": worker_contention}[args.worker]
        Path(args.worker_out).write_text(json.dumps(fn(args)))
        return 0
    if args.profile:
        from training.models import materialize_embedded

        args.config, args.model = args.profile, "smollm2-135m"
        args.model_path, args.data = str(materialize_embedded()), REPO / "data" / "id2223_exam_prep_full.jsonl"
        profile_training(args)
        return 0
    if args.repeats < 3:
        sys.exit("error: --repeats must be at least 3 (medians of at least 3 repeats)")

    from labcore.io import write_json
    from labcore.records import record_envelope

    if args.contention:
        return contention_only(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.quick:
        args.steps, args.new_tokens, args.max_length = 2, 8, 256  # 256: every conversation keeps assistant tokens after the system prompt
        model_path, ggufs = quick_fixture(tmp)
    else:
        from training.models import materialize_embedded

        model_path = str(materialize_embedded())
        ggufs = {q: REPO / "gguf_export" / f"{args.run}_{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
        missing = [str(p) for p in ggufs.values() if not p.exists()]
        if missing:
            sys.exit(f"error: missing {', '.join(missing)}: run python tools/export_to_gguf.py {args.run} first (the demo, python tools/demo.py, exports smollm2-135m-lora-exam-demo: pass --run smollm2-135m-lora-exam-demo)")
    data = REPO / "data" / "id2223_exam_prep_full.jsonl"
    report = record_envelope("benchmark", "benchmark", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("worker")})
    report["model"] = model_path
    report["ceilings"] = spawn("ceilings", args)
    common = dict(model=model_path, model_path=model_path, data=data, steps=args.steps, warmup=args.warmup, batch=args.batch, max_length=args.max_length)
    report["training"] = {c: spawn("train", args, config=c, **common) for c in CONFIGS}
    infer = dict(new_tokens=args.new_tokens)
    report["inference"] = {
        "torch_fp32": spawn("infer", args, backend="torch", dtype="float32", model_path=model_path, label="torch_fp32", **infer),
        "torch_bf16": spawn("infer", args, backend="torch", dtype="bfloat16", model_path=model_path, label="torch_bf16", **infer),
        **{f"gguf_{q}": spawn("infer", args, backend="gguf", model_path=p, label=f"gguf_{q}", flash_attn=1, **infer) for q, p in ggufs.items()},
        # llama-cpp-python's own default (labcore.gguf.load_llama turns flash attention on)
        "gguf_q4_k_m_no_flash_attn": spawn("infer", args, backend="gguf", model_path=ggufs["q4_k_m"], label="gguf_q4_k_m_no_flash_attn", flash_attn=0, **infer),
    }
    report["contention"] = spawn("contention", args, model_path=args.gguf or ggufs["q4_k_m"], label="contention", **infer)
    report["load_average_end"] = os.getloadavg()
    fill_fractions(report)
    report["status"] = "completed"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "benchmark.json", report)
    (args.out / "benchmark.md").write_text(markdown(report))
    plot(report, args.out / "benchmark.png")
    print(markdown(report))
    return 0


def contention_only(args) -> int:
    from labcore.gguf import embedded_gguf
    from labcore.io import write_json
    from labcore.records import record_envelope

    gguf = args.gguf or REPO / "gguf_export" / f"{args.run}_q4_k_m.gguf"
    if args.quick and not args.gguf:
        gguf, args.new_tokens = quick_fixture(Path(tempfile.mkdtemp(prefix="bench-")))[1]["q4_k_m"], 8
    elif not gguf.exists():
        gguf = embedded_gguf()
        print(f"[benchmark] no {args.run}_q4_k_m.gguf: the contention section runs on the embedded model {gguf.name}", flush=True)
    report = record_envelope("benchmark", "benchmark_contention", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("worker")})
    report["contention"] = spawn("contention", args, model_path=gguf, label="contention", new_tokens=args.new_tokens)
    report["load_average_end"] = os.getloadavg()
    report["summary"] = {"contention_default_vs_best_min": report["contention"]["default_vs_best_min"]}
    report["status"] = "completed"
    write_json(args.out / "benchmark_contention.json", report)
    md = f"# Benchmark: threads under contention ({Path(gguf).name})\n\n" + contention_markdown(report["contention"])
    (args.out / "benchmark_contention.md").write_text(md)
    print(md)
    return 0


def fill_fractions(report: dict) -> None:
    c, t, inf = report["ceilings"], report["training"], report["inference"]
    params = t["default"]["parameters"]
    for cfg in t.values():
        cfg["fraction_of_fp32_ceiling"] = cfg["tokens_per_s"] / (c["gemm_flops_per_s"]["float32"] / (4 * params))
        cfg["fraction_of_bf16_ceiling"] = cfg["tokens_per_s"] / (c["gemm_flops_per_s"]["bfloat16"] / (4 * params))
    for r in inf.values():
        r["decode_ceiling_tokens_per_s"] = c["bandwidth_bytes_per_s"] / r["weight_bytes"]
        r["fraction_of_bandwidth"] = r["decode_tokens_per_s"] / r["decode_ceiling_tokens_per_s"]
    report["summary"] = {
        "train_speedup_vs_naive": t["default"]["useful_tokens_per_s"] / t["naive"]["useful_tokens_per_s"],
        "train_fraction_of_bf16_ceiling": t["default"]["fraction_of_bf16_ceiling"],
        "qlora_rss_ratio": t["qlora"]["peak_rss_mb"] / t["default"]["peak_rss_mb"],
        "q4km_decode_speedup_vs_torch_fp32": inf["gguf_q4_k_m"]["decode_tokens_per_s"] / inf["torch_fp32"]["decode_tokens_per_s"],
        "q4km_decode_fraction_of_bandwidth": inf["gguf_q4_k_m"]["fraction_of_bandwidth"],
        "contention_default_vs_best_min": report["contention"]["default_vs_best_min"],
    }
    report["details"] = {
        "qlora_rss_ratio_vs_lora_with_checkpointing": t["qlora"]["peak_rss_mb"] / t["lora_ckpt"]["peak_rss_mb"],
        "checkpointing_rss_ratio": t["lora_ckpt"]["peak_rss_mb"] / t["default"]["peak_rss_mb"],
        "checkpointing_speed_ratio": t["lora_ckpt"]["useful_tokens_per_s"] / t["default"]["useful_tokens_per_s"],
        "dropout_005_speed_ratio": t["dropout_005"]["useful_tokens_per_s"] / t["default"]["useful_tokens_per_s"],
        "dropout_005_rss_ratio": t["dropout_005"]["peak_rss_mb"] / t["default"]["peak_rss_mb"],
        "train_fraction_of_fp32_ceiling": t["default"]["fraction_of_fp32_ceiling"],
        "flash_attn_decode_speedup": inf["gguf_q4_k_m"]["decode_tokens_per_s"] / inf["gguf_q4_k_m_no_flash_attn"]["decode_tokens_per_s"],
        "loss_after_k_spread": max(r["loss_after_k_steps"] for r in t.values()) - min(r["loss_after_k_steps"] for r in t.values()),
    }
    notes = report.setdefault("notes", [])
    if c["gemm_flops_per_s"]["bfloat16"] < c["gemm_flops_per_s"]["float32"]:
        notes.append("This CPU has no native bf16 (bf16 GEMM is emulated, slower than fp32), so training runs in fp32 and the "
                     "bf16-ceiling fraction exceeds 100%; the fp32-ceiling fraction is the meaningful one here.")


def markdown(report: dict) -> str:
    c, t, inf, s = report["ceilings"], report["training"], report["inference"], report["summary"]
    lines = [
        f"# Benchmark ({'quick, tiny model' if report['config']['quick'] else report['model']})",
        "",
        f"Threads {report['config']['threads']}, load average at start {report['load_average']}, at end {report['load_average_end']}. "
        f"Ceilings: read bandwidth {c['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, GEMM fp32 {c['gemm_flops_per_s']['float32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {c['gemm_flops_per_s']['bfloat16'] / 1e9:.0f} GFLOP/s.",
        "",
        "| training | precision | padding-free | attention | act. ckpt | LM head | LoRA dropout | useful tok/s | tok/s | padding eff. | step p50 s | step p90 s "
        "| peak RSS MB | loss after K | of fp32 ceiling | of bf16 ceiling |",
        "| --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in t.items():
        lines.append(f"| {name} | {r['precision']}{' + NF4' if r['load_in_4bit'] else ''} | {r['padding_free']} | {r['attention']} | {r['activation_checkpointing']} | {r['lm_head']} | {r['lora_dropout']} | "
                     f"{r['useful_tokens_per_s']:.1f} | {r['tokens_per_s']:.1f} | {r['padding_efficiency']:.2f} | {r['step_p50_s']:.2f} | {r['step_p90_s']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['loss_after_k_steps']:.3f} | {r['fraction_of_fp32_ceiling']:.1%} | {r['fraction_of_bf16_ceiling']:.1%} |")
    lines += ["", "| inference | prompt tok/s | decode tok/s | TTFT s | peak RSS MB | weights MB | of bandwidth ceiling | weight types (MB) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, r in inf.items():
        types = ", ".join(f"{k} {v:.0f}" for k, v in r.get("weight_types_mb", {}).items() if v >= 0.5)
        lines.append(f"| {name} | {r['prompt_tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.1f} | {r['ttft_s']:.3f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['weight_bytes'] / 2**20:.0f} | {r['fraction_of_bandwidth']:.1%} | {types} |")
    lines += ["", contention_markdown(report["contention"])]
    lines += ["", "Summary: " + ", ".join(f"`{k}` = {v:.3f}" for k, v in s.items()), ""]
    lines += [f"- {note}" for note in report.get("notes", [])] + [""]
    return "\n".join(lines)


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, inf = report["training"], report["inference"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.bar(list(t), [r["useful_tokens_per_s"] for r in t.values()], color="#4c72b0")
    a.set_title("training: useful (loss) tokens/s", fontsize=10)
    b.bar(list(inf), [r["decode_tokens_per_s"] for r in inf.values()], color="#55a868")
    b.set_title("inference: decode tokens/s", fontsize=10)
    b.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
