"""The steps of the saliency/semantics study (study 000): `saliency_maps` (the saliency of every stimulus, kept
in the session as a result), `rsa` (per-site RDMs against the saliency and semantic RDMs, bootstrap intervals,
delta-RSA per condition) and `brain_rsa` (per-site RDMs against measured brain responses, with the
leave-one-subject-out noise ceiling)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field

from .base import Needs, Step, StepContext, StepSettings, register_step

MAP_Y, MAP_X = "sal_y", "sal_x"


class SaliencyMapsSettings(StepSettings):
    type: Literal["saliency_maps"]
    model: Literal["itti_koch", "spectral_residual", "deepgaze_iie"] = Field(
        "itti_koch", description="saliency model; deepgaze_iie needs weights = a local deepgaze2e.pth")
    weights: str | None = Field(None, description="deepgaze_iie: path of its weights file (never downloaded)")
    size: int = Field(224, gt=1, description="maps are resized to size x size pixels (the study: 224)")
    batch_size: int = Field(16, gt=0)


@register_step
class SaliencyMaps(Step):
    """The saliency map of every stimulus (Itti-Koch-Niebur, spectral residual or DeepGaze IIE), kept in the
    session (`analyses/<name>.nc`, `saliency` `(stimulus, sal_y, sal_x)` in [0, 1]) for the steps that use it."""

    section = "analyse"
    Settings = SaliencyMapsSettings

    def check(self, spec: SaliencyMapsSettings, pre: Any) -> None:
        loc = pre.planned_loc(spec)
        if spec.model == "deepgaze_iie" and not (spec.weights and Path(spec.weights).expanduser().is_file()):
            pre.fail(loc + ("weights",), f"deepgaze_iie needs weights = '<path to deepgaze2e.pth>' (got "
                     f"{spec.weights!r}); it is never downloaded")
        if spec.model != "deepgaze_iie" and spec.weights is not None:
            pre.fail(loc + ("weights",), f"weights are for deepgaze_iie, not {spec.model}")

    def run(self, ctx: StepContext, spec: SaliencyMapsSettings) -> None:
        from analyses.saliency import resize, saliency_model

        model = saliency_model(spec.model, spec.weights)
        stim = ctx.stimuli
        out = np.empty((len(stim), spec.size, spec.size), np.float32)
        for idx, images in stim.batches(spec.batch_size):
            out[idx] = resize(model(images).astype(np.float32), (spec.size, spec.size))
        ds = xr.Dataset({"saliency": (("stimulus", MAP_Y, MAP_X), out, {"units": "1", "long_name": "saliency"})},
                        coords={"stimulus": stim.params["stimulus"].values},
                        attrs={"model": spec.model, "size": spec.size})
        ctx.write_result(ds)
        ctx.headline["saliency maps"] = len(stim)


class RSASettings(StepSettings):
    type: Literal["rsa"]
    sites: list[str] = Field(["*"], description="globs over the recorded sites")
    metric: Literal["cosine", "correlation", "euclidean"] = Field("cosine", description="distance of every RDM")
    method: Literal["spearman", "pearson", "kendall_tau_a"] = Field("spearman", description="RDM comparison")
    saliency: Annotated[str | None, Needs("saliency_maps", when=lambda s: s.saliency is not None)] = Field(
        "saliency_maps", description="the saliency_maps step whose maps give the saliency RDM (none: no saliency RSA)")
    semantics: str | None = Field("concepts", description="text encoder of the captions (concepts, minilm, "
                                  "sentence-transformers:NAME, clip:ARCH[:WEIGHTS]) or a .npy of per-stimulus "
                                  "embeddings; none: no semantic RSA")
    baseline: str = Field("Baseline", description="the condition whose images give the reference RDMs")
    bootstrap: int = Field(200, ge=0, description="stimulus-bootstrap samples for confidence intervals (0: none)")
    level: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


def condition_groups(params: xr.Dataset, baseline: str) -> tuple[dict[str, np.ndarray], str]:
    """`({condition: stimulus indices ordered by base}, baseline)`; a set without conditions is one group `all`.
    Every condition must show the same bases (as `stimuli.scenes` makes them)."""
    if "condition" not in params.variables:
        return {"all": np.arange(params.sizes["stimulus"])}, "all"
    cond = params["condition"].values.astype(str)
    base = params["base"].values if "base" in params.variables else np.arange(len(cond))
    groups = {}
    for c in dict.fromkeys(cond):
        idx = np.flatnonzero(cond == c)
        groups[c] = idx[np.argsort(base[idx], kind="stable")]
    bases = {c: tuple(np.sort(base[i])) for c, i in groups.items()}
    if len(set(bases.values())) > 1:
        from ..errors import RigError

        raise RigError("the conditions of this stimulus set show different base images; RSA per condition needs "
                       "every base in every condition (as stimuli.scenes makes them)")
    return groups, (baseline if baseline in groups else next(iter(groups)))


def reference_rdms(ctx: StepContext, spec: RSASettings, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The saliency and semantic RDMs of the stimuli `idx` (the baseline images)."""
    import analyses

    refs = {}
    if spec.saliency is not None:
        with xr.open_dataset(ctx.result_of(spec, "saliency")) as sal:
            maps = sal["saliency"].values[idx]
        refs["saliency"] = analyses.rdm(maps, spec.metric)
    if spec.semantics is not None:
        refs["semantic"] = analyses.rdm(semantic_features(ctx.stimuli.params, spec.semantics)[idx], spec.metric)
    return refs


def semantic_features(params: xr.Dataset, semantics: str) -> np.ndarray:
    """Per-stimulus semantic embeddings `(stimulus, d)`: a `.npy` file, or the captions through a text encoder."""
    from analyses.semantics import caption_embeddings

    from ..errors import RigError
    from ..semantics import text_encoder

    if semantics.endswith(".npy"):
        emb = np.load(Path(semantics).expanduser())
        if emb.ndim != 2 or len(emb) != params.sizes["stimulus"]:
            raise RigError(f"{semantics}: embeddings of shape {emb.shape}; expected (stimulus, d) with "
                           f"{params.sizes['stimulus']} rows")
        return emb
    if "caption" not in params.variables:
        raise RigError("semantic RSA needs captions (a `caption` stimulus parameter, as stimuli.scenes gives) or "
                       "semantics = '<embeddings.npy>'")
    return caption_embeddings([str(c) for c in params["caption"].values], text_encoder(semantics))


@register_step
class RSA(Step):
    """Representational similarity of every chosen site with the stimuli's saliency and semantics: per condition,
    each site's RDM (over the base images, in base order) against the baseline images' saliency and semantic RDMs;
    delta-RSA (condition - baseline); bootstrap intervals over stimuli for the baseline."""

    section = "analyse"
    Settings = RSASettings

    def check(self, spec: RSASettings, pre: Any) -> None:
        from stimuli.registry import glob_match

        loc = pre.planned_loc(spec)
        if not glob_match(pre.recorded, spec.sites):
            pre.fail(loc + ("sites",), f"{spec.sites} match none of the recorded sites")
        if spec.saliency is None and spec.semantics is None:
            pre.fail(loc, "nothing to compare with: set saliency (a saliency_maps step) and/or semantics")
        params = pre.stimuli.params
        if spec.semantics is not None and not spec.semantics.endswith(".npy") and "caption" not in params.variables:
            pre.fail(loc + ("semantics",), f"generator {pre.protocol.stimuli.generator!r} gives no captions; use "
                     "a captioned set (scenes) or semantics = '<embeddings.npy>' (or none)")
        if spec.semantics is not None and spec.semantics.endswith(".npy") and not Path(spec.semantics).is_file():
            pre.fail(loc + ("semantics",), f"embeddings file {spec.semantics} not found")
        groups, _ = condition_groups(params, spec.baseline)
        if min(len(i) for i in groups.values()) < 3:
            pre.fail(loc, "RSA needs at least 3 stimuli per condition")

    def run(self, ctx: StepContext, spec: RSASettings) -> None:
        import analyses
        from analyses.rsa import bootstrap_compare
        from analyses.rsa_figures import delta_rsa_figure, rsa_curves

        groups, baseline = condition_groups(ctx.stimuli.params, spec.baseline)
        refs = reference_rdms(ctx, spec, groups[baseline])
        ref_names, ref_stack = list(refs), np.stack(list(refs.values()))
        with ctx.recording() as rec:
            sites = rec.select(spec.sites, f"analyse.{spec.key}: sites")
            rdms = {c: np.empty((len(sites), ref_stack.shape[1])) for c in groups}
            for k, site in enumerate(sites):
                values = rec[site].transpose("stimulus", ...).values.astype(np.float32)
                for c, idx in groups.items():
                    rdms[c][k] = analyses.rdm(values[idx], spec.metric)
                ctx.log.info("rsa %s: RDMs of %d conditions", site, len(groups))
        conds = list(groups)
        rsa = np.stack([analyses.compare_rdms(rdms[c], ref_stack, spec.method) for c in conds], axis=-1)
        base_k = conds.index(baseline)
        result = xr.Dataset(
            {"rsa": (("site", "reference", "condition"), rsa),
             "delta_rsa": (("site", "reference", "condition"), rsa - rsa[..., base_k:base_k + 1]),
             "reference_rdm": (("reference", "pair"), ref_stack)},
            coords={"site": sites, "reference": ref_names, "condition": conds},
            attrs={"metric": spec.metric, "method": spec.method, "baseline": baseline, "n_bases": len(groups[baseline]),
                   "semantics": str(spec.semantics), "saliency": str(spec.saliency)})
        if spec.bootstrap > 0:
            boot = bootstrap_compare(rdms[baseline], ref_stack, spec.method, spec.bootstrap, spec.level, spec.seed)
            result["ci_low"] = (("site", "reference"), boot["ci_low"].values)
            result["ci_high"] = (("site", "reference"), boot["ci_high"].values)
            result.attrs.update(bootstrap=spec.bootstrap, level=spec.level)
        ctx.write_result(result)
        band = f"; bands: {spec.level:.0%} bootstrap intervals over stimuli ({spec.bootstrap} samples)" \
            if spec.bootstrap else ""
        ctx.write_figure(f"{spec.key}_curves", rsa_curves(result, title=ctx.protocol.name),
                         caption=f"RSA of every site with the saliency and the semantic RDM of the {baseline} images "
                                 f"({spec.method} rho between {spec.metric}-distance RDMs of "
                                 f"{len(groups[baseline])} images), sites in network order{band}.")
        if len(conds) > 1:
            ctx.write_figure(f"{spec.key}_delta", delta_rsa_figure(result),
                             caption=f"delta-RSA per site: RSA of the site's RDM on each condition's images (a pasted "
                                     f"distractor) with the {baseline} images' saliency / semantic RDM, minus the "
                                     f"{baseline} RSA; one line per condition, negative = the distractor pulls the "
                                     "site away from that attribute.")
        for k, ref in enumerate(ref_names):
            best = int(np.nanargmax(rsa[:, k, base_k]))
            ctx.headline[f"max {ref} RSA"] = round(float(rsa[best, k, base_k]), 4)
            ctx.headline[f"max {ref} RSA site"] = sites[best]

    def compare_figure(self, a: Any, b: Any, labels: tuple[str, str]) -> Any:
        """Both preparations' RSA curves (e.g. trained vs random weights) in one figure per reference."""
        from analyses.rsa_figures import rsa_curves

        return rsa_curves({labels[0]: a.load(), labels[1]: b.load()})

    def across_figure(self, results: Any) -> Any:
        """Every session's RSA curves (e.g. the subjects of a sweep) in one figure per reference."""
        from analyses.rsa_figures import rsa_curves

        return rsa_curves({k: v.load() for k, v in results.items()}), (
            "Spearman RSA of every site with the saliency RDM and the semantic RDM, on the baseline images, one "
            "line per session, sites at their relative depth (0 = first recorded site, 1 = last); bands: 95% "
            "bootstrap intervals over stimuli")


class BrainRSASettings(StepSettings):
    type: Literal["brain_rsa"]
    responses: str = Field(..., description="measured responses: a netCDF file with a 'stimulus' dim (variables = "
                           "ROIs, optional 'subject' dim), an .npy (stimulus, channel), or an Algonauts 2023 folder")
    rois: list[str] | None = Field(None, description="ROIs to use (default all)")
    sites: list[str] = Field(["*"], description="globs over the recorded sites")
    condition: str | None = Field("Baseline", description="the condition whose images the brain saw, when the set "
                                  "has conditions (brain rows = its stimuli in base order)")
    metric: Literal["cosine", "correlation", "euclidean"] = Field("cosine", description="distance of the model RDMs")
    brain_metric: Literal["cosine", "correlation", "euclidean"] = Field("correlation",
                                                                       description="distance of the brain RDMs")
    method: Literal["spearman", "pearson", "kendall_tau_a"] = "spearman"


@register_step
class BrainRSA(Step):
    """Model-brain RSA: every chosen site's RDM against each subject's RDM of each ROI of measured responses to the
    same stimuli, with the leave-one-subject-out noise ceiling per ROI."""

    section = "analyse"
    Settings = BrainRSASettings

    def check(self, spec: BrainRSASettings, pre: Any) -> None:
        loc = pre.planned_loc(spec)
        if not Path(spec.responses).expanduser().exists():
            pre.fail(loc + ("responses",), f"brain responses {spec.responses} not found")

    def run(self, ctx: StepContext, spec: BrainRSASettings) -> None:
        import analyses
        from analyses.brain import load_brain, model_brain_rsa
        from analyses.rsa_figures import brain_rsa_figure

        from ..errors import RigError

        brain = load_brain(spec.responses, spec.rois)
        groups, baseline = condition_groups(ctx.stimuli.params, spec.condition or "")
        idx = groups[spec.condition] if spec.condition in groups else groups[baseline]
        if brain.sizes["stimulus"] != len(idx):
            raise RigError(f"analyse.{spec.key}: {spec.responses} has {brain.sizes['stimulus']} stimuli, the session "
                           f"{len(idx)} (condition {spec.condition}); give responses to the same images, in order")
        with ctx.recording() as rec:
            sites = rec.select(spec.sites, f"analyse.{spec.key}: sites")
            model = {s: analyses.rdm(rec[s].transpose("stimulus", ...).values[idx], spec.metric) for s in sites}
        result = model_brain_rsa(model, brain, spec.method, spec.brain_metric)
        ctx.write_result(result)
        ctx.write_figure(f"{spec.key}", brain_rsa_figure(result),
                         caption=f"Model-brain RSA per site ({spec.method} rho between the site's {spec.metric} RDM "
                                 f"and each subject's {spec.brain_metric} RDM, mean over "
                                 f"{brain.sizes['subject']} subjects), one line per ROI; shaded: the ROI's "
                                 "leave-one-subject-out noise ceiling (lower to upper bound).")
        for roi in result["roi"].values:
            ctx.headline[f"max brain RSA {roi}"] = round(float(result["rsa_mean"].sel(roi=roi).max()), 4)
