"""Tiny user factories for subject tests (`source = "factory"`, `factory = "subject_factories:<name>"`)."""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torchvision import transforms


class TinyNet(nn.Module):
    """Conv -> ReLU -> global pool -> linear; input (B, 3, 32, 32) in [0, 1], output (B, 5) logits."""

    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 5)
        self.class_names = ["a", "b", "c", "d", "e"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(x))).flatten(1))


def build(seed: int = 0) -> nn.Module:
    """A seeded TinyNet (the seed is also set by the rig; this checks it is passed on)."""
    torch.manual_seed(seed)
    return TinyNet()


def tiny(channels: int = 4) -> nn.Module:
    """A TinyNet with `channels` conv channels (sweeps compare two such subjects)."""
    net = TinyNet()
    net.conv = nn.Conv2d(3, channels, 3, padding=1)
    net.head = nn.Linear(channels, 5)
    return net


class Flaky(TinyNet):
    """A TinyNet whose first forward pass of more than 3 images (a recording batch, not the site probes)
    fails, once per `marker` file: a transient fault."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        if x.shape[0] > 3 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("a transient fault (the first recording batch only)")
        return super().forward(x)


def flaky(marker: str) -> nn.Module:
    return Flaky(marker)


def build_unseeded() -> nn.Module:
    """A TinyNet drawn from the (rig-seeded) torch RNG."""
    return TinyNet()


def build_with_transform() -> tuple[nn.Module, transforms.Compose]:
    """(module, torchvision transform): resize to 40, crop 32, normalise with mean 0.5, std 0.25."""
    tf = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32), transforms.ToTensor(),
                             transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    return TinyNet(), tf


def build_broken() -> int:
    """Returns something that is not a module."""
    return 3


def build_nameless() -> nn.Module:
    """A TinyNet without class names (readouts label its outputs class_0 ...)."""
    net = TinyNet()
    del net.class_names
    return net


@functools.lru_cache(maxsize=None)
def clip_subject(arch: str = "ViT-B-32", seed: int = 0):
    """A random-init open_clip subject on CPU, built once per test session (treat as read-only)."""
    from rig.subjects import load_subject
    return load_subject("open_clip", arch, weights="random", seed=seed, device="cpu")


def disc_image(height: int = 250, width: int = 300, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): a black disc on a white background with a seeded noise texture (sharp edges + detail)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    img = np.full((height, width, 3), 255.0)
    img[(xx - 0.6 * width) ** 2 + (yy - 0.4 * height) ** 2 < (0.2 * height) ** 2] = 0
    img = 0.8 * img + 0.2 * rng.uniform(0, 255, size=img.shape)
    return img.round().astype(np.uint8)
