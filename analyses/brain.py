"""Brain data for RSA: measured responses to the same stimuli (per subject and region of interest), their RDMs,
the leave-one-subject-out noise ceiling, and model-brain RSA per site.

Responses are an `xr.Dataset` with one variable per ROI, dims `(subject, stimulus, <channel dim>)` (e.g.
`voxel_V1`: each ROI has its own channel dim, as ROIs differ in size); `load_brain` reads them from a netCDF file
with a `stimulus` dim (an optional `subject` dim), an `.npy` array `(stimulus, channel)` (one subject, one ROI), or
an Algonauts 2023 (NSD) folder (subjects differ in vertices: channels are NaN-padded to the largest, and each
subject's RDM uses its own). Rows are matched to the stimulus set by order (stimulus i = row i).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .ratemaps import AnalysisInputError
from .rsa import METHODS, as_patterns, compare_rdms, rank, rdm


def load_brain(path: str | Path, rois: list[str] | None = None) -> xr.Dataset:
    """Brain responses as `(subject, stimulus, channel)` per ROI variable (see the module docstring).

    Algonauts 2023: `path` holds `subjNN/training_split/training_fmri/{lh,rh}_training_fmri.npy` (stimulus x
    vertex) and, where present, `subjNN/roi_masks/{lh,rh}.<family>_challenge_space.npy` with
    `mapping_<family>.npy` (label -> ROI name); ROIs are then the named regions of both hemispheres (e.g.
    `V1v`, `FFA-1`), else the two hemispheres `lh`, `rh`. `rois` keeps only those named.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AnalysisInputError(f"brain data {path} not found")
    if path.is_dir():
        ds = _load_algonauts(path)
    elif path.suffix == ".npy":
        arr = np.load(path)
        if arr.ndim != 2:
            raise AnalysisInputError(f"{path}: a .npy of brain responses must be (stimulus, channel), got {arr.shape}")
        ds = xr.Dataset({"roi": (("subject", "stimulus", "voxel_roi"), arr[None])}, coords={"subject": ["subject"]})
    else:
        with xr.open_dataset(path) as f:
            src = f.load()
        ds = _from_netcdf(src, path)
    if rois is not None:
        missing = [r for r in rois if r not in ds.data_vars]
        if missing:
            raise AnalysisInputError(f"ROI(s) {missing} not in {path} (ROIs: {', '.join(map(str, ds.data_vars))})")
        ds = ds[list(rois)]
    return ds


def _from_netcdf(src: xr.Dataset | xr.DataArray, path: Path) -> xr.Dataset:
    if isinstance(src, xr.DataArray):
        src = src.to_dataset(name=src.name or "roi")
    out = {}
    for name, da in src.data_vars.items():
        if "stimulus" not in da.dims:
            continue
        if "subject" not in da.dims:
            da = da.expand_dims(subject=["subject"])
        other = [d for d in da.dims if d not in ("subject", "stimulus")]
        flat = da.transpose("subject", "stimulus", *other).values.reshape(da.sizes["subject"], da.sizes["stimulus"], -1)
        out[str(name)] = xr.DataArray(flat, dims=("subject", "stimulus", f"voxel_{name}"),
                                      coords={"subject": [str(s) for s in da["subject"].values]})
    if not out:
        raise AnalysisInputError(f"{path} has no variable with a 'stimulus' dim (variables: {', '.join(map(str, src))})")
    return xr.Dataset(out)


def _load_algonauts(root: Path) -> xr.Dataset:
    subjects = sorted(p for p in root.glob("subj*") if p.is_dir())
    if not subjects:
        raise AnalysisInputError(f"{root}: no subjNN folders (the Algonauts 2023 layout) and not a file")
    per_roi: dict[str, list[np.ndarray]] = {}
    for subj in subjects:
        fmri = subj / "training_split" / "training_fmri"
        hemis = {h: np.load(fmri / f"{h}_training_fmri.npy") for h in ("lh", "rh")
                 if (fmri / f"{h}_training_fmri.npy").is_file()}
        if not hemis:
            raise AnalysisInputError(f"{fmri}: no lh/rh_training_fmri.npy")
        regions = _algonauts_regions(subj / "roi_masks", hemis)
        for name, values in (regions or hemis).items():
            per_roi.setdefault(name, []).append(values)
    out = {}
    for name, arrays in per_roi.items():
        if len(arrays) != len(subjects):
            continue  # a region not every subject has
        n_stim = {a.shape[0] for a in arrays}
        if len(n_stim) != 1:
            raise AnalysisInputError(f"{root}: subjects saw different numbers of stimuli ({sorted(n_stim)}); "
                                     "RSA across subjects needs the same stimuli")
        width = max(a.shape[1] for a in arrays)  # subjects differ in vertices: NaN-padded, dropped per subject
        out[name] = xr.DataArray(np.stack([np.pad(a.astype(np.float64), ((0, 0), (0, width - a.shape[1])),
                                                  constant_values=np.nan) for a in arrays]),
                                 dims=("subject", "stimulus", f"voxel_{name}"))
    return xr.Dataset(out, coords={"subject": [s.name for s in subjects]})


def _algonauts_regions(masks: Path, hemis: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    regions: dict[str, list[np.ndarray]] = {}
    for mapping in sorted(masks.glob("mapping_*.npy")) if masks.is_dir() else []:
        family = mapping.stem.removeprefix("mapping_")
        labels = np.load(mapping, allow_pickle=True).item()
        for h, values in hemis.items():
            f = masks / f"{h}.{family}_challenge_space.npy"
            if not f.is_file():
                continue
            mask = np.load(f)
            for label, name in labels.items():
                if int(label) > 0 and (mask == int(label)).any():
                    regions.setdefault(str(name), []).append(values[:, mask == int(label)])
    return {k: np.concatenate(v, axis=1) for k, v in regions.items()}


def subject_rdms(responses: xr.DataArray, metric: str = "correlation") -> np.ndarray:
    """`(subject, n_pairs)`: one RDM per subject of one ROI's responses `(subject, stimulus, channel)`; channels
    that are NaN for a subject (padding: subjects differ in vertices) are left out of that subject's RDM."""
    out = []
    for s in range(responses.sizes["subject"]):
        x = as_patterns(responses.isel(subject=s).values)
        out.append(rdm(x[:, np.isfinite(x).all(axis=0)], metric))
    return np.stack(out)


def pool_rdms(rdms: np.ndarray, method: str = "spearman") -> np.ndarray:
    """The group RDM that a comparison by `method` scores best (rsatoolbox's `pool_rdm`): the mean rank for rank
    comparisons, the mean of z-scored RDMs for Pearson."""
    rdms = np.atleast_2d(np.asarray(rdms, np.float64))
    if method == "pearson":
        z = (rdms - rdms.mean(axis=1, keepdims=True)) / rdms.std(axis=1, keepdims=True)
        return z.mean(axis=0)
    return rank(rdms).mean(axis=0)


def noise_ceiling(rdms: np.ndarray, method: str = "spearman") -> tuple[float, float]:
    """The leave-one-subject-out noise ceiling (Nili et al. 2014) of a group of subject RDMs `(subject, n_pairs)`:
    `(lower, upper)`, the mean over subjects of the comparison of each subject's RDM with the pooled RDM of the
    *other* subjects (lower) and of *all* subjects (upper). No model can be expected to score above the upper
    bound; a model at the lower bound explains what is shared across subjects."""
    if method not in METHODS:
        raise AnalysisInputError(f"unknown RDM comparison {method!r}; choose from {', '.join(METHODS)}")
    rdms = np.atleast_2d(np.asarray(rdms, np.float64))
    if len(rdms) < 2:
        raise AnalysisInputError("a leave-one-subject-out noise ceiling needs at least 2 subjects")
    everyone = pool_rdms(rdms, method)
    lower = [compare_rdms(r, pool_rdms(np.delete(rdms, s, axis=0), method), method) for s, r in enumerate(rdms)]
    upper = [compare_rdms(r, everyone, method) for r in rdms]
    return float(np.mean(lower)), float(np.mean(upper))


def model_brain_rsa(model_rdms: Mapping[str, Any], brain: xr.Dataset, method: str = "spearman",
                    metric: str = "correlation") -> xr.Dataset:
    """Model-brain RSA: every site's RDM (condensed, on the stimuli the brain saw) against every subject's RDM of
    every ROI. Returns `rsa` `(site, roi, subject)`, its subject mean `rsa_mean` `(site, roi)`, and the noise
    ceiling per ROI (`ceiling_lower`, `ceiling_upper`; NaN with one subject)."""
    sites = list(model_rdms)
    stack = np.stack([np.asarray(model_rdms[s], np.float64) for s in sites])
    rois = [str(r) for r in brain.data_vars]
    n_subj = brain.sizes["subject"]
    out = np.full((len(sites), len(rois), n_subj), np.nan)
    low, high = np.full(len(rois), np.nan), np.full(len(rois), np.nan)
    for k, roi in enumerate(rois):
        subj = subject_rdms(brain[roi], metric)
        if subj.shape[1] != stack.shape[1]:
            raise AnalysisInputError(f"ROI {roi}: brain RDMs cover {brain.sizes['stimulus']} stimuli but the model's "
                                     "RDMs another number; give responses to the same stimuli, in the same order")
        out[:, k, :] = compare_rdms(stack, subj, method)
        if n_subj > 1:
            low[k], high[k] = noise_ceiling(subj, method)
    return xr.Dataset(
        {"rsa": (("site", "roi", "subject"), out), "rsa_mean": (("site", "roi"), out.mean(axis=2)),
         "ceiling_lower": ("roi", low), "ceiling_upper": ("roi", high)},
        coords={"site": sites, "roi": rois, "subject": [str(s) for s in brain["subject"].values]},
        attrs={"method": method, "brain_metric": metric})
