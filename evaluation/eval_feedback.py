"""Answer Feedback through the real app: does Iris ever call a plainly wrong answer correct?

Starts ``python iris/app.py`` in a subprocess (a free port, IRIS_N_THREADS=1, IRIS_HUB_MODELS="",
GRADIO_ANALYTICS_ENABLED=False) and sends every row of the hand-written probe ``data/feedback_probe.jsonl`` through the
app's API, ``Client(url).predict(model_key, question, answer, api_name="/feedback")``, exactly as a student's click does.

The probe holds ID2223 questions that match a course reference item, each with a right, a partly right and a plainly
wrong answer (labels "correct", "partly correct", "wrong"), plus questions no course item covers (label
"no reference": Iris must give no verdict). The verdict comes from the rubric of the matched item (iris/grounding.py),
not from the model, so a small --max_tokens_cap keeps the run fast without changing any verdict.

Reported: the confusion of labels against Iris's verdicts, the share of "wrong" answers called correct (issue 17
requires 0), accuracy per label, and the share of no-reference questions given no verdict (required: all).

    python evaluation/eval_feedback.py                                   # the app's default model, Iris's own settings
    python evaluation/eval_feedback.py --max_tokens_cap 64               # shorter explanations, same verdicts
    python evaluation/eval_feedback.py --model embedded:smollm2-135m --max_tokens_cap 8 --items 8   # a smoke run

Writes ``evaluation_results/eval_feedback.json`` (every row: question, answer, label, verdict, grounded, similarity,
found and missing key points, status, seconds; the command, CPU and model key) and ``eval_feedback.md`` beside it,
both atomically. Exits with status 1 when a requirement fails (a wrong answer called correct, or a verdict on a
no-reference question) or a call failed, after writing the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python evaluation/eval_feedback.py``
    sys.path.insert(0, str(REPO))

from evaluation.common import EvalError, at_least, cli_main, parse_args  # noqa: E402
from labcore.cli import count_or_all  # noqa: E402
from labcore.records import record_envelope, write_report  # noqa: E402

SCRIPT = "eval_feedback"
PROBE = REPO / "data" / "feedback_probe.jsonl"
DEFAULT_OUT = REPO / "evaluation_results" / "eval_feedback.json"
LABELS = ("correct", "partly correct", "wrong")
NO_REF = "no reference"
ALL_LABELS = (*LABELS, NO_REF)
VERDICTS = (*LABELS, None)  # None: Iris gave no verdict
ERROR = "error"  # the call failed: no verdict came back at all


# ---------------------------------------------------------------------------------------------------- probe
def load_probe(path: Path = PROBE) -> list[dict]:
    """The probe rows; each needs id, question, answer and one of ALL_LABELS as label (note is optional)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalError(f"cannot read the probe {path}: {e.strerror}") from None
    rows, seen = [], set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise EvalError(f"{path}:{n}: not JSON ({e})") from None
        missing = [k for k in ("id", "question", "answer", "label") if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise EvalError(f"{path}:{n}: missing or empty {', '.join(missing)}")
        if row["label"] not in ALL_LABELS:
            raise EvalError(f"{path}:{n}: label {row['label']!r} is not one of {', '.join(ALL_LABELS)}")
        if row["id"] in seen:
            raise EvalError(f"{path}:{n}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        rows.append(row)
    if not rows:
        raise EvalError(f"the probe {path} has no rows")
    return rows


def select(rows: list[dict], items: int | None) -> list[dict]:
    """The first ``items`` rows taken round-robin over the labels (correct, partly correct, wrong, no reference), each
    label's rows in file order, so a few items still mix every label. None: all rows, in file order."""
    if items is None or items >= len(rows):
        return list(rows)
    queues = [[r for r in rows if r["label"] == label] for label in ALL_LABELS]
    out = []
    while len(out) < items:
        for q in queues:
            if q and len(out) < items:
                out.append(q.pop(0))
    return out


# ------------------------------------------------------------------------------------------------------ app
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(cap: int | None) -> dict:
    """The app's environment: one thread, no hub models, and ``cap`` as IRIS_MAX_TOKENS_CAP (0, the app's "no cap", for None)."""
    return {"IRIS_N_THREADS": "1", "IRIS_HUB_MODELS": "", "IRIS_MAX_TOKENS_CAP": str(cap or 0)}


@contextlib.contextmanager
def running_app(env: dict, log: Path, startup_s: float = 300):
    """``python iris/app.py --port <free>`` the way a user starts it, with ``env`` added to the environment (offline, no
    analytics); yields its url once it answers, and stops it afterwards. The tests start the app with it too."""
    port = free_port()
    full_env = {"HF_HUB_OFFLINE": "1", **os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "iris" / "app.py"), "--port", str(port)], cwd=REPO, env=full_env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + startup_s
        while True:
            if proc.poll() is not None:
                raise EvalError(f"iris/app.py exited with {proc.returncode}:\n{_tail(log)}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise EvalError(f"iris/app.py did not answer on {url} within {startup_s:.0f} s:\n{_tail(log)}") from None
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def app_models(url: str) -> tuple[list[tuple[str, str]], str | None]:
    """The model dropdown's (label, key) choices and its default value, from the app's /config."""
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    for c in config.get("components", []):
        props = c.get("props", {})
        if props.get("elem_id") == "model":
            return [(str(label), str(key)) for label, key in props.get("choices", [])], props.get("value")
    raise EvalError(f"the app at {url} has no model dropdown (elem_id 'model') in its /config")


# ------------------------------------------------------------------------------------------------ grading
def grade_row(client, model: str, row: dict, timeout: float) -> dict:
    """One probe row through /feedback; the returned fields that matter, the seconds it took, or the error."""
    out = {k: row.get(k) for k in ("id", "question", "answer", "label", "note")}
    t = time.time()
    try:
        _markdown, data = client.submit(model, row["question"], row["answer"], api_name="/feedback").result(timeout=timeout)
    except Exception as e:  # noqa: BLE001 - an AppError, a timeout or a dropped connection: recorded, the run goes on
        out.update(verdict=ERROR, error=f"{type(e).__name__}: {e}"[:500], seconds=round(time.time() - t, 2))
        return out
    ref = data.get("reference") or {}
    out.update(verdict=data.get("verdict"), grounded=data.get("grounded"), similarity=data.get("similarity"),
               coverage=data.get("coverage"), found=data.get("found", []), missing=data.get("missing", []),
               reference_id=ref.get("id"), reference_question=ref.get("question"), status=data.get("status"),
               message=data.get("message"), feedback=data.get("feedback"), leak_flags=data.get("leak_flags", []),
               seconds=round(time.time() - t, 2))
    return out


def _share(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def summarize(rows: list[dict]) -> dict:
    """Confusion (label x verdict), the requirement counts and accuracy per label, from graded rows."""
    conf = {label: Counter() for label in ALL_LABELS}
    for r in rows:
        conf[r["label"]][r["verdict"] if r["verdict"] in VERDICTS else ERROR] += 1
    n = {label: sum(conf[label].values()) for label in ALL_LABELS}
    wrong_correct = conf["wrong"]["correct"]
    noref_none = conf[NO_REF][None]
    labelled = sum(n[label] for label in LABELS)
    hits = sum(conf[label][label] for label in LABELS)
    seconds = [r["seconds"] for r in rows if isinstance(r.get("seconds"), int | float)]
    errors = sum(1 for r in rows if r["verdict"] == ERROR)
    return {
        "rows": len(rows),
        "per_label": n,
        "confusion": {label: {("none" if v is None else v): conf[label][v] for v in (*VERDICTS, ERROR) if conf[label][v]}
                      for label in ALL_LABELS},
        "wrong_called_correct": wrong_correct,
        "wrong_called_correct_share": _share(wrong_correct, n["wrong"]),
        "no_reference_no_verdict": noref_none,
        "no_reference_no_verdict_share": _share(noref_none, n[NO_REF]),
        "accuracy": {label: _share(conf[label][label], n[label]) for label in LABELS},
        "accuracy_labelled": _share(hits, labelled),
        "labelled_grounded": sum(1 for r in rows if r["label"] in LABELS and r.get("grounded")),
        "errors": errors,
        "seconds": {"total": round(sum(seconds), 1), "mean": round(statistics.mean(seconds), 2) if seconds else None,
                    "median": round(statistics.median(seconds), 2) if seconds else None, "max": max(seconds) if seconds else None},
        "requirements_met": wrong_correct == 0 and noref_none == n[NO_REF] and errors == 0,
    }


# ------------------------------------------------------------------------------------------------- report
def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [
        "# Answer Feedback probe through the app's API",
        "",
        f"Command: `{' '.join(['python', 'evaluation/eval_feedback.py', *record['config']['argv']])}`  ",
        f"Model: `{record['model']}` ({record.get('model_label') or 'label unknown'}); IRIS_MAX_TOKENS_CAP={record['max_tokens_cap'] or 0} "
        f"({'Iris’s own settings' if not record['max_tokens_cap'] else 'explanations cut short; verdicts do not depend on the model'}); "
        f"IRIS_N_THREADS=1  ",
        f"CPU: {record['hardware']['cpu']} ({record['hardware']['cpu_count']} cores visible); finished {record['finished']}; {s['rows']} rows in "
        f"{record['wall_seconds']:.0f} s  ",
        f"Probe: `{record['probe']}` ({record['probe_rows']} rows{'; --items ' + str(record['items']) if record.get('items') else ''})",
        "",
        "## Requirements (issue 17)",
        "",
        "| Check | Result | Required |",
        "|---|---|---|",
        f"| Wrong answers called correct | {s['wrong_called_correct']} / {s['per_label']['wrong']} ({_pct(s['wrong_called_correct_share'])}) | 0 |",
        f"| No-reference questions given no verdict | {s['no_reference_no_verdict']} / {s['per_label'][NO_REF]} "
        f"({_pct(s['no_reference_no_verdict_share'])}) | all |",
        f"| Failed calls | {s['errors']} | 0 |",
        "",
        f"**{'PASS' if s['requirements_met'] else 'FAIL'}**",
        "",
        "## Confusion (rows: the probe's label; columns: Iris's verdict)",
        "",
        "| label \\ verdict | correct | partly correct | wrong | none | error | rows | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in ALL_LABELS:
        c = s["confusion"][label]
        acc = s["accuracy"].get(label) if label in LABELS else s["no_reference_no_verdict_share"]
        lines.append(f"| {label} | {c.get('correct', 0)} | {c.get('partly correct', 0)} | {c.get('wrong', 0)} | {c.get('none', 0)} | "
                     f"{c.get(ERROR, 0)} | {s['per_label'][label]} | {_pct(acc)} |")
    lines += [
        "",
        f"Accuracy on the labelled answers (correct, partly correct, wrong): {_pct(s['accuracy_labelled'])}; "
        f"{s['labelled_grounded']} of {sum(s['per_label'][lab] for lab in LABELS)} labelled answers were grounded in a course item.",
        f"Seconds per call: mean {s['seconds']['mean']}, median {s['seconds']['median']}, max {s['seconds']['max']}.",
        "",
        "## Answers whose verdict differs from the label",
        "",
        "| id | label | verdict | key points found | similarity | matched item |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        expected = None if r["label"] == NO_REF else r["label"]
        if r["verdict"] != expected:
            points = len(r.get("found") or []) + len(r.get("missing") or [])
            found = f"{len(r.get('found') or [])} / {points}" if points else "-"
            ref = (r.get("reference_question") or r.get("error") or "-").replace("|", "\\|")
            lines.append(f"| {r['id']} | {r['label']} | {r['verdict'] if r['verdict'] is not None else 'none'} | {found} | "
                         f"{r.get('similarity')} | {ref} |")
    lines += ["", "Each row's found and missing key points, status, message and the model's explanation are in the JSON beside this file.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- command line
@dataclass
class Args:
    model: str | None = field(default=None, metadata={
        "help": "model key from the app's dropdown, e.g. tuned:smollm2-135m-id2223 or embedded:smollm2-135m (left out: the app's "
                "default, IRIS_DEFAULT_MODEL or the first in its dropdown)"})
    max_tokens_cap: int | None = field(default=None, metadata={
        "help": "IRIS_MAX_TOKENS_CAP for the app: bounds the explanation's length (left out: Iris's own settings). The verdict comes "
                "from the course rubric, never from the model, so a small cap (8-64) gives the same verdicts faster"})
    items: int | None = field(default=None, metadata={"help": "probe rows to grade, taken round-robin over the labels so every label "
                                                               "appears (left out: all rows)"})
    probe: str = field(default=str(PROBE), metadata={"help": "the probe JSONL (fields: id, question, answer, label, note)"})
    out: str = field(default=str(DEFAULT_OUT), metadata={"help": "the JSON report; its Markdown report goes beside it (.md)"})
    timeout: float = field(default=900, metadata={"help": "seconds to wait for one /feedback call (a tuned model's first use exports "
                                                          "its GGUF once, about a minute or two)"})
    startup_timeout: float = field(default=300, metadata={"help": "seconds to wait for the app to answer after it starts"})

    def __post_init__(self):
        self.max_tokens_cap = count_or_all("max_tokens_cap", self.max_tokens_cap, "Iris's own settings")
        self.items = count_or_all("items", self.items)
        at_least(1, timeout=self.timeout, startup_timeout=self.startup_timeout)


ARGS = Args()


@cli_main
def main(argv: list[str] | None = None) -> dict:
    """Grade the probe through the app, write the report and return it (run as a script: exit status 1 when a requirement fails)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(ARGS, argv, __doc__)
    probe = load_probe(Path(args.probe))
    rows = select(probe, args.items)
    from gradio_client import Client

    t0 = time.time()
    graded = []
    env = app_env(args.max_tokens_cap)
    with tempfile.TemporaryDirectory(prefix="iris-eval-feedback-") as tmp:
        log = Path(tmp) / "iris.log"
        print(f"[{SCRIPT}] starting iris/app.py ({', '.join(f'{k}={v!r}' for k, v in env.items())}) ...", flush=True)
        with running_app(env, log, args.startup_timeout) as url:
            choices, default = app_models(url)
            keys = [key for _, key in choices]
            model = args.model or default or (keys[0] if keys else None)
            if model not in keys:
                raise EvalError(f"model {model!r} is not in the app's dropdown; choose one of: {', '.join(keys) or '(none)'}")
            label = dict((k, lab) for lab, k in choices).get(model)
            print(f"[{SCRIPT}] {url} up in {time.time() - t0:.0f} s; model {model} ({label}); grading {len(rows)} of {len(probe)} rows",
                  flush=True)
            client = Client(url, verbose=False)
            for i, row in enumerate(rows, start=1):
                r = grade_row(client, model, row, args.timeout)
                graded.append(r)
                verdict = "none" if r["verdict"] is None else r["verdict"]
                expected = "none" if row["label"] == NO_REF else row["label"]
                mark = "ok " if verdict == expected else "ER " if verdict == ERROR else ("!! " if (row["label"] == "wrong" and verdict == "correct")
                                                          or (row["label"] == NO_REF and verdict != "none") else "-- ")
                detail = r.get("error") or (f"{len(r['found'])}/{len(r['found']) + len(r['missing'])} key points, similarity {r['similarity']}"
                                            if r.get("grounded") else f"unverified, similarity {r.get('similarity')}")
                print(f"[{SCRIPT}] {i}/{len(rows)} {mark}{row['id']}: label {row['label']!r}, verdict {verdict!r} ({detail}) "
                      f"in {r['seconds']:.1f} s", flush=True)
        app_log_tail = _tail(log, 2000)
    summary = summarize(graded)
    record = record_envelope("eval", SCRIPT, {"argv": argv, "command": ["python", "evaluation/eval_feedback.py", *argv]})
    record.update({
        "status": "completed", "finished": datetime.now(UTC).isoformat(timespec="seconds"), "model": model, "model_label": label, "max_tokens_cap": args.max_tokens_cap, "items": args.items,
        "app_env": {**env, "GRADIO_ANALYTICS_ENABLED": "False"},
        "probe": os.path.relpath(args.probe, REPO) if Path(args.probe).resolve().is_relative_to(REPO) else args.probe,
        "probe_rows": len(probe), "wall_seconds": round(time.time() - t0, 1),
        "summary": summary, "rows": graded, "app_log_tail": app_log_tail,
    })
    md = write_report(Path(args.out), record, markdown)
    s = summary
    print(f"[{SCRIPT}] wrong answers called correct: {s['wrong_called_correct']} / {s['per_label']['wrong']}; no-reference questions "
          f"without a verdict: {s['no_reference_no_verdict']} / {s['per_label'][NO_REF]}; accuracy {_pct(s['accuracy_labelled'])}; "
          f"{'PASS' if s['requirements_met'] else 'FAIL'}", flush=True)
    print(f"[{SCRIPT}] report {args.out} and {md}", flush=True)
    return record


if __name__ == "__main__":
    sys.exit(0 if main()["summary"]["requirements_met"] else 1)
