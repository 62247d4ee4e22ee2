"""QLoRA (4-bit NF4 base) on the ID2223 exam-prep data from the base, embedded SmolLM2-135M-Instruct (offline, CPU).

    python training/train_smollm2_135m_qlora_exam.py
    python training/train_smollm2_135m_qlora_exam.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE2
from training.run import run

CONFIG = replace(STAGE2, model="smollm2-135m", load_in_4bit=True, num_train_epochs=1, save_steps=50)

if __name__ == "__main__":
    run(CONFIG)
