"""The six tools as functions of a ``generate(messages, tool, grammar=None) -> str`` callable, so tests drive them with a
fake model. ``grammar`` is a GBNF string (``iris.grammars``) that the model's output must follow.

Each returns a plain dict (what the Gradio API returns as JSON) with a ``status`` and a ``message`` that says
honestly where the result came from: ``ok`` (the model's output parsed), ``partial`` (only some of it parsed),
``fallback`` (the course question bank stood in), ``failed`` (nothing usable; the message says what to do).
"""

from __future__ import annotations

from datetime import date

try:
    from iris import grammars, grounding, logic, plan
except ImportError:  # the Space layout: these modules sit flat beside app.py
    import grammars
    import grounding
    import logic
    import plan


def _clean(raw: str) -> tuple[str, list[str]]:
    return logic.clean_output(raw or "")


# ----------------------------------------------------------------------------------------------------- quiz
def _ask_for_questions(generate, prompt, tool: str, n: int, mcq_only: bool, grammar: str):
    """Ask once under ``grammar``, and once more with the stricter prompt when the answer does not give n valid
    questions (the grammar fixes the layout; a question can still be invalid, e.g. two identical options). The valid
    questions of both answers are pooled, duplicates dropped.

    Returns the pooled questions (at most n, renumbered), one summary per attempt, and the leak flags of both answers.
    """
    attempts, flags, kept = [], [], []
    for strict in (False, True):
        text, leaked = _clean(generate(prompt(strict), tool, grammar=grammar))
        parsed = logic.parse_quiz(text, n, mcq_only=mcq_only)
        attempts.append({"strict": strict, "parsed": len(parsed.questions), "summary": parsed.summary()})
        flags += leaked
        seen = {q.text.lower() for q in kept}
        kept += [q for q in parsed.questions if q.text.lower() not in seen]
        if len(kept) >= n:
            break
    for i, q in enumerate(kept[:n], start=1):
        q.number = i
    return kept[:n], attempts, flags


def run_quiz(generate, topic: str, n: int, difficulty: str, bank=None) -> dict:
    """Ask for a quiz; re-ask once with a stricter prompt when it does not parse; then fall back honestly."""
    kept, attempts, flags = _ask_for_questions(generate, lambda strict: logic.quiz_prompt(topic, n, difficulty, strict=strict), "quiz", n, True,
                                               grammars.quiz(n))
    questions = [q.to_dict() for q in kept]
    result = {"topic": topic, "difficulty": difficulty, "requested": n, "attempts": attempts, "leak_flags": sorted(set(flags))}
    if len(questions) >= n:
        note = " (after a stricter re-ask)" if len(attempts) > 1 else ""
        return {**result, "status": "ok", "source": "model", "questions": questions, "message": f"{len(questions)} questions from the model{note}."}
    if questions:
        return {**result, "status": "partial", "source": "model", "questions": questions,
                "message": f"Only {len(questions)} of {n} questions parsed, even after a stricter re-ask; showing those {len(questions)}."}
    banked = bank(topic, n, kinds=("mcq",)) if bank else []
    if banked:
        return {**result, "status": "fallback", "source": "question_bank", "questions": banked,
                "message": f"The model's output could not be parsed as a quiz, even after a stricter re-ask. "
                           f"Showing {len(banked)} questions on {topic} from the course question bank instead."}
    return {**result, "status": "failed", "source": "none", "questions": [],
            "message": f"The model's output could not be parsed as a quiz, even after a stricter re-ask, and the question bank has "
                       f"nothing on {topic!r}. Try again, a larger model, or a course topic such as LoRA or feature stores."}


# ------------------------------------------------------------------------------------------------- feedback
def run_feedback(generate, question: str, answer: str, index=None) -> dict:
    """A verdict only from evidence: the rubric of the matching course item (``iris.grounding``). The model writes the
    explanation after that verdict (forced by a grammar); sentences where it claims another verdict are removed.
    Without a matching item there is no verdict, and the model's text is shown as unchecked comments."""
    graded = grounding.grade(question, answer, index)
    if graded["grounded"]:
        text, flags = _clean(generate(logic.feedback_prompt(question, answer), "feedback", grammar=grammars.feedback(graded["verdict"])))
        comments, removed = logic.drop_verdict_claims(logic.parse_feedback(text)["feedback"], graded["verdict"])
        ref, points = graded["reference"], len(graded["found"]) + len(graded["missing"])
        message = (f"Verdict from the course rubric of \u201c{ref['question']}\u201d: your answer covers {len(graded['found'])} of its "
                   f"{points} key points. The explanation is the model's.")
        return {"verdict": graded["verdict"], "grounded": True, "feedback": comments, "found": graded["found"], "missing": graded["missing"],
                "model_answer": ref["answer"], "reference": ref, "coverage": graded["coverage"], "similarity": graded["similarity"],
                "status": "ok", "message": message, "leak_flags": sorted(set(flags)), "claims_removed": removed}
    text, flags = _clean(generate(logic.feedback_prompt(question, answer), "feedback"))
    comments, removed = logic.drop_verdict_claims(text, None)  # no verdict, so every claim of one goes
    return {"verdict": None, "grounded": False, "feedback": comments, "found": [], "missing": [], "model_answer": "", "reference": None,
            "coverage": None, "similarity": graded["similarity"], "status": "unverified", "leak_flags": sorted(set(flags)), "claims_removed": removed,
            "message": "No course item matches this question, so Iris gives no verdict. The model's comments below are unchecked: "
                       "compare them with the course material, or ask a question from the course."}


# ---------------------------------------------------------------------------------------------- cheat sheet
def run_cheat_sheet(generate, topics: list[str], model_label: str, when: str | None = None) -> dict:
    text, flags = _clean(generate(logic.cheat_sheet_prompt(topics), "cheat_sheet"))
    when = when or date.today().isoformat()
    if len(text) < 20:
        return {"status": "failed", "topics": topics, "markdown": "", "leak_flags": flags,
                "message": "The model returned no usable cheat sheet; try again or pick another model."}
    return {"status": "ok", "topics": topics, "markdown": logic.cheat_sheet_markdown(topics, text, model_label, when),
            "leak_flags": flags, "message": ""}


# --------------------------------------------------------------------------------------------- study plan
def run_study_plan(generate, start: date, exam: date, hours: float, topics: list[str], weak: list[str]) -> dict:
    """The schedule comes from code; the model's draft only supplies activity texts, and its problems are reported."""
    schedule = plan.build_schedule(start, exam, hours, topics, weak)
    text, flags = _clean(generate(logic.study_plan_prompt(start.isoformat(), exam.isoformat(), hours, schedule.topics, schedule.weak), "study_plan"))
    draft = plan.parse_plan_lines(text, start, schedule.topics)
    draft_problems = plan.check_plan(draft, start, exam, hours, schedule.topics, schedule.weak) if draft else ["no plan lines could be read"]
    used = plan.fill_activities(schedule, draft)
    problems = plan.check_plan(schedule.days, start, exam, hours, schedule.topics, schedule.weak)
    schedule.notes.append(
        f"Dates, hours and topics were computed by Iris; the model wrote {used} of {len(schedule.days)} activities."
        + (f" Its own draft was not used for the schedule: {draft_problems[0]}" + (f" (and {len(draft_problems) - 1} more problems)." if len(draft_problems) > 1 else ".")
           if draft_problems else "")
    )
    if problems:  # a bug in build_schedule, never hidden
        schedule.notes.append("Check failed: " + "; ".join(problems))
    return {
        "status": "ok" if not problems else "failed",
        "days": [d.to_dict() for d in schedule.days],
        "total_hours": sum(d.hours for d in schedule.days),
        "topic_hours": plan.topic_hours(schedule),
        "hours_per_week": hours,
        "start": start.isoformat(),
        "exam": exam.isoformat(),
        "weak": schedule.weak,
        "checks": problems,
        "model_draft_problems": draft_problems,
        "model_activities": used,
        "markdown": plan.render_plan(schedule),
        "leak_flags": flags,
        "message": schedule.notes[0],
    }


# ---------------------------------------------------------------------------------------------- mixed drill
def run_drill(generate, topics: list[str], n: int, bank=None) -> dict:
    kept, attempts, flags = _ask_for_questions(generate, lambda strict: logic.drill_prompt(topics, n, strict=strict), "mixed_drill", n, False,
                                               grammars.drill(n))
    questions = [q.to_dict() for q in kept]
    result = {"topics": topics, "requested": n, "attempts": attempts, "leak_flags": sorted(set(flags))}
    if len(questions) >= n:
        return {**result, "status": "ok", "source": "model", "questions": questions, "message": f"{len(questions)} questions from the model."}
    if questions:
        return {**result, "status": "partial", "source": "model", "questions": questions,
                "message": f"Only {len(questions)} of {n} questions parsed, even after a stricter re-ask; showing those {len(questions)}."}
    banked = []
    if bank:
        for i in range(n):  # round-robin over topics, alternating multiple-choice and open questions
            kinds = ("mcq",) if i % 2 == 0 else ("short answer", "compare")
            got = bank(topics[i % len(topics)], 1, kinds=kinds, exclude=[q["text"] for q in banked])
            banked += got
        for i, q in enumerate(banked):
            q["number"] = i + 1
    if banked:
        return {**result, "status": "fallback", "source": "question_bank", "questions": banked,
                "message": f"The model's output could not be parsed as a drill, even after a stricter re-ask. "
                           f"Showing {len(banked)} questions from the course question bank instead."}
    return {**result, "status": "failed", "source": "none", "questions": [],
            "message": "The model's output could not be parsed as a drill, even after a stricter re-ask, and the question bank has "
                       "nothing on these topics. Try again or name course topics such as LoRA or feature stores."}


# ----------------------------------------------------------------------------------------------------- chat
def chat_messages(history, message: str, count, n_ctx: int, max_tokens: int, notes=()) -> tuple[list[dict], int, int]:
    """The prompt for one chat turn, trimmed to the context window: the system prompt with the message's course-note
    passages (``notes``, best first: the last ones go when the system prompt, notes and message alone do not fit), the
    message, then as many of the newest turns as fit. Returns the messages, how many old messages were dropped, and how
    many notes were kept."""
    budget = n_ctx - max_tokens - 8
    history = logic.normalize_history(history)
    notes = list(notes)
    while True:
        try:
            prompt, dropped = logic.trim_history(logic.chat_system(notes), history, message, count, budget)
            return prompt, dropped, len(notes)
        except logic.InputError:
            if not notes:
                raise
            notes.pop()


def stream_chat(stream, history: list[dict], message: str, count, n_ctx: int, max_tokens: int, notes=()):
    """Yield ``(growing cleaned answer, old messages dropped, leak flags, notes kept)``; ``stream(messages, tool)``
    yields text pieces as the model makes them. ``notes``: the message's course-note passages (``iris.notes``)."""
    prompt, dropped, kept = chat_messages(history, message, count, n_ctx, max_tokens, notes)
    text, pieces = "", stream(prompt, "study_chat")
    try:
        for piece in pieces:
            text += piece
            cleaned, flags = logic.clean_output(text)
            yield cleaned, dropped, flags, kept
            if "next_turn_cut" in flags:  # the model started writing the student's next turn: stop there
                break
    finally:
        if hasattr(pieces, "close"):
            pieces.close()  # releases the model's lock at once, not when the generator is collected
