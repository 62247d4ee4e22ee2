"""Recipe comparison on the embedded SmolLM2-135M: train a few candidate recipes, evaluate each on the held-out test
split against the base, and pick the one to ship by a fixed rule.

    python evaluation/eval_recipes.py                       # train the candidates that have no adapter yet, evaluate all
    python evaluation/eval_recipes.py --jobs 10             # on a GPU: train and evaluate 10 candidates at once
    python evaluation/eval_recipes.py --only e2,g2 --train_flags '--max_steps 1 --num_samples 8' --items 4 --root /tmp/r   # smoke test

Every candidate is one of the project's training scripts with flags (printed, and recorded in the report), trained
into ``<root>/models/recipe-<key>/``; one whose adapter exists with a completed run record is not retrained, so an
interrupted comparison continues where it stopped. The candidates vary one thing at a time from ``e2`` (the exam
data, 2 epochs, learning rate 2e-4, rank 16, 512 tokens, 16 conversations per optimizer step): epochs, learning
rate, rank, max_length, general-then-exam against exam-only, and LoRA against QLoRA.

The rule (``pick``): among LoRA candidates whose answers end by themselves at least 80% of the time and never leak,
the best mean rank over held-out perplexity (lower), concept coverage and ROUGE-L (higher); ties go to the lower
perplexity. The test split chooses the recipe, so its numbers for the winner are slightly optimistic.

On CPU one epoch of the exam data takes hours; on a CUDA GPU the whole comparison takes minutes (see the README).
Writes evaluation_results/eval_recipes.json and .md (atomically, when every model is done).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import REPO, RESULTS, EvalArgs, EvalError, at_least, cli_main, evaluate, parse_args, resolve_spec  # noqa: E402

EXAM = "training/train_smollm2_135m_lora_exam.py"
EXAM_Q = "training/train_smollm2_135m_qlora_exam.py"
GENERAL = "training/train_smollm2_135m_lora_finetome.py"
GENERAL_EXAM = "training/train_smollm2_135m_lora_finetome_exam.py"
# What every candidate shares unless it says otherwise: 16 conversations per optimizer step in one micro-batch.
SHARED = {"num_train_epochs": 2, "learning_rate": 2e-4, "lora_r": 16, "lora_alpha": 32, "max_length": 512,
          "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1, "save_steps": 100}


@dataclass(frozen=True)
class Candidate:
    key: str
    varies: str  # what this candidate changes from e2, in words
    script: str = EXAM
    flags: dict = field(default_factory=dict)
    stage1: dict | None = None  # flags of a general-instructions stage trained first (general-then-exam)

    @property
    def run(self) -> str:
        return f"recipe-{self.key}-finetome-exam" if self.stage1 is not None else f"recipe-{self.key}"

    @property
    def method(self) -> str:
        return "qlora" if self.script == EXAM_Q else "lora"

    def commands(self, root: str, extra: list[str]) -> list[list[str]]:
        def cmd(script, run, flags):
            merged = {**SHARED, **flags}
            return [sys.executable, script, "--run_name", run, "--root", root,
                    *(a for k, v in merged.items() for a in (f"--{k}", str(v))), *extra]

        out = []
        if self.stage1 is not None:
            out.append(cmd(GENERAL, self.run.removesuffix("-finetome-exam") + "-finetome", self.stage1))
        out.append(cmd(self.script, self.run, self.flags))
        return out


CANDIDATES = [
    Candidate("e1", "1 epoch", flags={"num_train_epochs": 1}),
    Candidate("e2", "the reference: exam data, 2 epochs, lr 2e-4, rank 16, 512 tokens"),
    Candidate("e3", "3 epochs", flags={"num_train_epochs": 3}),
    Candidate("e2-lr1e-4", "learning rate 1e-4", flags={"learning_rate": 1e-4}),
    Candidate("e2-r8", "rank 8 (alpha 16)", flags={"lora_r": 8, "lora_alpha": 16}),
    Candidate("e2-len256", "max_length 256 (longer conversations truncated)", flags={"max_length": 256}),
    Candidate("g2", "general-then-exam: 2 epochs of the general set first, then the e2 recipe", script=GENERAL_EXAM,
              stage1={"num_train_epochs": 2}),
    Candidate("qlora-e2", "QLoRA (4-bit NF4 base) on the e2 schedule", script=EXAM_Q),
    Candidate("qlora-e1", "QLoRA (4-bit NF4 base) on the e1 schedule: the LoRA/QLoRA pair a 2-core CPU trains in an hour each",
              script=EXAM_Q, flags={"num_train_epochs": 1}),
]
BY_KEY = {c.key: c for c in CANDIDATES}


def trained(root: Path, run: str) -> bool:
    try:
        return json.loads((root / "models" / run / "run_record.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def train_candidate(c: Candidate, root: Path, extra: list[str], deadline: float | None) -> dict:
    """Run a candidate's training commands in order (skipping finished stages); logs to <root>/recipe_logs/."""
    logs = root / "recipe_logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = {"key": c.key, "commands": [], "status": "completed"}
    for command in c.commands(str(root), extra):
        run = command[command.index("--run_name") + 1]
        out["commands"].append(" ".join(a.replace(str(REPO) + "/", "") for a in command[1:]))
        if trained(root, run):
            print(f"[eval_recipes] {run}: adapter exists, not retrained", flush=True)
            continue
        left = None if deadline is None else max(1.0, deadline - time.time())
        t = time.time()
        print(f"[eval_recipes] training {run}", flush=True)
        with open(logs / f"{run}.log", "w") as log:
            try:
                proc = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=left,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        print(f"[eval_recipes] {run}: exit {code} after {time.time() - t:.0f} s (log {logs / (run + '.log')})", flush=True)
        if code != 0:
            out["status"] = f"failed ({run}: exit {code})"
            break
    return out


RULE = ("eligible: LoRA, ended_rate >= 0.8 and leak_rate == 0; the best mean rank over perplexity (lower), coverage and "
        "ROUGE-L (higher); ties to the lower perplexity")


def pick(report: dict) -> dict:
    """The shipping rule (RULE) over the completed candidates."""
    rows = []
    for m in report["models"]:
        c = next((c for c in CANDIDATES if (m.get("source") or {}).get("run") == c.run), None)
        if c is None or m.get("status") != "completed" or c.method != "lora":
            continue
        s, p = m["summary"], m.get("perplexity") or {}
        rows.append({"key": c.key, "run": c.run, "perplexity": p.get("perplexity"), "coverage": s["coverage_mean"],
                     "rouge_l": s["rouge_l_mean"], "ended_rate": s["ended_rate"], "leak_rate": s["leak_rate"]})
    eligible = [r for r in rows if (r["ended_rate"] or 0) >= 0.8 and r["leak_rate"] == 0]
    if not eligible:
        return {"rule": RULE, "winner": None, "reason": "no candidate ends 80% of its answers by itself without leaks", "ranked": rows}
    for metric, reverse in (("perplexity", False), ("coverage", True), ("rouge_l", True)):
        for rank, r in enumerate(sorted(eligible, key=lambda r: r[metric], reverse=reverse), start=1):
            r[f"rank_{metric}"] = rank
    for r in eligible:
        r["mean_rank"] = round((r["rank_perplexity"] + r["rank_coverage"] + r["rank_rouge_l"]) / 3, 3)
    eligible.sort(key=lambda r: (r["mean_rank"], r["perplexity"]))
    return {"rule": RULE, "winner": eligible[0]["run"], "winner_key": eligible[0]["key"],
            "ranked": eligible + [r for r in rows if r not in eligible]}


def markdown(report: dict) -> str:
    def f(x, fmt=".3f"):
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    by_run = {(m.get("source") or {}).get("run"): m for m in report["models"]}
    base = next((m for m in report["models"] if "(base)" in m.get("label", "") and m.get("status") == "completed"), None)
    lines = ["# Recipe comparison: SmolLM2-135M on the ID2223 exam-prep data", "",
             f"Command: `python evaluation/eval_recipes.py {' '.join(report['config']['argv'])}`".replace("  ", " "),
             f"Evaluated on: {report['hardware'].get('gpu') or report['hardware'].get('cpu_model') or report['hardware'].get('cpu')}; "
             f"trained on: {', '.join(sorted({t.get('gpu') or t.get('device') or '?' for t in report['training'].values() if t.get('steps')}))}; "
             f"held-out test items: {report['items']['test_items']}; generation: {report['generation']['mode']} "
             f"(repeat penalty {report['generation'].get('repeat_penalty')}), {report['generation']['max_new_tokens']} new tokens at most. "
             "`train s` is the wall time of the training process, for a resumed run (*) its last part only.", "",
             "| candidate | varies | steps | train s | perplexity | coverage | ROUGE-L | ended | leaks |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    if base:
        s, p = base["summary"], base.get("perplexity") or {}
        lines.append(f"| base | untuned SmolLM2-135M-Instruct | - | - | {f(p.get('perplexity'), '.2f')} | {f(s['coverage_mean'])} | "
                     f"{f(s['rouge_l_mean'])} | {f(s['ended_rate'], '.2f')} | {f(s['leak_rate'], '.2f')} |")
    for c in CANDIDATES:
        m = by_run.get(c.run)
        if m is None:
            continue
        t = report["training"].get(c.key, {})
        if m.get("status") != "completed":
            lines.append(f"| {c.key} | {c.varies} | {t.get('steps', '-')} | - | {m.get('status')} | | | | |")
            continue
        s, p = m["summary"], m.get("perplexity") or {}
        win = " **(shipped)**" if report["pick"].get("winner") == c.run else ""
        resumed = "*" if t.get("resumed_from") else ""
        lines.append(f"| {c.key}{win} | {c.varies} | {t.get('steps', '-')} | {f(t.get('train_seconds'), '.0f')}{resumed} | {f(p.get('perplexity'), '.2f')} | "
                     f"{f(s['coverage_mean'])} | {f(s['rouge_l_mean'])} | {f(s['ended_rate'], '.2f')} | {f(s['leak_rate'], '.2f')} |")
    lines += ["", f"Rule: {report['pick']['rule']}.", f"Winner: `{report['pick'].get('winner')}`.", "",
              "Training commands:", ""]
    for key, t in report["training"].items():
        lines += [f"- `{key}`: " + " && ".join(f"`python {c}`" for c in t.get("commands", []))]
    return "\n".join(lines) + "\n"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def gguf_sources(chosen: list[Candidate], root: Path, quant: str) -> list:
    """Export every trained candidate (tools/export_to_gguf.py, verification included) and the base to ``quant``;
    the base's F16 file comes from the first export, quantized here the same way."""
    from tools.export_to_gguf import quantize

    out_dir = root / "gguf_export"
    sources = []
    for c in chosen:
        adapter = root / "models" / c.run
        target = out_dir / f"{c.run}_{quant}.gguf"
        if (adapter / "adapter_model.safetensors").exists() and not target.exists():
            print(f"[eval_recipes] exporting {c.run} to {quant.upper()}", flush=True)
            subprocess.run([sys.executable, "tools/export_to_gguf.py", str(adapter), "--quants", quant, "--out_dir", str(out_dir)],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        sources.append(resolve_spec(str(target), root))
    base_f16 = out_dir / "smollm2-135m_base_f16.gguf"
    base = out_dir / f"smollm2-135m_base_{quant}.gguf"
    if base_f16.exists() and not base.exists():
        quantize(base_f16, base, quant)
    src = resolve_spec(str(base), root)
    src.label = f"smollm2-135m (base) · {quant.upper()}"
    return [src] + sources


def training_facts(root: Path, c: Candidate, trained_now: dict) -> dict:
    try:
        rec = json.loads((root / "models" / c.run / "run_record.json").read_text())
    except (OSError, ValueError):
        return {**trained_now, "status": trained_now.get("status", "missing")}
    return {**trained_now, "steps": rec.get("global_step"), "epochs": rec.get("epochs"), "train_seconds": rec.get("wall_seconds"),
            "final_train_loss": rec.get("final_train_loss"), "device": rec.get("resolved", {}).get("device"),
            "gpu": rec.get("hardware", {}).get("gpu"), "tokens_seen": rec.get("tokens_seen"),
            "resumed_from": rec.get("resolved", {}).get("resumed_from")}


def render(out: Path, root: Path) -> None:
    from labcore.records import write_report

    report = json.loads(out.read_text())
    for c in CANDIDATES:
        if c.key in report["training"]:
            report["training"][c.key] = training_facts(root, c, {k: v for k, v in report["training"][c.key].items() if k in ("key", "commands", "status")})
    report["pick"] = pick(report)
    write_report(out, report, markdown)
    print(f"[eval_recipes] winner: {report['pick'].get('winner')}; table {out.with_suffix('.md')}")


@dataclass
class Args(EvalArgs):
    only: str = field(default="", metadata={"help": f"comma-separated candidate keys (left out: all of {', '.join(BY_KEY)})"})
    train_flags: str = field(default="", metadata={"help": "extra flags for every training command, e.g. '--max_steps 2 --num_samples 32' "
                                                           "for a smoke test"})
    train_budget: float | None = field(default=None, metadata={"help": "seconds for all training; candidates still training then are "
                                                                       "stopped (left out: no limit)"})
    skip_training: bool = field(default=False, metadata={"help": "evaluate the adapters that exist; train nothing"})
    render_only: bool = field(default=False, metadata={"help": "re-read the run records and rewrite the report's training facts, pick and "
                                                               "table from the existing --out report; evaluate nothing"})
    backend: Literal["auto", "pytorch", "gguf"] = field(default="auto", metadata={
        "help": "auto: PyTorch on a CUDA GPU; elsewhere each candidate's GGUF export (llama.cpp generates ~10x faster on a CPU)"})
    quant: str = field(default="q8_0", metadata={"help": "with the gguf backend: the export evaluated, base and candidates alike"})

    def __post_init__(self):
        super().__post_init__()
        unknown = [k for k in self.candidates() if k not in BY_KEY]
        if unknown:
            raise ValueError(f"--only {self.only}: unknown candidate {', '.join(unknown)}; choose from {', '.join(BY_KEY)}")
        at_least(1, train_budget=self.train_budget)

    def candidates(self) -> list[str]:
        return [k.strip() for k in self.only.split(",") if k.strip()] or list(BY_KEY)


ARGS = Args(prompts="none", out=str(RESULTS / "eval_recipes.json"))


@cli_main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(ARGS, argv, __doc__)
    chosen = [BY_KEY[k] for k in args.candidates()]
    root = Path(args.root)
    if args.render_only:
        render(Path(args.out), root)
        return
    extra = shlex.split(args.train_flags)
    trained_now = {c.key: {"commands": [" ".join(a.replace(str(REPO) + "/", "") for a in cmd[1:]) for cmd in c.commands(str(root), extra)]}
                   for c in chosen}
    if not args.skip_training:
        from training.models import ModelUnavailable, resolve_model

        try:
            resolve_model("smollm2-135m")  # materialise the embedded model once, before the parallel runs
        except ModelUnavailable as e:
            print(f"[eval_recipes] {e}", file=sys.stderr)
        deadline = time.time() + args.train_budget if args.train_budget else None
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for r in pool.map(lambda c: train_candidate(c, root, extra, deadline), chosen):
                trained_now[r["key"]] = r
    backend = args.backend if args.backend != "auto" else ("pytorch" if _cuda() else "gguf")
    if backend == "gguf":
        sources = gguf_sources(chosen, root, args.quant)
    else:
        sources = [resolve_spec("base:smollm2-135m", root)] + [resolve_spec(c.run, root) for c in chosen]
    if all(s.missing for s in sources[1:]):
        raise EvalError("no candidate has an adapter: " + "; ".join(f"{s.label}: {s.missing}" for s in sources[1:]))

    def finish(report: dict) -> None:
        report["candidates"] = {c.key: {"run": c.run, "varies": c.varies, "method": c.method, "script": c.script,
                                        "flags": {**SHARED, **c.flags}, "stage1": c.stage1} for c in chosen}
        report["training"] = {c.key: training_facts(root, c, trained_now.get(c.key, {})) for c in chosen}
        report["pick"] = pick(report)

    out = Path(args.out)
    report = evaluate("eval_recipes", sources, args, argv, finish=finish)
    from labcore.records import write_report

    write_report(out, report, markdown)  # the recipe table replaces evaluate()'s generic one
    print(f"[eval_recipes] winner: {report['pick'].get('winner')}; table {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
