"""Channel alignment: linear maps that put the features of different sites / subjects into one shared space
before they are clustered together (AlignedCut, section 2.1).

- `procrustes_alignment`: orthogonal Procrustes of every site onto a reference site (same width, paired
  nodes: the same stimuli and tokens); no brain data.
- `cca_alignment`: generalised CCA (MAXVAR): a shared `dim`-dimensional space most correlated with every
  site; widths may differ; no brain data.
- `brain_alignment`: the study's learned maps, trained to predict a shared target (e.g. brain responses per
  stimulus) through one linear head from token-averaged aligned features, with the eigenvector-preservation
  regulariser ||V V^T - V' V'^T||^2 (eq. 5: V, V' the top normalized-cut eigenvectors of a mini-batch of
  nodes before and after alignment), zero-centre and covariance regularisers (appendix C.1) and an L1 brain
  loss (C.2). It needs gradients through an eigendecomposition, so it runs gradient descent in torch
  (imported inside the function).

Every fit returns a `ChannelAlignment`: `align(features, key)` maps (..., D_key) -> (..., dim); it is also a
`transform(block, key)` for `analyses.nystrom_ncut` (key = (subject, site) or a site name).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator, Mapping

import numpy as np
import scipy.linalg
import xarray as xr

from .ratemaps import AnalysisInputError


@dataclass
class ChannelAlignment:
    """Per-site affine maps x -> (x - offsets[key]) @ maps[key] + biases[key] (shapes (D_key,), (D_key, dim),
    (dim,))."""

    maps: dict[Hashable, np.ndarray]
    offsets: dict[Hashable, np.ndarray]
    biases: dict[Hashable, np.ndarray]
    method: str
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(next(iter(self.maps.values())).shape[1])

    def _key(self, key: Any) -> Hashable:
        if key in self.maps:
            return key
        if isinstance(key, tuple) and len(key) == 2:
            for k in (key[1], key if key[0] else key[1]):
                if k in self.maps:
                    return k
        raise AnalysisInputError(f"key {key!r} has no alignment map; known: {list(self.maps)}")

    def align(self, features: Any, key: Any) -> Any:
        """Map features (..., D_key) of site `key` (numpy, torch or DataArray with the feature dim last or
        named unit/channel) to (..., dim); a DataArray gets the feature dim `channel`."""
        k = self._key(key)
        w, off, sh = self.maps[k], self.offsets[k], self.biases[k]
        if isinstance(features, xr.DataArray):
            fdim = next((d for d in features.dims if str(d).split("_")[0] in ("unit", "channel", "feature")),
                        features.dims[-1])
            da = features.transpose(..., fdim)
            vals = (np.asarray(da.values, dtype=np.float32) - off) @ w + sh
            coords = {c: v for c, v in da.coords.items() if fdim not in v.dims}
            return xr.DataArray(vals.astype(np.float32), dims=da.dims[:-1] + ("channel",), coords=coords,
                                attrs={"aligned": self.method})
        if type(features).__module__.startswith("torch"):
            import torch  # only for torch input
            t = lambda a: torch.as_tensor(a, dtype=features.dtype, device=features.device)  # noqa: E731
            return (features - t(off)) @ t(w) + t(sh)
        x = np.asarray(features, dtype=np.float32)
        if x.shape[-1] != w.shape[0]:
            raise AnalysisInputError(f"features of {k!r} have {x.shape[-1]} channels, the map expects {w.shape[0]}")
        return ((x - off) @ w + sh).astype(np.float32)

    __call__ = lambda self, block, key: self.align(block, key)  # noqa: E731 - transform(block, key)

    def to_dataset(self) -> xr.Dataset:
        """The maps as an `xr.Dataset`: variables map_<key> (in_<key>, channel), offset_<key>, bias_<key>."""
        data = {}
        for k, w in self.maps.items():
            name = "__".join(map(str, k)) if isinstance(k, tuple) else str(k)
            data[f"map_{name}"] = ((f"in_{name}", "channel"), w)
            data[f"offset_{name}"] = ((f"in_{name}",), self.offsets[k])
            data[f"bias_{name}"] = (("channel",), self.biases[k])
        return xr.Dataset(data, attrs={"method": self.method, **{k: v for k, v in self.info.items()
                                                                   if isinstance(v, (int, float, str))}})


def _views(features: Mapping[Hashable, Any], pool: str | None) -> dict[Hashable, np.ndarray]:
    """Paired observation matrices (n, D_k): nodes flattened, or per-stimulus token means with pool='mean'."""
    if not isinstance(features, Mapping) or len(features) < 2:
        raise AnalysisInputError("features must be a mapping of at least two sites -> (stimulus, [token,] unit)")
    out = {}
    for k, v in features.items():
        if isinstance(v, xr.DataArray):
            fdim = next((d for d in v.dims if str(d).split("_")[0] in ("unit", "channel", "feature")), v.dims[-1])
            v = v.transpose(..., fdim).values
        x = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float64)
        if x.ndim < 2:
            raise AnalysisInputError(f"features[{k!r}] must be (stimulus, [token,] unit), got shape {x.shape}")
        if pool == "mean" and x.ndim > 2:
            x = x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
        out[k] = x.reshape(-1, x.shape[-1])
        if not np.isfinite(out[k]).all():
            raise AnalysisInputError(f"features[{k!r}] contain NaN or inf")
    n = {x.shape[0] for x in out.values()}
    if len(n) != 1:
        raise AnalysisInputError(f"sites have different numbers of paired observations {sorted(n)}; pass the "
                                 "same stimuli (and tokens), or pool='mean' to pair per stimulus")
    return out


def procrustes_alignment(features: Mapping[Hashable, Any], reference: Hashable | None = None,
                         pool: str | None = None) -> ChannelAlignment:
    """Orthogonal map of every site onto `reference` (default the first): R = argmin ||(X_k - mu_k) R -
    (X_ref - mu_ref)||_F with R^T R = I (scipy `orthogonal_procrustes`); x -> (x - mu_k) R + mu_ref.

    features: site -> (stimulus, [token,] unit), equal widths, paired rows (pool='mean': fit on per-stimulus
    token means, apply to tokens). info holds each site's relative residual after alignment.
    """
    views = _views(features, pool)
    ref = next(iter(views)) if reference is None else reference
    if ref not in views:
        raise AnalysisInputError(f"reference {ref!r} is not among the sites {list(views)}")
    widths = {x.shape[1] for x in views.values()}
    if len(widths) != 1:
        raise AnalysisInputError(f"Procrustes needs equal widths, got {sorted(widths)}; use cca_alignment")
    mu = {k: x.mean(0) for k, x in views.items()}
    y = views[ref] - mu[ref]
    maps, resid = {}, {}
    for k, x in views.items():
        r, _ = scipy.linalg.orthogonal_procrustes(x - mu[k], y)
        maps[k] = r.astype(np.float32)
        resid[str(k)] = float(np.linalg.norm((x - mu[k]) @ r - y) / np.linalg.norm(y))
    return ChannelAlignment(maps, {k: m.astype(np.float32) for k, m in mu.items()},
                            {k: mu[ref].astype(np.float32) for k in views}, "procrustes", {"reference": str(ref), "residual": resid})


def cca_alignment(features: Mapping[Hashable, Any], dim: int = 64, reg: float = 1e-3,
                  pool: str | None = None) -> ChannelAlignment:
    """Generalised CCA (MAXVAR): shared space G (n, dim) = top left singular vectors of the concatenated
    whitened bases of all sites; each site's map W_k = argmin ||(X_k - mu_k) W - G sqrt(n)||^2 + ridge.

    features: site -> (stimulus, [token,] unit), widths may differ, paired rows. reg: ridge, relative to the
    mean eigenvalue of each site's covariance. Aligned features are zero-mean with about unit variance per
    channel. info: `correlation` (dim,) = the shared components' mean squared canonical correlation.
    """
    views = _views(features, pool)
    n = next(iter(views.values())).shape[0]
    if not 1 <= dim < n:
        raise AnalysisInputError(f"dim must be between 1 and the number of paired observations ({n}), got {dim}")
    bases, mu, covs = [], {}, {}
    for k, x in views.items():
        mu[k] = x.mean(0)
        xc = x - mu[k]
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        lam = s ** 2
        lam_reg = lam + reg * lam.mean()
        bases.append(u * np.sqrt(lam / lam_reg))  # whitened (ridge) basis of the site's column space
        covs[k] = (vt, s, lam_reg)
    g, sv, _ = np.linalg.svd(np.concatenate(bases, axis=1), full_matrices=False)
    g = g[:, :dim] * np.sqrt(n)
    maps = {}
    for k, x in views.items():
        vt, s, lam_reg = covs[k]
        xc = x - mu[k]
        maps[k] = (vt.T @ ((vt @ (xc.T @ g)) / lam_reg[:, None])).astype(np.float32)
    corr = sv[:dim] ** 2 / len(views)
    return ChannelAlignment(maps, {k: m.astype(np.float32) for k, m in mu.items()},
                            {k: np.zeros(dim, np.float32) for k in views}, "cca", {"dim": dim, "reg": reg, "correlation": corr})


def brain_alignment(features: Mapping[Hashable, Any], target: Any, dim: int = 64, *, combine: str = "each",
                    eig_weight: float = 1.0, center_weight: float = 0.1, cov_weight: float = 0.1,
                    n_eig: int = 10, batch_nodes: int = 256, t: float = 1.0, steps: int = 500,
                    lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0,
                    device: str | None = None) -> ChannelAlignment:
    """Learned channel alignment guided by a shared target (the study's brain-guided alignment).

    features: site -> (stimulus, token, unit) (or (stimulus, unit)) features of the same stimuli; target:
    (stimulus, voxel) responses (brain data or any shared per-stimulus target). Maps W_k (D_k, dim) + bias;
    prediction = mean over tokens of the aligned features, then one shared linear head (dim -> voxel).
    combine: "each" (every site predicts the target on its own through the shared head: the maps are
    identifiable, channels mean the same in every site) or "sum" (eq. 2 of the study: the sites' pooled
    aligned features are summed, then predicted; only the sum is constrained). Loss = mean L1 brain error
    + eig_weight * ||V V^T - V' V'^T||_F^2 / b^2 (eq. 5; V, V' the top `n_eig` eigenvectors of D^-1/2 A D^-1/2
    on `batch_nodes` random nodes of each site, drawn afresh every step, before/after alignment, A =
    exp(-(1 - cos) / t)) +
    center_weight * ||mean z||^2 + cov_weight * mean off-diagonal covariance^2 (C.1). Adam, `steps` full-batch
    steps, seeded. info: final loss terms and the per-site R^2 of the target.
    """
    import torch  # lazily: gradient descent through an eigendecomposition

    if combine not in ("each", "sum"):
        raise AnalysisInputError(f"combine must be 'each' or 'sum', got {combine!r}")
    if not isinstance(features, Mapping) or not features:
        raise AnalysisInputError("features must be a mapping site -> (stimulus, [token,] unit)")
    y = np.asarray(target.values if isinstance(target, xr.DataArray) else target, dtype=np.float32)
    if y.ndim == 1:
        y = y[:, None]
    dev = torch.device(device or "cpu")
    gen = torch.Generator().manual_seed(seed)
    xs = {}
    for k, v in features.items():
        if isinstance(v, xr.DataArray):
            fdim = next((d for d in v.dims if str(d).split("_")[0] in ("unit", "channel", "feature")), v.dims[-1])
            v = v.transpose("stimulus", ..., fdim).values if "stimulus" in v.dims else v.transpose(..., fdim).values
        x = np.asarray(v, dtype=np.float32)
        x = x[:, None, :] if x.ndim == 2 else x.reshape(x.shape[0], -1, x.shape[-1])
        if x.shape[0] != y.shape[0]:
            raise AnalysisInputError(f"features[{k!r}] has {x.shape[0]} stimuli, target has {y.shape[0]}")
        xs[k] = torch.as_tensor(x, device=dev)
    keys = list(xs)
    mu = {k: xs[k].reshape(-1, xs[k].shape[-1]).mean(0) for k in keys}
    scale = {k: xs[k].reshape(-1, xs[k].shape[-1]).std(0).mean().clamp_min(1e-6) for k in keys}
    ws = {k: (torch.randn(xs[k].shape[-1], dim, generator=gen) / (xs[k].shape[-1] ** 0.5 * scale[k]))
          .to(dev).requires_grad_() for k in keys}
    bs = {k: torch.zeros(dim, device=dev, requires_grad=True) for k in keys}
    yt = torch.as_tensor(y, device=dev)
    head = (torch.randn(dim, y.shape[1], generator=gen) / dim ** 0.5).to(dev).requires_grad_()
    head_b = yt.mean(0).clone().requires_grad_()
    params = list(ws.values()) + list(bs.values()) + [head, head_b]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def top_projector(z: torch.Tensor) -> torch.Tensor:
        zn = torch.nn.functional.normalize(z, dim=1)
        a = torch.exp((zn @ zn.T - 1.0) / t)
        s = a.sum(1).rsqrt()
        _, v = torch.linalg.eigh(a * s[:, None] * s[None, :])
        v = v[:, -n_eig:]
        return v @ v.T

    flats = {k: xs[k].reshape(-1, xs[k].shape[-1]) for k in keys}
    # tiny per-step tensors: intra-op threads cost more than they give (on a shared 2-core machine, 20x)
    small = sum(x.numel() for x in xs.values()) < 2_000_000
    with _threads(torch, 1 if small else None):
        terms = {}
        for _ in range(steps):
            opt.zero_grad()
            eig = center = cov = 0.0
            pooled = []
            for k in keys:
                z = (xs[k] - mu[k]) @ ws[k] + bs[k]              # (stimulus, token, dim)
                pooled.append(z.mean(1))
                flat = z.reshape(-1, dim)
                center = center + flat.mean(0).pow(2).sum()
                c = torch.cov(flat.T)
                cov = cov + (c - torch.diag(torch.diag(c))).pow(2).mean()
                if eig_weight:  # eq. 5 on a fresh random mini-batch of nodes
                    idx = torch.randperm(flat.shape[0], generator=gen)[:batch_nodes].to(dev)
                    with torch.no_grad():
                        p0 = top_projector(flats[k][idx] - mu[k])
                    eig = eig + (top_projector(flat[idx]) - p0).pow(2).mean()
            if combine == "sum":
                brain = (torch.stack(pooled).sum(0) @ head + head_b - yt).abs().mean()
            else:
                brain = sum((p @ head + head_b - yt).abs().mean() for p in pooled) / len(keys)
            n = len(keys)
            loss = brain + eig_weight * eig / n + center_weight * center / n + cov_weight * cov / n
            loss.backward()
            opt.step()
            terms = {"loss": float(loss.detach()), "brain_l1": float(brain.detach()),
                     "eig": float(torch.as_tensor(eig).detach()) / n, "center": float(center.detach()) / n,
                     "cov": float(cov.detach()) / n}
    with torch.no_grad():
        r2 = {}
        for k in keys:
            pred = (((xs[k] - mu[k]) @ ws[k] + bs[k]).mean(1) @ head + head_b).cpu().numpy()
            r2[str(k)] = float(1 - ((pred - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
        maps = {k: ws[k].detach().cpu().numpy().astype(np.float32) for k in keys}
        offsets = {k: mu[k].cpu().numpy().astype(np.float32) for k in keys}
        biases = {k: bs[k].detach().cpu().numpy().astype(np.float32) for k in keys}
    return ChannelAlignment(maps, offsets, biases, "brain",
                            {"combine": combine, "eig_weight": eig_weight, "steps": steps, **terms, "r2": r2,
                             "head": head.detach().cpu().numpy(), "head_bias": head_b.detach().cpu().numpy()})


@contextmanager
def _threads(torch: Any, n: int | None) -> Iterator[None]:
    """Run a block with `n` torch intra-op threads (None: unchanged), restoring the setting afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
