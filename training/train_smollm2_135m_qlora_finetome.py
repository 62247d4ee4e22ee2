"""Stage 1: QLoRA (4-bit NF4 base) on general instructions, embedded SmolLM2-135M-Instruct (offline, CPU).

FineTome-100k when it is in the Hugging Face cache, else the shipped data/general_instructions.jsonl.

    python training/train_smollm2_135m_qlora_finetome.py
    python training/train_smollm2_135m_qlora_finetome.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE1
from training.run import run

CONFIG = replace(STAGE1, model="smollm2-135m", load_in_4bit=True, num_samples=None, num_train_epochs=1, save_steps=50)

if __name__ == "__main__":
    run(CONFIG)
