"""Planted-truth tests of analyses.spectral / alignment / segmentation (fast: small graphs)."""
import numpy as np
import pytest
import xarray as xr
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import analyses
from analyses import AnalysisInputError


@pytest.fixture(autouse=True)
def one_thread():
    """These graphs are tiny: BLAS / OpenMP / torch threads only contend (20x slower on a shared 2-core box)."""
    from threadpoolctl import threadpool_limits
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


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
        assert angles(e.values, ny.values).max() < 7.0  # measured 5.7 deg with 13% of the nodes sampled
        pred = KMeans(6, n_init=10, random_state=0).fit_predict(ny.values / np.linalg.norm(ny.values, axis=0))
        assert adjusted_rand_score(lab, pred) == 1.0
    fast = analyses.nystrom_ncut(x, n_eig=6, n_sample=400, anchors=100, seed=1)  # propagate from 100 of them
    assert fast.attrs["anchors"] == 100 and angles(e.values, fast.values).max() < 8.0  # measured 6.2 deg
    ny2 = analyses.nystrom_ncut(x, n_eig=6, n_sample=400, seed=1, orthogonalize=True)
    assert np.allclose(ny2.values.T @ ny2.values, np.eye(6), atol=1e-4)


def test_nystrom_on_noise_does_not_fake_clusters_and_is_seeded():
    x = np.random.default_rng(3).standard_normal((1500, 32)).astype(np.float32)
    x0 = x.copy()
    a = analyses.nystrom_ncut(x, n_eig=4, n_sample=300, seed=5)
    assert np.array_equal(x, x0)  # the caller's features are left alone
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
    """Stimuli with one 3x3-patch object each (label 1 or 2 alternately, 4 px per patch); planted features:
    figure tokens near one vector per label, ground tokens near another."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, grid * 4, grid * 4), dtype=np.int64)
    vec = rng.standard_normal((3, d))
    feats = np.empty((n, grid * grid, d), dtype=np.float32)
    for s in range(n):
        y0, x0 = rng.integers(0, grid - 2, size=2)
        masks[s, y0 * 4:(y0 + 3) * 4, x0 * 4:(x0 + 3) * 4] = 1 + s % 2
        small = masks[s, ::4, ::4].ravel()
        base = vec[small] if planted else 0
        feats[s] = base + noise * rng.standard_normal((grid * grid, d))
    tok = np.arange(grid * grid)
    da = xr.DataArray(feats, dims=("stimulus", "token", "unit"),
                      coords={"stimulus": np.arange(n), "token": tok, "token_row": ("token", tok // grid),
                              "token_col": ("token", tok % grid)})
    return da, masks


def test_oracle_segmentation_planted_objects_vs_noise():
    da, masks = scenes()
    e = analyses.ncut({"site.a": da}, n_eig=6)
    fg = analyses.oracle_segmentation(e, masks, n_eig=6, binary=True)
    assert fg.miou.dims == ("site",) and float(fg.miou[0]) > 0.95 and list(fg.label.values) == ["background", "figure"]
    cat = analyses.oracle_segmentation(e, masks, n_eig=6, label_names=["bg", "one", "two"])
    assert float(cat.miou[0]) > 0.95 and list(cat.label.values) == ["bg", "one", "two"]
    noise, _ = scenes(planted=False)
    bad = analyses.oracle_segmentation(analyses.ncut({"site.a": noise}, n_eig=6), masks, n_eig=6, binary=True)
    assert float(bad.miou[0]) < 0.65 and bad.miou_by_threshold.shape == (1, 10)
    # the same from the unstacked layout, and from precomputed patch counts
    grid = analyses.unstack_nodes(e)
    counts = xr.DataArray(analyses.patch_label_counts(masks, (6, 6)),
                          dims=("stimulus", "token_row", "token_col", "label"), coords={"stimulus": np.arange(12)})
    again = analyses.oracle_segmentation(grid, counts, n_eig=6, binary=True)
    assert np.allclose(again.miou.values, fg.miou.values)


def test_oracle_counts_pixels_not_patches():
    """IoU is counted in pixels: a token whose patch is half object adds its object pixels to the
    intersection and all its pixels to the prediction (hand-computed case)."""
    v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)  # 2x2 grid, one stimulus
    e = xr.DataArray(v, dims=("node", "eig"), coords={"stimulus": ("node", [0] * 4),
                                                      "token_row": ("node", [0, 0, 1, 1]),
                                                      "token_col": ("node", [0, 1, 0, 1])})
    mask = np.zeros((1, 4, 4), np.int64)
    mask[0, 2:, :] = 1      # bottom patches: object
    mask[0, 1, :2] = 1      # top-left patch: half object
    res = analyses.oracle_segmentation(e, mask, n_eig=2, thresholds=[0.0])
    # centres: background = mean over 6 bg pixels = (1, 0); object = (2 * [1, 0] + 8 * [0, 1]) / 10
    # predictions: top tokens -> background (cos 1 > 0.24), bottom tokens -> object
    # background IoU = 6 / (8 + 6 - 6) = 0.75; object IoU = 8 / (8 + 10 - 8) = 0.8
    assert np.allclose(res.iou.values[0], [0.75, 0.8]) and np.isclose(float(res.miou[0]), 0.775)


def test_colors_and_figures():
    da, masks = scenes()
    e = analyses.unstack_nodes(analyses.ncut({"a.1": da, "a.2": da * 1.1 + 0.2}, n_eig=6))
    col = analyses.ncut_colors(e, method="pca", n_sample=200)
    assert col.dims == ("site", "stimulus", "token", "rgb") and float(col.min()) >= 0 and float(col.max()) <= 1
    assert (np.quantile(col.values.reshape(-1, 3), 0.95, axis=0) > 0.99).all()  # quantile-scaled into the cube
    col_t = analyses.ncut_colors(e.stack(node=("site", "stimulus", "token")).transpose("node", "eig"), method="tsne",
                                 n_sample=100, perplexity=10)
    assert col_t.dims == ("node", "rgb") and col_t.shape == (col.size // 3, 3)
    images = np.ones((2, 3, 24, 24), np.float32)
    fig = analyses.ncut_image_figure(col, stimuli=[0, 1], images=images)
    emb = analyses.spectral_embedding(e, 2, method="pca", n_sample=200)
    fig2 = analyses.trajectory_figure(emb, stimulus=0, tokens=[0, 14], groups=["ground", "figure"])
    res = analyses.oracle_segmentation(e, masks, binary=True)
    fig3 = analyses.miou_figure({"x": res, "y": res})
    assert all(f.__class__.__name__ == "Figure" for f in (fig, fig2, fig3))


def test_matches_ncut_pytorch_reference():
    """Against the authors' ncut-pytorch 1.3.16 (tests/fixtures/ncut_pytorch/make_fixtures.py): the exact cut,
    the subgraph eigenproblem given the same sample, K = 1 propagation exactly, K = 10 closely (their 2024
    weights are the cosine similarities, ours the affinities exp(-(1 - cos) / t) as in their later versions),
    and the colour's quantile scaling."""
    from pathlib import Path
    r = np.load(Path(__file__).parent / "fixtures" / "ncut_pytorch" / "reference.npz")
    e = analyses.ncut(r["x"], n_eig=6)
    assert np.allclose(e.eigenvalue.values, r["exact_val"], atol=1e-6)
    assert np.abs(e.values - r["exact_vec"]).max() < 1e-4  # same vectors, same signs
    for knn, key, tol in ((1, "knn1", 1e-4), (10, "knn10", 2e-3)):
        ny = analyses.nystrom_ncut(r["x"], n_eig=6, sample=r["sample"], knn=knn, search_dim=None)
        assert np.allclose(ny.eigenvalue.values, r["sub_val"], atol=1e-5)
        assert np.abs(ny.values - r[key]).max() < tol
    from analyses.segmentation import rgb_cube
    assert np.allclose(rgb_cube(r["q_in"], 0.95), r["q_out"], atol=1e-6)


def test_topk_and_given_sample():
    from analyses.spectral import _topk_numpy
    rng = np.random.default_rng(0)
    s = rng.standard_normal((50, 3000)).astype(np.float32)
    s[0] = 0.5  # ties everywhere
    for k in (1, 7, 40):
        vals, idx = _topk_numpy(s, k)
        ref = -np.sort(-s, axis=1)[:, :k]
        assert np.allclose(np.sort(vals, 1)[:, ::-1], ref) and np.allclose(np.take_along_axis(s, idx, 1), vals)
        assert all(len(set(row)) == k for row in idx)
    x, _ = clustered(n=500, d=16)
    with pytest.raises(AnalysisInputError, match="sample"):
        analyses.nystrom_ncut(x, n_eig=3, sample=[1, 1, 2, 3, 4])
    ny = analyses.nystrom_ncut(x, n_eig=3, sample=np.arange(0, 500, 5))
    assert ny.sampled.values.sum() == 100 and ny.attrs["sample"] == "given"
