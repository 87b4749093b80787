"""Spatial scores: agreement with opexebo 0.7 (fixture made by tests/fixtures/opexebo/make_fixtures.py) and
defined outputs on bad input."""
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analyses.ratemaps import AnalysisInputError
from analyses.spatial import (autocorrelogram, border_fields, border_score, grid_score, spatial_information,
                              spatial_stats)

FIXTURE = Path(__file__).parent / "fixtures" / "opexebo" / "reference.npz"


@pytest.fixture(scope="module")
def ref():
    f = np.load(FIXTURE)
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def maps(ref):
    return ref["maps"].astype(np.float64)


def test_spatial_information_matches_opexebo_clipped(ref, maps):
    st = spatial_stats(maps, ref["occupancy"].astype(np.float64), clip=True)
    for ours, theirs in (("information_content", "si_content"), ("information_rate", "si_rate"),
                         ("sparsity", "sparsity"), ("selectivity", "selectivity")):
        np.testing.assert_array_equal(np.isnan(st[ours]), np.isnan(ref[theirs]))
        np.testing.assert_allclose(st[ours], ref[theirs], atol=1e-9, rtol=0, err_msg=ours)


def test_spatial_information_matches_unclipped_skaggs(ref, maps):
    occ = ref["occupancy"].astype(np.float64)
    bits = spatial_information(maps, occ)
    np.testing.assert_allclose(bits, ref["si_content_skaggs"], atol=1e-9, rtol=0)
    per_second = spatial_information(maps, occ, per="second")
    np.testing.assert_allclose(per_second, ref["si_rate_skaggs"], atol=1e-9, rtol=0)
    finite = np.isfinite(bits)
    assert (bits[finite] >= -1e-12).all()  # a KL divergence
    # clipping only ever adds information (drops the negative below-mean terms)
    clipped = spatial_information(maps, occ, clip=True)
    assert (clipped[finite] >= bits[finite] - 1e-12).all()


def test_grid_score_matches_opexebo(ref, maps):
    ours = grid_score(maps, nan="zero")  # opexebo sets unvisited bins to 0
    theirs = ref["grid"]
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    close = np.abs(ours - theirs) < 0.02
    assert close[finite].mean() >= 0.95, f"only {close[finite].mean():.3f} within 0.02"
    # every disagreement is a map with lags whose overlap is constant up to round-off (opexebo: noise there)
    degenerate = (autocorrelogram(maps, nan="zero") == 0).any(axis=(1, 2))
    assert close[finite & ~degenerate].all()
    # grids score high, untuned noise does not
    kind = ref["kind"]
    assert np.nanmin(ours[kind == "grid"]) > 1.0
    np.testing.assert_allclose(grid_score(ref["wide_maps"].astype(np.float64), nan="zero"), ref["wide_grid"],
                               atol=0.02)


def test_grid_score_nan_exclude_is_right_on_holes(ref, maps):
    """Leaving unvisited bins out keeps a holed grid's score nearer its hole-free score than zero-filling."""
    kind = ref["kind"]
    holed = np.flatnonzero(np.char.startswith(kind.astype(str), "grid") & ref["holes"])
    full = {i: m for i, m in enumerate(maps) if not ref["holes"][i]}
    originals = np.stack([next(m for m in full.values() if np.allclose(np.nan_to_num(maps[i]), np.where(
        np.isnan(maps[i]), 0, m))) for i in holed])
    clean = grid_score(originals)
    err_exclude = np.abs(grid_score(maps[holed]) - clean)
    err_zero = np.abs(grid_score(maps[holed], nan="zero") - clean)
    assert np.nanmean(err_exclude) < np.nanmean(err_zero)


def test_border_score_matches_opexebo_given_the_same_fields(ref, maps):
    ours = border_score(maps)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref["border"]))
    np.testing.assert_allclose(ours, ref["border"], atol=1e-9, rtol=0)
    kind = ref["kind"].astype(str)
    assert np.nanmin(ours[kind == "border"]) > 0.5
    assert np.nanmax(ours[kind == "place"]) < np.nanmin(ours[kind == "border"])


def test_border_score_needs_no_zeros_and_finds_each_wall():
    y, x = np.mgrid[0:20, 0:20].astype(float)
    walls = [np.exp(-d / 1.5) for d in (y, 19 - y, x, 19 - x)]
    stack = np.stack(walls) * 5 + 100.0  # a baseline: no bin is zero
    scores = border_score(stack)
    assert (scores > 0.5).all()
    np.testing.assert_allclose(scores, scores[0], atol=1e-12)  # symmetric walls score the same
    labels = border_fields(stack)
    assert labels.shape == stack.shape and (labels.max(axis=(1, 2)) == 1).all()


def test_bad_input_gives_nan_not_crash():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter
    smooth_noise = gaussian_filter(rng.random((16, 16)), 1.5)
    maps = np.stack([np.full((16, 16), np.nan), np.full((16, 16), 3.0), smooth_noise])
    occ = np.ones((16, 16))
    for out in (grid_score(maps), border_score(maps)):
        assert np.isnan(out[:2]).all() and out.shape == (3,)
    si = spatial_information(maps, occ)
    assert np.isnan(si[0]) and si[1] == 0.0  # a constant map carries no information
    assert np.isfinite(grid_score(maps)[2]) and np.isfinite(border_score(maps)[2])
    # non-square and tiny maps
    assert grid_score(rng.random((3, 12, 20))).shape == (3,)
    assert np.isnan(grid_score(rng.random((2, 2, 2)))).all()
    # signed maps: rate="none" is undefined for Skaggs, "shift" is defined
    signed = rng.normal(size=(4, 10, 10))
    assert np.isnan(spatial_information(signed, occ[:10, :10])).all()
    assert np.isfinite(spatial_information(signed, occ[:10, :10], rate="shift")).all()
    with pytest.raises(AnalysisInputError):
        spatial_information(signed, occ[:10, :10], rate="bogus")
    with pytest.raises(AnalysisInputError):
        grid_score(np.zeros(5))


def test_scores_keep_leading_dims_and_accept_xarray(ref, maps):
    stack = maps[:12].reshape(3, 4, 28, 28)
    da = xr.DataArray(stack, dims=("site", "unit", "y_bin", "x_bin"), coords={"site": ["a", "b", "c"]})
    g = grid_score(da, nan="zero")
    assert isinstance(g, xr.DataArray) and g.dims == ("site", "unit")
    np.testing.assert_allclose(g.values.ravel(), grid_score(maps[:12], nan="zero"))
    b = border_score(stack, block_size=5)  # blocks do not change results
    np.testing.assert_allclose(b.ravel(), border_score(maps[:12]))
    si = spatial_information(da, ref["occupancy"][0])
    assert si.dims == ("site", "unit") and si.attrs["rate"] == "none"


def test_figures_render(ref, maps, tmp_path):
    from analyses.spatial_figures import compare_preparations, score_distributions, top_units_figure
    site_maps = {"block.0": maps[:20], "block.1": maps[20:40]}
    scores = {s: {"spatial_information": spatial_information(m, ref["occupancy"][0]),
                  "grid_score": grid_score(m), "border_score": border_score(m)} for s, m in site_maps.items()}
    fig = top_units_figure(site_maps, scores, k=5, title="top units")
    assert len(fig.axes) == 2 * 15 + 1  # the panels and one colour bar
    # the first grid column of row 0 shows the unit with the highest grid score
    best = int(np.nanargmax(scores["block.0"]["grid_score"]))
    assert fig.axes[5].get_title().split("\n") == [str(best), f"{scores['block.0']['grid_score'][best]:.2f}"]
    fig.savefig(tmp_path / "top.png")
    assert score_distributions(scores).axes and compare_preparations(scores["block.0"], scores["block.1"]).axes


def _smooth_fields(n, shape, seed):
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    maps = np.stack([gaussian_filter(rng.normal(size=shape), s) for s in rng.uniform(1.0, 4.0, n)])
    return maps / np.abs(maps).max(axis=(1, 2), keepdims=True)


def test_reconstruction_sweeps_equal_iterated_dilation():
    """`_reconstruct` (row/column sweeps) is the fixed point of parallel geodesic dilation, 4- and 8-connected."""
    from scipy import ndimage
    from analyses.spatial import _reconstruct
    mask = _smooth_fields(40, (23, 31), seed=4)
    seed = np.where(np.random.default_rng(5).random(mask.shape) < 0.02, mask, -np.inf)
    seed[:, 11, 15] = mask[:, 11, 15]
    for conn8, fp in ((False, ndimage.generate_binary_structure(2, 1)), (True, np.ones((3, 3), bool))):
        ref = seed.copy()
        while True:
            new = np.minimum(ndimage.grey_dilation(ref, footprint=fp[None], mode="nearest"), mask)
            if (new == ref).all():
                break
            ref = new
        last = (lambda a: np.moveaxis(a, 0, -1))  # maps last
        np.testing.assert_array_equal(_reconstruct(last(seed), last(mask), conn8=conn8), last(ref))


def test_centre_field_steps_equal_labelling_per_threshold():
    """Areas and holes of the centre field at every threshold equal ndimage.label / binary_fill_holes."""
    from scipy import ndimage
    from analyses.spatial import _EXPAND_THRESHOLDS, _field_steps
    fmap = _smooth_fields(60, (25, 25), seed=6)
    fmap[:, 12, 12] = 1.0
    fmap[::7, 3:6, 3:6] = -np.inf  # unvisited corners never join a field
    peak = fmap[:, 12, 12]
    area, holes = _field_steps(np.moveaxis(fmap, 0, -1), peak, _EXPAND_THRESHOLDS)  # maps last
    assert holes.any() and (~holes).any() and np.unique(area).size > 20  # the check sees varied fields
    for i, m in enumerate(fmap):
        for j, t in enumerate(_EXPAND_THRESHOLDS):
            lab, _ = ndimage.label(m >= peak[i] * t)
            field = lab == lab[12, 12]
            assert area[i, j] == field.sum(), (i, t)
            assert holes[i, j] == (ndimage.binary_fill_holes(field) != field).any(), (i, t)


def test_opened_centre_equals_opening_of_the_whole_map():
    """The centre of the opening by reconstruction from a window (with the whole-map fallback where the centre's
    component leaves the window) equals the whole map's opening, on narrow and broad centre peaks."""
    from analyses.spatial import _erode_cross, _opened_centre, _reconstruct
    a = np.moveaxis(_smooth_fields(80, (25, 27), seed=8), 0, -1).copy()
    a[:, :, ::9] = -np.inf  # unvisited lags
    a[12, 13] = np.linspace(-0.5, 2.0, a.shape[-1])  # centre below, at and above its surroundings
    full = _reconstruct(_erode_cross(a), a, conn8=True)[12, 13]
    for window in (1, 3, 5, 30):
        np.testing.assert_array_equal(_opened_centre(a, window=window), full)


def test_quantize_is_the_exact_threshold_count_at_ties():
    from analyses.spatial import _EXPAND_THRESHOLDS as T, _quantize
    rng = np.random.default_rng(9)
    fmap = rng.uniform(-0.5, 1.2, (9, 9, 40))
    peak = rng.uniform(0.2, 1.0, 40)
    peak[:3] = (0.0, -1.0, np.nan)
    t = T[rng.integers(0, T.size, 300)]
    i = rng.integers(0, 40, 300)
    y, x = rng.integers(0, 9, (2, 300))
    fmap[y, x, i] = np.nextafter(peak[i] * t, peak[i] * t + rng.choice([-1.0, 0.0, 1.0], 300))  # at / next to ties
    fmap[::4, ::3] = -np.inf
    with np.errstate(invalid="ignore"):
        expected = (fmap[..., None] >= peak[:, None] * T).sum(-1)
    expected[..., :3] = 0
    np.testing.assert_array_equal(_quantize(fmap, peak, T), expected)


def test_scores_do_not_depend_on_workers_or_blocks():
    """Each map's grid and border score is the same bit for bit whichever block holds it and however many
    threads score the blocks."""
    maps = _smooth_fields(70, (20, 20), seed=10)
    maps[::4, 3:5, 6:9] = np.nan  # blocks with and without a shared visited mask
    for score in (grid_score, border_score):
        one = score(maps, workers=1)
        assert np.isfinite(one).sum() > 50
        for kw in (dict(workers=2), dict(workers=3, block_size=7), dict(workers=1, block_size=1)):
            np.testing.assert_array_equal(score(maps, **kw), one)


def test_grid_score_warns_of_nothing_in_threads():
    """Undefined ring correlations give NaN without a RuntimeWarning (a warnings filter is not thread-safe)."""
    import warnings
    maps = _smooth_fields(40, (20, 20), seed=11)
    maps[:, :, :3] = 1.0  # flat strips: some rings have no variance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid_score(maps, workers=2, block_size=8)
