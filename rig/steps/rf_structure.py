"""The rf_structure step: the structure of each cell's gradient RFs over images (per-unit PCA, the projection of
images into the gRF eigenspace), where each RF sits on each image, and whether it moves towards the salient
part of the image (one number per cell)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field, field_validator

from ..dims import CELL, unit_label
from .base import Needs, Step, StepContext, StepSettings, register_step
from .gradient_rfs import image_set


class RFStructureSettings(StepSettings):
    type: Literal["rf_structure"]
    gradient_rfs: Annotated[str, Needs("gradient_rfs")] = Field("gradient_rfs", description="the gradient_rfs step")
    n_components: int = Field(6, gt=0, description="principal components stored and drawn per cell")
    variance: float = Field(0.99, gt=0, le=1, description="projection: components up to this share of variance")
    projection_components: int | None = Field(None, gt=0, description="projection: a fixed number of components "
                                              "instead (the study used 5, 500, 2000)")
    z: float = Field(0.0, ge=0, description="RF geometry: only pixels above z x the map's noise s.d. (0: all)")
    saliency: str | None = Field("spectral_residual", description="saliency model for the RF-shift question: "
                                 "a model of analyses (spectral_residual, itti_koch), 'module:function', 'masks' "
                                 "(the stimuli's object masks), or none (skip)")
    sigma: float = Field(5.0, ge=0, description="px: saliency maps are smoothed before their peak is taken")
    shuffles: int = Field(200, ge=0, description="shuffled image-peak pairings for each cell's p-value")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the RF shift")
    seed: int = 0
    n_examples: int = Field(4, gt=0, description="images whose projections are stored and drawn")
    n_show: int = Field(4, gt=0, description="cells drawn in the component and projection figures")

    @field_validator("saliency")
    @classmethod
    def _none(cls, value: str | None) -> str | None:
        return None if value in (None, "none", "") else value


def pooled_images(images: np.ndarray, pool: int, channels: str) -> np.ndarray:
    """Images at the resolution of stored gRFs: means over `pool` blocks, and over RGB for `channels="sum"`."""
    from analyses.receptive_fields import pool_images

    return pool_images(images.mean(axis=1, keepdims=True) if channels == "sum" else images, pool)


def salient_maps(images_set: Any, images: np.ndarray, saliency: str) -> np.ndarray:
    """Saliency maps `(S, H, W)`: the model's, or the object masks (`saliency = "masks"`)."""
    from analyses.saliency_channels import saliency_maps

    if saliency == "masks":
        return (images_set.render_extras()["masks"] > 0).astype(np.float32)
    return saliency_maps(images, saliency)


@register_step
class RFStructure(Step):
    """Per-cell PCA of gradient RFs (explained-variance curve, components), the projection of images into each
    cell's gRF eigenspace, RF centre and size per image, and how far RFs move towards each image's saliency peak."""

    section = "analyse"
    Settings = RFStructureSettings

    def check(self, spec: RFStructureSettings, pre: Any) -> None:
        loc = pre.planned_loc(spec)
        if spec.saliency is None:
            return
        grad = pre.planned_step("gradient_rfs", spec.gradient_rfs)
        if spec.saliency == "masks":
            if grad is not None and "masks" not in image_set(pre, grad.spec).extras:
                pre.fail(loc + ("saliency",), "saliency = 'masks' needs stimuli with object masks (extras "
                         "'masks'); use a saliency model instead")
            return
        from analyses.saliency import saliency_model

        try:
            saliency_model(spec.saliency)
        except ValueError as e:
            pre.fail(loc + ("saliency",), str(e))

    def run(self, ctx: StepContext, spec: RFStructureSettings) -> None:
        import analyses.receptive_fields as rfa

        gspec = ctx.referenced(spec, "gradient_rfs").spec
        images_set = image_set(ctx, gspec)
        images = images_set.render()
        pooled = pooled_images(images, gspec.pool, gspec.channels)
        n_ex = min(spec.n_examples, len(images))
        with xr.open_dataset(ctx.result_of(spec, "gradient_rfs")) as ds:
            rf = ds["rf"]
            n_cells, n_stim = rf.sizes[CELL], rf.sizes["stimulus"]
            k_curve = max(1, n_stim - 1)
            k_show = min(spec.n_components, k_curve)
            ratio = np.full((n_cells, k_curve), np.nan)
            comps = np.zeros((n_cells, k_show) + rf.shape[2:], np.float32)
            proj = np.zeros((n_cells, n_ex) + rf.shape[2:], np.float32)
            kept, share = np.zeros(n_cells, np.int64), np.zeros(n_cells)
            geometry = []
            for i in range(n_cells):
                x = rf.isel({CELL: i}).load()
                pca = rfa.rf_pca(x)
                ratio[i, :pca.sizes["component"]] = pca["explained_variance_ratio"].values[0]
                comps[i, :min(k_show, pca.sizes["component"])] = pca["components"].values[0, :k_show]
                p = rfa.rf_projection(x, pooled, n_components=spec.projection_components, variance=spec.variance)
                proj[i], kept[i], share[i] = p["projection"].values[0, :n_ex], p["n_components"].values[0], \
                    p["variance_kept"].values[0]
                geometry.append(rfa.rf_geometry(x, z=spec.z))
            cell_coords = {k: (CELL, v.values) for k, v in rf.coords.items() if v.dims == (CELL,)}
            stimulus = rf["stimulus"].values
            coords_y, coords_x = rf["y"].values, rf["x"].values
            channel = rf["channel"].values
        geo = xr.concat(geometry, dim=CELL)
        out = xr.Dataset({
            "explained_variance_ratio": ((CELL, "component"), ratio),
            "components": ((CELL, "pc", "channel", "y", "x"), comps),
            "projection": ((CELL, "example", "channel", "y", "x"), proj),
            "n_components": (CELL, kept), "variance_kept": (CELL, share),
            **{k: ((CELL, "stimulus"), geo[k].values) for k in ("centre_x", "centre_y", "size", "on_off")},
        }, coords={**cell_coords, "stimulus": stimulus, "component": np.arange(k_curve), "pc": np.arange(k_show),
                   "example": stimulus[:n_ex], "channel": channel, "y": coords_y, "x": coords_x})
        if spec.saliency is not None:
            peaks = rfa.saliency_peaks(salient_maps(images_set, images, spec.saliency), sigma=spec.sigma)
            shift = rfa.saliency_shift(out["centre_x"].values, out["centre_y"].values, peaks["peak_x"].values,
                                       peaks["peak_y"].values, n_shuffles=spec.shuffles, seed=spec.seed)
            out["peak_x"], out["peak_y"] = ("stimulus", peaks["peak_x"].values), ("stimulus", peaks["peak_y"].values)
            for k in shift.data_vars:
                out[k] = (CELL, shift[k].values)
        out.attrs.update(gradient_rfs=gspec.key, variance=spec.variance, z=spec.z,
                         projection_components=-1 if spec.projection_components is None else spec.projection_components,
                         saliency=spec.saliency or "none", sigma=spec.sigma, shuffles=spec.shuffles, seed=spec.seed)
        ctx.write_result(out)
        self._figures(ctx, spec, out, images, n_ex, images_set.canvas)

    def _figures(self, ctx: StepContext, spec: RFStructureSettings, out: xr.Dataset, images: np.ndarray, n_ex: int,
                 canvas: int) -> None:
        from analyses.rf_figures import (explained_variance_figure, retinotopy_figure, rf_images_figure,
                                         saliency_shift_figure)

        from .spatial_scores import short_site

        sites = list(dict.fromkeys(str(s) for s in out["site"].values))
        by_site = {s: np.flatnonzero(out["site"].values == s) for s in sites}
        ratios = {short_site(s): out["explained_variance_ratio"].values[i] for s, i in by_site.items()}
        ctx.write_figure(f"{spec.key}_explained_variance", explained_variance_figure(ratios, level=spec.variance),
                         caption="Cumulative share of the variance of each cell's gradient RFs (over images) explained "
                                 "by its first principal components (one line per cell, one colour per site; dashed: "
                                 f"{spec.variance:.0%}). Few components: the cell's gRF hardly changes with the image.")
        shown = np.arange(min(spec.n_show, out.sizes[CELL]))
        labels = [f"{short_site(str(out['site'].values[i]))}\n{unit_label(out, int(i))}" for i in shown]
        comps = out["components"].values[shown].sum(axis=2)
        ev = out["explained_variance_ratio"].values
        ctx.write_figure(f"{spec.key}_components", rf_images_figure(
            comps, labels, [f"PC {j + 1}" for j in range(comps.shape[1])], colorbar="weight (unit-norm)",
            title="principal components of gradient RFs (titles: PC; row: cell)"),
            caption="The first principal components of each shown cell's gradient RFs over images, as images (summed "
                    "over colour channels; red/blue: positive/negative weight, unit-norm components). Explained "
                    "variance of PC 1 per row: " + ", ".join(f"{ev[i, 0]:.0%}" for i in shown) + ".")
        proj = out["projection"].values[shown].sum(axis=2)
        ctx.write_figure(f"{spec.key}_projection", rf_images_figure(
            proj.reshape(len(shown), n_ex, *proj.shape[-2:]), labels, images=images[:n_ex],
            colorbar="projected value", title="images projected into each cell's gRF eigenspace (P = V V^T)"),
            caption="Top row: images. Below: each image (minus the mean image) projected into a cell's gradient-RF "
                    "eigenspace (P = V V^T, V "
                    f"its principal components up to {spec.variance:.0%} of the variance"
                    f"{'' if spec.projection_components is None else f' or {spec.projection_components} components'}; "
                    "summed over colour channels): what the cell's gRFs never vary in is projected out.")
        centres = {short_site(s): {"x": np.nanmean(out["centre_x"].values[i], axis=1),
                                   "y": np.nanmean(out["centre_y"].values[i], axis=1),
                                   "size": np.nanmean(out["size"].values[i], axis=1)} for s, i in by_site.items()}
        ctx.write_figure(f"{spec.key}_centres", retinotopy_figure(centres, canvas, title="gradient-RF centres"),
                         caption="Each cell's gradient-RF centre of mass (dot) and extent (circle: the s.d. of the "
                                 "|gRF| map, px), averaged over images, in the visual field (px), one panel and colour "
                                 "per site.")
        if "saliency_shift" in out:
            shifts = {short_site(s): out["saliency_shift"].values[i] for s, i in by_site.items()}
            pvals = {short_site(s): out["p_value"].values[i] for s, i in by_site.items()} if "p_value" in out else None
            ctx.write_figure(f"{spec.key}_saliency_shift", saliency_shift_figure(shifts, pvals, alpha=spec.alpha),
                             caption="How far each cell's gradient RF moves towards the saliency peak of each image "
                                     f"(px, mean over images; saliency: {spec.saliency}, smoothed {spec.sigma:g} px): "
                                     "> 0 towards, 0 no relation. Filled: p < "
                                     f"{spec.alpha:g} against {spec.shuffles} shuffles of the images' peaks.")
            ctx.headline["median saliency shift (px)"] = round(float(np.nanmedian(out["saliency_shift"].values)), 3)
            if "p_value" in out:
                towards = (out["p_value"].values < spec.alpha) & (out["saliency_shift"].values > 0)
                ctx.headline["cells shifting towards saliency"] = int(towards.sum())
        ctx.headline[f"median PCs for {spec.variance:.0%}"] = float(np.nanmedian(out["n_components"].values))

    def compare_figure(self, a: Any, b: Any, labels: tuple[str, str]) -> Any:
        return self.across_figure(dict(zip(labels, (a, b))))[0]

    def across_figure(self, results: Any) -> Any:
        """Each cell's RF shift towards saliency (or, without saliency, its gRF size) per site, of several sessions."""
        from analyses.rf_figures import compare_rf_figure

        results = dict(results)
        if all("saliency_shift" in r for r in results.values()):
            return compare_rf_figure(results, "saliency_shift", "RF shift towards saliency (px)",
                                     title="gradient-RF shift towards the saliency peak, per site"), (
                "How far each cell's gradient RF moves towards each image's saliency peak (px, mean over images) "
                "per site, one colour per session: median over cells (dot) and inter-quartile range (bar)")
        return compare_rf_figure(results, title="gradient-RF size, per site"), (
            "Gradient-RF size (s.d. of the |gRF|, px, mean over images) per site, one colour per session: median "
            "over cells (dot) and inter-quartile range (bar)")
