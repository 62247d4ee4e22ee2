"""Stage 1: LoRA on FineTome-100k, Gemma 2 2B it. Needs the hub model and a GPU.

    python training/train_gemma_2_2b_lora_finetome.py
    python training/train_gemma_2_2b_lora_finetome.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE1
from training.run import run

CONFIG = replace(STAGE1, model="gemma-2-2b")

if __name__ == "__main__":
    run(CONFIG)
