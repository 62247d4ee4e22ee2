"""The evaluation core behind ``eval_models.py``, ``eval_domain.py``, ``eval_pytorch_vs_gguf.py`` and ``eval_recipes.py``,
and the command-line convention of every evaluation script: its arguments are one dataclass parsed by
``labcore.cli.parse`` (``parse_args``), here ``Settings`` and ``EvalArgs`` or ``ModelArgs`` plus the script's own fields.

A model spec is one of:

* ``base:<model-table key or checkpoint folder>``, e.g. ``base:smollm2-135m``: the base model alone (PyTorch);
* a run name, e.g. ``smollm2-135m-lora-exam``: the adapter in ``<root>/models/<run>/`` on the base named by its run
  record (``config.model``). A QLoRA adapter is evaluated on the full-precision base, as the GGUF export merges it;
* ``<run or adapter folder>@<quant>`` or ``base:smollm2-135m@<quant>``, e.g. ``smollm2-135m-id2223@q8_0``: the run merged and exported
  to that GGUF quantization (cached by Iris's ``merged_gguf``), or the embedded base re-quantized to it, so base and
  tuned can be compared in the format Iris serves;
* a ``.gguf`` file: run through llama-cpp-python (``labcore.gguf.load_llama``), scored on the same token ids
  as PyTorch with the tokenizer of its run (from the export manifest beside it) or of its base.

Each model is evaluated in its own subprocess (``python -m evaluation.worker``), so its memory figures belong to it
alone. The report is written once, atomically, when every model is done: an evaluation killed midway leaves no
report under the final name.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # scripts run as ``python evaluation/eval_*.py``
    sys.path.insert(0, str(REPO))

from evaluation import metrics  # noqa: E402
from labcore.cli import count_or_all, parse  # noqa: E402
from labcore.io import cached_sha256  # noqa: E402
from training.dataset_utils import EXAM_TEST_DATA  # noqa: E402

RESULTS = REPO / "evaluation_results"
GGUF_DIR = REPO / "gguf_export"
QUANTS = ("f16", "q8_0", "q4_k_m")


class EvalError(RuntimeError):
    """A problem the user can fix (unknown name, nothing to evaluate); printed as one line without a traceback."""


Prompts = Literal["general", "domain", "none"]


@dataclass
class Settings:
    """What every model of one report is evaluated with: recorded in the report, sent to each worker, and, as part of
    every evaluation script's arguments, its flags."""

    items: int | None = field(default=None, metadata={"help": "held-out test items to answer, spread evenly over the topics (left out: all 252)"})
    ppl_items: int | None = field(default=None, metadata={"help": "held-out test items for perplexity, spread the same way (left out: all 252)"})
    prompts: Prompts = field(default="general", metadata={"help": "the original's prompt list answered besides the test items"})
    max_new_tokens: int = field(default=256, metadata={"help": "token limit per answer"})
    sampling: bool = field(default=False, metadata={"help": "sample with --temperature, --top_p and a fixed seed (left out: greedy, "
                                                            "so reruns are identical)"})
    temperature: float = field(default=0.3, metadata={"help": "with --sampling (the original's 0.3)"})
    top_p: float = field(default=0.9, metadata={"help": "with --sampling (the original's 0.9)"})
    repeat_penalty: float = field(default=1.0, metadata={"help": "llama.cpp's penalty on recently generated tokens, PyTorch's repetition_penalty "
                                                                 "(1.0: none; Iris: --sampling --repeat_penalty 1.15 measures what a student gets)"})
    seed: int = field(default=42, metadata={"help": "with --sampling: the seed of the first prompt (prompt i uses seed + i)"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch and llama.cpp (left out: the cores this process may use)"})
    merge: bool = field(default=True, metadata={"help": "merge the LoRA weights into the base before generating, as the GGUF export does "
                                                        "(--no_merge: generate through the PEFT layers)"})
    max_length: int = field(default=512, metadata={"help": "tokens per test conversation for perplexity (the training max_length)"})
    batch_size: int | None = field(default=None, metadata={"help": "prompts generated together (left out: 64 on CUDA, where one prompt "
                                                                    "leaves the GPU idle; 1 on CPU)"})
    test_file: str = field(default=str(EXAM_TEST_DATA), metadata={"help": "held-out JSONL with key_concepts"})
    notes: int = field(default=0, metadata={"help": "course-note passages in each test question's prompt, retrieved as Iris's Study Chat "
                                                    "does (iris/notes.py; Iris sends 3); 0: the bare question. Pass a --max_length "
                                                    "that holds them (1536)"})

    def __post_init__(self):
        self.items = count_or_all("items", self.items)
        self.ppl_items = count_or_all("ppl_items", self.ppl_items)
        self.threads = count_or_all("threads", self.threads, "the cores this process may use")
        at_least(1, max_new_tokens=self.max_new_tokens, max_length=self.max_length, batch_size=self.batch_size)
        at_least(0, notes=self.notes)

    def generation(self) -> dict:
        if self.sampling:
            return {"mode": "sampling", "temperature": self.temperature, "top_p": self.top_p, "top_k": 0, "seed": self.seed,
                    "max_new_tokens": self.max_new_tokens, "repeat_penalty": self.repeat_penalty}
        return {"mode": "greedy", "max_new_tokens": self.max_new_tokens, "repeat_penalty": self.repeat_penalty}


@dataclass
class EvalArgs(Settings):
    """The command line of a report: its settings, where the report goes, and how many models run at once."""

    out: str = field(default=str(RESULTS / "eval.json"), metadata={"help": "the JSON report; its Markdown table goes beside it (.md)"})
    jobs: int = field(default=1, metadata={"help": "models evaluated at once, each in its own process (on a GPU several fit)"})
    root: str = field(default=str(REPO), metadata={"help": "folder holding models/ and training_logs/"})

    def __post_init__(self):
        super().__post_init__()
        at_least(1, jobs=self.jobs)

    def settings(self) -> Settings:
        return Settings(**{f.name: getattr(self, f.name) for f in fields(Settings)})


@dataclass
class ModelArgs(EvalArgs):
    """A report over the models named on the command line, the first one the reference."""

    models: list[str] = field(default_factory=list, metadata={"help": "base:<model>, run names, <run or adapter folder>@<quant> or .gguf "
                                                                      "files, the first the reference; they may also come first, "
                                                                      "without --models"})


@dataclass
class Source:
    """One resolved model spec: what to load, or why it cannot be loaded and the command that fixes that."""

    spec: str
    label: str
    format: str  # pytorch | gguf
    base: str | None = None
    base_path: str | None = None
    adapter_dir: str | None = None
    run: str | None = None
    method: str | None = None  # lora | qlora
    gguf_path: str | None = None
    quant: str | None = None
    tokenizer_dir: str | None = None
    notes: list[str] = field(default_factory=list)
    missing: str | None = None  # one line: what is missing
    command: str | None = None  # the command that produces it


# ------------------------------------------------------------------------------------------------- specs
def export_command(run: str) -> str:
    return f"python tools/export_to_gguf.py {run}"


def run_record(root: Path, run: str) -> dict | None:
    """The run record saved with the adapter, else the one in training_logs/."""
    from training.config import RunPaths, find_adapter

    for path in (find_adapter(run, root) / "run_record.json", RunPaths(run, Path(root)).record):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def _resolve_base(key: str) -> tuple[str | None, str | None]:
    """(checkpoint folder, None) or (None, one-line reason) for a model-table key or folder."""
    from training.models import ModelUnavailable, resolve_model

    try:
        return resolve_model(key), None
    except ModelUnavailable as e:
        return None, str(e)


def resolve_spec(spec: str, root: Path = REPO) -> Source:
    """Turn a spec into a Source; raises EvalError for a name that is neither a base, a run nor a .gguf file."""
    root = Path(root)
    if "@" in spec:
        return _resolve_quantized(spec, root)
    if spec.startswith("base:"):
        key = spec.removeprefix("base:")
        from training.models import ALIASES, MODELS

        if ALIASES.get(key, key) not in MODELS and not Path(key).is_dir():
            raise EvalError(f"unknown base model {key!r}: use base:<{'|'.join(MODELS)}> or base:<checkpoint folder>")
        src = Source(spec, f"{Path(key).name} (base)", "pytorch", base=key)
        src.base_path, why = _resolve_base(key)
        src.tokenizer_dir = src.base_path
        if why:
            src.missing, src.command = why, f"huggingface-cli download {MODELS[ALIASES.get(key, key)].hf_id}" if key in MODELS else None
        return src
    if spec.endswith(".gguf"):
        return _resolve_gguf(Path(spec), root)
    return _resolve_run(spec, root)


def script_runs() -> list[str]:
    """The runs that have a training script, ``train_<model>_<method>_<data>.py`` named with the model's dots and dashes."""
    from training.config import train_script
    from training.models import ALIASES, MODELS

    models = sorted({*MODELS, *ALIASES}, key=len, reverse=True)
    runs = []
    for path in sorted((REPO / "training").glob("train_*.py")):
        rest = path.stem.removeprefix("train_")
        model = next((m for m in models if rest.startswith(train_script(m).stem.removeprefix("train_") + "_")), None)
        runs.append(f"{model}-{rest[len(model) + 1:].replace('_', '-')}" if model else rest.replace("_", "-"))
    return runs


def _resolve_run(run: str, root: Path) -> Source:
    from training.config import find_adapter, train_command, train_script

    adapter = find_adapter(run, root)
    script = train_script(run)
    if not (adapter / "adapter_config.json").exists():
        if not script.exists() and run_record(root, run) is None:
            raise EvalError(f"unknown run name {run!r}: no adapter in {adapter} and no training/{script.name}. "
                            f"Runs with scripts: {', '.join(script_runs()[:6])}, ... (or use base:<model> or a .gguf file)")
        return Source(run, run, "pytorch", run=run, adapter_dir=str(adapter),
                      missing=f"adapter {adapter} is missing", command=train_command(run))
    record = run_record(root, run) or {}
    cfg = record.get("config", {})
    base = cfg.get("model")
    if not base:
        return Source(run, run, "pytorch", run=run, adapter_dir=str(adapter),
                      missing=f"{adapter}/run_record.json is missing or names no base model (config.model)",
                      command=train_command(run))
    src = Source(run, run, "pytorch", base=base, adapter_dir=str(adapter), run=run, tokenizer_dir=str(adapter),
                 method="qlora" if cfg.get("load_in_4bit") else "lora")
    src.base_path, why = _resolve_base(base)
    if why:
        src.missing, src.command = why, None
    if src.method == "qlora":
        src.notes.append("QLoRA adapter evaluated on the full-precision base (as the GGUF export merges it), not on the 4-bit NF4 base it was trained on")
    return src


def _resolve_quantized(spec: str, root: Path) -> Source:
    from iris.models import ModelError, base_gguf, merged_gguf
    from training.config import find_adapter

    name, quant = spec.rsplit("@", 1)
    try:
        if name.startswith("base:"):
            if name != "base:smollm2-135m":
                raise EvalError(f"{spec}: only the embedded base, base:smollm2-135m, can be re-quantized here")
            src = _resolve_gguf(base_gguf(quant.lower()), root)
            src.label = f"smollm2-135m (base) · {quant.upper()}"
        else:
            adapter = Path(name) if Path(name).is_dir() else find_adapter(name, root)
            if not (adapter / "adapter_config.json").exists():
                return _resolve_run(name, root)  # reported as missing, with the command that trains it
            src = _resolve_gguf(merged_gguf(adapter, quant=quant.lower()), root)
            src.label, src.run = f"{name} · {quant.upper()}", name
            src.tokenizer_dir = str(adapter) if (adapter / "tokenizer_config.json").exists() else src.tokenizer_dir
    except ModelError as e:
        raise EvalError(str(e)) from None
    src.spec = spec
    return src


def _gguf_run_and_quant(path: Path) -> tuple[str, str | None]:
    stem = path.stem
    for q in (*QUANTS, "lora"):
        if stem.lower().endswith("_" + q):
            return stem[: -len(q) - 1], q
    return stem, None


def _resolve_gguf(path: Path, root: Path) -> Source:
    run, quant = _gguf_run_and_quant(path)
    src = Source(str(path), path.stem, "gguf", gguf_path=str(path), run=run, quant=quant.upper() if quant else None)
    if not path.exists():
        src.missing, src.command = f"GGUF file {path} is missing", export_command(run)
        return src
    manifest = path.parent / f"{run}.manifest.json"
    info = {}
    try:
        info = json.loads(manifest.read_text())
        for entry in info.get("files", {}).values():
            if Path(entry.get("path", "")).name == path.name:
                src.quant = entry.get("quant", src.quant)
    except (OSError, ValueError):
        pass
    # The tokenizer that gives PyTorch and GGUF the same token ids: the run's, else its base's.
    from training.config import find_adapter

    adapter = find_adapter(info.get("run") or run, root)
    record = run_record(root, info.get("run") or run) or {}
    src.base = info.get("base_model") or record.get("config", {}).get("model")
    if (adapter / "tokenizer_config.json").exists():
        src.tokenizer_dir = str(adapter)
    else:
        if not src.base:
            src.base = "smollm2-135m"
            src.notes.append(f"no manifest or run record for {path.name}: token ids from the smollm2-135m tokenizer (checked against the GGUF's own)")
        src.tokenizer_dir, why = _resolve_base(src.base)
        if why:
            src.missing, src.command = why, None
    return src


# ------------------------------------------------------------------------------------------------- running
def _die_with_parent():  # a killed evaluation takes its worker with it (Linux)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_worker(src: Source, settings: Settings, items: list[dict], position: str, workdir: Path) -> dict:
    """Evaluate one model in a fresh interpreter and return its result (status failed on a crash)."""
    job = workdir / f"job-{position.replace('/', '-')}.json"
    out = workdir / f"result-{position.replace('/', '-')}.json"
    job.write_text(json.dumps({"source": asdict(src), "settings": asdict(settings), "items": items, "position": position}))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "evaluation.worker", str(job), str(out)], cwd=REPO, env=env,
                          preexec_fn=_die_with_parent)
    if out.exists():
        return json.loads(out.read_text())
    return {"status": "failed", "error": f"worker exited with code {proc.returncode} and wrote no result"}


def summarize_answers(answers: list[dict]) -> dict:
    """Per-model aggregates over the answers: quality on the test items, stopping, leakage and speed over all."""
    test = [a for a in answers if a["set"] == "test"]
    out = {
        "answers": len(answers), "test_answers": len(test),
        "coverage_mean": metrics.mean(a["coverage"] for a in test), "coverage_median": metrics.median(a["coverage"] for a in test),
        "rouge_l_mean": metrics.mean(a["rouge_l"] for a in test), "rouge_l_median": metrics.median(a["rouge_l"] for a in test),
        "leak_rate": metrics.share(bool(a["leaks"]) for a in answers),
        "ended_rate": metrics.share(a["ended_by_itself"] for a in answers),
    }
    for key in ("prompt_tokens", "completion_tokens", "ttft_s", "decode_tps", "e2e_s"):
        out[f"{key}_mean"] = metrics.mean(a[key] for a in answers)
        out[f"{key}_median"] = metrics.median(a[key] for a in answers)
    return out


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def _delta(a, b):
    return a - b if a is not None and b is not None else None


def paired_intervals(ref: dict, m: dict) -> dict:
    """Paired bootstrap 95% intervals of the differences that matter, over the held-out items both models answered:
    coverage and ROUGE-L (model minus reference) and the perplexity ratio (model over reference)."""
    mine = {a["id"]: a for a in m["answers"] if a["set"] == "test"}
    both = [(a, mine[a["id"]]) for a in ref["answers"] if a["set"] == "test" and a["id"] in mine]
    out = {}
    for key in ("coverage", "rouge_l"):
        pairs = [(a[key], b[key]) for a, b in both if a[key] is not None and b[key] is not None]
        out[f"{key}_delta_bootstrap"] = metrics.paired_bootstrap(pairs, metrics.mean_difference)
    ref_nll = {r["id"]: r for r in (ref.get("perplexity") or {}).get("per_item", [])}
    triples = [(ref_nll[r["id"]]["nll"], r["tokens"], r["nll"]) for r in (m.get("perplexity") or {}).get("per_item", [])
               if r["id"] in ref_nll and r["tokens"] == ref_nll[r["id"]]["tokens"] and r["tokens"]]
    out["perplexity_ratio_bootstrap"] = metrics.paired_bootstrap(triples, metrics.perplexity_ratio)
    return out


def compare(models: list[dict]) -> dict:
    """Every completed model against the first completed one (the reference): quality deltas, speed and memory ratios."""
    done = [m for m in models if m.get("status") == "completed"]
    if not done:
        return {}
    ref = done[0]
    rs, rp = ref["summary"], ref.get("perplexity") or {}
    ref_answers = {(a["set"], a["id"]): a["answer"] for a in ref["answers"]}
    rows = []
    for m in done[1:]:
        s, p = m["summary"], m.get("perplexity") or {}
        same = [(ref_answers[(a["set"], a["id"])], a["answer"]) for a in m["answers"] if (a["set"], a["id"]) in ref_answers]
        rows.append({
            "label": m["label"], "against": ref["label"],
            "perplexity_delta": _delta(p.get("perplexity"), rp.get("perplexity")),
            "perplexity_ratio": _ratio(p.get("perplexity"), rp.get("perplexity")),
            "loss_delta": _delta(p.get("loss"), rp.get("loss")),
            "coverage_delta": _delta(s["coverage_mean"], rs["coverage_mean"]),
            "rouge_l_delta": _delta(s["rouge_l_mean"], rs["rouge_l_mean"]),
            "leak_rate_delta": _delta(s["leak_rate"], rs["leak_rate"]),
            "ended_rate_delta": _delta(s["ended_rate"], rs["ended_rate"]),
            "decode_speed_ratio": _ratio(s["decode_tps_mean"], rs["decode_tps_mean"]),
            "ttft_speedup": _ratio(rs["ttft_s_mean"], s["ttft_s_mean"]),
            "e2e_speedup": _ratio(rs["e2e_s_mean"], s["e2e_s_mean"]),
            "peak_rss_ratio": _ratio(m["memory"].get("peak_rss_mb"), ref["memory"].get("peak_rss_mb")),
            "identical_answers": metrics.share(x == y for x, y in same),
            "answer_rouge_l_vs_reference_model": metrics.mean(metrics.rouge_l(y, x) for x, y in same),
            **paired_intervals(ref, m),
        })
    return {"reference": ref["label"], "rows": rows}


def evaluate(script: str, sources: list[Source], args: EvalArgs, argv: list[str] | None = None, finish=None) -> dict:
    """Evaluate every available source in its own subprocess, ``args.jobs`` at a time, and write ``args.out`` atomically
    at the end. ``finish(record)`` may add script-specific conclusions before the report is written.
    """
    from evaluation.prompts import prompt_items, test_items
    from labcore.records import record_envelope, write_report

    usable = [s for s in sources if not s.missing]
    for s in sources:
        if s.missing:
            print(f"[{script}] missing: {s.label}: {s.missing}" + (f"; produce it with: {s.command}" if s.command else ""), file=sys.stderr)
    if not usable:
        raise EvalError("nothing to evaluate: " + "; ".join(f"{s.missing} ({s.command})" if s.command else s.missing for s in sources))
    settings, out, jobs = args.settings(), Path(args.out), args.jobs
    record = record_envelope("eval", script, {"specs": [s.spec for s in sources], "argv": argv if argv is not None else sys.argv[1:],
                                              "settings": asdict(settings)})
    items = test_items(settings.test_file, settings.items, settings.notes) + prompt_items(settings.prompts)
    record["hardware"]["cpu_model"] = _cpu_model()
    record["generation"] = settings.generation()
    record["items"] = {"test_file": settings.test_file, "test_file_sha256": cached_sha256(Path(settings.test_file)),
                       "test_items": sum(i["set"] == "test" for i in items), "prompt_list": settings.prompts,
                       "prompt_items": sum(i["set"] != "test" for i in items)}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"{script}-") as tmp:
        def one(i: int, src: Source) -> dict:
            position = f"{i}/{len(sources)}"
            if src.missing:
                return {"label": src.label, "spec": src.spec, "status": "missing", "message": src.missing,
                        "command": src.command, "source": asdict(src)}
            print(f"[{script}] model {position}: {src.label} ({_describe(src)})", flush=True)
            t = time.time()
            result = run_worker(src, settings, items, position, Path(tmp))
            result.update(label=src.label, spec=src.spec)
            result.setdefault("source", asdict(src))
            print(f"[{script}] model {position}: {src.label}: {result.get('status')} in {time.time() - t:.0f} s"
                  + (f": {_headline(result)}" if result.get("status") == "completed" else f": {result.get('error')}"), flush=True)
            return result

        # Workers in parallel only where asked (a GPU has room for several small models; CPU timings would interfere).
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            models = list(pool.map(lambda a: one(*a), enumerate(sources, start=1)))
    record["parallel_workers"] = jobs
    record.update(models=models, comparison=compare(models), wall_seconds=round(time.time() - t0, 1))
    record["status"] = "completed" if any(m.get("status") == "completed" for m in models) else "failed"
    if finish is not None:
        finish(record)
    write_report(out, record, markdown_table)
    print(f"[{script}] report {out} (table: {out.with_suffix('.md').name})")
    return record


def markdown_table(record: dict) -> str:
    """The report's models and their differences from the reference, with paired bootstrap 95% intervals."""
    def f(x, fmt=".3f"):
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    def ci(b, fmt):
        return f"{f(b['value'], fmt)} [{f(b['ci95'][0], fmt)}, {f(b['ci95'][1], fmt)}]" if b else "-"

    hw = record.get("hardware", {})
    argv = " ".join(record["config"].get("argv") or []).replace(str(REPO) + "/", "")
    k = record["config"].get("settings", {}).get("notes") or 0
    notes = f"; each question with the {k} course-note passages Iris's Study Chat retrieves for it in the prompt" if k else ""
    lines = [f"# {record['name']}", "", f"Command: `python evaluation/{record['name']}.py {argv}`",
             f"Machine: {hw.get('gpu') or hw.get('cpu_model') or hw.get('cpu')}; {record['items']['test_items']} held-out test items "
             f"({record['generation']['mode']}, at most {record['generation']['max_new_tokens']} new tokens{notes}).", "",
             "| model | perplexity | concept coverage | ROUGE-L | ended by itself | leaks |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in record["models"]:
        if m.get("status") != "completed":
            lines.append(f"| {m['label']} | {m.get('status')} | | | | |")
            continue
        s, p = m["summary"], m.get("perplexity") or {}
        lines.append(f"| {m['label']} | {f(p.get('perplexity'), '.2f')} | {f(s['coverage_mean'])} | {f(s['rouge_l_mean'])} | "
                     f"{f(s['ended_rate'], '.2f')} | {f(s['leak_rate'], '.2f')} |")
    rows = (record.get("comparison") or {}).get("rows") or []
    if rows:
        lines += ["", f"Against {record['comparison']['reference']} (value [paired bootstrap 95% interval] over the same items):", "",
                  "| model | perplexity ratio | coverage difference | ROUGE-L difference |", "| --- | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['label']} | {ci(r.get('perplexity_ratio_bootstrap'), '.3f')} | {ci(r.get('coverage_delta_bootstrap'), '+.3f')} | "
                         f"{ci(r.get('rouge_l_delta_bootstrap'), '+.3f')} |")
    return "\n".join(lines) + "\n"


def _describe(src: Source) -> str:
    if src.format == "gguf":
        return f"GGUF {src.quant or '?'} via llama-cpp-python"
    if src.adapter_dir:
        return f"PyTorch, {src.method} adapter on {src.base}"
    return "PyTorch"


def _headline(result: dict) -> str:
    s, p = result["summary"], result.get("perplexity") or {}

    def f(x, fmt):
        return format(x, fmt) if x is not None else "-"

    return (f"perplexity {f(p.get('perplexity'), '.3f')}, coverage {f(s['coverage_mean'], '.3f')}, ROUGE-L {f(s['rouge_l_mean'], '.3f')}, "
            f"{f(s['decode_tps_mean'], '.1f')} tok/s, peak RSS {f(result['memory'].get('peak_rss_mb'), '.0f')} MB")


def _cpu_model() -> str | None:
    try:
        return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), None)
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------- command line
def at_least(low: int, **values) -> None:
    """A ValueError naming the flag of the first value below ``low``; None passes (the flag was left out)."""
    for name, value in values.items():
        if value is not None and value < low:
            raise ValueError(f"--{name} {value}: give {low} or more")


def parse_args(config, argv: list[str] | None, doc: str | None):
    """``labcore.cli.parse`` for an evaluation script, described by the first paragraph of its docstring. Where the
    dataclass has a ``models`` field, the arguments before the first flag are its values:
    ``eval_domain.py base:smollm2-135m my-run --items 30`` is ``eval_domain.py --models base:smollm2-135m my-run --items 30``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and "models" in {f.name for f in fields(config)}:
        argv = ["--models", *argv]
    return parse(config, argv, description=" ".join((doc or "").strip().split("\n\n")[0].split()))


def cli_main(fn):
    """A script's ``main(argv)``: a problem the user can fix (EvalError) becomes one line on stderr and exit status 1."""
    @functools.wraps(fn)
    def main(argv: list[str] | None = None):
        try:
            return fn(argv)
        except EvalError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    return main
