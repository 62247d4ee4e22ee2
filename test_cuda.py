"""What this machine can do for training, and what the training scripts will use on it.

    python test_cuda.py

Reports CUDA devices and memory (torch and NVML), bf16 support, CPU features (AVX-512, AMX), whether bitsandbytes
can quantise to 4-bit here, and the precision/optimizer the scripts pick. Exits 0 on a CPU-only machine.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import torch

    from labcore.hardware import cpu_flags
    from training.config import TrainConfig
    from training.run import resolve_optimizer, resolve_precision

    rows = [("python", platform.python_version()), ("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'no'})")]
    flags = cpu_flags()
    rows.append(("cpu", f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"))
    rows.append(("cpu features", ", ".join(f"{name}: {'yes' if f in flags else 'no'}" for name, f in
                 [("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX-512 BF16", "avx512_bf16"), ("AMX-BF16", "amx_bf16"), ("AMX-INT8", "amx_int8")])))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}"))
        rows.append(("cuda bf16", "yes" if torch.cuda.is_bf16_supported() else "no (fp16 with loss scaling)"))
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            rows.append(("nvml", f"driver {pynvml.nvmlSystemGetDriverVersion()}, {mem.used / 2**30:.1f} of {mem.total / 2**30:.1f} GiB used, "
                                 f"utilisation {pynvml.nvmlDeviceGetUtilizationRates(h).gpu}%"))
        except Exception as e:
            rows.append(("nvml", f"unavailable ({e})"))
    else:
        rows.append(("cuda", "no CUDA device: training runs on the CPU"))

    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        device = "cuda" if torch.cuda.is_available() else "cpu"
        w = torch.randn(64, 64, device=device, dtype=torch.bfloat16)
        q, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        err = (F.dequantize_4bit(q, state) - w).abs().mean().item()
        rows.append(("bitsandbytes 4-bit", f"yes on {device} (bitsandbytes {bnb.__version__}, NF4 round-trip mean error {err:.3f})"))
    except Exception as e:
        rows.append(("bitsandbytes 4-bit", f"no: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))

    lora, qlora = TrainConfig(), TrainConfig(load_in_4bit=True)
    rows.append(("training will use", f"{'cuda' if torch.cuda.is_available() else 'cpu'}, precision {resolve_precision(lora)}, "
                                      f"optimizer {resolve_optimizer(lora)[0]} (LoRA) / {resolve_optimizer(qlora)[0]} (QLoRA)"))
    note = resolve_optimizer(qlora)[1]
    if note:
        rows.append(("note", note))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
