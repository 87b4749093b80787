"""The gradient_rfs step: d response / d pixel of chosen units on chosen images, stored per cell.

Cells are units of a site at chosen tokens (token sites) or map positions (conv sites); each site's forward
pass stops at the site. The result `analyses/<name>.nc` holds `rf (cell, stimulus, channel, y, x)` (per unit of
pixel value; pooled by summing `pool` x `pool` blocks, i.e. the derivative with respect to a block's value),
written one chunk of cells at a time, with the `site`, `unit`, `token`, `map_y`, `map_x` of every cell (-1 where
a site has none) and the images' stimulus set in its attributes (`stimulus` indexes it).
"""
from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..dims import CELL, unit_label
from .base import Step, StepContext, StepSettings, register_step

METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad")
CELL_COORDS = ("unit", "token", "token_row", "token_col", "map_y", "map_x")


class GradientRFsSettings(StepSettings):
    type: Literal["gradient_rfs"]
    sites: list[str] | None = Field(None, description="globs over the subject's sites (default: the recorded sites)")
    units: int | list[int] = Field(4, description="channels per site: the first N, or a list of indices")
    tokens: Literal["cls", "patches", "all"] | list[int] = Field("cls", description="tokens of token sites")
    positions: Literal["centre", "all"] | list[tuple[int, int]] = Field(
        "centre", description="map positions [y, x] of conv sites")
    method: Literal[METHODS] = Field("gradient", description="gradient | gradient_x_input | "  # type: ignore[valid-type]
                                     "integrated_gradients | smoothgrad")
    abs: bool = Field(False, description="absolute values (captum's Saliency default)")
    steps: int = Field(32, gt=0, description="integrated gradients: Gauss-Legendre steps")
    baseline: float = Field(0.0, description="integrated gradients: the baseline image's value")
    samples: int = Field(16, gt=0, description="SmoothGrad: noisy copies per image")
    noise: float = Field(0.1, ge=0, description="SmoothGrad: noise s.d. in image units")
    seed: int = 0
    stimuli: dict[str, Any] | None = Field(None, description="the images' own stimulus set, e.g. {generator = "
                                           "'shapes', n = 32} (default: the session's stimuli)")
    n_stimuli: int = Field(32, gt=0, description="images: the first n of the set")
    pool: int = Field(1, ge=1, description="store the gRFs summed over pool x pool pixel blocks")
    channels: Literal["rgb", "sum"] = Field("rgb", description="store per RGB channel, or summed (luminance)")
    batch_size: int = Field(8, gt=0, description="images per forward pass")
    unit_chunk: int = Field(16, gt=0, description="units whose input gradients are computed in one batched "
                            "backward pass (memory grows with unit_chunk x batch_size)")


def channel_indices(units: int | list[int], n_units: int) -> np.ndarray:
    """`units` as channel indices: an int N is the first N (at most all), a list is itself."""
    return np.arange(min(int(units), n_units)) if isinstance(units, int) else np.asarray(units, np.int64)


def image_set(ctx_or_pre: Any, spec: Any) -> Any:
    """The stimulus set the images come from: the step's own (`spec.stimuli`) or the session's, first n."""
    import stimuli

    from ..protocol import StimuliSpec

    if spec.stimuli is not None:
        own = StimuliSpec(**spec.stimuli)
        full = stimuli.make(own.generator, **own.params())
    else:
        full = ctx_or_pre.stimuli
    return full.subset(np.arange(min(spec.n_stimuli, len(full))))


def step_sites(subject: Any, spec: Any, recorded: list[str]) -> list[str]:
    from ..sites import select_sites

    return select_sites(subject, spec.sites) if spec.sites is not None else list(recorded)


def responses_for(subject: Any, site: str, spec: Any, canvas: int) -> Any:
    """The site's chosen cells as a differentiable function of the pixels (`rig.responses.SiteResponse`)."""
    from ..errors import SiteError
    from ..responses import SiteResponse
    from ..sites import catalogue

    info = {i.name: i for i in catalogue(subject, (canvas, canvas))}.get(site)
    if info is None:
        raise SiteError(f"{site!r} is not a site of {subject.name} for {canvas} px images (list them with `rig sites`)")
    positions = spec.positions if isinstance(spec.positions, str) else [list(p) for p in spec.positions]
    return SiteResponse(subject, site, channel_indices(spec.units, info.n_units), spec.tokens, positions,
                        image_size=(canvas, canvas))


@register_step
class GradientRFs(Step):
    """Gradient receptive fields: d response / d pixel of chosen units (and tokens or map positions) on chosen
    images, by batched vector-Jacobian products with the forward stopped at each site; stored along `cell`."""

    section = "analyse"
    Settings = GradientRFsSettings

    def check(self, spec: GradientRFsSettings, pre: Any) -> None:
        from stimuli import StimulusError

        from ..errors import RigError

        loc = pre.planned_loc(spec)
        try:
            images = image_set(pre, spec)
        except (StimulusError, ValueError, TypeError) as e:
            pre.fail(loc + ("stimuli",), f"{e}")
        if images.canvas % spec.pool:
            pre.fail(loc + ("pool",), f"pool = {spec.pool} must divide the images' canvas ({images.canvas} px)")
        try:
            for site in step_sites(pre.subject, spec, pre.recorded):
                responses_for(pre.subject, site, spec, images.canvas)
        except RigError as e:
            pre.fail(loc + (("sites",) if spec.sites is not None else ()), str(e))

    def run(self, ctx: StepContext, spec: GradientRFsSettings) -> None:
        import analyses
        from analyses.rf_figures import gradient_rf_figure

        from ..io import atomic_path
        from .spatial_scores import short_site

        images_set = image_set(ctx, spec)
        images = images_set.render()
        with ctx.recording() as rec:
            sites = step_sites(ctx.subject, spec, list(rec))
        kwargs = dict(method=spec.method, abs=spec.abs, steps=spec.steps, baseline=spec.baseline,
                      samples=spec.samples, noise=spec.noise, seed=spec.seed, batch_size=spec.batch_size,
                      unit_chunk=spec.unit_chunk)
        attrs = {**{k: v for k, v in kwargs.items() if k not in ("batch_size", "unit_chunk")}, "abs": int(spec.abs),
                 "pool": spec.pool, "channels": spec.channels, "units": "response per unit of pixel value",
                 "stimuli": json.dumps(spec.stimuli) if spec.stimuli is not None else "session"}
        shown = min(6, len(images))
        n_cells = 0
        with atomic_path(ctx.result_path) as tmp:
            writer = CellWriter(tmp, images_set.params["stimulus"].values, spec.channels, images.shape[-1] // spec.pool,
                                spec.pool, attrs)
            try:
                for site in sites:
                    fn = responses_for(ctx.subject, site, spec, images_set.canvas)
                    cells = np.arange(len(fn))
                    figure_rows, labels = [], []
                    for lo in range(0, len(cells), spec.unit_chunk):
                        chunk = cells[lo:lo + spec.unit_chunk]
                        rf = analyses.gradient_rfs(fn, images, units=chunk, **kwargs)
                        stored = store_form(rf.values, spec.pool, spec.channels)
                        coords = {k: np.asarray(v)[chunk] for k, v in fn.unit_coords.items()}
                        writer.append(stored, coords)
                        if len(figure_rows) < 4:
                            take = min(4 - len(figure_rows), len(chunk))
                            figure_rows.extend(rf.values[:take, :shown].sum(axis=2))
                            labels.extend(_label(coords, i) for i in range(take))
                    n_cells += len(cells)
                    ctx.log.info("gradient RFs %s: %d cells x %d images", site, len(cells), len(images))
                    ctx.write_figure(f"{spec.key}_{_safe(site)}", gradient_rf_figure(
                        images[:shown], np.asarray(figure_rows), labels,
                        title=f"{short_site(site)}: gradient RFs ({spec.method}{', abs' if spec.abs else ''})"),
                        caption=f"Gradient receptive fields of {len(figure_rows)} units of {site} (rows) on the first "
                                f"{shown} images (top row): d response / d pixel value, summed over RGB, method "
                                f"{spec.method}; red: brightening the pixel raises the response, blue: lowers it "
                                "(colour limits symmetric per row).")
            finally:
                writer.close()
        ctx.wrote(ctx.result_path)
        ctx.headline["gradient RF cells"] = n_cells


def store_form(rf: np.ndarray, pool: int, channels: str) -> np.ndarray:
    """`(cells, stimulus, C, H, W)` -> stored form: RGB summed (`channels="sum"`), pixels summed over `pool`
    blocks (the derivative with respect to a block's value)."""
    if channels == "sum":
        rf = rf.sum(axis=2, keepdims=True)
    if pool > 1:
        c, s, ch, h, w = rf.shape
        rf = rf.reshape(c, s, ch, h // pool, pool, w // pool, pool).sum(axis=(4, 6))
    return rf.astype(np.float32)


def _label(coords: dict[str, np.ndarray], i: int) -> str:
    import xarray as xr

    table = xr.Dataset(coords={k: (CELL, np.asarray(v)[i:i + 1]) for k, v in coords.items()})
    return unit_label(table, 0)


def _safe(site: str) -> str:
    return site.replace("/", "_")


class CellWriter:
    """Writes `rf (cell, stimulus, channel, y, x)` to a netCDF file one chunk of cells at a time (an unlimited
    `cell` dim), with each cell's `site` and unit coordinates (-1 where the site has none)."""

    def __init__(self, path: Any, stimulus: np.ndarray, channels: str, side: int, pool: int, attrs: dict):
        import netCDF4

        self.nc = netCDF4.Dataset(path, "w")
        names = ["luminance"] if channels == "sum" else ["r", "g", "b"]
        for dim, size in ((CELL, None), ("stimulus", len(stimulus)), ("channel", len(names)), ("y", side),
                          ("x", side)):
            self.nc.createDimension(dim, size)
        self.nc.createVariable("stimulus", "i8", ("stimulus",))[:] = np.asarray(stimulus, np.int64)
        ch = self.nc.createVariable("channel", str, ("channel",))
        for i, name in enumerate(names):
            ch[i] = name
        for dim in ("y", "x"):
            v = self.nc.createVariable(dim, "f8", (dim,))
            v[:] = (np.arange(side) + 0.5) * pool
            v.units = "px"
        self.site = self.nc.createVariable("site", str, (CELL,))
        self.coords = {k: self.nc.createVariable(k, "i8", (CELL,)) for k in CELL_COORDS}
        self.rf = self.nc.createVariable("rf", "f4", (CELL, "stimulus", "channel", "y", "x"),
                                         chunksizes=(1, len(stimulus), len(names), side, side))
        self.rf.coordinates = " ".join(("site",) + CELL_COORDS)
        for k, v in attrs.items():
            self.rf.setncattr(k, v if not isinstance(v, bool) else int(v))
        self.n = 0

    def append(self, values: np.ndarray, coords: dict[str, np.ndarray]) -> None:
        lo, hi = self.n, self.n + len(values)
        self.rf[lo:hi] = values
        for i, s in enumerate(coords["site"]):
            self.site[lo + i] = str(s)
        for k, var in self.coords.items():
            var[lo:hi] = np.asarray(coords[k], np.int64) if k in coords else np.full(hi - lo, -1, np.int64)
        self.n = hi

    def close(self) -> None:
        self.nc.close()
