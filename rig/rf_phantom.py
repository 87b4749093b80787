"""The RF phantom: a planted-truth subject whose units have known receptive fields.

Every unit is a linear-nonlinear model of the image's luminance contrast: a Gaussian filter of known centre
(`centre_x`, `centre_y`, px, image frame) and size (`size`: the s.d., px), of ON or OFF polarity, followed by a
softplus. Some units are *shifters*: on each image their filter's centre moves a fraction `shift` of the way
towards the image's contrast centroid (its salient object), so "do RFs shift towards salient objects?" has a
known answer per unit. Sites (`model.named_modules()` names):

    contrast  (B, 1, H, W)  luminance contrast: mean over RGB minus the grey background (0.5)
    drive     (B, U)        sum over pixels of filter x contrast (filters sum to 1 in absolute value)
    units     (B, U)        softplus(gain * drive) / gain

`truth()` gives the planted parameters as an `xr.Dataset` over `unit`. The gradient of a unit with respect to
a pixel is its filter (times the softplus slope), so gradient RFs recover centre and size exactly (a shifter's
on each image at its moved centre; the centroid itself is not differentiated), and reverse correlation with
white or sparse noise recovers them up to the noise grid's cell.

    subject = rig.load_subject("rf_phantom", seed=0)        # or [subject] source = "rf_phantom" in a protocol
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr
from torch import nn

from .errors import SubjectError

BACKGROUND = 0.5


class Contrast(nn.Module):
    """Images `(B, 3, H, W)` in [0, 1] -> luminance contrast `(B, 1, H, W)` against grey."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1, keepdim=True) - BACKGROUND


class GaussianFilters(nn.Module):
    """Per-unit Gaussian filters of the contrast image: drive `(B, U)`.

    Centres `(U, 2)` px, sizes `(U,)` px (s.d.), polarity `(U,)` (+1 ON, -1 OFF), `shift` `(U,)`: the fraction
    of the way each unit's centre moves towards the image's contrast centroid (|contrast|-weighted, not
    differentiated; no move on a uniform image). Filters are normalised to sum to 1 in absolute value on the canvas.
    """

    def __init__(self, centres: np.ndarray, sizes: np.ndarray, polarity: np.ndarray, shift: np.ndarray):
        super().__init__()
        self.register_buffer("centres", torch.as_tensor(centres, dtype=torch.float32))
        self.register_buffer("sizes", torch.as_tensor(sizes, dtype=torch.float32))
        self.register_buffer("polarity", torch.as_tensor(polarity, dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))

    def forward(self, contrast: torch.Tensor) -> torch.Tensor:
        c = contrast[:, 0]  # (B, H, W)
        b, h, w = c.shape
        ys = torch.arange(h, dtype=c.dtype, device=c.device) + 0.5
        xs = torch.arange(w, dtype=c.dtype, device=c.device) + 0.5
        weight = c.detach().abs()
        mass = weight.sum(dim=(1, 2))
        centroid = torch.stack([weight.sum(1) @ xs, weight.sum(2) @ ys], -1) / mass.clamp_min(1e-12)[:, None]
        moves = self.shift.to(c.dtype)[None, :, None] * (mass > 1e-6).to(c.dtype)[:, None, None]  # none on grey
        base = self.centres.to(c.dtype)[None]
        centres = base + moves * (centroid[:, None] - base)  # (B, U, 2)
        s2 = 2 * self.sizes.to(c.dtype)[None, :, None] ** 2
        gx = torch.exp(-(xs[None, None] - centres[..., :1]) ** 2 / s2)  # (B, U, W)
        gy = torch.exp(-(ys[None, None] - centres[..., 1:]) ** 2 / s2)  # (B, U, H)
        norm = gy.sum(-1) * gx.sum(-1)  # separable: the sum of the 2-D Gaussian
        drive = torch.einsum("buh,bhw,buw->bu", gy, c, gx) / norm
        return drive * self.polarity.to(c.dtype)


class Softplus(nn.Module):
    def __init__(self, gain: float):
        super().__init__()
        self.gain = float(gain)

    def forward(self, drive: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(self.gain * drive) / self.gain


class RFPhantom(nn.Module):
    """Planted receptive fields (see the module docstring); build it with `build(seed, ...)`.

    Settings: `seed` (every planted parameter), `canvas` (px; also `input_size`), `n_units`, `size` (px: a
    number or a `(lo, hi)` range drawn uniformly), centres on a `round(sqrt(n))`-row lattice over the canvas
    inset by `margin` px, jittered by up to `jitter` lattice steps; polarity alternates ON, OFF; the first
    `n_shifters` units are shifters moving `shift` of the way to the contrast centroid; `gain` of the softplus.
    """

    def __init__(self, *, seed: int = 0, canvas: int = 224, n_units: int = 16, size: float | tuple = (8.0, 20.0),
                 margin: float = 32.0, jitter: float = 0.25, n_shifters: int = 0, shift: float = 0.5,
                 gain: float = 4.0):
        super().__init__()
        if int(n_units) != n_units or n_units < 1 or not 0 <= n_shifters <= n_units:
            raise SubjectError(f"n_units must be >= 1 and 0 <= n_shifters <= n_units, got {n_units}, {n_shifters}")
        if not 0 <= margin < canvas / 2:
            raise SubjectError(f"margin must be in [0, canvas / 2) px, got {margin!r}")
        rng = np.random.default_rng([int(seed), 0x7266])  # "rf"
        lo, hi = (size, size) if np.isscalar(size) else tuple(size)
        if not 0 < lo <= hi:
            raise SubjectError(f"size must be a positive number or (lo, hi) px, got {size!r}")
        rows = max(1, round(math.sqrt(n_units)))
        cols = math.ceil(n_units / rows)
        step_x, step_y = (canvas - 2 * margin) / cols, (canvas - 2 * margin) / rows
        k = np.arange(n_units)
        centres = np.stack([margin + (k % cols + 0.5) * step_x, margin + (k // cols + 0.5) * step_y], -1)
        centres += rng.uniform(-jitter, jitter, centres.shape) * [step_x, step_y]
        sizes = rng.uniform(lo, hi, n_units) if hi > lo else np.full(n_units, float(lo))
        polarity = np.where(k % 2 == 0, 1.0, -1.0)
        shifts = np.where(k < n_shifters, float(shift), 0.0)
        self.seed, self.canvas, self.input_size = int(seed), int(canvas), int(canvas)
        self.contrast = Contrast()
        self.drive = GaussianFilters(centres, sizes, polarity, shifts)
        self.units = Softplus(gain)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.units(self.drive(self.contrast(images)))

    def truth(self) -> xr.Dataset:
        """The planted RFs over `unit`: `centre_x`, `centre_y`, `size` (px), `polarity` (+1 ON, -1 OFF), `shift`."""
        d = self.drive
        c = d.centres.cpu().numpy().astype(float)
        return xr.Dataset({"centre_x": ("unit", c[:, 0]), "centre_y": ("unit", c[:, 1]),
                           "size": ("unit", d.sizes.cpu().numpy().astype(float)),
                           "polarity": ("unit", d.polarity.cpu().numpy().astype(float)),
                           "shift": ("unit", d.shift.cpu().numpy().astype(float))},
                          coords={"unit": np.arange(len(c))},
                          attrs={"subject": "rf_phantom", "seed": self.seed, "canvas": self.canvas,
                                 "gain": self.units.gain})


def build(seed: int = 0, **kwargs) -> RFPhantom:
    """The RF phantom in eval mode (factory `"rig.rf_phantom:build"`); keyword arguments as `RFPhantom`."""
    try:
        return RFPhantom(seed=seed, **kwargs).eval()
    except TypeError as e:  # an unknown keyword argument
        raise SubjectError(f"rf_phantom: {e}; see rig.rf_phantom.RFPhantom for the settings") from None


def build_subject(req):
    """The subject source `rf_phantom` (a factory subject of `build`)."""
    from dataclasses import replace

    from .subjects import build_factory

    return build_factory(replace(req, factory="rig.rf_phantom:build"))
