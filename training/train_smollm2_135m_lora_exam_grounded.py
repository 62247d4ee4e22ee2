"""Stage 3: continue the shipped exam adapter on Study Chat rows that carry course notes in the prompt (LoRA), embedded model.

    python training/train_smollm2_135m_lora_exam_grounded.py
    python training/train_smollm2_135m_lora_exam_grounded.py --max_steps 5     # any TrainConfig field is a flag; --help lists them

The rows (data/id2223_exam_prep_grounded.jsonl) are the concept and compare questions with the notes Iris's Study Chat
retrieves for them (iris/notes.py), so the model learns to answer from the course text it is handed. 1,280 tokens
holds the longest row whole. 16 conversations per optimizer step as in the exam recipe, in two micro-batches of 8:
one micro-batch of 16 such rows took 19 GB of RSS on a CPU.
"""

from dataclasses import replace

from training.config import STAGE2
from training.run import run

CONFIG = replace(STAGE2, model="smollm2-135m", data="exam-grounded", init_adapter="smollm2-135m-id2223", num_train_epochs=2,
                 max_length=1280, per_device_train_batch_size=8, gradient_accumulation_steps=2, save_steps=25)

if __name__ == "__main__":
    run(CONFIG)
