"""Saliency as input channels of a subject: its preprocess with a saliency map and the map's smoothed Sobel x / y
gradients appended as channels (the study's encoding models), for networks whose first layer takes them (e.g.
timm models built with `options = {in_chans = 6}`).

In a protocol:

    [subject.saliency_channels]
    model = "spectral_residual"      # a saliency model of analyses, or "module:function"
    sigma = 5.0                      # px, the Gaussian smoothing before the Sobel gradients
    channels = ["saliency", "dx", "dy"]

The stimuli stay RGB images (figures, recordings and stimulus hashes are unchanged); the extra channels are
computed from each image at the model's input resolution (after the preprocess's resize and crop) and appended
after normalisation. They are computed in numpy, so gradients with respect to the pixels (gradient RFs) flow
through the RGB channels only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from .errors import SubjectError
from .transforms import TensorPreprocess


class SaliencyInput:
    """`base` preprocess of `(B, 3, H, W)` images in [0, 1], with saliency channels appended: `(B, 3 + K, h, w)`."""

    def __init__(self, base: Callable[[torch.Tensor], torch.Tensor], model: str | Callable = "spectral_residual",
                 sigma: float = 5.0, channels: Sequence[str] = ("saliency", "dx", "dy")):
        from analyses.saliency import saliency_model
        from analyses.saliency_channels import CHANNELS

        self.base, self.model, self.sigma, self.channels = base, model, float(sigma), tuple(channels)
        if not self.channels or any(c not in CHANNELS for c in self.channels):
            raise SubjectError(f"saliency_channels.channels must be a list of {list(CHANNELS)}, got {list(channels)}")
        try:
            saliency_model(model)
        except ValueError as e:
            raise SubjectError(f"saliency_channels.model: {e}", key="saliency_channels") from None
        # the resize / crop of the base preprocess, without its normalisation: the images the model sees
        self.geometry = dataclasses.replace(base, mean=None, std=None) if isinstance(base, TensorPreprocess) else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from analyses.saliency_channels import saliency_channels

        x = self.base(images)
        seen = self.geometry(images) if self.geometry is not None else images
        extra = saliency_channels(seen.detach().to("cpu", torch.float32).numpy(), self.model, self.sigma,
                                  self.channels)
        extra = torch.from_numpy(extra).to(x.device, x.dtype)
        if extra.shape[-2:] != x.shape[-2:]:
            extra = torch.nn.functional.interpolate(extra, size=tuple(x.shape[-2:]), mode="bilinear",
                                                    antialias=True, align_corners=False)
        return torch.cat([x, extra], dim=1)

    def describe(self) -> dict[str, Any]:
        base = getattr(self.base, "describe", lambda: repr(self.base))()
        return {"base": base, "saliency_channels": {"model": self.model if isinstance(self.model, str) else
                                                    repr(self.model), "sigma": self.sigma,
                                                    "channels": list(self.channels)}}


def add_saliency_channels(subject: Any, model: str | Callable = "spectral_residual", sigma: float = 5.0,
                          channels: Sequence[str] = ("saliency", "dx", "dy")) -> Any:
    """`subject` whose preprocess appends saliency channels (see the module docstring); the model must accept
    `3 + len(channels)` input channels."""
    return dataclasses.replace(subject, transform=SaliencyInput(subject.transform, model, sigma, channels),
                               name=f"{subject.name}+saliency")
