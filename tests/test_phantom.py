"""The phantom subject: every planted property is checked through its pixels-in pipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import stimuli
from rig.errors import RigError, SubjectError
from rig.lesions import lesioned, silenced
from rig.phantom import POPULATIONS, WALLS, Phantom, build

CANVAS = 224


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return build(seed=0)


def circles_at(x: np.ndarray, y: np.ndarray, diameter: float = 20.0, color: str = "black",
               background: str = "white") -> np.ndarray:
    """Render circles at exact centres (px) with the rig's own renderer: (B, 3, 224, 224) float32."""
    s = stimuli.circles(n=len(np.atleast_1d(x)), diameter=diameter, color=color, background=background, seed=0)
    params = s.params.assign_coords(x=("stimulus", np.atleast_1d(x).astype(float)),
                                    y=("stimulus", np.atleast_1d(y).astype(float)))
    return stimuli.StimulusSet(params).render()


def run(model: Phantom, images: np.ndarray, sites: tuple[str, ...] = ("units",)) -> dict[str, np.ndarray]:
    """Forward pass recording `sites` with forward hooks; adds `p_stimulus` = P("a stimulus")."""
    out: dict[str, np.ndarray] = {}
    hooks = [getattr(model, s).register_forward_hook(lambda m, a, o, s=s: out.__setitem__(s, o.detach().numpy()))
             for s in sites]
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(images))
    finally:
        for h in hooks:
            h.remove()
    out["p_stimulus"] = logits.softmax(1)[:, 0].numpy()
    return out


# ---------------------------------------------------------------- locate


@pytest.mark.parametrize("color, background", [("black", "white"), ("white", "black"), ("red", "0.5")])
def test_locate_recovers_centres_within_a_pixel(phantom, color, background):
    s = stimuli.circles(n=64, diameter=(20, 80), color=color, background=background, seed=3)
    loc = run(phantom, s.render(), ("locate",))["locate"]
    err = np.hypot(loc[:, 0] - s.params.x.values, loc[:, 1] - s.params.y.values)
    assert err.max() < 1.0
    area = np.pi * s.params.diameter.values ** 2 / 4
    if color != "red":  # full contrast: the weights are the pixel coverage, so the area is the disc's
        np.testing.assert_allclose(loc[:, 2], area, rtol=0.03)
    assert (loc[:, 3] > 0.99).all()


def test_locate_on_an_empty_image_and_other_image_sizes(phantom):
    blank = np.ones((2, 3, CANVAS, CANVAS), np.float32)
    loc = run(phantom, blank, ("locate",))["locate"]
    np.testing.assert_allclose(loc[:, :2], CANVAS / 2)
    np.testing.assert_allclose(loc[:, 2:], 0.0, atol=1e-6)
    # a half-size image is read on the phantom's canvas frame: positions scale by 2
    small = circles_at(np.array([60.0]), np.array([150.0]), diameter=30)[:, :, ::2, ::2].copy()
    loc = run(phantom, small, ("locate",))["locate"]
    np.testing.assert_allclose(loc[0, :2], [60.0, 150.0], atol=1.5)


def test_locate_is_differentiable_in_the_pixels(phantom):
    images = torch.from_numpy(circles_at(np.array([80.0]), np.array([100.0]), diameter=30)).requires_grad_(True)
    phantom.locate(images)[0, 0].backward()
    g = images.grad.abs().sum(1)[0]
    assert g.sum() > 0
    assert g[:, :60].sum() == 0  # only the stimulus's pixels (x in [65, 95]) carry its position
    assert g[:, 60:100].sum() > 0


# ---------------------------------------------------------------- planted populations


def test_truth_describes_every_unit(phantom):
    t = phantom.truth()
    assert isinstance(t, xr.Dataset) and t.sizes["unit"] == phantom.n_units == 100
    counts = {c: int((t.cell_class == c).sum()) for c in POPULATIONS}
    assert counts == {"place": 64, "grid": 12, "border": 8, "untuned": 16}
    place, grid, border = (t.where(t.cell_class == c, drop=True) for c in ("place", "grid", "border"))
    assert np.isfinite(place.centre_x).all() and np.isnan(grid.centre_x).all()
    assert ((grid.spacing >= 48) & (grid.spacing <= 80)).all()
    assert ((grid.orientation >= 0) & (grid.orientation < 60)).all()
    assert sorted(set(border.wall.values)) == sorted(WALLS)
    assert (t.readout_weight.values > 0).sum() == 64 and (t.readout_weight.where(t.cell_class != "place", 0) == 0).all()
    assert build(seed=0).truth().equals(t) and not build(seed=1).truth().equals(t)


def test_place_units_peak_at_their_planted_centres(phantom):
    t = phantom.truth()
    place = t.where(t.cell_class == "place", drop=True)
    images = circles_at(place.centre_x.values, place.centre_y.values)
    r = run(phantom, images, ("place",))["place"]  # (stimulus at centre i, unit j)
    np.testing.assert_allclose(np.diag(r), 1.0, atol=0.01)
    assert (r.argmax(0) == np.arange(len(r))).all()
    # half height at the planted width: exp(-1/2) one s.d. away
    w = float(place.field_width[0])
    r = run(phantom, circles_at(place.centre_x.values[27:28] + w, place.centre_y.values[27:28]), ("place",))["place"]
    assert r[0, 27] == pytest.approx(np.exp(-0.5), abs=0.02)


def _grid_peak_near_centre(spacing: float, orientation: float, px: float, py: float) -> np.ndarray:
    a = np.deg2rad(orientation + np.array([30.0, 90.0]))
    basis = spacing * np.stack([np.cos(a), np.sin(a)], 1)  # rows: two lattice vectors
    coef = np.linalg.solve(basis.T, np.array([CANVAS / 2 - px, CANVAS / 2 - py]))
    return np.array([px, py]) + np.round(coef) @ basis


def test_grid_units_fire_on_a_hexagonal_lattice_of_the_planted_spacing(phantom):
    t = phantom.truth()
    grid = t.where(t.cell_class == "grid", drop=True)
    for j in range(grid.sizes["unit"]):
        lam, theta = float(grid.spacing[j]), float(grid.orientation[j])
        p0 = _grid_peak_near_centre(lam, theta, float(grid.phase_x[j]), float(grid.phase_y[j]))
        u = np.deg2rad(theta + 30 + 60 * np.arange(6))
        dirs = np.stack([np.cos(u), np.sin(u)], 1)
        peaks = np.vstack([p0, p0 + lam * dirs])  # a peak and its 6 neighbours, `spacing` px away
        troughs = p0 + 0.5 * lam * dirs  # half-way between neighbouring peaks
        pts = np.vstack([peaks, troughs])
        inside = ((pts >= 12) & (pts <= CANVAS - 12)).all(1)
        r = run(phantom, circles_at(pts[inside, 0], pts[inside, 1]), ("grid",))["grid"][:, j]
        is_peak = np.arange(13)[inside] < 7
        assert is_peak.sum() >= 3 and (~is_peak).sum() >= 2
        assert (r[is_peak] > 0.97).all(), (j, r)
        assert (r[~is_peak] < 0.03).all(), (j, r)


def test_border_units_fire_along_their_wall(phantom):
    t = phantom.truth()
    border = t.where(t.cell_class == "border", drop=True)
    along = np.array([40.0, 112.0, 184.0])
    near = {"north": (along, np.full(3, 12.0)), "south": (along, np.full(3, CANVAS - 12.0)),
            "west": (np.full(3, 12.0), along), "east": (np.full(3, CANVAS - 12.0), along)}
    for j in range(border.sizes["unit"]):
        wall = str(border.wall[j].values)
        opposite = WALLS[(WALLS.index(wall) + 2) % 4]
        x = np.concatenate([near[wall][0], near[opposite][0], [112.0]])
        y = np.concatenate([near[wall][1], near[opposite][1], [112.0]])
        r = run(phantom, circles_at(x, y), ("border",))["border"][:, j]
        w = float(border.field_width[j])
        np.testing.assert_allclose(r[:3], 1 / (1 + np.exp((12.0 - w) / 4)), atol=0.01)  # the same all along
        assert (r[3:] < 1e-6).all()  # nothing at the opposite wall or the centre
        x, y = near[wall]
        half = {"north": (x[:1], [w]), "south": (x[:1], [CANVAS - w]), "west": ([w], y[:1]),
                "east": ([CANVAS - w], y[:1])}[wall]
        r = run(phantom, circles_at(np.asarray(half[0]), np.asarray(half[1])), ("border",))["border"][0, j]
        assert r == pytest.approx(0.5, abs=0.03)  # half response at the planted width


def test_untuned_units_ignore_position_and_are_frozen(phantom):
    s = stimuli.circles(n=200, seed=5)
    images = s.render()
    r = run(phantom, images, ("untuned",))["untuned"]
    x, y = s.params.x.values, s.params.y.values
    for coord in (x, y, np.hypot(x - 112, y - 112)):
        corr = np.corrcoef(np.column_stack([coord, r]).T)[0, 1:]
        assert np.abs(corr).max() < 0.3  # 200 stimuli: |r| of independent variables < 0.3 but 1 in 10^4
    assert (r.std(0) > 0.1 * r.mean(0)).all()  # they do vary, from image to image
    again = run(phantom, images[::-1].copy(), ("untuned",))["untuned"][::-1]
    np.testing.assert_array_equal(r, again)  # the same image gives the same answer, in any batch
    blank = run(phantom, np.ones((1, 3, CANVAS, CANVAS), np.float32), ("untuned",))["untuned"]
    np.testing.assert_allclose(blank, 0.0)


def test_noise_is_seeded_frozen_and_of_the_requested_size():
    images = stimuli.circles(n=64, seed=2).render()
    clean = run(build(seed=0), images)["units"]
    noisy = run(build(seed=0, noise=0.1), images)["units"]
    again = run(build(seed=0, noise=0.1), images)["units"]
    other = run(build(seed=0, noise=0.1, noise_seed=1), images)["units"]
    np.testing.assert_array_equal(noisy, again)
    planted = slice(0, 84)  # place, grid, border
    diff = noisy[:, planted] - clean[:, planted]
    assert diff.std() == pytest.approx(0.1, rel=0.1) and abs(diff.mean()) < 0.01
    other_diff = other[:, planted] - clean[:, planted]  # same tuning, another noise draw
    assert other_diff.std() == pytest.approx(0.1, rel=0.1)
    assert abs(np.corrcoef(diff.ravel(), other_diff.ravel())[0, 1]) < 0.1


# ---------------------------------------------------------------- behaviour and lesions


def test_readout_detects_stimuli_and_says_empty_on_blank_images(phantom):
    s = stimuli.circles(n=100, seed=7)
    p = run(phantom, s.render())["p_stimulus"]
    assert (p > 0.99).all()
    blanks = np.concatenate([np.ones((2, 3, CANVAS, CANVAS)), np.zeros((1, 3, CANVAS, CANVAS)),
                             np.full((1, 3, CANVAS, CANVAS), 0.3)]).astype(np.float32)
    assert (run(phantom, blanks)["p_stimulus"] < 0.01).all()
    assert phantom.class_names == ["a stimulus", "an empty image"] and phantom.input_size == CANVAS


@pytest.mark.parametrize("n_place", [64, 10, 7, 1])
def test_every_position_lies_in_some_place_field(n_place):
    phantom = build(seed=0, n_place=n_place)
    g = np.linspace(0, CANVAS, 103)
    xx, yy = (a.ravel() for a in np.meshgrid(g, g))
    loc = torch.tensor(np.column_stack([xx, yy, np.full(xx.size, 300.0), np.ones(xx.size)]), dtype=torch.float32)
    n = phantom.place.n
    place = phantom.place(loc, torch.zeros(len(loc), 2 * n))
    units = torch.nn.functional.pad(place, (0, phantom.n_units - n))
    drive = phantom.readout.drive(units)
    # worst case: a canvas corner, step / sqrt(2) from one centre: r = exp(-1 / 1.44), drive (r - 0.25) / 0.75
    assert drive.min() > 0.33 > 2 * phantom.readout.criterion  # the lattice covers the canvas with margin
    covered = np.array([phantom.covering(x, y).sum() for x, y in zip(xx[::97], yy[::97])])
    assert (covered >= 1).all()


@pytest.fixture(scope="module")
def region(phantom) -> dict:
    """400 small circles, the intact units and behaviour, and the units covering the top-left quadrant."""
    s = stimuli.circles(n=400, diameter=(20, 40), seed=11)
    images = s.render()
    g = np.linspace(0, 112, 57)
    x, y = s.params.x.values, s.params.y.values
    return {"images": images, "x": x, "y": y, "in_region": (x < 112) & (y < 112), **run(phantom, images),
            "target": phantom.covering(*np.meshgrid(g, g))}  # units whose fields cover the quadrant


def test_silencing_the_place_units_covering_a_region_abolishes_detection_there_only(phantom, region):
    target, in_region, intact = region["target"], region["in_region"], region["p_stimulus"]
    assert 0 < target.sum() < phantom.place.n
    far = np.hypot(np.maximum(region["x"] - 112, 0), np.maximum(region["y"] - 112, 0)) > 2 * phantom.field_radius
    images = region["images"]
    with silenced(phantom.units, np.broadcast_to(target, (len(images), phantom.n_units))):  # rig's unit lesion
        lesioned = run(phantom, images)["p_stimulus"]
    assert in_region.sum() > 50 and far.sum() > 50
    assert (intact > 0.99).all()
    assert (lesioned[in_region] < 0.01).all()  # abolished everywhere in the region
    np.testing.assert_array_equal(lesioned[far], intact[far])  # untouched where no silenced field reaches
    # in between, within two field radii of the region, detection fades as the remaining fields thin out


def test_random_silencing_of_as_many_units_degrades_detection_less(phantom, region):
    target, in_region = region["target"], region["in_region"]
    units = torch.from_numpy(region["units"][in_region])
    k = int(target.sum())

    def p_region(silence: np.ndarray) -> float:  # silencing units only acts downstream: re-run the readout
        with torch.no_grad():
            return phantom.readout(units * torch.from_numpy(~silence)).softmax(1)[:, 0].mean().item()

    rng = np.random.default_rng(0)
    random = []
    for _ in range(50):
        mask = np.zeros(phantom.n_units, bool)
        mask[rng.choice(phantom.n_units, k, replace=False)] = True
        random.append(p_region(mask))
    assert p_region(target) < 0.01
    assert np.mean(random) > 0.7 and min(random) > p_region(target) + 0.3


def test_weight_lesions_silence_a_population_and_are_restored(phantom):
    images = circles_at(np.array([50.0, 150.0]), np.array([60.0, 170.0]))
    before = run(phantom, images, ("place", "grid"))
    with lesioned(phantom.place):  # rig's weight lesion: zero the module's weights (its per-unit gains)
        out = run(phantom, images, ("place", "grid"))
    np.testing.assert_allclose(out["place"], 0.0)
    np.testing.assert_array_equal(out["grid"], before["grid"])
    assert (out["p_stimulus"] < 0.01).all() and (before["p_stimulus"] > 0.99).all()
    with lesioned(phantom.readout):
        assert (run(phantom, images)["p_stimulus"] < 0.01).all()  # no readout weights: "an empty image"
    np.testing.assert_array_equal(run(phantom, images, ("place",))["place"], before["place"])


# ---------------------------------------------------------------- settings


def test_populations_are_configurable():
    m = build(seed=3, n_place=10, n_grid=0, n_border=4, n_untuned=2)
    t = m.truth()
    assert t.sizes["unit"] == 16 and int((t.cell_class == "grid").sum()) == 0
    assert (build(place_width=30.0).truth().field_width[:64] == 30.0).all()
    p = run(m, stimuli.circles(n=40, seed=1).render(), ("units",))
    assert p["units"].shape == (40, 16) and (p["p_stimulus"] > 0.99).all()


@pytest.mark.parametrize("kwargs", [{"n_place": 0}, {"n_grid": -1}, {"noise": -0.1}, {"grid_spacing": (50, 10)},
                                    {"readout_threshold": 1.5}, {"bogus": 1}, {"place_width": 0.0}])
def test_bad_settings_raise_a_rig_error(kwargs):
    with pytest.raises(SubjectError) as e:
        build(**kwargs)
    assert isinstance(e.value, RigError) and "\n" not in str(e.value)


# ---------------------------------------------------------------- the rig around it


def test_the_subject_loader_builds_the_phantom_with_its_sites_and_labels():
    from rig.sites import catalogue
    from rig.subjects import load_subject

    subject = load_subject("phantom", seed=3, device="cpu", options={"n_grid": 2})
    assert isinstance(subject.model, Phantom) and subject.model.seed == 3 and subject.model.grid.n == 2
    assert subject.input_size == CANVAS and subject.class_names == ["a stimulus", "an empty image"]
    sites = {info.name: info for info in catalogue(subject)}
    assert list(sites) == ["locate", *POPULATIONS, "units", "readout"]
    assert tuple(sites["units"].shape) == (subject.model.n_units,)
    images = torch.from_numpy(stimuli.circles(n=3, seed=0).render())
    assert (subject.forward(images).softmax(1)[:, 0] > 0.99).all()


@pytest.mark.slow
def test_end_to_end_ratemaps_scores_and_nulls_recover_the_planted_classes():
    """circles -> phantom (pixels) -> shuffle nulls of spatial information, grid and border scores -> classes."""
    from analyses.nulls import spatial_nulls

    model = build(seed=0, n_place=16, n_grid=6, n_border=4, n_untuned=8)
    # small circles: centres come within 10 px of the walls, so the bins along the walls are visited
    s = stimuli.circles(n=1000, diameter=20, seed=0)
    units = np.concatenate([run(model, images)["units"] for _, images in s.batches(250)])
    responses = xr.DataArray(units, dims=("stimulus", "unit"), attrs={"canvas": CANVAS},
                             coords={"x": ("stimulus", s.params.x.values), "y": ("stimulus", s.params.y.values)})
    alpha = 0.01
    # rate="shift": the effect-size check below was set for it ("robust", the default, gives noise maps a lower
    # baseline, so their information is higher in bits/spike while their p-values stay calibrated)
    result = spatial_nulls(responses, n_shuffles=99, seed=0, alpha=alpha, rate="shift")  # p >= 1 / 100
    truth = model.truth()
    cell, cls = truth.cell_class.values, result["class"].values
    assert (cls[cell == "grid"] == "grid").all()
    assert (cls[cell == "border"] == "border").all()
    place = cell == "place"
    assert (result.spatial_information_p.values[place] <= alpha).all()  # every place unit is informative
    assert np.isin(cls[place], ["spatial", "border"]).all()  # fields touching a wall may also beat the border null
    centres = np.column_stack([truth.centre_x.values, truth.centre_y.values])[place]
    interior = np.minimum(centres, CANVAS - centres).min(1) > 2 * truth.field_width.values[place]
    assert interior.sum() == 4 and (cls[place][interior] == "spatial").all()
    untuned = cell == "untuned"
    assert (cls[untuned] == "none").sum() >= untuned.sum() - 1  # alpha = 1% false positives per score
    assert result.spatial_information.values[untuned].max() < 0.25 * result.spatial_information.values[place].min()
