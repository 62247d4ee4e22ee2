"""The envelope every record shares (training runs, evaluations, exports, benchmarks) and report writing."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from labcore.hardware import hardware
from labcore.io import write_json, write_text

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate", "llama-cpp-python")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> str | None:
    """HEAD, with ``-dirty`` when tracked files changed; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def record_envelope(kind: str, name: str, config: dict) -> dict:
    """The envelope shared by training, evaluation, export and benchmark records."""
    return {
        "kind": kind,
        "name": name,
        "status": "running",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": package_versions(),
        "git_commit": git_commit(),
        "hardware": hardware(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def write_report(out: Path, record: dict, markdown) -> Path:
    """An evaluation report: the JSON record and, beside it, the Markdown that ``markdown(record)`` renders; both atomic."""
    out = Path(out)
    md = out.with_suffix(".md")
    record["markdown"] = str(md)
    write_json(out, record)
    write_text(md, markdown(record))
    return md
