"""Subjects and a saliency model for the receptive-field tests (`source = "factory"`,
`factory = "rf_factories:<name>"`)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

KERNEL, SIGMA, STRIDE, PAD = 15, 2.5, 4, 7


class KnownKernel(nn.Module):
    """Luminance contrast -> one conv with a known Gaussian kernel (s.d. `SIGMA` px, `KERNEL` px, stride
    `STRIDE`, padding `PAD`) -> softplus: map position (i, j) has its RF centred on pixel (i * STRIDE, j * STRIDE),
    i.e. at (j * STRIDE + 0.5, i * STRIDE + 0.5) px, with size SIGMA. A second layer after it must never run when
    gradients stop at `conv`."""

    input_size = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, KERNEL, stride=STRIDE, padding=PAD, bias=False)
        r = torch.arange(KERNEL, dtype=torch.float32) - (KERNEL - 1) / 2
        g = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * SIGMA**2))
        with torch.no_grad():
            self.conv.weight[0, 0] = g / g.sum()         # channel 0: ON
            self.conv.weight[1, 0] = -g / g.sum()        # channel 1: OFF
        self.act = nn.Softplus(beta=4.0)
        self.after = nn.Linear(2, 2)
        self.after_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x.mean(dim=1, keepdim=True) - 0.5))
        self.after_calls += 1
        return self.after(y.mean(dim=(2, 3)))


def known_kernel() -> nn.Module:
    return KnownKernel()


class SixChannels(nn.Module):
    """A conv net whose first layer takes 6 channels (RGB + saliency, d/dx, d/dy)."""

    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 6:
            raise ValueError(f"SixChannels takes 6 channels, got {x.shape[1]}")
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def six_channels() -> nn.Module:
    return SixChannels()


def contrast_saliency(images: np.ndarray) -> np.ndarray:
    """A stand-in saliency model `(B, 3, H, W) -> (B, H, W)`: absolute luminance contrast against grey."""
    return np.abs(np.asarray(images).mean(axis=1) - 0.5)
