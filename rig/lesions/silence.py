"""Silence chosen units of a site's output with a forward hook; the silenced set may differ per stimulus.

What a unit is (`unit`, see `rig.lesions.ranking`): a `"channel"` is silenced at every token / map position;
an `"element"` is one value of the per-stimulus output, indexed in its row-major (C-order) flattening.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from rig.errors import SiteError


def unit_axis(ndim: int) -> int:
    """Axis of channels in a site output with batch first: last for `(B, U)` / `(B, T, U)`, 1 for `(B, U, H, W)`."""
    return 1 if ndim == 4 else ndim - 1


def n_site_units(shape: tuple[int, ...], unit: str = "channel") -> int:
    """Units of a per-stimulus output shape (`(D,)`, `(T, D)`, `(C, H, W)`): channels, or every element."""
    if unit == "element":
        return int(np.prod(shape))
    return int(shape[unit_axis(len(shape) + 1) - 1])


def apply_mask(output: torch.Tensor, keep: torch.Tensor, unit: str = "channel", batch_axis: int = 0) -> torch.Tensor:
    """Multiply `output` by `keep` `(B, U)` (1 keep, 0 silence): channels broadcast over tokens / space, or one
    value per element of the per-stimulus output. `batch_axis`: 1 for sequence-first `(T, B, D)` outputs."""
    x = output.movedim(batch_axis, 0) if batch_axis else output
    per = tuple(x.shape[1:])
    n = n_site_units(per, unit) if per else 1
    if x.shape[0] != keep.shape[0] or n != keep.shape[1]:
        raise SiteError(
            f"site output {tuple(output.shape)} does not match a unit mask {tuple(keep.shape)} (unit = {unit!r}, "
            "batch first, channels last or on axis 1 for conv maps); choose a site with per-unit output"
        )
    if unit == "element":
        shape = [keep.shape[0], *per]
    else:
        shape = [keep.shape[0]] + [1] * (x.ndim - 1)
        shape[unit_axis(x.ndim)] = keep.shape[1]
    out = x * keep.reshape(shape).to(x.dtype)
    return out.movedim(0, batch_axis) if batch_axis else out


class UnitSilencer:
    """A forward hook on a site that zeroes units given by a per-stimulus boolean mask.

    Set `silencer.mask` to a `(B, U)` bool array (True = silence) before each forward of a batch of B
    stimuli; `None` leaves the output untouched. A tuple output (e.g. `nn.MultiheadAttention`) is silenced
    in its first element. `unit`: `"channel"` or `"element"`; `batch_axis`: where the batch is in the output.
    """

    def __init__(self, module: nn.Module, unit: str = "channel", batch_axis: int = 0):
        self.mask: np.ndarray | None = None
        self.unit, self.batch_axis = unit, batch_axis
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output):
        if self.mask is None or not self.mask.any():
            return None
        first = output[0] if isinstance(output, tuple) else output
        keep = torch.from_numpy(~self.mask).to(first.device)
        silenced = apply_mask(first, keep, self.unit, self.batch_axis)
        return (silenced, *output[1:]) if isinstance(output, tuple) else silenced

    def remove(self) -> None:
        self._handle.remove()


@contextlib.contextmanager
def silenced(module: nn.Module, mask: np.ndarray | None = None, unit: str = "channel",
             batch_axis: int = 0) -> Iterator[UnitSilencer]:
    """Context manager: a `UnitSilencer` on `module` (hook removed on exit, also on exceptions)."""
    s = UnitSilencer(module, unit, batch_axis)
    s.mask = mask
    try:
        yield s
    finally:
        s.remove()
