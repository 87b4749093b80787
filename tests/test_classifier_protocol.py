"""protocols/classifier.toml: a random-weight torchvision classifier's behaviour (top-k classes, P(target) of any
class name) and its conv sites, given back under one dim contract whatever their sizes."""
from pathlib import Path

import numpy as np
import pytest

import rig
from rig.dims import unit_names

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return rig.run(ROOT / "protocols" / "classifier.toml", archive=tmp_path_factory.mktemp("archive"),
                   overrides=["stimuli.n=24", "analyse.0.bins=4", "analyse.1.shuffles=0"], progress=False)


def test_classifier_behaviour_has_top_k_and_any_class_as_target(session):
    assert session.status == "completed"
    beh = session.behaviour
    assert beh.attrs["readout"] == "classifier" and beh.attrs["target"] == "tench" and beh.sizes["choice"] == 1000
    assert beh["top_label"].dims == ("stimulus", "rank") and beh.sizes["rank"] == 5
    np.testing.assert_allclose(beh["target_probability"], beh["probability"].sel(choice="tench"))
    np.testing.assert_allclose(beh["probability"].sum("choice"), 1, rtol=1e-5)
    assert session.info["headline"]["P(tench)"] == pytest.approx(float(beh["target_probability"].mean()), abs=1e-4)


def test_conv_sites_share_one_dim_contract(session):
    rec = session.recording
    assert rec["layer3"].dims == rec["layer4"].dims == ("stimulus", "unit", "map_y", "map_x")
    assert rec["layer3"].shape[1:] == (256, 14, 14) and rec["layer4"].shape[1:] == (512, 7, 7)
    assert rec.stored("layer3").dims != rec.stored("layer4").dims  # storage differs; the user never sees it
    for site in ("layer3", "layer4"):  # code written for one site works for the next
        assert rec[site].mean("unit").dims == ("stimulus", "map_y", "map_x")


def test_conv_units_are_named_by_channel_and_map_position(session):
    table = session.results["analyses/spatial_scores"]
    assert {"unit", "map_y", "map_x"} <= set(table.coords)
    names = unit_names(table)
    i = int(np.flatnonzero((table["map_y"].values == 3) & (table["map_x"].values == 5))[0])
    assert names[i] == f"{int(table['unit'].values[i])} (3,5)"
    assert "(channel; at a token 't', or at a feature-map position (map_y, map_x))" in \
        session.info["steps"]["analyse/spatial_scores"]["figures"]["figures/spatial_scores_top_units.png"]
