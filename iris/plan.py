"""Study plans whose dates and hours are computed here, never trusted from a model.

``build_schedule`` lays out the study days (from the start date up to the day before the exam, Sundays off), a
constant number of hours per day that keeps every calendar week (Monday-Sunday) within the weekly budget, and the
topic of each day (weak topics get twice the sessions; the last day is a mock exam). The model only writes
activities: ``parse_plan_lines`` reads its draft ("- Mon 31 Aug, 1.5 h: Topic: activity.") and ``fill_activities``
takes the activity text of draft lines whose topic matches; ``check_plan`` checks any plan (the model's draft or
the final one) against dates, hours, coverage and weak-topic time.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

try:
    from iris.logic import InputError, join_and
except ImportError:  # the Space layout: these modules sit flat beside app.py
    from logic import InputError, join_and

MAX_DAYS = 180
MAX_HOURS_PER_DAY = 4.0
MOCK = "Mock exam"
DEFAULT_ACTIVITIES = [
    "read your notes, then write the key points from memory",
    "work through a practice quiz and review every wrong answer",
    "explain it aloud in five minutes, then check what you missed",
    "solve two past exam questions under time pressure",
    "draw the main diagram and annotate each component",
    "write a one-page summary with one worked example",
]


@dataclass
class PlanDay:
    day: date
    hours: float
    topics: list[str]
    activity: str = ""
    source: str = "iris"  # iris | model: who wrote the activity
    weak: bool = False

    def line(self) -> str:
        tag = " (weak topic)" if self.weak else ""
        return f"- {self.day:%a %d %b}, {self.hours:g} h: {' + '.join(self.topics)}: {self.activity}{tag}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        d["weekday"] = f"{self.day:%a}"
        return d


@dataclass
class Plan:
    days: list[PlanDay]
    start: date
    exam: date
    hours_per_week: float
    topics: list[str]
    weak: list[str]
    notes: list[str] = field(default_factory=list)


def parse_date(name: str, text: str) -> date:
    try:
        return date.fromisoformat(str(text).strip())
    except ValueError:
        raise InputError(f"{name} must be a date like 2026-06-22, not {text!r}.") from None


def week_of(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _floor_half(x: float) -> float:
    return int(x * 2) / 2


def _spread(candidates: list[date], k: int) -> list[date]:
    """``k`` of the candidate days, evenly spread, always keeping the last one."""
    if k >= len(candidates):
        return candidates
    step = len(candidates) / k
    return sorted({candidates[len(candidates) - 1 - int(i * step)] for i in range(k)})


def _topic_sequence(topics: list[str], weak: list[str], slots: int) -> list[list[str]]:
    """Topics of ``slots`` study days: each topic at least once, weak topics about twice as often, no repeats in a row."""
    if slots < len(topics):  # fewer days than topics: several topics a day, weak ones first
        ordered = [t for t in topics if t in weak] + [t for t in topics if t not in weak]
        return [ordered[i::slots] for i in range(slots)]
    counts = {t: 1 for t in topics}
    weight = {t: 2 if t in weak else 1 for t in topics}
    while sum(counts.values()) < slots:  # the next slot goes to the topic furthest below its share; weak ones win ties
        counts[min(topics, key=lambda t: (counts[t] / weight[t], weight[t] == 1, topics.index(t)))] += 1
    sequence, last = [], None
    for _ in range(slots):
        options = sorted(counts, key=lambda t: (-counts[t], t not in weak, topics.index(t)))
        pick = next((t for t in options if counts[t] and t != last), options[0])
        counts[pick] -= 1
        sequence.append([pick])
        last = pick
    return sequence


def build_schedule(start: date, exam: date, hours_per_week: float, topics: list[str], weak: list[str]) -> Plan:
    """Days, hours and topics of a plan; activities are filled in later (by the model's draft, else defaults)."""
    if not topics:
        raise InputError("Topics is empty: list the exam topics, separated by commas.")
    unknown = [w for w in weak if w.lower() not in {t.lower() for t in topics}]
    topics = topics + unknown  # a weak topic is a topic too
    weak = [t for t in topics if t.lower() in {w.lower() for w in weak}]
    if exam <= start:
        raise InputError(f"The exam date ({exam}) must be after the start date ({start}).")
    if (exam - start).days > MAX_DAYS:
        raise InputError(f"The exam is {(exam - start).days} days away; Iris plans at most {MAX_DAYS} days. Pick a later start date.")
    if not 0.5 <= hours_per_week <= 80:
        raise InputError(f"Hours per week must be between 0.5 and 80, not {hours_per_week:g}.")
    study = [start + timedelta(days=i) for i in range((exam - start).days) if (start + timedelta(days=i)).weekday() != 6]
    if not study:
        raise InputError(f"There is no study day between {start} and {exam} (Sundays are off).")
    weeks: dict[date, list[date]] = {}
    for d in study:
        weeks.setdefault(week_of(d), []).append(d)
    # One length for every session: the budget spread over the fullest week, in half hours, at most 4 h.
    hours = min(MAX_HOURS_PER_DAY, max(0.5, _floor_half(hours_per_week / max(len(v) for v in weeks.values()))))
    days = []
    for week_days in weeks.values():
        days += _spread(week_days, min(len(week_days), int(hours_per_week // hours)))
    mock = len(days) >= 3 and len(days) > len(topics)
    sequence = _topic_sequence(topics, weak, len(days) - mock)
    plan_days = [PlanDay(d, hours, t, weak=any(x in weak for x in t)) for d, t in zip(days, sequence)]
    if mock:
        revisit = f", then revisit {join_and(weak)}" if weak else ""
        plan_days.append(PlanDay(days[-1], hours, [MOCK], f"mock exam covering every topic{revisit}"))
    return Plan(plan_days, start, exam, hours_per_week, topics, weak)


def fill_activities(plan: Plan, draft: list[PlanDay]) -> int:
    """Give each day an activity: the model's text for the same topic where its draft has one, else a default.

    Returns how many activities came from the model.
    """
    pool: dict[str, list[str]] = {}
    for d in draft:
        if d.activity and len(d.topics) == 1:
            pool.setdefault(d.topics[0].lower(), []).append(d.activity.rstrip("."))
    from_model, n = 0, 0
    for day in plan.days:
        if day.activity:
            continue
        texts = pool.get(day.topics[0].lower()) if len(day.topics) == 1 else None
        if texts:
            day.activity, day.source = texts.pop(0), "model"
            from_model += 1
        else:
            day.activity = DEFAULT_ACTIVITIES[n % len(DEFAULT_ACTIVITIES)]
            n += 1
    return from_model


LINE = re.compile(r"^\s*[-*•]?\s*(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun)\w*,?\s+)?(\d{1,2})\s+([A-Z][a-z]{2})\w*,?\s*([\d.]+)\s*h(?:ours?)?\s*:\s*(.+?)\s*$")
MONTHS = {m: i + 1 for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}


def parse_plan_lines(text: str, start: date, topics: list[str]) -> list[PlanDay]:
    """Plan lines of a model's draft; the year comes from the start date (the next year for earlier months)."""
    out = []
    for line in (text or "").splitlines():
        match = LINE.match(line)
        if not match or match.group(3) not in MONTHS:
            continue
        month, day_no = MONTHS[match.group(3)], int(match.group(2))
        year = start.year + (1 if month < start.month else 0)
        try:
            when = date(year, month, day_no)
            hours = float(match.group(4))
        except ValueError:
            continue
        rest = re.sub(r"\s*\(weak topic\)\s*\.?$", "", match.group(5))
        head, _, activity = rest.partition(":")
        parts = {p.strip().lower() for p in head.split("+")}
        found = ([t for t in topics if t.lower() in parts] or [t for t in topics if t.lower() in head.lower()]
                 or ([MOCK] if "mock" in rest.lower() else []))
        out.append(PlanDay(when, hours, found or [head.strip()], activity.strip() if found and activity else rest.strip(), "model"))
    return out


def check_plan(days: list[PlanDay], start: date, exam: date, hours_per_week: float, topics: list[str], weak: list[str]) -> list[str]:
    """Every way ``days`` breaks the rules; an empty list means the plan is sound."""
    problems = []
    if not days:
        return ["the plan has no study days"]
    for d in days:
        if not start <= d.day < exam:
            problems.append(f"{d.day} is outside the study window {start} .. {exam - timedelta(days=1)}")
        if d.hours <= 0:
            problems.append(f"{d.day} has {d.hours:g} h")
    if len({d.day for d in days}) < len(days):
        problems.append("a day appears twice")
    weekly: dict[date, float] = {}
    for d in days:
        weekly[week_of(d.day)] = weekly.get(week_of(d.day), 0) + d.hours
    for week, total in sorted(weekly.items()):
        if total > hours_per_week + 1e-9:
            problems.append(f"the week of {week} has {total:g} h, above the budget of {hours_per_week:g} h")
    time = {t: 0.0 for t in topics}
    for d in days:
        for t in d.topics:
            for known in topics:
                if known.lower() == t.lower():
                    time[known] += d.hours / len(d.topics)
    missing = [t for t, h in time.items() if h == 0]
    if missing:
        problems.append(f"not covered: {', '.join(missing)}")
    strong = [time[t] for t in topics if t not in weak]
    study_days = sum(MOCK not in d.topics for d in days)  # enough days for weak topics to get two sessions each
    for t in weak:
        if strong and time[t] <= max(strong) and study_days >= len(topics) + len(weak):
            problems.append(f"weak topic {t} gets {time[t]:g} h, not more than the {max(strong):g} h of another topic")
    return problems


def topic_hours(plan: Plan) -> dict[str, float]:
    out = {t: 0.0 for t in plan.topics}
    for d in plan.days:
        for t in d.topics:
            if t in out:
                out[t] += d.hours / len(d.topics)
    return out


def render_plan(plan: Plan) -> str:
    total = sum(d.hours for d in plan.days)
    weekly = {}
    for d in plan.days:
        weekly[week_of(d.day)] = weekly.get(week_of(d.day), 0) + d.hours
    head = (f"**{len(plan.days)} study days, {total:g} hours in all, at most {max(weekly.values()):g} h in any week "
            f"(budget {plan.hours_per_week:g} h), Sundays off.**")
    if plan.weak:
        head += f" Weak topics ({join_and(plan.weak)}) get more sessions."
    lines = [head, "", *[d.line() for d in plan.days], "", f"Exam day ({plan.exam:%a %d %b}): light review only."]
    if plan.notes:
        lines += ["", *[f"*{n}*" for n in plan.notes]]
    return "\n".join(lines)
