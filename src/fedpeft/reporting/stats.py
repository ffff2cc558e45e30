"""Statistics over seeds for ``fedpeft compare --seeds``: mean, sample standard deviation and a paired Student-t
confidence interval of the difference between two entries run on the same seeds.

Pure Python on lists of floats (no numpy, no scipy: scipy is not one of fedpeft's dependencies, so the t quantile
is computed here, by bisection on the t distribution's CDF through the regularised incomplete beta function; the
tests check it against ``scipy.stats.t.ppf`` and ``scipy.stats.ttest_rel``). Undefined figures (the standard
deviation of one value, an interval from one pair) are ``None``, which JSON keeps and tables print as n/a.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def sample_std(values: Sequence[float]) -> float | None:
    """Standard deviation with Bessel's correction (ddof=1); None for fewer than two values."""
    if len(values) < 2:
        return None
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1))


def describe(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "min", "max", "n"}`` of one entry's per-seed values."""
    return {"mean": mean(values), "std": sample_std(values), "min": min(values), "max": max(values), "n": len(values)}


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes' betacf)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry I_x = 1 - I_1-x
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf(p, df)``)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):  # bisection to the last representable digit
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def paired_difference(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> dict[str, Any] | None:
    """Mean of ``values[i] - reference[i]`` (pairs from the same seed) with its two-sided Student-t confidence
    interval: ``{"mean", "low", "high", "n", "confidence"}``; None for fewer than two pairs."""
    if len(values) != len(reference):
        raise ValueError(f"paired difference of {len(values)} values and {len(reference)} reference values")
    if len(values) < 2:
        return None
    differences = [v - r for v, r in zip(values, reference, strict=True)]
    centre = mean(differences)
    half_width = t_quantile(0.5 + confidence / 2.0, len(differences) - 1) * (
        sample_std(differences) / math.sqrt(len(differences))
    )
    return {
        "mean": centre,
        "low": centre - half_width,
        "high": centre + half_width,
        "n": len(differences),
        "confidence": confidence,
    }
