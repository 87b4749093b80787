"""Ratemaps: bin means and occupancy against np.histogram2d, lazy blocked reads, NaN-aware smoothing."""
import numpy as np
import pytest
import xarray as xr

from analyses.ratemaps import AnalysisInputError, bin_positions, rate_transform, ratemaps, smooth_maps


def _responses(n=400, units=6, tokens=3, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 224, n), rng.uniform(0, 224, n)
    r = rng.normal(size=(n, tokens, units)).astype(np.float32)
    return xr.DataArray(r, dims=("stimulus", "token", "unit"),
                        coords={"x": ("stimulus", x), "y": ("stimulus", y), "unit": np.arange(units)})


def test_means_and_occupancy_match_histogram2d():
    da = _responses()
    ds = ratemaps(da, bins=7, extent=(0, 224, 0, 224))
    x, y = da.x.values, da.y.values
    edges = np.linspace(0, 224, 8)
    occ, _, _ = np.histogram2d(y, x, bins=[edges, edges])
    np.testing.assert_array_equal(ds.occupancy.values, occ)
    for t in range(3):
        for u in (0, 5):
            s, _, _ = np.histogram2d(y, x, bins=[edges, edges], weights=da.values[:, t, u].astype(float))
            with np.errstate(invalid="ignore"):
                np.testing.assert_allclose(ds.ratemap.values[t, u], s / np.where(occ > 0, occ, np.nan),
                                           rtol=1e-5, atol=1e-6)
    assert ds.ratemap.dims == ("token", "unit", "y_bin", "x_bin")
    np.testing.assert_allclose(ds.x_bin.values, 16 + 32 * np.arange(7))
    assert ds.attrs["bins"] == [7, 7] and ds.attrs["rate"] == "none"


def test_unvisited_bins_are_nan_and_min_occupancy():
    da = _responses(n=30, units=2, tokens=1)
    ds = ratemaps(da, bins=10, extent=(0, 224, 0, 224))
    empty = ds.occupancy.values == 0
    assert empty.any() and np.isnan(ds.ratemap.values[..., empty]).all()
    assert np.isfinite(ds.ratemap.values[..., ~empty]).all()
    ds2 = ratemaps(da, bins=10, extent=(0, 224, 0, 224), min_occupancy=2)
    assert np.isnan(ds2.ratemap.values[..., ds.occupancy.values < 2]).all()
    smoothed = ratemaps(da, bins=10, extent=(0, 224, 0, 224), smoothing=1.0)
    assert np.isnan(smoothed.ratemap.values[..., empty]).all()


def test_lazy_netcdf_in_small_blocks_equals_in_memory(tmp_path):
    da = _responses(n=300, units=9, tokens=2)
    path = tmp_path / "rec.nc"
    da.to_dataset(name="site").to_netcdf(path)
    with xr.open_dataset(path) as lazy:
        blocked = ratemaps(lazy["site"], bins=8, extent=(0, 224, 0, 224), smoothing=1.0, block_bytes=10_000)
    whole = ratemaps(da, bins=8, extent=(0, 224, 0, 224), smoothing=1.0)
    np.testing.assert_allclose(blocked.ratemap.values, whole.ratemap.values, rtol=1e-6)


def test_smoothing_is_nan_aware_and_preserves_constants():
    maps = np.full((2, 9, 9), 4.0)
    maps[:, 3:6, 3:6] = np.nan
    out = smooth_maps(maps, 1.5)
    assert np.isnan(out[:, 3:6, 3:6]).all()
    np.testing.assert_allclose(out[np.isfinite(out)], 4.0)  # no pull toward 0 at holes or edges
    spike = np.zeros((1, 9, 9))
    spike[0, 4, 4] = 1.0
    assert smooth_maps(spike, 1.0).sum() == pytest.approx(1.0, rel=0.05)


def test_rate_transforms():
    m = np.array([[[-2.0, 1.0], [np.nan, 3.0]]])
    np.testing.assert_allclose(rate_transform(m, "shift"), [[[0, 3], [np.nan, 5]]])
    np.testing.assert_allclose(rate_transform(m, "rectify"), [[[0, 1], [np.nan, 3]]])
    np.testing.assert_allclose(rate_transform(m, "none"), m)
    ds = ratemaps(_responses(units=2, tokens=1), bins=4, extent=(0, 224, 0, 224), rate="shift")
    assert np.nanmin(ds.ratemap.values, axis=(-2, -1)) == pytest.approx(0.0) and ds.attrs["rate"] == "shift"


def test_binning_edges_and_outside():
    flat, shape = bin_positions(np.array([0, 223.9, 224, 225, -1]), np.array([0, 0, 224, 0, 0]), 4, (0, 224, 0, 224))
    assert shape == (4, 4)
    np.testing.assert_array_equal(flat, [0, 3, 15, -1, -1])


def test_user_errors():
    da = _responses(units=2, tokens=1)
    with pytest.raises(AnalysisInputError, match="stimulus"):
        ratemaps(da.rename(stimulus="image"))
    with pytest.raises(AnalysisInputError, match="rate"):
        ratemaps(da, rate="log")
    with pytest.raises(AnalysisInputError, match="extent"):
        ratemaps(da, extent=(500, 600, 500, 600))
    with pytest.raises(AnalysisInputError, match="x"):
        ratemaps(da.drop_vars("x"))
    ds = ratemaps(da, x=da.x.values, y=da.y.values)  # default extent: the positions' range
    assert ds.attrs["n_outside"] == 0
