"""Correct-by-construction conversations for stage-1 general instruction tuning (ShareGPT format).

generate() returns {"conversations": [...], "category": ...} dicts in two categories: list_sorting (numbers and
words ordered or regrouped, with the rule explained) and step_by_step (discounts, unit conversions, durations and
bill splits, solved step by step). Every number in an answer is computed here (Decimal for money and units); stdlib
only. Each family returns (question, answer, follow-ups); about 45% of items get a follow-up turn that builds on the
first answer. All randomness comes from random.Random(1234), so two calls return identical lists.
"""
import random
from decimal import ROUND_HALF_UP
from decimal import Decimal as D

CENT, TENTH_MILLE = D("0.01"), D("0.0001")

def _num(x):
    return f"{x:,.4f}".rstrip("0").rstrip(".") if x != int(x) else f"{int(x):,}"

def _usd(x):
    return f"${D(x).quantize(CENT, ROUND_HALF_UP):,}"

def _clock(minutes, h24):
    h, m = divmod(minutes % 1440, 60)
    return f"{h:02d}:{m:02d}" if h24 else f"{h % 12 or 12}:{m:02d} {'AM' if h < 12 else 'PM'}"

def _hm(minutes):
    h, m = divmod(minutes, 60)
    return " ".join([f"{h} hour{'s' * (h != 1)}"] * bool(h) + [f"{m} minute{'s' * (m != 1)}"] * bool(m or not h))

# ----------------------------------------------------------------------------------------------- list_sorting
NUM_Q = ("Sort these numbers from smallest to largest: {x}", "Can you put {x} in ascending order?",
         "Order the following values from lowest to highest and explain how you did it: {x}",
         "I wrote down these readings: {x}. Arrange them in increasing order.", "What is the ascending order of {x}?",
         "Rank these numbers from least to greatest, please: {x}", "Quick one: sort {x} low to high.",
         "Arrange {x} from the smallest value up to the largest.")
WORD_Q = ("Put these {t} in alphabetical order: {x}", "Alphabetize this list for me: {x}",
          "Can you sort these {t} A to Z? {x}", "I need these {t} sorted alphabetically: {x}",
          "Order the following words as they would appear in a dictionary: {x}", "Arrange these {t} from A to Z: {x}",
          "Sort alphabetically and point out any tricky spots: {x}",
          "In what order would these {t} appear on an alphabetical list? {x}")
WORDS = {"fruits": "apple apricot avocado banana blueberry cherry cranberry grape grapefruit lemon lime pear plum",
         "animals": "badger bat bear beaver camel canary cat cheetah cobra crab crow deer dolphin donkey eel heron",
         "kitchen tools": "blender bowl colander grater kettle knife ladle pan peeler pot sieve spoon tongs whisk",
         "countries": "Argentina Australia Austria Belgium Brazil Canada Chile China Colombia Ghana Greece Peru"}

def _numbers(rng):
    n, vals = rng.randint(6, 9), set()
    while len(vals) < n:
        vals.add(rng.choice([rng.randint(-40, 120), round(rng.uniform(-20, 60), rng.choice([1, 2]))]))
    x, s = list(vals), sorted(vals)
    rng.shuffle(x)
    neg, mid = [v for v in s if v < 0], [i for i in range(1, n - 1) if s[i] != int(s[i])]
    lines = [f"In ascending order: {', '.join(map(_num, s))}", "", "How the order was decided:",
             f"- Negative numbers come first, and the one farthest below zero is the smallest, so {_num(neg[0])} "
             "leads the list." if neg else "- Every value is zero or positive, so they are compared purely by size."]
    if mid:
        lines.append(f"- Decimals are placed by their full value, not just the whole part: {_num(s[mid[0]])} "
                     f"falls after {_num(s[mid[0] - 1])} and before {_num(s[mid[0] + 1])}.")
    lines.append(f"- The smallest value is {_num(s[0])} and the largest is {_num(s[-1])}, a range of "
                 f"{_num(round(s[-1] - s[0], 2))}.")
    h, tot = n // 2, round(sum(s), 2)
    med = (f"There are {n} values, an odd count, so the median is the single middle one, position {h + 1} in the "
           f"sorted list: **{_num(s[h])}**, with {h} numbers below it and {h} above it." if n % 2 else
           f"There are {n} values, an even count, so the median is the average of the two middle ones (positions {h} "
           f"and {h + 1}): ({_num(s[h - 1])} + {_num(s[h])}) / 2 = **{_num(round((s[h - 1] + s[h]) / 2, 3))}**. "
           "Half of the values lie below it and half above.")
    follow = [("Now reverse it so the largest comes first.", f"Largest to smallest: {', '.join(map(_num, s[::-1]))}"
               f"\n\nThis is the ascending list read backwards, so {_num(s[-1])} now opens the list and {_num(s[0])} "
               "closes it. Reversing a sorted list gives the opposite order without comparing anything again."),
              ("Which one is the median?", med),
              ("What do they add up to, and what's the average?", f"Step 1 - Add them: {' + '.join(map(_num, s))} = "
               f"{_num(tot)}.\nStep 2 - Divide by how many there are ({n}): {_num(tot)} / {n} = "
               f"{_num(round(tot / n, 2))} (rounded to two decimals).\n\nSo the sum is **{_num(tot)}** and the mean "
               f"is about **{_num(round(tot / n, 2))}**.")]
    return rng.choice(NUM_Q).format(x=", ".join(map(_num, x))), "\n".join(lines), follow

def _words(rng):
    theme = rng.choice(sorted(WORDS))
    x = rng.sample(WORDS[theme].split(), rng.randint(6, 9))
    s = sorted(x, key=str.lower)
    a, b, i = max(((a, b, next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b))))
                   for a, b in zip(s, s[1:])), key=lambda t: t[2])
    why = ("Every neighbour here starts with a different letter, so the first letter alone settles the order." if not i
           else f"The tricky spot is \"{a}\" before \"{b}\": they match until \"{a}\" runs out, and the shorter word "
           "goes first." if i == min(len(a), len(b)) else f"The closest call is \"{a}\" before \"{b}\": both start "
           f"with \"{a[:i]}\", and at the next letter \"{a[i]}\" comes before \"{b[i]}\" in the alphabet.")
    ans = "Alphabetical order:\n" + "\n".join(f"{n}. {w}" for n, w in enumerate(s, 1)) + (
        f"\n\nWords are compared letter by letter, and the first letter that differs decides. {why} Of these {len(s)} "
        f"words, \"{s[0]}\" starts the list and \"{s[-1]}\" ends it.")
    by_len, groups = sorted(s, key=lambda w: (len(w), w.lower())), {}
    for w in s:
        groups.setdefault(w[0].upper(), []).append(w)
    follow = [("Now sort them by length, shortest first.", "By length: " + ", ".join(f"{w} ({len(w)})" for w in by_len)
               + ".\n\nThe number in brackets is the letter count. " + (
                   "Where two words have the same length, I kept them in alphabetical order so the result is "
                   "predictable." if len({len(w) for w in s}) < len(s) else
                   "No two words share a length, so there were no ties to break.")),
              ("Group them by first letter.", "\n".join(f"- **{g}:** {', '.join(ws)}" for g, ws in groups.items()) +
               f"\n\nThat gives {len(groups)} group{'s' * (len(groups) > 1)}. Inside each group the words stay in "
               "alphabetical order, and the groups themselves run from A to Z.")]
    return rng.choice(WORD_Q).format(t=theme, x=", ".join(x)), ans, follow

# ----------------------------------------------------------------------------------------------- step_by_step
DISC_Q = ("A {i} costs {p} and is {r}% off. What's the sale price?",
          "My coupon gives {r}% off. The {i} is {p}. Final cost?",
          "How much will I pay for a {p} {i} with a {r}% discount?",
          "There's a {r}% off sale on a {p} {i}. How much now?",
          "The store is taking {r}% off a {i} that normally sells for {p}. Work out the new price step by step.",
          "If a {i} priced at {p} is reduced by {r}%, how much do I save and what do I pay?",
          "Calculate the price of a {i} after a {r}% markdown from {p}.",
          "What does a {i} cost after {r}% off if the original price is {p}? Show the steps.")
GOODS = ("jacket", "pair of running shoes", "blender", "desk lamp", "backpack", "rice cooker", "winter coat",
         "bookshelf", "bike helmet", "suitcase", "coffee grinder", "desk chair")
CONV_Q = ("Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "What's {v} {a} in {b}? Please show the working.",
          "I have a measurement of {v} {a}. What is that in {b}?", "Change {v} {a} into {b}, step by step.",
          "The label says {v} {a}. How much is that in {b}?", "Can you work out {v} {a} expressed in {b}?",
          "Quick conversion: {v} {a} to {b}?")
UNITS = (("miles", "mile", "kilometers", D("1.609344")), ("pounds", "pound", "kilograms", D("0.45359237")),
         ("inches", "inch", "centimeters", D("2.54")), ("feet", "foot", "meters", D("0.3048")),
         ("US gallons", "US gallon", "liters", D("3.785411784")), ("ounces", "ounce", "grams", D("28.349523125")),
         ("yards", "yard", "meters", D("0.9144")))
TIME_Q = ("My {t} starts at {a} and ends at {b}. How long is it?", "How much time passes between {a} and {b}?",
          "If I begin my {t} at {a} and finish at {b}, how many hours and minutes is that?",
          "{T} from {a} to {b}: what's the total duration?",
          "Work out the length of a {t} that runs from {a} until {b}.",
          "I started the {t} at {a} and it was over at {b}. How long did it last?",
          "Calculate the time between {a} and {b}, step by step.", "A {t} begins at {a} and wraps up at {b}. Duration?")
ACTIVITIES = ("shift", "flight", "study session", "train ride", "hike", "workshop", "road trip", "night shift",
              "rehearsal")
BILL_Q = ("Our dinner bill is {b}. We want to leave a {p}% tip and split it between {n} people. How much each?",
          "{n} of us are sharing a {b} bill plus {p}% tip. What does each person pay?",
          "Split {b} among {n} friends after adding a {p}% tip, please.",
          "Bill: {b}. Tip: {p}%. People: {n}. Each owes?",
          "The restaurant check came to {b}. With a {p}% tip, what's each share if there are {n} of us?",
          "How much should each of {n} people pay on a {b} bill if we tip {p}%?",
          "We're {n} people, the bill is {b}, and we'd like to tip {p}%. Work out the per-person amount.",
          "Can you calculate a {p}% tip on {b} and divide the total by {n}?")

def _disc_steps(p, r, lead=""):
    cut = (p * r / 100).quantize(CENT, ROUND_HALF_UP)
    return (f"{lead}Step 1 - Find the discount: {r}% of {_usd(p)} = {_usd(p)} x {r / 100} = {_usd(cut)}.\n"
            f"Step 2 - Subtract it from the original price: {_usd(p)} - {_usd(cut)} = {_usd(p - cut)}.\n"
            f"Check: {_usd(p - cut)} + {_usd(cut)} = {_usd(p)}, the original price.\n\n"
            f"Shortcut: multiplying by {(100 - r) / 100} (the {100 - r}% you still pay) gives the sale price directly."
            f"\n\nYou save **{_usd(cut)}** and pay **{_usd(p - cut)}**."), p - cut

def _discount(rng):
    p, r = D(rng.randint(12, 400)) - rng.choice([0, CENT, D("0.5")]), rng.choice([10, 15, 20, 25, 30, 35, 40, 50, 60])
    ans, new = _disc_steps(p, r)
    t, r2 = rng.choice([5, 6, D("7.5"), 8, D("8.25"), 10]), rng.choice([k for k in (10, 20, 25, 30, 40, 45) if k != r])
    tax = (new * t / 100).quantize(CENT, ROUND_HALF_UP)
    follow = [(f"And if there's {t}% sales tax on the sale price?", f"Tax is worked out on the discounted price, "
               f"{_usd(new)}.\n\nStep 1 - Tax: {t}% of {_usd(new)} = {_usd(tax)} (rounded to the cent).\nStep 2 - Add "
               f"it: {_usd(new)} + {_usd(tax)} = {_usd(new + tax)}.\n\nThe total is **{_usd(new + tax)}**."),
              (f"What if the discount were {r2}% instead?", _disc_steps(p, r2, f"New rate of {r2}%:\n\n")[0])]
    return rng.choice(DISC_Q).format(i=rng.choice(GOODS), p=_usd(p), r=r), ans, follow

def _conv_steps(v, unit, back):
    a, one, b, k = unit
    src, dst, val = (b, a, v / k) if back else (a, b, v * k)
    res, shown = val.quantize(CENT, ROUND_HALF_UP), val.quantize(TENTH_MILLE, ROUND_HALF_UP)
    return (f"Step 1 - The exact factor: 1 {one} = {k} {b}.\nStep 2 - Going from {src} to {dst} means "
            f"{'dividing' if back else 'multiplying'} by that factor: {_num(v)} {'/' if back else 'x'} {k} "
            f"{'=' if shown == val else '≈'} {_num(shown)}.\nStep 3 - Round to two places: {res:,}.\n"
            f"Sanity check: 1 {one} is {'more' if k > 1 else 'less'} than 1 {b[:-1]}, so the number of {dst} should be "
            f"{'larger' if (k > 1) != back else 'smaller'} than {_num(v)}, and it is.\n\n"
            f"{_num(v)} {src} is about **{res:,} {dst}**."), res

def _convert(rng):
    unit, back = rng.choice(UNITS), rng.random() < 0.5
    v, v2 = (D(rng.randint(1, 400)) / rng.choice([1, 1, 2, 4]) for _ in range(2))
    ans, res = _conv_steps(v, unit, back)
    src, dst = (unit[2], unit[0]) if back else (unit[0], unit[2])
    chk = (res * unit[3] if back else res / unit[3]).quantize(TENTH_MILLE, ROUND_HALF_UP)
    follow = [("Convert the result back to check it.", f"Going back from {dst} to {src} reverses the operation: "
               f"{res:,} {'x' if back else '/'} {unit[3]} ≈ {_num(chk)} (to four decimals).\n\nThat matches the "
               f"original {_num(v)} {src}; any tiny gap comes from rounding the first result to two decimals."),
              (f"And {_num(v2)} {src}?", _conv_steps(v2, unit, back)[0])]
    return rng.choice(CONV_Q).format(v=_num(v), a=src, b=dst), ans, follow

def _duration(rng):
    a, h24, t = rng.randrange(0, 1440, 5), rng.random() < 0.5, rng.choice(ACTIVITIES)
    b = (a + rng.randrange(25, 900, 5)) % 1440
    end = b + 1440 if b <= a else b
    dur, steps = end - a, [f"{_clock(m, h24)} = {m // 60} x 60 + {m % 60} = {m:,}" for m in (a, b)]
    ans = (f"Step 1 - Convert both times to minutes after midnight: {steps[0]}; {steps[1]}.\n" + (
        "Step 2 - The end time is earlier on the clock than the start, so the period crosses midnight: add 1,440 "
        f"minutes (24 hours) to the end: {b:,} + 1,440 = {end:,}.\n" if end > b else
        "Step 2 - The end is later on the same day, so no midnight adjustment is needed.\n") +
        f"Step 3 - Subtract: {end:,} - {a:,} = {dur:,} minutes.\nStep 4 - Convert to hours: {dur} / 60 = "
        f"{dur // 60} remainder {dur % 60}.\n\nThe total is **{_hm(dur)}**.")
    brk, extra = rng.choice([k for k in (10, 15, 20, 30, 45) if k < dur]), rng.choice([15, 25, 40, 50, 75])
    follow = [(f"If {brk} minutes of that is a break, how much active time is left?", f"Take the break off the total: "
               f"{dur:,} - {brk} = {dur - brk:,} minutes.\n\nIn hours and minutes that is {dur - brk} / 60 = "
               f"{(dur - brk) // 60} remainder {(dur - brk) % 60}, so **{_hm(dur - brk)}** of active time."),
              (f"What if it had ended {extra} minutes later?", f"A later end simply adds to the duration, so there is "
               f"no need to redo every step: {dur:,} + {extra} = {dur + extra:,} minutes. The new end time would be "
               f"{_clock(b + extra, h24)}, and the total becomes **{_hm(dur + extra)}**.")]
    return rng.choice(TIME_Q).format(t=t, T=t.capitalize(), a=_clock(a, h24), b=_clock(b, h24)), ans, follow

def _bill_steps(b, p, n, lead=""):
    tip = (b * p / 100).quantize(CENT, ROUND_HALF_UP)
    each = ((b + tip) / n).quantize(CENT, ROUND_HALF_UP)
    gap = each * n - (b + tip)
    note = "" if not gap else (f" Because of rounding, {n} x {_usd(each)} = {_usd(each * n)}, which is {_usd(abs(gap))}"
                               f" {'over' if gap > 0 else 'under'} the total, so one person can adjust by that amount.")
    return (f"{lead}Step 1 - Tip: {p}% of {_usd(b)} = {_usd(tip)}.\nStep 2 - Total with tip: {_usd(b)} + {_usd(tip)} = "
            f"{_usd(b + tip)}.\nStep 3 - Divide by {n} people: {_usd(b + tip)} / {n} = {_usd(each)} (to the cent).\n\n"
            f"Each person pays **{_usd(each)}**.{note} Adding the tip before dividing means everyone covers an equal "
            "part of both the meal and the tip.")

def _bill(rng):
    b, p, n = D(rng.randint(3000, 48000)) / 100, rng.choice([10, 12, 15, 18, 20, 22, 25]), rng.randint(2, 8)
    p2 = rng.choice([k for k in (10, 15, 18, 20, 25) if k != p])
    follow = [(f"What if we tip {p2}% instead?", _bill_steps(b, p2, n, f"Redoing it with a {p2}% tip:\n\n")),
              ("Another friend just joined us. What's the new share?",
               _bill_steps(b, p, n + 1, f"The bill and tip stay the same; only the divisor changes to {n + 1}.\n\n"))]
    return rng.choice(BILL_Q).format(b=_usd(b), p=p, n=n), _bill_steps(b, p, n), follow

REPHRASE = {"Now reverse it so the largest comes first.": ("Flip it: largest to smallest.", "Reverse the order."),
            "Which one is the median?": ("What's the median of these?", "And the median value?"),
            "What do they add up to, and what's the average?": ("Can you give me the sum and the mean too?",),
            "Now sort them by length, shortest first.": ("Could you order them by number of letters instead?",),
            "Group them by first letter.": ("Can you group them by their first letter?", "Group by starting letter."),
            "Convert the result back to check it.": ("Can you convert it back to double-check?",),
            "Another friend just joined us. What's the new share?": ("One more person is coming. New share?",)}
FAMILIES = ((_numbers, "list_sorting", 50), (_words, "list_sorting", 50),
            (_discount, "step_by_step", 45), (_convert, "step_by_step", 45), (_duration, "step_by_step", 45),
            (_bill, "step_by_step", 45))

def generate() -> list[dict]:
    """Return the generated conversations (same list on every call)."""
    rng, seen, out, roles = random.Random(1234), set(), [], ("human", "gpt")
    for fn, category, count in FAMILIES:
        made = 0
        while made < count:
            q, a, follow = fn(rng)
            turns = [q, a]
            if rng.random() < 0.45:  # add a follow-up turn, phrased one of several ways
                fq, fa = rng.choice(follow)
                turns += [rng.choice((fq, *REPHRASE.get(fq, ()))), fa]
            keys = {q, *turns[1::2]}  # the opening prompt and every answer must be new
            if not seen & keys:
                seen.update(keys)
                out.append({"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(turns)],
                            "category": category})
                made += 1
    return out
