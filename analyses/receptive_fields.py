"""Receptive fields: gradient RFs and their structure, and classic RF mapping by reverse correlation.

- `gradient_rfs(response_fn, images, units, method)`: d response / d input pixels of chosen units, per image
  (Simonyan et al. 2013, signed), and its relatives (gradient x input, integrated gradients, SmoothGrad).
  `response_fn(images (B, C, H, W)) -> (B, n_units)` is any differentiable callable (the rig builds one from a
  subject and a site, the forward stopped at the site); torch is imported inside the function.
- `rf_pca`: per-unit PCA of a unit's gradient RFs over images (the study's eigendecomposition of the
  image-by-image Gram matrix of mean-centred gRFs), `rf_projection`: images projected into a unit's gRF
  eigenspace (P = V V^T, components up to a share of the variance or a fixed number).
- `rf_geometry`: centre of mass, extent (px) and ON/OFF balance of RF maps; `saliency_peaks`, `saliency_shift`:
  do a unit's RFs move towards the salient part of each image? One number per unit.
- `reverse_correlation(responses, images)`: the response-weighted average of (noise) stimuli, the classic
  linear RF map; `preferred_stimuli`: each unit's top- and bottom-k stimuli.

Conventions: images are `(stimulus, channel, y, x)`, pixel (row i, column j) covers [j, j+1) x [i, i+1) px, so
map coordinates `y`, `x` are pixel centres in px (`(i + 0.5) * pool` after pooling).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from .ratemaps import AnalysisInputError

METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")
RGB = ("r", "g", "b")


# ----------------------------------------------------------------------------------------------------------
# gradient receptive fields


def gradient_rfs(response_fn: Callable[[Any], Any], images: Any, units: Sequence[int] | None = None,
                 method: str = "gradient", *, abs: bool = False, steps: int = 32, baseline: float | Any = 0.0,
                 samples: int = 16, noise: float = 0.1, seed: int = 0, batch_size: int = 16,
                 unit_chunk: int = 16, vectorize: bool = False) -> xr.DataArray:
    """Gradient receptive fields `(unit, stimulus, channel, y, x)` of chosen units of `response_fn` per image.

    Args:
        response_fn: differentiable `images (B, C, H, W) torch float -> (B, n_units)`; images must be treated
            independently (eval mode). Optional attributes: `device` (where images go), `unit_coords` (name ->
            array of `n_units`, e.g. `site`, `unit`, `token`: coordinates along `unit` of the result).
        images: `(stimulus, C, H, W)` numpy / torch / xarray, or a list of `(C, H, W)` arrays; one `(C, H, W)`
            image is one stimulus.
        units: columns of `response_fn`'s output (default: all).
        method: `gradient` (d r / d x), `gradient_x_input` (x * d r / d x), `integrated_gradients`
            ((x - baseline) * the mean gradient on the straight path from `baseline`, `steps` Gauss-Legendre
            nodes, as captum's default), `smoothgrad` (mean gradient over `samples` copies of the image with
            Gaussian noise of s.d. `noise` in image units, seeded by `seed`).
        abs: absolute values (captum's `Saliency` default); for SmoothGrad the absolute value of each sample's
            gradient is averaged (as captum's NoiseTunnel over abs saliency), else of the result.
        batch_size, unit_chunk: images per forward pass (one forward per batch is shared by all units; each
            unit's input gradient is one vector-Jacobian product over the batch on that forward's graph), and
            units whose gradients are held at once (memory grows with `batch_size * unit_chunk`).
        vectorize: the chunk's units in one vmapped backward pass (`is_grads_batched`: the backward's every op
            runs once on `unit_chunk` x `batch_size` images' gradients) instead of one backward per unit (the
            default; also the fallback for ops without a batching rule). Measured on this project's 2-core CPU
            for ViT-B/32 (bench/receptive_fields.py, best of 2): 71 vs 56 ms per (unit, image), slower; an
            earlier run found it 1.2-1.35x faster: try it on your hardware (on a GPU it batches the work).

    Returns:
        float32 `xr.DataArray` in response units per unit of pixel value, coordinates `unit` (the columns, or
        `response_fn.unit_coords`), `stimulus`, `channel`, `y`, `x` (pixel centres, px); attrs say the method.
    """
    import torch

    if method not in METHODS:
        raise AnalysisInputError(f"method must be one of {METHODS}, got {method!r}")
    for name, value in (("batch_size", batch_size), ("unit_chunk", unit_chunk), ("steps", steps),
                        ("samples", samples)):
        if int(value) != value or value < 1:
            raise AnalysisInputError(f"{name} must be a positive integer, got {value!r}")
    if noise < 0:
        raise AnalysisInputError(f"noise must be a non-negative s.d. (image units), got {noise!r}")
    x_all, stim = _as_image_tensor(images)
    device = torch.device(getattr(response_fn, "device", None) or x_all.device)
    n, c, h, w = x_all.shape
    base = torch.as_tensor(baseline, dtype=x_all.dtype)
    if base.ndim not in (0, 3) or (base.ndim == 3 and tuple(base.shape) != (c, h, w)):
        raise AnalysisInputError(f"baseline must be a number or one ({c}, {h}, {w}) image, got shape {tuple(base.shape)}")
    cols = None if units is None else _columns(units)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    result: np.ndarray | None = None
    for lo in range(0, n, batch_size):
        x = x_all[lo:lo + batch_size].to(device)
        b = len(x)
        variants = _variants(method, x, base.to(device, x.dtype), int(steps), int(samples), float(noise), gen)
        group = max(1, batch_size // b)  # variants (IG steps, SmoothGrad samples) per forward pass
        while chunk := list(itertools.islice(variants, group)):
            inp, out = _forward(response_fn, torch.cat([v for v, _ in chunk]))
            if cols is None:
                cols = np.arange(out.shape[1])
            if cols.max() >= out.shape[1]:
                raise AnalysisInputError(f"units {cols[cols >= out.shape[1]].tolist()} are out of range: "
                                         f"response_fn gives {out.shape[1]} units")
            if result is None:
                result = np.zeros((len(cols), n, c, h, w), np.float32)
            acc = torch.from_numpy(result[:, lo:lo + b])  # accumulate in place, in the result
            weights = torch.tensor([wt for _, wt in chunk], dtype=torch.float32)[:, None, None, None, None]
            for start, grads in _vjps(inp, out, cols, int(unit_chunk), vectorize):
                g = grads.to("cpu", torch.float32).reshape(len(grads), len(chunk), b, c, h, w)
                g = g.abs() if method == "smoothgrad" and abs else g
                acc[start:start + len(g)] += (g * weights).sum(dim=1)
            del inp, out
        if method == "integrated_gradients":
            acc *= (x - base.to(device, x.dtype)).to("cpu", torch.float32)[None]
        elif method == "gradient_x_input":
            acc *= x.to("cpu", torch.float32)[None]
        if abs and method != "smoothgrad":
            acc.abs_()
    coords = _unit_coords(response_fn, cols)
    coords.update(stimulus=stim, channel=list(RGB) if c == 3 else np.arange(c),
                  y=np.arange(h) + 0.5, x=np.arange(w) + 0.5)
    attrs = {"method": method, "abs": int(bool(abs)), "units": "response per unit of pixel value"}
    if method == "integrated_gradients":
        attrs.update(steps=int(steps), baseline=float(base) if base.ndim == 0 else "image")
    if method == "smoothgrad":
        attrs.update(samples=int(samples), noise=float(noise), seed=int(seed))
    return xr.DataArray(result, dims=("unit", "stimulus", "channel", "y", "x"), coords=coords, attrs=attrs,
                        name="gradient_rf")


def _variants(method: str, x: Any, base: Any, steps: int, samples: int, noise: float, gen: Any):
    """The images whose gradients a method averages, with their weights: the image itself; IG's points on the
    path from `base` at Gauss-Legendre nodes of [0, 1]; SmoothGrad's noisy copies (drawn in order from `gen`)."""
    import torch

    if method == "integrated_gradients":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        x0 = base.expand_as(x)
        for a, wt in zip(nodes, weights):
            yield x0 + float((a + 1) / 2) * (x - x0), float(wt / 2)
    elif method == "smoothgrad":
        for _ in range(samples):
            yield x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device), 1.0 / samples
    else:
        yield x, 1.0


def _forward(response_fn: Callable, x: Any) -> tuple[Any, Any]:
    """`(x, response_fn(x))` with `x` a fresh leaf that requires grad, and the graph kept for `_vjps`."""
    import torch

    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = response_fn(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise AnalysisInputError(f"response_fn must return a (B, n_units) tensor, got "
                                 f"{tuple(getattr(out, 'shape', ())) or type(out).__name__} for {x.shape[0]} images")
    if not out.requires_grad:
        raise AnalysisInputError("response_fn's output has no gradient with respect to the images (is it computed "
                                 "under torch.no_grad(), or detached?)")
    return x, out


def _vjps(x: Any, out: Any, cols: np.ndarray, chunk: int, vectorize: bool = True):
    """Input gradients of the units `cols` of `out` on the one graph of `out`: a vector-Jacobian product per unit
    (cotangent one-hot on the unit, over all images), `chunk` units at a time, vmapped with `vectorize`.
    Yields `(start, grads (k, B, C, H, W))`."""
    import torch

    sel = torch.as_tensor(cols, device=out.device)
    for start in range(0, len(cols), chunk):
        idx = sel[start:start + chunk]
        cot = torch.zeros((len(idx),) + tuple(out.shape), dtype=out.dtype, device=out.device)
        cot[torch.arange(len(idx), device=out.device), :, idx] = 1
        g = None
        if vectorize:
            try:
                (g,) = torch.autograd.grad(out, x, cot, retain_graph=True, is_grads_batched=True)
            except (RuntimeError, NotImplementedError):  # an op without a batching rule: one backward per unit
                g = None
        if g is None:
            g = torch.stack([torch.autograd.grad(out, x, cot[i], retain_graph=True)[0] for i in range(len(idx))])
        yield start, g


def _columns(units: Any) -> np.ndarray:
    cols = np.asarray(units.values if isinstance(units, xr.DataArray) else units)
    if cols.ndim == 0:
        cols = cols[None]
    if cols.ndim != 1 or cols.size == 0 or cols.dtype.kind not in "iu" or (cols < 0).any():
        raise AnalysisInputError(f"units must be a non-empty list of non-negative column indices, got {units!r}")
    return cols.astype(np.int64)


def _unit_coords(response_fn: Callable, cols: np.ndarray) -> dict[str, Any]:
    given = getattr(response_fn, "unit_coords", None) or {}
    coords: dict[str, Any] = {k: ("unit", np.asarray(v)[cols]) for k, v in given.items() if k != "unit"}
    coords["unit"] = np.asarray(given["unit"])[cols] if "unit" in given else cols
    return coords


def _as_image_tensor(images: Any) -> tuple[Any, np.ndarray]:
    """Images as a float torch tensor `(N, C, H, W)` and their stimulus labels."""
    import torch

    stim = None
    if isinstance(images, xr.DataArray):
        if "stimulus" in images.dims:
            stim = images["stimulus"].values if "stimulus" in images.coords else None
            images = images.transpose("stimulus", ...)
        images = images.values
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(i.detach().cpu() if isinstance(i, torch.Tensor) else i) for i in images])
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or not x.is_floating_point():
        raise AnalysisInputError(f"images must be float (stimulus, channel, y, x), got {x.dtype} of shape "
                                 f"{tuple(x.shape)}")
    x = x.detach().to(torch.float32) if x.dtype == torch.float16 else x.detach()
    return x, (np.arange(x.shape[0]) if stim is None else np.asarray(stim))


# ----------------------------------------------------------------------------------------------------------
# structure of gradient RFs: per-unit PCA and the kernel-PCA projection


def rf_pca(rfs: Any, n_components: int | None = None) -> xr.Dataset:
    """Per-unit PCA of gradient RFs over images: `rfs` `(unit, stimulus, *features)` (e.g. `gradient_rfs`'s
    `(unit, stimulus, channel, y, x)`; numpy or xarray; without a `unit` dim, one unit).

    For each unit the image-by-image Gram matrix `G = Xc Xc^T` of its mean-centred gRFs `Xc` (stimulus x
    pixels) is eigendecomposed (the study's method; exact and cheap when there are fewer images than pixels):
    eigenvalues `lambda`, components `V = Xc^T U / sqrt(lambda)` (unit-norm images; sign: largest entry > 0).

    Returns an `xr.Dataset` with `explained_variance` `(unit, component)` (`lambda / (N - 1)`, as scikit-learn),
    `explained_variance_ratio` (share of the total variance), `components` `(unit, component, *features)`,
    `mean` `(unit, *features)` and `scores` `(unit, stimulus, component)` (= `Xc V`). `n_components` defaults to
    `min(N - 1, n_features)`.
    """
    data, feat = _per_unit(rfs, "rfs")
    n_units, n, d = data.shape
    if n < 2:
        raise AnalysisInputError(f"rfs: PCA needs at least 2 stimuli per unit, got {n}")
    k = min(n - 1, d) if n_components is None else int(n_components)
    if not 1 <= k <= min(n, d):
        raise AnalysisInputError(f"n_components must be in 1..{min(n, d)}, got {n_components!r}")
    ev = np.zeros((n_units, k))
    ratio = np.zeros((n_units, k))
    comps = np.zeros((n_units, k, d), np.float32)
    scores = np.zeros((n_units, n, k), np.float32)
    means = np.zeros((n_units, d), np.float32)
    for u in range(n_units):
        x = np.asarray(data[u], np.float64)
        mean, lam, vecs, total = _gram_eigen(x)
        xc = x - mean
        v = _components(xc, lam[:k], vecs[:, :k])
        means[u], comps[u], scores[u] = mean, v, xc @ v.T
        ev[u] = lam[:k] / (n - 1)
        ratio[u] = lam[:k] / total if total > 0 else 0.0
    out = xr.Dataset({
        "explained_variance": (("unit", "component"), ev),
        "explained_variance_ratio": (("unit", "component"), ratio),
        "components": (("unit", "component", *feat.dims), comps.reshape((n_units, k, *feat.shape))),
        "mean": (("unit", *feat.dims), means.reshape((n_units, *feat.shape))),
        "scores": (("unit", "stimulus", "component"), scores),
    }, coords={**feat.unit_coords, "stimulus": feat.stimulus, "component": np.arange(k), **feat.coords})
    out.attrs["method"] = "eigendecomposition of the image-by-image Gram matrix of mean-centred gradient RFs"
    return out


def rf_projection(rfs: Any, images: Any, n_components: int | None = None, variance: float = 0.99,
                  centre: bool = True) -> xr.Dataset:
    """Images projected into each unit's gradient-RF eigenspace: `P x` with `P = V^T V`, `V` the unit's first
    principal components of its gRFs (`rf_pca`), the kernel-PCA projection of the study ("what is projected
    out" is what the unit's gRFs never vary in).

    `rfs` `(unit, stimulus, *features)`; `images` `(stimulus, *features)` (the same features, e.g. channel, y,
    x), with `centre` minus their mean image first (what all images share, e.g. a grey background, would
    otherwise dominate every projection); `n_components`: a fixed number of components per unit, else the
    fewest that explain `variance` of the gRFs' variance. Returns an `xr.Dataset` with `projection`
    `(unit, stimulus, *features)`, `n_components` and `variance_kept` `(unit,)`.
    """
    data, feat = _per_unit(rfs, "rfs")
    n_units, n, d = data.shape
    imgs = np.asarray(images.values if isinstance(images, xr.DataArray) else images, np.float64)
    if imgs.ndim < 2 or int(np.prod(imgs.shape[1:])) != d:
        raise AnalysisInputError(f"images must be (stimulus, *features) with the rfs' {d} features "
                                 f"{tuple(feat.shape)}, got shape {imgs.shape}")
    if not 0 < variance <= 1:
        raise AnalysisInputError(f"variance must be in (0, 1], got {variance!r}")
    flat = imgs.reshape(len(imgs), d)
    if centre:
        flat = flat - flat.mean(axis=0)
    proj = np.zeros((n_units, len(imgs), d), np.float32)
    kept = np.zeros(n_units, np.int64)
    share = np.zeros(n_units)
    for u in range(n_units):
        x = np.asarray(data[u], np.float64)
        mean, lam, vecs, total = _gram_eigen(x)
        rank = int((lam > lam[0] * 1e-10).sum()) if lam[0] > 0 else 0
        cum = np.cumsum(lam) / total if total > 0 else np.zeros_like(lam)
        k = min(int(n_components), rank) if n_components is not None else \
            min(int(np.searchsorted(cum, variance - 1e-12) + 1), rank)
        v = _components(x - mean, lam[:k], vecs[:, :k])
        proj[u] = (flat @ v.T) @ v
        kept[u], share[u] = k, cum[k - 1] if k else 0.0
    stim = images["stimulus"].values if isinstance(images, xr.DataArray) and "stimulus" in images.coords \
        else np.arange(len(imgs))
    return xr.Dataset({
        "projection": (("unit", "stimulus", *feat.dims), proj.reshape((n_units, len(imgs), *feat.shape))),
        "n_components": ("unit", kept), "variance_kept": ("unit", share),
    }, coords={**feat.unit_coords, "stimulus": stim, **feat.coords},
        attrs={"variance": float(variance), "fixed_components": -1 if n_components is None else int(n_components),
               "centre": int(bool(centre))})


def _gram_eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, eigenvalues (descending, >= 0), eigenvectors of the Gram matrix of the mean-centred rows of `x`, and
    its trace (the total sum of squares)."""
    mean = x.mean(axis=0)
    xc = x - mean
    gram = xc @ xc.T
    lam, vecs = np.linalg.eigh(gram)
    order = np.argsort(lam)[::-1]
    return mean, np.clip(lam[order], 0, None), vecs[:, order], float(np.trace(gram))


def _components(xc: np.ndarray, lam: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Unit-norm principal axes `(k, D)` from Gram eigenpairs, sign fixed so each one's largest entry is > 0."""
    ok = lam > (lam[0] * 1e-12 if len(lam) and lam[0] > 0 else np.inf)
    v = np.zeros((len(lam), xc.shape[1]))
    v[ok] = (xc.T @ vecs[:, ok] / np.sqrt(lam[ok])).T
    big = np.take_along_axis(v, np.abs(v).argmax(axis=1)[:, None], axis=1)
    return v * np.where(big < 0, -1.0, 1.0)


class _Features:
    """How `_per_unit` flattened an input: feature dims/shape/coords, unit and stimulus coordinates."""

    def __init__(self, dims: tuple, shape: tuple, coords: dict, unit_coords: dict, stimulus: np.ndarray):
        self.dims, self.shape, self.coords, self.unit_coords, self.stimulus = dims, shape, coords, unit_coords, stimulus


def _per_unit(rfs: Any, name: str) -> tuple[np.ndarray, _Features]:
    """`(unit, stimulus, *features)` as a `(unit, stimulus, D)` array and what is needed to shape results back."""
    if isinstance(rfs, xr.DataArray):
        da = rfs if "unit" in rfs.dims else rfs.expand_dims("unit")
        if "stimulus" not in da.dims:
            raise AnalysisInputError(f"{name}: need a 'stimulus' dim, got dims {da.dims}")
        da = da.transpose("unit", "stimulus", ...)
        dims = tuple(da.dims[2:])
        coords = {d: da[d].values for d in dims if d in da.coords}
        unit_coords = {k: ("unit", v.values) for k, v in da.coords.items() if v.dims == ("unit",) and k != "unit"}
        if "unit" in da.coords:
            unit_coords["unit"] = da["unit"].values
        stim = da["stimulus"].values if "stimulus" in da.coords else np.arange(da.sizes["stimulus"])
        arr = np.asarray(da.values)
    else:
        arr = np.asarray(rfs)
        if arr.ndim < 3:
            raise AnalysisInputError(f"{name} must be (unit, stimulus, *features), got shape {arr.shape}")
        dims = ("channel", "y", "x")[-(arr.ndim - 2):] if arr.ndim <= 5 else tuple(f"f{i}" for i in range(arr.ndim - 2))
        coords, unit_coords, stim = {}, {}, np.arange(arr.shape[1])
    shape = tuple(arr.shape[2:])
    return arr.reshape(arr.shape[0], arr.shape[1], -1), _Features(dims, shape, coords, unit_coords, stim)


# ----------------------------------------------------------------------------------------------------------
# RF geometry and saliency


def rf_geometry(maps: Any, z: float = 0.0) -> xr.Dataset:
    """Centre of mass, extent and ON/OFF balance of RF maps `(..., y, x)` (xarray: a `channel` dim is summed
    first, i.e. the map of sensitivity to luminance; numpy: no channel axis).

    Weights are `|map|`; with `z > 0` only pixels with `|map| > z * sigma` count, sigma the map's noise s.d.
    (1.4826 x the median absolute deviation: robust when the RF covers a minority of the pixels, as for
    reverse-correlation maps). `centre_x`, `centre_y` (px), `size` = sqrt(sum w |p - c|^2 / (2 sum w)) (px:
    the s.d. of a Gaussian RF), `on_off` = (ON - OFF) / (ON + OFF) over the positive and negative parts (+1 all
    ON, -1 all OFF), `peak` = max |map|. A map with no weight gives NaN.
    """
    if isinstance(maps, xr.DataArray):
        da = maps.sum("channel") if "channel" in maps.dims else maps
        if not {"y", "x"} <= set(da.dims):
            raise AnalysisInputError(f"maps need dims 'y' and 'x', got {da.dims}")
        da = da.transpose(..., "y", "x")
        ys = da["y"].values if "y" in da.coords else np.arange(da.sizes["y"]) + 0.5
        xs = da["x"].values if "x" in da.coords else np.arange(da.sizes["x"]) + 0.5
        lead_dims = da.dims[:-2]
        lead_coords = {k: v for k, v in da.coords.items() if set(v.dims) <= set(lead_dims)}
        s = np.asarray(da.values, np.float64)
    else:
        s = np.asarray(maps, np.float64)
        if s.ndim < 2:
            raise AnalysisInputError(f"maps must be (..., y, x), got shape {s.shape}")
        ys, xs = np.arange(s.shape[-2]) + 0.5, np.arange(s.shape[-1]) + 0.5
        lead_dims = ("unit",)[:s.ndim - 2] if s.ndim <= 3 else tuple(f"dim_{i}" for i in range(s.ndim - 2))
        lead_coords = {}
    lead = s.shape[:-2]
    s = s.reshape(-1, s.shape[-2], s.shape[-1])
    a = np.abs(s)
    if z > 0:
        med = np.median(s, axis=(1, 2), keepdims=True)
        sigma = 1.4826 * np.median(np.abs(s - med), axis=(1, 2), keepdims=True)
        mask = a > z * sigma
    else:
        mask = np.ones_like(a, bool)
    w = np.where(mask, a, 0.0)
    total = w.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (w.sum(axis=1) @ xs) / total
        cy = (w.sum(axis=2) @ ys) / total
        r2 = (w * ((xs[None, None, :] - cx[:, None, None]) ** 2 + (ys[None, :, None] - cy[:, None, None]) ** 2)).sum(axis=(1, 2))
        size = np.sqrt(r2 / (2 * total))
        on = np.where(mask, np.maximum(s, 0), 0).sum(axis=(1, 2))
        off = np.where(mask, np.maximum(-s, 0), 0).sum(axis=(1, 2))
        on_off = (on - off) / (on + off)
    out = {"centre_x": cx, "centre_y": cy, "size": size, "on_off": on_off, "peak": a.max(axis=(1, 2))}
    ds = xr.Dataset({k: (lead_dims, v.reshape(lead)) for k, v in out.items()}, coords=lead_coords)
    for k, u in (("centre_x", "px"), ("centre_y", "px"), ("size", "px")):
        ds[k].attrs["units"] = u
    ds.attrs["z"] = float(z)
    return ds


def saliency_peaks(maps: Any, sigma: float = 5.0) -> xr.Dataset:
    """Where each saliency map `(stimulus, y, x)` peaks after Gaussian smoothing of s.d. `sigma` px: `peak_x`,
    `peak_y` (pixel centres, px) per stimulus."""
    m = np.asarray(maps.values if isinstance(maps, xr.DataArray) else maps, np.float64)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise AnalysisInputError(f"saliency maps must be (stimulus, y, x), got shape {m.shape}")
    if sigma > 0:
        m = ndimage.gaussian_filter(m, sigma=(0, sigma, sigma), mode="nearest")
    flat = m.reshape(len(m), -1).argmax(axis=1)
    py, px = np.unravel_index(flat, m.shape[1:])
    stim = maps["stimulus"].values if isinstance(maps, xr.DataArray) and "stimulus" in maps.coords else np.arange(len(m))
    return xr.Dataset({"peak_x": ("stimulus", px + 0.5), "peak_y": ("stimulus", py + 0.5)},
                      coords={"stimulus": stim}, attrs={"sigma": float(sigma)})


def saliency_shift(centre_x: Any, centre_y: Any, peak_x: Any, peak_y: Any, n_shuffles: int = 0,
                   seed: int = 0) -> xr.Dataset:
    """Do a unit's RFs move towards the salient part of each image? One number per unit.

    `centre_x`, `centre_y`: RF centres `(unit, stimulus)` px (e.g. `rf_geometry` of gradient RFs; NaN = none);
    `peak_x`, `peak_y`: the saliency peak per stimulus `(stimulus,)` px. With `c` the unit's mean RF centre,
    `d_s` the RF's shift on image s from `c` and `o_s` the saliency peak's offset from `c`:

    - `saliency_shift` (px): mean over images of `d_s . o_s / |o_s|`, how far the RF moves towards the peak
      (> 0 towards, 0 no relation, < 0 away);
    - `saliency_alignment`: `sum d.o / sqrt(sum |d|^2 sum |o|^2)` in [-1, 1], the correlation of the two vectors;
    - `rf_shift` (px): mean `|d_s|`, how far the RF moves at all;
    - `p_value` (with `n_shuffles`): the share of shuffles of the images' saliency peaks (seeded) whose
      `saliency_shift` is at least the observed one, one-sided, `(1 + count) / (1 + n_shuffles)`.
    """
    cx, cy = (np.asarray(v.values if isinstance(v, xr.DataArray) else v, np.float64) for v in (centre_x, centre_y))
    px, py = (np.asarray(v.values if isinstance(v, xr.DataArray) else v, np.float64) for v in (peak_x, peak_y))
    if cx.ndim == 1:
        cx, cy = cx[None], cy[None]
    if cx.shape != cy.shape or cx.ndim != 2 or px.shape != (cx.shape[1],) or py.shape != px.shape:
        raise AnalysisInputError(f"centres must be (unit, stimulus) and peaks (stimulus,) of the same stimuli, got "
                                 f"{cx.shape}, {cy.shape}, {px.shape}, {py.shape}")
    valid = np.isfinite(cx) & np.isfinite(cy)
    n_valid = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (np.where(valid, cx, 0).sum(axis=1) / n_valid)[:, None]
        my = (np.where(valid, cy, 0).sum(axis=1) / n_valid)[:, None]
    dx, dy = np.where(valid, cx - mx, 0.0), np.where(valid, cy - my, 0.0)

    def toward(qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ox, oy = np.where(valid, qx[None] - mx, 0.0), np.where(valid, qy[None] - my, 0.0)
        norm = np.hypot(ox, oy)
        dot = dx * ox + dy * oy
        proj = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return proj.sum(axis=1) / n_valid, dot.sum(axis=1) / np.sqrt((dx ** 2 + dy ** 2).sum(axis=1)
                                                                        * (ox ** 2 + oy ** 2).sum(axis=1))

    shift, align = toward(px, py)
    data = {"saliency_shift": ("unit", shift), "saliency_alignment": ("unit", align),
            "rf_shift": ("unit", np.hypot(dx, dy).sum(axis=1) / np.maximum(n_valid, 1)),
            "mean_centre_x": ("unit", mx[:, 0]), "mean_centre_y": ("unit", my[:, 0])}
    if n_shuffles > 0:
        rng = np.random.default_rng(seed)
        count = np.zeros(len(cx))
        for _ in range(int(n_shuffles)):
            perm = rng.permutation(len(px))
            count += toward(px[perm], py[perm])[0] >= shift - 1e-12
        data["p_value"] = ("unit", (1 + count) / (1 + int(n_shuffles)))
    ds = xr.Dataset(data, coords=_lead_coords(centre_x, "unit"))
    for k in ("saliency_shift", "rf_shift", "mean_centre_x", "mean_centre_y"):
        ds[k].attrs["units"] = "px"
    ds.attrs.update(n_shuffles=int(n_shuffles), seed=int(seed))
    return ds


def _lead_coords(obj: Any, dim: str) -> dict[str, Any]:
    """The coordinates along `dim` of an xarray input (none for numpy)."""
    if isinstance(obj, xr.DataArray) and dim in obj.dims:
        return {k: v for k, v in obj.coords.items() if v.dims == (dim,)}
    return {}


# ----------------------------------------------------------------------------------------------------------
# classic RF mapping and preferred stimuli


def reverse_correlation(responses: Any, images: Any, pool: int = 1, normalize: bool = True) -> xr.DataArray:
    """Reverse correlation (the response-weighted average of the stimuli): each unit's linear RF map
    `(unit, channel, y, x)` from its responses to noise.

    Args:
        responses: `(stimulus, unit)` numpy or xarray (a DataArray's non-stimulus dim becomes `unit`, with its
            coordinates).
        images: the stimuli in the same order: an array `(stimulus, channel, y, x)`, an iterable of
            `(indices, images)` batches, or an object with `.batches()` (a `StimulusSet`), read once, so
            a large set is never held in memory.
        pool: average-pool the images by this factor first (e.g. the noise grid's cell size in px).
        normalize: divide by each pixel's stimulus variance, so the map is the linear filter `k` of
            `r = k . s + noise` (exact for white noise with independent pixels); else the plain covariance.

    The map is `cov(r, s_p) / var(s_p)` per pixel p: the mean-subtracted response-weighted average, which equals
    the classic spike-triggered average minus the mean stimulus, scaled, for non-negative responses; it also
    holds for signed activations. Returns float32 with coordinates `y`, `x` (pixel centres, px of the original
    images) and the unit's coordinates.
    """
    if isinstance(responses, xr.DataArray):
        if responses.ndim != 2 or "stimulus" not in responses.dims:
            raise AnalysisInputError(f"responses must be (stimulus, unit), got dims {responses.dims}")
        other = [d for d in responses.dims if d != "stimulus"][0]
        da = responses.transpose("stimulus", other)
        unit_coords = {k if k != other else "unit": ("unit", v.values) for k, v in da.coords.items()
                       if v.dims == (other,)}
        r = np.asarray(da.values, np.float64)
    else:
        r = np.asarray(responses, np.float64)
        if r.ndim == 1:
            r = r[:, None]
        if r.ndim != 2:
            raise AnalysisInputError(f"responses must be (stimulus, unit), got shape {r.shape}")
        unit_coords = {}
    if not np.isfinite(r).all():
        raise AnalysisInputError("responses contain NaN or inf; drop those stimuli first")
    if int(pool) != pool or pool < 1:
        raise AnalysisInputError(f"pool must be a positive integer, got {pool!r}")
    n = len(r)
    sum_ri = sum_i = sum_ii = None
    seen = 0
    for idx, batch in _image_batches(images, n):
        if len(idx) and int(np.max(idx)) >= n:
            raise AnalysisInputError(f"images give more stimuli than the {n} of the responses")
        x = pool_images(np.asarray(batch), int(pool)).astype(np.float64)
        shape = x.shape[1:]
        x = x.reshape(len(x), -1)
        if sum_ri is None:
            sum_ri, sum_i, sum_ii = np.zeros((r.shape[1], x.shape[1])), np.zeros(x.shape[1]), np.zeros(x.shape[1])
        sum_ri += r[idx].T @ x
        sum_i += x.sum(axis=0)
        sum_ii += (x * x).sum(axis=0)
        seen += len(idx)
    if seen != n:
        raise AnalysisInputError(f"images gave {seen} stimuli but responses have {n}")
    mean_r, mean_i = r.mean(axis=0), sum_i / n
    cov = sum_ri / n - mean_r[:, None] * mean_i[None]
    if normalize:
        var = sum_ii / n - mean_i ** 2
        cov = np.where(var > 1e-12, cov / np.where(var > 1e-12, var, 1.0), 0.0)
    c, h, w = shape
    coords = dict(unit_coords)
    coords.setdefault("unit", ("unit", np.arange(r.shape[1])))
    coords.update(channel=list(RGB) if c == 3 else np.arange(c), y=(np.arange(h) + 0.5) * pool,
                  x=(np.arange(w) + 0.5) * pool)
    return xr.DataArray(cov.reshape(r.shape[1], c, h, w).astype(np.float32), dims=("unit", "channel", "y", "x"),
                        coords=coords, name="rf", attrs={"n_stimuli": n, "pool": int(pool),
                                                         "normalize": int(bool(normalize))})


def _image_batches(images: Any, n: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    if hasattr(images, "batches"):
        yield from images.batches()
        return
    if isinstance(images, (np.ndarray, xr.DataArray)) or (hasattr(images, "shape") and hasattr(images, "__array__")):
        arr = images.transpose("stimulus", ...).values if isinstance(images, xr.DataArray) else np.asarray(images)
        if arr.ndim != 4:
            raise AnalysisInputError(f"images must be (stimulus, channel, y, x), got shape {arr.shape}")
        for lo in range(0, len(arr), 256):
            yield np.arange(lo, min(lo + 256, len(arr))), arr[lo:lo + 256]
        return
    for item in images:
        if not (isinstance(item, tuple) and len(item) >= 2):
            raise AnalysisInputError("images: an iterable must yield (indices, images) batches, as "
                                     "StimulusSet.batches() does")
        yield np.asarray(item[0]), item[1]


def pool_images(x: np.ndarray, pool: int) -> np.ndarray:
    """Mean over `pool` x `pool` blocks of `(B, C, H, W)` (H and W must be multiples of `pool`)."""
    if pool == 1:
        return x
    b, c, h, w = x.shape
    if h % pool or w % pool:
        raise AnalysisInputError(f"images of {h} x {w} px cannot be pooled by {pool}: choose a divisor")
    return x.reshape(b, c, h // pool, pool, w // pool, pool).mean(axis=(3, 5))


def preferred_stimuli(responses: Any, k: int = 8) -> xr.Dataset:
    """Each unit's `k` most and least driving stimuli (the study's example-based visualisation).

    `responses` `(stimulus, unit)` (xarray keeps the unit's coordinates). Returns an `xr.Dataset` along `unit`,
    `rank` (0 = strongest): `top_stimulus`, `top_response`, `bottom_stimulus` (rank 0 = weakest),
    `bottom_response`; stimuli are the `stimulus` coordinate's labels (else positions). NaN responses are
    never chosen.
    """
    if isinstance(responses, xr.DataArray):
        if responses.ndim != 2 or "stimulus" not in responses.dims:
            raise AnalysisInputError(f"responses must be (stimulus, unit), got dims {responses.dims}")
        other = [d for d in responses.dims if d != "stimulus"][0]
        da = responses.transpose("stimulus", other)
        labels = da["stimulus"].values if "stimulus" in da.coords else np.arange(da.sizes["stimulus"])
        coords = {k2 if k2 != other else "unit": ("unit", v.values) for k2, v in da.coords.items() if v.dims == (other,)}
        r = np.asarray(da.values, np.float64)
    else:
        r = np.asarray(responses, np.float64)
        if r.ndim != 2:
            raise AnalysisInputError(f"responses must be (stimulus, unit), got shape {r.shape}")
        labels, coords = np.arange(len(r)), {}
    if int(k) != k or not 1 <= k <= len(r):
        raise AnalysisInputError(f"k must be in 1..{len(r)} (the number of stimuli), got {k!r}")
    top = np.argsort(np.where(np.isnan(r), -np.inf, r), axis=0, kind="stable")[::-1][:k].T
    bottom = np.argsort(np.where(np.isnan(r), np.inf, r), axis=0, kind="stable")[:k].T
    cols = np.arange(r.shape[1])[:, None]
    coords.setdefault("unit", ("unit", np.arange(r.shape[1])))
    return xr.Dataset({"top_stimulus": (("unit", "rank"), labels[top]), "top_response": (("unit", "rank"), r[top, cols]),
                       "bottom_stimulus": (("unit", "rank"), labels[bottom]),
                       "bottom_response": (("unit", "rank"), r[bottom, cols])},
                      coords={**coords, "rank": np.arange(k)})
