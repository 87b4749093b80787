"""The saliency_channels step: the saliency map of some stimuli and its smoothed Sobel gradients, the extra input
channels of the study's encoding models (`[subject.saliency_channels]` feeds them to a subject)."""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import xarray as xr
from pydantic import Field

from .base import Step, StepContext, StepSettings, register_step


class SaliencyChannelsSettings(StepSettings):
    type: Literal["saliency_channels"]
    model: str | None = Field(None, description="saliency model (default: the subject's "
                              "[subject.saliency_channels] model, else spectral_residual)")
    sigma: float | None = Field(None, ge=0, description="px, smoothing before the Sobel gradients (default: the "
                                "subject's, else 5)")
    n_show: int = Field(4, gt=0, description="stimuli shown and stored")


def _settings(ctx_or_pre: Any, spec: SaliencyChannelsSettings) -> tuple[str, float]:
    own = ctx_or_pre.protocol.subject.saliency_channels
    model = spec.model or (own.model if own is not None else "spectral_residual")
    sigma = spec.sigma if spec.sigma is not None else (own.sigma if own is not None else 5.0)
    return model, sigma


@register_step
class SaliencyChannels(Step):
    """The saliency map of the first stimuli and its Gaussian-smoothed Sobel x / y gradients (the study's extra
    input channels): stored and drawn."""

    section = "analyse"
    Settings = SaliencyChannelsSettings

    def check(self, spec: SaliencyChannelsSettings, pre: Any) -> None:
        from analyses.saliency import saliency_model

        try:
            saliency_model(_settings(pre, spec)[0])
        except ValueError as e:
            pre.fail(pre.planned_loc(spec) + ("model",), str(e))

    def run(self, ctx: StepContext, spec: SaliencyChannelsSettings) -> None:
        from analyses.rf_figures import saliency_channels_figure
        from analyses.saliency_channels import CHANNELS, saliency_channels

        model, sigma = _settings(ctx, spec)
        idx = np.arange(min(spec.n_show, len(ctx.stimuli)))
        images = ctx.stimuli.render(idx)
        channels = saliency_channels(images, model, sigma)
        ctx.write_result(xr.Dataset({"channels": (("stimulus", "channel", "y", "x"), channels)},
                                    coords={"stimulus": idx, "channel": list(CHANNELS)},
                                    attrs={"model": model, "sigma": sigma}))
        ctx.write_figure(spec.key, saliency_channels_figure(
            images, channels, ["saliency", "d/dx (per px)", "d/dy (per px)"], title=f"saliency channels ({model})"),
            caption=f"The extra input channels of the study's encoding models for {len(idx)} stimuli (rows): the "
                    f"saliency map ({model}, scaled to [0, 1]) and the x and y Sobel gradients of it after Gaussian "
                    f"smoothing with s.d. {sigma:g} px (change of the map per px; red/blue: increasing/decreasing "
                    "to the right / downwards).")
