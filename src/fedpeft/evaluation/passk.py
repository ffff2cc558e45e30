"""The unbiased pass@k estimator (Chen et al., 2021) and its robust form (ReCode).

For a problem with ``n`` samples of which ``c`` pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that at
least one of ``k`` samples drawn without replacement from the ``n`` passes. Computed as a running product,
so large ``n`` neither overflows nor loses precision. ReCode's robust pass@k uses the same estimator with
``c`` counting the sample indices that pass on *every* perturbed variant of the problem (worst case).
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct."""
    if not 0 <= c <= n:
        raise ValueError(f"a problem has {c} correct samples out of {n}; need 0 <= correct <= samples")
    if k < 1 or k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem (n >= k), got n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """The mean of :func:`pass_at_k` over problems given as ``(n, c)`` pairs."""
    if not counts:
        raise ValueError("pass@k over no problems")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def check_ks(ks: Sequence[int], n: int) -> None:
    """Refuse a k that n samples per problem cannot estimate (the key names the setting)."""
    for k in ks:
        if k < 1:
            raise ValueError(f"eval.suite_k has {k}; every k must be at least 1")
        if k > n:
            raise ValueError(
                f"eval.suite_k has {k} but eval.suite_samples is {n}: pass@{k} needs n >= k samples per problem; "
                f"raise eval.suite_samples to at least {k} or drop k={k}"
            )
