"""The spatial_scores step: spatial information, grid and border score of every mapped unit, with per-unit
shuffle nulls and a class per unit."""
from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field

from ..dims import X_BIN, Y_BIN, unit_names, unit_table, units_first
from .base import Needs, Step, StepContext, StepSettings, register_step
from .ratemaps import analysis_device, open_ratemaps

SCORES = ("spatial_information", "grid_score", "border_score")


class SpatialScoresSettings(StepSettings):
    type: Literal["spatial_scores"]
    ratemaps: Annotated[str, Needs("ratemaps")] = Field("ratemaps", description="name of the ratemaps step to score")
    rate: Literal["robust", "shift", "rectify", "none"] = Field(
        "robust", description="activation -> non-negative rate for spatial information: 'robust' = minus the map's "
        "5th percentile (clipped at 0), 'shift' = minus its minimum (depends on the noisiest bin)")
    shuffles: int = Field(100, ge=0, description="shuffles of stimulus positions for per-unit nulls")
    alpha: float = Field(0.05, gt=0, lt=1, description="significance level of each unit's test against its own "
                         "null (per-unit, uncorrected: `class`), and the false discovery rate of `class_fdr`")
    null: Literal["permutation", "shift"] = Field(
        "permutation", description="'permutation' of stimulus positions, or 'shift': grid and border scores against "
        "circular shifts of the map (keeps smoothness; spatial information keeps the permutation null)")
    stop_after: int | Literal["auto"] = Field(
        "auto", description="sequential stop (Besag-Clifford): a unit stops after this many shuffles reach its "
        "score; 'auto' = the smallest that calls exactly the units the full test calls; 0 = run every shuffle")
    top_k: int = Field(5, gt=0, description="units per score shown in the figure")
    seed: int = 0
    workers: int | None = Field(None, ge=1, description="threads scoring blocks of maps (grid and border scores); "
                                "default: 1 with shuffles (threads gave the nulls no wall time on 2 cores), else "
                                "one per available core; the results do not depend on it")


def short_site(site: str) -> str:
    """A site name short enough for a figure label (`visual.transformer.resblocks.9.attn` -> `block 9.attn`)."""
    return site.replace("visual.transformer.resblocks.", "block ")


@register_step
class SpatialScores(Step):
    """Spatial information, grid and border score of every mapped unit, with per-unit shuffle nulls and a class
    (spatial / grid / border / none), as one table along `cell` with `site` and `unit` coordinates; figures of
    the top units per site and of the score distributions.

    `class` is a per-unit test at `alpha` (about alpha x units false calls per score if nothing were tuned: the
    headline gives that number); `class_fdr` controls the false discovery rate across each site's units
    (Benjamini-Hochberg; it needs about units / alpha shuffles before a single unit can pass, and says so). The
    observed maps are the `ratemaps` result's, not recomputed."""

    section = "analyse"
    Settings = SpatialScoresSettings

    def run(self, ctx: StepContext, spec: SpatialScoresSettings) -> None:
        import analyses
        from analyses.nulls import TooFewShufflesWarning

        rm_spec = ctx.referenced(spec, "ratemaps").spec
        with ctx.recording() as rec, open_ratemaps(ctx.result_of(spec, "ratemaps")) as site_maps:
            occupancy = site_maps.dataset["occupancy"].values
            per_site, maps_flat, scores_flat, names, fdr_needed = [], {}, {}, {}, {}
            for site in site_maps:
                maps = site_maps[site]
                if spec.shuffles > 0:
                    with warnings.catch_warnings():  # said once for all sites below
                        warnings.simplefilter("ignore", TooFewShufflesWarning)
                        scores = analyses.spatial_nulls(
                            rec[site], **rm_spec.map_kwargs(ctx.stimuli.canvas), rate=spec.rate, alpha=spec.alpha,
                            n_shuffles=spec.shuffles, seed=spec.seed, null=spec.null,
                            stop_after=spec.stop_after or None, maps=maps, device=analysis_device(ctx),
                            workers=spec.workers or 1)
                    fdr_needed[site] = int(scores.attrs["fdr_shuffles_needed"])
                else:
                    scores = xr.Dataset({
                        "spatial_information": analyses.spatial_information(maps, occupancy, rate=spec.rate),
                        "grid_score": analyses.grid_score(maps, workers=spec.workers),
                        "border_score": analyses.border_score(maps, workers=spec.workers)})
                flat = unit_table(scores, site)
                per_site.append(flat)
                maps_flat[site] = units_first(maps, (Y_BIN, X_BIN)).values
                scores_flat[site] = {k: flat[k].values for k in SCORES}
                names[site] = unit_names(flat)
                ctx.log.info("spatial scores %s: %d units", site, flat.sizes["cell"])
        too_few = {site: n for site, n in fdr_needed.items() if n > spec.shuffles}
        if too_few:
            warnings.warn(f"{spec.shuffles} shuffles are too few for class_fdr (Benjamini-Hochberg over each site's "
                          f"units) to pass a single unit at {len(too_few)} of {len(fdr_needed)} sites: that needs "
                          f"{max(too_few.values())} shuffles (class, the per-unit test at alpha = {spec.alpha:g}, "
                          "is unaffected)", stacklevel=2)
        result = xr.concat(per_site, dim="cell", join="outer", combine_attrs="drop_conflicts")
        result.attrs.update({"rate": spec.rate, "shuffles": spec.shuffles, "alpha": spec.alpha, "seed": spec.seed,
                             "ratemaps": rm_spec.key, "regress_out": list(rm_spec.regress_out), "null": spec.null})
        ctx.write_result(result)
        short = {s: short_site(s) for s in maps_flat}
        ctx.write_figure(f"{spec.key}_top_units", analyses.top_units_figure(
            {short[s]: m for s, m in maps_flat.items()}, {short[s]: v for s, v in scores_flat.items()},
            k=spec.top_k, title=f"{ctx.protocol.name}: top {spec.top_k} units per site and score",
            labels={short[s]: v for s, v in names.items()}),
            caption=f"For each site (rows), the ratemaps of the {spec.top_k} units with the highest spatial "
                    "information, grid score and border score: the mean response per stimulus position, as "
                    "z-scores over the map's bins (red above the unit's mean, blue below; blank = unvisited "
                    "bin). Each panel is titled with the unit (channel; at a token 't', or at a feature-map "
                    "position (map_y, map_x)) and its score.")
        from scipy.stats import norm

        table = result.assign_coords(site=("cell", [short[s] for s in result["site"].values.astype(str)]))
        shuffled = ("permutations of the stimulus positions" if spec.null == "permutation" else
                    "circular shifts of the map; spatial information: permutations of the stimulus positions")
        null = (f" Grey: the shuffle null of the average site (each unit's null as a normal density from its "
                f"null mean and sd over up to {spec.shuffles} {shuffled}); dashed: the median "
                f"over units of null mean + {norm.ppf(1 - spec.alpha):.2f} sd, the score a typical unit needs for "
                f"p <= {spec.alpha:g} (each unit is tested against its own null); the title counts the units "
                f"that reach it." if spec.shuffles > 0 else " No shuffles were run (shuffles = 0), so no null.")
        ctx.write_figure(f"{spec.key}_distributions", analyses.score_distributions(table, alpha=spec.alpha),
                         caption="The distribution of each score over the units of every site (one line each)."
                                 + null)
        if "class" in result:
            # a class is a per-unit test at alpha: about alpha x units are called per score with no tuning at all
            for column, suffix in (("class", ""), ("class_fdr", " (FDR)")):
                labels, counts = np.unique(result[column].values.astype(str), return_counts=True)
                for label, count in zip(labels, counts):
                    if label != "none":
                        ctx.headline[f"{label} units{suffix}"] = int(count)
            ctx.headline["false calls expected per score"] = round(spec.alpha * result.sizes["cell"], 1)
        grid = result["grid_score"].values
        ctx.headline["best grid score"] = round(float(np.nanmax(grid)), 3) if np.isfinite(grid).any() else None

    def compare_figure(self, a: Any, b: Any, labels: tuple[str, str]) -> Any:
        import analyses

        return analyses.compare_preparations(a, b, labels=labels)

    def across_figure(self, results: Any) -> Any:
        import analyses

        return analyses.preparations_figure(results), ("For each score (spatial information, grid score, border "
                                                       "score), its distribution over the units of every session, "
                                                       "on shared bins (one colour per session)")
