"""Assemble the Iris Hugging Face Space: ``iris/`` and the shared ``labcore/`` package, the same files, in one folder.

The Space runs ``app.py`` from its folder's root, where ``labcore/`` sits beside the app's modules, so the deployed app
strips, detects and loads exactly as a local run does; nothing is a hand-kept copy.

    python tools/build_space.py build/space          # then: cd build/space && python app.py
    huggingface-cli upload <user>/<space> build/space . --repo-type space
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = {"iris": ".", "labcore": "labcore"}  # repository folder -> place in the Space
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def build(dest: Path) -> Path:
    """Write the Space into ``dest`` (replaced if it exists) and return it."""
    dest = Path(dest)
    if dest.resolve() in (REPO, REPO / "iris", REPO / "labcore") or REPO.resolve().is_relative_to(dest.resolve()):
        raise SystemExit(f"error: {dest} would overwrite the repository; pass an empty or new folder")
    if dest.exists():
        shutil.rmtree(dest)
    for src, where in PARTS.items():
        shutil.copytree(REPO / src, dest / where, ignore=SKIP, dirs_exist_ok=True)
    (dest / "__init__.py").unlink(missing_ok=True)  # the Space root is not a package
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", type=Path, help="folder to write the Space into (replaced if it exists)")
    out = build(p.parse_args(argv).dest)
    files = sorted(f.relative_to(out) for f in out.rglob("*") if f.is_file())
    print(f"[space] {len(files)} files -> {out}: {', '.join(map(str, files))}")


if __name__ == "__main__":
    main()
