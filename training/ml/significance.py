"""The significance tests behind the promotion gates, in plain Python (no torch), so that
the web process can phrase a gate's reason without loading the training stack."""

from __future__ import annotations

import math


def binomial_p_value(successes: int, trials: int, p: float = 0.5) -> float:
    """One-sided P(X >= successes) for X ~ Binomial(trials, p); 1.0 when there are no trials.

    A reward model that ranked k of n held-out pairs correctly, or a policy that won k of n
    non-tied head-to-heads (the sign test), against "a fair coin" (p = 1/2).
    """
    if trials <= 0:
        return 1.0
    successes = max(0, min(successes, trials))
    tail = sum(math.comb(trials, i) * p**i * (1 - p) ** (trials - i) for i in range(successes, trials + 1))
    return min(1.0, tail)
