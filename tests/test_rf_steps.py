"""The receptive-field steps in sessions: protocols/rf-phantom.toml recovers its planted RFs end to end, every
figure has a caption, and the steps' checks stop a protocol before anything is written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rig
from rig.errors import ProtocolError
from rig.rf_phantom import build

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["stimuli.n=900", "stimuli.canvas=112", "subject.options.canvas=112", "subject.options.margin=16",
         "subject.options.size=[5, 10]", "analyse.2.stimuli.n=12", "analyse.2.stimuli.canvas=112",
         "analyse.2.stimuli.diameter=[12, 24]", "analyse.3.shuffles=99",
         "analyse.3.saliency='rf_factories:contrast_saliency'"]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return rig.run(ROOT / "protocols" / "rf-phantom.toml", archive=tmp_path_factory.mktemp("rf"), overrides=SMALL,
                   progress=False)


def test_rf_phantom_protocol_recovers_planted_rfs(session):
    assert session.status == "completed"
    truth = build(seed=0, n_units=16, n_shifters=4, shift=0.4, canvas=112, margin=16, size=[5, 10]).truth()
    bin_px = 112 / 16
    fixed = truth["shift"].values == 0
    rc = session.results["analyses/reverse_correlation"]
    for key in ("centre_x", "centre_y", "size"):
        err = np.abs(rc[key].values - truth[key].values)[fixed]
        assert err.max() < bin_px, (key, err)
    np.testing.assert_array_equal(np.sign(rc["on_off"].values), truth["polarity"].values)
    st = session.results["analyses/rf_structure"]
    centre = st["centre_x"].mean("stimulus").values
    assert np.abs(centre - truth["centre_x"].values)[fixed].max() < bin_px
    assert np.abs(st["size"].mean("stimulus").values - truth["size"].values)[fixed].max() < bin_px
    # the shifters, and only they, move towards each image's salient object
    shifts = st["saliency_shift"].values
    assert (shifts[~fixed] > 3).all() and (st["p_value"].values[~fixed] <= 0.02).all()
    assert np.abs(shifts[fixed]).max() < 0.5
    assert session.info["headline"]["cells shifting towards saliency"] == 4
    assert st["explained_variance_ratio"].sizes["component"] == 11 and st["components"].sizes["pc"] == 6


def test_rf_steps_results_and_captions(session):
    rec = session.recording["units"].values
    pref = session.results["analyses/preferred_stimuli"]
    assert pref["top_stimulus"].values[0].tolist() == np.argsort(rec[:, 0])[::-1][:6].tolist()
    assert pref["bottom_response"].values[0, 0] == rec[:, 0].min()
    grad = session.results["analyses/gradient_rfs"]
    assert grad["rf"].dims == ("cell", "stimulus", "channel", "y", "x") and grad["rf"].shape == (16, 12, 3, 56, 56)
    assert grad["site"].values[0] == "units" and (grad["map_y"].values == -1).all()
    figures = {f: c for step in session.info["steps"].values() for f, c in step.get("figures", {}).items()}
    for name in ("reverse_correlation_retinotopy", "reverse_correlation_maps", "preferred_stimuli_units",
                 "gradient_rfs_units", "rf_structure_explained_variance", "rf_structure_components",
                 "rf_structure_projection", "rf_structure_centres", "rf_structure_saliency_shift"):
        assert len(figures[f"figures/{name}.png"]) > 40, name
        assert (session.path / "figures" / f"{name}.png").stat().st_size > 5000


def test_rf_steps_checks_fail_before_any_session(tmp_path):
    base = ROOT / "protocols" / "rf-phantom.toml"
    cases = [(["analyse.0.sites=['nope*']"], "analyse.0.sites"),
             (["analyse.2.pool=5"], "analyse.2.pool"),
             (["analyse.2.stimuli.generator='nope'"], "analyse.2.stimuli"),
             (["analyse.2.stimuli={generator='sparse_noise', n=12}", "analyse.3.saliency='masks'"],
              "analyse.3.saliency"),  # noise has no object masks
             (["analyse.3.saliency='no_such_model'"], "analyse.3.saliency")]
    for overrides, key in cases:
        with pytest.raises(ProtocolError, match=key.replace(".", r"\.")):
            rig.run(base, archive=tmp_path, overrides=overrides, progress=False)
    assert not any(tmp_path.iterdir())


def test_compare_figures(session):
    """Two sessions' (e.g. trained and random) per-cell results side by side, as [compare] and sweeps draw them."""
    from rig.steps import get_step

    rc = session.results["analyses/reverse_correlation"]
    fig = get_step("reverse_correlation").compare_figure(rc, rc.assign(size=rc["size"] * 2), ("a", "b"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    st = session.results["analyses/rf_structure"]
    fig = get_step("rf_structure").compare_figure(st, st, ("a", "b"))
    assert "saliency" in fig.axes[0].get_ylabel()
    fig, caption = get_step("reverse_correlation").across_figure({"x": rc, "y": rc, "z": rc})  # a sweep's sessions
    assert len(fig.axes[0].get_legend().get_texts()) == 3 and "per site" in caption


def test_masks_as_saliency():
    """saliency = "masks": the stimuli's ground-truth objects (shapes give masks) are the salient part."""
    import stimuli
    from rig.steps.rf_structure import salient_maps

    shapes = stimuli.make("shapes", n=3, canvas=64, diameter=(10, 30), seed=0)
    maps = salient_maps(shapes, shapes.render(), "masks")
    np.testing.assert_array_equal(maps, shapes.render_extras()["masks"] > 0)
