"""Side-by-side performance benchmark: training configurations and inference formats, against measured ceilings.

    python tools/benchmark.py                           # embedded model; GGUFs from gguf_export/<run>_*.gguf
    python tools/benchmark.py --quick --out_dir /tmp/b  # tiny random model, minutes (what the test suite runs)
    python tools/benchmark.py --profile default         # where one training step's time goes (torch profiler)
    python tools/benchmark.py --contention              # only the thread-count section (minutes)
    python tools/benchmark.py --help                    # every flag (the fields of BenchConfig)

Every configuration runs in its own subprocess (``benchmark.py --worker JOB.json``: the job is a dataclass below,
written as JSON and read back into the same dataclass) with the same data, threads and token counts; the first steps
are warm-up and excluded; figures are medians over --repeats (at least 3). The load average is recorded at the start
and end, since these machines are shared. Results: evaluation_results/benchmark.json (with a top-level "summary"),
benchmark.md and benchmark.png.

Training (LoRA unless named), all through training.run.build_model and TRL's fused LM head as in the trainer:
naive = SFTTrainer's defaults (fp32, padded batches, SDPA with a mask, activation checkpointing on, TRL's loss head);
default = the training scripts' configuration (padding-free batches with per-conversation attention, no activation
checkpointing, on CPU the one-pass loss head of training/lm_head.py, bf16 where the CPU/GPU has it); lora_ckpt =
default plus activation checkpointing; qlora = the QLoRA scripts' configuration (4-bit NF4 base, activation
checkpointing on); dropout_005 = default with the original's LoRA dropout 0.05 (what its random masks cost; the
scripts use 0). naive keeps the scripts' LoRA recipe, so naive, default and lora_ckpt (SAME_UPDATE) train the same
update and record the same losses up to rounding (details.same_update_loss_rel_spread; tests/test_benchmark.py).
Useful tokens are the loss-carrying (assistant) tokens; padding efficiency = real tokens / tokens in the batch.
Inference: PyTorch generate (fp32, bf16) vs llama-cpp-python F16, Q8_0, Q4_K_M (flash attention on, as Iris loads
them; Q4_K_M once more with it off), each generating a fixed number of tokens (end-of-turn ignored) after a fixed
prompt, greedy; decode tokens/s = (tokens - 1) / (time of the last token - time of the first). Ceilings: memory read
bandwidth and GEMM FLOP/s (fp32, bf16) at the model's shapes; decode is compared with bandwidth / bytes per token,
LoRA training with GEMM FLOP/s / (4 x params).
Threads: every configuration gets --threads, by default the thread rule's count once at the start
(labcore.threads.torch_threads), so that all of them compare on the same count.
Contention (threads): the GGUF (the run's Q4_K_M; --gguf) loaded once with Iris's default threads (the rule in
labcore/threads.py, re-applied before each generation as Iris does) and once per fixed count 1..physical cores,
idle, beside one busy loop (another process at equal priority) and beside one busy loop per core; settings
interleaved, the order rotated each repeat. Each condition records the load average and the CPU other processes
used (labcore.threads's monitor): an idle or one-loop condition that finds more than 0.3 CPU of outside load waits
15 s and looks again before measuring, at most 8 times (not in --quick), and the report says so. Per setting: medians
of prompt and decode tokens/s and their ratio to the best fixed count; a collapsed setting's generation stops after
8 tokens once it has decoded for 10 s. --contention writes benchmark_contention.json/.md instead.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RUN = "smollm2-135m-lora-exam"

from labcore.cli import count_or_all, parse  # noqa: E402  (stdlib only until parse runs)

CONFIGS = {
    # name: (TrainConfig overrides, attention implementation or None for the project's default)
    "naive": (dict(padding_free=False, precision="fp32", activation_checkpointing="on", lm_head="trl"), "sdpa"),  # SFTTrainer's defaults
    "default": ({}, None),  # the training scripts' configuration
    "lora_ckpt": (dict(activation_checkpointing="on"), None),  # the default plus activation checkpointing, QLoRA's memory setting
    "qlora": (dict(load_in_4bit=True), None),
    "dropout_005": (dict(lora_dropout=0.05), None),  # the default with the original's LoRA dropout
}
# Rows that train the same update (the scripts' LoRA recipe on the same unquantized base), computed differently:
# their losses must agree. qlora's base is 4-bit and dropout_005 draws random masks.
SAME_UPDATE = ("naive", "default", "lora_ckpt")


@dataclass
class BenchConfig:
    """The command line: every field is a flag (labcore.cli)."""

    quick: bool = field(default=False, metadata={"help": "tiny random model and its GGUFs, few steps and tokens, every configuration "
                                                 "in this process: checks the machinery in a minute (what the test suite runs)"})
    contention: bool = field(default=False, metadata={"help": "only the thread-count section: writes benchmark_contention.json/.md"})
    profile: str | None = field(default=None, metadata={"help": f"instead of the benchmark: torch.profiler's top operators for one training "
                                                        f"step of this configuration ({', '.join(CONFIGS)})"})
    attention: str | None = field(default=None, metadata={"help": "with --profile: another attention implementation (e.g. sdpa, the "
                                                           "library's masked path); unset: the configuration's"})
    lm_head: str | None = field(default=None, metadata={"help": "with --profile: another loss head, onepass or trl (TRL's fused head, "
                                                        "SFTTrainer's default); unset: the configuration's"})
    run: str = field(default=RUN, metadata={"help": "run whose GGUF exports are benchmarked (gguf_export/<run>_{f16,q8_0,q4_k_m}.gguf)"})
    gguf: str | None = field(default=None, metadata={"help": "GGUF for the contention section; unset: the run's Q4_K_M, else the embedded "
                                                     "model (--quick: the tiny model's)"})
    threads: int | None = field(default=None, metadata={"help": "threads of every training and inference configuration; unset: the thread "
                                                         "rule's count at the start (labcore.threads.torch_threads). The contention section "
                                                         "compares its own counts"})
    repeats: int = field(default=3, metadata={"help": "measured repeats per inference configuration and contention setting (at least 3: "
                                              "medians)"})
    steps: int | None = field(default=None, metadata={"help": "measured training steps per configuration; unset: 6 (--quick: 2)"})
    warmup: int = field(default=1, metadata={"help": "training steps run before the measured ones, left out of the timings"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "conversations per training step (TrainConfig's field)"})
    max_length: int | None = field(default=None, metadata={"help": "tokens per conversation under the chat template (TrainConfig's field); "
                                                           "unset: 512 (--quick: 256, where every conversation keeps assistant tokens after "
                                                           "the system prompt)"})
    new_tokens: int | None = field(default=None, metadata={"help": "tokens each inference configuration generates (exactly, greedy); unset: "
                                                           "64 (--quick: 8)"})
    out_dir: str = field(default=str(REPO / "evaluation_results"), metadata={"help": "folder for benchmark.json/.md/.png "
                                                                             "(--contention: benchmark_contention.json/.md)"})

    def __post_init__(self):
        if self.profile is not None and self.profile not in CONFIGS:
            raise ValueError(f"--profile {self.profile}: give one of {', '.join(CONFIGS)}")
        if (self.attention or self.lm_head) and not self.profile:
            raise ValueError("--attention and --lm_head go with --profile (the benchmark's rows fix their own)")
        if self.lm_head not in (None, "onepass", "trl"):
            raise ValueError(f"--lm_head {self.lm_head}: give onepass or trl")
        if self.profile and self.contention:
            raise ValueError("--profile and --contention are separate runs: give one")
        count_or_all("threads", self.threads, unset="the thread rule's count")
        for name in ("steps", "max_length", "new_tokens", "per_device_train_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} {value}: give a positive count")
        if self.warmup < 0:
            raise ValueError(f"--warmup {self.warmup}: give 0 or more steps")
        if self.repeats < 3:
            raise ValueError(f"--repeats {self.repeats}: give at least 3 (figures are medians of at least 3 repeats)")
        if self.gguf is not None and not Path(self.gguf).is_file():
            raise ValueError(f"--gguf {self.gguf}: no such file")

    def resolved(self) -> BenchConfig:
        """The unset counts filled in (--quick's smaller ones), and the thread count fixed once for every configuration."""
        from labcore.threads import torch_threads

        quick = self.quick
        return replace(self, threads=torch_threads(self.threads), steps=self.steps or (2 if quick else 6),
                       max_length=self.max_length or (256 if quick else 512), new_tokens=self.new_tokens or (8 if quick else 64))


# A worker's job, written as JSON and read back into the same dataclass (``spawn`` and ``run_worker``).
@dataclass
class Job:
    """Every worker's settings; on its own, the ceilings' job."""

    threads: int
    repeats: int
    quick: bool


@dataclass
class TrainJob(Job):
    config: str  # a CONFIGS row
    model_path: str
    data: str
    steps: int
    warmup: int
    per_device_train_batch_size: int
    max_length: int
    attention: str | None = None  # --profile's overrides of the row's own
    lm_head: str | None = None


@dataclass
class InferJob(Job):
    label: str
    backend: str  # torch | gguf
    model_path: str
    new_tokens: int
    dtype: str = "float32"  # torch
    flash_attn: bool = True  # gguf


@dataclass
class ContentionJob(Job):
    model_path: str
    new_tokens: int


def median(xs):
    return statistics.median(xs) if xs else None


def pctl(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else None


# ------------------------------------------------------------------------------------------------ workers
def worker_ceilings(job: Job) -> dict:
    import torch

    torch.set_num_threads(job.threads)
    n = (1 << 28) if not job.quick else (1 << 22)  # 1 GiB of fp32 (16 MiB in quick mode)
    x = torch.ones(n, dtype=torch.float32)
    times = []
    for _ in range(job.repeats + 1):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    bandwidth = n * 4 / median(times[1:])
    shapes = [(512, 576, 1536), (512, 1536, 576), (512, 576, 576)] if not job.quick else [(64, 64, 64)]
    gemm = {}
    for dtype in ("float32", "bfloat16"):
        rates = []
        for m, k, nn in shapes:
            a = torch.randn(m, k, dtype=getattr(torch, dtype))
            b = torch.randn(k, nn, dtype=getattr(torch, dtype))
            ts = []
            for _ in range(job.repeats + 2):
                t = time.perf_counter()
                for _ in range(5):
                    a @ b
                ts.append((time.perf_counter() - t) / 5)
            rates.append(2 * m * k * nn / median(ts[2:]))
        gemm[dtype] = median(rates)
    return {"bandwidth_bytes_per_s": bandwidth, "gemm_flops_per_s": gemm, "shapes": shapes, "buffer_bytes": n * 4}


def training_setup(job: TrainJob):
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

    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    overrides, attention = CONFIGS[job.config]
    if job.lm_head:
        overrides = {**overrides, "lm_head": job.lm_head}
    cfg = TrainConfig(model=job.model_path, max_length=job.max_length, per_device_train_batch_size=job.per_device_train_batch_size, **overrides)
    precision = resolve_precision(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model = build_model(cfg, job.model_path, dtype, precision, "cpu", attn_implementation=job.attention or attention)
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    lm_head = apply_lm_head(cfg, model, "cpu")
    model.train()
    tok = AutoTokenizer.from_pretrained(job.model_path)
    batch_size = cfg.per_device_train_batch_size
    rows = du.sample(du.load_conversations(job.data), batch_size * (job.steps + job.warmup), seed=0)
    data, cut = du.tokenize_conversations(rows, tok, training_template(tok), cfg.max_length, cfg.over_length)
    if len(data) < len(rows):
        raise SystemExit(f"error: {cut['dropped_no_assistant_tokens']} of {len(rows)} conversations keep no assistant token within "
                         f"--max_length {cfg.max_length}: give a longer one")
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tok.get_vocab() else 0
    collate = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=cfg.uses_padding_free("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batches = []
    for i in range(job.steps + job.warmup):
        batch_rows = data[i * batch_size:(i + 1) * batch_size]
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


def worker_train(job: TrainJob) -> dict:
    """K optimizer steps of one training configuration on the same conversations; per-step times after warm-up."""
    from training.callbacks.logging_callback import PeakRSS

    rss = PeakRSS().start()
    cfg, precision, lm_head, model, step, batches = training_setup(job)
    times, useful, real, total, losses = [], 0, 0, 0, []
    for i, (batch, n_real) in enumerate(batches):
        t = time.perf_counter()
        losses.append(step(batch))
        dt = time.perf_counter() - t
        if i >= job.warmup:
            times.append(dt)
            useful += int((batch["labels"][:, 1:] != -100).sum())
            real += n_real
            total += batch["input_ids"].numel()
    peak = rss.stop()
    params = sum(p.numel() for p in model.parameters())
    return {
        "config": job.config, "precision": precision, "padding_free": cfg.uses_padding_free("cpu"), "load_in_4bit": cfg.load_in_4bit,
        "activation_checkpointing": cfg.checkpointing, "attention": model.get_base_model().config._attn_implementation, "lm_head": lm_head,
        "lora_dropout": cfg.lora_dropout,
        "steps": job.steps, "warmup_steps": job.warmup, "batch": job.per_device_train_batch_size,
        "step_seconds": times, "step_p50_s": median(times), "step_p90_s": pctl(times, 0.9),
        "useful_tokens_per_s": useful / sum(times), "tokens_per_s": real / sum(times),
        "padding_efficiency": real / total, "peak_rss_mb": round(peak / 2**20, 1), "parameters": params,
        "loss_after_k_steps": losses[-1], "losses": losses,
    }


def profile_training(job: TrainJob) -> None:
    """Where one training step of a configuration spends its time: torch.profiler's top operators, after a warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    *_, step, batches = training_setup(replace(job, steps=1, warmup=1))
    step(batches[0][0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[1][0])
    print(f"[benchmark] profile of one {job.config} step ({batches[1][1]} tokens, batch {job.per_device_train_batch_size}, {job.threads} threads"
          f"{', attention ' + job.attention if job.attention else ''}{', lm_head ' + job.lm_head if job.lm_head else ''}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def worker_infer(job: InferJob) -> dict:
    """Prompt tokens/s, time to first token and decode tokens/s for a fixed prompt and a fixed number of new tokens."""
    from training.callbacks.logging_callback import PeakRSS

    rss = PeakRSS().start()
    prompt_text = "Explain the difference between a feature pipeline, a training pipeline and an inference pipeline, with an example."
    n_new = job.new_tokens
    runs = []
    if job.backend == "torch":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from evaluation.worker import Stamps

        torch.set_num_threads(job.threads)
        tok = AutoTokenizer.from_pretrained(job.model_path)
        model = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=getattr(torch, job.dtype)).eval()
        ids = tok.apply_chat_template([{"role": "user", "content": prompt_text}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        for _ in range(job.repeats + 1):
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

        llm = load_llama(job.model_path, n_ctx=1024, n_threads=job.threads, n_threads_batch=job.threads, flash_attn=job.flash_attn)
        ids = llm.tokenize(f"<|im_start|>user\n{prompt_text}<|im_end|>\n<|im_start|>assistant\n".encode(), add_bos=False, special=True)
        size = Path(job.model_path).stat().st_size
        for _ in range(job.repeats + 1):
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
        "backend": job.backend, "format": job.label, "prompt_tokens": prompt_len, "new_tokens": n_new, "repeats": len(runs),
        "ttft_s": median([r["ttft_s"] for r in runs]), "prompt_tokens_per_s": median([r["prompt_tokens_per_s"] for r in runs]),
        "decode_tokens_per_s": median([r["decode_tokens_per_s"] for r in runs]), "runs": runs,
        "weight_bytes": size, "peak_rss_mb": round(peak / 2**20, 1),
        **({"flash_attn": job.flash_attn, "weight_types_mb": gguf_weight_types(job.model_path)} if job.backend == "gguf" else {}),
    }


# another process at equal priority that keeps one CPU busy, and ends when the benchmark does, however it ends
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(100_000):\n        pass\n"
OUTSIDE_LOAD = 0.3  # CPUs of load beyond our own busy loops that make a condition be measured again


def stop(procs) -> None:
    for p in procs:
        p.kill()
        p.wait()


def worker_contention(job: ContentionJob) -> dict:
    """Iris's default thread count against every fixed count, idle and beside busy loops (see the module docstring)."""
    from labcore import gguf
    from labcore import threads as rule
    from labcore.hardware import cpu_model

    cores = rule.physical_cores()
    n_new, settle, wait, tries = job.new_tokens, (0.3 if job.quick else 1.5), 15.0, (1 if job.quick else 8)
    llms = {"default": gguf.load_llama(job.model_path, n_ctx=1024)}
    llms.update({str(k): gguf.load_llama(job.model_path, n_ctx=1024, n_threads=k, n_threads_batch=k) for k in range(1, cores + 1)})
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
            for r in range(job.repeats):
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
        "model": str(job.model_path), "cpu_model": cpu_model(), "physical_cores": cores, "cpus": len(rule._cpu_ids()),
        "rule": f"threads = clamp(floor(cores - others_busy + {rule.THREAD_SLACK}), 1, cores), before each generation",
        "iris_n_threads": os.environ.get("IRIS_N_THREADS"), "prompt_tokens": len(ids), "new_tokens": n_new, "repeats": job.repeats,
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
WORKERS = {"ceilings": (Job, worker_ceilings), "train": (TrainJob, worker_train), "infer": (InferJob, worker_infer),
           "contention": (ContentionJob, worker_contention)}
DATA = REPO / "data" / "id2223_exam_prep_full.jsonl"


def spawn(kind: str, job: Job, label: str) -> dict:
    """One configuration in a fresh interpreter, so that its memory and warm-up are its own: the job goes in as a JSON
    file of its dataclass's fields (``run_worker`` reads it back), the result comes back as a JSON file. With --quick,
    the same worker runs in this process, through the same JSON round trip."""
    print(f"[benchmark] {kind}: {label} ...", flush=True)
    if job.quick:  # the quick mode checks the machinery, not the measurements: one interpreter pays the imports once
        job_type, worker = WORKERS[kind]
        return json.loads(json.dumps(worker(job_type(**json.loads(json.dumps(asdict(job))))), default=str))
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        spec, result = Path(tmp) / "job.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"kind": kind, "job": asdict(job), "result": str(result)}))
        r = subprocess.run([sys.executable, __file__, "--worker", str(spec)], cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"error: benchmark worker {kind} {label} failed (exit {r.returncode}):\n" + "\n".join(r.stderr.strip().splitlines()[-8:]))
        return json.loads(result.read_text())


def run_worker(spec: Path) -> int:
    """The worker side of ``spawn``: the job file read back into its dataclass, the worker run, its result written."""
    from labcore.io import write_json

    task = json.loads(Path(spec).read_text())
    job_type, worker = WORKERS[task["kind"]]
    write_json(Path(task["result"]), worker(job_type(**task["job"])))
    return 0


def job_settings(cfg: BenchConfig) -> dict:
    """The fields every job shares (``Job``)."""
    return dict(threads=cfg.threads, repeats=cfg.repeats, quick=cfg.quick)


def train_job(cfg: BenchConfig, config: str, model_path) -> TrainJob:
    return TrainJob(**job_settings(cfg), config=config, model_path=str(model_path), data=str(DATA), steps=cfg.steps, warmup=cfg.warmup,
                    per_device_train_batch_size=cfg.per_device_train_batch_size, max_length=cfg.max_length,
                    attention=cfg.attention, lm_head=cfg.lm_head)


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:  # a configuration that spawn() started
        return run_worker(Path(argv[1]))
    about = __doc__.split("\n\n")[0] + " How each figure is measured: the docstring of tools/benchmark.py and docs/benchmark.md."
    cfg = parse(BenchConfig(), argv, description=about).resolved()
    if cfg.profile:
        from training.models import materialize_embedded

        profile_training(train_job(cfg, cfg.profile, materialize_embedded()))
        return 0
    if cfg.contention:
        return contention_only(cfg)
    if cfg.quick:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            return benchmark(cfg, *quick_fixture(Path(tmp)))
    from training.models import materialize_embedded

    ggufs = {q: REPO / "gguf_export" / f"{cfg.run}_{q}.gguf" for q in ("f16", "q8_0", "q4_k_m")}
    missing = [str(p) for p in ggufs.values() if not p.exists()]
    if missing:
        sys.exit(f"error: missing {', '.join(missing)}: run python tools/export_to_gguf.py {cfg.run} first (the demo, python tools/demo.py, exports smollm2-135m-lora-exam-demo: pass --run smollm2-135m-lora-exam-demo)")
    return benchmark(cfg, str(materialize_embedded()), ggufs)


def benchmark(cfg: BenchConfig, model_path: str, ggufs: dict[str, Path]) -> int:
    """Every section, each configuration in its own worker; writes benchmark.json/.md/.png into --out_dir."""
    from labcore.io import write_json, write_text
    from labcore.records import record_envelope

    report = record_envelope("benchmark", "benchmark", asdict(cfg))
    report["model"] = model_path
    report["ceilings"] = spawn("ceilings", Job(**job_settings(cfg)), "ceilings")
    report["training"] = {c: spawn("train", train_job(cfg, c, model_path), c) for c in CONFIGS}

    def infer(label: str, backend: str, path, **kw) -> dict:
        return spawn("infer", InferJob(**job_settings(cfg), label=label, backend=backend, model_path=str(path), new_tokens=cfg.new_tokens, **kw), label)

    report["inference"] = {
        "torch_fp32": infer("torch_fp32", "torch", model_path, dtype="float32"),
        "torch_bf16": infer("torch_bf16", "torch", model_path, dtype="bfloat16"),
        **{f"gguf_{q}": infer(f"gguf_{q}", "gguf", p) for q, p in ggufs.items()},
        # llama-cpp-python's own default (labcore.gguf.load_llama turns flash attention on)
        "gguf_q4_k_m_no_flash_attn": infer("gguf_q4_k_m_no_flash_attn", "gguf", ggufs["q4_k_m"], flash_attn=False),
    }
    report["contention"] = spawn("contention", ContentionJob(**job_settings(cfg), model_path=str(cfg.gguf or ggufs["q4_k_m"]),
                                                             new_tokens=cfg.new_tokens), "contention")
    report["load_average_end"] = os.getloadavg()
    fill_fractions(report)
    report["status"] = "completed"
    out = Path(cfg.out_dir)
    write_json(out / "benchmark.json", report)
    write_text(out / "benchmark.md", markdown(report))
    plot(report, out / "benchmark.png")
    print(markdown(report))
    return 0


def contention_only(cfg: BenchConfig) -> int:
    from labcore.gguf import embedded_gguf

    if cfg.quick and not cfg.gguf:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            return contention_report(cfg, quick_fixture(Path(tmp))[1]["q4_k_m"])
    gguf = Path(cfg.gguf or REPO / "gguf_export" / f"{cfg.run}_q4_k_m.gguf")
    if not gguf.exists():  # the run's export is missing (--gguf is checked when parsed)
        gguf = embedded_gguf()
        print(f"[benchmark] no {cfg.run}_q4_k_m.gguf: the contention section runs on the embedded model {gguf.name}", flush=True)
    return contention_report(cfg, gguf)


def contention_report(cfg: BenchConfig, gguf: Path) -> int:
    from labcore.io import write_json, write_text
    from labcore.records import record_envelope

    report = record_envelope("benchmark", "benchmark_contention", asdict(cfg))
    report["contention"] = spawn("contention", ContentionJob(**job_settings(cfg), model_path=str(gguf), new_tokens=cfg.new_tokens), "contention")
    report["load_average_end"] = os.getloadavg()
    report["summary"] = {"contention_default_vs_best_min": report["contention"]["default_vs_best_min"]}
    report["status"] = "completed"
    out = Path(cfg.out_dir)
    write_json(out / "benchmark_contention.json", report)
    md = f"# Benchmark: threads under contention ({Path(gguf).name})\n\n" + contention_markdown(report["contention"])
    write_text(out / "benchmark_contention.md", md)
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
        "same_update_loss_rel_spread": loss_spread([t[c] for c in SAME_UPDATE]),
    }
    notes = report.setdefault("notes", [])
    if c["gemm_flops_per_s"]["bfloat16"] < c["gemm_flops_per_s"]["float32"]:
        notes.append("This CPU has no native bf16 (bf16 GEMM is emulated, slower than fp32), so training runs in fp32 and the "
                     "bf16-ceiling fraction exceeds 100%; the fp32-ceiling fraction is the meaningful one here.")


def loss_spread(rows: list[dict]) -> float:
    """The largest relative spread of one step's loss across ``rows``, over every step (warm-up included)."""
    return max((max(losses) - min(losses)) / statistics.fmean(losses) for losses in zip(*(r["losses"] for r in rows)))


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
    lines += ["", f"Same update ({', '.join(SAME_UPDATE)}): every step's loss within {report['details']['same_update_loss_rel_spread']:.1e} "
              "(relative) across these rows.",
              "", "| inference | prompt tok/s | decode tok/s | TTFT s | peak RSS MB | weights MB | of bandwidth ceiling | weight types (MB) |",
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
