"""The ncut step: normalized-cut eigenvectors of the recorded tokens (the spectral study, AlignedCut), per site
or jointly over sites, optionally after a channel alignment; features stream from the recording.

Result (`analyses/<name>.nc`): `eigenvectors (site, stimulus, token, eig)` float32 and `eigenvalue (site,
eig)`, with `token_row`/`token_col` on `token` (a convolutional site's map positions become tokens: token =
map_y * width + map_x). Per site (`joint = false`) every site is its own graph, so eigenvector k of one site
has nothing to do with eigenvector k of another; jointly, all sites' tokens are one graph and share one
eigenvector space (the study's AlignedCut), which the colour and trajectory figures need to compare sites.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import xarray as xr
from pydantic import Field, model_validator

from ..errors import RigError
from .base import Step, StepContext, StepSettings, register_step


class NcutSettings(StepSettings):
    type: Literal["ncut"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites (token or convolutional sites)")
    tokens: Literal["patches", "all"] = Field("patches", description="the recorded tokens to cluster: patch "
                                              "tokens only (no CLS / registers), or all of them")
    joint: bool = Field(False, description="one graph over all the sites' tokens (shared eigenvectors, as in "
                        "AlignedCut) instead of one graph per site")
    n_eig: int = Field(20, ge=2, description="eigenvectors kept")
    n_sample: int = Field(10000, ge=10, description="nodes solved exactly (Nystrom-like subgraph); graphs with "
                          "at most this many nodes are solved whole")
    knn: int = Field(10, ge=1, description="sampled neighbours averaged per node (3 to 10 in the study)")
    anchors: int | None = Field(None, ge=1, description="propagate from this many sampled nodes only (farthest "
                                "in eigenvector space; ncut-pytorch 3.x uses 1024): faster, smoother; default all")
    t: float = Field(1.0, gt=0, description="affinity temperature: A = exp(-(1 - cos) / t)")
    align: Literal["none", "procrustes", "cca", "brain"] = Field(
        "none", description="channel alignment before a joint cut: orthogonal Procrustes onto `reference`, "
        "generalised CCA into `align_dim` channels, or maps learned to predict the responses in `target`")
    reference: str | None = Field(None, description="Procrustes: the site the others are rotated onto "
                                  "(default the first)")
    align_dim: int = Field(64, ge=2, description="CCA / brain: channels of the shared space")
    align_stimuli: int = Field(32, ge=2, description="stimuli whose tokens fit the alignment (paired nodes)")
    target: str | None = Field(None, description="brain alignment: a netCDF file with responses (stimulus, ...) "
                               "of these stimuli, e.g. fMRI voxels (its first variable, or `target_var`)")
    target_var: str | None = Field(None, description="the variable of `target` to predict")
    align_steps: int = Field(300, ge=1, description="brain alignment: gradient steps")
    seed: int = 0

    @model_validator(mode="after")
    def _alignment(self) -> "NcutSettings":
        if self.align != "none" and not self.joint:
            raise ValueError("align needs joint = true (each site's own graph needs no shared channels)")
        if self.align == "brain" and not self.target:
            raise ValueError("align = 'brain' needs target = '<netCDF file of responses (stimulus, voxel)>'")
        if self.target and self.align != "brain":
            raise ValueError("target is only used with align = 'brain'")
        return self


def node_layout(da: xr.DataArray, tokens: str = "patches") -> xr.DataArray:
    """A recorded site as `(stimulus, <node dims>, unit)` for the cut: token sites keep their patch tokens
    (`tokens = "patches"`) or all; conv sites give `(stimulus, map_y, map_x, unit)`. Lazy."""
    if "token" in da.dims:
        if tokens == "patches":
            patch = np.flatnonzero(da["token_row"].values >= 0)
            if patch.size == 0:
                raise RigError(f"site {da.name!r} has no patch tokens (only CLS / registers were recorded); record "
                               "tokens = 'patches' or 'all'")
            contiguous = patch[-1] - patch[0] + 1 == patch.size  # a slice reads as one hyperslab
            da = da.isel(token=slice(patch[0], patch[-1] + 1) if contiguous else patch)
        return da.transpose("stimulus", "token", "unit")
    if "map_y" in da.dims:
        return da.transpose("stimulus", "map_y", "map_x", "unit")
    raise RigError(f"site {da.name!r} has no tokens or map positions {tuple(da.dims)}: the cut needs token or "
                   "convolutional sites (record tokens = 'patches' or 'all')")


def grid_coords(da: xr.DataArray) -> dict[str, Any]:
    """`token`, `token_row`, `token_col` of a `node_layout` array (map positions flattened for conv sites)."""
    if "token" in da.dims:
        return {"token": da["token"].values, "token_row": ("token", da["token_row"].values),
                "token_col": ("token", da["token_col"].values)}
    h, w = da.sizes["map_y"], da.sizes["map_x"]
    return {"token": np.arange(h * w), "token_row": ("token", np.repeat(np.arange(h), w)),
            "token_col": ("token", np.tile(np.arange(w), h))}


def key_name(key: tuple[str, str]) -> str:
    """How a (subject, site) node set is named in alignments and figures: `site`, or `subject/site`."""
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def fit_alignment(spec: NcutSettings, views: Mapping[tuple[str, str], xr.DataArray], log: Any) -> Any:
    """The channel alignment of `spec` fitted on the tokens of `spec.align_stimuli` stimuli (seeded draw), keyed
    by `key_name`; the views share their stimuli and tokens (paired nodes)."""
    import analyses

    n = next(iter(views.values())).sizes["stimulus"]
    pick = np.sort(np.random.default_rng(spec.seed).choice(n, size=min(n, spec.align_stimuli), replace=False))
    feats = {key_name(k): np.asarray(v.isel(stimulus=pick).values, dtype=np.float32) for k, v in views.items()}
    feats = {k: f.reshape(f.shape[0], -1, f.shape[-1]) for k, f in feats.items()}
    if spec.align == "procrustes":
        al = analyses.procrustes_alignment(feats, reference=spec.reference)
    elif spec.align == "cca":
        al = analyses.cca_alignment(feats, dim=spec.align_dim)
    else:
        y = read_target(spec, next(iter(views.values()))["stimulus"].values[pick])
        al = analyses.brain_alignment(feats, y, dim=spec.align_dim, steps=spec.align_steps, seed=spec.seed)
        log.info("brain alignment: R^2 of the target per site %s", al.info.get("r2"))
    log.info("channel alignment %s fitted on %d stimuli", spec.align, len(pick))
    return al


def cut(views: Mapping[tuple[str, str], xr.DataArray], spec: NcutSettings, log: Any) -> xr.Dataset:
    """Normalized-cut eigenvectors of `views` ((subject, site) -> a `node_layout` array; all of one stimulus set
    and token layout) by `spec`, per node set or jointly. Returns `eigenvectors (site, stimulus, token, eig)` and
    `eigenvalue (site, eig)`; with subjects named, `(subject, site, ...)`: `site` holds the site names when every
    subject has the same sites, else positions, with the names in `site_name (subject, site)`."""
    import analyses

    keys = list(views)
    first = views[keys[0]]
    coords = grid_coords(first)
    n_stim, n_tok = first.sizes["stimulus"], len(coords["token"])
    kw = dict(n_eig=spec.n_eig, n_sample=spec.n_sample, knn=spec.knn, anchors=spec.anchors, t=spec.t,
              seed=spec.seed)
    vec = np.empty((len(keys), n_stim, n_tok, spec.n_eig), dtype=np.float32)
    val = np.empty((len(keys), spec.n_eig))
    seconds = 0.0
    if spec.joint:
        al = fit_alignment(spec, views, log) if spec.align != "none" else None
        transform = (lambda block, key: al.align(block, key_name(key))) if al is not None else None
        e = analyses.nystrom_ncut(dict(views), transform=transform, **kw)
        vec[:] = e.values.reshape(vec.shape)
        val[:] = e.eigenvalue.values
        seconds = _seconds(e)
        log.info("joint ncut of %d sites: %d nodes in %.1f s", len(keys), e.sizes["node"], seconds)
    else:
        for i, key in enumerate(keys):
            e = analyses.nystrom_ncut({key: views[key]}, **kw)
            vec[i], val[i] = e.values.reshape(vec.shape[1:]), e.eigenvalue.values
            seconds += _seconds(e)
            log.info("ncut %s: %d nodes in %.1f s", key_name(key), e.sizes["node"], _seconds(e))
    attrs = {"joint": int(spec.joint), "align": spec.align, "tokens": spec.tokens, "n_eig": spec.n_eig,
             "n_sample": spec.n_sample, "knn": spec.knn, "t": spec.t, "seed": spec.seed, "seconds": round(seconds, 2)}
    common = {"stimulus": first["stimulus"].values, "eig": np.arange(spec.n_eig), **coords}
    long_name = {"long_name": "normalized-cut eigenvectors of D^-1/2 A D^-1/2"}
    subjects = list(dict.fromkeys(k[0] for k in keys))
    if subjects == [""]:
        return xr.Dataset({"eigenvectors": (("site", "stimulus", "token", "eig"), vec, long_name),
                           "eigenvalue": (("site", "eig"), val)},
                          coords={"site": [k[1] for k in keys], **common}, attrs=attrs)
    per = {s: [k[1] for k in keys if k[0] == s] for s in subjects}
    width = max(len(v) for v in per.values())
    same = all(v == per[subjects[0]] for v in per.values())
    grid = np.full((len(subjects), width) + vec.shape[1:], np.nan, np.float32)
    gval = np.full((len(subjects), width, spec.n_eig), np.nan)
    names = np.full((len(subjects), width), "", dtype=object)
    for i, key in enumerate(keys):
        a, b = subjects.index(key[0]), per[key[0]].index(key[1])
        grid[a, b], gval[a, b], names[a, b] = vec[i], val[i], key[1]
    site = per[subjects[0]] if same else np.arange(width)
    return xr.Dataset({"eigenvectors": (("subject", "site", "stimulus", "token", "eig"), grid, long_name),
                       "eigenvalue": (("subject", "site", "eig"), gval)},
                      coords={"subject": subjects, "site": site, "site_name": (("subject", "site"), names.astype(str)),
                              **common}, attrs=attrs)


def read_target(spec: NcutSettings, stimuli: np.ndarray) -> np.ndarray:
    """The rows of the brain-alignment target for `stimuli` (values of the `stimulus` coordinate), (n, voxels)."""
    path = Path(str(spec.target)).expanduser()
    if not path.is_file():
        raise RigError(f"ncut target {str(path)!r} does not exist (a netCDF file of responses (stimulus, voxel))")
    with xr.open_dataset(path) as ds:
        name = spec.target_var or next(iter(ds.data_vars), None)
        if name not in ds.data_vars or "stimulus" not in ds[name].dims:
            raise RigError(f"ncut target {str(path)!r}: needs a variable with a 'stimulus' dim "
                           f"(variables: {', '.join(map(str, ds.data_vars))}); set target_var")
        da = ds[name]
        have = da["stimulus"].values if "stimulus" in da.coords else np.arange(da.sizes["stimulus"])
        missing = np.setdiff1d(stimuli, have)
        if missing.size:
            raise RigError(f"ncut target {str(path)!r} lacks stimuli {missing[:5].tolist()}; it must cover the "
                           "session's stimuli (same stimulus index)")
        rows = np.searchsorted(have, stimuli) if np.all(np.diff(have) > 0) else [list(have).index(s) for s in stimuli]
        y = da.isel(stimulus=np.asarray(rows)).transpose("stimulus", ...).values
    return np.asarray(y, dtype=np.float32).reshape(len(stimuli), -1)


def open_eigenvectors(path: Any) -> xr.Dataset:
    """An ncut result: `eigenvectors (site, stimulus, token, eig)`, `eigenvalue (site, eig)`, attrs."""
    return xr.open_dataset(path)


@register_step
class Ncut(Step):
    """Normalized-cut eigenvectors of the recorded tokens, per site or jointly over sites (optionally channel
    aligned), Nystrom-like at scale, streamed from the recording."""

    section = "analyse"
    Settings = NcutSettings

    def check(self, spec: NcutSettings, pre: Any) -> None:
        from stimuli.registry import glob_match

        loc = pre.planned_loc(spec)
        chosen = glob_match(pre.recorded, spec.sites)
        if not chosen:
            pre.fail(loc + ("sites",), f"{spec.sites} match none of the recorded sites ({', '.join(pre.recorded)})")
        infos = [pre.site_info(s) for s in chosen]
        flat = [i.name for i in infos if i.layout == "flat"]
        if flat:
            pre.fail(loc + ("sites",), f"the cut needs token or convolutional sites; {flat[:3]} give one vector "
                     "per stimulus")
        if pre.protocol.record.tokens == "cls" and any(i.layout == "tokens" for i in infos):
            pre.fail(("record", "tokens"), "the cut clusters tokens: record tokens = 'patches' or 'all', not 'cls'")
        layouts = {(i.layout, i.shape[:-1] if i.layout == "tokens" else i.shape[1:], i.grid) for i in infos}
        if len(layouts) > 1:
            pre.fail(loc + ("sites",), "the sites of one ncut step must share their tokens / map size; use one "
                     "step per group of sites")
        widths = sorted({i.n_units for i in infos})
        if spec.joint and len(widths) > 1 and spec.align in ("none", "procrustes"):
            pre.fail(loc + ("align",), f"the sites have different widths {widths}: a joint cut needs align = "
                     "'cca' or 'brain'")
        if spec.reference is not None and spec.reference not in chosen:
            pre.fail(loc + ("reference",), f"{spec.reference!r} is not among the step's sites")
        if spec.target is not None and not Path(spec.target).expanduser().is_file():
            pre.fail(loc + ("target",), f"{spec.target!r} does not exist")

    def run(self, ctx: StepContext, spec: NcutSettings) -> None:
        with ctx.recording() as rec:
            sites = rec.select(spec.sites, f"analyse.{spec.key}: sites")
            ds = cut({("", s): node_layout(rec[s].rename(s), spec.tokens) for s in sites}, spec, ctx.log)
        ctx.write_result(ds)
        ctx.headline[f"{spec.key} nodes"] = int(np.prod(ds["eigenvectors"].shape[:-1]))


def _seconds(e: xr.DataArray) -> float:
    return float(sum(v for k, v in e.attrs.items() if k.startswith("seconds")))
