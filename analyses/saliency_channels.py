"""Saliency as input channels (the study's encoding models): a saliency map of each image and the Sobel x / y
gradients of its Gaussian-smoothed version, as extra channels beside the RGB ones.

`saliency_channels(images, saliency, sigma=5)` -> `(B, 3, H, W)`: channel 0 the saliency map scaled to [0, 1]
per image, channels 1, 2 its x and y gradients after smoothing with a Gaussian of s.d. `sigma` px (Sobel,
divided by 8: change of the map per px), in the study's order (map, d/dx, d/dy). `saliency` is a callable
`(B, 3, H, W) -> (B, H, W)`, the name of a saliency model of `analyses.saliency` (`spectral_residual`,
`itti_koch`), or `"module:function"`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from .ratemaps import AnalysisInputError
from .saliency import saliency_model

CHANNELS = ("saliency", "dx", "dy")


def saliency_maps(images: np.ndarray, saliency: str | Callable) -> np.ndarray:
    """Saliency maps `(B, H, W)` of float images `(B, 3, H, W)` in [0, 1], each scaled to [0, 1]."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise AnalysisInputError(f"images must be (B, 3, H, W) floats in [0, 1], got shape {images.shape}")
    maps = np.asarray(saliency_model(saliency)(images), np.float64)
    if maps.ndim == 2 and len(images) == 1:
        maps = maps[None]
    if maps.shape != (len(images),) + images.shape[2:]:
        raise AnalysisInputError(f"the saliency model gave shape {maps.shape} for images {images.shape}; it must "
                                 "give one (H, W) map per image")
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def saliency_channels(images: np.ndarray, saliency: str | Callable = "spectral_residual", sigma: float = 5.0,
                      channels: tuple[str, ...] = CHANNELS) -> np.ndarray:
    """The chosen extra channels (`saliency`, `dx`, `dy`) of float images `(B, 3, H, W)` -> `(B, K, H, W)`."""
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown or not channels:
        raise AnalysisInputError(f"channels must be a non-empty list of {CHANNELS}, got {list(channels)}")
    if sigma < 0:
        raise AnalysisInputError(f"sigma must be >= 0 px, got {sigma!r}")
    maps = saliency_maps(images, saliency)
    out = {"saliency": maps}
    if "dx" in channels or "dy" in channels:
        smooth = ndimage.gaussian_filter(maps.astype(np.float64), sigma=(0, sigma, sigma), mode="nearest")
        out["dx"], out["dy"] = _sobel(smooth, 2), _sobel(smooth, 1)
    return np.stack([out[c] for c in channels], axis=1)


def with_saliency_channels(images: np.ndarray, saliency: str | Callable = "spectral_residual", sigma: float = 5.0,
                           channels: tuple[str, ...] = CHANNELS) -> np.ndarray:
    """Images `(B, 3, H, W)` with the saliency channels appended: `(B, 3 + K, H, W)`, a stimulus transform for
    subjects that accept extra input channels."""
    return np.concatenate([np.asarray(images, np.float32), saliency_channels(images, saliency, sigma, channels)], 1)



def _sobel(maps: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative / 8 of `(B, H, W)` maps along `axis` (2: x, 1: y), smoothing along the other image axis
    only (`ndimage.sobel` on the stack would also smooth across images)."""
    d = ndimage.correlate1d(maps, [-1.0, 0.0, 1.0], axis=axis, mode="nearest")
    return (ndimage.correlate1d(d, [1.0, 2.0, 1.0], axis=3 - axis, mode="nearest") / 8).astype(np.float32)
