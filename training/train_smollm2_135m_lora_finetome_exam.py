"""Stage 2: continue the smollm2-135m-lora-finetome adapter on the exam-prep data (LoRA), embedded model.

    python training/train_smollm2_135m_lora_finetome_exam.py
    python training/train_smollm2_135m_lora_finetome_exam.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE2_CONTINUED
from training.run import run

CONFIG = replace(STAGE2_CONTINUED, model="smollm2-135m", num_train_epochs=1, save_steps=50)

if __name__ == "__main__":
    run(CONFIG)
