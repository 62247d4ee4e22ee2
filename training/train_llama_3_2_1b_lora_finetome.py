"""Stage 1: LoRA on FineTome-100k (general instructions), Llama 3.2 1B Instruct. Needs the hub model and a GPU.

    python training/train_llama_3_2_1b_lora_finetome.py
    python training/train_llama_3_2_1b_lora_finetome.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE1
from training.run import run

CONFIG = replace(STAGE1, model="llama-3.2-1b")

if __name__ == "__main__":
    run(CONFIG)
