"""Reversible weight lesions: zero a module's own parameters, restore them exactly from saved copies."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn


def is_bias(name: str) -> bool:
    """True for parameters that are biases (`bias`, `in_proj_bias`, ...), judged by name."""
    return name.endswith("bias")


def lesion_parameters(module: nn.Module, include_bias: bool = False) -> list[tuple[str, nn.Parameter]]:
    """The parameters a weight lesion of `module` zeroes: its own (non-recursive) weights, and biases if asked."""
    return [(n, p) for n, p in module.named_parameters(recurse=False) if include_bias or not is_bias(n)]


@contextlib.contextmanager
def preserved(tensors: Iterable[torch.Tensor]) -> Iterator[None]:
    """Save copies of `tensors` on entry and copy them back on exit, also when the body raises.

    Restoration copies the saved values (bit-exact), it never recomputes them.
    """
    tensors = list(tensors)
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


@contextlib.contextmanager
def lesioned(modules: nn.Module | Iterable[nn.Module], include_bias: bool = False) -> Iterator[None]:
    """Zero the own weights (and biases if `include_bias`) of `modules` inside the block; restore exactly after.

    >>> with lesioned(model.visual.conv1):
    ...     out = model.encode_image(x)
    """
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    params = [p for m in modules for _, p in lesion_parameters(m, include_bias)]
    with preserved(params):
        with torch.no_grad():
            for p in params:
                p.zero_()
        yield
