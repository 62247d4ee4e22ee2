"""Stage 1: LoRA on FineTome-100k, Phi-3 mini Instruct (the original's "Phi-3 3B"). Needs the hub model and a GPU.

    python training/train_phi_3_3b_lora_finetome.py
    python training/train_phi_3_3b_lora_finetome.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE1
from training.run import run

CONFIG = replace(STAGE1, model="phi-3-3b", lora_target_modules="qkv_proj,o_proj,gate_up_proj,down_proj")  # Phi-3 fuses q/k/v and gate/up

if __name__ == "__main__":
    run(CONFIG)
