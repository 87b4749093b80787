"""Planted-truth subjects for RSA: networks that encode only saliency, only semantics, or both, of the procedural
scenes (`stimuli.scenes`), so that the saliency / semantic RSA of a session has a known answer.

Subject source `planted_rsa` (`[subject] source = "planted_rsa"`, `options = { encodes = "saliency" }`). Sites:

    saliency   (B, 1024)  the image's saliency map (`options.saliency`: `itti_koch` or `spectral_residual`), resized
                          to 32 x 32 and flattened: its RDM follows the saliency RDM.
    semantics  (B, 12)    which object classes the image shows, read from the pixels (each class of the scenes
                          has its own hue: pixels with saturation > 0.3 within 20 degrees of a class's hue, at
                          least 0.3% of the image), as the concept vector of those classes
                          (`analyses.semantics.concept_embedding`): its RDM follows the semantic RDM.
    units      (B, 1036 or 1024 or 12)  what the subject encodes: `encodes` = "saliency", "semantics" or "both"
                          (each part scaled to unit norm).

With `encodes = "saliency"`, the subject's `units` carry no semantics beyond what saliency shares with it, and the
other way round.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import SubjectError

MAP_SIDE = 32
ENCODES = ("saliency", "semantics", "both")


class SaliencyStage(nn.Module):
    def __init__(self, model: str):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from analyses.saliency import resize, saliency_model

        maps = saliency_model(self.model)(images.detach().cpu().numpy())
        small = resize(maps.astype(np.float64), (MAP_SIDE, MAP_SIDE)).reshape(len(maps), -1)
        return torch.as_tensor(small, dtype=torch.float32, device=images.device)


class SemanticStage(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from analyses.semantics import CLASSES, CLASS_WEIGHT, SUPER, SUPER_WEIGHT
        from matplotlib.colors import rgb_to_hsv
        from stimuli.scenes import class_style

        hsv = rgb_to_hsv(images.detach().cpu().numpy().transpose(0, 2, 3, 1).clip(0, 1))
        hue, sat = hsv[..., 0] * 360, hsv[..., 1]
        out = np.zeros((len(hsv), len(SUPER) + len(CLASSES)))
        for k, name in enumerate(CLASSES):
            gap = np.abs((hue - class_style(name)[1] + 180) % 360 - 180)
            present = ((gap < 20) & (sat > 0.3)).mean(axis=(1, 2)) > 0.003
            out[present, SUPER.index(CLASSES[name])] += SUPER_WEIGHT
            out[present, len(SUPER) + k] += CLASS_WEIGHT
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return torch.as_tensor(out / np.where(norm > 0, norm, 1), dtype=torch.float32, device=images.device)


class PlantedRSA(nn.Module):
    """images `(B, 3, H, W)` in [0, 1] -> `units` (see the module docstring)."""

    def __init__(self, encodes: str = "both", saliency: str = "spectral_residual"):
        super().__init__()
        if encodes not in ENCODES:
            raise SubjectError(f"planted_rsa: encodes must be one of {ENCODES}, got {encodes!r}", key="options")
        if saliency not in ("itti_koch", "spectral_residual"):
            raise SubjectError(f"planted_rsa: saliency must be itti_koch or spectral_residual, got {saliency!r}",
                               key="options")
        self.encodes = encodes
        self.saliency = SaliencyStage(saliency)
        self.semantics = SemanticStage()
        self.units = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        sal, sem = self.saliency(images), self.semantics(images)
        sal = sal / sal.norm(dim=1, keepdim=True).clamp_min(1e-12)
        parts = {"saliency": [sal], "semantics": [sem], "both": [sal, sem]}[self.encodes]
        return self.units(torch.cat(parts, dim=1))


def build(request) -> "object":
    """The `planted_rsa` subject source: options `encodes` ("saliency", "semantics", "both") and `saliency`."""
    from .subjects import from_module

    try:
        model = PlantedRSA(**request.options)
    except TypeError as e:
        raise SubjectError(f"planted_rsa: {e} (options: encodes, saliency)", key="options") from None
    return from_module(request, model.eval(), None, label=f"planted_rsa:{model.encodes}")
