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
    assert ds.attrs["n_shuffles"] == 39 and ds.attrs["rate"] == "shift"
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
