"""Planted-truth tests of analyses.spectral / alignment / segmentation (fast: small graphs)."""
import numpy as np
import pytest
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import analyses
from analyses import AnalysisInputError


def clustered(n=600, d=64, k=5, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    lab = rng.integers(k, size=n)
    return (centres[lab] + noise * rng.standard_normal((n, d))).astype(np.float32), lab


def angles(a, b):
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    return np.degrees(np.arccos(np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1, 1)))


def test_exact_ncut_separates_planted_clusters_and_matches_scipy():
    x, lab = clustered()
    e = analyses.ncut(x, n_eig=5)
    assert e.dims == ("node", "eig") and e.shape == (600, 5)
    assert e.eigenvalue.values[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(np.diff(e.eigenvalue.values) <= 1e-9)
    pred = KMeans(5, n_init=10, random_state=0).fit_predict(e.values)
    assert adjusted_rand_score(lab, pred) == 1.0
    assert np.all(e.values.sum(0) > 0)  # sign fix: positive column sums
    # same quantity by hand: eigenvectors of D^-1/2 A D^-1/2
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = np.exp(-(1 - xn @ xn.T))
    dm = 1 / np.sqrt(a.sum(1))
    w, v = np.linalg.eigh(a * dm[:, None] * dm[None, :])
    assert np.allclose(e.eigenvalue.values, w[::-1][:5], atol=1e-5)
    assert angles(e.values, v[:, ::-1][:, :5]).max() < 0.1


def test_sklearn_spectral_embedding_is_the_same_subspace():
    # sklearn's spectral_embedding (norm_laplacian) returns D^-1/2 U of L_sym = I - D^-1/2 A D^-1/2 with the
    # diagonal of A dropped; same subspace as ours up to the D^-1/2 scaling and the self-loops.
    from sklearn.manifold import spectral_embedding
    x, _ = clustered(n=300)
    e = analyses.ncut(x, n_eig=5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = np.exp(-(1 - xn @ xn.T))
    np.fill_diagonal(a, 0)
    ref = spectral_embedding(a, n_components=5, norm_laplacian=True, drop_first=False, random_state=0)
    ours = e.values / np.sqrt(e.degree.values)[:, None]
    assert angles(ours, ref).max() < 5.0


def test_nystrom_agrees_with_exact_on_clustered_graph():
    x, lab = clustered(n=3000, d=96, k=6, noise=0.6)
    e = analyses.ncut(x, n_eig=6)
    for search in (None, 32):
        ny = analyses.nystrom_ncut(x, n_eig=6, n_sample=400, knn=10, search_dim=search, seed=1)
        assert ny.sampled.values.sum() == 400
        assert angles(e.values, ny.values).max() < 10.0
        pred = KMeans(6, n_init=10, random_state=0).fit_predict(ny.values / np.linalg.norm(ny.values, axis=0))
        assert adjusted_rand_score(lab, pred) == 1.0
    ny2 = analyses.nystrom_ncut(x, n_eig=6, n_sample=400, seed=1, orthogonalize=True)
    assert np.allclose(ny2.values.T @ ny2.values, np.eye(6), atol=1e-4)


def test_nystrom_on_noise_does_not_fake_clusters_and_is_seeded():
    x = np.random.default_rng(3).standard_normal((1500, 32)).astype(np.float32)
    a = analyses.nystrom_ncut(x, n_eig=4, n_sample=300, seed=5)
    b = analyses.nystrom_ncut(x, n_eig=4, n_sample=300, seed=5)
    assert np.allclose(a.values, b.values, atol=1e-5)  # same sample; BLAS threads round differently
    assert a.eigenvalue.values[1] < 0.2  # no planted structure: the non-trivial eigenvalues stay small


def test_streamed_sources_give_the_same_answer_and_node_coords():
    x, _ = clustered(n=2 * 30 * 10, d=24)
    da = {f"s{i}": xr.DataArray(x[i * 300:(i + 1) * 300].reshape(30, 10, 24), dims=("stimulus", "token", "unit"),
                                coords={"token_row": ("token", np.arange(10) // 5), "token_col": ("token", np.arange(10) % 5)})
          for i in range(2)}
    ref = analyses.nystrom_ncut(x, n_eig=4, n_sample=200, seed=0)
    ny = analyses.nystrom_ncut(da, n_eig=4, n_sample=200, seed=0)
    cal = analyses.nystrom_ncut(lambda: (x[i:i + 77] for i in range(0, 600, 77)), n_eig=4, n_sample=200, seed=0)
    assert np.allclose(ref.values, ny.values, atol=1e-5) and np.allclose(ref.values, cal.values, atol=1e-5)
    assert list(ny.site.values[[0, 599]]) == ["s0", "s1"] and ny.token_row.values[9] == 1
    grid = analyses.unstack_nodes(ny)
    assert grid.dims == ("site", "stimulus", "token", "eig") and grid.shape == (2, 30, 10, 4)
    assert np.allclose(grid.sel(site="s1").values.reshape(-1, 4), ny.values[300:])


def test_torch_backend_matches_numpy():
    torch = pytest.importorskip("torch")
    x, _ = clustered(n=1200, d=32)
    a = analyses.nystrom_ncut(x, n_eig=4, n_sample=300, seed=0)
    b = analyses.nystrom_ncut(torch.from_numpy(x), n_eig=4, n_sample=300, seed=0)
    assert b.attrs["backend"].startswith("torch") and angles(a.values, b.values).max() < 1.0


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(AnalysisInputError, match="n_eig"):
        analyses.ncut(np.zeros((10, 3)), n_eig=0)
    with pytest.raises(AnalysisInputError, match="features"):
        analyses.nystrom_ncut(np.zeros((10, 3, 2)))
    with pytest.raises(AnalysisInputError, match="NaN"):
        analyses.ncut(np.full((10, 3), np.nan), n_eig=2)
    with pytest.raises(AnalysisInputError, match="max_nodes"):
        analyses.ncut(np.zeros((30, 3)), n_eig=2, max_nodes=20)


def two_models(seed=0, s=120, t=16, lat=6, d=24):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((s, t, lat)) + rng.standard_normal((s, 1, lat))
    full = np.concatenate([z, 0.3 * rng.standard_normal((s, t, d - lat))], -1)
    r1, r2 = (np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(2))
    x1 = full @ r1 + 0.05 * rng.standard_normal((s, t, d))
    x2 = full @ r2 + 0.05 * rng.standard_normal((s, t, d))
    return z, x1, x2, r1, r2


def test_procrustes_and_cca_recover_planted_rotation():
    _, x1, x2, r1, r2 = two_models()
    al = analyses.procrustes_alignment({"a": x1, "b": x2}, reference="a")
    assert np.linalg.norm(al.maps["b"] - r2.T @ r1) / np.sqrt(24) < 0.05
    assert np.linalg.norm(al.align(x2, "b") - x1) / np.linalg.norm(x1 - x1.mean((0, 1))) < 0.15
    c = analyses.cca_alignment({"a": x1, "b": x2}, dim=6)
    z1, z2 = c.align(x1, "a"), c.align(x2, "b")
    assert np.linalg.norm(z1 - z2) / np.linalg.norm(z1) < 0.1
    # unaligned, the two models disagree
    assert np.linalg.norm(x1 - x2) / np.linalg.norm(x1) > 1.0


def test_brain_alignment_recovers_shared_space():
    z, x1, x2, _, _ = two_models(s=80, t=8)
    rng = np.random.default_rng(1)
    y = z.mean(1) @ rng.standard_normal((6, 30)) + 0.05 * rng.standard_normal((80, 30))
    al = analyses.brain_alignment({"a": x1, "b": x2}, y, dim=6, steps=150, lr=0.03, batch_nodes=64, n_eig=4)
    z1, z2 = al.align(x1, "a"), al.align(x2, "b")
    assert min(al.info["r2"].values()) > 0.9
    assert np.linalg.norm(z1 - z2) / np.linalg.norm(z1 - z1.mean((0, 1))) < 0.25


def scenes(n=12, grid=6, d=32, seed=0, noise=0.3, planted=True):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, grid * 4, grid * 4), dtype=np.int64)
    fg, bg = rng.standard_normal(d), rng.standard_normal(d)
    feats = np.empty((n, grid * grid, d), dtype=np.float32)
    for s in range(n):
        y0, x0 = rng.integers(0, grid - 2, size=2)
        masks[s, y0 * 4:(y0 + 3) * 4, x0 * 4:(x0 + 3) * 4] = 1
        small = masks[s, ::4, ::4].ravel()
        base = np.where(small[:, None] == 1, fg, bg) if planted else 0
        feats[s] = base + noise * rng.standard_normal((grid * grid, d))
    tok = np.arange(grid * grid)
    da = xr.DataArray(feats, dims=("stimulus", "token", "unit"),
                      coords={"token_row": ("token", tok // grid), "token_col": ("token", tok % grid)})
    return da, masks


def test_oracle_segmentation_planted_object_vs_noise():
    da, masks = scenes()
    e = analyses.ncut({"site.a": da}, n_eig=6)
    good = analyses.oracle_miou(e, masks, n_eig=6, binary=True)
    assert good.dims == ("site",) and float(good[0]) > 0.95
    noise, _ = scenes(planted=False)
    bad = analyses.oracle_segmentation(analyses.ncut({"site.a": noise}, n_eig=6), masks, n_eig=6, binary=True)
    assert float(bad.miou[0]) < 0.65 and bad.miou_by_threshold.shape == (1, 10)
    assert analyses.downsample_masks(masks, (6, 6)).shape == (12, 6, 6)


def test_colors_and_figures():
    da, masks = scenes()
    e = analyses.ncut({"a.1": da, "a.2": da * 1.1 + 0.2}, n_eig=6)
    col = analyses.ncut_colors(e, method="pca", n_sample=200)
    assert col.dims == ("node", "rgb") and float(col.min()) >= 0 and float(col.max()) <= 1
    col_t = analyses.ncut_colors(e, method="tsne", n_sample=150, perplexity=10)
    assert col_t.shape == col.shape
    fig = analyses.ncut_image_figure(col, stimuli=[0, 1])
    emb = analyses.spectral_embedding(e, 2, method="pca", n_sample=200)
    fig2 = analyses.trajectory_figure(emb, stimulus=0, tokens=[0, 14])
    fig3 = analyses.miou_figure(analyses.oracle_segmentation(e, masks, binary=True))
    assert all(f.__class__.__name__ == "Figure" for f in (fig, fig2, fig3))
