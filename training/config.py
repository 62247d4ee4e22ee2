"""The one config of every training run, and its named bases.

An experiment is ``replace(BASE, ...)`` of a base below; the same dataclass is the command line (every field is a
``--flag``), so ``--max_steps 2`` works on every script. The run name, and from it every path, derives from the
config: ``<model>-<lora|qlora>-<data>``, e.g. ``smollm2-135m-qlora-exam``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASETS = ("finetome", "exam", "finetome-exam", "exam-grounded")
# Adapters committed with the repository (adapters/<run>/): the tuned model a fresh clone serves without training.
SHIPPED_ADAPTERS = REPO / "adapters"


# ------------------------------------------------------------------------------------------ names and paths
# The one place where run names, script names and paths are derived; training, evaluation and export all use it.
def run_name(model: str, method: str, data: str) -> str:
    """``<model>-<lora|qlora>-<data>``; a local checkpoint folder counts by its folder name."""
    model = Path(model).name if Path(model).is_dir() else model
    return f"{model}-{method}-{data}"


def train_script(run: str) -> Path:
    """``training/train_<run>.py`` with dashes and dots as underscores (may not exist: see ``train_command``)."""
    return REPO / "training" / f"train_{run.replace('-', '_').replace('.', '_')}.py"


def embedded_script(method: str, data: str) -> Path:
    """The embedded model's script for ``method`` and ``data``: what runs offline, and on a local checkpoint with --model."""
    return train_script(run_name("smollm2-135m", method, data))


def train_command(run: str) -> str:
    """What trains ``run``: its script, or for a run named after a local checkpoint, the embedded model's script of the
    same method and data with ``--model``."""
    script = train_script(run)
    if script.exists():
        return f"python training/{script.name}"
    for data in sorted(DATASETS, key=len, reverse=True):
        for method in ("qlora", "lora"):
            if run.endswith(f"-{method}-{data}"):
                folder = f"<the {run.removesuffix(f'-{method}-{data}')} checkpoint folder>"
                return f"python {embedded_script(method, data).relative_to(REPO)} --model {folder}"
    return f"a training script with --run_name {run} (no training/{script.name} exists)"


@dataclass(frozen=True)
class RunPaths:
    """Every path of run ``name`` under ``root``."""

    name: str
    root: Path = REPO

    @property
    def checkpoints(self) -> Path:
        return Path(self.root) / "checkpoints" / self.name

    @property
    def trained_adapter(self) -> Path:
        return Path(self.root) / "models" / self.name

    @property
    def shipped_adapter(self) -> Path:
        return SHIPPED_ADAPTERS / self.name

    @property
    def adapter(self) -> Path:
        """The adapter to use: ``models/<run>/`` (what training writes, so a local retrain wins), else the shipped
        ``adapters/<run>/``; the models/ path when neither exists."""
        if not (self.trained_adapter / "adapter_config.json").exists() and (self.shipped_adapter / "adapter_config.json").exists():
            return self.shipped_adapter
        return self.trained_adapter

    @property
    def log_dir(self) -> Path:
        return Path(self.root) / "training_logs"

    @property
    def record(self) -> Path:
        return self.log_dir / f"{self.name}.json"

    @property
    def steps(self) -> Path:
        return self.log_dir / f"{self.name}.jsonl"


def find_adapter(run: str, root: Path | str = REPO) -> Path:
    return RunPaths(run, Path(root)).adapter


@dataclass
class TrainConfig:
    # What is trained
    model: str = field(default="smollm2-135m", metadata={"help": "model-table key (see training/models.py) or a local checkpoint folder"})
    data: str = field(default="exam", metadata={"help": "finetome (stage 1), exam (stage 2 from the base), finetome-exam (stage 2 continuing "
                      "the finetome adapter) or exam-grounded (Study Chat with course notes in the prompt, continuing --init_adapter)"})
    init_adapter: str | None = field(default=None, metadata={"help": "continue this adapter (a run name such as the shipped smollm2-135m-id2223, "
                                     "or a folder) instead of starting a fresh LoRA; its rank and targets then apply"})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the frozen base in 4-bit NF4 (double quantisation, bf16 compute)"})
    run_name: str | None = field(default=None, metadata={"help": "override the derived <model>-<method>-<data> name"})

    # LoRA: the original's rank, alpha and target modules; dropout 0 instead of its 0.05 (measured: the same held-out
    # perplexity after 24 steps, evaluation_results/eval_lora_dropout.json; its masks cost time and memory on a CPU,
    # benchmark row dropout_005)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input (the original: 0.05; see the README)"})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", metadata={"help": "comma-separated module names"})

    # Data
    data_path: str | None = field(default=None, metadata={"help": "use this JSONL (exam/ShareGPT/messages) instead of the default file"})
    general_data_path: str | None = field(default=None, metadata={"help": "stage 1: a local FineTome-style ShareGPT JSONL/Parquet when FineTome-100k is not cached"})
    num_samples: int | None = field(default=None, metadata={"help": "deterministic sample of this many conversations (all when unset)"})
    holdout: int = field(default=0, metadata={"help": "conversations held out for evaluation during training (0: none)"})
    max_length: int = field(default=512, metadata={"help": "tokens per conversation under the chat template"})
    over_length: str = field(default="truncate", metadata={"help": "conversations over max_length: truncate or drop (counted either way)"})
    strict_data: bool = field(default=True, metadata={"help": "stop at the first bad line (False: skip and count bad lines)"})

    # Schedule: 4 sequences x 4 accumulation = 16 conversations per optimizer step
    num_train_epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = field(default=0.03, metadata={"help": "linear warmup: a step count, or a fraction of the run when below 1"})
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = field(default="auto", metadata={"help": "auto: paged_adamw_8bit for QLoRA and the fused adamw_torch_fused for LoRA on CUDA; "
                       "adamw_torch on CPU"})
    precision: str = field(default="auto", metadata={"help": "auto | bf16 | fp16 | fp32 (auto: bf16 where the GPU/CPU supports it)"})
    padding_free: str = field(default="auto", metadata={"help": "auto | true | false: concatenate a batch without padding; each conversation "
                              "attends only to itself (training/packed_attention.py). auto: true on CPU, and on CUDA where torch has "
                              "variable-length attention (one kernel per layer); padded batches otherwise"})
    micro_batch_tokens: int | None = field(default=None, metadata={"help": "token budget per micro-batch: the conversations of one optimizer step "
                                    "(per_device_train_batch_size x gradient_accumulation_steps, kept) are split into as few equal "
                                    "micro-batches as keep each within this many tokens at the longest conversation's length. "
                                    "Default: 16384 on CUDA with padding-free batches; unset on CPU (the batch size as given)"})
    liger: str = field(default="auto", metadata={"help": "auto | on | off: Liger Kernel's fused RMSNorm, RoPE and SwiGLU (TRL's use_liger_kernel). "
                       "auto: on with CUDA when the liger-kernel package is installed"})
    activation_checkpointing: str = field(default="auto", metadata={"help": "auto | on | off: recompute activations in the backward pass "
                                        "(auto: on for QLoRA, whose point is memory; off for LoRA, faster)"})
    lm_head: str = field(default="auto", metadata={"help": "auto | onepass | trl: the loss's projection onto the vocabulary. trl: TRL's fused head "
                         "(a Triton kernel on GPU; on CPU unfused tiles over every position); onepass: training/lm_head.py, loss positions only, "
                         "the gradient formed in the forward pass. auto: onepass on CPU, trl on GPU"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: physical cores)"})
    seed: int = 42

    # Checkpoints and logs
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 3
    root: str = field(default=str(REPO), metadata={"help": "folder holding checkpoints/, models/ and training_logs/"})
    output_dir: str | None = field(default=None, metadata={"help": "checkpoint folder (default: <root>/checkpoints/<run>)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest complete checkpoint of this run"})
    resume_store: str = field(default="auto", metadata={"help": "auto | git | none: also snapshot each checkpoint into the local git repository "
                              "(refs/peftlab/resume/<run>, never cloned), restored by --resume when checkpoints/ is gone "
                              "(python -m training.resume_store --help). auto: git when root is inside a git work tree, else none"})
    report_to: str = "none"

    def __post_init__(self):
        self.padding_free = str(self.padding_free).lower()
        if self.padding_free not in ("auto", "true", "false"):
            raise ValueError(f"padding_free must be auto, true or false, got {self.padding_free!r}")
        if self.data not in DATASETS:
            raise ValueError(f"data must be one of {DATASETS}, got {self.data!r}")
        if self.over_length not in ("truncate", "drop"):
            raise ValueError(f"over_length must be 'truncate' or 'drop', got {self.over_length!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if self.activation_checkpointing not in ("auto", "on", "off"):
            raise ValueError(f"activation_checkpointing must be auto, on or off, got {self.activation_checkpointing!r}")
        if self.lm_head not in ("auto", "onepass", "trl"):
            raise ValueError(f"lm_head must be auto, onepass or trl, got {self.lm_head!r}")
        if self.resume_store not in ("auto", "git", "none"):
            raise ValueError(f"resume_store must be auto, git or none, got {self.resume_store!r}")
        if self.liger not in ("auto", "on", "off"):
            raise ValueError(f"liger must be auto, on or off, got {self.liger!r}")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens <= 0:
            raise ValueError(f"micro_batch_tokens must be positive (leave it out for the default), got {self.micro_batch_tokens}")
        if self.lora_r <= 0 or self.max_length <= 0 or self.per_device_train_batch_size <= 0:
            raise ValueError("lora_r, max_length and per_device_train_batch_size must be positive")

    @property
    def checkpointing(self) -> bool:
        return self.activation_checkpointing == "on" or (self.activation_checkpointing == "auto" and self.load_in_4bit)

    def uses_padding_free(self, device: str) -> bool:
        if self.padding_free != "auto":
            return self.padding_free == "true"
        return device != "cuda" or importlib.util.find_spec("torch.nn.attention.varlen") is not None

    def uses_liger(self, device: str) -> bool:
        if self.liger != "auto":
            return self.liger == "on"
        return device == "cuda" and importlib.util.find_spec("liger_kernel") is not None

    def micro_batches(self, device: str, longest: int) -> tuple[int, int]:
        """(conversations per micro-batch, micro-batches per optimizer step): the step's conversations kept, split into
        as few equal micro-batches as keep each within the token budget when every conversation is ``longest`` tokens."""
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        budget = self.micro_batch_tokens or (16384 if device == "cuda" and self.uses_padding_free(device) else None)
        if budget is None:
            return self.per_device_train_batch_size, self.gradient_accumulation_steps
        size = max([d for d in range(1, per_step + 1) if per_step % d == 0 and d * max(1, longest) <= budget], default=1)
        return size, per_step // size

    @property
    def method(self) -> str:
        return "qlora" if self.load_in_4bit else "lora"

    @property
    def name(self) -> str:
        return self.run_name or run_name(self.model, self.method, self.data)

    @property
    def stage1_name(self) -> str:
        """The run whose adapter a finetome-exam run continues."""
        return self.name.removesuffix("-finetome-exam") + "-finetome"

    # Every path derives from the run name.
    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.name, Path(self.root))

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else self.paths.checkpoints

    @property
    def adapter_dir(self) -> Path:
        return self.paths.trained_adapter

    @property
    def stage1_adapter_dir(self) -> Path:
        return RunPaths(self.stage1_name, Path(self.root)).trained_adapter

    @property
    def continued_adapter_dir(self) -> Path | None:
        """The adapter this run continues: the stage-1 run's for finetome-exam, else --init_adapter's (a folder, or a
        run's trained or shipped adapter); None for a fresh LoRA."""
        if self.data == "finetome-exam":
            return self.stage1_adapter_dir
        if not self.init_adapter:
            return None
        return Path(self.init_adapter) if Path(self.init_adapter).is_dir() else find_adapter(self.init_adapter, self.root)

    @property
    def log_dir(self) -> Path:
        return self.paths.log_dir

    @property
    def record_path(self) -> Path:
        return self.paths.record


# Stage 1, general instructions (the original: 40,000 FineTome samples, 2 epochs, lr 2e-4, accumulation 4-8).
STAGE1 = TrainConfig(data="finetome", num_samples=40_000, num_train_epochs=2, learning_rate=2e-4, gradient_accumulation_steps=8, save_steps=500)
# Stage 2, exam-prep data from the base model (the original: 2-3 epochs, lr 1e-4 to 2e-4, accumulation 4).
STAGE2 = TrainConfig(data="exam", num_train_epochs=3, learning_rate=2e-4, gradient_accumulation_steps=4, save_steps=200)
# Stage 2 continuing the same model's stage-1 adapter, at the lower end of the learning-rate range.
STAGE2_CONTINUED = TrainConfig(data="finetome-exam", num_train_epochs=2, learning_rate=1e-4, gradient_accumulation_steps=4, save_steps=200)
