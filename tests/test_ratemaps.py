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


def test_robust_rate_is_the_lower_5th_percentile_of_visited_bins():
    """Maps with one visited count (selection) and with several (sort) alike; a single map keeps its shape."""
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(6, 9, 7))
    maps[:, 0, 0] = np.nan
    for m in (maps, np.where(rng.random(maps.shape) < 0.3, np.nan, maps)):
        low = np.nanpercentile(m, 5, axis=(-2, -1), method="lower", keepdims=True)
        np.testing.assert_array_equal(rate_transform(m, "robust"), np.clip(m - low, 0, None))
        assert rate_transform(m[0], "robust").shape == (9, 7)


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


def _circles_like(n=1000, canvas=224, seed=0):
    """Centres drawn as `stimuli.circles` does (the circle stays inside), so walls force small diameters."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(20, 80, n)
    x, y = rng.uniform(d / 2, canvas - d / 2), rng.uniform(d / 2, canvas - d / 2)
    return rng, d, x, y


def test_regress_out_equals_lstsq_residuals_plus_mean():
    from analyses.ratemaps import regression_basis, residualise
    rng = np.random.default_rng(4)
    n = 60
    d, extra = rng.uniform(20, 80, n), rng.normal(size=n)
    shape = rng.choice(["circle", "square", "triangle"], n)
    r = rng.normal(size=(n, 2, 3)) + 0.1 * d[:, None, None]
    da = xr.DataArray(r, dims=("stimulus", "token", "unit"),
                      coords={"x": ("stimulus", rng.uniform(0, 224, n)), "y": ("stimulus", rng.uniform(0, 224, n)),
                              "diameter": ("stimulus", d), "shape": ("stimulus", shape)})
    design = np.column_stack([np.ones(n), d, shape == "square", shape == "triangle", extra]).astype(float)
    flat = r.reshape(n, -1)
    coef = np.linalg.lstsq(design, flat, rcond=None)[0]
    expected = flat - design @ coef + flat.mean(0)
    basis, labels = regression_basis(da, ["diameter", "shape", extra])
    assert labels == ["diameter", "shape", "array[2]"] and basis.shape == (n, 5)
    np.testing.assert_allclose(residualise(flat, basis), expected, atol=1e-10)
    np.testing.assert_allclose(residualise(flat, basis).mean(0), flat.mean(0))  # maps keep their scale
    # the ratemap path bins exactly these residuals
    ds = ratemaps(da, bins=4, extent=(0, 224, 0, 224), regress_out=["diameter", "shape", extra], dtype=np.float64)
    ref = ratemaps(da.copy(data=expected.reshape(r.shape)), bins=4, extent=(0, 224, 0, 224), dtype=np.float64)
    np.testing.assert_allclose(ds.ratemap.values, ref.ratemap.values, atol=1e-10)
    assert ds.attrs["regress_out"] == ["diameter", "shape", "array[2]"] and ref.attrs["regress_out"] == []


def test_regress_out_in_blocks_equals_one_block(tmp_path):
    rng, d, x, y = _circles_like(n=300)
    r = rng.normal(size=(300, 2, 9)) - 0.05 * d[:, None, None]
    da = xr.DataArray(r, dims=("stimulus", "token", "unit"),
                      coords={"x": ("stimulus", x), "y": ("stimulus", y), "diameter": ("stimulus", d)})
    path = tmp_path / "rec.nc"
    da.to_dataset(name="site").to_netcdf(path)
    with xr.open_dataset(path) as lazy:
        blocked = ratemaps(lazy["site"], bins=8, extent=(0, 224, 0, 224), smoothing=1.0, block_bytes=5_000,
                           regress_out="diameter")
    whole = ratemaps(da, bins=8, extent=(0, 224, 0, 224), smoothing=1.0, regress_out=["diameter"])
    np.testing.assert_allclose(blocked.ratemap.values, whole.ratemap.values, rtol=1e-6)
    assert not np.allclose(whole.ratemap.values, ratemaps(da, bins=8, extent=(0, 224, 0, 224),
                                                          smoothing=1.0).ratemap.values, atol=0.05, equal_nan=True)


def test_regress_out_diameter_removes_the_confounded_rim():
    rng, d, x, y = _circles_like()
    place = 2 * np.exp(-((x - 90) ** 2 + (y - 130) ** 2) / (2 * 22 ** 2))
    r = np.stack([-0.05 * d, place - 0.03 * d], 1) + rng.normal(0, 0.3, (d.size, 2))
    da = xr.DataArray(r, dims=("stimulus", "unit"),
                      coords={"x": ("stimulus", x), "y": ("stimulus", y), "diameter": ("stimulus", d)},
                      attrs={"canvas": 224})
    rim = np.zeros((14, 14), bool)
    rim[[0, -1], :] = rim[:, [0, -1]] = True

    def rim_minus_centre(maps):
        return np.nanmean(maps[:, rim], 1) - np.nanmean(maps[:, 4:10, 4:10].reshape(len(maps), -1), 1)

    raw = ratemaps(da, bins=14, smoothing=1.0).ratemap.values
    clean = ratemaps(da, bins=14, smoothing=1.0, regress_out=["diameter"]).ratemap.values
    assert rim_minus_centre(raw)[0] > 0.8  # small circles at the walls -> a rim in a pure-size unit
    assert abs(rim_minus_centre(clean)[0]) < 0.15
    # the place field survives: same peak bin (y=130 -> row 8, x=90 -> col 5)
    assert np.unravel_index(np.nanargmax(clean[1]), (14, 14)) == (8, 5)
    assert np.nanmax(clean[1]) - np.nanmedian(clean[1]) > 1.0


def test_regress_out_errors():
    rng, d, x, y = _circles_like(n=50)
    da = xr.DataArray(rng.normal(size=(50, 2)), dims=("stimulus", "unit"),
                      coords={"x": ("stimulus", x), "y": ("stimulus", y), "diameter": ("stimulus", d),
                              "size": ("stimulus", 2 * d), "shape": ("stimulus", np.full(50, "circle")),
                              "unit": [0, 1]}, attrs={"canvas": 224})
    with pytest.raises(AnalysisInputError, match="no stimulus coordinate 'area'"):
        ratemaps(da, regress_out=["area"])
    with pytest.raises(AnalysisInputError, match="no stimulus coordinate 'unit'"):
        ratemaps(da, regress_out=["unit"])
    bad = d.copy()
    bad[3] = np.nan
    with pytest.raises(AnalysisInputError, match="non-finite"):
        ratemaps(da, regress_out=[bad])
    with pytest.raises(AnalysisInputError, match="rank"):
        ratemaps(da, regress_out=["diameter", "size"])  # collinear
    with pytest.raises(AnalysisInputError, match="rank"):
        ratemaps(da, regress_out=[np.full(50, 3.0)])  # constant: collinear with the intercept
    with pytest.raises(AnalysisInputError, match="one level"):
        ratemaps(da, regress_out=["shape"])
    with pytest.raises(AnalysisInputError, match="shape"):
        ratemaps(da, regress_out=[d[:10]])


def test_extent_forms():
    """(lo, hi) for both axes and (x0, x1, y0, y1) give the same maps; anything else is a clear error."""
    rng = np.random.default_rng(0)
    resp = xr.DataArray(rng.normal(size=(200, 3)), dims=("stimulus", "unit"),
                        coords={"x": ("stimulus", rng.uniform(0, 100, 200)), "y": ("stimulus", rng.uniform(0, 100, 200))})
    a = ratemaps(resp, bins=5, extent=(0, 100))
    b = ratemaps(resp, bins=5, extent=(0, 100, 0, 100))
    xr.testing.assert_identical(a, b)
    for bad in [(0, 100, 5), (100, 0), "0-100", (0, np.nan)]:
        with pytest.raises(AnalysisInputError, match="extent"):
            ratemaps(resp, bins=5, extent=bad)
