"""Stage 2: continue the smollm2-135m-qlora-finetome adapter on the exam-prep data (QLoRA (4-bit NF4 base)), embedded model.

    python training/train_smollm2_135m_qlora_finetome_exam.py
    python training/train_smollm2_135m_qlora_finetome_exam.py --max_steps 5     # any TrainConfig field is a flag; --help lists them
"""

from dataclasses import replace

from training.config import STAGE2_CONTINUED
from training.run import run

CONFIG = replace(STAGE2_CONTINUED, model="smollm2-135m", load_in_4bit=True, num_train_epochs=1, save_steps=50)

if __name__ == "__main__":
    run(CONFIG)
