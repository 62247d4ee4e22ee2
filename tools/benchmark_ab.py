"""Did a change make CPU training slower? tools/benchmark.py's training rows at another commit and here, side by side.

    python tools/benchmark_ab.py --base baeb032                      # every CPU training row, 3 interleaved repeats
    python tools/benchmark_ab.py --base HEAD~3 --configs default,qlora --reps 5 --out /tmp/ab.json

The base commit is checked out into a temporary git worktree. Each configuration then runs at the base and in this
working tree back to back, each in its own process (tools/benchmark.py's training worker, same steps, threads, batch
and model), ``--reps`` times, so both sides share the machine's load. The table gives the median tokens/s, step time
and peak RSS per side and their ratio (here over base), and the loss after K steps: a change that is not meant to
change the numbers must leave it identical. Machines here are shared and noisy: read ratios within a few percent as
unchanged, and rerun with more --reps before believing a small one.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# One training row in the tree it runs in (the worker of that tree's tools/benchmark.py): its result as one JSON line.
ROW = """
import json, sys
sys.path.insert(0, "tools")
import benchmark as B
cfg = B.BenchConfig(steps=int(sys.argv[3]), warmup=1, threads=int(sys.argv[4])).resolved()
print("ROW " + json.dumps(B.spawn("train", B.train_job(cfg, sys.argv[1], sys.argv[2]), sys.argv[1])))
"""
KEEP = ("tokens_per_s", "step_p50_s", "peak_rss_mb", "loss_after_k_steps")


@dataclass
class ABConfig:
    base: str = field(default="", metadata={"help": "the commit to compare with (a hash, tag or HEAD~n); required"})
    configs: str = field(default="naive,default,lora_ckpt,qlora,dropout_005", metadata={"help": "comma-separated rows of tools/benchmark.py"})
    reps: int = field(default=3, metadata={"help": "interleaved repeats of each row on each side (medians)"})
    steps: int = field(default=3, metadata={"help": "measured training steps per row (one warm-up step more)"})
    threads: int | None = field(default=None, metadata={"help": "threads of every row; unset: the thread rule's count now"})
    out: str | None = field(default=None, metadata={"help": "also write the rows and the table as JSON here"})


def summarize(rows: list[dict]) -> list[dict]:
    """Per configuration: each side's medians and the ratios here/base (tokens/s, step time, RSS), and the losses."""
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        side = {s: [r for r in rows if r["config"] == config and r["side"] == s] for s in ("base", "here")}
        if not all(side.values()):
            continue
        med = {s: {k: statistics.median(r[k] for r in side[s]) for k in KEEP[:3]} for s in side}
        out.append({"config": config, "reps": min(len(v) for v in side.values()), **{f"{s}_{k}": v for s in med for k, v in med[s].items()},
                    "tokens_per_s_ratio": med["here"]["tokens_per_s"] / med["base"]["tokens_per_s"],
                    "step_p50_s_ratio": med["here"]["step_p50_s"] / med["base"]["step_p50_s"],
                    "peak_rss_ratio": med["here"]["peak_rss_mb"] / med["base"]["peak_rss_mb"],
                    "losses": sorted({round(r["loss_after_k_steps"], 6) for r in side["base"] + side["here"]})})
    return out


def markdown(table: list[dict], base: str, here: str, cpu: str) -> str:
    lines = [f"CPU training rows of tools/benchmark.py: `{base}` (base) against `{here}` (here), on {cpu}; medians of each side.", "",
             "| row | reps | base tok/s | here tok/s | here / base | base step s | here step s | base RSS MB | here RSS MB | loss after K (all runs) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {t['config']} | {t['reps']} | {t['base_tokens_per_s']:.0f} | {t['here_tokens_per_s']:.0f} | {t['tokens_per_s_ratio']:.2f} | "
              f"{t['base_step_p50_s']:.2f} | {t['here_step_p50_s']:.2f} | {t['base_peak_rss_mb']:.0f} | {t['here_peak_rss_mb']:.0f} | "
              f"{', '.join(f'{x:.4f}' for x in t['losses'])} |" for t in table]
    return "\n".join(lines) + "\n"


def git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: git {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def run_row(tree: Path, config: str, model: str, steps: int, threads: int) -> dict:
    r = subprocess.run([sys.executable, "-c", ROW, config, model, str(steps), str(threads)], cwd=tree, capture_output=True, text=True)
    line = next((x for x in r.stdout.splitlines() if x.startswith("ROW ")), None)
    if line is None:
        raise SystemExit(f"error: row {config} failed in {tree}:\n" + "\n".join((r.stderr or r.stdout).strip().splitlines()[-8:]))
    return {k: v for k, v in json.loads(line[4:]).items() if k in KEEP}


def main(argv: list[str] | None = None) -> int:
    from labcore.cli import parse
    from labcore.hardware import cpu_flags, cpu_model
    from labcore.threads import torch_threads

    cfg = parse(ABConfig(), argv, description=__doc__.split("\n\n")[0])
    if not cfg.base:
        raise SystemExit("error: --base is required: the commit to compare with, e.g. --base HEAD~1")
    sys.path.insert(0, str(REPO / "tools"))
    from benchmark import CONFIGS

    configs = [c.strip() for c in cfg.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs or cfg.reps < 1 or cfg.steps < 1:
        raise SystemExit(f"error: --configs takes rows of tools/benchmark.py ({', '.join(CONFIGS)}), not {unknown or 'nothing'}; "
                         "--reps and --steps take 1 or more")
    base = git("rev-parse", "--short", f"{cfg.base}^{{commit}}")
    here = git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    from training.models import materialize_embedded

    model, threads = str(materialize_embedded()), cfg.threads or torch_threads()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        tree = Path(tmp) / "base"
        git("worktree", "add", "--detach", str(tree), base)
        try:
            for rep in range(cfg.reps):
                for config in configs:
                    for side, where in (("base", tree), ("here", REPO)):
                        rows.append({"rep": rep, "config": config, "side": side, **run_row(where, config, model, cfg.steps, threads)})
                        print(f"[benchmark_ab] {rep + 1}/{cfg.reps} {config} {side}: {rows[-1]['tokens_per_s']:.0f} tok/s", flush=True)
        finally:
            git("worktree", "remove", "--force", str(tree))
    table = summarize(rows)
    md = markdown(table, base, here, f"{cpu_model()} ({'AMX' if 'amx_bf16' in cpu_flags() else 'no AMX'}, {threads} threads)")
    print(md)
    if cfg.out:
        from labcore.io import write_json
        from labcore.records import record_envelope

        write_json(Path(cfg.out), {**record_envelope("benchmark", "benchmark_ab", {**vars(cfg), "threads": threads}),
                                   "status": "completed", "base": base, "here": here, "rows": rows, "table": table, "markdown": md})
    return 0


if __name__ == "__main__":
    sys.exit(main())
