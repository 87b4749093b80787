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
                                         "perturb.0.proportions={start=0.0, stop=1.0, step=0.5}",
                                         "perturb.0.ranking=circular"])
    assert session.status == "completed", session.info["error"]
    ds = xr.open_dataset(session.path / "perturb/unit_lesions.nc")
    assert list(ds["strategy"].values) == ["random", "targeted_raw", "targeted_raw_abs", "targeted", "targeted_abs",
                                           "by_mean"]
    np.testing.assert_allclose(ds["proportion"].values, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ds["n_lesioned"].values, [0, 192, 384])  # ViT-S-32: 384 units at resblock 9
    assert ds["target_probability"].shape == (6, 2, 3, 6)  # strategy, repeat, proportion, stimulus
    assert ds["mean"].dims == ("strategy", "proportion") and np.isfinite(ds["mean"].values).all()
    assert ds.attrs["prefix_cache"] == "visual.transformer.resblocks.9" and ds.attrs["cls_only_last_block"] == 1
    tp = ds["target_probability"].values
    np.testing.assert_allclose(tp[:, 0, 0], np.broadcast_to(tp[0, 0, 0], (6, 6)), rtol=1e-5)  # p=0: no lesion
    np.testing.assert_allclose(tp[:, 0, -1], np.broadcast_to(tp[0, 0, -1], (6, 6)), rtol=1e-5)  # p=1: all units
    assert ds.attrs["ranking"].startswith("circular") and ds.attrs["unit"] == "channel"
    assert np.isnan(tp[1:, 1]).all()  # deterministic strategies have one repeat
    assert (session.path / "figures/unit_lesions.png").stat().st_size > 10_000
    ds.close()


# -- the CNN lesion protocol, and mistakes caught before the first stimulus ---------------------------------------
CNN = PROTOCOLS / "cnn-lesions.toml"


@pytest.mark.slow
def test_cnn_lesion_protocol_lesions_channels_and_map_elements_of_resnet18_layer4(tmp_path):
    """Issue 16: `unit_lesions` with random and targeted strategies at layer4 of a random-weight ResNet-18
    completes for both unit settings, and its result says what a unit is."""
    session = rig.run(CNN, archive=tmp_path, progress=False,
                      overrides=["stimuli.n=24", "analyse.0.bins=3"] + [
                          f"perturb.{i}.{key}" for i in (0, 1) for key in (
                              "n_stimuli=6", "repeats=2", "proportions=[0.0, 0.5]", 'strategy=["random", "targeted"]')])
    assert session.status == "completed", session.info["error"]
    channels, elements = session.results["perturb/channels"], session.results["perturb/elements"]
    assert channels.attrs["n_units"] == 512 and elements.attrs["n_units"] == 512 * 7 * 7
    assert channels.attrs["unit"] == "channel" and "silenced at every map position" in channels.attrs["unit_meaning"]
    assert "one channel at one map position of the (512, 7, 7) output of layer4" in elements.attrs["unit_meaning"]
    for ds in (channels, elements):
        assert list(ds["strategy"].values) == ["random", "targeted"]
        assert ds.attrs["prefix_cache"] == "layer4" and ds.attrs["ranking"].startswith("held out")
        assert np.isfinite(ds["mean"].values).all() and np.isfinite(ds["ci_low"].values).all()
    caption = session.info["steps"]["perturb/elements"]["figures"]["figures/elements.png"]
    assert "one channel at one map position" in caption and "Bands" in caption


CNN_PROTOCOL = """\
schema_version = 1
name = "cnn-mistake"

[subject]
source = "torchvision"
arch = "resnet18"
weights = "random"

[stimuli]
generator = "shapes"
n = 50

[record]
sites = ["layer2", "layer4"]

[behaviour]
{behaviour}

[[analyse]]
type = "ratemaps"

[[analyse]]
type = "spatial_scores"
shuffles = 0

[[perturb]]
type = "unit_lesions"
site = "{site}"
strategy = {strategy}
"""
GOOD = dict(site="layer4", strategy='["random", "targeted"]', behaviour='prompts = ["ping-pong ball", "envelope"]\n'
            'target = "ping-pong ball"')


@pytest.mark.parametrize("change, expected", [
    (dict(site="layer9"), r":\d+: perturb\.0\.site: site 'layer9' is no module of torchvision:resnet18:random; "
                          r"did you mean 'layer4'\?"),
    (dict(site="layer1"), r":\d+: perturb\.0\.site: targeted lesions at 'layer1' need its ratemaps: add it to "
                          r"\[record\] sites and to the sites of the ratemaps step 'ratemaps'"),
    (dict(behaviour="top_k = 5"), r":\d+: behaviour: the unit lesions of perturb.unit_lesions measure the probability "
                                  r"of a target: set \[behaviour\] target"),
])
def test_lesion_mistakes_are_rejected_before_the_first_stimulus(tmp_path, change, expected):
    """Issue 16: each mistake stops the run in preflight with one line naming the file, line, step and fix, and
    leaves no session folder (so no recording.nc), within seconds: the preflight's CPU time (which other work on
    the machine does not inflate) is about 2 s (`rig run` on the command line, with
    torch to import: about 7 s of CPU)."""
    import re
    import time

    from rig.errors import ProtocolError

    proto = tmp_path / "cnn.toml"
    proto.write_text(CNN_PROTOCOL.format(**{**GOOD, **change}))
    start = time.process_time()
    with pytest.raises(ProtocolError) as error:
        rig.run(proto, archive=tmp_path / "archive", progress=False)
    assert time.process_time() - start < 20
    assert re.fullmatch(re.escape(str(proto)) + expected + ".*", str(error.value)), str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").iterdir())


def test_lesion_settings_that_cannot_run_are_rejected_at_preflight(tmp_path):
    """Element units at a token site recorded with the CLS token only; unit indices beyond the site's units."""
    from rig.errors import ProtocolError

    with pytest.raises(ProtocolError, match=r"perturb\.0\.unit: unit = 'element' at token site .*tokens = 'all'"):
        rig.run(PROTOCOLS / "targeted-lesions.toml", archive=tmp_path, progress=False,
                overrides=SMALL + ["stimuli.n=4", "analyse.0.bins=3", "perturb.0.unit=element"])
    with pytest.raises(ProtocolError, match=r"perturb\.0\.units: units must be distinct indices in \[0, 100\)"):
        rig.run(PROTOCOLS / "phantom.toml", archive=tmp_path, progress=False,
                overrides=['perturb.0.strategy=["units"]', "perturb.0.units=[3, 100]"])
    assert not any(tmp_path.iterdir())
