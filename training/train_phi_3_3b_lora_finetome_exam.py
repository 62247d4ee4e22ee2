"""Stage 2: continue the phi-3-3b-lora-finetome adapter on the ID2223 exam-prep data (LoRA).

    python training/train_phi_3_3b_lora_finetome_exam.py
    python training/train_phi_3_3b_lora_finetome_exam.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE2_CONTINUED
from training.run import run

CONFIG = replace(STAGE2_CONTINUED, model="phi-3-3b", lora_target_modules="qkv_proj,o_proj,gate_up_proj,down_proj")  # Phi-3 fuses q/k/v and gate/up

if __name__ == "__main__":
    run(CONFIG)
