"""Offline saliency models: Itti-Koch-Niebur and spectral residual find planted pop-out targets at any size; the
DeepGaze IIE adapter loads local weights only."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import analyses
from analyses import AnalysisInputError
from analyses.saliency import DeepGazeIIE, gabor_kernel, resize, saliency_model


def popout(n: int, seed: int = 0) -> tuple[np.ndarray, tuple[slice, slice]]:
    """(H, W, 3) image: a 6 x 6 array of green squares on black, one of them red (a colour singleton)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n, 3), np.float32)
    s = max(2, n // 16)
    cells = [(int((i + 1) * n / 7.5), int((j + 1) * n / 7.5)) for i in range(6) for j in range(6)]
    for y, x in cells:
        img[y:y + s, x:x + s] = (0.0, 0.8, 0.0)
    y, x = cells[rng.integers(len(cells))]
    img[y:y + s, x:x + s] = (0.9, 0.0, 0.0)
    return img, (slice(y - s, y + 2 * s), slice(x - s, x + 2 * s))


def peak_in(saliency: np.ndarray, where: tuple[slice, slice]) -> bool:
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    return where[0].start <= y < where[0].stop and where[1].start <= x < where[1].stop


@pytest.mark.parametrize("n", [64, 224, 1000])
def test_itti_koch_peaks_on_popout_target_at_any_size(n):
    img, target = popout(n, seed=n)
    sal = analyses.itti_koch(img)
    assert sal.shape == (n, n) and sal.dtype == np.float32
    assert sal.min() == 0 and sal.max() == pytest.approx(1)
    assert peak_in(sal, target)


def test_itti_koch_layouts_and_batches_agree():
    imgs = np.stack([popout(64, seed=s)[0] for s in range(3)])  # (B, H, W, 3)
    chw = imgs.transpose(0, 3, 1, 2)
    batch = analyses.itti_koch(chw, batch_size=2)
    assert batch.shape == (3, 64, 64)
    np.testing.assert_allclose(analyses.itti_koch(imgs[1]), batch[1], atol=1e-6)
    np.testing.assert_allclose(analyses.itti_koch(chw[1]), batch[1], atol=1e-6)
    np.testing.assert_allclose(analyses.itti_koch((imgs[1] * 255).round().astype(np.uint8)), batch[1], atol=0.02)


def test_itti_koch_is_rgb_not_bgr():
    """A blue singleton among yellow is as salient as a yellow one among blue; swapping R and B (reading the image
    as BGR) changes the colour channels: the map responds to the opponency of the channels we were given."""
    img = np.zeros((128, 128, 3), np.float32)
    img[40:56, 80:96] = (1.0, 0.0, 0.0)
    sal = analyses.itti_koch(img)
    assert peak_in(sal, (slice(32, 64), slice(72, 104)))


def test_spectral_residual_finds_a_lone_object_and_batches():
    rng = np.random.default_rng(0)
    for n in (64, 256, 1000):
        img = np.clip(0.5 + 0.02 * rng.standard_normal((n, n)), 0, 1).astype(np.float32)
        y, x, s = int(0.3 * n), int(0.65 * n), n // 10
        img[y:y + s, x:x + s] = 0.9
        sal = analyses.spectral_residual(img)
        assert sal.shape == (n, n) and sal.max() == pytest.approx(1)
        assert peak_in(sal, (slice(y - s // 2, y + 3 * s // 2), slice(x - s // 2, x + 3 * s // 2)))
    batch = np.stack([popout(80, s)[0] for s in range(2)]).transpose(0, 3, 1, 2)
    out = analyses.spectral_residual(batch)
    np.testing.assert_allclose(out[1], analyses.spectral_residual(batch[1]), atol=1e-6)


def test_gabor_kernels_are_the_studys():
    """The study's tabulated 9 x 9 kernels (pySaliencyMap): a few of their published entries."""
    assert gabor_kernel(0)[4, 4] == pytest.approx(1)
    assert gabor_kernel(0)[4, 2] == pytest.approx(-0.174308068, abs=1e-6)
    assert gabor_kernel(0)[3, 4] == pytest.approx(0.678352526, abs=1e-6)
    assert gabor_kernel(45)[3, 3] == pytest.approx(0.460162150, abs=1e-6)
    assert gabor_kernel(45)[3, 5] == pytest.approx(-0.302454279, abs=1e-6)
    np.testing.assert_allclose(gabor_kernel(90), gabor_kernel(0).T, atol=1e-12)


def test_resize_preserves_constants_and_means():
    x = np.random.default_rng(0).random((2, 30, 40))
    assert np.allclose(resize(np.ones((1, 7, 9)), (50, 3)), 1)
    assert resize(x, (10, 20)).mean() == pytest.approx(x.mean())  # area averaging


def test_bad_images_are_refused_with_the_shape():
    with pytest.raises(AnalysisInputError, match="3 colour channels"):
        analyses.itti_koch(np.zeros((32, 32, 4)))
    with pytest.raises(AnalysisInputError, match="NaN"):
        analyses.spectral_residual(np.full((8, 8, 3), np.nan))
    with pytest.raises(AnalysisInputError, match="unknown saliency model"):
        saliency_model("itty_koch")


def test_deepgaze_adapter_needs_a_local_file(tmp_path):
    with pytest.raises(AnalysisInputError, match="deepgaze2e.pth"):
        DeepGazeIIE(tmp_path / "missing.pth")
    with pytest.raises(AnalysisInputError, match="needs weights"):
        saliency_model("deepgaze_iie")


def test_deepgaze_adapter_never_downloads_and_loads_strictly(tmp_path, monkeypatch):
    """A stand-in `deepgaze_pytorch` whose constructor downloads a backbone (as the real one does): the adapter
    blocks the download, then fills every weight from the user's file."""
    import torch
    from torch import nn

    class FakeIIE(nn.Module):
        def __init__(self, pretrained: bool = True):
            super().__init__()
            self.backbone = nn.Conv2d(3, 1, 1)
            self.backbone.load_state_dict(torch.hub.load_state_dict_from_url("https://example.invalid/backbone.pth"))

        def forward(self, x, centerbias):
            return torch.log_softmax((self.backbone(x / 255)[:, 0] + centerbias).flatten(1), 1).view_as(centerbias)

    monkeypatch.setitem(sys.modules, "deepgaze_pytorch", types.SimpleNamespace(DeepGazeIIE=FakeIIE))
    trained = FakeIIE.__new__(FakeIIE)
    nn.Module.__init__(trained)
    trained.backbone = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        trained.backbone.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        trained.backbone.bias.zero_()
    path = tmp_path / "deepgaze2e.pth"
    torch.save(trained.state_dict(), path)
    model = DeepGazeIIE(path, device="cpu")
    assert torch.hub.load_state_dict_from_url.__name__ == "load_state_dict_from_url"  # restored
    img = np.zeros((3, 20, 20), np.float32)
    img[0, 5, 7] = 1.0
    sal = model(img)
    assert sal.shape == (20, 20) and np.unravel_index(sal.argmax(), sal.shape) == (5, 7)
    torch.save({"other": torch.zeros(1)}, path)
    with pytest.raises(AnalysisInputError, match="not a DeepGaze IIE weights file"):
        DeepGazeIIE(path, device="cpu")
