"""The shared run function behind every ``training/train_*.py`` declaration.

``run(config)`` parses the command line over the declared config (every TrainConfig field is a flag), loads the
base model (4-bit NF4 when ``load_in_4bit``), attaches a LoRA adapter (or continues the stage-1 adapter for a
``finetome-exam`` run), trains with TRL's ``SFTTrainer`` on assistant tokens only, and leaves:

    <root>/checkpoints/<run>/checkpoint-N/   resumable checkpoints (--resume continues the newest complete one)
    .git refs/peftlab/resume/<run>           the newest checkpoint again, for --resume in a later session (resume_store.py)
    <root>/models/<run>/                     the final adapter, tokenizer and run_record.json
    <root>/training_logs/<run>.jsonl, .log   per-step loss, lr, grad norm, tokens/s and memory
    <root>/training_logs/<run>.json          the run record: config, status, timings, memory, versions, hashes
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from labcore.cli import parse
from labcore.hardware import cpu_has_bf16
from labcore.io import atomic_path, write_json
from labcore.records import record_envelope
from labcore.threads import torch_threads
from training.config import REPO, TrainConfig, embedded_script, train_script

CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


class RunError(RuntimeError):
    """A problem the user can fix; printed as one line, without a traceback."""


# ----------------------------------------------------------------------------------------------- command line
def parse_cli(config: TrainConfig, argv: list[str] | None = None) -> TrainConfig:
    """The declared config becomes the defaults of the same dataclass as a command line (``labcore.cli``)."""
    return parse(config, argv)


def resolve_precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_optimizer(cfg: TrainConfig) -> tuple[str, str | None]:
    """The optimizer name and, when it differs from the original's choice, one line saying why."""
    import torch

    wanted = "paged_adamw_8bit" if cfg.load_in_4bit else "adamw_torch"
    if cfg.optim != "auto":
        return cfg.optim, None
    if torch.cuda.is_available():
        return ("adamw_torch_fused" if wanted == "adamw_torch" else wanted), None
    if wanted == "paged_adamw_8bit":
        return "adamw_torch", "optimizer adamw_torch instead of paged_adamw_8bit: paged optimizers need CUDA (bitsandbytes falls back on CPU)"
    return wanted, None


def set_threads(cfg: TrainConfig) -> None:
    import torch

    if torch.cuda.is_available():
        return
    torch.set_num_threads(torch_threads(cfg.threads, world=int(os.environ.get("WORLD_SIZE", "1"))))


def quantization_config(cfg: TrainConfig, compute_dtype):
    """The only place QLoRA becomes a BitsAndBytesConfig (None for LoRA)."""
    if not cfg.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    # Under FSDP the packed 4-bit weights are stored in the compute dtype, so FSDP can flatten and shard them.
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        **({"bnb_4bit_quant_storage": compute_dtype} if fsdp else {}),
    )


# ------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_is_complete(path: Path) -> bool:
    return path.is_dir() and all((path / f).exists() and (path / f).stat().st_size > 0 for f in CHECKPOINT_FILES)


def find_resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint; damaged newer ones are named and skipped. None when there is none at all."""
    found = sorted(
        (p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    damaged = []
    for path in found:
        if checkpoint_is_complete(path):
            for d in damaged:
                print(f"[resume] skipping damaged checkpoint {d} (missing {', '.join(f for f in CHECKPOINT_FILES if not (d / f).exists()) or 'data'})")
            return path
        damaged.append(path)
    if damaged:
        raise RunError(
            f"--resume: no complete checkpoint in {checkpoint_dir} ({', '.join(p.name for p in damaged)} are damaged). "
            "Delete the folder to start over, or run without --resume."
        )
    return None


def git_snapshots(cfg: TrainConfig) -> bool:
    """Whether checkpoints are also snapshotted into the local git repository (cfg.resume_store); without --resume, a
    note when a snapshot of this run exists, since this run's first checkpoint replaces it."""
    from training import resume_store

    try:
        on = resume_store.enabled(cfg.resume_store, cfg.root)
        info = resume_store.latest(cfg.root, cfg.name) if on and not cfg.resume else None
    except resume_store.StoreError as e:
        raise RunError(str(e)) from e
    if info:
        print(f"[resume] {resume_store.label(info)} holds step {info['step']} of this run: starting fresh replaces it at the first "
              "checkpoint (pass --resume to continue it)")
    return on


def restore_snapshot(cfg: TrainConfig) -> tuple[Path | None, str | None]:
    """The git snapshot of this run written back into the checkpoint folder: (checkpoint, its label), or (None, None)."""
    from training import resume_store

    try:
        info = resume_store.latest(cfg.root, cfg.name)
        path = resume_store.restore(cfg.root, cfg.name, cfg.checkpoint_dir) if info else None
    except resume_store.StoreError as e:
        raise RunError(f"--resume: {e} (python -m training.resume_store drop {cfg.name} to start over)") from e
    if path is None:
        return None, None
    print(f"[resume] restored {resume_store.label(info)} (step {info['step']}, saved {info['created']}) into {path}")
    return path, resume_store.label(info)


def snapshot_callback(cfg: TrainConfig):
    """After each checkpoint the Trainer writes (main process only): snapshot it into git; a failure is one warning."""
    from transformers import TrainerCallback

    from training import resume_store

    class GitSnapshot(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                try:
                    resume_store.save(cfg.root, cfg.name, path, required=CHECKPOINT_FILES)
                except Exception as e:  # never stops training
                    print(f"[resume] warning: no git snapshot of {path}: {e}", flush=True)

    return GitSnapshot()


# ------------------------------------------------------------------------------------------------- data
def load_training_rows(cfg: TrainConfig) -> tuple[list[dict], str, dict]:
    """The run's conversations, where they came from, and what the load skipped or changed (for the record)."""
    from training import dataset_utils as du

    if cfg.data == "finetome" and not cfg.data_path:
        rows, source = du.load_finetome(cfg.general_data_path)
        return rows, source, {}
    default = du.EXAM_GROUNDED_DATA if cfg.data == "exam-grounded" else du.EXAM_DATA
    path = cfg.data_path or default
    report = du.LoadReport(source=str(path))
    rows = du.load_conversations(path, strict=cfg.strict_data, report=report)
    source = cfg.data_path or str(default.relative_to(REPO))
    return rows, source, {"skipped": dict(report.skipped), "notes": report.notes()}


# ------------------------------------------------------------------------------------------------- the run
def run(config: TrainConfig, argv: list[str] | None = None) -> Path:
    """Parse the command line over ``config`` and train; one-line errors for problems the user can fix."""
    from training.dataset_utils import DataError
    from training.models import ModelUnavailable

    cfg = parse_cli(config, argv)  # a bad value is a usage error naming the flag
    try:
        return train(cfg)
    except (ModelUnavailable, DataError, RunError) as e:
        sys.exit(f"error: {e}")


def stage1_command(cfg: TrainConfig) -> str:
    """The command that trains the stage-1 adapter a two-stage run needs: the running script's FineTome sibling (so a
    run on a local checkpoint names a script that exists), with the same --model and --root."""
    main = Path(getattr(sys.modules.get("__main__"), "__file__", None) or "")
    if main.name.endswith("_finetome_exam.py"):
        script = main.with_name(main.name.replace("_finetome_exam.py", "_finetome.py"))
    else:  # called from Python: the stage-1 run's script, or for a local checkpoint the embedded model's (with --model)
        script = train_script(cfg.stage1_name)
        if not script.exists():
            script = embedded_script(cfg.method, "finetome")
    extra = "".join(f" --{k} {v}" for k, v in (("model", cfg.model), ("root", cfg.root)) if v and str(v) != str(getattr(TrainConfig, k, None)))
    shown = script.relative_to(Path.cwd()) if script.is_relative_to(Path.cwd()) else script  # as the user would type it
    return f"python {shown}{extra}"


@dataclass
class Setup:
    """What this machine and config resolve to: precision, optimizer, device, and notes on any substitution."""

    precision: str
    optimizer: str
    device: str
    notes: list[str]

    @property
    def compute_dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]


@dataclass
class Data:
    """The run's conversations, tokenized: training and held-out sets with their length statistics."""

    source: str
    load_report: dict
    template: str  # the training chat template (marks the assistant tokens that carry loss)
    train_rows: list[dict]
    train: list[dict]
    held_out: list[dict]
    length: dict
    held_out_length: dict

    @property
    def longest(self) -> int:
        return max(len(r["input_ids"]) for r in self.train)

    def datasets(self):
        from datasets import Dataset

        return Dataset.from_list(self.train), (Dataset.from_list(self.held_out) if self.held_out else None)


def train(cfg: TrainConfig) -> Path:
    """Check the inputs (base model, stage-1 adapter, data, resume point) before the heavy imports; then resolve the
    machine's settings, tokenize, build the model and trainer, train, and save the adapter with its run record."""
    model_path = resolve_base(cfg)
    rows, source, load_report = load_training_rows(cfg)  # before the heavy imports: a bad file fails in a second
    snapshots = git_snapshots(cfg)
    resume_from, restored_from = resume_point(cfg, snapshots)
    setup = resolve_setup(cfg)
    tokenizer = load_tokenizer(model_path)
    data = prepare_data(cfg, rows, source, load_report, tokenizer)
    model = build_model(cfg, model_path, setup.compute_dtype, setup.precision, setup.device)
    trainer = build_trainer(cfg, model, tokenizer, data, setup, snapshots)
    record = start_record(cfg, trainer, tokenizer, data, setup, model_path, restored_from or (str(resume_from) if resume_from else None))
    result = train_with_record(cfg, trainer, record, resume_from)
    return finish(cfg, trainer, tokenizer, record, result)


def resolve_base(cfg: TrainConfig) -> str:
    """The base checkpoint to load, and for a two-stage run, a check that its stage-1 adapter exists."""
    from training.models import resolve_model

    model_path = resolve_model(cfg.model, offline_alternative=f"python {embedded_script(cfg.method, cfg.data).relative_to(REPO)}")
    stage1 = cfg.stage1_adapter_dir
    if cfg.data == "finetome-exam" and not (stage1 / "adapter_config.json").exists():
        raise RunError(f"{cfg.name} continues the stage-1 adapter {stage1}, which does not exist: run {stage1_command(cfg)} first.")
    adapter = cfg.continued_adapter_dir
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        raise RunError(f"{cfg.name} continues the adapter {cfg.init_adapter!r} ({adapter}), which has no adapter_config.json: "
                       "pass --init_adapter with a run name or an adapter folder, or train that run first.")
    return model_path


def resume_point(cfg: TrainConfig, snapshots: bool) -> tuple[Path | None, str | None]:
    """With --resume, the newest complete checkpoint (restored from the git store when checkpoints/ is gone) and
    where it was restored from; without it, a refusal to overwrite existing checkpoints."""
    if not cfg.resume:
        if any(cfg.checkpoint_dir.glob("checkpoint-*")):
            raise RunError(f"{cfg.checkpoint_dir} already holds checkpoints: pass --resume to continue them, or delete the folder to start over.")
        return None, None
    resume_from, restored_from = find_resume_checkpoint(cfg.checkpoint_dir), None
    if resume_from is None and snapshots:
        resume_from, restored_from = restore_snapshot(cfg)
    print(f"[resume] {'continuing from ' + str(resume_from) if resume_from else 'no checkpoint yet in ' + str(cfg.checkpoint_dir) + ': starting fresh'}")
    return resume_from, restored_from


def resolve_setup(cfg: TrainConfig) -> Setup:
    """Threads and seed set; precision, optimizer and device chosen for this machine, each substitution noted."""
    import torch
    from transformers import set_seed

    set_threads(cfg)
    set_seed(cfg.seed)
    optimizer, optim_note = resolve_optimizer(cfg)
    setup = Setup(resolve_precision(cfg), optimizer, "cuda" if torch.cuda.is_available() else "cpu", [optim_note] if optim_note else [])
    if cfg.load_in_4bit and setup.precision == "fp32" and setup.device == "cpu":
        setup.notes.append("QLoRA compute in fp32 instead of bf16: this CPU has no bf16 support")
    for n in setup.notes:
        print(f"[train] {n}")
    return setup


def load_tokenizer(model_path: str):
    """The model's own tokenizer and chat template, with a pad token distinct from the end-of-turn token, so the
    model learns to stop (a pad=eos setup masks the very token generation must end on)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        for candidate in ("<|finetune_right_pad_id|>", "<pad>", "<|endoftext|>", "<unk>"):
            if candidate in tokenizer.get_vocab() and tokenizer.convert_tokens_to_ids(candidate) != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                break
        else:
            raise RunError(f"{model_path}: no pad token distinct from the end-of-turn token {tokenizer.eos_token!r}")
    return tokenizer


def prepare_data(cfg: TrainConfig, rows: list[dict], source: str, load_report: dict, tokenizer) -> Data:
    """Sample, hold out, and tokenize with the training template (loss on assistant tokens only); report lengths."""
    from training import dataset_utils as du
    from training.chat_templates import training_template

    template = training_template(tokenizer)
    rows = du.sample(rows, cfg.num_samples, cfg.seed)
    train_rows, eval_rows = du.split_holdout(rows, cfg.holdout, cfg.seed) if cfg.holdout else (rows, [])
    train, length = du.tokenize_conversations(train_rows, tokenizer, template, cfg.max_length, cfg.over_length)
    held_out, held_out_length = du.tokenize_conversations(eval_rows, tokenizer, template, cfg.max_length, cfg.over_length)
    if not train:
        raise RunError(f"no training conversations left from {source} ({length['summary']}; over_length={cfg.over_length})")
    shown = f"{len(held_out)} held out" + (f" ({held_out_length['summary']})" if held_out_length["over_max_length"] else "")
    print(f"[data] {len(train)} training conversations from {source}; {shown}; {length['summary']}; "
          f"{length['loss_tokens']} of {length['tokens']} tokens carry loss")
    return Data(source, load_report, template, train_rows, train, held_out, length, held_out_length)


def sft_config(cfg: TrainConfig, setup: Setup, has_eval: bool, longest: int):
    """TRL's SFTConfig for this run: the TrainConfig's schedule (its conversations per step split into micro-batches
    by the token budget), this machine's precision, optimizer and kernels."""
    from trl import SFTConfig

    micro_batch, accumulation = cfg.micro_batches(setup.device, longest)
    return SFTConfig(
        output_dir=str(cfg.checkpoint_dir),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        use_liger_kernel=cfg.uses_liger(setup.device),
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=setup.optimizer,
        # TRL defaults to activation checkpointing; build_model applies cfg.checkpointing instead (on for QLoRA).
        activation_checkpointing=False,
        bf16=setup.precision == "bf16",
        fp16=setup.precision == "fp16",
        use_cpu=setup.device == "cpu",  # accelerate refuses bf16 on a bf16-capable CPU unless told it is a CPU run
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.save_steps if has_eval else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=cfg.report_to,
        # Conversations arrive tokenised and truncated to max_length with their assistant masks (loss on assistant
        # tokens only, end-of-turn token included), so TRL neither re-tokenises nor truncates.
        max_length=None,
        padding_free=cfg.uses_padding_free(setup.device),
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=setup.device == "cuda",  # pinned host memory only helps copies to a GPU
        disable_tqdm=False,
    )


def build_trainer(cfg: TrainConfig, model, tokenizer, data: Data, setup: Setup, snapshots: bool):
    """TRL's SFTTrainer with the resource log (and git snapshots of checkpoints), and this run's loss head installed."""
    from trl import SFTTrainer

    from training.callbacks.logging_callback import ResourceUsageCallback

    train_ds, eval_ds = data.datasets()
    callbacks = [ResourceUsageCallback(cfg.log_dir, cfg.name)] + ([snapshot_callback(cfg)] if snapshots else [])
    trainer = SFTTrainer(model=model, args=sft_config(cfg, setup, eval_ds is not None, data.longest), train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, callbacks=callbacks)
    trainer.lm_head_choice = apply_lm_head(cfg, trainer.model, setup.device)
    return trainer


def start_record(cfg: TrainConfig, trainer, tokenizer, data: Data, setup: Setup, model_path: str, resumed_from: str | None) -> dict:
    """The run record as training starts: config, resolved settings, data, templates and parameter counts."""
    from training import dataset_utils as du
    from training.chat_templates import template_hash

    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    record = record_envelope("train", cfg.name, {**asdict(cfg), "run_name": cfg.name, "method": cfg.method})
    record.update({
        "paths": {"checkpoints": str(cfg.checkpoint_dir), "adapter": str(cfg.adapter_dir), "log": str(cfg.paths.steps)},
        "model_source": str(model_path),
        "resolved": {"precision": setup.precision, "optimizer": setup.optimizer, "device": setup.device, "notes": setup.notes,
                     "activation_checkpointing": cfg.checkpointing, "padding_free": cfg.uses_padding_free(setup.device),
                     "attention": model.config._attn_implementation, "lm_head": trainer.lm_head_choice,
                     "micro_batch": trainer.args.per_device_train_batch_size, "accumulation": trainer.args.gradient_accumulation_steps,
                     "liger": trainer.args.use_liger_kernel,
                     "world_size": int(os.environ.get("WORLD_SIZE", "1")), "resumed_from": resumed_from},
        "data": {"source": data.source, "train_conversations": len(data.train), "held_out": len(data.held_out),
                 "sha256": du.data_hash(data.train_rows), "load": data.load_report, "length": data.length, "held_out_length": data.held_out_length},
        "chat_template_sha256": template_hash(tokenizer.chat_template),
        "training_chat_template_sha256": template_hash(data.template),
        "parameters": {"trainable": trainable, "total": total, "trainable_pct": round(100 * trainable / total, 3)},
    })
    if cfg.continued_adapter_dir is not None:
        record["continued_from"] = str(cfg.continued_adapter_dir)
    if trainer.is_world_process_zero():
        write_json(cfg.record_path, record)
    return record


def train_with_record(cfg: TrainConfig, trainer, record: dict, resume_from: Path | None):
    """``trainer.train``; an interruption or failure is written into the record (status, error) before it propagates."""
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException as e:
        if trainer.is_world_process_zero():
            record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed", error=f"{type(e).__name__}: {e}",
                          wall_seconds=round(time.time() - t0, 2))
            write_json(cfg.record_path, record)
        raise
    record["wall_seconds"] = round(time.time() - t0, 2)
    return result


def finish(cfg: TrainConfig, trainer, tokenizer, record: dict, result) -> Path:
    """The completed record (steps, losses, tokens, resources, held-out evaluation) and the adapter beside it."""
    from training.callbacks.logging_callback import ResourceUsageCallback

    state = trainer.state
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ResourceUsageCallback))
    record.update(
        status="completed",
        global_step=state.global_step,
        epochs=state.epoch,
        final_train_loss=result.training_loss,
        last_logged_loss=next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None),
        tokens_seen=int(state.num_input_tokens_seen),
        resources=callback.summary(state),
    )
    if trainer.eval_dataset is not None:
        record["eval"] = trainer.evaluate()
    if trainer.is_world_process_zero():
        save_adapter(trainer, tokenizer, cfg.adapter_dir, record)
        write_json(cfg.record_path, record)
        print(f"[done] adapter {cfg.adapter_dir}\n[done] record  {cfg.record_path}")
    return cfg.adapter_dir


def apply_lm_head(cfg: TrainConfig, model, device: str) -> str:
    """After SFTTrainer (or TRL's add_fused_lm_head) has patched the model: the loss head this run uses, installed."""
    from training.lm_head import resolve_lm_head, use_onepass_lm_head

    choice = resolve_lm_head(cfg.lm_head, device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if choice == "onepass" and not use_onepass_lm_head(base):
        print(f"[train] lm_head=onepass does not cover {type(base).__name__} (logit scaling or a trainable output layer): using TRL's head")
        choice = "trl"
    return choice


def release_checkpoint_mapping(model) -> None:
    """transformers maps the checkpoint file and its tensors view it while they live. Quantizing the base read every
    page, and the few tensors left unquantized (embedding, norms) keep the whole mapping, and those pages, resident:
    on the 135M model about 400 MB of RSS for nothing. Copying them out lets the mapping go."""
    import torch

    with torch.no_grad():
        for p in model.parameters():  # each parameter once: a tied embedding is copied once and stays tied
            if type(p).__name__ != "Params4bit" and p.device.type == "cpu":
                p.data = p.data.clone()


def build_model(cfg: TrainConfig, model_path: str, compute_dtype, precision: str, device: str, attn_implementation: str | None = None):
    """The frozen base (full precision, bf16 on a bf16 CPU, or 4-bit NF4) with a trainable fp32 LoRA adapter.

    Attention is ``packed_sdpa`` (per-conversation causal SDPA in padding-free batches) unless named otherwise."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    if cfg.load_in_4bit or device == "cuda":
        load_dtype = compute_dtype if device == "cuda" else torch.float32
    else:
        load_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    from training import packed_attention

    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=load_dtype, quantization_config=quantization_config(cfg, compute_dtype),
        attn_implementation=attn_implementation or packed_attention.NAME,
    )
    model.config.use_cache = False  # padding-free batches are exact only without the KV cache
    if cfg.load_in_4bit and device == "cpu":
        release_checkpoint_mapping(model)
    if cfg.continued_adapter_dir is not None:
        adapter = cfg.continued_adapter_dir
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        print(f"[train] continuing the adapter {adapter}")
    else:
        model = get_peft_model(model, lora_config(cfg))
    for p in model.parameters():  # adapters train in fp32 even over a bf16 or 4-bit base
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if cfg.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def lora_config(cfg: TrainConfig):
    """The run's LoRA adapter as PEFT's ``LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=[m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()])


def save_adapter(trainer, tokenizer, adapter_dir: Path, record: dict) -> None:
    """Adapter, tokenizer (with the serving template) and record, renamed into place only when complete."""
    with atomic_path(adapter_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "run_record.json", record)
