"""The segmentation phantom: a planted-truth subject for the spectral study (AlignedCut), whose token sites
encode known things about the pixels, so normalized cuts, channel alignment and the oracle segmentation
scores can be checked against the answer (`SegmentationPhantom.truth()`).

It looks like a ViT to the rig: input `(B, 3, 224, 224)` in [0, 1] (no transform), a 14 x 14 grid of 16-px
patches (`grid_size`), and token sites `(B, 197, D)` whose token 0 (CLS) is the mean of the 196 patch tokens.
It reads the pixels of one shape on a plain background (the `circles` / `shapes` sets, `rotation = false`):

    coverage  per patch, the fraction of its pixels that differ from the background colour (median of the
              image's outer ring of pixels) by more than half the contrast of the shape (`rig.phantom.Locate`'s
              contrast, thresholded at 1/2);
    category  per image, the shape from the fill ratio of its bounding box: circle pi/4, square 1, triangle
              1/2 (nearest of `categories`).

Its sites (`model.named_modules()` names), each `(B, 197, D)` with D = `dim` (default 32):

    sites.noise           frozen noise only: encodes nothing (oracle mIoU at chance);
    sites.figure          c * figure + (1 - c) * ground + noise, c the patch's coverage: figure-ground, the same
                          vector for every shape (figure-ground mIoU high, category mIoU low);
    sites.figure_rotated  sites.figure's tokens times a fixed random orthogonal matrix `rotation` (D, D): the
                          same concept in another channel basis, like a second network (alignment must find
                          `rotation`: Procrustes of figure_rotated onto figure gives its transpose);
    sites.category        c * shape[category] + (1 - c) * ground + noise: figure-ground and shape category.

`figure`, `ground` and `shape` are fixed Gaussian vectors (unit variance per channel, drawn from `seed`);
noise is `noise` x standard normal per token and channel, a deterministic function of the image's 8-bit pixels
(reproducible recordings), different per site. Example (a protocol: `[subject] source = "segmentation_phantom"`):

    model = rig.segmentation_phantom.build(seed=0)
    tokens = model(torch.from_numpy(stimuli.shapes(n=4, diameter=[60, 120]).render()))   # (4, 197, 32)
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from .phantom import Locate

CATEGORIES = ("circle", "square", "triangle")
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / bounding-box area of each shape


class Tokens(nn.Module):
    """One token site: patch tokens `(B, 196, D)` -> `(B, 197, D)` with the CLS token (their mean) first,
    optionally times a fixed matrix `basis` (D, D)."""

    def __init__(self, basis: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("basis", None if basis is None else torch.as_tensor(basis, dtype=torch.float32))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.basis is not None:
            patches = patches @ self.basis
        return torch.cat([patches.mean(1, keepdim=True), patches], dim=1)


class SegmentationPhantom(nn.Module):
    """See the module docstring. `truth()` describes every site."""

    input_size = 224
    patch = 16

    def __init__(self, seed: int = 0, dim: int = 32, noise: float = 0.5, canvas: int = 224):
        super().__init__()
        if canvas % self.patch:
            raise ValueError(f"canvas must be a multiple of {self.patch} px, got {canvas}")
        if dim < 2 or noise < 0:
            raise ValueError(f"dim must be >= 2 and noise >= 0, got dim={dim}, noise={noise}")
        self.input_size = canvas
        self.grid_size = (canvas // self.patch,) * 2
        self.dim, self.noise, self.seed = int(dim), float(noise), int(seed)
        rng = np.random.default_rng(seed)
        self.register_buffer("figure", torch.as_tensor(rng.standard_normal(dim), dtype=torch.float32))
        self.register_buffer("ground", torch.as_tensor(rng.standard_normal(dim), dtype=torch.float32))
        self.register_buffer("shape", torch.as_tensor(rng.standard_normal((len(CATEGORIES), dim)), dtype=torch.float32))
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.locate = Locate(canvas)
        self.sites = nn.ModuleDict({"noise": Tokens(), "figure": Tokens(), "figure_rotated": Tokens(self.rotation),
                                    "category": Tokens()})

    def coverage(self, images: torch.Tensor) -> torch.Tensor:
        """(B, rows * cols) fraction of each patch's pixels on the shape; (B, H, W) pixel mask as second value."""
        c = self.locate.contrast(images)
        peak = c.flatten(1).max(1).values.clamp_min(1e-6)[:, None, None]
        on = (c > 0.5 * peak).to(images.dtype)
        cover = nn.functional.avg_pool2d(on[:, None], images.shape[-1] // self.grid_size[1])[:, 0]
        return cover.flatten(1), on

    @staticmethod
    def category(on: torch.Tensor) -> torch.Tensor:
        """(B,) index into CATEGORIES from the fill ratio of each image's bounding box (0 for an empty image)."""
        rows, cols = on.amax(2) > 0, on.amax(1) > 0
        height = rows.sum(1).clamp_min(1)
        width = cols.sum(1).clamp_min(1)
        fill = on.sum((1, 2)) / (height * width)
        ref = torch.tensor([FILL[c] for c in CATEGORIES], dtype=fill.dtype, device=fill.device)
        return (fill[:, None] - ref[None]).abs().argmin(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.figure.dtype)
        cover, on = self.coverage(images)
        c = cover[..., None]  # (B, 196, 1)
        xi = self.frozen_noise(images, cover.shape[1])  # (B, 3, 196, D)
        shape = self.shape[self.category(on)][:, None]  # (B, 1, D)
        self.sites["noise"](xi[:, 0])
        fig = c * self.figure + (1 - c) * self.ground + xi[:, 1]
        self.sites["figure"](fig)
        self.sites["figure_rotated"](fig)
        return self.sites["category"](c * shape + (1 - c) * self.ground + xi[:, 2])

    def frozen_noise(self, images: torch.Tensor, n_patches: int) -> torch.Tensor:
        """`noise` x standard normals (B, 3, n_patches, D): a function of each image's 8-bit pixels and `seed`."""
        pixels = images.detach().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
        out = np.empty((images.shape[0], 3, n_patches, self.dim), np.float32)
        for i in range(images.shape[0]):
            words = np.frombuffer(hashlib.blake2b(pixels[i].tobytes(), digest_size=16).digest(), np.uint32)
            out[i] = np.random.default_rng([self.seed, *words.tolist()]).standard_normal(out.shape[1:])
        return torch.from_numpy(out * self.noise).to(images.device, images.dtype)

    def truth(self) -> xr.Dataset:
        """Per site: what it encodes (`encodes`), whether figure-ground and category are planted, and the
        `rotation` (D, D) that maps sites.figure's channels to sites.figure_rotated's."""
        sites = [f"sites.{k}" for k in self.sites]
        return xr.Dataset(
            {"encodes": ("site", ["nothing", "figure-ground", "figure-ground (rotated channels)",
                                  "figure-ground and category"]),
             "figure_ground": ("site", [False, True, True, True]),
             "category": ("site", [False, False, False, True]),
             "rotation": (("channel_in", "channel_out"), self.rotation)},
            coords={"site": sites}, attrs={"categories": list(CATEGORIES), "noise": self.noise, "seed": self.seed})


def build(seed: int = 0, **options: Any) -> SegmentationPhantom:
    """A seeded segmentation phantom (options: dim, noise, canvas)."""
    return SegmentationPhantom(seed=seed, **options)


def build_subject(req: Any) -> Any:
    """The `segmentation_phantom` subject source (`rig.sources`)."""
    from dataclasses import replace

    from .subjects import build_factory

    return build_factory(replace(req, factory="rig.segmentation_phantom:build"))
