"""Stage 1: QLoRA on FineTome-100k, Llama 3.2 3B Instruct. Needs the hub model and a GPU.

    python training/train_llama_3_2_3b_qlora_finetome.py
    python training/train_llama_3_2_3b_qlora_finetome.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE1
from training.run import run

CONFIG = replace(STAGE1, model="llama-3.2-3b", load_in_4bit=True)

if __name__ == "__main__":
    run(CONFIG)
