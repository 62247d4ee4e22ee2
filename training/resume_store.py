"""Resume state that outlives ``checkpoints/``: the newest checkpoint of a run, snapshotted into the local git repository.

``checkpoints/`` is git-ignored and does not survive from one working session to the next; the repository's ``.git``
does. After every checkpoint the Trainer writes, ``save`` stores that checkpoint folder (adapter, optimizer,
scheduler, trainer state, RNG states, ...) as one parentless commit on ``refs/peftlab/resume/<run>``, a ref outside
branches and tags:

* ``git clone`` and ``git fetch`` copy only branches and tags, so no clone ever downloads a snapshot (``git push
  --mirror`` or an explicit ``refs/*`` refspec would);
* the branch, HEAD, the user's index and working tree are never touched: the tree is built in a temporary index file
  with plumbing commands (hash-object, update-index, write-tree, commit-tree, update-ref), which run no hooks;
* each save replaces the previous snapshot of the run, which becomes unreachable: ``git gc`` deletes it after
  gc.pruneExpire (two weeks by default).

``--resume`` with no complete checkpoint in the checkpoint folder calls ``restore``, which writes the snapshot back
to ``<checkpoint_dir>/checkpoint-<step>`` (into a temporary folder first, renamed into place when complete).

    python -m training.resume_store list            runs with a snapshot: step, size, date
    python -m training.resume_store drop <run>      delete a run's snapshot (its ref)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REF_PREFIX = "refs/peftlab/resume/"
MODES = ("auto", "git", "none")
IDENTITY = {"GIT_AUTHOR_NAME": "peftlab resume store", "GIT_AUTHOR_EMAIL": "peftlab@localhost",
            "GIT_COMMITTER_NAME": "peftlab resume store", "GIT_COMMITTER_EMAIL": "peftlab@localhost"}
# Variables that would point git somewhere other than the repository around ``root``, or at the user's index.
_FOREIGN = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")


class StoreError(RuntimeError):
    """A snapshot could not be saved, read or restored."""


def _git(root, *args: str, env: dict | None = None, input: bytes | None = None, stdout=subprocess.PIPE, check: bool = True):
    base = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
    try:
        proc = subprocess.run(["git", "-C", str(_existing(root)), *args], input=input, stdout=stdout,
                              stderr=subprocess.PIPE, env={**base, **(env or {})})
    except OSError as e:
        raise StoreError(f"git is not available: {e}") from e
    if check and proc.returncode != 0:
        raise StoreError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip() or f'exit {proc.returncode}'}")
    return proc


def _out(root, *args: str, **kw) -> str:
    return _git(root, *args, **kw).stdout.decode().strip()


def _existing(root) -> Path:
    """``root`` or its nearest existing parent (a run's root may not exist yet)."""
    path = Path(root).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# ------------------------------------------------------------------------------------------------- where
def available(root) -> bool:
    """``root`` lies inside a git work tree (and git runs)."""
    try:
        return _git(root, "rev-parse", "--is-inside-work-tree", check=False).stdout.decode().strip() == "true"
    except StoreError:
        return False


def enabled(mode: str, root) -> bool:
    """TrainConfig.resume_store: auto (git when ``root`` is inside a git work tree), git (required) or none."""
    if mode not in MODES:
        raise StoreError(f"resume_store must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "git" and not available(root):
        raise StoreError(f"resume_store=git, but {root} is not inside a git work tree")
    return mode == "git" or (mode == "auto" and available(root))


def ref_name(run: str) -> str:
    ref = REF_PREFIX + run
    if not run or "/" in run or subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode != 0:
        raise StoreError(f"run name {run!r} cannot name a git ref")
    return ref


def label(info: dict) -> str:
    """How a run record names a snapshot: ``git:refs/peftlab/resume/<run>@<short sha>``."""
    return f"git:{info['ref']}@{info['sha'][:10]}"


# ------------------------------------------------------------------------------------------------- save
def checkpoint_step(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    if m:
        return int(m.group(1))
    import json

    try:
        return int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: neither named checkpoint-<step> nor holding a trainer_state.json with global_step") from e


def save(root, run: str, checkpoint_path, required: tuple[str, ...] = ()) -> str:
    """Snapshot every file under ``checkpoint_path`` as a parentless commit on ``refs/peftlab/resume/<run>``,
    replacing the previous one; returns the commit's sha. ``required``: files that must exist (non-empty) first."""
    path = Path(checkpoint_path).absolute()
    ref = ref_name(run)
    if not path.is_dir():
        raise StoreError(f"{path} is not a folder")
    missing = [f for f in required if not (path / f).is_file() or (path / f).stat().st_size == 0]
    if missing:
        raise StoreError(f"{path} is incomplete (missing {', '.join(missing)})")
    step = checkpoint_step(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise StoreError(f"{path} holds no files")
    names = [p.relative_to(path).as_posix() for p in files]
    if any("\n" in n or "\0" in n for n in names):
        raise StoreError(f"{path}: a file name holds a newline")

    # Raw bytes (--no-filters: no LFS/CRLF filter from .gitattributes), into a temporary index, never the user's.
    # Checkpoint tensors barely compress: a low zlib level saves most of the time at almost no cost in size.
    shas = _out(root, "-c", "core.looseCompression=1", "hash-object", "-w", "--no-filters", "--stdin-paths",
                input="".join(f"{p}\n" for p in files).encode()).split()
    if len(shas) != len(files):
        raise StoreError(f"git hash-object returned {len(shas)} ids for {len(files)} files")
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with tempfile.TemporaryDirectory(prefix="peftlab-resume-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        entries = "".join(f"100644 blob {sha}\t{name}\0" for sha, name in zip(shas, names, strict=True))
        _git(root, "update-index", "-z", "--index-info", env=env, input=entries.encode())
        tree = _out(root, "write-tree", env=env)
    message = (f"peftlab resume snapshot: {run} at step {step}\n\n"
               f"run: {run}\nstep: {step}\ncheckpoint: {path}\ncreated: {created}\n")
    commit = _out(root, "commit-tree", "--no-gpg-sign", tree, "-m", message, env=IDENTITY)
    _git(root, "update-ref", "-m", f"peftlab resume snapshot {run} step {step}", ref, commit)
    return commit


# ------------------------------------------------------------------------------------------------- read
def _tree(root, sha: str) -> list[tuple[str, str, int]]:
    """(path, blob sha, size) of every file in the snapshot."""
    out = _git(root, "ls-tree", "-r", "-l", "-z", sha).stdout.decode()
    files = []
    for entry in filter(None, out.split("\0")):
        meta, name = entry.split("\t", 1)
        _mode, kind, blob, size = meta.split()
        if kind == "blob":
            files.append((name, blob, int(size)))
    return files


def latest(root, run: str) -> dict | None:
    """The run's snapshot: run, ref, sha, step, created, files, size (bytes); None when it has none."""
    ref = ref_name(run)
    proc = _git(root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    if proc.returncode != 0:
        return None
    sha = proc.stdout.decode().strip()
    body = _out(root, "cat-file", "commit", sha)
    fields = dict(re.findall(r"^(run|step|created|checkpoint): (.*)$", body, flags=re.M))
    if "step" not in fields or not fields["step"].isdigit():
        raise StoreError(f"{ref} ({sha[:10]}) is not a resume snapshot (no step in its message)")
    files = _tree(root, sha)
    return {"run": run, "ref": ref, "sha": sha, "step": int(fields["step"]), "created": fields.get("created"),
            "source": fields.get("checkpoint"), "files": len(files), "size": sum(s for _, _, s in files)}


def runs(root) -> list[dict]:
    """Every run with a snapshot in the repository around ``root``."""
    refs = _out(root, "for-each-ref", "--format=%(refname)", REF_PREFIX).split()
    return [info for ref in refs if (info := latest(root, ref.removeprefix(REF_PREFIX)))]


def _holds(folder: Path, files: list[tuple[str, str, int]]) -> bool:
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, _, size in files)


def restore(root, run: str, checkpoint_dir) -> Path | None:
    """Write the run's snapshot to ``<checkpoint_dir>/checkpoint-<step>`` (complete or not at all: staged in a
    temporary folder, renamed into place); the path, or None when the run has no snapshot. Never overwrites: a folder
    already there is accepted only when it holds every file of the snapshot at its size (a concurrent restore, e.g.
    another DDP rank), else StoreError."""
    info = latest(root, run)
    if info is None:
        return None
    checkpoint_dir = Path(checkpoint_dir)
    target = checkpoint_dir / f"checkpoint-{info['step']}"
    files = _tree(root, info["sha"])

    def existing() -> Path:
        if _holds(target, files):
            return target
        raise StoreError(f"{target} exists already and differs from the snapshot {label(info)}: not overwritten")

    if target.exists():
        return existing()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.restore-", dir=checkpoint_dir) as tmp:
        staged = Path(tmp) / target.name
        for name, blob, size in files:
            dest = staged / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f:
                _git(root, "cat-file", "blob", blob, stdout=f)
            if dest.stat().st_size != size:
                raise StoreError(f"{label(info)}: {name} restored with {dest.stat().st_size} bytes, expected {size}")
        try:
            os.replace(staged, target)
        except OSError:  # another process renamed its copy into place first
            return existing()
    return target


def drop(root, run: str) -> bool:
    """Delete the run's snapshot ref; False when there was none. Its objects go at the next ``git gc`` (after
    gc.pruneExpire)."""
    ref = ref_name(run)
    if _git(root, "rev-parse", "--verify", "-q", ref, check=False).returncode != 0:
        return False
    _git(root, "update-ref", "-d", ref)
    return True


# ------------------------------------------------------------------------------------------------- command line
def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main(argv: list[str] | None = None) -> int:
    from training.config import REPO

    parser = argparse.ArgumentParser(
        prog="python -m training.resume_store", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Training resume state kept in the local git repository, so that a run continues in a later working "
            "session although checkpoints/ (git-ignored) is gone.\n\n"
            f"After each checkpoint, training stores it as one commit on {REF_PREFIX}<run> in this repository's .git "
            "(outside branches and tags; the branch, index and working tree are never touched); `--resume` restores "
            "it when the checkpoint folder has no complete checkpoint. Each save replaces the run's previous snapshot; "
            "replaced snapshots are unreachable objects that `git gc` deletes after gc.pruneExpire (2 weeks by default).\n\n"
            "Clones do not carry this state: `git clone` and `git fetch` copy only branches and tags, so it lives in "
            "this .git alone (copy the folder, or push the ref explicitly, to move it). Turn it off with "
            "--resume_store none on a training script."
        ))
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--root", default=str(REPO), help="a folder inside the git work tree (default: this repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[where], help="runs with a snapshot: step, size, date, commit")
    p_drop = sub.add_parser("drop", parents=[where], help="delete a run's snapshot")
    p_drop.add_argument("run")
    args = parser.parse_args(argv)
    if not available(args.root):
        print(f"error: {args.root} is not inside a git work tree", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            found = runs(args.root)
            if not found:
                print(f"no resume snapshots ({REF_PREFIX}*) in {_out(args.root, 'rev-parse', '--absolute-git-dir')}")
            width = max((len(i["run"]) for i in found), default=0)
            for i in found:
                print(f"{i['run']:<{width}}  step {i['step']:>7}  {_size(i['size']):>9}  {i['created'] or '?'}  {i['sha'][:10]}")
        elif args.command == "drop":
            if not drop(args.root, args.run):
                print(f"error: no snapshot of {args.run!r} ({REF_PREFIX}{args.run})", file=sys.stderr)
                return 1
            print(f"dropped {REF_PREFIX}{args.run}")
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
