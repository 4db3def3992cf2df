"""Agreement statistics (#10, part 1) against an oracle: the `krippendorff` package and
published worked examples, to 1e-6 (no database)."""

import itertools

import krippendorff
import numpy as np
import pytest

from labeling.quality.agreement import (
    agreement_with_majority,
    alpha_by_period,
    cohen_kappa_pairs,
    krippendorff_alpha,
)

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 coders, 12 units,
# values 1..5, missing as nan; nominal alpha 0.743 (0.7434210526...)
WORKED = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
])


def flat(matrix):
    """coders x units matrix (nan = missing) -> (units, coders, values) arrays, values from 0."""
    coders, units = np.nonzero(~np.isnan(matrix))
    return units, coders, matrix[coders, units].astype(int) - 1


def test_the_worked_example():
    units, coders, values = flat(WORKED)
    assert krippendorff_alpha(units, values, 5, "nominal", draws=0).alpha == pytest.approx(0.743421052631579, abs=1e-12)
    assert krippendorff_alpha(units, values, 5, "ordinal", draws=0).alpha == pytest.approx(
        krippendorff.alpha(reliability_data=WORKED, level_of_measurement="ordinal", value_domain=[1, 2, 3, 4, 5]), abs=1e-9
    )
    result = krippendorff_alpha(units, values, 5, "nominal", draws=0)
    assert (result.units, result.values) == (11, 40)  # unit 12 has one value: not pairable


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("metric", ["nominal", "ordinal"])
def test_random_data_matches_the_krippendorff_package(seed, metric):
    rng = np.random.default_rng(seed)
    n_coders, n_units, n_values = rng.integers(2, 7), rng.integers(5, 60), rng.integers(2, 9)
    truth = rng.integers(0, n_values, size=n_units)
    noisy = np.where(rng.random((n_coders, n_units)) < 0.6, truth, rng.integers(0, n_values, size=(n_coders, n_units)))
    matrix = np.where(rng.random((n_coders, n_units)) < 0.3, np.nan, noisy + 1.0)
    units, coders, values = flat(matrix)
    ours = krippendorff_alpha(units, values, int(n_values), metric, draws=0).alpha
    oracle = krippendorff.alpha(reliability_data=matrix, level_of_measurement=metric, value_domain=list(range(1, n_values + 1)))
    if np.isnan(oracle):
        assert ours is None
    else:
        assert ours == pytest.approx(oracle, abs=1e-6)


def test_bootstrap_interval_matches_a_direct_resampling_of_units():
    rng = np.random.default_rng(7)
    n_units, truth = 400, rng.integers(0, 4, size=400)
    rows = [(u, c, truth[u] if rng.random() < 0.7 else rng.integers(0, 4)) for u in range(n_units) for c in rng.choice(8, 3, replace=False)]
    units, coders, values = (np.array(col) for col in zip(*rows))
    result = krippendorff_alpha(units, values, 4, "nominal", draws=2000, seed=1)
    assert result.low < result.alpha < result.high
    # the same bootstrap done the slow way: resample unit ids, recompute alpha
    by_unit = {u: np.nonzero(units == u)[0] for u in range(n_units)}
    direct = []
    for _ in range(300):
        picked = rng.integers(0, n_units, size=n_units)
        idx = np.concatenate([by_unit[u] for u in picked])
        relabel = np.repeat(np.arange(n_units), [len(by_unit[u]) for u in picked])
        direct.append(krippendorff_alpha(relabel, values[idx], 4, "nominal", draws=0).alpha)
    low, high = np.quantile(direct, [0.025, 0.975])
    assert result.low == pytest.approx(low, abs=0.02) and result.high == pytest.approx(high, abs=0.02)
    assert 0.04 < result.high - result.low < 0.2


def test_no_pairable_units_and_no_variation():
    assert krippendorff_alpha([1, 2], [0, 1], 2).alpha is None  # one value per unit
    assert krippendorff_alpha([1, 1, 2, 2], [0, 0, 0, 0], 2).alpha is None  # everybody said the same: undefined
    assert krippendorff_alpha([], [], 3).units == 0


def test_alpha_by_period():
    units, coders, values = flat(WORKED)
    periods = np.where(units < 6, "week 1", "week 2")
    by_period = alpha_by_period(units, values, periods, 5)
    first = WORKED[:, :6]
    assert by_period["week 1"].alpha == pytest.approx(krippendorff.alpha(reliability_data=first, level_of_measurement="nominal", value_domain=[1, 2, 3, 4, 5]), abs=1e-9)
    assert set(by_period) == {"week 1", "week 2"}


def test_cohen_kappa_on_the_textbook_table():
    # two raters, 50 items: both yes 20, both no 15, yes/no 5, no/yes 10: p_o 0.7, p_e 0.5, kappa 0.4
    cells = [(0, 0)] * 20 + [(1, 1)] * 15 + [(0, 1)] * 5 + [(1, 0)] * 10
    units = np.repeat(np.arange(50), 2)
    coders = np.tile([3, 9], 50)
    values = np.array(cells).reshape(-1)
    (pair,) = cohen_kappa_pairs(units, coders, values, 2)
    assert (pair.coder_a, pair.coder_b, pair.shared) == (3, 9, 50)
    assert pair.observed == pytest.approx(0.7) and pair.kappa == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_for_every_pair_matches_a_direct_computation():
    rng = np.random.default_rng(3)
    rows = [(u, c, int(rng.integers(0, 3))) for u in range(120) for c in rng.choice(5, rng.integers(1, 5), replace=False)]
    units, coders, values = (np.array(col) for col in zip(*rows))
    got = {(p.coder_a, p.coder_b): p for p in cohen_kappa_pairs(units, coders, values, 3)}
    for a, b in itertools.combinations(range(5), 2):
        shared = sorted(set(units[coders == a]) & set(units[coders == b]))
        if not shared:
            assert (a, b) not in got
            continue
        va = np.array([values[(units == u) & (coders == a)][0] for u in shared])
        vb = np.array([values[(units == u) & (coders == b)][0] for u in shared])
        p_o = np.mean(va == vb)
        p_e = sum(np.mean(va == k) * np.mean(vb == k) for k in range(3))
        assert got[(a, b)].shared == len(shared)
        assert got[(a, b)].kappa == pytest.approx((p_o - p_e) / (1 - p_e), abs=1e-12)


def test_agreement_with_the_majority_of_the_others():
    # unit 0: 0, 0, 0, 1 -> coders 1-3 agree with the others' majority (0), coder 4 does not
    # unit 1: 1, 0 -> one other each: both disagree
    # unit 2: 2, 1, 0 -> every coder sees an even split among the others: left out
    units = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    coders = [1, 2, 3, 4, 1, 2, 1, 2, 3]
    values = [0, 0, 0, 1, 1, 0, 2, 1, 0]
    by_coder = {row.coder: row for row in agreement_with_majority(units, coders, values, 3)}
    assert (by_coder[1].compared, by_coder[1].agreed) == (2, 1)
    assert (by_coder[2].compared, by_coder[2].agreed) == (2, 1)
    assert (by_coder[3].compared, by_coder[3].agreed, by_coder[3].rate) == (1, 1, 1.0)
    assert (by_coder[4].compared, by_coder[4].agreed, by_coder[4].rate) == (1, 0, 0.0)
