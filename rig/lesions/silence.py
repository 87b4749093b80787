"""Silence chosen units of a site's output with a forward hook; the silenced set may differ per stimulus."""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from rig.errors import SiteError


def unit_axis(ndim: int) -> int:
    """Axis of units in a site output with batch first: last for `(B, U)` / `(B, T, U)`, 1 for `(B, U, H, W)`."""
    return 1 if ndim == 4 else ndim - 1


def apply_mask(output: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Multiply `output` (batch first) by `keep` `(B, U)` (1 keep, 0 silence) broadcast over tokens/space."""
    axis = unit_axis(output.ndim)
    if output.shape[0] != keep.shape[0] or output.shape[axis] != keep.shape[1]:
        raise SiteError(
            f"site output {tuple(output.shape)} does not match a unit mask {tuple(keep.shape)} "
            "(batch first, units last or on axis 1 for conv maps); choose a site with per-unit output"
        )
    shape = [keep.shape[0]] + [1] * (output.ndim - 1)
    shape[axis] = keep.shape[1]
    return output * keep.reshape(shape).to(output.dtype)


class UnitSilencer:
    """A forward hook on a site that zeroes units given by a per-stimulus boolean mask.

    Set `silencer.mask` to a `(B, U)` bool array (True = silence) before each forward of a batch of B
    stimuli; `None` leaves the output untouched. A tuple output (e.g. `nn.MultiheadAttention`) is silenced
    in its first element.
    """

    def __init__(self, module: nn.Module):
        self.mask: np.ndarray | None = None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output):
        if self.mask is None or not self.mask.any():
            return None
        first = output[0] if isinstance(output, tuple) else output
        keep = torch.from_numpy(~self.mask).to(first.device)
        silenced = apply_mask(first, keep)
        return (silenced, *output[1:]) if isinstance(output, tuple) else silenced

    def remove(self) -> None:
        self._handle.remove()


@contextlib.contextmanager
def silenced(module: nn.Module, mask: np.ndarray | None = None) -> Iterator[UnitSilencer]:
    """Context manager: a `UnitSilencer` on `module` (hook removed on exit, also on exceptions)."""
    s = UnitSilencer(module)
    s.mask = mask
    try:
        yield s
    finally:
        s.remove()
