"""Receptive fields: gradient RFs against captum and finite differences, PCA / kernel PCA against scikit-learn,
planted truth (the RF phantom and a conv net with a known kernel) for gradient RFs and reverse correlation,
the RF-shift question, noise stimuli, preferred stimuli and saliency channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import analyses
import stimuli
from analyses import AnalysisInputError
from rig.responses import site_response
from rig.subjects import load_subject

captum = pytest.importorskip("captum")

CANVAS, GRID = 112, 16
BIN = CANVAS / GRID  # px: the bin of RF maps made from the noise stimuli


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, padding=2), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 10 * 10, 5)).double().eval()


@pytest.fixture(scope="module")
def phantom():
    return load_subject("rf_phantom", seed=0, device="cpu",
                        options={"canvas": CANVAS, "n_units": 9, "margin": 16, "size": [5, 10]})


# ----------------------------------------------------------------------------------------------------------
# gradient RFs: references


def test_gradient_rfs_equal_captum():
    from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency

    net = tiny_net()
    x = torch.rand(5, 3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    units = [4, 0, 2]

    def captum_maps(method, **kw):
        return np.stack([method.attribute(x, target=u, **kw).detach().numpy() for u in units])

    cases = [("gradient", {}, captum_maps(Saliency(net), abs=False)),
             ("gradient", {"abs": True}, captum_maps(Saliency(net))),  # captum's Saliency: abs by default
             ("gradient_x_input", {}, captum_maps(InputXGradient(net))),
             ("integrated_gradients", {"steps": 24, "baseline": 0.3},
              captum_maps(IntegratedGradients(net), baselines=0.3, n_steps=24))]
    for method, kw, ref in cases:
        ours = analyses.gradient_rfs(net, x, units=units, method=method, batch_size=2, unit_chunk=2, **kw)
        assert ours.dims == ("unit", "stimulus", "channel", "y", "x")
        assert list(ours["unit"].values) == units
        np.testing.assert_allclose(ours.values, ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max(), err_msg=method)
    # SmoothGrad: captum draws its own noise, so agree in expectation (many samples) ...
    torch.manual_seed(0)
    ref = captum_maps(NoiseTunnel(Saliency(net)), nt_type="smoothgrad", nt_samples=300, stdevs=0.2, abs=False)
    ours = analyses.gradient_rfs(net, x, units=units, method="smoothgrad", samples=300, noise=0.2, seed=0,
                                 batch_size=1500).values
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.995
    # ... and exactly with the gradient averaged over our own seeded noise
    g = torch.Generator().manual_seed(3)
    noisy = [x + 0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(4)]
    manual = np.mean([analyses.gradient_rfs(net, n, units=units).values for n in noisy], axis=0)
    ours = analyses.gradient_rfs(net, x, units=units, method="smoothgrad", samples=4, noise=0.2, seed=3,
                                 batch_size=5).values
    np.testing.assert_allclose(ours, manual, rtol=1e-5, atol=1e-9)


def test_gradient_rfs_equal_finite_differences():
    net = tiny_net()
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    g = analyses.gradient_rfs(net, x, units=[1, 3]).values
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(12):
        s, c, i, j = rng.integers(2), rng.integers(3), rng.integers(10), rng.integers(10)
        up, down = x.clone(), x.clone()
        up[s, c, i, j] += eps
        down[s, c, i, j] -= eps
        with torch.no_grad():
            fd = (net(up)[s] - net(down)[s]).numpy() / (2 * eps)
        np.testing.assert_allclose(g[:, s, c, i, j], fd[[1, 3]], rtol=1e-4, atol=1e-9)


def test_gradient_rfs_inputs_and_errors():
    net = tiny_net().float()
    x = np.random.default_rng(0).random((3, 3, 10, 10)).astype(np.float32)
    a = analyses.gradient_rfs(net, x)  # all units, numpy
    assert a.shape == (5, 3, 3, 10, 10) and list(a["channel"].values) == ["r", "g", "b"]
    b = analyses.gradient_rfs(net, list(x), units=np.arange(5), batch_size=1, unit_chunk=2,  # a list of images,
                              vectorize=True)                                                # one vmapped backward
    da = xr.DataArray(x, dims=("stimulus", "channel", "y", "x"), coords={"stimulus": [7, 8, 9]})
    c = analyses.gradient_rfs(net, da)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(a.values, c.values)
    assert list(c["stimulus"].values) == [7, 8, 9]
    assert analyses.gradient_rfs(net, x[0]).sizes["stimulus"] == 1   # one (C, H, W) image
    with pytest.raises(AnalysisInputError, match="method"):
        analyses.gradient_rfs(net, x, method="deconv")
    with pytest.raises(AnalysisInputError, match="out of range"):
        analyses.gradient_rfs(net, x, units=[5])
    with pytest.raises(AnalysisInputError, match="no gradient"):
        analyses.gradient_rfs(lambda im: net(im).detach(), x)
    with pytest.raises(AnalysisInputError, match=r"\(B, n_units\)"):
        analyses.gradient_rfs(lambda im: net(im)[0], x)


def test_site_response_stops_at_site_and_equals_captum_neuron_gradient():
    from captum.attr import NeuronGradient

    subject = load_subject("factory", factory="rf_factories:known_kernel", device="cpu")
    model = subject.model
    fn = site_response(subject, "conv", units=[0, 1], positions=[[5, 6], [8, 3]])
    assert fn.unit_coords["map_y"].tolist() == [5, 5, 8, 8] and fn.unit_coords["unit"].tolist() == [0, 1, 0, 1]
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = model.after_calls
    ours = analyses.gradient_rfs(fn, x)
    assert model.after_calls == before, "the forward pass must stop at the site"
    assert {"site", "unit", "map_y", "map_x"} <= set(ours.coords)
    ng = NeuronGradient(model, model.conv)
    for k, (u, y, xx) in enumerate(zip(fn.unit_coords["unit"], fn.unit_coords["map_y"], fn.unit_coords["map_x"])):
        ref = ng.attribute(x, neuron_selector=(int(u), int(y), int(xx))).numpy()
        np.testing.assert_allclose(ours.values[k], ref, rtol=1e-4, atol=1e-8)
    with pytest.raises(Exception, match="out of range"):
        site_response(subject, "conv", units=[2])
    with pytest.raises(Exception, match="outside"):
        site_response(subject, "conv", positions=[[40, 0]])


def test_site_response_token_sites():
    """A ViT's CLS unit and patch tokens: columns token-major, coordinates from the site's patch grid."""
    from subject_factories import clip_subject

    subject = clip_subject()
    fn = site_response(subject, "visual.transformer.resblocks.0", units=[3, 7], tokens=[0, 9])
    assert fn.unit_coords["token"].tolist() == [0, 0, 9, 9]
    assert fn.unit_coords["token_row"].tolist() == [-1, -1, 1, 1] and fn.unit_coords["token_col"].tolist()[2] == 1
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rf = analyses.gradient_rfs(fn, x).sum(["stimulus", "channel"])
    # the patch token's gradient is largest in its own 32 px patch (row 1, col 1): block 0 has one attention
    energy = np.abs(rf.values[2]).reshape(7, 32, 7, 32).sum(axis=(1, 3))
    assert np.unravel_index(energy.argmax(), energy.shape) == (1, 1)


# ----------------------------------------------------------------------------------------------------------
# planted truth


def _within_one_bin(found: xr.Dataset, truth: xr.Dataset, units: np.ndarray, bin_px: float) -> None:
    for key in ("centre_x", "centre_y", "size"):
        err = np.abs(np.asarray(found[key]) - truth[key].values[units])
        assert err.max() < bin_px, f"{key}: errors {np.round(err, 2)} px, bin {bin_px} px"


def test_planted_rfs_recovered_by_gradient_rfs(phantom):
    truth = phantom.model.truth()
    images = stimuli.make("shapes", n=4, canvas=CANVAS, diameter=(10, 30), background="gray", seed=0).render()
    rf = analyses.gradient_rfs(site_response(phantom, "units"), images)
    geo = analyses.rf_geometry(rf)
    units = np.arange(9)
    _within_one_bin(geo.mean("stimulus"), truth, units, BIN)
    assert np.abs(geo["centre_x"].values - truth["centre_x"].values[:, None]).max() < 0.5  # exact up to the edges
    np.testing.assert_array_equal(np.sign(geo["on_off"].values[:, 0]), truth["polarity"].values)


@pytest.mark.parametrize("generator", ["sparse_noise", "white_noise"])
def test_planted_rfs_recovered_by_reverse_correlation(phantom, generator):
    truth = phantom.model.truth()
    noise = stimuli.make(generator, n=1500 if generator == "sparse_noise" else 3000, canvas=CANVAS, grid=GRID, seed=1)
    responses = np.concatenate([phantom.forward(torch.from_numpy(im)).numpy() for _, im in noise.batches(500)])
    maps = analyses.reverse_correlation(responses, noise, pool=int(BIN))
    assert maps.dims == ("unit", "channel", "y", "x") and maps.shape == (9, 3, GRID, GRID)
    geo = analyses.rf_geometry(maps, z=3.0)
    _within_one_bin(geo, truth, np.arange(9), BIN)
    np.testing.assert_array_equal(np.sign(geo["on_off"].values), truth["polarity"].values)
    assert np.all(np.abs(geo["on_off"].values) > 0.9)


def test_known_kernel_conv_net_recovered():
    """A conv net with a known Gaussian kernel: each map position's RF sits on its own pixel with the kernel's
    size, by gradient and by reverse correlation; channel 0 is ON, channel 1 OFF."""
    from rf_factories import PAD, SIGMA, STRIDE

    subject = load_subject("factory", factory="rf_factories:known_kernel", device="cpu")
    positions = [[i, j] for i in (3, 7, 12) for j in (2, 9, 13)]
    fn = site_response(subject, "conv", positions=positions)
    expect_x = fn.unit_coords["map_x"] * STRIDE + 0.5
    expect_y = fn.unit_coords["map_y"] * STRIDE + 0.5
    truth = xr.Dataset({"centre_x": ("unit", expect_x), "centre_y": ("unit", expect_y),
                        "size": ("unit", np.full(len(fn), SIGMA))})
    bin_px = 64 / 16
    noise = stimuli.make("sparse_noise", n=1200, canvas=64, grid=16, seed=2)
    with torch.no_grad():
        responses = np.concatenate([fn(torch.from_numpy(im)).numpy() for _, im in noise.batches(400)])
    rc = analyses.rf_geometry(analyses.reverse_correlation(responses, noise, pool=4), z=3.0)
    _within_one_bin(rc, truth, np.arange(len(fn)), bin_px)
    images = np.random.default_rng(0).random((2, 3, 64, 64)).astype(np.float32)
    grad = analyses.rf_geometry(analyses.gradient_rfs(fn, images)).mean("stimulus")
    _within_one_bin(grad, truth, np.arange(len(fn)), bin_px)
    np.testing.assert_allclose(grad["centre_x"].values, expect_x, atol=0.05)
    np.testing.assert_allclose(grad["size"].values, SIGMA, rtol=0.05)
    assert PAD == 7 and (np.sign(rc["on_off"].values) == np.where(fn.unit_coords["unit"] == 0, 1, -1)).all()


def test_rf_shift_towards_saliency_planted():
    """RF-phantom shifters move their RF towards each image's object; the others do not."""
    from rf_factories import contrast_saliency

    subject = load_subject("rf_phantom", seed=1, device="cpu",
                           options={"canvas": CANVAS, "n_units": 6, "n_shifters": 3, "shift": 0.4, "margin": 16})
    images = stimuli.make("shapes", n=16, canvas=CANVAS, diameter=(12, 24), background="gray", seed=3).render()
    geo = analyses.rf_geometry(analyses.gradient_rfs(site_response(subject, "units"), images))
    peaks = analyses.saliency_peaks(contrast_saliency(images), sigma=5.0)
    out = analyses.saliency_shift(geo["centre_x"], geo["centre_y"], peaks["peak_x"], peaks["peak_y"],
                                  n_shuffles=199, seed=0)
    shifters = np.arange(6) < 3
    assert (out["saliency_shift"].values[shifters] > 5).all()
    assert (out["saliency_alignment"].values[shifters] > 0.8).all()
    assert (out["p_value"].values[shifters] <= 0.01).all()
    np.testing.assert_allclose(out["saliency_shift"].values[~shifters], 0, atol=0.1)
    np.testing.assert_allclose(out["rf_shift"].values[~shifters], 0, atol=0.1)


def test_saliency_shift_synthetic():
    rng = np.random.default_rng(0)
    px, py = rng.uniform(0, 100, 50), rng.uniform(0, 100, 50)
    base = np.array([[40.0, 60.0], [50.0, 50.0]])
    cx = base[:, :1] + np.array([[0.3], [-0.3]]) * (px - base[:, :1])   # unit 0 towards, unit 1 away
    cy = base[:, 1:] + np.array([[0.3], [-0.3]]) * (py - base[:, 1:])
    cx[0, 3] = np.nan                                                     # an image without an RF centre
    out = analyses.saliency_shift(cx, cy, px, py, n_shuffles=99)
    s = out["saliency_shift"].values
    assert s[0] > 5 and s[1] < -5 and out["p_value"].values[0] == 0.01 and out["p_value"].values[1] > 0.9
    assert out["saliency_alignment"].values[0] > 0.95  # < 1: the peaks' offsets from the mean centre share a part
    with pytest.raises(AnalysisInputError, match="same stimuli"):
        analyses.saliency_shift(cx, cy, px[:3], py[:3])


# ----------------------------------------------------------------------------------------------------------
# structure: PCA and kernel PCA against scikit-learn


def test_rf_pca_and_projection_agree_with_sklearn():
    from sklearn.decomposition import PCA, KernelPCA

    rng = np.random.default_rng(0)
    rfs = rng.normal(size=(2, 12, 1, 5, 6)) @ np.diag(np.linspace(3, 0.2, 6))    # (unit, stimulus, 1, y, x)
    pca = analyses.rf_pca(rfs, n_components=5)
    for u in range(2):
        x = rfs[u].reshape(12, -1)
        ref = PCA(n_components=5, svd_solver="full").fit(x)
        np.testing.assert_allclose(pca["explained_variance"].values[u], ref.explained_variance_, rtol=1e-6)
        np.testing.assert_allclose(pca["explained_variance_ratio"].values[u], ref.explained_variance_ratio_, rtol=1e-6)
        comps = pca["components"].values[u].reshape(5, -1)
        signs = np.sign((comps * ref.components_).sum(axis=1))
        np.testing.assert_allclose(comps, ref.components_ * signs[:, None], atol=1e-5)
        np.testing.assert_allclose(pca["scores"].values[u], ref.transform(x) * signs, atol=1e-5)
        kpca = KernelPCA(n_components=5, kernel="linear").fit_transform(x)
        np.testing.assert_allclose(np.abs(pca["scores"].values[u]), np.abs(kpca), atol=1e-5)
        # projection P = V^T V of (centred) images onto the first 3 components
        images = rng.normal(size=(4, 1, 5, 6))
        proj = analyses.rf_projection(rfs[u:u + 1], images, n_components=3)
        flat = images.reshape(4, -1) - images.reshape(4, -1).mean(axis=0)
        v = PCA(n_components=3, svd_solver="full").fit(x).components_
        np.testing.assert_allclose(proj["projection"].values[0].reshape(4, -1), flat @ v.T @ v, atol=1e-5)
    # components up to a share of the variance: the fewest reaching it
    by_var = analyses.rf_projection(rfs, rfs[0], variance=0.9)
    cum = np.cumsum(analyses.rf_pca(rfs)["explained_variance_ratio"].values, axis=1)
    assert (by_var["n_components"].values == (cum < 0.9 - 1e-12).sum(axis=1) + 1).all()
    assert (by_var["variance_kept"].values >= 0.9 - 1e-9).all()


def test_rf_pca_on_gradient_rfs_dataarray(phantom):
    images = stimuli.make("shapes", n=6, canvas=CANVAS, background="gray", seed=0).render()
    rf = analyses.gradient_rfs(site_response(phantom, "units", units=[0, 1]), images)
    pca = analyses.rf_pca(rf)
    assert pca["components"].dims == ("unit", "component", "channel", "y", "x")
    assert pca["explained_variance_ratio"].values[:, 0].min() > 0.5  # an LN unit's gRF only changes in gain
    assert "site" in pca.coords and pca["unit"].values.tolist() == [0, 1]
    with pytest.raises(AnalysisInputError, match="at least 2 stimuli"):
        analyses.rf_pca(rf.isel(stimulus=[0]))


# ----------------------------------------------------------------------------------------------------------
# reverse correlation, preferred stimuli


def test_reverse_correlation_inputs_agree_and_recover_a_linear_filter():
    rng = np.random.default_rng(0)
    noise = stimuli.make("white_noise", n=2000, canvas=32, grid=8, seed=0)
    images = noise.render()
    k = rng.normal(size=(2, 3, 8, 8))
    cells = images.reshape(2000, 3, 8, 4, 8, 4).mean(axis=(3, 5))
    responses = np.einsum("schw,uchw->su", cells - 0.5, k / 3)
    a = analyses.reverse_correlation(responses, images, pool=4)
    b = analyses.reverse_correlation(responses, noise, pool=4)
    c = analyses.reverse_correlation(xr.DataArray(responses, dims=("stimulus", "neuron"),
                                                  coords={"neuron": [5, 6]}), noise.batches(64), pool=4)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.values, c.values, rtol=1e-6, atol=1e-7)
    assert c["unit"].values.tolist() == [5, 6] and a["x"].values[0] == 2.0
    # white noise: the map is the linear filter (grey noise: each channel gets a third of the channels' sum)
    found, true = a.values.sum(axis=1), k.sum(axis=1)
    assert np.corrcoef(found.ravel(), true.ravel())[0, 1] > 0.97
    assert np.polyfit(true.ravel(), found.ravel(), 1)[0] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(AnalysisInputError, match="more stimuli than the 10"):
        analyses.reverse_correlation(responses[:10], images)
    with pytest.raises(AnalysisInputError, match="gave 10 stimuli"):
        analyses.reverse_correlation(responses, images[:10])
    with pytest.raises(AnalysisInputError, match="pooled"):
        analyses.reverse_correlation(responses, images, pool=5)


def test_preferred_stimuli():
    r = np.array([[1.0, 5], [3, 4], [2, np.nan], [0, 1]])
    out = analyses.preferred_stimuli(xr.DataArray(r, dims=("stimulus", "unit"), coords={"stimulus": [10, 11, 12, 13]}),
                                     k=2)
    assert out["top_stimulus"].values.tolist() == [[11, 12], [10, 11]]
    assert out["bottom_stimulus"].values.tolist() == [[13, 10], [13, 11]]
    assert out["top_response"].values.tolist() == [[3, 2], [5, 4]]
    with pytest.raises(AnalysisInputError, match="k must be"):
        analyses.preferred_stimuli(r, k=5)


# ----------------------------------------------------------------------------------------------------------
# noise stimuli


def test_noise_generators():
    sparse = stimuli.sparse_noise(n=50, canvas=64, grid=8, seed=3)
    img = sparse.render()
    assert img.shape == (50, 3, 64, 64) and set(np.unique(img)) == {0.0, 0.5, 1.0}
    i = 7
    row, col, pol = (int(sparse.params[k].values[i]) for k in ("square_row", "square_col", "polarity"))
    assert img[i, 0, row * 8 + 3, col * 8 + 3] == 0.5 + pol / 2
    assert ((img[i] != 0.5).sum() == 3 * 64)                       # one 8 x 8 square in 3 channels
    assert sparse.params["x"].values[i] == (col + 0.5) * 8         # its centre is the stimulus position
    np.testing.assert_array_equal(stimuli.sparse_noise(n=50, canvas=64, grid=8, seed=3).render(), img)
    many = stimuli.sparse_noise(n=5, canvas=60, grid=6, squares=4, seed=0).render()
    assert ((many[:, 0] != 0.5).reshape(5, -1).sum(axis=1) == 4 * 100).all()
    white = stimuli.white_noise(n=20, canvas=30, grid=7, seed=1)
    w = white.render()
    assert w.shape == (20, 3, 30, 30) and set(np.unique(w)) == {0.0, 1.0}
    assert (w[:, 0] == w[:, 2]).all()                               # achromatic
    np.testing.assert_array_equal(white.subset([4]).render()[0], w[4])   # a pure function of the parameters
    colour = stimuli.white_noise(n=4, canvas=16, grid=4, color=True, binary=False, contrast=0.5, seed=0).render()
    assert (colour[:, 0] != colour[:, 1]).any() and colour.min() >= 0 and colour.max() <= 1
    for bad, param in (({"grid": 0}, "grid"), ({"contrast": 2.0}, "contrast"), ({"n": 0}, "n")):
        with pytest.raises(stimuli.StimulusError) as e:
            stimuli.white_noise(**bad)
        assert e.value.param == param
    with pytest.raises(stimuli.StimulusError, match="squares"):
        stimuli.sparse_noise(grid=2, squares=5)


# ----------------------------------------------------------------------------------------------------------
# saliency as input channels


def test_saliency_channels():
    from scipy import ndimage

    from rf_factories import contrast_saliency

    images = stimuli.make("shapes", n=3, canvas=48, diameter=(10, 20), background="gray", seed=0).render()
    ch = analyses.saliency_channels(images, contrast_saliency, sigma=5.0)
    assert ch.shape == (3, 3, 48, 48)
    raw = contrast_saliency(images)
    lo = raw.min(axis=(1, 2), keepdims=True)
    sal = (raw - lo) / (raw.max(axis=(1, 2), keepdims=True) - lo)
    np.testing.assert_allclose(ch[:, 0], sal, atol=1e-6)
    smooth = ndimage.gaussian_filter(sal[1].astype(float), 5.0, mode="nearest")
    np.testing.assert_allclose(ch[1, 1], ndimage.sobel(smooth, axis=1, mode="nearest") / 8, atol=1e-6)
    # a ramp's Sobel / 8 is its slope per px (the map is scaled to [0, 1]: 1 / 47 per px over 48 px)
    ramp = np.linspace(0, 1, 48)[None, None, :] * np.ones((1, 3, 48, 1))
    slope = analyses.saliency_channels(ramp, lambda im: im.mean(axis=1), sigma=0)
    np.testing.assert_allclose(slope[0, 1, 1:-1, 1:-1], 1 / 47, rtol=1e-5)
    np.testing.assert_allclose(slope[0, 2], 0, atol=1e-7)
    assert analyses.with_saliency_channels(images, contrast_saliency).shape == (3, 6, 48, 48)
    with pytest.raises(AnalysisInputError, match="unknown saliency model"):
        analyses.saliency_channels(images, "no_such_model")
    np.testing.assert_allclose(analyses.saliency_channels(images, "spectral_residual", channels=("saliency",))[:, 0],
                               analyses.saliency_channels(images, analyses.spectral_residual)[:, 0])


def test_subject_with_saliency_channels_records(tmp_path):
    """[subject.saliency_channels]: a 6-channel network gets RGB + saliency + its gradients, and records."""
    from rig.recorder import open_recording, record

    model = "rf_factories:contrast_saliency"
    subject = load_subject("factory", factory="rf_factories:six_channels", device="cpu",
                           saliency_channels={"model": model, "sigma": 2.0})
    stim = stimuli.make("circles", n=4, canvas=32, diameter=(6, 12), seed=0)
    x = subject.preprocess(torch.from_numpy(stim.render()))
    assert x.shape == (4, 6, 32, 32)
    np.testing.assert_allclose(x[:, 3:].numpy(), analyses.saliency_channels(stim.render(), model, 2.0), atol=1e-6)
    assert subject.describe()["preprocess"]["saliency_channels"]["sigma"] == 2.0
    with open_recording(record(subject, stim, ["conv"], tmp_path / "rec.nc", progress=False)) as rec:
        assert rec["conv"].shape == (4, 4, 32, 32)
