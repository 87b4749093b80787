"""RDMs and their comparisons agree with rsatoolbox (1e-9) and scipy; the stimulus bootstrap equals explicit
resampling; delta-RSA per condition."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, spearmanr

import analyses
from analyses import AnalysisInputError
from analyses.rsa import bootstrap_compare, delta_rsa, rank

rsatoolbox = pytest.importorskip("rsatoolbox")  # a test dependency: pip install -e ".[test]"


def features(n=40, p=25, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, p)) + rng.standard_normal(p)  # a shared offset: correlation != cosine


def toolbox_rdm(x, method):
    return rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(x), method=method).get_vectors()[0]


@pytest.mark.parametrize("metric,reference", [("euclidean", "euclidean"), ("correlation", "correlation")])
def test_rdm_matches_rsatoolbox(metric, reference):
    x = features()
    np.testing.assert_allclose(analyses.rdm(x, metric), toolbox_rdm(x, reference), rtol=0, atol=1e-9)


def test_rdm_matches_scipy_pdist_in_condensed_order():
    x = features(n=37)
    np.testing.assert_allclose(analyses.rdm(x, "cosine"), pdist(x, "cosine"), atol=1e-12)
    np.testing.assert_allclose(analyses.rdm(x, "correlation"), pdist(x, "correlation"), atol=1e-12)
    np.testing.assert_allclose(analyses.rdm(x, "euclidean"), pdist(x, "sqeuclidean") / x.shape[1], atol=1e-12)
    assert analyses.rdm(x).shape == (37 * 36 // 2,)


def test_rdm_in_blocks_equals_one_block(monkeypatch):
    x = features(n=53, p=7)
    whole = analyses.rdm(x, "euclidean")
    monkeypatch.setattr("analyses.rsa.BLOCK_BYTES", 8 * 53 * 4)  # 4 rows per block
    np.testing.assert_allclose(analyses.rdm(x, "euclidean"), whole, atol=1e-12)
    np.testing.assert_allclose(analyses.rdm(x, "cosine", dtype=np.float32), pdist(x, "cosine"), atol=1e-5)


def test_rdm_takes_xarray_torch_and_flattens_channels():
    import torch

    x = np.random.default_rng(1).standard_normal((12, 3, 4, 5))
    da = xr.DataArray(x.transpose(1, 0, 2, 3), dims=("unit", "stimulus", "map_y", "map_x"))
    expected = pdist(x.reshape(12, -1), "cosine")
    np.testing.assert_allclose(analyses.rdm(da), pdist(x.transpose(0, 1, 2, 3).reshape(12, -1), "cosine"))
    np.testing.assert_allclose(analyses.rdm(torch.from_numpy(x)), expected)
    with pytest.raises(AnalysisInputError, match="unknown RDM metric"):
        analyses.rdm(x, "cosinus")
    with pytest.raises(AnalysisInputError, match="at least 2 stimuli"):
        analyses.rdm(x[:1])


@pytest.mark.parametrize("method,reference", [("spearman", "spearman"), ("pearson", "corr"),
                                              ("kendall_tau_a", "tau-a")])
def test_compare_matches_rsatoolbox(method, reference):
    a = analyses.rdm(features(seed=1))
    b = analyses.rdm(features(seed=1) + 0.7 * features(seed=2))
    b_tied = np.round(b * 4) / 4  # a model RDM with ties
    for other in (b, b_tied):
        expected = rsatoolbox.rdm.compare(rsatoolbox.rdm.RDMs(a[None]), rsatoolbox.rdm.RDMs(other[None]), reference)
        assert analyses.compare_rdms(a, other, method) == pytest.approx(float(expected[0, 0]), abs=1e-9)


def test_spearman_matches_scipy_on_condensed_rdms_and_stacks():
    a = analyses.rdm(features(seed=3))
    bs = np.stack([analyses.rdm(features(seed=3) + s * features(seed=4)) for s in (0.3, 1.0, 3.0)])
    bs[2] = np.round(bs[2], 1)
    got = analyses.compare_rdms(bs, a)
    assert got.shape == (3, 1)
    for k in range(3):
        assert got[k, 0] == pytest.approx(spearmanr(bs[k], a).statistic, abs=1e-12)
        assert analyses.compare_rdms(bs[k], a, "pearson") == pytest.approx(pearsonr(bs[k], a).statistic, abs=1e-12)
    assert analyses.compare_rdms(squareform(bs[0]), a) == pytest.approx(got[0, 0])  # square RDMs are accepted


def test_nan_pairs_are_left_out():
    a = analyses.rdm(features(seed=5))
    b = analyses.rdm(features(seed=6))
    a_nan = a.copy()
    a_nan[[3, 50]] = np.nan
    keep = ~np.isnan(a_nan)
    assert analyses.compare_rdms(a_nan, b) == pytest.approx(spearmanr(a[keep], b[keep]).statistic)
    zero = features(n=6)
    zero[2] = 0
    assert np.isnan(analyses.rdm(zero)).sum() == 5  # the zero pattern's pairs have no cosine distance


def test_rank_averages_ties():
    from scipy.stats import rankdata

    x = np.array([[3.0, 1, 3, 2, 2, 2], [0, 0, 0, 1, 1, 5]])
    np.testing.assert_array_equal(rank(x), rankdata(x, axis=1))


def test_compare_refuses_mismatched_rdms():
    with pytest.raises(AnalysisInputError, match="same stimuli"):
        analyses.compare_rdms(np.ones(10), np.ones(15))
    with pytest.raises(AnalysisInputError, match="not the length"):
        bootstrap_compare(np.ones(11), np.ones(11))
    with pytest.raises(AnalysisInputError, match="unknown RDM comparison"):
        analyses.compare_rdms(np.ones(10), np.ones(10), "kendall")


def explicit_resample(rdm_vec, counts):
    """The RDM of a bootstrap sample built as rsatoolbox does: drawn stimuli (with copies), pairs between a
    stimulus and its own copy removed."""
    n = len(counts)
    drawn = np.repeat(np.arange(n), counts)
    sq = squareform(rdm_vec)[np.ix_(drawn, drawn)]
    iu = np.triu_indices(len(drawn), 1)
    keep = drawn[iu[0]] != drawn[iu[1]]
    return sq[iu][keep]


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall_tau_a"])
def test_bootstrap_equals_explicit_resampling(method):
    n = 15
    a = analyses.rdm(features(n=n, seed=7))
    b = np.round(analyses.rdm(features(n=n, seed=7) + features(n=n, seed=8)), 1)  # with ties
    res = bootstrap_compare(a, b, method=method, n_bootstrap=5, seed=3)
    draws = np.random.default_rng(3).integers(0, n, (5, n))
    for s in range(5):
        counts = np.bincount(draws[s], minlength=n)
        expected = analyses.compare_rdms(explicit_resample(a, counts), explicit_resample(b, counts), method)
        assert float(res["samples"][s, 0, 0]) == pytest.approx(expected, abs=1e-9)
    assert float(res["estimate"][0, 0]) == pytest.approx(analyses.compare_rdms(a, b, method))


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_bootstrap_in_pieces_with_ties_and_nan_equals_explicit_resampling(method, monkeypatch):
    """Stacks on both sides, many ties in every RDM (groups across piece boundaries), a constant RDM, NaN pairs:
    every sample equals compare_rdms on the explicitly resampled RDMs to 1e-10, whatever the workers."""
    monkeypatch.setattr("analyses.rsa.CHUNK", 7)
    n, rng = 17, np.random.default_rng(5)
    a = np.stack([np.round(analyses.rdm(features(n=n, seed=s)), d) for s, d in ((1, 1), (2, 2), (3, 0))])
    a[2] = 0.5  # a constant RDM (e.g. a CLS token that never changes): no rank correlation
    b = np.stack([np.round(analyses.rdm(features(n=n, seed=1) + features(n=n, seed=4)), 1),
                  rng.integers(0, 3, a.shape[1]).astype(float)])
    b[1, [3, 40]] = np.nan
    keep = ~np.isnan(b).any(axis=0)
    res = bootstrap_compare(a, b, method=method, n_bootstrap=12, seed=4, workers=1)
    again = bootstrap_compare(a, b, method=method, n_bootstrap=12, seed=4, workers=3)
    np.testing.assert_array_equal(res["samples"].values, again["samples"].values)
    draws = np.random.default_rng(4).integers(0, n, (12, n))
    for s in range(12):
        counts = np.bincount(draws[s], minlength=n)
        for k in range(3):
            for m in range(2):
                x = explicit_resample(np.where(keep, a[k], np.nan), counts)
                y = explicit_resample(np.where(keep, b[m], np.nan), counts)
                got = float(res["samples"][s, k, m])
                if k == 2:
                    assert np.isnan(got)
                else:
                    assert got == pytest.approx(analyses.compare_rdms(x, y, method), abs=1e-10)
    # pairs NaN in any RDM are left out of every comparison (the samples must be paired)
    np.testing.assert_allclose(res["estimate"].values, analyses.compare_rdms(a[:, keep], b[:, keep], method),
                               atol=1e-12)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_bootstrap_without_defined_pairs_is_nan(method):
    """A site whose every pattern is zero has no cosine distance at all: its NaN pairs leave no pair to compare,
    and cost the other sites of the stack nothing (each is resampled on its own defined pairs, same samples)."""
    good, partly = analyses.rdm(features(n=9)), analyses.rdm(features(n=9, seed=2))
    partly[[0, 5, 7]] = np.nan
    a, ref = np.stack([good, np.full(36, np.nan), partly]), analyses.rdm(features(n=9, seed=1))
    res = bootstrap_compare(a, ref, method=method, n_bootstrap=3)
    assert res["samples"].shape == (3, 3, 1) and np.isnan(res["samples"][:, 1]).all()
    assert np.isnan(res["estimate"][1]).all()
    for k, alone in ((0, good), (2, partly)):
        one = bootstrap_compare(alone, ref, method=method, n_bootstrap=3)
        np.testing.assert_array_equal(res["samples"][:, k], one["samples"][:, 0])
        np.testing.assert_array_equal(res["ci_low"][k], one["ci_low"][0])


def test_bootstrap_samples_match_rsatoolbox():
    """A sample's Spearman rho equals rsatoolbox's on the same resampled stimuli (its subsample_pattern drops
    the pairs of a stimulus with its own copy, as we do)."""
    n = 14
    a = analyses.rdm(features(n=n, seed=21))
    b = np.round(analyses.rdm(features(n=n, seed=21) + features(n=n, seed=22)), 1)
    res = bootstrap_compare(a, b, n_bootstrap=4, seed=6)
    both = rsatoolbox.rdm.RDMs(np.stack([a, b]), pattern_descriptors={"index": np.arange(n)})
    for s, idx in enumerate(np.random.default_rng(6).integers(0, n, (4, n))):
        v = both.subsample_pattern("index", idx).get_vectors()
        expected = rsatoolbox.rdm.compare(rsatoolbox.rdm.RDMs(v[:1]), rsatoolbox.rdm.RDMs(v[1:]), "spearman")
        assert float(res["samples"][s, 0, 0]) == pytest.approx(float(expected[0, 0]), abs=1e-10)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_stimuli():
    widths = []
    for n in (20, 80):
        x = features(n=n, seed=9)
        a = analyses.rdm(x)
        b = analyses.rdm(x + 2 * features(n=n, seed=10))
        res = bootstrap_compare(np.stack([a, a]), b, n_bootstrap=200, seed=0)
        assert res["samples"].shape == (200, 2, 1)
        assert float(res["ci_low"][0, 0]) < float(res["estimate"][0, 0]) < float(res["ci_high"][0, 0])
        widths.append(float(res["ci_high"][0, 0] - res["ci_low"][0, 0]))
    assert widths[1] < widths[0]


def test_delta_rsa_per_condition():
    base = features(n=20, seed=11)
    reference = analyses.rdm(base)
    model = {"Baseline": analyses.rdm(base + 0.5 * features(n=20, seed=12)),
             "Salient": analyses.rdm(base + 3.0 * features(n=20, seed=13))}
    d = delta_rsa(model, reference)
    assert d.dims == ("condition",) and list(d.condition.values) == ["Baseline", "Salient"]
    assert float(d.sel(condition="Baseline")) == 0
    expected = analyses.compare_rdms(model["Salient"], reference) - analyses.compare_rdms(model["Baseline"], reference)
    assert float(d.sel(condition="Salient")) == pytest.approx(expected) and expected < 0
    with pytest.raises(AnalysisInputError, match="baseline condition"):
        delta_rsa({"Salient": model["Salient"]}, reference)
