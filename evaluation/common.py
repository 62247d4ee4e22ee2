"""The evaluation core behind ``eval_models.py``, ``eval_domain.py`` and ``eval_pytorch_vs_gguf.py``.

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

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # scripts run as ``python evaluation/eval_*.py``
    sys.path.insert(0, str(REPO))

from evaluation import metrics  # noqa: E402
from labcore.io import cached_sha256  # noqa: E402
from training.dataset_utils import EXAM_TEST_DATA  # noqa: E402

RESULTS = REPO / "evaluation_results"
GGUF_DIR = REPO / "gguf_export"
QUANTS = ("f16", "q8_0", "q4_k_m")


class EvalError(RuntimeError):
    """A problem the user can fix (unknown name, nothing to evaluate); printed as one line without a traceback."""


@dataclass
class Settings:
    """What every model of one report is evaluated with (recorded in the report)."""

    max_new_tokens: int = 256
    limit: int | None = 60  # test-split items to generate answers for (evenly spread over the topics)
    ppl_limit: int | None = None  # test-split items for held-out perplexity (None: all)
    prompts: str = "general"  # the original's prompt list added to the test items: general, domain or none
    sampling: bool = False  # False: greedy (identical reruns); True: the original's temperature/top-p with a seed
    temperature: float = 0.3
    top_p: float = 0.9
    repeat_penalty: float = 1.0  # llama.cpp's repeat penalty (Iris: 1.15); PyTorch applies it as repetition_penalty
    seed: int = 42
    threads: int | None = None  # CPU threads for torch and llama.cpp (default: the cores this process may use)
    merge: bool = True  # merge the LoRA weights into the base before generating (as the GGUF export does)
    max_length: int = 512  # tokens per test conversation for perplexity (the training max_length)
    batch_size: int | None = None  # prompts generated together (None: 64 on CUDA, where one prompt leaves the GPU idle; 1 on CPU)
    test_file: str = str(EXAM_TEST_DATA)

    def generation(self) -> dict:
        if self.sampling:
            return {"mode": "sampling", "temperature": self.temperature, "top_p": self.top_p, "top_k": 0, "seed": self.seed,
                    "max_new_tokens": self.max_new_tokens, "repeat_penalty": self.repeat_penalty}
        return {"mode": "greedy", "max_new_tokens": self.max_new_tokens, "repeat_penalty": self.repeat_penalty}


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


def _resolve_run(run: str, root: Path) -> Source:
    from training.config import find_adapter, train_command, train_script

    adapter = find_adapter(run, root)
    script = train_script(run)
    if not (adapter / "adapter_config.json").exists():
        if not script.exists() and run_record(root, run) is None:
            known = sorted(p.stem.removeprefix("train_").replace("_", "-") for p in (REPO / "training").glob("train_*.py"))
            raise EvalError(f"unknown run name {run!r}: no adapter in {adapter} and no training/{script.name}. "
                            f"Runs with scripts: {', '.join(known[:6])}, ... (or use base:<model> or a .gguf file)")
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


def evaluate(script: str, sources: list[Source], settings: Settings, out: Path, argv: list[str] | None = None, finish=None,
             jobs: int = 1) -> dict:
    """Evaluate every available source in its own subprocess and write ``out`` atomically at the end.

    ``finish(record)`` may add script-specific conclusions before the report is written.
    """
    from evaluation.prompts import prompt_items, test_items
    from labcore.records import record_envelope, write_report

    usable = [s for s in sources if not s.missing]
    for s in sources:
        if s.missing:
            print(f"[{script}] missing: {s.label}: {s.missing}" + (f"; produce it with: {s.command}" if s.command else ""), file=sys.stderr)
    if not usable:
        raise EvalError("nothing to evaluate: " + "; ".join(f"{s.missing} ({s.command})" if s.command else s.missing for s in sources))
    record = record_envelope("eval", script, {"specs": [s.spec for s in sources], "argv": argv if argv is not None else sys.argv[1:],
                                              "settings": asdict(settings)})
    items = test_items(settings.test_file, settings.limit) + prompt_items(settings.prompts)
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
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            models = list(pool.map(lambda a: one(*a), enumerate(sources, start=1)))
    record["parallel_workers"] = max(1, jobs)
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
    lines = [f"# {record['name']}", "", f"Command: `python evaluation/{record['name']}.py {argv}`",
             f"Machine: {hw.get('gpu') or hw.get('cpu_model') or hw.get('cpu')}; {record['items']['test_items']} held-out test items "
             f"({record['generation']['mode']}, at most {record['generation']['max_new_tokens']} new tokens).", "",
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
def add_settings_args(parser: argparse.ArgumentParser, prompts: str) -> None:
    d = Settings()
    g = parser.add_argument_group("evaluation settings")
    g.add_argument("--limit", type=int, default=d.limit, help=f"held-out test items to answer, spread over the topics (default {d.limit}; 0: all)")
    g.add_argument("--ppl_limit", type=int, default=0, help="held-out test items for perplexity (default 0: all 252)")
    g.add_argument("--prompts", choices=("general", "domain", "none"), default=prompts, help=f"the original's prompt list to add (default {prompts})")
    g.add_argument("--max_new_tokens", type=int, default=d.max_new_tokens, help=f"token limit per answer (default {d.max_new_tokens})")
    g.add_argument("--sampling", action="store_true", help=f"sample with the original's temperature {d.temperature} and top-p {d.top_p} and a fixed seed (default: greedy)")
    g.add_argument("--temperature", type=float, default=d.temperature, help="with --sampling")
    g.add_argument("--top_p", type=float, default=d.top_p, help="with --sampling")
    g.add_argument("--repeat_penalty", type=float, default=d.repeat_penalty, help="penalty on recently generated tokens (default 1.0: none; "
                   "Iris uses 1.15 with temperature 0.3 and top-p 0.9: --sampling --repeat_penalty 1.15 measures what a student gets)")
    g.add_argument("--seed", type=int, default=d.seed, help="with --sampling: the seed of the first prompt (prompt i uses seed + i)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch and llama.cpp (default: all cores this process may use)")
    g.add_argument("--no_merge", action="store_true", help="generate with the LoRA adapter unmerged (PEFT layers) instead of merged into the base")
    g.add_argument("--test_file", default=str(EXAM_TEST_DATA), help="held-out JSONL with key_concepts (default: the exam test split)")
    g.add_argument("--jobs", type=int, default=1, help="models evaluated at once, each in its own process (default 1; on a GPU several fit)")
    g.add_argument("--batch_size", type=int, default=None, help="prompts generated together (default: 64 on CUDA, 1 on CPU)")
    g.add_argument("--root", default=str(REPO), help="folder holding models/ and training_logs/ (default: the repository)")


def settings_from_args(args) -> Settings:
    return Settings(max_new_tokens=args.max_new_tokens, limit=args.limit or None, ppl_limit=args.ppl_limit or None, prompts=args.prompts,
                    sampling=args.sampling, temperature=args.temperature, top_p=args.top_p, seed=args.seed, repeat_penalty=args.repeat_penalty, threads=args.threads,
                    merge=not args.no_merge, test_file=args.test_file, batch_size=args.batch_size)


def main_guard(fn) -> None:
    """Run a script's main; user-fixable problems become one line on stderr and exit code 1."""
    try:
        fn()
    except EvalError as e:
        sys.exit(f"error: {e}")
