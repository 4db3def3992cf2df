"""Annotator quality and bias (#10, part 2): gold accuracy, speed, position bias, length
bias and straight-lining per annotator, with plain-text reasons for the ones to look at.
Pure numpy and the standard library (math, statistics), no Django, no scipy: the selectors
hand in flat arrays, one entry per judgement, and every figure is computed for all
annotators at once by grouping (np.unique, bincount, stable sorts), so a million judgements
by 200 annotators cost a fraction of a second. Only the per-annotator tests loop, over
annotators, never over judgements.

Gold accuracy. The share of gold tasks answered correctly, with a Wilson score interval
(Wilson 1927; Newcombe 1998, method 3): unlike the Wald interval p +- z sqrt(p(1-p)/n) it
stays inside [0, 1] and keeps its coverage for small n and p near 0 or 1, which is where a
new annotator sits. z for a level comes from statistics.NormalDist().inv_cdf. An annotator
is flagged only when the interval's *upper* bound is below the project's minimum, so a
couple of misses on a handful of gold tasks do not flag anyone.

Speed. The median time on task (robust to the annotator who left a tab open overnight)
and the share of judgements faster than the project's minimum time `min_time_ms`.

Position bias. For every judgement with a winner: did the first-shown reply win? For a
pairwise judgement the chance rate is 1/2; for a ranking of K replies the position of the
top-ranked reply is used when it is unique (the selector passes -1 when several replies
tie for best, as for ties and "both bad"), chance 1/K. When all of an annotator's counted
judgements show the same K, the count of first-position wins is Binomial(n, 1/K) under
"no bias" and is tested with the exact two-sided binomial test (the "minlike" rule: the
p-value is the probability of every outcome no more likely than the one seen, as in R's
binom.test and scipy.stats.binomtest). The pmf comes from a cached table of
log-factorials (math.lgamma), so the test is exact to ~1e-9 relative for n up to
EXACT_MAX = 100,000 and costs O(n) numpy work; beyond that a normal approximation with
continuity correction is used (with chance rates 1/K and n > 10^5, n p is in the tens of
thousands, where it agrees with the exact test to well under 1% relative). With
mixed K the count is a sum of Bernoulli(1/K_i), a Poisson-binomial; it is tested with the
normal approximation using its exact mean sum(1/K_i) and variance sum(1/K_i (1 - 1/K_i)),
with continuity correction. The reported chance rate is that mean divided by n.

Length bias. For every pairwise judgement with a winner and replies of different length
(in characters): did the annotator pick the longer one? Models (and people) like long
answers, so the project as a whole picks the longer reply more than half of the time; an
annotator is compared not with 1/2 but with the *rest of the project* (every other
annotator pooled) by a two-proportion z-test with a pooled variance. Excluding the
annotator's own judgements keeps the two samples independent, which matters when a
project has few annotators. The project's rate over everybody is reported too.

Straight-lining. Runs of the same answer code (the key pressed: "A", "B", "tie", ...) in
each annotator's own judgements in time order: the longest run, the number of runs of at
least `min_run` (default 10) and the share of the annotator's judgements inside such runs.
Runs are found after one stable sort by (annotator, time), so annotators working at the same
time do not break each other's runs; ties in time keep the input order.

Flags. flag_reasons() turns one annotator's figures and the project's Thresholds into a
list of plain-text reasons ("gold accuracy 52% (95% CI 40-64%) below 70%"); nothing is
flagged before `min_judgements`, and a statistical flag needs both a small p-value and a
large effect, since with thousands of judgements a trivial bias is "significant".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

EXACT_MAX = 100_000  # largest n for the exact binomial test; the normal approximation beyond
_LOG_REL = 1e-7  # relative tolerance when comparing pmf values (as scipy's binomtest)
_LOG_FACTORIALS = np.zeros(1)  # log(i!) for i = 0 .. len - 1, grown on demand


# --------------------------------------------------------------------------- distributions


def z_for_level(level: float = 0.95) -> float:
    """The two-sided standard normal quantile for a confidence level (1.959964 for 0.95)."""
    if not 0 < level < 1:
        raise ValueError("level must lie strictly between 0 and 1")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(successes, n, level: float = 0.95):
    """Wilson score interval for successes of n; floats for scalars, arrays for arrays
    (broadcast). NaN where n == 0."""
    k = np.asarray(successes, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if np.any(k < 0) or np.any(k > n_arr):
        raise ValueError("successes must lie in 0 .. n")
    z = z_for_level(level)
    z2 = z * z
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / n_arr
        denom = 1 + z2 / n_arr
        centre = (p + z2 / (2 * n_arr)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n_arr + z2 / (4 * n_arr * n_arr))
        low = np.where(k == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
        high = np.where(k == n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
    empty = n_arr == 0
    low = np.where(empty, np.nan, low)
    high = np.where(empty, np.nan, high)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def _log_factorials(n: int) -> np.ndarray:
    """log(i!) for i = 0 .. n from math.lgamma, cached (thread-safe: the table is only replaced)."""
    global _LOG_FACTORIALS
    table = _LOG_FACTORIALS
    if n >= len(table):
        size = max(n + 1, 2 * len(table))
        extra = np.array([math.lgamma(i + 1) for i in range(len(table), size)])
        table = np.concatenate([table, extra])
        _LOG_FACTORIALS = table
    return table[: n + 1]


def _xlogy(x, y):
    """x * log(y), 0 where x == 0 (so 0 * log 0 = 0)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log(y))


def binom_logpmf(k, n: int, p: float):
    """log P(X = k), X ~ Binomial(n, p); -inf outside 0 .. n."""
    n = int(n)
    if n < 0 or not 0 <= p <= 1:
        raise ValueError("need n >= 0 and 0 <= p <= 1")
    k = np.asarray(k, dtype=np.int64)
    inside = (k >= 0) & (k <= n)
    kk = np.where(inside, k, 0)
    lf = _log_factorials(n)
    log_comb = lf[n] - lf[kk] - lf[n - kk]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = log_comb + _xlogy(kk, p) + _xlogy(n - kk, 1.0 - p)
    out = np.where(inside, out, -np.inf)
    return float(out) if out.ndim == 0 else out


def binom_pmf(k, n: int, p: float):
    """P(X = k), X ~ Binomial(n, p)."""
    out = np.exp(binom_logpmf(k, n, p))
    return float(out) if np.ndim(out) == 0 else out


def binom_cdf(k, n: int, p: float):
    """P(X <= k), X ~ Binomial(n, p), by summing the pmf (exact to rounding; O(n))."""
    cdf = np.minimum(np.cumsum(np.exp(binom_logpmf(np.arange(int(n) + 1), n, p))), 1.0)
    k = np.asarray(k, dtype=np.int64)
    out = np.where(k < 0, 0.0, np.where(k >= n, 1.0, cdf[np.clip(k, 0, n)]))
    return float(out) if out.ndim == 0 else out


def normal_two_sided(x: float, mean: float, variance: float, continuity: float = 0.5) -> float:
    """Two-sided p-value of a count x against a normal(mean, variance), with continuity
    correction: erfc(max(|x - mean| - c, 0) / sqrt(2 variance))."""
    if variance <= 0:
        return 1.0 if abs(x - mean) <= continuity else 0.0
    z = max(abs(x - mean) - continuity, 0.0) / math.sqrt(variance)
    return min(1.0, math.erfc(z / math.sqrt(2)))


def binomial_test(k: int, n: int, p: float, *, exact_max: int = EXACT_MAX) -> float:
    """Two-sided test of k successes in n trials against rate p. Exact ("minlike": the
    probability of all outcomes no more likely than k) for n <= exact_max; beyond, the
    normal approximation with continuity correction. n == 0 gives 1."""
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError("need 0 <= k <= n")
    if not 0 <= p <= 1:
        raise ValueError("need 0 <= p <= 1")
    if n == 0:
        return 1.0
    if p == 0:
        return 1.0 if k == 0 else 0.0
    if p == 1:
        return 1.0 if k == n else 0.0
    if n > exact_max:
        return normal_two_sided(k, n * p, n * p * (1 - p))
    logpmf = binom_logpmf(np.arange(n + 1), n, p)
    keep = logpmf <= logpmf[k] + _LOG_REL
    if keep.all():  # k is the mode (or as likely): exactly 1, not 1 - rounding
        return 1.0
    return float(min(1.0, np.exp(logpmf[keep]).sum()))


def poisson_binomial_test(k: int, chances) -> float:
    """Two-sided test of k successes among independent trials with success probabilities
    `chances` (a Poisson-binomial), by the normal approximation with its exact mean and
    variance. When all chances are equal, binomial_test is exact and preferred."""
    c = np.asarray(chances, dtype=float)
    return normal_two_sided(k, float(c.sum()), float((c * (1 - c)).sum()))


def two_proportion_z_test(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided pooled two-proportion z-test of k1/n1 against k2/n2; None when a sample is
    empty, 1 when the pooled rate is 0 or 1 (no variation to test)."""
    if n1 <= 0 or n2 <= 0:
        return None
    pooled = (k1 + k2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / math.sqrt(variance)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class GoldAccuracy:
    n: int  # gold judgements
    correct: int
    accuracy: float | None  # None without gold
    low: float | None  # Wilson interval at `level`
    high: float | None
    level: float = 0.95


@dataclass(frozen=True)
class Speed:
    timed: int  # judgements with a time on task
    median_ms: float | None
    fast: int  # judgements under min_time_ms (0 when min_time_ms is None)
    fast_share: float | None  # None without times or without a min_time_ms
    min_time_ms: float | None = None


@dataclass(frozen=True)
class PositionBias:
    n: int  # judgements with a unique winner among >= 2 shown replies
    first: int  # of which the first-shown reply won
    share: float | None  # first / n
    chance: float | None  # mean of 1 / n_replies over the counted judgements
    p_value: float | None  # two-sided
    method: str | None  # "exact" (binomial, one K) or "normal" (mixed K, or n > EXACT_MAX)

    @property
    def excess(self) -> float | None:
        """share - chance (positive: the first-shown reply wins more than by chance)."""
        return None if self.share is None else self.share - self.chance


@dataclass(frozen=True)
class LengthBias:
    n: int  # pairwise judgements with a winner and replies of different length
    longer: int  # of which the longer reply won
    rate: float | None
    others_rate: float | None  # the rest of the project (all other annotators pooled)
    p_value: float | None  # two-proportion z-test against the rest; None when either side is empty

    @property
    def excess(self) -> float | None:
        return None if self.rate is None or self.others_rate is None else self.rate - self.others_rate


@dataclass(frozen=True)
class StraightLining:
    judgements: int  # judgements with an answer code
    longest_run: int
    long_runs: int  # runs of at least min_run identical answers
    share: float | None  # share of the judgements inside such runs
    min_run: int = 10


@dataclass(frozen=True)
class AnnotatorQuality:
    annotator: object  # the id as handed in (int or str)
    judgements: int
    gold: GoldAccuracy
    speed: Speed
    position: PositionBias
    length: LengthBias
    straight: StraightLining
    flags: tuple[str, ...] = ()  # plain-text reasons; empty when not flagged
    # below min_judgements: the statistical checks that already show evidence (never a flag,
    # never an automatic pause; the page shows them as early warnings)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProjectQuality:
    annotators: int
    judgements: int
    gold: GoldAccuracy  # pooled over everybody
    speed: Speed  # median over all judgements, share under min_time_ms
    position: PositionBias  # pooled first-position share, its chance rate and test
    length: LengthBias  # the project's rate of picking the longer reply (others_rate, p_value: None)


@dataclass(frozen=True)
class Thresholds:
    """A project's settings for flagging; None switches a check off."""

    min_gold_accuracy: float | None = 0.70  # flag when the Wilson upper bound is below this
    min_gold: int = 5  # gold judgements needed before the gold check applies
    max_position_bias_p: float | None = 1e-3  # flag when p < this ...
    position_bias_margin: float = 0.15  # ... and |first share - chance| > this
    max_length_bias_p: float | None = 1e-3  # flag when p < this ...
    length_bias_margin: float = 0.20  # ... and |rate - rest of project| > this
    max_fast_share: float | None = 0.20  # flag when more than this share is under min_time_ms
    max_straight_share: float | None = 0.30  # flag when more than this share is inside long runs
    min_judgements: int = 30  # no flag at all before this many judgements


@dataclass(frozen=True)
class AnnotatorReport:
    annotators: list[AnnotatorQuality]  # sorted by annotator id
    project: ProjectQuality
    thresholds: Thresholds = field(default_factory=Thresholds)
    min_time_ms: float | None = None
    min_run: int = 10
    level: float = 0.95

    def by_annotator(self) -> dict:
        return {row.annotator: row for row in self.annotators}

    @property
    def flagged(self) -> list[AnnotatorQuality]:
        return [row for row in self.annotators if row.flags]


# --------------------------------------------------------------------------- grouping


def _group(annotator) -> tuple[np.ndarray, np.ndarray]:
    annotator = np.asarray(annotator)
    if annotator.ndim != 1:
        raise ValueError("annotator must be a flat array")
    ids, index = np.unique(annotator, return_inverse=True)
    return ids, index.reshape(-1)


def _column(values, n: int, name: str, dtype=None) -> np.ndarray:
    arr = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one entry per judgement ({n}), got shape {arr.shape}")
    return arr


def _count(index: np.ndarray, mask: np.ndarray, groups: int) -> np.ndarray:
    return np.bincount(index[mask], minlength=groups)


def _sort_within_groups(index: np.ndarray, groups: int, key=None) -> np.ndarray:
    """The permutation sorting rows by (group, key), stable (ties keep input order): a
    stable sort by key, then a stable sort by group, which numpy does as a radix sort when
    the group index fits 16 bits (faster than lexsort)."""
    perm = np.arange(len(index)) if key is None else np.argsort(key, kind="stable")
    grouped = index[perm].astype(np.uint16 if groups <= np.iinfo(np.uint16).max else np.int64)
    return perm[np.argsort(grouped, kind="stable")]


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _opt(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------- per-annotator figures (arrays)


def _gold_arrays(index, groups, gold_correct, level):
    g = gold_correct
    n = _count(index, g >= 0, groups)
    k = _count(index, g == 1, groups)
    low, high = wilson_interval(k, n, level)
    return n, k, _ratio(k, n), low, high


def _speed_arrays(index, groups, time_ms, min_time_ms):
    t = time_ms
    valid = np.isfinite(t) & (t >= 0)
    idx, tv = index[valid], t[valid]
    sorted_t = tv[_sort_within_groups(idx, groups, tv)]
    timed = np.bincount(idx, minlength=groups)
    starts = np.cumsum(timed) - timed
    median = np.full(groups, np.nan)
    has = timed > 0
    lo = starts + (timed - 1) // 2
    hi = starts + timed // 2
    median[has] = (sorted_t[lo[has]] + sorted_t[hi[has]]) / 2
    if min_time_ms is None:
        fast = np.zeros(groups, dtype=np.int64)
        fast_share = np.full(groups, np.nan)
    else:
        fast = np.bincount(idx[tv < min_time_ms], minlength=groups)
        fast_share = _ratio(fast, timed)
    return timed, median, fast, fast_share, tv


def _position_arrays(index, groups, winner_position, n_replies):
    wp, nr = winner_position, n_replies
    counted = (wp >= 0) & (nr >= 2)
    if np.any(wp[counted] >= nr[counted]):
        raise ValueError("winner_position must be below n_replies")
    idx = index[counted]
    chance = 1.0 / nr[counted]
    n = np.bincount(idx, minlength=groups)
    first = np.bincount(idx[wp[counted] == 0], minlength=groups)
    mean = np.bincount(idx, weights=chance, minlength=groups)
    variance = np.bincount(idx, weights=chance * (1 - chance), minlength=groups)
    k_min = np.full(groups, np.iinfo(np.int64).max)
    k_max = np.zeros(groups, dtype=np.int64)
    np.minimum.at(k_min, idx, nr[counted])
    np.maximum.at(k_max, idx, nr[counted])
    return n, first, mean, variance, k_min, k_max


def _position_result(n, first, mean, variance, k_min, k_max) -> PositionBias:
    n, first = int(n), int(first)
    if n == 0:
        return PositionBias(0, 0, None, None, None, None)
    if k_min == k_max:
        p_value = binomial_test(first, n, 1.0 / k_min)
        method = "exact" if n <= EXACT_MAX else "normal"
    else:
        p_value = normal_two_sided(first, float(mean), float(variance))
        method = "normal"
    return PositionBias(n, first, first / n, float(mean) / n, p_value, method)


def _straight_arrays(index, groups, answer_code, order, min_run):
    total = len(index)
    counts = np.bincount(index, minlength=groups)
    longest = np.zeros(groups, dtype=np.int64)
    long_runs = np.zeros(groups, dtype=np.int64)
    inside = np.zeros(groups, dtype=np.int64)
    if total:
        if order is not None and order.dtype == object:
            order = np.unique(order, return_inverse=True)[1].reshape(-1)
        perm = _sort_within_groups(index, groups, order)  # stable: ties in time keep input order
        gi = index[perm]
        code = answer_code[perm]
        new_run = np.ones(total, dtype=bool)
        new_run[1:] = (gi[1:] != gi[:-1]) | (code[1:] != code[:-1])
        starts = np.flatnonzero(new_run)
        lengths = np.diff(np.append(starts, total))
        run_group = gi[starts]
        np.maximum.at(longest, run_group, lengths)
        long = lengths >= min_run
        long_runs = np.bincount(run_group[long], minlength=groups)
        inside = np.bincount(run_group[long], weights=lengths[long], minlength=groups).astype(np.int64)
    return counts, longest, long_runs, inside, _ratio(inside, counts)


# --------------------------------------------------------------------------- public per-section functions


def gold_accuracy(annotator, gold_correct, level: float = 0.95) -> dict:
    """{annotator: GoldAccuracy}; gold_correct per judgement: 1 correct, 0 wrong, -1 not gold."""
    ids, index = _group(annotator)
    gc = _column(gold_correct, len(index), "gold_correct", np.int64)
    n, k, acc, low, high = _gold_arrays(index, len(ids), gc, level)
    return {
        _plain(a): GoldAccuracy(int(n[i]), int(k[i]), _opt(acc[i]), _opt(low[i]), _opt(high[i]), level)
        for i, a in enumerate(ids)
    }


def speed(annotator, time_ms, min_time_ms: float | None = None) -> dict:
    """{annotator: Speed}; time_ms per judgement, NaN or negative for unknown."""
    ids, index = _group(annotator)
    t = _column(time_ms, len(index), "time_ms", float)
    timed, median, fast, share, _ = _speed_arrays(index, len(ids), t, min_time_ms)
    return {
        _plain(a): Speed(int(timed[i]), _opt(median[i]), int(fast[i]), _opt(share[i]), min_time_ms)
        for i, a in enumerate(ids)
    }


def position_bias(annotator, winner_position, n_replies=None) -> dict:
    """{annotator: PositionBias}; winner_position per judgement: the displayed position of
    the winner (0 = first shown), or of the unique top-ranked reply of a ranking, -1 for
    none (tie, both bad, several tied for best); n_replies: replies shown (default 2).
    A pairwise first_position_won (1/0/-1) maps to winner_position 0/1/-1."""
    ids, index = _group(annotator)
    wp = _column(winner_position, len(index), "winner_position", np.int64)
    nr = np.full(len(index), 2, dtype=np.int64) if n_replies is None else _column(n_replies, len(index), "n_replies", np.int64)
    arrays = _position_arrays(index, len(ids), wp, nr)
    return {_plain(a): _position_result(*(col[i] for col in arrays)) for i, a in enumerate(ids)}


def _length_results(n, k) -> tuple[list[LengthBias], LengthBias]:
    total_n, total_k = int(n.sum()), int(k.sum())
    rows = []
    for ni, ki in zip(n.tolist(), k.tolist()):
        rest_n, rest_k = total_n - ni, total_k - ki
        rows.append(
            LengthBias(
                ni,
                ki,
                ki / ni if ni else None,
                rest_k / rest_n if rest_n else None,
                two_proportion_z_test(ki, ni, rest_k, rest_n),
            )
        )
    project = LengthBias(total_n, total_k, total_k / total_n if total_n else None, None, None)
    return rows, project


def length_bias(annotator, chose_longer) -> tuple[dict, LengthBias]:
    """({annotator: LengthBias}, project): chose_longer per judgement 1 / 0, -1 not applicable."""
    ids, index = _group(annotator)
    cl = _column(chose_longer, len(index), "chose_longer", np.int64)
    n = _count(index, cl >= 0, len(ids))
    k = _count(index, cl == 1, len(ids))
    rows, project = _length_results(n, k)
    return {_plain(a): row for a, row in zip(ids, rows)}, project


def straight_lining(annotator, answer_code, order=None, min_run: int = 10) -> dict:
    """{annotator: StraightLining}: runs of the same answer code in each annotator's
    judgements sorted by `order` (any sortable key: ms, datetime64, ...; None: input order)."""
    ids, index = _group(annotator)
    code = _column(answer_code, len(index), "answer_code")
    key = None if order is None else _column(order, len(index), "order")
    counts, longest, runs, _, share = _straight_arrays(index, len(ids), code, key, min_run)
    return {
        _plain(a): StraightLining(int(counts[i]), int(longest[i]), int(runs[i]), _opt(share[i]), min_run)
        for i, a in enumerate(ids)
    }


# --------------------------------------------------------------------------- flags


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _pct_setting(x: float) -> str:
    return f"{round(100 * x, 1):g}%"


def _p(p: float) -> str:
    return "p < 1e-300" if p == 0 else f"p = {p:.2g}"


def flag_reasons(row: AnnotatorQuality, thresholds: Thresholds) -> list[str]:
    """Plain-text reasons to look at this annotator's work; [] when none (or too few judgements)."""
    if row.judgements < thresholds.min_judgements:
        return []
    return _evidence_reasons(row, thresholds) + _share_reasons(row, thresholds)


def warning_reasons(row: AnnotatorQuality, thresholds: Thresholds) -> list[str]:
    """Early warnings, before min_judgements: the checks that are statistical tests (gold's
    Wilson interval, the position and length bias tests) and already pass their thresholds,
    so a careless start is seen at once (#20: 12 of 12 first-shown replies in 1 s each, p <
    0.001, went unflagged under the 30-judgement minimum). Shares (speed, straight-lining)
    mean little on a few judgements and wait for the minimum."""
    if row.judgements >= thresholds.min_judgements:
        return []
    return [f"early warning ({row.judgements} judgements; flags start at {thresholds.min_judgements}): {reason}"
            for reason in _evidence_reasons(row, thresholds)]


def _evidence_reasons(row: AnnotatorQuality, thresholds: Thresholds) -> list[str]:
    t = thresholds
    reasons = []
    gold = row.gold
    if t.min_gold_accuracy is not None and gold.n >= max(t.min_gold, 1) and gold.high < t.min_gold_accuracy:
        reasons.append(
            f"gold accuracy {_pct(gold.accuracy)} ({_pct_setting(gold.level)} CI {100 * gold.low:.0f}-{_pct(gold.high)},"
            f" {gold.n} gold tasks) below {_pct_setting(t.min_gold_accuracy)}"
        )
    pos = row.position
    if (
        t.max_position_bias_p is not None
        and pos.p_value is not None
        and pos.p_value < t.max_position_bias_p
        and abs(pos.excess) > t.position_bias_margin
    ):
        reasons.append(
            f"chose the first-shown reply in {_pct(pos.share)} of {pos.n} judgements"
            f" (chance {_pct(pos.chance)}, {_p(pos.p_value)})"
        )
    length = row.length
    if (
        t.max_length_bias_p is not None
        and length.p_value is not None
        and length.p_value < t.max_length_bias_p
        and abs(length.excess) > t.length_bias_margin
    ):
        reasons.append(
            f"chose the longer reply in {_pct(length.rate)} of {length.n} judgements"
            f" (rest of project {_pct(length.others_rate)}, {_p(length.p_value)})"
        )
    return reasons


def _share_reasons(row: AnnotatorQuality, thresholds: Thresholds) -> list[str]:
    t = thresholds
    reasons = []
    sp = row.speed
    if t.max_fast_share is not None and sp.fast_share is not None and sp.fast_share > t.max_fast_share:
        reasons.append(
            f"{_pct(sp.fast_share)} of {sp.timed} judgements faster than {sp.min_time_ms / 1000:g} s"
            f" (median {sp.median_ms / 1000:.1f} s; at most {_pct_setting(t.max_fast_share)} allowed)"
        )
    st = row.straight
    if t.max_straight_share is not None and st.share is not None and st.share > t.max_straight_share:
        reasons.append(
            f"{_pct(st.share)} of judgements in {st.long_runs} runs of {st.min_run} or more identical answers"
            f" (longest {st.longest_run}; at most {_pct_setting(t.max_straight_share)} allowed)"
        )
    return reasons


def flag_annotators(rows, thresholds: Thresholds) -> dict:
    """{annotator: [reasons]} for AnnotatorQuality rows (the reasons list is empty when not flagged)."""
    return {row.annotator: flag_reasons(row, thresholds) for row in rows}


# --------------------------------------------------------------------------- the report


def annotator_report(
    annotator,
    *,
    time_ms=None,
    winner_position=None,
    n_replies=None,
    chose_longer=None,
    answer_code=None,
    order=None,
    gold_correct=None,
    min_time_ms: float | None = None,
    thresholds: Thresholds | None = None,
    min_run: int = 10,
    level: float = 0.95,
) -> AnnotatorReport:
    """Every figure for every annotator, with flags, and the project's pooled figures.

    One row per judgement in every array (same length as `annotator`):
      time_ms          time on task, NaN / negative when unknown
      winner_position  displayed position of the winner (0 = first shown) or of the unique
                       top-ranked reply, -1 for no winner; n_replies: replies shown (default 2)
      chose_longer     1 / 0, -1 not applicable (not pairwise, no winner, equal lengths)
      answer_code      the answer in display terms ("A", "B", "tie", ...); order: time key
      gold_correct     1 / 0, -1 not a gold task
    A missing array (None) leaves its figures empty (counts 0, rates None).
    """
    thresholds = thresholds or Thresholds()
    ids, index = _group(annotator)
    groups, total = len(ids), len(index)
    none_f = np.full(groups, np.nan)
    zeros = np.zeros(groups, dtype=np.int64)
    judgements = np.bincount(index, minlength=groups)

    if gold_correct is not None:
        gc = _column(gold_correct, total, "gold_correct", np.int64)
        g_n, g_k, g_acc, g_low, g_high = _gold_arrays(index, groups, gc, level)
    else:
        g_n, g_k, g_acc, g_low, g_high = zeros, zeros, none_f, none_f, none_f

    all_times = np.zeros(0)
    if time_ms is not None:
        t = _column(time_ms, total, "time_ms", float)
        s_timed, s_median, s_fast, s_share, all_times = _speed_arrays(index, groups, t, min_time_ms)
    else:
        s_timed, s_median, s_fast, s_share = zeros, none_f, zeros, none_f

    if winner_position is not None:
        wp = _column(winner_position, total, "winner_position", np.int64)
        nr = np.full(total, 2, dtype=np.int64) if n_replies is None else _column(n_replies, total, "n_replies", np.int64)
        pos_arrays = _position_arrays(index, groups, wp, nr)
    else:
        pos_arrays = (zeros, zeros, np.zeros(groups), np.zeros(groups), zeros, zeros)

    if chose_longer is not None:
        cl = _column(chose_longer, total, "chose_longer", np.int64)
        l_n, l_k = _count(index, cl >= 0, groups), _count(index, cl == 1, groups)
    else:
        l_n, l_k = zeros, zeros
    length_rows, length_project = _length_results(l_n, l_k)

    if answer_code is not None:
        code = _column(answer_code, total, "answer_code")
        key = None if order is None else _column(order, total, "order")
        st_n, st_longest, st_runs, st_inside, st_share = _straight_arrays(index, groups, code, key, min_run)
    else:
        st_n, st_longest, st_runs, st_share = zeros, zeros, zeros, none_f

    rows = []
    for i, a in enumerate(ids):
        row = AnnotatorQuality(
            annotator=_plain(a),
            judgements=int(judgements[i]),
            gold=GoldAccuracy(int(g_n[i]), int(g_k[i]), _opt(g_acc[i]), _opt(g_low[i]), _opt(g_high[i]), level),
            speed=Speed(int(s_timed[i]), _opt(s_median[i]), int(s_fast[i]), _opt(s_share[i]), min_time_ms),
            position=_position_result(*(col[i] for col in pos_arrays)),
            length=length_rows[i],
            straight=StraightLining(int(st_n[i]), int(st_longest[i]), int(st_runs[i]), _opt(st_share[i]), min_run),
        )
        rows.append(replace(row, flags=tuple(flag_reasons(row, thresholds)), warnings=tuple(warning_reasons(row, thresholds))))

    # project: pooled figures
    gold_n, gold_k = int(np.sum(g_n)), int(np.sum(g_k))
    gold_low, gold_high = wilson_interval(gold_k, gold_n, level) if gold_n else (None, None)
    project_gold = GoldAccuracy(gold_n, gold_k, gold_k / gold_n if gold_n else None, gold_low, gold_high, level)
    if all_times.size:
        fast_all = int(np.sum(all_times < min_time_ms)) if min_time_ms is not None else 0
        project_speed = Speed(
            int(all_times.size),
            float(np.median(all_times)),
            fast_all,
            fast_all / all_times.size if min_time_ms is not None else None,
            min_time_ms,
        )
    else:
        project_speed = Speed(0, None, 0, None, min_time_ms)
    p_n, p_first, p_mean, p_var, p_kmin, p_kmax = pos_arrays
    present = p_n > 0
    project_position = _position_result(
        int(p_n.sum()),
        int(p_first.sum()),
        float(p_mean.sum()),
        float(p_var.sum()),
        int(p_kmin[present].min()) if present.any() else 0,
        int(p_kmax[present].max()) if present.any() else 0,
    )
    project = ProjectQuality(groups, total, project_gold, project_speed, project_position, length_project)
    return AnnotatorReport(rows, project, thresholds, min_time_ms, min_run, level)
