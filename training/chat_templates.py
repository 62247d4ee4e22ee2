"""Training variants of chat templates, for loss on assistant tokens only.

TRL's ``assistant_only_loss`` needs a template with ``{% generation %}`` markers. TRL ships such variants for the
Llama 3, Phi-3, Gemma and Qwen families; SmolLM2's ChatML template has none, so it is built here. A training variant
must render byte-identical text to the serving template (the GGUF carries the serving one): ``training_template``
checks that on fixed conversations and refuses a variant that differs.
"""

from __future__ import annotations

import hashlib

# SmolLM2-Instruct's serving template with the assistant's content and its <|im_end|> inside generation markers.
CHATML_SMOLLM2_TRAINING = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PROBES = [
    [{"role": "user", "content": "What is LoRA?"}, {"role": "assistant", "content": "A low-rank adapter."}],
    [
        {"role": "system", "content": "You are a tutor."},
        {"role": "user", "content": "Define overfitting."},
        {"role": "assistant", "content": "Fitting noise.\nIt generalises badly."},
        {"role": "user", "content": "And underfitting?"},
        {"role": "assistant", "content": "Missing the signal."},
    ],
]


def template_hash(template: str | None) -> str | None:
    return hashlib.sha256(template.encode()).hexdigest()[:16] if template else None


def training_template(tokenizer) -> str:
    """The serving template if it already marks generations, else a verified training variant."""
    serving = tokenizer.chat_template
    if not serving:
        raise ValueError("the tokenizer has no chat template; supply one before training a chat model")
    if "{% generation %}" in serving or "{%- generation %}" in serving:
        return serving
    candidates = []
    try:  # TRL's shipped variants (Llama 3.x, Phi-3, Gemma, Qwen, ...)
        from trl.chat_template_utils import get_training_chat_template

        candidates.append(get_training_chat_template(tokenizer))
    except Exception:
        pass
    candidates.append(CHATML_SMOLLM2_TRAINING)
    for candidate in candidates:
        if candidate and renders_identically(tokenizer, serving, candidate):
            return candidate
    raise ValueError(
        "no training variant of this model's chat template renders identically to it, so loss on assistant tokens "
        "cannot be masked safely; add one to training/chat_templates.py"
    )


def renders_identically(tokenizer, serving: str, candidate: str) -> bool:
    for messages in PROBES:
        for gen in (False, True):
            prompt = messages[:-1] if gen else messages
            try:
                a = tokenizer.apply_chat_template(prompt, chat_template=serving, tokenize=False, add_generation_prompt=gen)
                b = tokenizer.apply_chat_template(prompt, chat_template=candidate, tokenize=False, add_generation_prompt=gen)
            except Exception:
                return False
            if a != b:
                return False
    return True
