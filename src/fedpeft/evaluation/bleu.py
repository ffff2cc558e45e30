"""Smoothed sentence BLEU-4 as CodeXGLUE scores code-to-text (from Lin & Och, 2004).

Per sentence: modified n-gram precisions for n = 1..4, add-one smoothing for n >= 2 (unigrams are not
smoothed), geometric mean, plus the log brevity penalty min(0, 1 - (r + 1) / (c + 1)) with r and c the
reference and candidate lengths. The corpus score is the mean sentence score times 100. Text is
lower-cased and split into words and single punctuation marks before counting.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")
_TINY = sys.float_info.min


def bleu_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def smoothed_sentence_bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    """BLEU-4 of one candidate against one reference, in [0, 1]."""
    cand, ref = bleu_tokens(candidate), bleu_tokens(reference)
    log_precision = 0.0
    for n in range(1, max_n + 1):
        guess = _ngrams(cand, n)
        correct = sum(min(count, _ngrams(ref, n)[gram]) for gram, count in guess.items())
        total = sum(guess.values())
        smooth = 1 if n > 1 else 0
        log_precision += math.log(correct + smooth + _TINY) - math.log(total + smooth + _TINY)
    brevity = min(0.0, 1.0 - (len(ref) + 1) / (len(cand) + 1))
    return math.exp(log_precision / max_n + brevity)


def corpus_smoothed_bleu(candidates: Sequence[str], references: Sequence[str]) -> float:
    """Mean smoothed sentence BLEU-4 times 100 (CodeXGLUE's code-to-text score)."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"need equally many candidates and references, got {len(candidates)} and {len(references)}")
    return 100.0 * sum(map(smoothed_sentence_bleu, candidates, references)) / len(candidates)
