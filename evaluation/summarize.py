"""Build evaluation_results/summary.md with tables and PNG plots from the JSON reports alone.

    python evaluation/summarize.py
    python evaluation/summarize.py --results_dir /tmp/results --logs_dir /tmp/root/training_logs

Reads every JSON file in the results folder and summarizes each answer-quality report among them (those of
``eval_models.py``, ``eval_domain.py``, ``eval_pytorch_vs_gguf.py`` and ``eval_recipes.py``, whatever the file is
called: ``eval_shipped.json``, ``demo_eval_domain.json``), one section per file, labelled by its file name; the other
files (Iris's task and feedback reports, the benchmark, data reports) are listed with the reason they are left out.
Also reads the per-step training logs (``training_logs/*.jsonl``). Writes ``summary.md``, ``<report file>.png``
(quality vs decode speed, bubble area = peak RSS, per model and format) and ``training_loss.png``. Nothing is
re-measured: rerun the evaluation scripts to refresh the numbers.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.common import REPO, parse_args  # noqa: E402

EVALUATIONS = ("eval_models", "eval_domain", "eval_pytorch_vs_gguf")


def fmt(x, spec=".3f", dash="-") -> str:
    if x is None:
        return dash
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec)


def command_line(rep: dict) -> str:
    """The command that wrote a report, from the arguments it recorded (paths inside the repository made relative)."""
    base = f"python evaluation/{rep.get('name')}.py"
    argv = (rep.get("config") or {}).get("argv")
    if argv is None:
        return base
    return " ".join([base, *(shlex.quote(a.replace(str(REPO) + "/", "")) for a in argv)])


def skip_reason(rep, path: Path) -> str | None:
    """Why a JSON file is not summarized here (None: it is an answer-quality report)."""
    table = path.with_suffix(".md")
    own = f"; its own table is {table.name}" if table.exists() else ""
    if not isinstance(rep, dict) or rep.get("kind") != "eval":
        kind = rep.get("kind") if isinstance(rep, dict) else None
        return (f"a {kind} report, not an evaluation" if kind else "not an evaluation report (no kind 'eval')") + own
    models = rep.get("models")
    if not models or "items" not in rep or any("summary" not in m for m in models if m.get("status") == "completed"):
        return f"a report of {rep.get('name')}.py, which measures something other than answer quality" + own
    return None


def load_reports(folder: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """The answer-quality reports among the JSON files in ``folder`` (each with its file name as ``_file``), and
    (file name, why) for every other JSON file."""
    reports, skipped = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            skipped.append((path.name, f"unreadable: {e}"))
            continue
        why = skip_reason(rep, path)
        if why:
            skipped.append((path.name, why))
            continue
        rep["_file"] = path.name
        reports.append(rep)
    return reports, skipped


def model_format(m: dict) -> str:
    src = m.get("source") or {}
    if src.get("format") == "gguf":
        return f"GGUF {src.get('quant') or '?'}"
    if src.get("adapter_dir"):
        return f"PyTorch + {src.get('method') or 'LoRA'} adapter" + (" (merged)" if m.get("merged_adapter") else "")
    return "PyTorch"


def model_table(rep: dict) -> list[str]:
    lines = ["| model | format | perplexity | coverage | ROUGE-L | leak rate | ended | TTFT s | decode tok/s | e2e s | peak RSS MB | model RSS MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in rep["models"]:
        if m.get("status") != "completed":
            why = m.get("message") or m.get("error") or m.get("status")
            cmd = f" (`{m['command']}`)" if m.get("command") else ""
            lines.append(f"| {m['label']} | {m.get('status')}: {why}{cmd} | | | | | | | | | | |")
            continue
        s, p, mem = m["summary"], m.get("perplexity") or {}, m.get("memory") or {}
        lines.append(f"| {m['label']} | {model_format(m)} | {fmt(p.get('perplexity'), '.2f')} | {fmt(s['coverage_mean'])} | {fmt(s['rouge_l_mean'])} "
                     f"| {fmt(s['leak_rate'], '.2f')} | {fmt(s['ended_rate'], '.2f')} | {fmt(s['ttft_s_mean'], '.2f')} | {fmt(s['decode_tps_mean'], '.1f')} "
                     f"| {fmt(s['e2e_s_mean'], '.1f')} | {fmt(mem.get('peak_rss_mb'), '.0f')} | {fmt(mem.get('model_rss_mb'), '.0f')} |")
    return lines


def comparison_table(rep: dict) -> list[str]:
    comp = rep.get("comparison") or {}
    if not comp.get("rows"):
        return []
    lines = [f"Against **{comp['reference']}**:", "",
             "| model | perplexity delta | coverage delta | ROUGE-L delta | decode speed ratio | e2e speedup | TTFT speedup | peak RSS ratio | identical answers |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in comp["rows"]:
        lines.append(f"| {r['label']} | {fmt(r['perplexity_delta'], '+.3f')} | {fmt(r['coverage_delta'], '+.3f')} | {fmt(r['rouge_l_delta'], '+.3f')} "
                     f"| {fmt(r['decode_speed_ratio'], '.2f')}x | {fmt(r['e2e_speedup'], '.2f')}x | {fmt(r['ttft_speedup'], '.2f')}x "
                     f"| {fmt(r['peak_rss_ratio'], '.2f')} | {fmt(r['identical_answers'], '.2f')} |")
    return lines


def provenance_line(rep: dict) -> str:
    hw, gen, items = rep.get("hardware") or {}, rep.get("generation") or {}, rep.get("items") or {}
    threads = {m.get("threads") for m in rep["models"] if m.get("threads")}
    load = rep.get("load_average")
    return (f"{rep.get('created')}, commit `{rep.get('git_commit')}`, {hw.get('cpu_model') or hw.get('cpu')} x{hw.get('cpu_count')}"
            f"{', GPU ' + hw['gpu'] if hw.get('gpu') else ''}, threads {', '.join(map(str, sorted(threads))) or '-'}, "
            f"load average at start {fmt(load[0] if load else None, '.2f')}; {gen.get('mode')} decoding, max {gen.get('max_new_tokens')} new tokens; "
            f"{items.get('test_items')} held-out test items + {items.get('prompt_items')} '{items.get('prompt_list')}' prompts; "
            f"wall {fmt(rep.get('wall_seconds'), '.0f')} s.")


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_report(rep: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [m for m in rep["models"] if m.get("status") == "completed"]
    if not done:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("perplexity", "held-out perplexity (lower is better)", lambda m: (m.get("perplexity") or {}).get("perplexity")),
              ("coverage", "key-concept coverage (higher is better)", lambda m: m["summary"]["coverage_mean"]))
    for ax, (_, ylabel, get) in zip(axes, panels):
        for i, m in enumerate(done):
            x, y = m["summary"]["decode_tps_mean"], get(m)
            if x is None or y is None:
                continue
            rss = (m.get("memory") or {}).get("peak_rss_mb") or 100
            ax.scatter([x], [y], s=rss / 4, alpha=0.55, color=f"C{i}", label=f"{m['label']} ({model_format(m)}, {rss:.0f} MB)")
            ax.annotate(m["label"], (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("decode tokens/s (mean per answer)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best", title="bubble area = peak RSS", title_fontsize=7)
    fig.suptitle(f"{rep['name']}: quality vs speed vs memory")
    _save(fig, path)
    plt.close(fig)
    return True


def load_training_logs(folder: Path) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    for path in sorted(folder.glob("*.jsonl")):
        points = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "log" and "loss" in rec:
                points.append((rec["step"], rec["loss"]))
        if points:
            curves[path.stem] = points
    return curves


def plot_training(curves: dict, path: Path) -> bool:
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("training loss per run (training_logs/*.jsonl)")
    _save(fig, path)
    plt.close(fig)
    return True


def build(results: Path, logs: Path, out: Path) -> str:
    reports, skipped = load_reports(results)
    lines = ["# Evaluation summary", "",
             "Generated by `python evaluation/summarize.py` from the JSON reports in this folder; rerun the evaluation scripts to "
             "refresh them. Perplexity: held-out exam test split, assistant tokens only, same token ids in PyTorch and GGUF. "
             "Coverage and ROUGE-L: answers to the held-out test questions against their key concepts and reference answers. "
             "Speeds are means per answer on a shared machine: compare ratios within one report, not across reports.", ""]
    if not reports:
        lines += ["No evaluation reports yet. Run:", ""] + [f"    python evaluation/{name}.py" for name in EVALUATIONS] + [""]
    for rep in reports:
        name = rep["_file"]
        lines += [f"## {name}", "", f"`{command_line(rep)}` -> `{name}`; {provenance_line(rep)}", ""]
        lines += model_table(rep) + [""]
        comp = comparison_table(rep)
        if comp:
            lines += comp + [""]
        for label, v in (rep.get("verdict") or {}).items():
            lines.append(f"- {label}: coverage above base: {fmt(v['coverage_above_base'])}; perplexity below base: {fmt(v['perplexity_below_base'])}")
        if rep.get("verdict"):
            lines.append("")
        notes = {n for m in rep["models"] for n in (m.get("source") or {}).get("notes", [])}
        lines += [f"- note: {n}" for n in sorted(notes)] + ([""] if notes else [])
        png = out.parent / f"{name.removesuffix('.json')}.png"
        if plot_report(rep, png):
            lines += [f"![{name}]({png.name})", ""]
    curves = load_training_logs(logs)
    if plot_training(curves, out.parent / "training_loss.png"):
        lines += ["## Training loss", "", "![training loss](training_loss.png)", "",
                  "| run | steps logged | first loss | last loss |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {n} | {len(p)} | {p[0][1]:.3f} | {p[-1][1]:.3f} |" for n, p in curves.items()] + [""]
    if skipped:
        lines += ["## Not summarized here", ""] + [f"- `{name}`: {why}" for name, why in skipped] + [""]
    for name, why in skipped:
        print(f"[summarize] skipped {name}: {why}")
    text = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return text


@dataclass
class Args:
    results_dir: str = field(default=str(REPO / "evaluation_results"), metadata={"help": "folder of the JSON reports"})
    logs_dir: str = field(default=str(REPO / "training_logs"), metadata={"help": "folder of the training *.jsonl logs"})
    out: str | None = field(default=None, metadata={"help": "the summary (left out: <results_dir>/summary.md)"})


ARGS = Args()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(ARGS, argv, __doc__)
    results = Path(args.results_dir)
    out = Path(args.out) if args.out else results / "summary.md"
    build(results, Path(args.logs_dir), out)
    print(f"[summarize] {out}")


if __name__ == "__main__":
    main()
