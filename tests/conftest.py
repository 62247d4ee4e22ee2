"""Shared fixtures: the embedded model, a tiny random Llama with the embedded tokenizer, a small exam file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOPICS = ["LoRA", "QLoRA", "feature stores", "data drift", "all-reduce", "dropout", "attention", "GGUF"]


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from training.models import materialize_embedded

    return materialize_embedded()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, request) -> Path:
    """A 2-layer random Llama (about 1.6 M parameters) with SmolLM2's tokenizer and chat template (from
    ``PEFTLAB_TOKENIZER_DIR`` where the embedded model is not installed, as on a lent GPU machine)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(os.environ.get("PEFTLAB_TOKENIZER_DIR") or request.getfixturevalue("embedded_model_dir"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_conversations(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        rows.append({"id": f"x{i}", "topic": t, "kind": "concept", "conversations": [
            {"role": "user", "content": f"Question {i}: what should I know about {t}?"},
            {"role": "assistant", "content": f"Answer {i}: {t} is an exam topic; item {i} explains it with {i % 7 + 2} facts."},
        ]})
    return rows


@pytest.fixture
def exam_file(tmp_path) -> Path:
    path = tmp_path / "exam.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_conversations(48)))
    return path


def run_script(script: str, *args: str, timeout: int = 600, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a repository script the way a user does, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=REPO, **kw,
    )
