"""GPU training throughput: this project's training scripts against TRL's SFTTrainer, on Llama-3.2-1B and -3B shapes.

    python tools/benchmark_gpu.py                       # on a CUDA machine: evaluation_results/benchmark_gpu.{json,md,png}
    python tools/benchmark_gpu.py --quick --out_dir /tmp/b   # the same machinery on the CPU with tiny shapes (a test)

It builds random-init checkpoints with the exact shapes of Llama-3.2-1B and -3B locally (no hub; throughput and memory
do not depend on the weights) with the embedded model's tokenizer, then trains each row in its own subprocess on the
same conversations (``data/general_instructions.jsonl``), with the same LoRA recipe (the scripts' rank, alpha,
targets and learning rate) and the same conversations per optimizer step:

- ``trl_defaults_*``: TRL ``SFTTrainer`` as a user starts it: padded batches, activation checkpointing on, TRL's
  defaults otherwise (its micro-batch of 8, ``adamw_torch_fused``);
- ``trl_best_lora_1b``: TRL's best built-in settings: padding-free batches, no activation checkpointing, Liger kernels
  where ``liger-kernel`` is installed;
- ``project_*``: ``training/train_llama_3_2_1b_lora_finetome.py``, ``..._1b_qlora_...`` and ``..._3b_qlora_...``
  through the project's own run steps (``training/run.py``), as ``--model <folder>`` runs them; and the LoRA script
  once more with ``--activation_checkpointing on`` (``project_lora_1b_checkpointed``), the memory side of the trade-off.

Per row: steady tokens/s (non-padding tokens; the warm-up steps excluded), peak memory (GPU allocated; peak RSS on the
CPU), the loss at every step and after the last one, and MFU: tokens/s x 6 x parameters over a bf16 matrix-multiply
rate measured in the same run. The report's ``summary`` holds the ratios the project is judged by. The whole run keeps
within ``--budget_s``; a row that does not fit is reported as skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from labcore.cli import count_or_all, parse  # noqa: E402
from labcore.io import write_json, write_text  # noqa: E402

# The published shapes (config.json of meta-llama/Llama-3.2-1B-Instruct and -3B-Instruct), and tiny ones for --quick.
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128),
}
QUICK_SHAPES = {
    "1b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "3b": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=16),
}
LLAMA_VOCAB = 128256


@dataclass(frozen=True)
class Row:
    name: str
    size: str  # "1b" or "3b"
    method: str  # "lora" or "qlora"
    kind: str  # "trl_defaults", "trl_best" or "project"
    script: str = ""  # the project's script for kind "project"
    flags: tuple = ()  # TrainConfig fields changed from the script's, as (name, value) pairs


# Ordered so the comparisons the summary needs come first if the budget runs out.
ROWS = [
    Row("trl_defaults_lora_1b", "1b", "lora", "trl_defaults"),
    Row("project_lora_1b", "1b", "lora", "project", "train_llama_3_2_1b_lora_finetome.py"),
    Row("trl_best_lora_1b", "1b", "lora", "trl_best"),
    Row("trl_defaults_qlora_3b", "3b", "qlora", "trl_defaults"),
    Row("project_qlora_3b", "3b", "qlora", "project", "train_llama_3_2_3b_qlora_finetome.py"),
    Row("project_qlora_1b", "1b", "qlora", "project", "train_llama_3_2_1b_qlora_finetome.py"),
    # The memory side of the trade-off: the LoRA script with activation checkpointing, to set against TRL's peak memory
    Row("project_lora_1b_checkpointed", "1b", "lora", "project", "train_llama_3_2_1b_lora_finetome.py", (("activation_checkpointing", "on"),)),
]
BY_NAME = {r.name: r for r in ROWS}
TARGETS = {  # summary key: (at least / at most, value) from the issue this benchmark answers
    "lora_1b_vs_trl_defaults": ("min", 2.0),
    "lora_1b_vs_trl_best": ("min", 1.2),
    "qlora_3b_vs_trl_defaults": ("min", 2.0),
    "lora_1b_peak_mem_vs_trl_defaults": ("max", 1.0),
    "lora_1b_mfu": ("min", 0.25),
}
LOSS_TOLERANCE = 0.01  # a project row's loss after K steps against the TRL-defaults row of the same model and method


@dataclass
class Settings:
    quick: bool = field(default=False, metadata={"help": "tiny shapes on the CPU: the same machinery, for the test suite"})
    steps: int | None = field(default=None, metadata={"help": "measured optimizer steps per row (default 8; --quick 2)"})
    warmup: int | None = field(default=None, metadata={"help": "optimizer steps before the measurement (default 2; --quick 1)"})
    conversations: int | None = field(default=None, metadata={"help": "conversations per optimizer step, the same in every row (default 32; --quick 4)"})
    max_length: int = field(default=512, metadata={"help": "tokens per conversation (longer ones are truncated)"})
    rows: str = field(default="", metadata={"help": f"comma-separated rows to run (left out: all of {', '.join(BY_NAME)})"})
    budget_s: int = field(default=450, metadata={"help": "wall-clock budget for all rows; rows that do not fit are reported as skipped"})
    tokenizer: str = field(default="", metadata={"help": "folder with the tokenizer to save beside the checkpoints (left out: the embedded model's)"})
    data: str = field(default=str(REPO / "data" / "general_instructions.jsonl"), metadata={"help": "ShareGPT/exam JSONL file to train on"})
    work_dir: str = field(default="", metadata={"help": "where the random-init checkpoints are built (left out: a temporary folder)"})
    out_dir: str = field(default=str(REPO / "evaluation_results"), metadata={"help": "folder for benchmark_gpu.json, .md and .png"})
    worker: str = field(default="", metadata={"help": "internal: run one row's job file in this process"})

    def __post_init__(self):  # validates only: the command line is parsed over these defaults, so None stays None here
        count_or_all("steps", self.steps, unset="8 (--quick: 2)")
        count_or_all("conversations", self.conversations, unset="32 (--quick: 4)")
        if self.warmup is not None and self.warmup < 1:
            raise ValueError(f"--warmup {self.warmup}: at least one step must run before the measurement")
        unknown = [r for r in self.rows.split(",") if r and r not in BY_NAME]
        if unknown:
            raise ValueError(f"--rows: unknown row(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
        if self.max_length <= 0 or self.budget_s <= 0:
            raise ValueError("--max_length and --budget_s must be positive")


    def with_defaults(self) -> Settings:
        """The settings with every unset count filled in for the mode (full or --quick)."""
        return replace(self, steps=self.steps or (2 if self.quick else 8), warmup=self.warmup or (1 if self.quick else 2),
                       conversations=self.conversations or (4 if self.quick else 32))


@dataclass
class Job:
    """One row, as the parent hands it to a worker process (a JSON file of these fields)."""

    row: str
    model_dir: str
    data: str
    steps: int
    warmup: int
    conversations: int
    max_length: int
    out: str


# ----------------------------------------------------------------------------------------------------- parent
def build_checkpoints(settings: Settings, work: Path) -> dict:
    """Random-init Llama-3.2-shaped checkpoints (bf16 on CUDA) with the embedded tokenizer; their parameter counts."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.models import resolve_model

    tok = AutoTokenizer.from_pretrained(settings.tokenizer or resolve_model("smollm2-135m"))
    shapes = QUICK_SHAPES if settings.quick else SHAPES
    device = "cuda" if torch.cuda.is_available() and not settings.quick else "cpu"
    out = {}
    for size in sorted({r.size for r in selected(settings)}):
        folder = work / f"llama-3.2-{size}-shaped{'-quick' if settings.quick else ''}"
        config = LlamaConfig(vocab_size=len(tok) if settings.quick else LLAMA_VOCAB, max_position_embeddings=131072, rope_theta=500000.0,
                             tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **shapes[size])
        with torch.device("meta"):
            params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        if not (folder / "config.json").exists():
            torch.manual_seed(0)
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            with torch.device(device):
                model = LlamaForCausalLM(config).to(dtype)
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            del model
        out[size] = {"folder": str(folder), "parameters": params}
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def matmul_rate(quick: bool) -> dict:
    """Measured dense matrix-multiply rate (FLOP/s) in the precision the rows train in: the MFU denominator."""
    import torch

    cuda = torch.cuda.is_available() and not quick
    n = 8192 if cuda else 512
    dtype = torch.bfloat16 if cuda or quick else torch.float32
    a, b = (torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    reps, t = (20 if cuda else 5), time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    seconds = (time.perf_counter() - t) / reps
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": 2 * n**3 / seconds}


def selected(settings: Settings) -> list[Row]:
    names = [r for r in settings.rows.split(",") if r]
    return [r for r in ROWS if not names or r.name in names]


def run_rows(settings: Settings, models: dict, tmp: Path, deadline: float) -> list[dict]:
    """Each row in its own worker process on a GPU; with --quick, all rows in one worker (the machinery is the same,
    and the CPU pays the imports once)."""
    jobs = [Job(row.name, models[row.size]["folder"], settings.data, settings.steps, settings.warmup, settings.conversations,
                settings.max_length, str(tmp / f"{row.name}.result.json")) for row in selected(settings)]
    batches = [jobs] if settings.quick else [[job] for job in jobs]
    results = {}
    for batch in batches:
        left = deadline - time.monotonic()
        names = ", ".join(job.row for job in batch)
        if left < 20:
            results.update({job.row: {"status": "skipped", "error": f"not started: {settings.budget_s} s budget spent"} for job in batch})
            continue
        job_file, log = tmp / f"{batch[0].row}.jobs.json", tmp / f"{batch[0].row}.log"
        write_json(job_file, {"jobs": [asdict(job) for job in batch]})
        print(f"[benchmark_gpu] {names} ...", flush=True)
        t = time.monotonic()
        try:
            with open(log, "w") as f:
                rc = subprocess.run([sys.executable, __file__, "--worker", str(job_file)], stdout=f, stderr=subprocess.STDOUT, timeout=left, cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        for job in batch:
            result = json.loads(Path(job.out).read_text()) if Path(job.out).exists() else {}
            if not result:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-600:]
                result = {"status": "failed", "error": f"exit {rc}: {tail}"}
            results[job.row] = {**result, "wall_s": round(time.monotonic() - t, 1)}
            print(f"[benchmark_gpu] {job.row}: {result.get('status')} {result.get('tokens_per_s', '')}", flush=True)
    out = []
    for job in jobs:
        row = BY_NAME[job.row]
        out.append({**results[job.row], "row": row.name, "size": row.size, "method": row.method, "kind": row.kind, "script": row.script,
                    "parameters": models[row.size]["parameters"]})
    return out


def summarize(rows: list[dict], rate: float) -> dict:
    done = {r["row"]: r for r in rows if r.get("status") == "completed"}
    for r in done.values():
        r["mfu"] = r["tokens_per_s"] * 6 * r["parameters"] / rate

    def ratio(a: str, b: str, key: str = "tokens_per_s"):
        return done[a][key] / done[b][key] if a in done and b in done and done[b][key] else None

    summary = {
        "lora_1b_vs_trl_defaults": ratio("project_lora_1b", "trl_defaults_lora_1b"),
        "lora_1b_vs_trl_best": ratio("project_lora_1b", "trl_best_lora_1b"),
        "qlora_3b_vs_trl_defaults": ratio("project_qlora_3b", "trl_defaults_qlora_3b"),
        "lora_1b_peak_mem_vs_trl_defaults": ratio("project_lora_1b", "trl_defaults_lora_1b", "peak_memory_mb"),
        "lora_1b_mfu": done["project_lora_1b"]["mfu"] if "project_lora_1b" in done else None,
    }
    summary["targets"] = {k: {"want": f"{'>=' if how == 'min' else '<='} {v}", "met": None if summary[k] is None else
                              (summary[k] >= v if how == "min" else summary[k] <= v)} for k, (how, v) in TARGETS.items()}
    agreement = {}
    for r in done.values():
        ref = next((x for x in done.values() if x["kind"] == "trl_defaults" and (x["size"], x["method"]) == (r["size"], r["method"])), None)
        if r["kind"] != "trl_defaults" and ref:
            rel = abs(r["loss_after_k"] - ref["loss_after_k"]) / abs(ref["loss_after_k"])
            agreement[r["row"]] = {"against": ref["row"], "relative_difference": rel, "within_tolerance": rel <= LOSS_TOLERANCE}
    summary["loss_agreement"] = {"tolerance": LOSS_TOLERANCE, "rows": agreement, "all_within": all(a["within_tolerance"] for a in agreement.values())}
    return summary


def markdown(report: dict) -> str:
    hw, s = report["hardware"], report["summary"]
    device = hw.get("gpu") or f"CPU {hw.get('cpu')} (--quick: tiny shapes, machinery only)"
    lines = ["# GPU training benchmark", "",
             f"`{report['command']}` on {device}; {report['settings']['conversations']} conversations per optimizer step, "
             f"{report['settings']['warmup']} warm-up + {report['settings']['steps']} measured steps; matmul rate "
             f"{report['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s ({report['matmul']['dtype']}, n={report['matmul']['n']}).", "",
             "| row | tokens/s | peak memory (MB) | loss after K | MFU | micro-batch x accumulation | status |", "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in report["rows"]:
        if r.get("status") == "completed":
            lines.append(f"| {r['row']} | {r['tokens_per_s']:,.0f} | {r['peak_memory_mb']:,.0f} | {r['loss_after_k']:.4f} | {r['mfu']:.1%} | "
                         f"{r['micro_batch']} x {r['accumulation']} | completed |")
        else:
            lines.append(f"| {r['row']} | | | | | | {r.get('status')}: {str(r.get('error', ''))[:160]} |")
    lines += ["", "| summary | value | target | met |", "| --- | ---: | --- | --- |"]
    for k, t in s["targets"].items():
        v = s[k]
        lines.append(f"| {k} | {'' if v is None else f'{v:.3f}'} | {t['want']} | {t['met']} |")
    agree = s["loss_agreement"]
    lines += ["", f"Loss after K steps against the TRL-defaults row of the same model and method (tolerance {agree['tolerance']:.0%}): "
              + ("; ".join(f"{k} {v['relative_difference']:.2%}" for k, v in agree["rows"].items()) or "no pair ran") + "."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in report["rows"] if r.get("status") == "completed"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh([r["row"] for r in done], [r["tokens_per_s"] for r in done], color=["#888" if r["kind"] != "project" else "#2a6" for r in done])
    ax.set_xlabel("tokens/s (steady, non-padding)")
    ax.set_title(report["hardware"].get("gpu") or "CPU (--quick)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    settings = parse(Settings(), argv, description=__doc__.split("\n\n")[0]).with_defaults()
    if settings.worker:
        return max(run_worker(Job(**job)) for job in json.loads(Path(settings.worker).read_text())["jobs"])
    import torch

    from labcore.records import record_envelope

    if not settings.quick and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; run with --quick for the CPU check of the machinery")
    deadline = time.monotonic() + settings.budget_s
    out_dir = Path(settings.out_dir)
    report = record_envelope("benchmark_gpu", "benchmark_gpu", asdict(settings))
    report.update(settings=asdict(settings), command="python tools/benchmark_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="benchmark_gpu-") as tmp:
        work = Path(settings.work_dir or tmp)
        t = time.monotonic()
        models = build_checkpoints(settings, work)
        report["build_s"] = round(time.monotonic() - t, 1)
        report["models"] = models
        report["matmul"] = matmul_rate(settings.quick)
        report["rows"] = run_rows(settings, models, Path(tmp), deadline)
    report["summary"] = summarize(report["rows"], report["matmul"]["flops_per_s"])
    report["status"] = "completed"
    write_json(out_dir / "benchmark_gpu.json", report)
    write_text(out_dir / "benchmark_gpu.md", markdown(report))
    plot(report, out_dir / "benchmark_gpu.png")
    print(markdown(report))
    return 0


# ----------------------------------------------------------------------------------------------------- worker
def step_clock():
    """A TrainerCallback that notes (step, wall time, non-padding tokens seen) as training starts and at the end of
    every optimizer step (CUDA synchronized); ``tokens_per_s(warmup)`` from the marks."""
    import torch
    from transformers import TrainerCallback

    def mark(state) -> tuple[int, float, int]:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return state.global_step, time.perf_counter(), int(state.num_input_tokens_seen)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, args, state, control, **kw):
            self.marks = [mark(state)]

        def on_step_end(self, args, state, control, **kw):
            self.marks.append(mark(state))

        def tokens_per_s(self, warmup: int) -> float:
            (_, t0, n0), (_, t1, n1) = self.marks[warmup], self.marks[-1]
            return (n1 - n0) / (t1 - t0)

    return StepClock()


def row_config(row: Row, job: Job):
    """The row's TrainConfig: the project script's own CONFIG (or a FineTome stage-1 config for TRL rows) on the job's
    model, data and schedule."""
    import importlib.util

    from training.config import STAGE1

    base = replace(STAGE1, model="llama-3.2-1b", load_in_4bit=row.method == "qlora")
    if row.script:
        spec = importlib.util.spec_from_file_location("benchmarked_script", REPO / "training" / row.script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # defines CONFIG; run() is behind the __main__ guard
        base = module.CONFIG
    micro = max(d for d in range(1, 9) if job.conversations % d == 0)  # TRL's micro-batch of 8, or the largest that divides
    return replace(base, **dict(row.flags), model=job.model_dir, data_path=job.data, num_samples=job.conversations * (job.steps + job.warmup),
                   max_steps=job.steps + job.warmup, per_device_train_batch_size=micro, gradient_accumulation_steps=job.conversations // micro,
                   max_length=job.max_length, logging_steps=1, save_steps=10**9, holdout=0, resume_store="none",
                   root=str(Path(job.out).parent / job.row), report_to="none")


def trl_trainer(row: Row, cfg, setup, tokenizer, data, model_path: str):
    """TRL's SFTTrainer as a user sets it up: the model from ``from_pretrained``, the LoRA config passed to TRL."""
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from training.run import lora_config, quantization_config

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=setup.compute_dtype, quantization_config=quantization_config(cfg, setup.compute_dtype))
    best = row.kind == "trl_best"
    args = SFTConfig(
        output_dir=cfg.root, max_steps=cfg.max_steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, data_seed=cfg.seed, bf16=setup.precision == "bf16", fp16=setup.precision == "fp16",
        use_cpu=setup.device == "cpu", logging_steps=1, save_strategy="no", report_to="none", max_length=None, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True,
        **({"padding_free": True, "activation_checkpointing": False, "use_liger_kernel": cfg.uses_liger(setup.device)} if best else {}),
    )
    train_ds, _ = data.datasets()
    set_seed(cfg.seed)
    return SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer, peft_config=lora_config(cfg))


def run_worker(job: Job) -> int:
    import torch

    from training import run as project
    from training.callbacks.logging_callback import PeakRSS

    row = BY_NAME[job.row]
    cfg = row_config(row, job)
    setup = project.resolve_setup(cfg)
    rss = PeakRSS()
    rss.reset()  # rows that share a process (--quick) each measure their own peak
    if setup.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokenizer = project.load_tokenizer(job.model_dir)
    rows, source, load_report = project.load_training_rows(cfg)
    data = project.prepare_data(cfg, rows, source, load_report, tokenizer)
    if row.kind == "project":
        model = project.build_model(cfg, job.model_dir, setup.compute_dtype, setup.precision, setup.device)
        trainer = project.build_trainer(cfg, model, tokenizer, data, setup, snapshots=False)
    else:
        trainer = trl_trainer(row, cfg, setup, tokenizer, data, job.model_dir)
    clock = step_clock()
    trainer.add_callback(clock)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak = (torch.cuda.max_memory_allocated() if setup.device == "cuda" else max(rss.sample(), rss.peak)) / 2**20
    write_json(Path(job.out), {
        "status": "completed", "tokens_per_s": clock.tokens_per_s(job.warmup), "peak_memory_mb": peak,
        "peak_memory_kind": "cuda max_memory_allocated" if setup.device == "cuda" else "peak RSS while the row ran",
        "losses": losses, "loss_after_k": losses[-1], "steps": trainer.state.global_step, "device": setup.device, "precision": setup.precision,
        "optimizer": trainer.args.optim, "padding_free": bool(trainer.args.padding_free), "liger": bool(trainer.args.use_liger_kernel),
        "activation_checkpointing": cfg.checkpointing if row.kind == "project" else bool(trainer.args.activation_checkpointing),
        "micro_batch": trainer.args.per_device_train_batch_size, "accumulation": trainer.args.gradient_accumulation_steps, "flags": dict(row.flags),
        "attention": trainer.model.config._attn_implementation, "conversations": len(data.train),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
