"""Shuffle nulls: planted place/grid/border units beat their nulls, untuned units do not."""
import numpy as np
import pytest
import xarray as xr

from analyses.nulls import classify, spatial_nulls
from analyses.ratemaps import AnalysisInputError


def _planted(n=2500, seed=1):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 160, n), rng.uniform(0, 160, n)
    units = []
    for cx, cy in ((40, 50), (120, 110)):  # place
        units.append(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 15 ** 2)))
    for spacing, ori in ((50, 0.2), (60, 0.7)):  # grid
        k = 4 * np.pi / (np.sqrt(3) * spacing)
        g = sum(np.cos(k * (x * np.cos(ori + j * np.pi / 3) + y * np.sin(ori + j * np.pi / 3))) for j in range(3))
        units.append(np.maximum(g, 0))
    units.append(np.exp(-x / 12))  # border: left wall
    units.append(np.exp(-(160 - y) / 12))  # border: bottom wall
    units += [np.zeros(n)] * 4  # untuned
    r = np.stack(units, 1) + rng.normal(0, 0.3, (n, len(units)))
    kinds = ["place"] * 2 + ["grid"] * 2 + ["border"] * 2 + ["untuned"] * 4
    return xr.DataArray(r - 5.0, dims=("stimulus", "unit"),  # signed, offset activations
                        coords={"x": ("stimulus", x), "y": ("stimulus", y), "kind": ("unit", kinds)},
                        attrs={"canvas": 160}), np.array(kinds)


@pytest.mark.slow
def test_planted_units_are_classified():
    resp, kinds = _planted()
    ds = spatial_nulls(resp, n_shuffles=39, seed=3, bins=16, smoothing=1.0, alpha=0.025, block_units=4)
    assert ds["class"].dims == ("unit",)
    np.testing.assert_array_equal(ds["class"].values[kinds == "grid"], "grid")
    np.testing.assert_array_equal(ds["class"].values[kinds == "border"], "border")
    np.testing.assert_array_equal(ds["class"].values[kinds == "place"], "spatial")
    np.testing.assert_array_equal(ds["class"].values[kinds == "untuned"], "none")
    # strongest possible p for planted units; untuned p-values are spread out
    assert (ds.spatial_information_p.values[kinds != "untuned"] == 1 / 40).all()
    assert ds.spatial_information_p.values[kinds == "untuned"].min() > 1 / 40
    assert ds.attrs["n_shuffles"] == 39 and ds.attrs["rate"] == "robust"
    # seeded: same seed, same answer
    again = spatial_nulls(resp.isel(unit=[0, 6]), n_shuffles=39, seed=3, bins=16, alpha=0.025,
                          scores=("spatial_information",))
    np.testing.assert_array_equal(again.spatial_information_p.values, ds.spatial_information_p.values[[0, 6]])


def test_p_value_formula_and_classify_rule():
    resp, kinds = _planted(n=800)
    ds = spatial_nulls(resp.isel(unit=[0, 6]), n_shuffles=9, seed=0, bins=8, scores=("spatial_information",))
    assert ds.spatial_information_p.values[0] == pytest.approx(0.1)  # (1 + 0) / (1 + 9)
    p = {"spatial_information": np.array([0.01, 0.01, 0.5, 0.01]), "grid_score": np.array([0.01, 0.5, 0.01, 0.01]),
         "border_score": np.array([0.01, 0.01, 0.5, 0.5])}
    z = {"spatial_information": np.ones(4), "grid_score": np.array([5.0, 0, 2, 1]),
         "border_score": np.array([9.0, 3, 0, 0])}
    np.testing.assert_array_equal(classify(p, z, 0.05), ["border", "border", "grid", "grid"])
    with pytest.raises(AnalysisInputError):
        spatial_nulls(resp, n_shuffles=0)
    with pytest.raises(AnalysisInputError):
        spatial_nulls(resp, scores=("coherence",))
    with pytest.raises(AnalysisInputError, match="scores is empty"):
        spatial_nulls(resp, scores=())
    with pytest.raises(AnalysisInputError, match="rate must be one of"):
        spatial_nulls(resp, rate="log", scores=("grid_score",))
    with pytest.raises(AnalysisInputError, match="no stimulus position lies inside extent"):
        spatial_nulls(resp, extent=(1000, 1100, 1000, 1100))
    with pytest.raises(AnalysisInputError, match="workers must be a positive integer"):
        spatial_nulls(resp, workers=0)


def test_nulls_do_not_depend_on_workers():
    """Scoring blocks in 1, 2 or 3 threads gives identical scores, p-values, null moments and classes."""
    resp, _ = _planted(n=800)
    kw = dict(n_shuffles=9, seed=2, bins=12, block_units=4)
    one = spatial_nulls(resp, workers=1, **kw)
    for workers in (2, 3):
        xr.testing.assert_identical(spatial_nulls(resp, workers=workers, **kw), one)


def _size_confounded(n=1000, canvas=224, n_size_units=24, seed=1):
    """Circles-like design (x ~ U(d/2, canvas - d/2)): size-only units (response = a * diameter), then one place
    unit that also depends on size."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(20, 80, n)
    x, y = rng.uniform(d / 2, canvas - d / 2), rng.uniform(d / 2, canvas - d / 2)
    a = np.tile([-0.06, 0.06, -0.03, 0.03], n_size_units // 4)
    place = 2 * np.exp(-((x - 90) ** 2 + (y - 130) ** 2) / (2 * 22 ** 2)) - 0.03 * d
    r = np.column_stack([d[:, None] * a, place]) + rng.normal(0, 0.4, (n, a.size + 1))
    return xr.DataArray(r, dims=("stimulus", "unit"), attrs={"canvas": canvas},
                        coords={"x": ("stimulus", x), "y": ("stimulus", y), "diameter": ("stimulus", d)}), a


def test_regress_out_diameter_turns_false_border_units_into_none():
    resp, a = _size_confounded()
    kw = dict(n_shuffles=19, seed=0, bins=14, smoothing=1.0, alpha=0.05)
    raw = spatial_nulls(resp, **kw)["class"].values
    ds = spatial_nulls(resp, regress_out=["diameter"], **kw)
    clean = ds["class"].values
    # without control: every unit preferring small circles (a < 0) looks like a border cell
    assert (raw[:-1][a < 0] == "border").all()
    # with control: the planted size unit is not spatial, and the population falls to the false-positive rate
    assert ds.spatial_information_p.values[0] > 0.05 and clean[0] == "none"
    assert (clean[:-1] == "border").mean() <= 0.1 and (clean[:-1] != "none").mean() <= 0.2
    # the place unit keeps its significance
    assert clean[-1] == "spatial" and ds.spatial_information_p.values[-1] == pytest.approx(1 / 20)
    assert ds.attrs["regress_out"] == ["diameter"]


def test_regress_out_is_done_once_on_unshuffled_responses_in_any_block_size():
    from analyses.ratemaps import regression_basis, residualise
    resp, _ = _size_confounded(n=400, n_size_units=4)
    kw = dict(n_shuffles=9, seed=2, bins=8, smoothing=1.0)
    ds = spatial_nulls(resp, regress_out=["diameter"], block_units=2, **kw)
    whole = spatial_nulls(resp, regress_out=["diameter"], block_units=64, **kw)
    basis, _ = regression_basis(resp, ["diameter"])
    manual = spatial_nulls(resp.copy(data=residualise(resp.values, basis)), **kw)
    for k in ("spatial_information", "border_score_p", "grid_score_null_mean", "border_score_null_sd"):
        np.testing.assert_allclose(ds[k].values, whole[k].values, rtol=1e-9)
        np.testing.assert_allclose(ds[k].values, manual[k].values, rtol=1e-9)
    np.testing.assert_array_equal(ds["class"].values, manual["class"].values)
    with pytest.raises(AnalysisInputError, match="diameter2"):
        spatial_nulls(resp, regress_out=["diameter2"], n_shuffles=1)
