"""The Iris Space as ``tools/build_space.py`` assembles it: the app and the shared labcore package in one folder, run
without the rest of the repository (no training/, evaluation/ or tools/ on the path), answering with the same code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.build_space import build

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, os, sys
repo = os.path.realpath(sys.argv[1])
sys.path = [os.getcwd()] + [p for p in sys.path if p and os.path.realpath(p) not in (repo, os.path.realpath(os.getcwd()))]
os.environ["IRIS_ADAPTER_DIR"] = os.path.join(os.getcwd(), "no-adapters")
import app, logic, models
import labcore.text
entries = models.registry()
llm = models._load(models.resolve(entries[models.EMBEDDED_KEY]), 256)
out = llm.create_chat_completion([{"role": "user", "content": "What is LoRA?"}], max_tokens=8, temperature=0)
text, flags = logic.clean_output("Briefly explain LoRA. Include an example. Relate it to exams. " + out["choices"][0]["message"]["content"])
print(json.dumps({"foreign": sorted(m for m in sys.modules if m.split(".")[0] in ("training", "evaluation", "tools", "iris")),
                  "labcore": labcore.text.__file__, "same_strip": logic.strip_meta is labcore.text.strip_meta,
                  "keys": list(entries), "flags": flags}))
"""


def test_space_runs_from_its_folder_with_the_shared_code(tmp_path):
    space = build(tmp_path / "space")
    for f in (REPO / "labcore").glob("*.py"):  # the same files, not copies kept by hand
        assert (space / "labcore" / f.name).read_bytes() == f.read_bytes()
    assert (space / "app.py").exists() and not (space / "__init__.py").exists()
    r = subprocess.run([sys.executable, "-c", PROBE, str(REPO)], cwd=space, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["foreign"] == [] and got["same_strip"]
    assert Path(got["labcore"]).resolve().is_relative_to(space.resolve())
    assert "embedded:smollm2-135m" in got["keys"] and not any(k.startswith("tuned:") for k in got["keys"])
    assert {"briefly", "include_example", "relate_it_to"} <= set(got["flags"])  # all patterns, not the old 4-pattern fallback


def test_build_space_refuses_to_overwrite_the_repository():
    import pytest

    with pytest.raises(SystemExit, match="overwrite the repository"):
        build(REPO / "iris")
