"""Per-logging-step resource figures for a Trainer run: loss, lr, grad norm, tokens/s, memory, GPU use.

Writes ``training_logs/<run>.jsonl`` (one JSON object per logging step) and a readable ``<run>.log``. Tokens/s
comes from the tokens the trainer actually processed (``state.num_input_tokens_seen``), measured over the interval
since the previous log line, so a resumed run never reports inflated rates from the steps it skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil
import torch
from transformers import TrainerCallback


class PeakRSS:
    """Peak resident memory of this process since start() or reset() (bytes): the kernel's own high-water mark
    (VmHWM, reset through /proc/self/clear_refs) where Linux allows it, so that a short spike between two samples
    still counts; a background thread's samples otherwise."""

    STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.kernel_hwm = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def _hwm(self) -> int:
        for line in self.STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> int:
        """Forget the peak so far: from now on the peak is measured afresh. Returns the current RSS."""
        try:
            self.CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.kernel_hwm = True
        except OSError:
            self.kernel_hwm = False
        self.peak = self.proc.memory_info().rss
        return self.peak

    def sample(self) -> int:
        rss = self.proc.memory_info().rss
        self.peak = max(self.peak, rss, self._hwm() if self.kernel_hwm else 0)
        return rss

    def start(self) -> PeakRSS:
        self.reset()
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self.sample()
        return self.peak

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _NVML:
    """GPU utilisation and memory through NVML, only when a CUDA device exists (imported on demand)."""

    def __init__(self):
        self.handle = None
        if not torch.cuda.is_available():
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception as e:  # driver without NVML: torch's own figures still work
            print(f"[log] NVML unavailable ({e}); logging torch CUDA memory only")

    def read(self) -> dict:
        if self.handle is None:
            return {}
        util = self.pynvml.nvmlDeviceGetUtilizationRates(self.handle)
        mem = self.pynvml.nvmlDeviceGetMemoryInfo(self.handle)
        return {"gpu_util_pct": util.gpu, "gpu_mem_used_mb": round(mem.used / 2**20, 1)}


class ResourceUsageCallback(TrainerCallback):
    """Appends one record per logging step to ``<log_dir>/<run_name>.jsonl`` and ``.log``."""

    def __init__(self, log_dir: str | os.PathLike, run_name: str):
        self.jsonl = Path(log_dir) / f"{run_name}.jsonl"
        self.text = Path(log_dir) / f"{run_name}.log"
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        self.rss = PeakRSS()
        self.nvml = _NVML()
        self._t = self._tokens = self._step = None
        self.train_start = None
        self.tokens_at_start = 0

    # Only the main process writes (DDP launches one callback per rank).
    def _write(self, state, record: dict):
        if not state.is_world_process_zero:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        keys = ("step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "peak_rss_mb")
        line = " ".join(f"{k}={record[k]:.4g}" if isinstance(record.get(k), float) else f"{k}={record.get(k)}" for k in keys if k in record)
        with self.text.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {record.get('event', 'log')} {line}\n")

    def on_train_begin(self, args, state, control, **kw):
        if not self.rss._thread.is_alive():
            self.rss.start()
        # Baselines are taken after a resume has restored global_step and the token count.
        self._t, self._tokens, self._step = time.perf_counter(), state.num_input_tokens_seen, state.global_step
        self.train_start, self.tokens_at_start = self._t, state.num_input_tokens_seen
        if state.global_step == 0 and state.is_world_process_zero:  # a fresh run starts fresh logs; a resumed one appends
            for f in (self.jsonl, self.text):
                f.unlink(missing_ok=True)
        self._write(state, {"event": "train_begin", "step": state.global_step, "time": time.time(), "resumed": state.global_step > 0})

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        now = time.perf_counter()
        record = {"event": "log", "step": state.global_step, "epoch": state.epoch, "time": time.time()}
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "train_loss"):
            if key in logs:
                record[key] = float(logs[key])
        dt, dsteps = now - self._t, state.global_step - self._step
        dtokens = state.num_input_tokens_seen - self._tokens
        if dt > 0 and dsteps > 0:
            record["tokens_per_s"] = dtokens / dt
            record["steps_per_s"] = dsteps / dt
            record["interval_tokens"] = int(dtokens)
        record["tokens_seen"] = int(state.num_input_tokens_seen)
        record["rss_mb"] = round(self.rss.sample() / 2**20, 1)
        record["peak_rss_mb"] = round(self.rss.peak / 2**20, 1)
        if torch.cuda.is_available():
            record["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            record["cuda_reserved_mb"] = round(torch.cuda.memory_reserved() / 2**20, 1)
            record["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            record.update(self.nvml.read())
        self._t, self._tokens, self._step = now, state.num_input_tokens_seen, state.global_step
        self._write(state, record)

    def on_train_end(self, args, state, control, **kw):
        self.rss.stop()
        self._write(state, {"event": "train_end", "step": state.global_step, "time": time.time(), "peak_rss_mb": round(self.rss.peak / 2**20, 1)})

    def summary(self, state) -> dict:
        """Figures for the run record: this session's throughput and the peak memory."""
        elapsed = time.perf_counter() - self.train_start if self.train_start else 0.0
        tokens = state.num_input_tokens_seen - self.tokens_at_start
        out = {
            "train_seconds_this_session": round(elapsed, 2),
            "tokens_this_session": int(tokens),
            "tokens_per_s": round(tokens / elapsed, 2) if elapsed else None,
            "peak_rss_mb": round(self.rss.peak / 2**20, 1),
        }
        if torch.cuda.is_available():
            out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out
