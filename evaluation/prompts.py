"""Evaluation prompts: the original project's two lists (its README, section 3.3) and the held-out exam test split.

Prompt-list items have no reference answer: they are scored for leakage, stopping and speed, and kept for reading.
Test-split items carry a reference answer and key concepts: they are also scored for concept coverage and ROUGE-L.
"""

from __future__ import annotations

from training.dataset_utils import EXAM_TEST_DATA, load_conversations

# The original's general list (eval_models.py, eval_pytorch_vs_gguf.py).
GENERAL = [
    "Explain overfitting in simple terms.",
    "Summarize gradient descent.",
    "Write an email asking for an extension.",
    "Difference between LoRA and QLoRA?",
    "Give 3 ML learning tips.",
    "Explain what a checkpoint is.",
    "Trade-offs between 1B and 3B models?",
    "Sort [3, 1, 4, 1, 5] and explain.",
    "What is transfer learning?",
    "Bias-variance tradeoff in simple terms.",
]

# The original's domain list (eval_domain.py).
DOMAIN = [
    "Explain overfitting in simple terms.",
    "Summarize gradient descent.",
    "Explain the difference between supervised and unsupervised learning.",
    "Why do neural networks need activation functions?",
    "What is a convolutional neural network (CNN)?",
    "What is a recurrent neural network (RNN)?",
    "What is a feature store, and why is it useful?",
    "Explain train-serve skew and how to prevent it.",
    "What is data-centric iteration in machine learning?",
    "Give 3 tips for studying ML systems effectively.",
]

PROMPT_LISTS = {"general": GENERAL, "domain": DOMAIN, "none": []}


def spread(n_total: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(n_total)`` (all when limit is None or large enough).

    The test split is ordered by topic, so its first 60 items would cover only 15 topics; an even spread covers them all.
    """
    if limit is None or limit >= n_total:
        return list(range(n_total))
    return sorted({(i * n_total) // limit for i in range(limit)})


def prompt_items(list_name: str) -> list[dict]:
    return [{"set": list_name, "id": f"{list_name}-{i}", "messages": [{"role": "user", "content": p}]}
            for i, p in enumerate(PROMPT_LISTS[list_name])]


def with_notes(messages: list[dict], k: int) -> list[dict]:
    """A one-question Study Chat conversation as Iris sends it with course notes: the ``k`` passages ``iris.notes``
    retrieves for the question in the system prompt (unchanged when ``k`` is 0). Turns after the question are kept."""
    if k <= 0:
        return messages
    from iris import notes, prompts

    question = messages[1]["content"]
    return prompts.chat_prompt([], question, notes.texts(notes.load().retrieve(question, k))) + messages[2:]


def test_items(path=EXAM_TEST_DATA, limit: int | None = None, notes: int = 0) -> list[dict]:
    """Held-out exam items: the question as the prompt (with ``notes`` course-note passages, ``with_notes``), the
    reference answer, the key concepts."""
    rows = load_conversations(path)
    out = []
    for i in spread(len(rows), limit):
        r = rows[i]
        msgs = with_notes(r["messages"], notes)
        out.append({
            "set": "test", "id": r.get("id", f"test-{i}"), "topic": r.get("topic"),
            "messages": msgs[:-1], "reference": msgs[-1]["content"], "key_concepts": list(r.get("key_concepts") or []),
        })
    return out
