"""Ship a trained adapter with the repository: copy models/<run>/ to adapters/<name>/ as one small bf16 PEFT file.

    python tools/ship_adapter.py recipe-e2 --name smollm2-135m-lora-exam     # what the shipped adapter was made with

A fresh clone then uses it with no training step: evaluation and export find ``adapters/<name>/`` by run name
(a local ``models/<name>/`` still wins), and Iris lists it as the tuned model and makes it its default.

The adapter weights are stored in bf16 (the merge into the fp32 base happens in fp32, so this halves the file for a
rounding of the LoRA factors); the run record travels with it, renamed to ``<name>`` with ``trained_as`` keeping the
original run name. The folder is written beside the target and renamed into place, so a killed copy leaves none.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labcore.io import atomic_path, write_json  # noqa: E402
from training.config import REPO, SHIPPED_ADAPTERS  # noqa: E402

MAX_MB = 25
FILES = ("adapter_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def ship(run: str, name: str, dest_root: Path = SHIPPED_ADAPTERS, root: Path = REPO) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(run) if Path(run).is_dir() else Path(root) / "models" / run
    if not (src / "adapter_model.safetensors").exists():
        raise SystemExit(f"error: {src} holds no adapter_model.safetensors: train the run first")
    record = json.loads((src / "run_record.json").read_text())
    if record.get("status") != "completed":
        raise SystemExit(f"error: {src}/run_record.json says status {record.get('status')!r}; ship only a completed run")
    dest = Path(dest_root) / name
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for f in FILES:
            if (src / f).exists():
                shutil.copy2(src / f, tmp / f)
        weights = load_file(src / "adapter_model.safetensors")
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        size_mb = (tmp / "adapter_model.safetensors").stat().st_size / 2**20
        if size_mb > MAX_MB:
            raise SystemExit(f"error: the adapter file is {size_mb:.1f} MB, over the {MAX_MB} MB a shipped adapter may take; use a lower rank")
        record.update(name=name, trained_as=record.get("name"), shipped={"from": str(src.relative_to(root)) if src.is_relative_to(root) else str(src),
                                                                          "weights_dtype": "bfloat16", "adapter_mb": round(size_mb, 2)})
        write_json(tmp / "run_record.json", record)
    print(f"[ship] {src} -> {dest} ({size_mb:.1f} MB adapter, trained on {record.get('hardware', {}).get('gpu') or 'CPU'})")
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained run name (models/<run>/) or an adapter folder")
    p.add_argument("--name", required=True, help="the shipped run name: adapters/<name>/")
    p.add_argument("--root", default=str(REPO), help="folder holding models/ (default: the repository)")
    args = p.parse_args(argv)
    ship(args.run, args.name, root=Path(args.root))


if __name__ == "__main__":
    main()
