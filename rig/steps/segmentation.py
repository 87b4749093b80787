"""The segmentation step: oracle figure-ground and category mIoU of every site's normalized-cut eigenvectors,
on stimuli with ground-truth object masks (the stimulus set's extra `masks`: circles, shapes, scenes).

ORACLE (the study's appendix C.4): the class centres in eigenvector space come from the ground-truth labels,
so the score says how well a site's eigenvectors separate the labelled classes, not how well an unsupervised
method would segment (`analyses.oracle_segmentation`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field

from stimuli.base import list_attr

from .base import Needs, Step, StepContext, StepSettings, register_step
from .ncut import open_eigenvectors

TASKS = ("figure_ground", "category")


def mask_counts(stimuli: Any, grid: tuple[int, int], indices: np.ndarray, batch_size: int = 64) -> xr.DataArray:
    """Pixels of each mask label in each patch, `(stimulus, token_row, token_col, label)`, rendered in batches."""
    import analyses

    labels = list_attr(stimuli.params.attrs, "mask_labels")
    parts, n_lab = [], len(labels) + 1 if labels else None
    for lo in range(0, len(indices), batch_size):
        masks = stimuli.render_extras(indices[lo:lo + batch_size])["masks"]
        parts.append(masks)
        n_lab = max(n_lab or 0, int(masks.max()) + 1)
    counts = np.concatenate([analyses.patch_label_counts(m, grid, n_lab) for m in parts])
    return xr.DataArray(counts, dims=("stimulus", "token_row", "token_col", "label"),
                        coords={"stimulus": stimuli.params["stimulus"].values[indices]})


class SegmentationSettings(StepSettings):
    type: Literal["segmentation"]
    ncut: Annotated[str, Needs("ncut")] = Field("ncut", description="name of the ncut step whose eigenvectors "
                                                "are scored")
    tasks: list[Literal["figure_ground", "category"]] = Field(
        list(TASKS), description="figure_ground (objects vs background) and/or category (each mask label its "
        "class; skipped when the set has one object label)")
    n_eig: int = Field(10, ge=1, description="eigenvectors used (the study: the top 10)")


@register_step
class Segmentation(Step):
    """Oracle figure-ground and category mIoU per site (the study's appendix C.4; class centres from the
    ground-truth masks), with a figure of mIoU across sites."""

    section = "analyse"
    Settings = SegmentationSettings

    def check(self, spec: SegmentationSettings, pre: Any) -> None:
        if "masks" not in pre.stimuli.extras:
            pre.fail(pre.planned_loc(spec), f"segmentation scores need object masks; generator "
                     f"{pre.protocol.stimuli.generator!r} gives none (circles, shapes and scenes do)")

    def run(self, ctx: StepContext, spec: SegmentationSettings) -> None:
        import analyses

        with open_eigenvectors(ctx.result_of(spec, "ncut")) as ds:
            eig = ds["eigenvectors"].load()
        grid = (int(eig["token_row"].max()) + 1, int(eig["token_col"].max()) + 1)
        stim = ctx.stimuli
        index = {s: i for i, s in enumerate(stim.params["stimulus"].values.tolist())}
        counts = mask_counts(stim, grid, np.array([index[s] for s in eig["stimulus"].values.tolist()]))
        names = list_attr(stim.params.attrs, "mask_labels")
        tasks = [t for t in spec.tasks if t != "category" or counts.sizes["label"] > 2]
        if len(tasks) < len(spec.tasks):
            ctx.log.info("segmentation: one object label in this set, so category = figure-ground; skipped")
        results = [analyses.oracle_segmentation(eig, counts, n_eig=spec.n_eig, binary=task == "figure_ground",
                                                label_names=["background", *names] if names else None)
                   for task in tasks]
        out = xr.concat([r.assign_coords(label=[str(x) for x in r["label"].values]) for r in results],
                        dim=xr.DataArray(tasks, dims="task"), join="outer", combine_attrs="drop_conflicts")
        out.attrs.update({"n_eig": spec.n_eig, "ncut": spec.ncut, "oracle": "class centres from the ground-truth "
                          "masks (AlignedCut appendix C.4); pixel IoU over the stimulus set"})
        ctx.write_result(out)
        ctx.write_figure(spec.key, analyses.miou_figure(out, title=f"{ctx.protocol.name}: oracle segmentation "
                                                                   "per site"),
                         caption="Oracle mIoU of each site's normalized-cut eigenvectors (top "
                                 f"{spec.n_eig}): class centres are the mean eigenvectors of the ground-truth "
                                 "mask pixels, each pixel goes to the most cosine-similar centre (background "
                                 "below a threshold grid-searched over 10 values), and IoU is counted in pixels "
                                 "over all stimuli, then averaged over the classes (figure-ground: background "
                                 "and objects; category: background and each object label). The oracle uses the "
                                 "labels, so it measures how separable the classes are, not an unsupervised "
                                 "segmentation.")
        for task in tasks:
            best = out["miou"].sel(task=task)
            ctx.headline[f"{task.replace('_', '-')} mIoU (best site)"] = round(float(best.max()), 3)

    def across_figure(self, results: dict[str, Any]) -> Any:
        """Several sessions' (e.g. subjects') mIoU per site in one figure: {label: this step's result}."""
        import analyses

        return (analyses.miou_figure(dict(results), title="oracle segmentation per site, every session"),
                "Oracle mIoU per site of every session (colour), figure-ground and category (line style); sites "
                "on a common relative-depth axis when the sessions have different numbers of sites")
