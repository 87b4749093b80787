"""The alignedcut step: the AlignedCut colour of every site (each token coloured by its eigenvector embedding,
the study's figure 4) and, for a joint cut, 2-D spectral t-SNE trajectories of tokens from site to site
(figure 9), from an ncut step's eigenvectors.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field

from .base import Needs, Step, StepContext, StepSettings, register_step
from .ncut import open_eigenvectors


class AlignedCutSettings(StepSettings):
    type: Literal["alignedcut"]
    ncut: Annotated[str, Needs("ncut")] = Field("ncut", description="name of the ncut step to colour")
    method: Literal["tsne", "pca"] = Field("tsne", description="3-D (colour) and 2-D (trajectory) embedding of "
                                           "the eigenvectors: t-SNE as in the study, or PCA (fast)")
    n_sample: int = Field(1000, ge=10, description="nodes the embedding is fitted on (farthest-point sampled); "
                          "every other node takes its nearest one's")
    perplexity: float = Field(100.0, gt=1, description="t-SNE perplexity")
    q: float = Field(0.95, gt=0.5, le=1, description="quantile mapped to the ends of each RGB axis")
    stimuli: int | list[int] = Field(6, description="stimuli drawn: the first n, or a list of stimulus indices")
    trajectory_tokens: int = Field(4, ge=0, description="tokens traced per group (figure / ground when the set has "
                                   "masks) in the trajectory figure; 0 = no trajectories")
    seed: int = 0


@register_step
class AlignedCut(Step):
    """AlignedCut colour images of every site and spectral t-SNE trajectories of tokens across sites."""

    section = "analyse"
    Settings = AlignedCutSettings

    def run(self, ctx: StepContext, spec: AlignedCutSettings) -> None:
        import analyses

        with open_eigenvectors(ctx.result_of(spec, "ncut")) as ds:
            eig = ds["eigenvectors"].load()
            joint = bool(ds.attrs.get("joint", 0))
        kw = dict(method=spec.method, n_sample=spec.n_sample, perplexity=spec.perplexity, seed=spec.seed)
        sites = [str(s) for s in eig["site"].values]
        if joint:  # one space: one embedding, colours comparable across sites
            colors = analyses.ncut_colors(eig, q=spec.q, **kw)
        else:  # each site its own graph: its own embedding
            colors = xr.concat([analyses.ncut_colors(eig.sel(site=[s]), q=spec.q, **kw) for s in sites], "site")
        out = xr.Dataset({"rgb": colors.astype(np.float32)})
        shown = list(range(min(spec.stimuli, eig.sizes["stimulus"]))) if isinstance(spec.stimuli, int) \
            else list(spec.stimuli)
        values = eig["stimulus"].values[shown]
        images = ctx.stimuli.subset(shown).render()
        ctx.write_figure(f"{spec.key}_colors", analyses.ncut_image_figure(
            colors, values, images=images, title=f"{ctx.protocol.name}: AlignedCut colour"),
            caption="AlignedCut colour: each patch token of each site (columns) drawn in the colour of its "
                    f"normalized-cut eigenvectors ({spec.method.upper()} of the top {eig.sizes['eig']} "
                    "eigenvectors into 3-D, each axis quantile-scaled to one of red, green, blue), for the "
                    "stimuli in the first column. " + (
                        "The cut was joint over the sites, so one colour means the same eigenvector "
                        "embedding in every site." if joint else
                        "Each site was cut on its own, so colours compare within a site only."))
        if joint and spec.trajectory_tokens > 0 and len(sites) > 1:
            emb = analyses.spectral_embedding(eig, 2, **kw)
            out["embedding"] = emb
            stim0 = shown[0]
            tokens, groups = _trajectory_tokens(ctx.stimuli, eig, stim0, spec.trajectory_tokens)
            ctx.write_figure(f"{spec.key}_trajectories", analyses.trajectory_figure(
                emb, eig["stimulus"].values[stim0], tokens, groups, seed=spec.seed),
                caption=f"2-D spectral {spec.method.upper()} of the joint eigenvectors of every token of every "
                        "site (points, coloured by site from early (dark) to late (yellow)); lines: the path of "
                        f"chosen tokens of stimulus {int(eig['stimulus'].values[stim0])} from the first site "
                        "(ring) to the last" + (", red for tokens on the object, blue for background tokens "
                                                "(from the ground-truth mask)." if "figure" in groups else "."))
        out.attrs.update({"method": spec.method, "n_sample": spec.n_sample, "q": spec.q, "joint": int(joint),
                          "seed": spec.seed})
        ctx.write_result(out)


def _trajectory_tokens(stimuli: Any, eig: xr.DataArray, index: int, n: int) -> tuple[list[int], list[str]]:
    """`n` figure and `n` ground tokens of stimulus `index` (by its mask's majority label per patch), evenly
    spread; without masks, `n` evenly spaced tokens."""
    rows, cols, tok = eig["token_row"].values, eig["token_col"].values, eig["token"].values
    if "masks" not in stimuli.extras:
        pick = np.linspace(0, len(tok) - 1, n).round().astype(int)
        return tok[pick].tolist(), [f"token {t}" for t in tok[pick]]
    import analyses

    grid = (int(rows.max()) + 1, int(cols.max()) + 1)
    counts = analyses.patch_label_counts(stimuli.render_extras([index])["masks"], grid)[0]
    on_grid = (rows >= 0) & (cols >= 0)
    figure = np.zeros(len(tok), bool)
    figure[on_grid] = counts[rows[on_grid], cols[on_grid], 1:].sum(-1) > counts[rows[on_grid], cols[on_grid], 0]
    out, groups = [], []
    for label, sel in (("figure", figure), ("ground", ~figure & on_grid)):
        idx = np.flatnonzero(sel)
        if idx.size:
            pick = idx[np.linspace(0, idx.size - 1, min(n, idx.size)).round().astype(int)]
            out += tok[pick].tolist()
            groups += [label] * len(pick)
    return out, groups
