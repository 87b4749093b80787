"""Saliency models that run offline: Itti-Koch-Niebur and spectral residual (numpy/scipy), and an adapter for
DeepGaze IIE that loads a user's local weights file.

Every model takes an image `(H, W, 3)` or `(3, H, W)` (float in [0, 1]; uint8 is divided by 255; a grey
`(H, W)` image is used for all three channels) and returns an `(H, W)` float32 map in [0, 1]; given a batch
`(B, 3, H, W)` it returns `(B, H, W)` (the batched form, processed `batch_size` images at a time so memory stays
bounded). Images are RGB (the pySaliencyMap port the study used reads OpenCV's BGR).

`itti_koch` follows Itti, Koch & Niebur (1998) as the study's code ran it (pySaliencyMap): Gaussian pyramid of
9 levels, centre-surround differences at c in {2, 3, 4}, s = c + {3, 4}; intensity = luma (0.299 R + 0.587 G +
0.114 B); colour opponency RG = (R - G) / max(R, G, B), BY = (B - min(R, G)) / max(R, G, B), negatives set to
0; orientation from 9 x 9 Gabor kernels at 0, 45, 90 and 135 degrees (even, peak 1, envelope s.d. 1.077 px
across and 1.135 px along the bar, wavelength 3.75 px: the port's tabulated kernels); the map normaliser N()
scales a range-normalised map by (1 - mean local maximum)^2; conspicuities weighted intensity 0.3, colour 0.3,
orientation 0.2. Where we differ, and why: (1) images whose short side is under 256 px are enlarged to 256 px
first, so that all 9 levels exist (the port fails below about 272 px: its local-maximum windows are a fixed 16
px, and none fits a level-4 map of a small image); (2) local maxima are taken over windows of a quarter of each
map's short side (4 per side at every level and image size, rather than 16 px); (3) the port's final bilateral
filter (7 px, sigma colour 3 on a [0, 1] map, sigma space 1.55) is, at that colour sigma, a Gaussian blur of
s.d. 1.55 px, which is what we apply.

`spectral_residual` is Hou & Zhang (2007) as in their reference code: the grey image scaled to 64 px wide
(area average), log amplitude spectrum minus its 3 x 3 local mean (edges replicated), back-transformed with the
original phase, squared, blurred with a Gaussian of s.d. 2.5 px (at 64 px), scaled to [0, 1], and resized to
the input size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from .ratemaps import AnalysisInputError

#: conspicuity weights of the study's Itti-Koch-Niebur model (pySaliencyMap)
WEIGHTS = {"intensity": 0.3, "color": 0.3, "orientation": 0.2}
ORIENTATIONS = (0, 45, 90, 135)
CENTRES, DELTAS = (2, 3, 4), (3, 4)
MIN_SIDE = 256  # 2 ** 8: the smallest short side with all 9 pyramid levels
_PYR = np.array([1, 4, 6, 4, 1], np.float64) / 16  # the 5-tap binomial kernel of a Gaussian pyramid


# ----------------------------------------------------------------------------------------------------------
# inputs


def as_images(image: Any, what: str = "image") -> tuple[np.ndarray, bool]:
    """`(images (B, 3, H, W) float32 in [0, 1], batched)` from an image `(H, W, 3)`, `(3, H, W)`, `(H, W)`, or a
    batch `(B, 3, H, W)` / `(B, H, W, 3)` (numpy, torch, PIL or nested lists)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    elif arr.dtype.kind not in "fiub":
        raise AnalysisInputError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    batched = arr.ndim == 4
    if arr.ndim == 2:
        arr = np.repeat(arr[None], 3, axis=0)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise AnalysisInputError(f"{what} must be (H, W, 3), (3, H, W), (H, W) or a batch (B, 3, H, W); got shape "
                                 f"{np.shape(image)}")
    if arr.shape[1] != 3 and arr.shape[-1] == 3:
        arr = arr.transpose(0, 3, 1, 2)
    if arr.shape[1] != 3:
        raise AnalysisInputError(f"{what} must have 3 colour channels (first or last axis); got shape {np.shape(image)}")
    if arr.shape[2] < 2 or arr.shape[3] < 2:
        raise AnalysisInputError(f"{what} must be at least 2 x 2 pixels; got shape {np.shape(image)}")
    if not np.isfinite(arr).all():
        raise AnalysisInputError(f"{what} contains NaN or infinite values")
    return arr, batched


def _per_batch(fn: Callable[[np.ndarray], np.ndarray], image: Any, batch_size: int) -> np.ndarray:
    images, batched = as_images(image)
    if int(batch_size) != batch_size or batch_size < 1:
        raise AnalysisInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # small matrix products: threads only add overhead (and spin
        out = np.concatenate([fn(images[i:i + batch_size])  # when the machine is busy)
                              for i in range(0, len(images), int(batch_size))])
    return out if batched else out[0]


# ----------------------------------------------------------------------------------------------------------
# resampling (linear maps applied as matrices: exact output sizes, batched over leading axes)


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`(n_out, n_in)` weights resampling a 1-D signal of `n_in` samples to `n_out`: linear interpolation between
    pixel centres (edges clamped, as OpenCV's INTER_LINEAR) when enlarging, area averaging when shrinking."""
    if n_out == n_in:
        return np.eye(n_in)
    if n_out > n_in:
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        w = pos - lo
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.arange(n_out), lo), 1 - w)
        np.add.at(m, (np.arange(n_out), hi), w)
        return m
    edges = np.arange(n_out + 1) * n_in / n_out  # output pixel k covers [edges[k], edges[k+1]) of the input
    left, right = np.arange(n_in), np.arange(n_in) + 1
    overlap = np.clip(np.minimum(edges[1:, None], right) - np.maximum(edges[:-1, None], left), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample the last two axes of `maps` to `size` `(H, W)` (see `resize_matrix`)."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    rows = resize_matrix(h, size[0]).astype(maps.dtype)
    cols = resize_matrix(w, size[1]).astype(maps.dtype)
    lead = maps.shape[:-2]
    x = maps.reshape(-1, w) @ cols.T                                     # (N * h, W): one matrix product
    x = x.reshape(-1, h, size[1]).transpose(1, 0, 2).reshape(h, -1)      # (h, N * W)
    x = (rows @ x).reshape(size[0], -1, size[1]).transpose(1, 0, 2)      # (N, H, W)
    return np.ascontiguousarray(x).reshape(*lead, *size)


# ----------------------------------------------------------------------------------------------------------
# Itti-Koch-Niebur


def gabor_kernel(theta_deg: float, size: int = 9, sigma_across: float = 1.076815, sigma_along: float = 1.135063,
                 wavelength: float = 3.75) -> np.ndarray:
    """An even (cosine) Gabor kernel `(size, size)` with peak 1, its bars at `theta_deg` from vertical (image
    axes: x right, y down; 45 degrees = bars from top-left to bottom-right). Defaults: the study's kernels."""
    r = np.arange(size) - (size - 1) / 2
    y, x = np.meshgrid(r, r, indexing="ij")
    t = np.deg2rad(theta_deg)
    across = x * np.cos(t) - y * np.sin(t)
    along = x * np.sin(t) + y * np.cos(t)
    return np.exp(-across ** 2 / (2 * sigma_across ** 2) - along ** 2 / (2 * sigma_along ** 2)) \
        * np.cos(2 * np.pi * across / wavelength)


def _pyramid(x: np.ndarray, levels: int = 9) -> list[np.ndarray]:
    """Gaussian pyramid of `(B, H, W)` maps: blur with the binomial kernel (mirrored edges), keep every 2nd pixel."""
    out = [x]
    for _ in range(1, levels):
        x = ndimage.correlate1d(ndimage.correlate1d(x, _PYR, axis=-1, mode="mirror"), _PYR, axis=-2, mode="mirror")
        x = x[:, ::2, ::2]
        out.append(x)
    return out


def _centre_surround(pyr: list[np.ndarray]) -> list[np.ndarray]:
    """|F(c) - F(s) resized to F(c)| for c in {2, 3, 4}, s = c + {3, 4}: six maps."""
    return [np.abs(pyr[c] - resize(pyr[c + d], pyr[c].shape[-2:])) for c in CENTRES for d in DELTAS]


def _range_normalise(x: np.ndarray) -> np.ndarray:
    """Each `(H, W)` map of a batch scaled to [0, 1] (a constant map becomes 0)."""
    lo = x.min(axis=(-2, -1), keepdims=True)
    span = x.max(axis=(-2, -1), keepdims=True) - lo
    return (x - lo) / np.where(span > 0, span, 1)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Itti's N(): range-normalise, then scale by (1 - mean of the local maxima)^2, so a map with one strong
    peak keeps it and a map with many comparable peaks is suppressed. Windows: a quarter of the short side."""
    x = _range_normalise(x)
    b, h, w = x.shape
    step = max(1, int(np.ceil(min(h, w) / 4)))
    ph, pw = -h % step, -w % step
    padded = np.pad(x, ((0, 0), (0, ph), (0, pw)), constant_values=-np.inf) if ph or pw else x
    local = padded.reshape(b, (h + ph) // step, step, (w + pw) // step, step).max(axis=(2, 4))
    mean_max = local.mean(axis=(1, 2))
    return x * ((1 - mean_max) ** 2)[:, None, None]


def _conspicuity(feature_maps: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The sum of the normalised feature maps at `size` (maps of one level are summed before resizing: the same
    thing, as resizing is linear)."""
    by_shape: dict[tuple[int, ...], np.ndarray] = {}
    for m in feature_maps:
        n = _normalise(m)
        by_shape[m.shape] = by_shape[m.shape] + n if m.shape in by_shape else n
    return sum(resize(m, size) for m in by_shape.values())


def _itti_koch_batch(images: np.ndarray) -> np.ndarray:
    b, _, h, w = images.shape
    scale = max(1.0, MIN_SIDE / min(h, w))
    work = (int(round(h * scale)), int(round(w * scale)))
    images = resize(images, work)
    r, g, bl = images[:, 0], images[:, 1], images[:, 2]
    intensity = 0.299 * r + 0.587 * g + 0.114 * bl
    top = np.maximum(np.maximum(r, g), bl)
    top = np.where(top <= 0, np.float32(1e-4), top)
    rg = np.clip((r - g) / top, 0, None)
    by = np.clip((bl - np.minimum(r, g)) / top, 0, None)

    i_pyr = _pyramid(intensity)
    cm_i = _conspicuity(_centre_surround(i_pyr), work)
    cm_c = _conspicuity(_centre_surround(_pyramid(rg)), work) + _conspicuity(_centre_surround(_pyramid(by)), work)
    cm_o = np.zeros_like(cm_i)
    for theta in ORIENTATIONS:
        kernel = gabor_kernel(theta)[None]
        filtered = [None, None] + [ndimage.correlate(level, kernel, mode="mirror") for level in i_pyr[2:]]
        cm_o += _normalise(_conspicuity(_centre_surround(filtered), work))
    total = WEIGHTS["intensity"] * cm_i + WEIGHTS["color"] * cm_c + WEIGHTS["orientation"] * cm_o
    total = ndimage.gaussian_filter(_range_normalise(total), sigma=(0, 1.55, 1.55), mode="mirror")
    return _range_normalise(resize(total, (h, w))).astype(np.float32)


def itti_koch(image: Any, batch_size: int = 16) -> np.ndarray:
    """Itti-Koch-Niebur saliency of an image `(H, W, 3)` / `(3, H, W)` in [0, 1] -> `(H, W)` float32 in [0, 1];
    a batch `(B, 3, H, W)` -> `(B, H, W)`. Any size (small images are enlarged to 256 px internally, the map is
    returned at the input's size). See the module docstring for the model and where it departs from the port."""
    return _per_batch(_itti_koch_batch, image, batch_size)


# ----------------------------------------------------------------------------------------------------------
# spectral residual


def _spectral_residual_batch(images: np.ndarray, width: int = 64) -> np.ndarray:
    b, _, h, w = images.shape
    grey = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    small = resize(grey.astype(np.float64), (max(1, int(round(h * width / w))), width))
    spectrum = np.fft.fft2(small)
    log_amp = np.log(np.abs(spectrum) + 1e-12)
    residual = log_amp - ndimage.uniform_filter(log_amp, size=(1, 3, 3), mode="nearest")
    sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    sal = ndimage.gaussian_filter(sal, sigma=(0, 2.5, 2.5), truncate=2.0, mode="constant")
    return _range_normalise(resize(_range_normalise(sal), (h, w))).astype(np.float32)


def spectral_residual(image: Any, batch_size: int = 64) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) of an image `(H, W, 3)` / `(3, H, W)` in [0, 1] -> `(H, W)`
    float32 in [0, 1]; a batch `(B, 3, H, W)` -> `(B, H, W)`."""
    return _per_batch(_spectral_residual_batch, image, batch_size)


# ----------------------------------------------------------------------------------------------------------
# DeepGaze IIE (a trained model; weights from the user's disk only)


class DeepGazeIIE:
    """DeepGaze IIE (Linardos, Kümmerer, Press & Bethge 2021) as a saliency model with the same call as
    `itti_koch`: `DeepGazeIIE(weights="deepgaze2e.pth")(images)` -> fixation density maps scaled to [0, 1].

    Needs the `deepgaze_pytorch` package (`pip install git+https://github.com/matthias-k/DeepGaze`) and its
    released weights file `deepgaze2e.pth` on disk (download it once on a networked machine). Nothing is
    downloaded: the model and its four backbones are built with every download blocked and then filled, strictly,
    from `weights` (which holds the backbones' weights too). `centerbias`: a log-density `(h, w)` array or `.npy`
    file (e.g. the MIT1003 centre bias of the DeepGaze repository), resized to each image; default uniform.
    Images are scaled to 0-255 as DeepGaze expects. `device`: "cpu", "cuda", ... (default: CUDA when present).
    """

    def __init__(self, weights: str | Path, centerbias: Any = None, device: str | None = None):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise AnalysisInputError(
                f"DeepGaze IIE weights file {path} not found; download deepgaze2e.pth from the DeepGaze release page "
                "(github.com/matthias-k/DeepGaze, release v1.0.0) on a networked machine and pass its path as weights")
        try:
            import deepgaze_pytorch
        except ImportError:
            raise AnalysisInputError("DeepGaze IIE needs the deepgaze_pytorch package: pip install "
                                     "git+https://github.com/matthias-k/DeepGaze (then pass weights=PATH)") from None
        import torch

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with _no_downloads():
            model = deepgaze_pytorch.DeepGazeIIE(pretrained=False)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except Exception as e:  # noqa: BLE001  (any unreadable or mismatched file)
            raise AnalysisInputError(f"{path} is not a DeepGaze IIE weights file ({type(e).__name__}: "
                                     f"{str(e).splitlines()[0][:200]})") from None
        self.model = model.to(self.device).eval()
        if isinstance(centerbias, (str, Path)):
            centerbias = np.load(centerbias)
        self.centerbias = None if centerbias is None else np.asarray(centerbias, np.float64)

    def __call__(self, image: Any, batch_size: int = 4) -> np.ndarray:
        return _per_batch(self._batch, image, batch_size)

    def _batch(self, images: np.ndarray) -> np.ndarray:
        import torch

        b, _, h, w = images.shape
        if self.centerbias is None:
            bias = np.zeros((h, w))
        else:
            bias = np.log(np.clip(resize(np.exp(self.centerbias), (h, w)), 1e-30, None))
        bias = bias - np.log(np.exp(bias - bias.max()).sum()) - bias.max()  # a log density summing to 1
        with torch.no_grad():
            x = torch.from_numpy(images * 255).to(self.device)
            cb = torch.from_numpy(np.repeat(bias[None], b, axis=0)).float().to(self.device)
            log_density = self.model(x, cb).detach().cpu().numpy().reshape(b, h, w)
        return _range_normalise(np.exp(log_density)).astype(np.float32)


class _no_downloads:
    """While active, any torch hub / model-zoo download, and any state-dict loading the model's constructors do
    with it, is skipped: the caller fills every weight from the user's file afterwards (strictly)."""

    def __enter__(self) -> "_no_downloads":
        import torch
        import torch.hub
        import torch.utils.model_zoo

        self._saved = (torch.hub.load_state_dict_from_url, torch.utils.model_zoo.load_url,
                       torch.nn.Module.load_state_dict)

        def refuse(*args: Any, **kwargs: Any) -> dict:
            return {}

        def skip(module: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            return None

        torch.hub.load_state_dict_from_url = refuse
        torch.utils.model_zoo.load_url = refuse
        torch.nn.Module.load_state_dict = skip
        return self

    def __exit__(self, *exc: object) -> None:
        import torch
        import torch.hub
        import torch.utils.model_zoo

        torch.hub.load_state_dict_from_url, torch.utils.model_zoo.load_url, torch.nn.Module.load_state_dict = self._saved


#: saliency models by name (what a protocol's `saliency = "..."` names); each maps images to maps as `itti_koch`
SALIENCY_MODELS: dict[str, Callable[..., np.ndarray]] = {"itti_koch": itti_koch,
                                                          "spectral_residual": spectral_residual}


def saliency_model(name: str | Callable[..., np.ndarray], weights: str | Path | None = None,
                   **options: Any) -> Callable[..., np.ndarray]:
    """A saliency model `(B, 3, H, W) -> (B, H, W)`: by name (`itti_koch`, `spectral_residual`, or `deepgaze_iie`,
    which needs `weights`, a local `deepgaze2e.pth`), as `"module:function"` (a model of your own), or a callable
    (returned as is)."""
    if callable(name):
        return name
    if name == "deepgaze_iie":
        if weights is None:
            raise AnalysisInputError("saliency model deepgaze_iie needs weights = '<path to deepgaze2e.pth>'")
        return DeepGazeIIE(weights, **options)
    if ":" in str(name):
        import importlib

        module, _, attr = str(name).partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise AnalysisInputError(f"saliency model {name!r} cannot be imported ({e})") from None
    if name not in SALIENCY_MODELS:
        raise AnalysisInputError(f"unknown saliency model {name!r}; choose from "
                                 f"{', '.join([*SALIENCY_MODELS, 'deepgaze_iie'])} or 'module:function'")
    return SALIENCY_MODELS[name]
