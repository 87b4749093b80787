"""The two lesion protocols (the blog's experiments) run end to end as sessions on a small random subject.

Overrides keep the files' structure (sites, prompts, strategies, module lists) and shrink the cost: ViT-S-32
(the same module layout as ViT-B-32, width 384) with random weights at 64 px input (5 tokens), a handful of
stimuli, fewer proportions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import rig

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"
SMALL = ["subject.arch=ViT-S-32", "subject.weights=random", "subject.options={force_image_size=64}"]


PER_BLOCK = ["ln_1", "attn", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]


@pytest.mark.slow
def test_layer_lesions_protocol_runs_every_layer_of_both_towers(tmp_path):
    session = rig.run(PROTOCOLS / "layer-lesions.toml", archive=tmp_path, progress=False,
                      overrides=SMALL + ["stimuli.n=3", "perturb.0.n_stimuli=2", "perturb.0.batch_size=2"])
    assert session.status == "completed", session.info["error"]
    ds = xr.open_dataset(session.path / "perturb/weight_lesions.nc")
    towers = ds["tower"].values
    modules = [str(m) for m in ds["module"].values]
    visual = [m for m, t in zip(modules, towers) if t == "visual"]
    text = [m for m, t in zip(modules, towers) if t == "text"]
    # the documented counts: 75 visual (conv1, ln_pre, 12 x 6 per block, ln_post) and 74 text modules
    assert len(visual) == 75 and len(text) == 74
    assert visual[:2] == ["visual.conv1", "visual.ln_pre"] and visual[-1] == "visual.ln_post"
    assert visual[2:8] == [f"visual.transformer.resblocks.0.{m}" for m in PER_BLOCK]
    assert text[-1] == "ln_final" and text[:2] == ["transformer.resblocks.0.ln_1", "transformer.resblocks.0.attn"]
    assert ds["target_probability"].dims == ("module", "stimulus") and ds.sizes["stimulus"] == 2
    tp = ds["target_probability"].values
    finite = np.isfinite(tp).all(1)
    # random init has zero LayerNorm biases: zeroing the last LayerNorm's weight leaves a zero embedding (no cosine)
    assert set(np.array(modules)[~finite]) <= {"visual.ln_post", "ln_final"} and finite.sum() >= 147
    assert ((tp[finite] >= 0) & (tp[finite] <= 1)).all()
    assert np.ptp(ds["mean"].values[finite]) > 0.01  # lesions change behaviour
    assert (session.path / "figures/weight_lesions.png").stat().st_size > 10_000
    ds.close()


@pytest.mark.slow
def test_targeted_lesions_protocol_runs_all_strategies_over_the_proportions(tmp_path):
    session = rig.run(PROTOCOLS / "targeted-lesions.toml", archive=tmp_path, progress=False,
                      overrides=SMALL + ["stimuli.n=12", "analyse.0.bins=3", "perturb.0.n_stimuli=6",
                                         "perturb.0.repeats=2", "perturb.0.batch_size=6",
                                         "perturb.0.proportions={start=0.0, stop=1.0, step=0.5}"])
    assert session.status == "completed", session.info["error"]
    ds = xr.open_dataset(session.path / "perturb/unit_lesions.nc")
    assert list(ds["strategy"].values) == ["random", "targeted", "targeted_abs"]
    np.testing.assert_allclose(ds["proportion"].values, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ds["n_lesioned"].values, [0, 192, 384])  # ViT-S-32: 384 units at resblock 9
    assert ds["target_probability"].shape == (3, 2, 3, 6)  # strategy, repeat, proportion, stimulus
    assert ds["mean"].dims == ("strategy", "proportion") and np.isfinite(ds["mean"].values).all()
    assert ds.attrs["prefix_cache"] == "visual.transformer.resblocks.9" and ds.attrs["cls_only_last_block"] == 1
    tp = ds["target_probability"].values
    np.testing.assert_allclose(tp[:, 0, 0], np.broadcast_to(tp[0, 0, 0], (3, 6)), rtol=1e-5)  # p=0: no lesion
    np.testing.assert_allclose(tp[:, 0, -1], np.broadcast_to(tp[0, 0, -1], (3, 6)), rtol=1e-5)  # p=1: all units
    assert np.isnan(tp[1:, 1]).all()  # deterministic strategies have one repeat
    assert (session.path / "figures/unit_lesions.png").stat().st_size > 10_000
    ds.close()
