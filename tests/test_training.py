"""Training scripts: declarations validate; real runs on a tiny random Llama; QLoRA; resume after SIGKILL; DDP."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_script
from safetensors.torch import load_file

from training.config import TrainConfig

SCRIPTS = sorted((REPO / "training").glob("train_*.py"))


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_grid_is_complete():
    names = {p.stem for p in SCRIPTS}
    original = {"llama_3_2_1b_lora_finetome", "llama_3_2_1b_qlora_finetome", "llama_3_2_1b_qlora_finetome_exam",
                "llama_3_2_3b_qlora_finetome", "llama_3_2_3b_qlora_finetome_exam", "llama_3_2_3b_qlora_exam",
                "gemma_2_2b_lora_finetome", "phi_3_3b_lora_finetome", "phi_3_3b_lora_finetome_exam"}
    embedded = {f"smollm2_135m_{m}_{d}" for m in ("lora", "qlora") for d in ("finetome", "exam", "finetome_exam")} | {"smollm2_135m_lora_exam_grounded"}
    assert names == {f"train_{n}" for n in original | embedded}


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_declares_a_valid_config_named_like_its_file(path):
    module = load_script(path)
    cfg = module.CONFIG
    assert isinstance(cfg, TrainConfig)
    assert path.stem == "train_" + cfg.name.replace("-", "_").replace(".", "_")
    assert cfg.method == ("qlora" if "_qlora_" in path.stem else "lora")
    assert f"python training/{path.name}" in module.__doc__
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (16, 32, 0.0)
    assert len(path.read_text().splitlines()) <= 30


def test_cli_overrides_every_script_the_same_way():
    from training.run import parse_cli

    cfg = load_script(REPO / "training" / "train_smollm2_135m_qlora_exam.py").CONFIG
    out = parse_cli(cfg, ["--max_steps", "5", "--learning_rate", "3e-4", "--per_device_train_batch_size", "2",
                          "--num_train_epochs", "1.5", "--output_dir", "/tmp/x", "--resume"])
    assert (out.max_steps, out.learning_rate, out.per_device_train_batch_size, out.num_train_epochs) == (5, 3e-4, 2, 1.5)
    assert out.resume and out.load_in_4bit and out.checkpoint_dir == Path("/tmp/x")
    assert parse_cli(cfg, []) == cfg


def tiny_args(tiny_model_dir, exam_file, root, *extra):
    return ["--model", str(tiny_model_dir), "--data_path", str(exam_file), "--root", str(root),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
            "--threads", "1", *extra]


def _files_sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_two_step_lora_run_changes_only_the_adapter(tiny_model_dir, exam_file, tmp_path):
    base_before = _files_sha(tiny_model_dir)
    r = run_script("training/train_smollm2_135m_lora_exam.py", *tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    run = "tiny-llama-lora-exam"
    adapter = tmp_path / "models" / run
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero: it must have moved"
    assert not [k for k in weights if "lora" not in k], "only adapter weights are saved"

    assert _files_sha(tiny_model_dir) == base_before, "training wrote to the base checkpoint"

    record = json.loads((tmp_path / "training_logs" / f"{run}.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 2
    for key in ("config", "versions", "git_commit", "hardware", "data", "chat_template_sha256", "parameters", "resources", "wall_seconds"):
        assert key in record
    assert record["parameters"]["trainable"] < record["parameters"]["total"]
    assert record["data"]["sha256"] and record["resources"]["peak_rss_mb"] > 0
    assert record["resolved"]["lm_head"] == "onepass" and record["resolved"]["activation_checkpointing"] is False
    assert json.loads((adapter / "run_record.json").read_text())["name"] == run
    logs = [json.loads(line) for line in (tmp_path / "training_logs" / f"{run}.jsonl").read_text().splitlines()]
    steps = [x for x in logs if x["event"] == "log" and "loss" in x]
    assert [x["step"] for x in steps] == [1, 2]
    assert all(math.isfinite(x["loss"]) and x["tokens_per_s"] > 0 and x["peak_rss_mb"] > 0 for x in steps)
    assert (tmp_path / "training_logs" / f"{run}.log").read_text().count("loss=") == 2


def test_assistant_tokens_only_and_end_of_turn_is_learned(embedded_model_dir):
    from transformers import AutoTokenizer

    from training.chat_templates import training_template

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    msgs = [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "A low-rank adapter."}]
    out = tok.apply_chat_template(msgs, chat_template=training_template(tok), return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    learned = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(learned) == "A low-rank adapter.<|im_end|>"
    assert learned[-1] == tok.eos_token_id
    assert tok.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, chat_template=training_template(tok), tokenize=False)


def test_packed_attention_equals_each_conversation_alone(tiny_model_dir):
    """packed_sdpa on one padding-free row == the library's SDPA on each conversation by itself (logits and grads)."""
    from transformers import AutoModelForCausalLM

    import training.packed_attention as pa

    torch.manual_seed(0)
    packed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=pa.NAME, dtype=torch.float32)
    alone = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32)
    lengths = [7, 13, 5]
    seqs = [torch.randint(10, 1000, (n,)) for n in lengths]
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    out = packed(input_ids=ids, position_ids=pos, use_cache=False).logits
    out.pow(2).mean().backward()
    ref = torch.cat([alone(input_ids=s[None], use_cache=False).logits for s in seqs], dim=1)
    ref.pow(2).mean().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    g, g_ref = packed.model.layers[0].self_attn.q_proj.weight.grad, alone.model.layers[0].self_attn.q_proj.weight.grad
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)

    # Not a packed row: a padded batch with a mask, and cached decoding, take the library's path unchanged.
    assert pa.segment_starts(pos, 25, 25) == [0, 7, 20]
    assert pa.segment_starts(torch.arange(25)[None], 25, 25) is None
    assert pa.segment_starts(torch.tensor([[24]]), 1, 25) is None
    batch = torch.stack([torch.cat([seqs[1]]), torch.cat([seqs[0], torch.zeros(6, dtype=torch.long)])])
    mask = torch.tensor([[1] * 13, [1] * 7 + [0] * 6])
    a = packed(input_ids=batch, attention_mask=mask).logits
    b = alone(input_ids=batch, attention_mask=mask).logits
    torch.testing.assert_close(a, b)


def _reference_varlen(with_gqa: bool):
    """A CPU stand-in with torch's ``varlen_attn`` signature (per-segment causal SDPA), so the CUDA path's plumbing
    (layout, grouped heads, boundaries) runs here through the same code."""
    import torch.nn.functional as F

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **kw):
        assert window_size == (-1, 0) and cu_q.dtype == torch.int32 and max_q == int((cu_q[1:] - cu_q[:-1]).max())
        assert q.is_contiguous() or q.stride(-1) == 1
        gqa = kw.pop("enable_gqa", False)
        assert not kw and (gqa or k.shape[1] == q.shape[1])
        b = cu_q.tolist()
        return torch.cat([F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1),
                                                         is_causal=True, scale=scale, enable_gqa=gqa).transpose(0, 1)
                          for s, e in zip(b[:-1], b[1:])])

    if not with_gqa:  # an earlier release's keywords: causality as is_causal, no grouped heads
        def varlen_no_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False):
            return varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=(-1, 0) if is_causal else (-1, -1))
        return varlen_no_gqa
    return varlen


def packed_row(lengths, device="cpu"):
    """One padding-free row as TRL's collator gives it: ids, position_ids, cu_seq_lens_q/k, max_length_q/k."""
    torch.manual_seed(1)
    seqs = [torch.randint(10, 1000, (n,)) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    row = {"input_ids": torch.cat(seqs)[None], "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
           "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in row.items()}, seqs


def lora_logits_and_grads(model_dir, attn, batches, dtype=torch.float32, device="cpu"):
    """A LoRA model's logits on each batch (concatenated) and its LoRA gradients after one backward."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn, dtype=dtype).to(device)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    logits = torch.cat([model(**b, use_cache=False).logits for b in batches], dim=1)
    logits.float().pow(2).mean().backward()
    return logits.detach().float(), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("with_gqa", [True, False])
def test_varlen_path_equals_each_conversation_alone(tiny_model_dir, monkeypatch, with_gqa):
    """The CUDA path (one varlen call per layer from the collator's boundaries), driven on the CPU through a stand-in
    kernel: the same logits and LoRA gradients as each conversation run alone with the library's SDPA."""
    import training.packed_attention as pa

    monkeypatch.setattr(pa, "_varlen_attn", _reference_varlen(with_gqa))
    monkeypatch.setattr(pa, "_VARLEN_PARAMS", {"enable_gqa", "window_size"} if with_gqa else {"is_causal"})
    calls = []
    monkeypatch.setattr(pa, "varlen_available", lambda q: calls.append(q.shape) or True)
    row, seqs = packed_row([7, 13, 5])
    out, grads = lora_logits_and_grads(tiny_model_dir, pa.NAME, [row])
    ref, ref_grads = lora_logits_and_grads(tiny_model_dir, "sdpa", [{"input_ids": s[None]} for s in seqs])
    assert len(calls) == 2  # one call per layer, for the whole row
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys() and len(grads) == 16
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_cpu_path_reads_the_collators_boundaries(tiny_model_dir):
    """On the CPU, a row with the collator's boundaries matches the per-conversation reference (no varlen kernel)."""
    import training.packed_attention as pa

    row, seqs = packed_row([9, 4, 11])
    out, grads = lora_logits_and_grads(tiny_model_dir, pa.NAME, [row])
    ref, ref_grads = lora_logits_and_grads(tiny_model_dir, "sdpa", [{"input_ids": s[None]} for s in seqs])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.gpu
def test_varlen_kernel_on_cuda_equals_each_conversation_alone(tiny_model_dir):
    import training.packed_attention as pa

    row, seqs = packed_row([37, 130, 64], device="cuda")
    assert pa.varlen_available(torch.zeros(1, device="cuda", dtype=torch.bfloat16))
    out, grads = lora_logits_and_grads(tiny_model_dir, pa.NAME, [row], dtype=torch.bfloat16, device="cuda")
    ref, ref_grads = lora_logits_and_grads(tiny_model_dir, "sdpa", [{"input_ids": s[None]} for s in seqs], dtype=torch.bfloat16, device="cuda")
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=2e-2, rtol=5e-2, msg=name)


def test_activation_checkpointing_follows_the_method(tiny_model_dir):
    from training.run import build_model

    assert TrainConfig(load_in_4bit=True).checkpointing and not TrainConfig().checkpointing
    assert TrainConfig(activation_checkpointing="on").checkpointing
    assert not TrainConfig(load_in_4bit=True, activation_checkpointing="off").checkpointing
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="yes")
    lora = build_model(TrainConfig(model=str(tiny_model_dir)), str(tiny_model_dir), torch.float32, "fp32", "cpu")
    ckpt = build_model(TrainConfig(model=str(tiny_model_dir), activation_checkpointing="on"), str(tiny_model_dir), torch.float32, "fp32", "cpu")
    assert not lora.get_base_model().is_activation_checkpointing and ckpt.get_base_model().is_activation_checkpointing
    assert lora.get_base_model().config._attn_implementation == "packed_sdpa"


def test_peak_rss_counts_a_spike_between_two_samples():
    from training.callbacks.logging_callback import PeakRSS

    rss = PeakRSS(interval=60).start()  # no sample will fall inside the spike
    if not rss.kernel_hwm:
        pytest.skip("no resettable kernel high-water mark (/proc/self/clear_refs) here")
    before = rss.sample()
    spike = torch.ones(400 * 2**20 // 4)  # 400 MB, touched
    del spike
    assert rss.stop() - before > 350 * 2**20
    rss2 = PeakRSS(interval=60).start()  # a fresh measurement forgets the earlier spike
    assert rss2.stop() - before < 200 * 2**20


def test_onepass_lm_head_equals_trls_fused_head(tiny_model_dir):
    """lm_head=onepass gives TRL's fused-head outputs (log-probs, entropy, top-1, loss) and the same LoRA gradients."""
    from trl.trainer.utils import add_fused_lm_head

    from training.lm_head import resolve_lm_head
    from training.run import apply_lm_head, build_model

    assert resolve_lm_head("auto", "cpu") == "onepass" and resolve_lm_head("auto", "cuda") == "trl"
    with pytest.raises(ValueError, match="lm_head"):
        TrainConfig(lm_head="fast")
    outs, grads = {}, {}
    for choice in ("trl", "onepass"):
        torch.manual_seed(0)
        cfg = TrainConfig(model=str(tiny_model_dir), lm_head=choice, lora_dropout=0.0)
        model = build_model(cfg, str(tiny_model_dir), torch.float32, "fp32", "cpu")
        for name, p in model.named_parameters():  # LoRA B starts at zero: give the adapter a non-trivial state
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(1))
        add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
        assert apply_lm_head(cfg, model, "cpu") == choice
        torch.manual_seed(1)
        ids = torch.randint(10, 1000, (1, 30))
        labels = ids.clone()
        labels[0, :8] = -100  # a prompt
        labels[0, 17:21] = -100
        out = model(input_ids=ids, labels=labels, position_ids=torch.cat([torch.arange(15), torch.arange(15)])[None], fused_lm_head=True)
        out.loss.backward()
        outs[choice] = out
        grads[choice] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    a, b = outs["trl"], outs["onepass"]
    torch.testing.assert_close(b.loss, a.loss)
    torch.testing.assert_close(b.log_probs, a.log_probs)
    torch.testing.assert_close(b.entropy, a.entropy.detach())
    assert torch.equal(b.is_top1, a.is_top1) and torch.equal(b.label_mask, a.label_mask)
    assert b.log_probs[0, :7].abs().sum() == 0 and b.label_mask.sum() == 29 - 7 - 4
    for name, g in grads["trl"].items():
        torch.testing.assert_close(grads["onepass"][name], g, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_onepass_log_probs_in_chunks_match_autograd(monkeypatch, softcap):
    """Several chunks, a capped vocabulary, an arbitrary upstream gradient: values and d/dhidden equal plain autograd."""
    import training.lm_head as lh

    monkeypatch.setattr(lh, "CHUNK_ELEMENTS", 7 * 50)  # 7 tokens per chunk over a 50-word vocabulary
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(23, 16, requires_grad=True), torch.randn(50, 16), torch.randint(0, 50, (23,))
    upstream = torch.randn(23)
    lp, ent, top1 = lh.OnePassLogProbs.apply(hidden, weight, targets, softcap)
    (lp * upstream).sum().backward()
    h2 = hidden.detach().clone().requires_grad_(True)
    z = h2 @ weight.t()
    z = torch.tanh(z / softcap) * softcap if softcap else z
    ref = torch.log_softmax(z, -1)
    (ref.gather(1, targets[:, None])[:, 0] * upstream).sum().backward()
    torch.testing.assert_close(lp, ref.gather(1, targets[:, None])[:, 0].detach())
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1).detach(), atol=1e-4, rtol=1e-4)  # lse - sum(p z): cancels near 0
    assert torch.equal(top1, z.argmax(-1) == targets)
    torch.testing.assert_close(hidden.grad, h2.grad)


def test_qlora_builds_4bit_layers_and_trains(tiny_model_dir, exam_file, tmp_path):
    import bitsandbytes as bnb

    from training.run import build_model

    cfg = TrainConfig(model=str(tiny_model_dir), load_in_4bit=True)
    model = build_model(cfg, str(tiny_model_dir), torch.bfloat16, "bf16", "cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    base = model.get_base_model()
    assert base.lm_head.weight is base.model.embed_tokens.weight  # still tied after the copy out of the mapping
    mapped = []  # address ranges of the checkpoint file mapped into this process
    for line in Path("/proc/self/maps").read_text().splitlines():
        if str(tiny_model_dir) in line:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            mapped.append((lo, hi))
    pointers = [p.data_ptr() for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit)]
    assert not any(lo <= ptr < hi for ptr in pointers for lo, hi in mapped), "an unquantized tensor still views the checkpoint file"

    r = run_script("training/train_smollm2_135m_qlora_exam.py", *tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "training_logs" / "tiny-llama-qlora-exam.json").read_text())
    assert record["status"] == "completed" and math.isfinite(record["final_train_loss"])
    assert record["config"]["load_in_4bit"] is True


def adapter_tensors(root: Path, run: str) -> dict:
    return load_file(root / "models" / run / "adapter_model.safetensors")


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_model_dir, exam_file, tmp_path):
    # Long enough (60 tiny steps) that the kill lands mid-run, after the first few checkpoints.
    steps = ["--max_steps", "60", "--save_steps", "4"]
    whole = tmp_path / "whole"
    r = run_script("training/train_smollm2_135m_lora_exam.py", *tiny_args(tiny_model_dir, exam_file, whole, *steps))
    assert r.returncode == 0, r.stderr[-3000:]

    killed = tmp_path / "killed"
    args = tiny_args(tiny_model_dir, exam_file, killed, *steps)
    proc = subprocess.Popen([sys.executable, str(REPO / "training/train_smollm2_135m_lora_exam.py"), *args, "--logging_steps", "1"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "tiny-llama-lora-exam"
    deadline = time.time() + 300
    from training.run import checkpoint_is_complete

    while time.time() < deadline and not any(checkpoint_is_complete(p) and int(p.name.split("-")[1]) >= 8 for p in ckpt.glob("checkpoint-*")):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "models" / "tiny-llama-lora-exam").exists()
    record = json.loads((killed / "training_logs" / "tiny-llama-lora-exam.json").read_text())
    assert record["status"] == "running"  # SIGKILL leaves no chance to write; the next run overwrites it

    # A damaged newest checkpoint (empty folder) is skipped, never trusted.
    (ckpt / "checkpoint-999").mkdir()
    r = run_script("training/train_smollm2_135m_lora_exam.py", *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping damaged checkpoint" in r.stdout and "continuing from" in r.stdout
    a, b = adapter_tensors(whole, "tiny-llama-lora-exam"), adapter_tensors(killed, "tiny-llama-lora-exam")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")
    logs = [json.loads(x) for x in (killed / "training_logs" / "tiny-llama-lora-exam.jsonl").read_text().splitlines()]
    begins = [x for x in logs if x["event"] == "train_begin"]
    assert len(begins) == 2 and begins[1]["resumed"] and begins[1]["step"] >= 8


def script_error(script: str, argv: list[str]) -> str:
    """Run a training script's ``run(CONFIG, argv)`` in this process; the one-line error it exits with."""
    module = load_script(REPO / "training" / script)  # defines CONFIG; run() is behind the __main__ guard
    from training.run import run

    with pytest.raises(SystemExit) as e:
        run(module.CONFIG, argv)
    assert isinstance(e.value.code, str) and e.value.code.startswith("error: ") and "\n" not in e.value.code
    return e.value.code


def test_resume_refuses_only_damaged_checkpoints(tiny_model_dir, exam_file, tmp_path):
    ckpt = tmp_path / "checkpoints" / "tiny-llama-lora-exam" / "checkpoint-4"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")  # no trainer_state.json
    err = script_error("train_smollm2_135m_lora_exam.py", tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "2", "--resume"))
    assert "no complete checkpoint" in err
    err = script_error("train_smollm2_135m_lora_exam.py", tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "2"))
    assert "pass --resume" in err


def test_stage2_needs_its_stage1_adapter(tiny_model_dir, exam_file, tmp_path):
    err = script_error("train_smollm2_135m_lora_finetome_exam.py", tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "1"))
    assert "tiny-llama-lora-finetome" in err  # the adapter it looked for, and a command that exists to make it:
    assert f"run python training/train_smollm2_135m_lora_finetome.py --model {tiny_model_dir} --root {tmp_path} first" in err
    assert (REPO / "training" / "train_smollm2_135m_lora_finetome.py").exists()


def test_stage2_error_from_its_script_names_the_sibling_script(tiny_model_dir, exam_file, tmp_path):
    """As a user runs it (a fresh interpreter): the command is the running script's FineTome sibling."""
    r = run_script("training/train_smollm2_135m_lora_finetome_exam.py", *tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "1"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"run python training/train_smollm2_135m_lora_finetome.py --model {tiny_model_dir} --root {tmp_path} first" in r.stderr


def test_grounded_stage_continues_the_adapter_it_is_given(tiny_model_dir, exam_file, tmp_path):
    err = script_error("train_smollm2_135m_lora_exam_grounded.py",
                       tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "1", "--init_adapter", "no-such-run"))
    assert "'no-such-run'" in err and "--init_adapter" in err
    r = run_script("training/train_smollm2_135m_lora_exam.py", *tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    # learning rate 0: one step must leave the continued adapter exactly as it was (a fresh LoRA has B = 0)
    r = run_script("training/train_smollm2_135m_lora_exam_grounded.py", *tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "1",
                   "--init_adapter", "tiny-llama-lora-exam", "--learning_rate", "0"))
    assert r.returncode == 0, r.stderr[-3000:]
    before, after = adapter_tensors(tmp_path, "tiny-llama-lora-exam"), adapter_tensors(tmp_path, "tiny-llama-lora-exam-grounded")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    record = json.loads((tmp_path / "training_logs" / "tiny-llama-lora-exam-grounded.json").read_text())
    assert record["continued_from"] == str(tmp_path / "models" / "tiny-llama-lora-exam")


def test_offline_llama_script_fails_with_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = script_error("train_llama_3_2_1b_lora_finetome.py", ["--max_steps", "1"])
    assert "meta-llama/Llama-3.2-1B-Instruct" in err and "licence" in err
    assert "train_smollm2_135m_lora_finetome.py" in err


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_adapter(tiny_model_dir, exam_file, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(REPO / "training/train_smollm2_135m_lora_exam.py"), *tiny_args(tiny_model_dir, exam_file, tmp_path, "--max_steps", "2")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    adapters = list((tmp_path / "models").glob("*/adapter_model.safetensors"))
    assert len(adapters) == 1
    record = json.loads((tmp_path / "training_logs" / "tiny-llama-lora-exam.json").read_text())
    assert record["resolved"]["world_size"] == 2 and record["status"] == "completed"
    assert not list((tmp_path / "models").glob(".*tmp*"))


@pytest.mark.slow
def test_real_embedded_model_trains_two_steps(exam_file, tmp_path):
    r = run_script("training/train_smollm2_135m_lora_exam.py", "--data_path", str(exam_file), "--root", str(tmp_path),
                   "--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--logging_steps", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "training_logs" / "smollm2-135m-lora-exam.json").read_text())
    assert record["status"] == "completed" and math.isfinite(record["final_train_loss"])
    assert record["parameters"]["total"] > 130_000_000


def test_names_and_paths_come_from_one_place(tmp_path):
    from training.config import RunPaths, TrainConfig, run_name, train_command, train_script

    cfg = TrainConfig(model="llama-3.2-1b", load_in_4bit=True, data="finetome", root=str(tmp_path))
    assert cfg.name == run_name("llama-3.2-1b", "qlora", "finetome") == "llama-3.2-1b-qlora-finetome"
    assert train_script(cfg.name).name == "train_llama_3_2_1b_qlora_finetome.py" and train_script(cfg.name).exists()
    assert train_command(cfg.name) == "python training/train_llama_3_2_1b_qlora_finetome.py"
    paths = RunPaths(cfg.name, tmp_path)
    assert (cfg.checkpoint_dir, cfg.adapter_dir, cfg.record_path) == (paths.checkpoints, paths.trained_adapter, paths.record)
    # a run named after a local checkpoint folder: the command names a script that exists, with --model
    local = tmp_path / "tiny-llama"
    local.mkdir()
    name = TrainConfig(model=str(local), data="finetome").name
    assert name == "tiny-llama-lora-finetome" and not train_script(name).exists()
    cmd = train_command(name)
    assert cmd.startswith("python training/train_smollm2_135m_lora_finetome.py --model ") and (REPO / cmd.split()[1]).exists()


def test_a_bad_value_is_a_usage_error_naming_the_flag(capsys):
    from training.config import TrainConfig
    from training.run import run

    with pytest.raises(SystemExit) as e:
        run(TrainConfig(), ["--lm_head", "fast"])
    assert e.value.code == 2 and "lm_head must be auto, onepass or trl" in capsys.readouterr().err


def test_fsdp_config_passes_accelerates_launcher_and_qlora_stores_shardable_weights(monkeypatch):
    """training/fsdp.yaml as `accelerate launch --config_file` reads it (its own validation: e.g. RAM-efficient loading
    needs synced module states), and QLoRA under that launcher stores 4-bit weights in the compute dtype."""
    import torch
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    from training.config import TrainConfig
    from training.run import quantization_config

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "training" / "fsdp.yaml"), "training/train_llama_3_2_3b_qlora_exam.py"])
    _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2" and args.mixed_precision == "bf16"
    qlora = TrainConfig(load_in_4bit=True)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert quantization_config(qlora, torch.bfloat16).bnb_4bit_quant_storage == torch.uint8  # bitsandbytes' default
    monkeypatch.setenv("ACCELERATE_USE_FSDP", env["ACCELERATE_USE_FSDP"])
    assert quantization_config(qlora, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16


def test_gpu_settings_resolve_without_a_gpu(monkeypatch):
    """What a CUDA run chooses (checked here by pretending CUDA): padding-free with varlen attention, a token budget
    that keeps the conversations per optimizer step, the fused AdamW for LoRA and paged 8-bit AdamW for QLoRA."""
    from training.config import TrainConfig
    from training.run import resolve_optimizer

    cfg = TrainConfig(per_device_train_batch_size=4, gradient_accumulation_steps=8)  # 32 conversations per step
    assert cfg.uses_padding_free("cuda") and cfg.uses_padding_free("cpu")
    assert cfg.micro_batches("cpu", 512) == (4, 8)  # the CPU keeps the batch as given
    assert cfg.micro_batches("cuda", 512) == (32, 1)  # 32 x 512 = 16384 tokens: the whole step in one micro-batch
    assert cfg.micro_batches("cuda", 2048) == (8, 4)
    assert TrainConfig(micro_batch_tokens=3000, per_device_train_batch_size=3, gradient_accumulation_steps=2).micro_batches("cpu", 1000) == (3, 2)
    assert cfg.micro_batches("cuda", 100_000) == (1, 32)  # over budget alone: one conversation per micro-batch
    assert TrainConfig(padding_free="false").micro_batches("cuda", 512) == (4, 4)  # padded: the batch as given
    for c in (cfg, TrainConfig(per_device_train_batch_size=3, gradient_accumulation_steps=5, micro_batch_tokens=1500)):
        for longest in (64, 500, 1500, 9000):
            size, steps = c.micro_batches("cuda", longest)
            assert size * steps == c.per_device_train_batch_size * c.gradient_accumulation_steps
    assert not cfg.uses_liger("cpu") and TrainConfig(liger="on").uses_liger("cpu")
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        TrainConfig(micro_batch_tokens=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_optimizer(TrainConfig()) == ("adamw_torch_fused", None)
    assert resolve_optimizer(TrainConfig(load_in_4bit=True)) == ("paged_adamw_8bit", None)


def test_flags_have_one_spelling(capsys):
    """labcore.cli: underscores only; HfArgumentParser's dashed aliases are dropped."""
    from labcore.cli import parse
    from training.config import TrainConfig

    assert parse(TrainConfig(), ["--max_steps", "3"]).max_steps == 3
    with pytest.raises(SystemExit):
        parse(TrainConfig(), ["--max-steps", "3"])
    assert "not used by the HfArgumentParser: ['--max-steps'" in capsys.readouterr().err
