"""Iris's pure logic: generation settings, system prompts, prompt building, parsing, grading, trimming, leak checks.

Nothing here touches a model or Gradio. Functions that need a model take a ``count`` (tokens of a string) or are
driven by ``iris.tasks`` with a ``generate`` callable, so the unit tests run them with a fake model.

The parsers read the exact formats of the exam-prep training data first (what the fine-tuned models produce):

    **Question 1.** text            Verdict: partly correct.
    A) ... B) ... C) ... D) ...
    **Answer key**                   <feedback text> Model answer: ...
    1. B: explanation

and accept common variants (``Question 1:``, ``Q1.``, ``a.`` options, ``Answer: B`` inside a question).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

# ----------------------------------------------------------------------------------------- settings and limits
# The original app's per-tool generation settings.
BASE_SETTINGS = {"temperature": 0.3, "top_p": 0.9, "repeat_penalty": 1.15}
MAX_TOKENS = {"study_chat": 512, "feedback": 700, "quiz": 800, "cheat_sheet": 900, "study_plan": 900, "mixed_drill": 900}
TOOLS = tuple(MAX_TOKENS)
MAX_FIELD_CHARS = 4000  # per text field, enforced on the server (the UI's max length does not bind API callers)
MAX_HISTORY_MESSAGES = 64
MAX_QUESTIONS = 10
LETTERS = "ABCD"


class InputError(ValueError):
    """Bad user input; the app shows the message as a ``gr.Error``."""


# Tools whose output is a list of items that must differ (a question's four options, the questions themselves): no
# run of this many tokens is generated twice, as transformers' ``no_repeat_ngram_size``. Small models otherwise copy a
# whole option, and the copy costs the student a re-ask. Ten tokens leave short phrases ("the model's", "A) The")
# free to recur.
NO_REPEAT_NGRAM = {"quiz": 10, "mixed_drill": 10}
REPEAT_BAN = 1e3  # subtracted from a banned token's logit: finite, so a grammar that allows only that token still works


def settings(tool: str, cap: int | None = None) -> dict:
    """Sampling settings of ``tool`` (JSON, for records); ``cap`` (e.g. ``IRIS_MAX_TOKENS_CAP``) bounds max_tokens.

    ``sampling`` turns them into the keyword arguments of a llama-cpp-python completion.
    """
    if tool not in MAX_TOKENS:
        raise KeyError(f"unknown tool {tool!r}: one of {', '.join(TOOLS)}")
    max_tokens = MAX_TOKENS[tool] if not cap else min(MAX_TOKENS[tool], cap)
    return {**BASE_SETTINGS, "max_tokens": max_tokens, **({"no_repeat_ngram": NO_REPEAT_NGRAM[tool]} if tool in NO_REPEAT_NGRAM else {})}


def sampling(tool: str, cap: int | None = None) -> dict:
    """``settings(tool, cap)`` as ``create_chat_completion`` keyword arguments: a fresh ``NoRepeatNgram`` per call."""
    kwargs = settings(tool, cap)
    n = kwargs.pop("no_repeat_ngram", None)
    return {**kwargs, "logits_processor": [NoRepeatNgram(n)]} if n else kwargs


def repeated_ngram_next(tokens: list[int], n: int) -> set[int]:
    """Tokens that would complete an ``n``-gram already in ``tokens`` (the last n-1 tokens seen before, and what
    followed them then)."""
    if n < 2 or len(tokens) < n:
        return set()
    prefix, last = tokens[len(tokens) - n + 1:], tokens[-1]
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1)
            if tokens[i + n - 2] == last and tokens[i:i + n - 1] == prefix}


class NoRepeatNgram:
    """A llama-cpp-python logits processor that bans repeating any ``n``-gram of the reply (not of the prompt).

    One object per request: its first call sees the prompt's tokens and remembers where the reply starts.
    """

    def __init__(self, n: int):
        self.n, self.start = n, None

    def __call__(self, input_ids, scores):
        ids = [int(t) for t in input_ids]
        if self.start is None:
            self.start = len(ids)
        for token in repeated_ngram_next(ids[self.start:], self.n):
            scores[token] -= REPEAT_BAN
        return scores


def check_text(name: str, value, required: bool = True, limit: int = MAX_FIELD_CHARS) -> str:
    """The stripped text of a field, or ``InputError`` naming the field when it is missing or too long."""
    text = "" if value is None else str(value)
    if len(text) > limit:
        raise InputError(f"{name} is {len(text):,} characters; the limit is {limit:,}. Shorten it and try again.")
    text = text.strip()
    if required and not text:
        raise InputError(f"{name} is empty: type something first.")
    return text


def check_int(name: str, value, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number from {lo} to {hi}, not {value!r}.") from None
    if number != int(number) or not lo <= number <= hi:
        raise InputError(f"{name} must be a whole number from {lo} to {hi}, not {value!r}.")
    return int(number)


def split_topics(text: str) -> list[str]:
    """``"LoRA, QLoRA; GGUF\\nattention"`` -> four topics, duplicates removed, order kept."""
    seen, out = set(), []
    for part in re.split(r"[,;\n]+", text or ""):
        topic = part.strip(" .-*\t")
        if topic and topic.lower() not in seen:
            seen.add(topic.lower())
            out.append(topic)
    return out


# ------------------------------------------------------------------------------- system prompts and prompt building
# One source of what the model sees, shared with the dataset builder (tools/build_datasets.py).
try:
    from iris import prompts as _prompts
except ImportError:  # the Space layout: these modules sit flat beside app.py
    import prompts as _prompts

# Re-exported: the app and tests use logic.quiz_prompt and so on.
QUIZ_TEMPLATE, SYSTEM_PROMPTS, join_and, messages = _prompts.QUIZ_TEMPLATE, _prompts.SYSTEM_PROMPTS, _prompts.join_and, _prompts.messages
quiz_prompt, feedback_prompt, cheat_sheet_prompt = _prompts.quiz_prompt, _prompts.feedback_prompt, _prompts.cheat_sheet_prompt
study_plan_prompt, drill_prompt, chat_system = _prompts.study_plan_prompt, _prompts.drill_prompt, _prompts.chat_system


# ---------------------------------------------------------------------------------------------- leaked phrases
from labcore.text import clean_output, leak_hits, strip_meta  # noqa: E402,F401  (re-exported for the app and tasks)


# ------------------------------------------------------------------------------------------------ chat history
def content_text(content) -> str:
    """Text of a chat message's content: a string, or Gradio 6's list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, list | tuple):
        return "\n".join(t for t in (content_text(c) for c in content) if t)
    return str(content)


def normalize_history(history) -> list[dict]:
    """Gradio chat history (messages format) as ``[{"role", "content": str}]``; checks roles and sizes."""
    out = []
    for item in history or []:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise InputError("history must be a list of {'role': 'user'|'assistant', 'content': text} messages.")
        out.append({"role": item["role"], "content": check_text("a history message", content_text(item.get("content")), False, 2 * MAX_FIELD_CHARS)})
    if len(out) > MAX_HISTORY_MESSAGES:
        out = out[-MAX_HISTORY_MESSAGES:]
    return out


MESSAGE_OVERHEAD = 4  # ChatML: <|im_start|>role\n ... <|im_end|>\n


def trim_history(system: str, history: list[dict], message: str, count, budget: int) -> tuple[list[dict], int]:
    """Messages that fit ``budget`` tokens: the system prompt and the new message always, then the newest turns.

    ``count(text) -> int`` is the model's tokenizer. Whole turns are dropped from the oldest end, so the model
    never sees an assistant reply without its question. Returns the messages and how many old messages were dropped.
    """
    def cost(msg):
        return count(msg["content"]) + MESSAGE_OVERHEAD

    head = [{"role": "system", "content": system}]
    tail = [{"role": "user", "content": message}]
    used = sum(cost(m) for m in head + tail)
    if used > budget:
        raise InputError(f"The message alone needs {used} tokens, more than the {budget} this model's context leaves; shorten it.")
    turns, current = [], []
    for msg in history:  # group into turns that start at a user message
        if msg["role"] == "user" and current:
            turns.append(current)
            current = []
        current.append(msg)
    if current:
        turns.append(current)
    kept = []
    for turn in reversed(turns):
        need = sum(cost(m) for m in turn)
        if used + need > budget:
            break
        kept = turn + kept
        used += need
    return head + kept + tail, len(history) - len(kept)


# ---------------------------------------------------------------------------------------------------- quizzes
@dataclass
class Question:
    number: int
    text: str
    options: dict[str, str] = field(default_factory=dict)  # "A".."D" -> text; empty for open questions
    answer: str = ""  # a letter for multiple choice; the reference ("A good answer covers ...") for open ones
    explanation: str = ""
    kind: str = "mcq"  # mcq | short answer | compare
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("problems")
        return d


KEY_HEADER = re.compile(r"^\s*(?:#+\s*)?\**\s*(answer key|answers|answer sheet|solutions|what to look for)\s*:?\s*\**\s*:?\s*$", re.I | re.M)
QUESTION_START = re.compile(r"^\s*(?:#+\s*)?\**\s*(?:Question|Q)\s*(\d+)\s*[.:)]?\s*\**\s*[.:)]?\s*(.*)$", re.I | re.M)
OPTION = re.compile(r"^\s*(?:[-*]\s*)?\(?([A-Da-d])\s*[).:]\s*(.+?)\s*$")
INLINE_ANSWER = re.compile(r"^\s*\**\s*(?:correct\s+)?answer\s*\**\s*[:\-]\s*\**\s*\(?([A-D])\b\)?[.):]?\s*(.*)$", re.I)
KEY_LINE = re.compile(r"^\s*(?:[-*]\s*)?\**\s*(?:Question\s*|Q)?(\d+)\s*\**\s*[.):\-]\s*(.*)$", re.I)
KEY_LETTER = re.compile(r"^\**\s*\(?([A-D])\b\)?\**\s*(?:[.:)\-–—]+\s*|\s+|$)(.*)$", re.S)
KIND_TAG = re.compile(r"^\((short answer|compare|multiple choice|mcq)\)\s*", re.I)


def _split_key(text: str) -> tuple[str, str]:
    match = KEY_HEADER.search(text)
    return (text[: match.start()], text[match.end():]) if match else (text, "")


def _key_lines(key: str) -> dict[int, str]:
    out: dict[int, str] = {}
    last = None
    for line in key.splitlines():
        match = KEY_LINE.match(line)
        if match:
            last = int(match.group(1))
            out.setdefault(last, match.group(2).strip())
        elif last is not None and line.strip():
            out[last] += " " + line.strip()
    return out


def parse_questions(text: str, mcq_only: bool = True) -> list[Question]:
    """Every question block in ``text`` with what could be read; ``problems`` says what is wrong with each."""
    body, key = _split_key(text or "")
    keys = _key_lines(key)
    starts = list(QUESTION_START.finditer(body))
    questions = []
    for i, match in enumerate(starts):
        block = body[match.end(): starts[i + 1].start() if i + 1 < len(starts) else len(body)]
        q = Question(number=int(match.group(1)), text=match.group(2).strip().strip("*").strip())
        tag = KIND_TAG.match(q.text)
        if tag:
            q.kind = tag.group(1).lower().replace("multiple choice", "mcq")
            q.text = q.text[tag.end():].strip()
        for line in block.splitlines():
            opt = OPTION.match(line)
            inline = INLINE_ANSWER.match(line)
            if inline:
                q.answer, q.explanation = inline.group(1).upper(), inline.group(2).strip()
            elif opt and opt.group(1).upper() not in q.options:
                q.options[opt.group(1).upper()] = opt.group(2).strip()
            elif line.strip() and not q.options and not q.answer:
                q.text = (q.text + " " + line.strip()).strip()
        if q.kind != "mcq" or (not mcq_only and not q.options):
            q.kind = q.kind if q.kind != "mcq" else "short answer"
            q.answer = keys.get(q.number, "").strip()
            q.explanation = q.answer
            q.answer = re.sub(r"^(A good answer covers|Look for)\s*:\s*", "", q.answer, flags=re.I).strip()
        elif q.number in keys and not q.answer:
            letter = KEY_LETTER.match(keys[q.number])
            if letter:
                q.answer, q.explanation = letter.group(1).upper(), letter.group(2).strip()
        q.problems = validate_question(q)
        questions.append(q)
    return questions


def validate_question(q: Question) -> list[str]:
    problems = []
    if len(q.text) < 8:
        problems.append("no question text")
    if q.kind == "mcq":
        missing = [x for x in LETTERS if not q.options.get(x)]
        if missing:
            problems.append(f"options {', '.join(missing)} missing")
        elif len({v.lower() for v in q.options.values()}) < 4:
            problems.append("duplicate options")
        if q.answer not in set(LETTERS):
            problems.append("no answer letter in the key")
    elif len(q.answer) < 10:
        problems.append("no reference answer")
    return problems


@dataclass
class ParsedQuiz:
    questions: list[Question]  # the valid ones, renumbered 1..n
    rejected: list[Question]
    requested: int

    @property
    def complete(self) -> bool:
        return len(self.questions) >= self.requested and not self.rejected

    def summary(self) -> str:
        reasons = "; ".join(f"question {q.number}: {', '.join(q.problems)}" for q in self.rejected[:4])
        return f"{len(self.questions)} of {self.requested} questions parsed" + (f" ({reasons})" if reasons else "")


def parse_quiz(text: str, requested: int, mcq_only: bool = True) -> ParsedQuiz:
    """Valid questions (at most ``requested``, renumbered, duplicates dropped) and the rejected ones."""
    good, bad, seen = [], [], set()
    for q in parse_questions(text, mcq_only=mcq_only):
        key = q.text.lower()
        if q.valid and key not in seen and len(good) < requested:
            seen.add(key)
            q.number = len(good) + 1
            good.append(q)
        elif not q.valid:
            bad.append(q)
    return ParsedQuiz(good, bad, requested)


def render_quiz(questions: list[dict]) -> str:
    """Markdown for the student: questions and options, never the answers."""
    lines = []
    for q in questions:
        tag = "" if q.get("kind", "mcq") == "mcq" else f" *({q['kind']})*"
        lines.append(f"**Question {q['number']}.**{tag} {q['text']}")
        lines += [f"- {letter}) {q['options'][letter]}" for letter in LETTERS if q.get("options")]
        lines.append("")
    return "\n".join(lines).strip()


def parse_answers(answers, n: int) -> list[str]:
    """Student answers as ``n`` strings: a list, ``"1A 2C"``, ``"A,C,B"`` or a dict ``{"1": "A"}``."""
    if isinstance(answers, dict):
        return [str(answers.get(str(i + 1), answers.get(i + 1, "")) or "").strip() for i in range(n)]
    if isinstance(answers, str):
        pairs = re.findall(r"(\d+)\s*[.:)=-]?\s*([A-Da-d])\b", answers)
        if pairs:
            found = {int(k): v.upper() for k, v in pairs}
            return [found.get(i + 1, "") for i in range(n)]
        answers = [a for a in re.split(r"[\s,;]+", answers.strip()) if a] if answers.strip() else []
    answers = [("" if a is None else str(a)).strip() for a in (answers or [])]
    return (answers + [""] * n)[:n]


def _letter(answer: str) -> str:
    match = re.match(r"^\s*\(?([A-Da-d])\b", answer or "")
    return match.group(1).upper() if match else ""


def grade_quiz(questions: list[dict], answers) -> dict:
    """Score multiple-choice answers: ``{"score", "total", "results": [{number, given, correct, right, explanation}]}``."""
    given = parse_answers(answers, len(questions))
    results = []
    for q, a in zip(questions, given):
        letter = _letter(a)
        results.append({"number": q["number"], "given": letter, "correct": q["answer"], "right": letter == q["answer"],
                        "explanation": q.get("explanation", "")})
    return {"score": sum(r["right"] for r in results), "total": len(results), "results": results}


def render_grade(graded: dict) -> str:
    lines = [f"### Score: {graded['score']} / {graded['total']}", ""]
    for r in graded["results"]:
        mark = "✅" if r["right"] else "❌"
        given = r["given"] or "no answer"
        lines.append(f"{mark} **Question {r['number']}**: you chose {given}, the answer is {r['correct']}. {r['explanation']}".strip())
    return "\n\n".join(lines)


# -------------------------------------------------------------------------------------------------- feedback
VERDICT = re.compile(r"verdict\s*\**\s*[:\-]\s*\**\s*(partly correct|partially correct|mostly correct|correct|incorrect|wrong|partly|partial)", re.I)
VERDICT_NAMES = {"correct": "correct", "partly correct": "partly correct", "partially correct": "partly correct",
                 "mostly correct": "partly correct", "partly": "partly correct", "partial": "partly correct",
                 "incorrect": "wrong", "wrong": "wrong"}
MISSING_CUES = re.compile(r"\b(missing|miss(ed|es)?|could (strengthen|add|mention|improve)|should (mention|add|explain)|did not|didn't|forgot|lacks?|not mention(ed)?|but not)\b", re.I)


def parse_feedback(text: str) -> dict:
    """``{"verdict": correct | partly correct | wrong | None, "feedback", "missing": [..], "model_answer"}``."""
    match = VERDICT.search(text or "")
    verdict = VERDICT_NAMES[match.group(1).lower()] if match else None
    body = (text[match.end():] if match else text or "").lstrip(" .*\n")
    parts = re.split(r"\**\s*model answer\s*\**\s*:\s*\**", body, maxsplit=1, flags=re.I)
    feedback, model_answer = parts[0].strip(), (parts[1].strip() if len(parts) > 1 else "")
    explicit = re.search(r"(?im)^\s*\**\s*(what is missing|missing)\s*\**\s*:\s*(.+)$", feedback)
    if explicit:
        missing = [explicit.group(2).strip()]
    else:
        sentences = re.split(r"(?<=[.!?])\s+", feedback)
        missing = [s.strip() for s in sentences if MISSING_CUES.search(s)]
    return {"verdict": verdict, "feedback": feedback, "missing": missing, "model_answer": model_answer}


VERDICT_LINE = re.compile(r"(?im)^\s*\**\s*verdict\s*\**\s*[:\-].*$\n?")
_SUBJECT = r"^\W*(?:(?:this|that|it|your answer|the answer|you are|you're)\s+(?:is\s+|are\s+)?)?"
CLAIMS = [  # (how a sentence opens, the verdict it claims)
    (re.compile(_SUBJECT + r"(partly|partially|mostly) (correct|right)\b", re.I), "partly correct"),
    (re.compile(_SUBJECT + r"(not correct|not right|incorrect|wrong)\b", re.I), "wrong"),
    (re.compile(_SUBJECT + r"(correct|right)\b", re.I), "correct"),
    (re.compile(r"^\W*(you have|you've got|you had|that's|that is) the right idea\b|^\W*you cover(ed)? the basics\b|^\W*good start\b", re.I), "partly correct"),
    (re.compile(r"^\W*(well done|great answer|good answer|excellent|perfect)\b", re.I), "correct"),
]


def _claim(sentence: str) -> str | None:
    return next((verdict for pattern, verdict in CLAIMS if pattern.match(sentence)), None)


def drop_verdict_claims(text: str, verdict: str | None) -> tuple[str, int]:
    """``text`` without its "Verdict:" lines and the sentences that open by claiming a verdict other than ``verdict``
    ("Correct, with the mechanism covered ..." under a verdict of wrong; any claim when ``verdict`` is None); returns
    the text and how many sentences were removed."""
    text = VERDICT_LINE.sub("", text or "")
    kept, removed = [], 0
    for paragraph in text.split("\n"):
        sentences = re.split(r"(?<=[.!?])\s+", paragraph)
        keep = [x for x in sentences if _claim(x) in (None, verdict)]
        removed += len(sentences) - len(keep)
        kept.append(" ".join(keep))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), removed


def render_feedback(result: dict) -> str:
    """Markdown of ``tasks.run_feedback``'s result: the verdict and its evidence first, the model's words after."""
    if not result.get("grounded"):
        return "\n".join(["### No verdict", "", "**The model's comments (unchecked)**", "", result.get("feedback") or "(no comments)"])
    lines = [f"### Verdict: {result['verdict']}", ""]
    if result.get("found"):
        lines += ["**Key points you covered**", *[f"- {p}" for p in result["found"]], ""]
    if result.get("missing"):
        lines += ["**Key points missing**", *[f"- {p}" for p in result["missing"]], ""]
    lines += ["**Explanation (the model's)**", "", result.get("feedback") or "(the model wrote no explanation)", ""]
    if result.get("model_answer"):
        lines += ["**Reference answer (course material)**", "", result["model_answer"]]
    return "\n".join(lines).strip()


# ------------------------------------------------------------------------------------------------ cheat sheets
def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "topics"


def cheat_sheet_markdown(topics: list[str], body: str, model_label: str, when: str) -> str:
    """The downloadable file: a title, the (cleaned) sheet, and where it came from."""
    return f"# Cheat sheet: {join_and(topics)}\n\n{body.strip()}\n\n---\n*Generated by Iris with {model_label} on {when}. Check facts against the course material.*\n"


# ------------------------------------------------------------------------------------------------ mixed drills
STOPWORDS = set("""about above after again against because before being below between both cannot could does doing during each
from further having here itself just more most other ought same should some such than that their theirs them then there these
they this those through under until very what when where which while whom will with would your yours answer covers good
using used uses into also only over well like""".split())


def key_terms(reference: str, limit: int = 8) -> list[str]:
    """The reference's content words (bold terms first, then longer words), lower-cased and unique."""
    bold = [b.lower() for b in re.findall(r"\*\*([^*]{3,40})\*\*", reference)]
    words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9\-]{4,}", reference) if w.lower() not in STOPWORDS]
    out = []
    for term in bold + sorted(dict.fromkeys(words), key=lambda w: (-len(w), words.index(w))):
        if term not in out:
            out.append(term)
    return out[:limit]


def _mentions(answer: str, term: str) -> bool:
    answer = answer.lower()
    return all(w[:5] in answer for w in term.split())  # a 5-letter stem: "quantize" matches "quantization"


def grade_open(answer: str, reference: str) -> dict:
    """Keyword coverage of an open answer against its reference: 1, 0.5 or 0 points, and which key terms are missing."""
    terms = key_terms(reference)
    if not answer.strip():
        return {"points": 0.0, "covered": [], "missing": terms, "feedback": "No answer given."}
    covered = [t for t in terms if _mentions(answer, t)]
    ratio = len(covered) / len(terms) if terms else 0.0
    points = 1.0 if ratio >= 0.5 else 0.5 if ratio >= 0.25 else 0.0
    missing = [t for t in terms if t not in covered]
    verdict = {1.0: "Good", 0.5: "Partly there", 0.0: "Missing the key points"}[points]
    text = f"{verdict}: you covered {len(covered)} of {len(terms)} key terms" + (f"; missing: {', '.join(missing)}." if missing else ".")
    return {"points": points, "covered": covered, "missing": missing, "feedback": text}


def grade_drill(questions: list[dict], answers) -> dict:
    """Grade a mixed drill: letters for multiple choice, key-term coverage for short-answer and compare questions."""
    if isinstance(answers, str):  # "1. text\n2. text": one numbered answer per line
        parts = re.split(r"(?m)^\s*(\d+)\s*[.):]\s*", answers)
        answers = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    given = parse_answers(answers, len(questions))
    results = []
    for q, a in zip(questions, given):
        if q.get("kind", "mcq") == "mcq":
            letter = _letter(a)
            right = letter == q["answer"]
            results.append({"number": q["number"], "kind": "mcq", "given": letter, "points": float(right),
                            "feedback": f"{'Right' if right else 'Wrong'}: the answer is {q['answer']}. {q.get('explanation', '')}".strip()})
        else:
            graded = grade_open(a, q["answer"])
            results.append({"number": q["number"], "kind": q["kind"], "given": a, "points": graded["points"],
                            "feedback": graded["feedback"] + f" Reference: {q['answer']}", "missing": graded["missing"]})
    return {"score": sum(r["points"] for r in results), "total": len(results), "results": results}


def render_drill_grade(graded: dict) -> str:
    lines = [f"### Score: {graded['score']:g} / {graded['total']}"]
    for r in graded["results"]:
        mark = "✅" if r["points"] == 1 else "🟡" if r["points"] else "❌"
        lines.append(f"{mark} **Question {r['number']}** ({r['points']:g} pt): {r['feedback']}")
    return "\n\n".join(lines)
