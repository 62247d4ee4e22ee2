"""GGUF export: a short-trained embedded-model adapter exported, loaded, checked; bad input; killed exports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_script

from tools import export_to_gguf
from training.config import train_command

slow = pytest.mark.slow
RUN = "smollm2-135m-lora-exam"


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory):
    """A 2-step LoRA adapter of the real embedded model."""
    root = tmp_path_factory.mktemp("export")
    data = root / "exam.jsonl"
    rows = [json.loads(x) for x in (REPO / "data" / "id2223_exam_prep_full.jsonl").read_text().splitlines()[:16]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_script("training/train_smollm2_135m_lora_exam.py", "--data_path", str(data), "--root", str(root), "--max_steps", "2",
                   "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_length", "256")
    assert r.returncode == 0, r.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def exported(adapter_root):
    out = adapter_root / "gguf"
    r = run_script("tools/export_to_gguf.py", str(adapter_root / "models" / RUN), "--out_dir", str(out), "--ppl_items", "4", "--stop_budget", "200", timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


@slow
def test_export_writes_every_file_and_the_parity_checks_pass(exported):
    out, stdout = exported
    for suffix in ("f16", "q8_0", "q4_k_m", "lora"):
        assert (out / f"{RUN}_{suffix}.gguf").stat().st_size > 1000
    manifest = json.loads((out / f"{RUN}.manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["run"] == RUN and manifest["base_model"] == "smollm2-135m"
    assert {"f16", "q8_0", "q4_k_m", "lora"} == set(manifest["files"])
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest["files"].values())
    assert manifest["source_run_record"]["name"] == RUN
    report = json.loads((out / f"{RUN}.verify.json").read_text())
    checks = report["checks"]
    assert report["status"] == "passed" and not checks["failures"]
    for key in ("f16", "q8_0", "q4_k_m"):
        c = checks["files"][key]
        assert c["chat_template_embedded"] and c["prompt_tokens_match"] and c["answers"]
        assert c["chat_format"] == "chat_template.default"
        assert "ppl_drift_vs_f16_pct" in c
    assert min(checks["files"]["f16"]["greedy_agreement_with_pytorch"]) == 32
    assert all(checks["lora_gguf_matches_merged_f16"])
    assert checks["files"]["q8_0"]["ppl_drift_vs_f16_pct"] < 5
    assert "[1/7]" in stdout and "[7/7]" in stdout


@slow
def test_quantized_files_generate_in_this_process(exported):
    from labcore.gguf import load_llama

    out, _ = exported
    for quant in ("q8_0", "q4_k_m"):
        llm = load_llama(out / f"{RUN}_{quant}.gguf", n_ctx=256)
        text = llm.create_chat_completion([{"role": "user", "content": "What is dropout?"}], max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
        assert text.strip(), quant


@slow
def test_rerun_skips_current_files(adapter_root, exported):
    out, _ = exported
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")}
    manifest_before = (out / f"{RUN}.manifest.json").read_text()
    r = run_script("tools/export_to_gguf.py", str(adapter_root / "models" / RUN), "--out_dir", str(out), "--ppl_items", "2", "--stop_budget", "200", timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.gguf")} == before
    assert r.stdout.count("current, skipped") == 2  # the merge and the verification
    # Nothing was redone, so the manifest still describes the run that did the work (its timings included).
    assert (out / f"{RUN}.manifest.json").read_text() == manifest_before


def export_error(argv: list[str]) -> str:
    """The one line ``main(argv)`` exits with (``sys.exit(message)``: no traceback, exit status 1)."""
    with pytest.raises(SystemExit) as e:
        export_to_gguf.main(argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: "), e.value.code
    return e.value.code


def fake_adapter(folder, base_dir):
    """An adapter folder that passes the input checks: a config naming ``base_dir`` and one LoRA weight."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base_dir), "lora_alpha": 16}))
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(2, 4)}, folder / "adapter_model.safetensors")
    return folder


def test_missing_or_corrupt_adapter_gives_one_clear_line(tmp_path):
    message = export_error(["no-such-run", "--out_dir", str(tmp_path)])
    assert "no adapter for 'no-such-run'" in message and train_command("no-such-run") in message
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    (bad / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    assert "corrupt" in export_error([str(bad), "--out_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_bad_flags_give_one_clear_line_before_any_work(tmp_path):
    assert "unknown quantization q3_x" in export_error(["no-such-run", "--quants", "q8_0,q3_x", "--out_dir", str(tmp_path)])
    for flag in ("--ppl_items", "--stop_budget"):
        assert "positive count" in export_error(["no-such-run", flag, "0", "--out_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_verify_only_needs_a_previous_export(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter = fake_adapter(tmp_path / "my-run", base)
    message = export_error([str(adapter), "--verify_only", "--out_dir", str(tmp_path / "out")])
    assert "--verify_only: no manifest" in message and "my-run.manifest.json" in message


def test_temporaries_of_dead_exports_are_removed_and_live_ones_kept(tmp_path):
    dead = 2**22 + 1  # above Linux's largest process id
    for name in (f".run_f16.gguf.tmp-{dead}", f".run.manifest.json.tmp-{dead}", f".run_f16.gguf.tmp-{os.getpid()}"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / f".run_merged_hf.tmp-{dead}").mkdir()
    (tmp_path / f".run_merged_hf.tmp-{dead}" / "config.json").write_text("{}")
    export_to_gguf.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".run_f16.gguf.tmp-{os.getpid()}"]


@slow
def test_a_killed_export_leaves_no_final_named_partial_file(adapter_root, tmp_path):
    out = tmp_path / "gguf"
    proc = subprocess.Popen([sys.executable, str(REPO / "tools/export_to_gguf.py"), str(adapter_root / "models" / RUN), "--out_dir", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.glob(f".{RUN}_f16.gguf.tmp-*")):
        assert proc.poll() is None, "export ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / f"{RUN}_f16.gguf").exists()
    assert not (out / f"{RUN}.manifest.json").exists()


@slow
def test_test_gguf_answers_a_prompt_with_tokens_per_second(exported):
    out, _ = exported
    r = run_script("test_gguf.py", str(out / f"{RUN}_q4_k_m.gguf"), "--prompt", "What is LoRA?", "--max_tokens", "12", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tok/s" in r.stdout and "first token" in r.stdout


@pytest.fixture
def test_gguf_script():
    """The repository's test_gguf.py as a module (its name is not importable as a test)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_gguf_script", REPO / "test_gguf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_test_gguf_names_a_missing_file(test_gguf_script, tmp_path):
    with pytest.raises(SystemExit, match="no such GGUF file") as e:
        test_gguf_script.main([str(tmp_path / "missing.gguf")])
    assert str(tmp_path / "missing.gguf") in e.value.code


@slow
def test_a_changed_adapter_changes_the_fingerprint(adapter_root, tmp_path):
    import shutil

    from training.models import materialize_embedded

    base = str(materialize_embedded())
    copy = tmp_path / "adapter"
    shutil.copytree(adapter_root / "models" / RUN, copy)
    before = export_to_gguf.fingerprint(copy, base, ["q8_0"])
    assert export_to_gguf.fingerprint(copy, base, ["q8_0"]) == before
    data = bytearray((copy / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (copy / "adapter_model.safetensors").write_bytes(bytes(data))
    assert export_to_gguf.fingerprint(copy, base, ["q8_0"]) != before


def test_test_gguf_defaults_to_the_newest_tuned_export(test_gguf_script, tmp_path, monkeypatch):
    folder = tmp_path / "gguf_export"
    folder.mkdir()
    for i, name in enumerate(["run_q4_k_m.gguf", "run_lora.gguf", "run_base_f16.gguf"]):  # export writes the base file last
        (folder / name).write_bytes(b"GGUF")
        os.utime(folder / name, (1000 + i, 1000 + i))
    monkeypatch.setattr(test_gguf_script, "REPO", tmp_path)
    assert test_gguf_script.default_model() == folder / "run_q4_k_m.gguf"
