"""GBNF grammars that make a small model's quiz, drill and feedback parse every time.

llama.cpp samples only tokens the grammar allows, so the output has the exact layout of the exam-prep training data
(the layout ``logic.parse_questions`` reads, and the one the tuned model learnt): the model supplies the content, the
grammar the structure. Every free-text field has a length bound, so no field can run to the token limit, and the
grammar ends after the last answer-key line, so generation stops there.

    **Question 1.** <text>                           **Question 2.** (short answer) <text>
    A) <option>  ... D) <option>                      ...
    **Answer key**                                    **What to look for**
    1. B: <why>                                       2. A good answer covers: <points>

Strings: ``iris.tasks`` picks the grammar; whoever calls the model passes ``compiled(text)`` to llama-cpp-python.
"""

from __future__ import annotations

from functools import lru_cache

TEXT = "[^\\n(] [^\\n]{7,239}"  # a question's text; not opening with "(", which would read as a kind tag
OPTION = "[^\\n]{1,160}"  # one option
WHY = "[^\\n]{4,300}"  # one answer-key line after its letter
OPEN_KINDS = ("short answer", "compare")


def _lit(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _mcq(i: int) -> str:
    options = " ".join(f'{_lit(f"{letter}) ")} option "\\n"' for letter in "ABCD")
    return f'q{i} ::= {_lit(f"**Question {i}.** ")} text "\\n" {options} "\\n"'


def _open(i: int, kind: str) -> str:
    return f'q{i} ::= {_lit(f"**Question {i}.** ({kind}) ")} text "\\n\\n"'


def _common() -> list[str]:
    return [f"text ::= {TEXT}", f"option ::= {OPTION}", f"why ::= {WHY}"]


def quiz(n: int) -> str:
    """``n`` multiple-choice questions with four options each, then an answer key with one letter and reason each."""
    rules = [f'root ::= {" ".join(f"q{i}" for i in range(1, n + 1))} "**Answer key**\\n" {" ".join(f"k{i}" for i in range(1, n + 1))}']
    for i in range(1, n + 1):
        rules += [_mcq(i), f'k{i} ::= {_lit(f"{i}. ")} [ABCD] ": " why "\\n"']
    return "\n".join(rules + _common())


def drill_kinds(n: int) -> list[str]:
    """The kind of each drill question: multiple choice on odd numbers, short-answer and compare alternating on even."""
    return ["mcq" if i % 2 == 0 else OPEN_KINDS[(i // 2) % 2] for i in range(n)]


def drill(n: int) -> str:
    """A mixed drill of ``n`` questions of the kinds ``drill_kinds(n)``, then '**What to look for**' per question."""
    kinds = drill_kinds(n)
    rules = [f'root ::= {" ".join(f"q{i}" for i in range(1, n + 1))} "**What to look for**\\n" {" ".join(f"k{i}" for i in range(1, n + 1))}']
    for i, kind in enumerate(kinds, start=1):
        if kind == "mcq":
            rules += [_mcq(i), f'k{i} ::= {_lit(f"{i}. ")} [ABCD] ": " why "\\n"']
        else:
            rules += [_open(i, kind), f'k{i} ::= {_lit(f"{i}. A good answer covers: ")} why "\\n"']
    return "\n".join(rules + _common())


def feedback(verdict: str) -> str:
    """Feedback that starts with the verdict Iris has already fixed from evidence; the model writes the explanation."""
    return "\n".join([
        f"root ::= {_lit(f'Verdict: {verdict}.')} \"\\n\\n\" para (\"\\n\\n\" para){{0,3}}",
        "para ::= [^\\n]{20,900}",
    ])


@lru_cache(maxsize=64)
def compiled(text: str):
    """The ``llama_cpp.LlamaGrammar`` of a GBNF string (cached: the same quiz size reuses one)."""
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(text, verbose=False)
