"""Leaked role labels, chat-template special tokens and meta-instructions: the patterns, detection and stripping.

One definition for the data tools (cleaning the exam data), evaluation (leak rates), and Iris (cleaning answers).
"""

from __future__ import annotations

import re

# Prompt-writing instructions that leaked into the original project's exam prompts and, from there, into its
# models' answers. Each pattern has a name (reported per pattern), a regex, and a replacement for cleaning.
META_PATTERNS: list[tuple[str, str, str]] = [
    ("briefly", r"\b[Bb]riefly (compare|explain|describe|summari[sz]e|discuss|outline|define)\b", r"\1"),
    ("relate_it_to", r"\s*\b[Rr]elate (it|this|that|them|your answer) to\b[^.?!\n]*[.?!]?", ""),
    ("include_example", r"\s*\b[Ii]nclude (an?|one|some|concrete) (real[- ]world |industry |practical )?(examples?|use[- ]cases?)\b[^.?!\n]*[.?!]?", ""),
    ("answer_length", r"\s*\b(Answer|Respond|Reply|Explain) in (\d+|one|two|three|four|five|a few) (words|sentences|lines|paragraphs|bullet points)\b[^.?!\n]*[.?!]?", ""),
    ("keep_it_short", r"\s*\b[Kk]eep (it|your answer|the answer|this) (short|brief|concise|under \d+ words)\b[^.?!\n]*[.?!]?", ""),
    ("use_bullets", r"\s*\b[Uu]se (bullet points|a bulleted list)( in your answer)?\b[^.?!\n]*[.?!]?", ""),
    ("as_exam_answer", r"\s*\b[Ww]rite (it|your answer) as (an|a) exam (answer|response)\b[^.?!\n]*[.?!]?", ""),
]
# What must never appear in a model's answer: role headers and chat-template special tokens.
ROLE_LEAK = r"(<\|im_(start|end)\|>|<\|(start_header_id|end_header_id|eot_id|begin_of_text|end|user|assistant|system)\|>|<start_of_turn>|<end_of_turn>|^\s*(User|Assistant|System|Human)\s*:|### ?(Instruction|Response))"


def meta_hits(text: str) -> list[str]:
    """Names of the meta-instruction patterns found in ``text``."""
    return [name for name, pattern, _ in META_PATTERNS if re.search(pattern, text)]


def leak_hits(text: str) -> list[str]:
    """Meta-instruction pattern names plus ``role_or_special_token`` when a role header or special token leaked."""
    hits = meta_hits(text)
    if re.search(ROLE_LEAK, text, flags=re.M):
        hits.append("role_or_special_token")
    return hits


def strip_meta(text: str) -> tuple[str, list[str]]:
    """Remove meta-instruction phrases; returns the cleaned text and the names of the patterns that changed it."""
    changed = []
    for name, pattern, repl in META_PATTERNS:
        new = re.sub(pattern, repl, text)
        if new != text:
            changed.append(name)
            text = new
    text = re.sub(r"[ \t]{2,}", " ", text).strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text, changed


# ------------------------------------------------------------------------------------------ cleaning answers
# Where a model starts writing the next turn itself: everything from here on is cut.
TURN_START = re.compile(r"<\|im_start\|>|<\|start_header_id\|>|<start_of_turn>|<\|(user|system)\|>|^\s*(User|Human|System)\s*:", re.M)
SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>|<(start|end)_of_turn>|<\|im_(start|end)\|>")
ECHOED_INSTRUCTIONS = re.compile(r"(?i)^.*\b(never (repeat|mention)( or mention)? these instructions|answer directly as the tutor)\b.*$", re.M)


def clean_output(text: str) -> tuple[str, list[str]]:
    """Cut a model's answer at a self-written next turn, drop special tokens and role labels, strip meta-instructions.

    Returns the cleaned text and the names of what was removed (empty when the answer was clean).
    """
    flags = []
    match = TURN_START.search(text)
    if match and text[: match.start()].strip():
        text, flags = text[: match.start()], ["next_turn_cut"]
    new = re.sub(r"^\s*(Assistant|AI|Tutor|Iris)\s*:\s*", "", text)
    new = SPECIAL_TOKEN.sub("", new)
    new = re.sub(r"(?m)^\s*(User|Assistant|System|Human)\s*:\s*", "", new)
    if new != text:
        flags.append("role_or_special_token")
    text = new
    new = ECHOED_INSTRUCTIONS.sub("", text)
    if new != text:
        flags.append("echoed_system_prompt")
    text, changed = strip_meta(new)
    return text.strip(), flags + changed
