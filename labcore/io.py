"""Atomic writes and file hashes.

Every file the project writes for someone else to read (records, reports, manifests, caches, data) goes through
``atomic_path``: the writer fills a temporary sibling and it is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path


def temp_sibling(path: Path, suffix: str = "") -> Path:
    """A hidden temporary name beside ``path``, unique to this process (``suffix`` keeps an extension tools need)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries (``temp_sibling`` names) in ``folder`` whose writing process is gone: a killed writer's."""
    for p in Path(folder).glob(".*.tmp-*"):
        pid = re.search(r"\.tmp-(\d+)", p.name)
        if pid and not Path(f"/proc/{pid[1]}").exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ""):
    """Yield a temporary path to write; on success it replaces ``path`` (file or folder), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, suffix)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def replace(src: Path, dest: Path) -> None:
    """Move ``src`` onto ``dest``; a folder already at ``dest`` is swapped out first and then removed."""
    src, dest = Path(src), Path(dest)
    old = None
    if dest.is_dir():
        old = temp_sibling(dest, ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """Atomic: a reader never sees a half-written file."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=str))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_sha256(path: Path, cache_file: Path | None = None) -> str | None:
    """sha256 of a file (None when it is not one), cached by path, size and modification time, so model files are
    hashed once. The cache is ``$PEFTLAB_CACHE/sha256.json`` unless given."""
    path = Path(path)
    if not path.is_file():
        return None
    cache_file = Path(cache_file or default_cache_dir() / "sha256.json")
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = sha256_file(path)
        with contextlib.suppress(OSError):
            write_json(cache_file, cache, indent=1)
    return cache[key]


def default_cache_dir() -> Path:
    """``$PEFTLAB_CACHE``, else ``.cache`` in the repository (or in the Space's folder)."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path(__file__).resolve().parent.parent / ".cache"))
