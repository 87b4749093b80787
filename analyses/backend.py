"""Array backends for the spatial analyses: numpy, or torch on CPU or CUDA, through the Python array API.

The maths is written once against the array API standard (`array_api_compat.array_namespace(x)` gives the
namespace `xp` of an array: numpy's, or torch's wrapped to the standard), the route scikit-learn and SciPy
take; `analyses` imports no torch: torch is imported only when a caller hands in torch tensors or asks for a
torch `device`. Functions return arrays of the namespace and device they were given.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_numpy_namespace, is_torch_namespace

__all__ = ["namespace", "is_numpy", "is_torch", "to_numpy", "on_device", "asarray"]


def namespace(*arrays: Any) -> Any:
    """The array-API namespace of `arrays` (numpy for numpy arrays, xarray objects, lists and scalars)."""
    arrays = tuple(getattr(a, "data", a) if _is_xarray(a) else a for a in arrays if a is not None)
    arrays = tuple(a for a in arrays if hasattr(a, "__array_namespace__") or type(a).__module__.startswith("torch"))
    return array_namespace(*arrays) if arrays else array_namespace(np.zeros(0))


def _is_xarray(a: Any) -> bool:
    return type(a).__module__.startswith("xarray")


def is_numpy(xp: Any) -> bool:
    return is_numpy_namespace(xp)


def is_torch(xp: Any) -> bool:
    return is_torch_namespace(xp)


def to_numpy(a: Any) -> np.ndarray:
    """A numpy copy / view of any array (a torch tensor on any device is brought to the host)."""
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(getattr(a, "values", a))


def on_device(values: Any, device: str | None, dtype: str = "float64") -> Any:
    """`values` (numpy-like) as an array for `device`: None -> numpy; "cpu", "cuda", "cuda:1", ... -> torch
    (imported here, on demand). dtype "float64" or "float32"."""
    if device is None:
        return np.asarray(values, dtype=dtype)
    import torch  # only when a torch device is asked for

    if type(values).__module__.startswith("torch"):
        return values.to(device=device, dtype=getattr(torch, dtype))
    return torch.as_tensor(np.asarray(values, dtype=dtype), device=device)


def asarray(values: Any, like: Any, dtype: Any = None) -> Any:
    """`values` as an array of the namespace and device of `like` (dtype default: like's)."""
    xp = namespace(like)
    out = xp.asarray(values, dtype=dtype if dtype is not None else like.dtype)
    if not is_numpy(xp):
        from array_api_compat import device as device_of

        out = xp.asarray(out, device=device_of(like))
    return out
