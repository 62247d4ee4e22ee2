"""Automatic quality metrics for generated answers: pure functions over strings, token ids and log-probabilities.

* ``concept_coverage``: share of an item's key concepts found in an answer (case-insensitive; tolerant to plural,
  hyphen and spacing variants such as "pseudo-labeling" / "pseudo labeling" / "pseudolabeling").
* ``rouge_l``: ROUGE-L F1 over lower-cased word tokens (longest common subsequence; no stemming, as rouge-score's
  default).
* ``leaks``: meta-instruction phrases, role headers and chat special tokens in an answer
  (``labcore.text.leak_hits``).
* ``ended_by_itself``: the answer stopped on an end-of-turn token rather than at the token limit.
* ``masked_nll``: summed negative log-likelihood of the assistant tokens of one conversation, from per-position
  logits of either backend (PyTorch or llama.cpp), so both score exactly the same token ids.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+")


# ------------------------------------------------------------------------------------------------- text
def _singular(word: str) -> str:
    """A small, symmetric plural stripper: "caches"/"cache", "batches"/"batch", "queries"/"query" meet.

    Applied to both the concept and the answer, so it only has to map a word and its plural to the same key:
    a trailing "s" (not in -ss/-us/-is/-as words like "loss", "status", "axis", "bias") and then a trailing "e" go.
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "as")):
        word = word[:-1]
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def normalize_words(text: str) -> list[str]:
    """Lower-case word tokens with hyphens/underscores as spaces and plurals stripped."""
    return [_singular(w) for w in _WORD.findall(text.lower().replace("-", " ").replace("_", " "))]


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i:i + n]) == list(needle) for i in range(len(haystack) - n + 1))


def concept_found(concept: str, answer: str) -> bool:
    """Whether ``concept`` appears in ``answer`` as a whole-word phrase, up to case, plurals, hyphens and spaces."""
    words = normalize_words(answer)
    parts = normalize_words(concept)
    if _contains(words, parts):
        return True
    glued = "".join(parts)
    if len(parts) > 1:  # "pseudo-labeling" in the key concepts, "pseudolabeling" in the answer
        return glued in words
    # "dropout" in the key concepts, "drop out" in the answer
    return len(glued) >= 6 and any(words[i] + words[i + 1] == glued for i in range(len(words) - 1))


def concept_coverage(concepts: Sequence[str], answer: str) -> tuple[float | None, list[str]]:
    """(share of concepts found, the concepts found); share is None when there are no concepts to look for."""
    if not concepts:
        return None, []
    found = [c for c in concepts if concept_found(c, answer)]
    return len(found) / len(concepts), found


def rouge_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time and O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) between two texts over lower-cased word tokens."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    if not c or not r:
        return 0.0
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def leaks(answer: str) -> list[str]:
    """Names of the leak patterns in an answer: meta-instruction phrases and ``role_or_special_token``."""
    from labcore.text import leak_hits

    return leak_hits(answer)


def ended_by_itself(completion_ids: Sequence[int], stop_ids: Iterable[int]) -> bool:
    """True when generation stopped on an end-of-turn token, False when it ran into the token limit."""
    return bool(completion_ids) and completion_ids[-1] in set(stop_ids)


# ------------------------------------------------------------------------------------------------- perplexity
def masked_nll(logits: np.ndarray, ids: Sequence[int], mask: Sequence[int]) -> tuple[float, int]:
    """Summed NLL (nats) and count of the tokens with ``mask[t] == 1``, each predicted from ``logits[t - 1]``.

    ``logits`` has one row per input position (T x vocab), as a causal LM's forward pass or llama.cpp's
    ``logits_all`` scores give them. The first token is never scored (nothing predicts it).
    """
    positions = [t for t in range(1, len(ids)) if mask[t]]
    if not positions:
        return 0.0, 0
    rows = np.asarray(logits[[t - 1 for t in positions]], dtype=np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
    targets = rows[np.arange(len(positions)), [ids[t] for t in positions]]
    return float((log_z - targets).sum()), len(positions)


def perplexity(total_nll: float, count: int) -> float | None:
    return math.exp(total_nll / count) if count else None


# ------------------------------------------------------------------------------------------------- aggregates
def _values(xs: Iterable) -> list[float]:
    return [float(x) for x in xs if x is not None]


def mean(xs: Iterable) -> float | None:
    v = _values(xs)
    return sum(v) / len(v) if v else None


def median(xs: Iterable) -> float | None:
    v = _values(xs)
    return statistics.median(v) if v else None


def share(flags: Iterable) -> float | None:
    v = [bool(x) for x in flags if x is not None]
    return sum(v) / len(v) if v else None


# ------------------------------------------------------------------------------------------------- uncertainty
def paired_bootstrap(pairs: Sequence[tuple], stat, n: int = 2000, seed: int = 0, level: float = 0.95) -> dict | None:
    """Percentile bootstrap over items of a paired statistic: ``stat(pairs)`` on the data, and its ``level`` interval
    from ``n`` resamples of the items (with replacement, the same items for both models, so their pairing holds)."""
    if len(pairs) < 2:
        return None
    rng = np.random.default_rng(seed)
    k = len(pairs)
    draws = sorted(stat([pairs[i] for i in rng.integers(0, k, k)]) for _ in range(n))
    lo, hi = draws[int((1 - level) / 2 * n)], draws[min(n - 1, int((1 + level) / 2 * n))]
    return {"value": stat(list(pairs)), "ci95": [lo, hi], "items": k, "resamples": n}


def mean_difference(pairs) -> float:
    """Mean of (second - first) over (first, second) pairs."""
    return sum(b - a for a, b in pairs) / len(pairs)


def perplexity_ratio(pairs) -> float:
    """Perplexity of the second model over the first's, from per-item (nll_a, tokens, nll_b) triples."""
    tokens = sum(t for _, t, _ in pairs)
    return math.exp((sum(b for _, _, b in pairs) - sum(a for a, _, _ in pairs)) / tokens)
