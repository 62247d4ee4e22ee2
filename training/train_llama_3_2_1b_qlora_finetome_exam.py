"""Stage 2: continue the llama-3.2-1b-qlora-finetome adapter on the ID2223 exam-prep data (QLoRA).

    python training/train_llama_3_2_1b_qlora_finetome_exam.py
    python training/train_llama_3_2_1b_qlora_finetome_exam.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE2_CONTINUED
from training.run import run

CONFIG = replace(STAGE2_CONTINUED, model="llama-3.2-1b", load_in_4bit=True)

if __name__ == "__main__":
    run(CONFIG)
