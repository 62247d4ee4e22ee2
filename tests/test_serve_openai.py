"""tools/serve_openai.py serves the embedded Q4_1 GGUF through llama-cpp-python's OpenAI server, and the `openai`
client talks to it; the stock ``python -m llama_cpp.server`` behaves on this machine as labcore/gguf predicts
(on a GCC 12 pip build with AMX: SIGSEGV on the first request)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("openai")
pytest.importorskip("llama_cpp.server.app")  # llama-cpp-python[server]'s extras
pytest.importorskip("sse_starlette")

ALIAS = "SmolLM2-135M-Instruct.Q4_1"
QUESTION = [{"role": "user", "content": "What is LoRA?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], port: int, log: Path, timeout: float = 180):
    """Start ``cmd``, wait until GET /v1/models answers, yield (process, base_url); stop it afterwards."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    models = json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not come up (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield proc, f"http://127.0.0.1:{port}/v1", models
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "launcher.log"
    cmd = [sys.executable, "tools/serve_openai.py", "--port", str(port), "--n_ctx", "512", "--threads", "1"]  # 1: light on a shared CI machine
    with server(cmd, port, log) as (proc, url, models):
        yield proc, url, models, log


def test_launcher_lists_the_model_and_prints_how_to_call_it(launcher):
    _, url, models, log = launcher
    assert [m["id"] for m in models["data"]] == [ALIAS]
    banner = log.read_text()
    assert "GGUF runtime:" in banner and url in banner and "OpenAI(base_url=" in banner and "curl " in banner


def test_openai_client_chat_and_stream(launcher):
    from openai import OpenAI

    proc, url, _, log = launcher
    client = OpenAI(base_url=url, api_key="none", timeout=120, max_retries=0)
    assert [m.id for m in client.models.list().data] == [ALIAS]

    reply = client.chat.completions.create(model=ALIAS, messages=QUESTION, max_tokens=8, temperature=0)
    assert reply.model == ALIAS
    assert reply.choices[0].message.content.strip()
    assert 0 < reply.usage.completion_tokens <= 8

    chunks = list(client.chat.completions.create(model=ALIAS, messages=QUESTION, max_tokens=8, temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert text == reply.choices[0].message.content  # greedy: the same answer streamed or not
    assert proc.poll() is None, log.read_text()[-3000:]


def test_stock_server_on_a_quantized_gguf_behaves_as_gguf_runtime_predicts(tmp_path):
    """docs/serving.md's measurement, repeated (about 2 s): plain ``python -m llama_cpp.server`` with the Q4_1 GGUF."""
    if os.environ.get("IRIS_GGUF_REPACK") in ("0", "1"):
        pytest.skip("IRIS_GGUF_REPACK forces gguf_runtime's verdict; this test compares with the measured one")
    from labcore.gguf import embedded_gguf, verdict

    crashes = not verdict()["repack"]
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--verbose", "false"]
    with server(cmd, port, tmp_path / "stock.log") as (proc, url, _):
        body = json.dumps({"messages": QUESTION, "max_tokens": 8, "temperature": 0}).encode()
        request = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                answer = json.load(r)["choices"][0]["message"]["content"]
        except OSError:
            answer = None
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
    if crashes:
        assert answer is None and code == -signal.SIGSEGV, f"stock server no longer crashes here (exit {code}): update docs/serving.md"
    else:
        assert answer and code is None
