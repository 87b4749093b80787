"""Nulls at scale: today's results reproduced, numpy and torch backends agree, sequential stopping calls what
the full test calls, the smoothness-keeping null and the FDR control are calibrated."""
from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import xarray as xr

from analyses import autocorrelogram, border_score, grid_score, ratemaps, spatial_stats
from analyses.nulls import SCORES, fdr_adjust, shuffles_for_fdr, spatial_nulls, stop_count
from analyses.ratemaps import AnalysisInputError, rate_transform, smooth_maps

FIXTURES = Path(__file__).parent / "fixtures" / "nulls_today"
sys.path.insert(0, str(FIXTURES))
from make_fixture import SETTINGS, units  # noqa: E402


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def test_todays_results_are_reproduced_and_early_stopping_calls_the_same_units():
    """`nulls_today.npz` was made by the code before this change (make_fixture.py)."""
    ref = np.load(FIXTURES / "nulls_today.npz")
    full = quiet(spatial_nulls, units(), **SETTINGS, stop_after=None)
    early = quiet(spatial_nulls, units(), **SETTINGS)  # stop_after="auto"
    for ds in (full, early):
        np.testing.assert_array_equal(ds["class"].values, ref["class"])
        for k in SCORES:
            np.testing.assert_allclose(ds[k].values, ref[k], rtol=0, atol=1e-6)
    for k in SCORES:
        np.testing.assert_array_equal(full[f"{k}_p"].values, ref[f"{k}_p"])
        for m in ("null_mean", "null_sd"):
            np.testing.assert_allclose(full[f"{k}_{m}"].values, ref[f"{k}_{m}"], rtol=0, atol=1e-9)
        ran = early[f"{k}_shuffles"].values == SETTINGS["n_shuffles"]
        np.testing.assert_array_equal(early[f"{k}_p"].values[ran], ref[f"{k}_p"][ran])
        assert (~ran).sum() >= 10  # most units stopped early ...
        assert (early[f"{k}_p"].values[~ran] > SETTINGS["alpha"]).all()  # ... and only non-significant ones
    np.testing.assert_array_equal(early["class_fdr"].values, full["class_fdr"].values)
    one_by_one = quiet(spatial_nulls, units(), **SETTINGS, group=1)  # how shuffles are grouped changes nothing
    for k in SCORES:
        for col in (k, f"{k}_p", f"{k}_shuffles"):
            np.testing.assert_array_equal(one_by_one[col].values, early[col].values)
        np.testing.assert_allclose(one_by_one[f"{k}_null_mean"].values, early[f"{k}_null_mean"].values, atol=1e-12)
    h = stop_count("auto", 0.05, 49)
    assert h == 3 and early.attrs["stop_after"] == h and full.attrs["stop_after"] == -1


@functools.lru_cache(maxsize=1)
def _phantom_responses(n=700, canvas=96):
    import stimuli
    from rig.phantom import build

    model = build(seed=0, canvas=canvas, n_place=8, n_grid=3, n_border=4, n_untuned=8)
    s = stimuli.circles(n=n, canvas=canvas, diameter=10, seed=1)
    with torch.no_grad():
        units_ = np.concatenate([_units(model, images) for _, images in s.batches(350)])
    return xr.DataArray(units_, dims=("stimulus", "unit"), attrs={"canvas": canvas},
                        coords={"x": ("stimulus", s.params.x.values), "y": ("stimulus", s.params.y.values),
                                "cell": ("unit", model.truth().cell_class.values)})


def _units(model, images):
    out = {}
    hook = model.units.register_forward_hook(lambda m, a, o: out.__setitem__("u", o.detach().numpy()))
    try:
        model(torch.from_numpy(images))
    finally:
        hook.remove()
    return out["u"]


@pytest.mark.parametrize("null", ["permutation", "shift"])
def test_early_stopped_classes_match_the_full_test_on_the_phantom(null):
    resp = _phantom_responses()
    kw = dict(n_shuffles=39, seed=2, bins=14, alpha=0.05, null=null)
    full = quiet(spatial_nulls, resp, stop_after=None, **kw)
    early = quiet(spatial_nulls, resp, **kw)
    np.testing.assert_array_equal(early["class"].values, full["class"].values)
    np.testing.assert_array_equal(early["class_fdr"].values, full["class_fdr"].values)
    assert early["grid_score_shuffles"].values.mean() < 0.6 * 39  # the point: fewer shuffles
    cell, cls = resp.cell.values, early["class"].values
    assert (early["spatial_information_p"].values[cell == "place"] <= 0.05).mean() >= 0.85
    if null == "permutation":  # a translated lattice is still a lattice: the shift null has little power for grids
        assert (cls[cell == "grid"] == "grid").all()
    assert (cls[cell == "untuned"] == "none").sum() >= (cell == "untuned").sum() - 1


def test_numpy_and_torch_backends_agree():
    resp = units(n=500)
    maps = ratemaps(resp, bins=12, smoothing=1.0, min_occupancy=2, regress_out=["diameter"], dtype=np.float64)
    on_torch = ratemaps(resp, bins=12, smoothing=1.0, min_occupancy=2, regress_out=["diameter"], dtype=np.float64,
                        device="cpu")
    np.testing.assert_allclose(on_torch.ratemap.values, maps.ratemap.values, rtol=0, atol=1e-6)
    m = maps.ratemap.values
    t = torch.as_tensor(m)
    occ = maps.occupancy.values
    for rate in ("shift", "robust", "rectify"):
        a = spatial_stats(m, occ, rate=rate)
        b = spatial_stats(t, occ, rate=rate)
        for k in a:
            assert isinstance(b[k], torch.Tensor)
            np.testing.assert_allclose(b[k].numpy(), a[k], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rate_transform(t, rate).numpy(), rate_transform(m, rate), atol=1e-12)
    np.testing.assert_allclose(autocorrelogram(t).numpy(), autocorrelogram(m), atol=1e-6)
    np.testing.assert_allclose(grid_score(t).numpy(), grid_score(m), atol=1e-6)
    np.testing.assert_allclose(border_score(t).numpy(), border_score(m), atol=1e-6)
    np.testing.assert_allclose(smooth_maps(t, 1.3).numpy(), smooth_maps(m, 1.3), atol=1e-12)
    kw = dict(n_shuffles=19, seed=1, bins=12, min_occupancy=2, regress_out=["diameter"], null="shift")
    a, b = quiet(spatial_nulls, resp, **kw), quiet(spatial_nulls, resp, device="cpu", **kw)
    for k in a.data_vars:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(b[k].values, a[k].values, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(b[k].values, a[k].values)


def test_smoothing_is_scipy_gaussian_filter():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 13, 11))
    m[:, 4:6, 2:5] = np.nan
    vis = np.isfinite(m)
    num = ndimage.gaussian_filter(np.where(vis, m, 0), (0, 1.4, 1.4), mode="constant")
    den = ndimage.gaussian_filter(vis * 1.0, (0, 1.4, 1.4), mode="constant")
    np.testing.assert_allclose(smooth_maps(m, 1.4), np.where(vis, num / den, np.nan), atol=1e-12)


def test_given_observed_maps_are_used_instead_of_recomputed():
    resp = units(n=400).isel(unit=slice(0, 6))
    kw = dict(bins=10, smoothing=1.0, min_occupancy=2, regress_out=["diameter"])
    maps = ratemaps(resp, dtype=np.float64, **kw).ratemap
    a = quiet(spatial_nulls, resp, n_shuffles=9, **kw)
    b = quiet(spatial_nulls, resp, n_shuffles=9, maps=maps, **kw)
    for k in SCORES:
        np.testing.assert_allclose(b[k].values, a[k].values, atol=1e-12)
    with pytest.raises(AnalysisInputError, match="maps have dims"):
        spatial_nulls(resp, n_shuffles=9, maps=maps.isel(y_bin=slice(0, 5)), **kw)


def _torus_field(n_units, n_stim, canvas, seed, periodic=True):
    """Untuned-for-shape smooth maps: each unit a random smooth field of position (low spatial frequencies,
    periodic on the frame when `periodic`), plus response noise."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, canvas, n_stim), rng.uniform(0, canvas, n_stim)
    r = np.zeros((n_stim, n_units))
    for kx in range(-2, 3):
        for ky in range(-2, 3):
            if (kx, ky) == (0, 0):
                continue
            f = (kx if periodic else kx * 0.83) / canvas, (ky if periodic else ky * 0.77) / canvas
            phase = 2 * np.pi * (f[0] * x + f[1] * y)
            a, b = rng.normal(size=(2, n_units)) / (1 + kx * kx + ky * ky)
            r += np.cos(phase)[:, None] * a + np.sin(phase)[:, None] * b
    r += rng.normal(0, 0.3, r.shape)
    return xr.DataArray(r, dims=("stimulus", "unit"), attrs={"canvas": canvas},
                        coords={"x": ("stimulus", x), "y": ("stimulus", y)})


def test_the_shift_null_is_calibrated_on_untuned_smooth_maps_and_the_permutation_null_is_not():
    resp = _torus_field(300, 1500, 120, seed=4)
    kw = dict(n_shuffles=19, seed=5, bins=12, smoothing=1.0, scores=("grid_score", "border_score"), stop_after=None)
    shift = quiet(spatial_nulls, resp, null="shift", **kw)
    perm = quiet(spatial_nulls, resp, null="permutation", **kw)
    for k in ("grid_score", "border_score"):
        rate = (shift[f"{k}_p"].values <= 0.05).mean()
        assert 0.015 <= rate <= 0.10, (k, rate)  # ~5% (binomial sd 1.3% for 300 units)
    # these smooth maps beat shapeless permuted maps on border scores far more often than 5% (~15%)
    assert (perm["border_score_p"].values <= 0.05).mean() > 0.1


def test_fdr_adjust_matches_scipy_and_the_warning_says_how_many_shuffles():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 0.001, 20)])
    np.testing.assert_allclose(fdr_adjust(p), scipy.stats.false_discovery_control(p, method="bh"), atol=1e-12)
    with_nan = np.concatenate([p, [np.nan]])
    np.testing.assert_allclose(fdr_adjust(with_nan)[:-1], fdr_adjust(p)) and np.isnan(fdr_adjust(with_nan)[-1])
    assert shuffles_for_fdr(768, 0.05) == 15359  # 1 / 15360 = 0.05 / 768
    resp = units(n=300).isel(unit=slice(0, 8))
    with pytest.warns(UserWarning, match="159 shuffles let a single unit pass"):
        spatial_nulls(resp, n_shuffles=9, bins=8, scores=("spatial_information",))


def test_calibration_over_many_untuned_units_before_and_after_fdr():
    """Untuned units (no position dependence, smoothed maps): ~alpha of them called before correction; with
    planted place units among them, at most ~alpha of the FDR calls are false."""
    rng = np.random.default_rng(8)
    n, n_null, n_place = 800, 700, 300
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    cx, cy = rng.uniform(20, 80, (2, n_place))
    place = 3.0 * np.exp(-((x[:, None] - cx) ** 2 + (y[:, None] - cy) ** 2) / (2 * 15 ** 2))
    r = np.concatenate([rng.normal(size=(n, n_null)), place + rng.normal(size=(n, n_place))], axis=1)
    resp = xr.DataArray(r - 2, dims=("stimulus", "unit"), attrs={"canvas": 100},
                        coords={"x": ("stimulus", x), "y": ("stimulus", y)})
    ds = spatial_nulls(resp, n_shuffles=299, seed=1, bins=10, smoothing=1.0, scores=("spatial_information",))
    null = np.arange(n_null + n_place) < n_null
    called = ds["spatial_information_p"].values <= 0.05
    assert 0.03 <= called[null].mean() <= 0.07  # per-unit test: ~5% of untuned units (sd 0.8%)
    assert ds.attrs["expected_false_positives"] == pytest.approx(0.05 * (n_null + n_place))
    fdr = ds["class_fdr"].values != "none"
    assert fdr[~null].mean() > 0.5 and fdr.sum() > 0
    assert (fdr & null).sum() / fdr.sum() <= 0.08  # false discovery proportion ~<= alpha


def test_the_robust_rate_ignores_one_noisy_bin():
    rng = np.random.default_rng(0)
    m = 1 + 0.1 * rng.normal(size=(1, 12, 12))
    m[0, 3:6, 3:6] += 1.0  # a field
    noisy = m.copy()
    noisy[0, 10, 1] = -4.0  # one outlying bin far below the baseline
    occ = np.ones((12, 12))
    for rate, moves in (("shift", True), ("robust", False)):
        a = spatial_stats(m, occ, rate=rate)["information_content"][0]
        b = spatial_stats(noisy, occ, rate=rate)["information_content"][0]
        assert (abs(b - a) / a > 0.5) == moves, (rate, a, b)
    low = rate_transform(noisy, "robust")
    assert np.nanmin(low) == 0 and (low == 0).sum() == int(np.floor(0.05 * 143)) + 1


def test_blocks_follow_the_recording_chunks(tmp_path):
    """Blocks of whole units (all tokens), whole chunk columns: any block size gives the same answer."""
    from analyses.ratemaps import CHUNK_UNITS
    from rig.recorder import CHUNK_UNITS as RECORDER_CHUNK_UNITS

    assert CHUNK_UNITS == RECORDER_CHUNK_UNITS
    base = units(n=300)
    resp = xr.concat([base.isel(unit=slice(0, 20)), base.isel(unit=slice(2, 22))], dim="token").transpose(
        "stimulus", "token", "unit")
    kw = dict(n_shuffles=5, bins=8, scores=("spatial_information", "border_score"))
    a = quiet(spatial_nulls, resp, block_units=7, **kw)
    b = quiet(spatial_nulls, resp, block_units=4096, **kw)
    assert a["class"].dims == ("token", "unit")
    for k in a.data_vars:
        np.testing.assert_array_equal(a[k].values, b[k].values)
