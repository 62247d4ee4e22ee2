"""Exam-prep data directly from the base (no stage 1), QLoRA, Llama 3.2 3B Instruct.

    python training/train_llama_3_2_3b_qlora_exam.py
    python training/train_llama_3_2_3b_qlora_exam.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE2
from training.run import run

CONFIG = replace(STAGE2, model="llama-3.2-3b", load_in_4bit=True)

if __name__ == "__main__":
    run(CONFIG)
