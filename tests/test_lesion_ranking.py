"""Which units a targeted lesion silences (position selectivity, not level; NaN bins; held-out maps; what a unit is
at token and conv sites) and intervals that respect the unit sets as a sample."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from rig.errors import RigError
from rig.lesions import curve_interval, held_out_scores, map_scores, unit_ranks
from rig.lesions.ranking import per_unit, ranking_bins, ranks_from_scores, set_overlap

CENTRES = np.arange(4) * 16 + 8.0  # 4 x 4 bins of 16 px over a 64 px canvas


def _maps(values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims=("unit", "y_bin", "x_bin"), coords={"y_bin": CENTRES, "x_bin": CENTRES})


def _bumps(n_units: int = 6, seed: int = 0) -> np.ndarray:
    """Units with one Gaussian bump each at a known bin, on top of very different levels and gains."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    peaks = rng.integers(0, 4, (n_units, 2))
    bumps = np.exp(-((yy - peaks[:, :1, None]) ** 2 + (xx - peaks[:, 1:, None]) ** 2) / 1.0)
    return bumps, peaks


def test_targeted_ranks_position_selectivity_not_level_or_gain():
    bumps, peaks = _bumps()
    level = np.array([100.0, 0.0, -3.0, 10.0, 50.0, 1.0])[:, None, None]
    gain = np.array([0.01, 1.0, 5.0, 0.3, 2.0, 0.1])[:, None, None]
    x, y = CENTRES[peaks[:, 1]], CENTRES[peaks[:, 0]]  # each stimulus at one unit's peak
    plain, scaled = map_scores(_maps(bumps), x, y), map_scores(_maps(level + gain * bumps), x, y)
    np.testing.assert_allclose(scaled.z, plain.z, rtol=1e-4, atol=1e-4)  # z ignores level and gain
    ranks = unit_ranks("targeted", 6, 6, scores=scaled)
    for s in range(6):  # the unit peaking at the stimulus's bin is silenced first (or ties with one that does)
        first = np.flatnonzero(ranks[s] == 0)[0]
        assert tuple(peaks[first]) == tuple(peaks[s])
    raw = unit_ranks("targeted_raw", 6, 6, scores=scaled)
    assert (raw[:, 0] == 0).all()  # the blog's raw value: the loudest unit (level 100) first, at every position
    np.testing.assert_array_equal(unit_ranks("by_mean", 6, 6, scores=scaled), [[0, 4, 5, 2, 1, 3]])
    assert set_overlap(raw, unit_ranks("by_mean", 6, 6, scores=scaled), 1) == 1.0
    assert set_overlap(ranks, unit_ranks("by_mean", 6, 6, scores=scaled), 1) < 0.5
    absolute = unit_ranks("targeted_abs", 6, 6, scores=map_scores(_maps(-bumps), x, y))
    np.testing.assert_array_equal(absolute[:, :], unit_ranks("targeted_abs", 6, 6, scores=plain))


def test_flat_and_missing_maps_rank_in_the_middle_and_last():
    bumps, _ = _bumps(3)
    values = np.concatenate([bumps, np.full((1, 4, 4), 7.0), np.full((1, 4, 4), np.nan)])
    scores = map_scores(_maps(values), CENTRES[[0, 3]], CENTRES[[0, 3]])
    assert (scores.z[:, 3] == 0).all() and np.isnan(scores.z[:, 4]).all()
    assert (unit_ranks("targeted", 5, 2, scores=scores)[:, 4] == 4).all()  # no map: silenced last


def test_stimuli_in_unvisited_bins_are_ranked_at_the_nearest_visited_bin_never_in_index_order():
    bumps, _ = _bumps(8, seed=3)
    values = bumps.copy()
    values[:, [0, 0, 1], [0, 1, 1]] = np.nan  # bins (0,0), (0,1), (1,1) unvisited (e.g. below min_occupancy)
    x, y = np.array([8.0, 24.0, 56.0]), np.array([8.0, 8.0, 56.0])  # in bins (0,0), (0,1) and (3,3)
    flat, moved = ranking_bins(values, CENTRES, CENTRES, x, y)
    assert moved == 2
    np.testing.assert_array_equal(flat, [1 * 4 + 0, 0 * 4 + 2, 3 * 4 + 3])  # the nearest visited bins, 16 px away
    scores = map_scores(_maps(values), x, y)
    assert scores.n_nearest == 2 and np.isfinite(scores.z).all()
    there = map_scores(_maps(values), np.array([8.0, 40.0, 56.0]), np.array([24.0, 8.0, 56.0]))  # in those bins
    np.testing.assert_array_equal(unit_ranks("targeted", 8, 3, scores=scores),
                                  unit_ranks("targeted", 8, 3, scores=there))
    assert not (unit_ranks("targeted", 8, 3, scores=scores)[0] == np.arange(8)).all()
    with pytest.raises(RigError, match="no visited bin"):
        ranking_bins(np.full((2, 4, 4), np.nan), CENTRES, CENTRES, x, y)


def _recording(n: int = 400, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 64, n), rng.uniform(0, 64, n)
    centres = rng.uniform(8, 56, (10, 2))
    r = np.exp(-((x[:, None] - centres[:, 0]) ** 2 + (y[:, None] - centres[:, 1]) ** 2) / (2 * 10.0**2))
    r = r + 0.05 * rng.standard_normal(r.shape)
    return xr.DataArray(r, dims=("stimulus", "unit"), coords={"x": ("stimulus", x), "y": ("stimulus", y)},
                        attrs={"canvas": 64})


MAP = dict(bins=4, extent=(0, 64), smoothing=1.0)


def test_held_out_maps_do_not_see_the_stimulus_they_rank():
    rec = _recording()
    lesion = np.arange(40)
    a = held_out_scores(rec, lesion, folds=5, seed=1, **MAP)
    changed = rec.copy()
    changed[7] = 1e3  # stimulus 7's own responses: huge
    b = held_out_scores(changed, lesion, folds=5, seed=1, **MAP)
    np.testing.assert_array_equal(a.z[7], b.z[7])  # its ranking ignores it ...
    assert np.abs(a.z - b.z).max() > 0.1  # ... while the other folds' maps (which include it) change
    import analyses

    circular = map_scores(analyses.ratemaps(changed, **MAP), changed.x[lesion], changed.y[lesion])
    assert np.abs(circular.z[7] - map_scores(analyses.ratemaps(rec, **MAP), rec.x[lesion], rec.y[lesion]).z[7]).max() > 0.1
    assert "held out: 5 folds" in a.ranking and a.z.shape == (40, 10)
    np.testing.assert_allclose(a.mean, rec.values.mean(0), rtol=1e-6)
    # held-out ranks agree with circular ones where the maps are well sampled: the same units come first
    c = map_scores(analyses.ratemaps(rec, **MAP), rec.x[lesion], rec.y[lesion])
    assert set_overlap(ranks_from_scores(a.z), ranks_from_scores(c.z), 2) > 0.8
    with pytest.raises(RigError, match="lesion stimuli"):
        held_out_scores(rec, [400], **MAP)


def _site(dims: tuple[str, ...], shape: tuple[int, ...]) -> xr.DataArray:
    values = np.arange(np.prod(shape), dtype=float).reshape(shape)
    return xr.DataArray(values, dims=dims)


def test_what_a_unit_is_at_token_and_conv_sites():
    conv = _site(("stimulus", "unit", "map_y", "map_x"), (2, 3, 2, 2))
    np.testing.assert_array_equal(per_unit(conv, "channel", lead=("stimulus",)), conv.mean(("map_y", "map_x")))
    element = per_unit(conv, "element", lead=("stimulus",))
    assert element.shape == (2, 12)
    np.testing.assert_array_equal(element[1, 1 * 4 + 1 * 2 + 0], conv.values[1, 1, 1, 0])  # c * H * W + y * W + x
    tokens = _site(("stimulus", "token", "unit"), (2, 5, 3))
    np.testing.assert_array_equal(per_unit(tokens, "element", lead=("stimulus",))[0, 4 * 3 + 2], tokens.values[0, 4, 2])
    np.testing.assert_array_equal(per_unit(tokens, "channel", lead=("stimulus",)), tokens.mean("token"))
    maps = _site(("unit", "map_y", "map_x", "y_bin", "x_bin"), (3, 2, 2, 4, 4)).assign_coords(y_bin=CENTRES,
                                                                                               x_bin=CENTRES)
    assert map_scores(maps, [8.0], [8.0], unit="element").z.shape == (1, 12)
    assert map_scores(maps, [8.0], [8.0], unit="channel").z.shape == (1, 3)
    with pytest.raises(RigError, match="unit must be one of"):
        per_unit(conv, "pixel", lead=("stimulus",))


# -- intervals -----------------------------------------------------------------------------------------------------
def test_random_lesion_interval_reflects_the_variability_between_unit_sets():
    rng = np.random.default_rng(0)
    sets = np.array([0.2, 0.5, 0.8, 0.35, 0.65])  # five random unit sets with very different effects
    tp = sets[:, None, None] + 0.01 * rng.standard_normal((5, 1, 300))  # (repeat, proportion, stimulus)
    mean, low, high = curve_interval(tp)
    pooled_half_width = 1.96 * tp.std() / np.sqrt(tp.size)  # the old interval: sets x stimuli as independent
    assert high[0] - low[0] > 10 * 2 * pooled_half_width
    t_half = 2.776 * sets.std(ddof=1) / np.sqrt(5)  # Student t (4 df) over the five sets' means
    np.testing.assert_allclose((high[0] - low[0]) / 2, t_half, rtol=0.02)
    np.testing.assert_allclose(mean, tp.mean(), rtol=1e-12)


@pytest.mark.parametrize("n_rep", [1, 3, 5])
def test_intervals_cover_the_true_mean_at_the_nominal_rate(n_rep):
    """Coverage of the 95 % interval over 300 simulated lesion curves with crossed random effects of the unit set
    and the stimulus: within simulation error of 95 % (binomial s.d. 1.3 %), a little above for several sets
    (the estimator is conservative). The percentile bootstrap over 3 sets covers about 80 %."""
    rng = np.random.default_rng(n_rep)
    covered = 0
    for _ in range(300):
        set_effect = 0.1 * rng.standard_normal((n_rep, 1, 1))
        stim_effect = 0.1 * rng.standard_normal((1, 1, 40))
        tp = 0.5 + set_effect + stim_effect + 0.05 * rng.standard_normal((n_rep, 1, 40))
        if n_rep == 1:
            tp = tp - set_effect  # one set: the curve is about these stimuli under this set
        _, low, high = curve_interval(tp, n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += low[0] <= 0.5 <= high[0]
    assert 0.91 <= covered / 300 <= 0.99


def test_deterministic_strategies_skip_their_empty_repeats():
    tp = np.full((3, 2, 10), np.nan)
    tp[0] = np.linspace(0, 1, 20).reshape(2, 10)
    mean, low, high = curve_interval(tp, n_boot=500)
    np.testing.assert_allclose(mean, tp[0].mean(1))
    assert (low < mean).all() and (mean < high).all()
    sd = tp[0].std(1) / np.sqrt(10)  # the bootstrap over stimuli is close to the normal interval here
    np.testing.assert_allclose(high - low, 2 * 1.96 * sd, rtol=0.2)
    np.testing.assert_allclose(np.stack(curve_interval(np.full((1, 2, 1), 0.3))), 0.3)


def test_the_step_offers_the_strategies_of_the_library():
    import typing

    from rig.lesions import RANKED, STRATEGIES
    from rig.steps import unit_lesions as step

    assert typing.get_args(step.Strategy) == STRATEGIES and step.RANKED == RANKED
