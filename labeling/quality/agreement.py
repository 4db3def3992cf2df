"""Inter-annotator agreement: Krippendorff's alpha (nominal and ordinal, with a bootstrap
confidence interval), Cohen's kappa for every pair of annotators, and each annotator's
agreement with the majority of the others. Pure numpy, no Django: the selectors hand in
flat arrays, one entry per judgement.

Data: `units[i]` (the task, or the task and reply for rankings), `coders[i]` (the
annotator) and `values[i]`, an integer category 0 .. n_values - 1 in scale order (for
an ordinal metric the order is the scale's). Missing values are simply absent rows.

Krippendorff's alpha from the coincidence matrix (Krippendorff 2011, "Computing
Krippendorff's alpha-reliability"): every unit with m >= 2 values adds each ordered pair
of its values from different coders with weight 1 / (m - 1); then
alpha = 1 - (n - 1) * sum(o * d2) / sum(n_c n_k d2). The work is O(units x values^2)
and the units are first collapsed to their distinct count vectors (a pairwise task judged
by 3 people has one of 20 patterns over 4 values), so a million judgements cost a few
numpy operations.

The confidence interval resamples units with replacement (a nonparametric bootstrap over
tasks, the unit that was sampled): the multiplicity of each distinct pattern in a
resample is a multinomial draw, so 1000 resamples of a million judgements take
milliseconds. Krippendorff's own bootstrap resamples pairable values instead; both give
intervals of the same width on data of this shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("nominal", "ordinal")


def dense_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, index of each key among them): np.unique(keys,
    return_inverse=True), in O(n) through a table when the keys are non-negative integers
    of a modest range (database ids), by sorting otherwise."""
    keys = np.asarray(keys).reshape(-1)
    if keys.size and keys.dtype.kind in "iu" and keys.min() >= 0 and keys.max() < 8 * keys.size + (1 << 20):
        present = np.zeros(int(keys.max()) + 1, dtype=bool)
        present[keys] = True
        distinct = np.flatnonzero(present)
        position = np.cumsum(present) - 1
        return distinct.astype(keys.dtype), position[keys]
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, inverse.reshape(-1)


def count_table(rows: np.ndarray, columns: np.ndarray, n_rows: int, n_columns: int) -> np.ndarray:
    """n_rows x n_columns float matrix of how often each (row, column) occurs (np.add.at's
    result, through one bincount)."""
    flat = np.asarray(rows, dtype=np.int64) * n_columns + np.asarray(columns, dtype=np.int64)
    return np.bincount(flat, minlength=n_rows * n_columns).astype(float).reshape(n_rows, n_columns)


@dataclass(frozen=True)
class AlphaResult:
    alpha: float | None  # None: no unit with two values, or no variation at all
    low: float | None
    high: float | None
    units: int  # units with at least two values (the pairable ones)
    values: int  # pairable values


def unit_value_counts(units: np.ndarray, values: np.ndarray, n_values: int) -> np.ndarray:
    """(units with >= 2 values) x n_values matrix of how many coders gave each value."""
    units = np.asarray(units)
    values = np.asarray(values, dtype=np.int64)
    if units.size == 0:
        return np.zeros((0, n_values))
    if values.min() < 0 or values.max() >= n_values:
        raise ValueError(f"values must lie in 0 .. {n_values - 1}")
    _, index = dense_index(units)
    counts = count_table(index, values, int(index.max()) + 1, n_values)
    return counts[counts.sum(axis=1) >= 2]


def _patterns(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct count vectors and how many units have each."""
    if counts.shape[0] == 0:
        return counts, np.zeros(0)
    base = int(counts.max()) + 1
    if base ** counts.shape[1] < 2**62:  # each count vector as one integer: a 1-D unique instead of a row-wise one
        weights = base ** np.arange(counts.shape[1] - 1, -1, -1, dtype=np.int64)
        codes, multiplicity = np.unique(counts.astype(np.int64) @ weights, return_counts=True)
        patterns = (codes[:, None] // weights[None, :]) % base
        return patterns.astype(float), multiplicity.astype(float)
    patterns, multiplicity = np.unique(counts, axis=0, return_counts=True)
    return patterns, multiplicity.astype(float)


def _unit_coincidences(patterns: np.ndarray) -> np.ndarray:
    """Per pattern, its V x V coincidences: (n n^T - diag n) / (m - 1)."""
    m = patterns.sum(axis=1)
    outer = patterns[:, :, None] * patterns[:, None, :]
    idx = np.arange(patterns.shape[1])
    outer[:, idx, idx] -= patterns
    return outer / (m - 1)[:, None, None]


def _alpha_from_coincidences(o: np.ndarray, metric: str) -> np.ndarray:
    """alpha for a stack of coincidence matrices (... x V x V); NaN where undefined."""
    n_c = o.sum(axis=-1)
    n = n_c.sum(axis=-1)
    v = o.shape[-1]
    if metric == "nominal":
        d2 = np.broadcast_to(1.0 - np.eye(v), o.shape)
    elif metric == "ordinal":
        # d2(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, from the marginals
        cum = np.cumsum(n_c, axis=-1)
        lo = np.minimum.outer(np.arange(v), np.arange(v))
        hi = np.maximum.outer(np.arange(v), np.arange(v))
        before_lo = np.where(lo > 0, np.take(cum, np.maximum(lo - 1, 0), axis=-1), 0.0)
        between = np.take(cum, hi, axis=-1) - before_lo
        d2 = (between - (n_c[..., :, None] + n_c[..., None, :]) / 2) ** 2
    else:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    observed = (o * d2).sum(axis=(-2, -1))
    expected = (n_c[..., :, None] * n_c[..., None, :] * d2).sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1.0 - (n - 1) * observed / expected, np.nan)


def krippendorff_alpha(
    units, values, n_values: int, metric: str = "nominal", *, draws: int = 1000, level: float = 0.95, seed: int = 0
) -> AlphaResult:
    """Alpha and a bootstrap interval (resampling units); draws=0 skips the interval."""
    counts = unit_value_counts(units, values, n_values)
    patterns, multiplicity = _patterns(counts)
    if patterns.shape[0] == 0:
        return AlphaResult(None, None, None, 0, 0)
    per_pattern = _unit_coincidences(patterns)
    o = np.tensordot(multiplicity, per_pattern, axes=1)
    alpha = float(_alpha_from_coincidences(o, metric))
    n_units = int(multiplicity.sum())
    result_alpha = None if np.isnan(alpha) else alpha
    low = high = None
    if draws and result_alpha is not None and n_units > 1:
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(n_units, multiplicity / n_units, size=draws).astype(float)
        alphas = _alpha_from_coincidences(np.tensordot(weights, per_pattern, axes=1), metric)
        alphas = alphas[~np.isnan(alphas)]
        if alphas.size:
            tail = (1 - level) / 2
            low, high = (float(q) for q in np.quantile(alphas, [tail, 1 - tail]))
    return AlphaResult(result_alpha, low, high, n_units, int(patterns.sum(axis=1) @ multiplicity))


def alpha_by_period(units, values, periods, n_values: int, metric: str = "nominal", *, draws: int = 0, seed: int = 0) -> dict:
    """{period: AlphaResult} over the judgements of each period (a unit's values from one period only)."""
    periods = np.asarray(periods)
    units = np.asarray(units)
    values = np.asarray(values)
    return {
        period.item() if hasattr(period, "item") else period: krippendorff_alpha(
            units[periods == period], values[periods == period], n_values, metric, draws=draws, seed=seed
        )
        for period in np.unique(periods)
    }


# --------------------------------------------------------------------------- pairs of annotators


def _judgement_pairs(units, coders, values):
    """Every pair of judgements of the same unit by different coders (i before j in unit order)."""
    units = np.asarray(units)
    order = np.argsort(units, kind="stable")
    u, c, v = units[order], np.asarray(coders)[order], np.asarray(values)[order]
    firsts, seconds = [], []
    offset = 1
    while offset < len(u):
        same = u[offset:] == u[:-offset]
        if not same.any():
            break
        i = np.nonzero(same)[0]
        firsts.append(i)
        seconds.append(i + offset)
        offset += 1
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    i = np.concatenate(firsts)
    j = np.concatenate(seconds)
    keep = c[i] != c[j]
    i, j = i[keep], j[keep]
    return c[i], c[j], v[i], v[j]


@dataclass(frozen=True)
class PairKappa:
    coder_a: int
    coder_b: int
    shared: int  # units both judged
    observed: float  # share of shared units with the same value
    kappa: float | None  # None when chance agreement is 1 (both always gave one and the same value)


def cohen_kappa_pairs(units, coders, values, n_values: int, min_shared: int = 1) -> list[PairKappa]:
    """Cohen's kappa for every pair of coders on the units they both judged (each coder
    judges a unit at most once)."""
    a, b, va, vb = _judgement_pairs(units, coders, values)
    swap = a > b  # one orientation per pair: a < b
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    va, vb = np.where(swap, vb, va), np.where(swap, va, vb)
    if a.size == 0:
        return []
    a, b = a.astype(np.int64), b.astype(np.int64)
    span = int(b.max()) + 1
    if a.min() >= 0 and b.min() >= 0 and int(a.max()) < (2**62) // span:
        codes, pair_index = np.unique(a * span + b, return_inverse=True)
        pair_ids = np.stack([codes // span, codes % span], axis=1)
    else:
        pair_ids, pair_index = np.unique(np.stack([a, b], axis=1), axis=0, return_inverse=True)
    pair_index = pair_index.reshape(-1)
    confusion = count_table(pair_index, np.asarray(va) * n_values + np.asarray(vb), len(pair_ids), n_values * n_values)
    confusion = confusion.reshape(len(pair_ids), n_values, n_values)
    shared = confusion.sum(axis=(1, 2))
    observed = np.trace(confusion, axis1=1, axis2=2) / shared
    chance = (confusion.sum(axis=2) * confusion.sum(axis=1)).sum(axis=1) / shared**2
    results = []
    for (coder_a, coder_b), n, p_o, p_e in zip(pair_ids, shared, observed, chance):
        if n < min_shared:
            continue
        kappa = None if np.isclose(p_e, 1.0) else float((p_o - p_e) / (1 - p_e))
        results.append(PairKappa(int(coder_a), int(coder_b), int(n), float(p_o), kappa))
    return results


@dataclass(frozen=True)
class MajorityAgreement:
    coder: int
    compared: int  # judgements on units where the other coders had a unique majority
    agreed: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def majority_flags(units, values, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """Per value: whether the *other* values of its unit have a unique majority (usable),
    and whether it equals that majority (agreed)."""
    units = np.asarray(units)
    values = np.asarray(values, dtype=np.int64)
    if units.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    _, unit_index = dense_index(units)
    counts = count_table(unit_index, values, int(unit_index.max()) + 1, n_values)
    others = counts[unit_index]
    others[np.arange(len(values)), values] -= 1
    top = others.max(axis=1)
    unique_top = (others == top[:, None]).sum(axis=1) == 1
    usable = (others.sum(axis=1) > 0) & unique_top
    return usable, usable & (others.argmax(axis=1) == values)


def agreement_with_majority(units, coders, values, n_values: int) -> list[MajorityAgreement]:
    """Per coder: how often their value equals the majority value of the *other* coders on
    the same unit; units where the others are split evenly (no unique majority) or absent
    are left out."""
    coders = np.asarray(coders)
    if coders.size == 0:
        return []
    usable, agreed = majority_flags(units, values, n_values)
    coder_ids, coder_index = dense_index(coders)
    compared_n = np.bincount(coder_index, weights=usable, minlength=len(coder_ids))
    agreed_n = np.bincount(coder_index, weights=agreed, minlength=len(coder_ids))
    return [MajorityAgreement(int(c), int(n), int(k)) for c, n, k in zip(coder_ids, compared_n, agreed_n)]
