"""Stimulus generators: parameters, rendering (coverage, anti-aliasing), reproducibility, errors."""
from pathlib import Path

import numpy as np
import pytest

import stimuli
from stimuli import StimulusError, StimulusSet

PIX = np.arange(224) + 0.5


def test_circles_parameters_stay_inside_canvas_and_follow_design():
    s = stimuli.circles(n=2000, canvas=224, diameter=(20, 80), seed=3)
    p = s.params
    assert len(s) == 2000 and set(p.coords) >= {"x", "y", "diameter", "shape"}
    r = p.diameter.values / 2
    assert (p.diameter >= 20).all() and (p.diameter <= 80).all()
    assert (p.x.values - r >= 0).all() and (p.x.values + r <= 224).all()
    assert (p.y.values - r >= 0).all() and (p.y.values + r <= 224).all()
    # positions cover the whole field: every 28-px bin is visited
    hist, _, _ = np.histogram2d(p.y.values, p.x.values, bins=8, range=[[0, 224], [0, 224]])
    assert (hist > 0).all()


def test_rendering_matches_geometry():
    s = stimuli.circles(n=40, seed=1)
    img = s.render()
    assert img.shape == (40, 3, 224, 224) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    ink = 1 - img[:, 0]
    area = np.pi * (s.params.diameter.values / 2) ** 2
    np.testing.assert_allclose(ink.sum((1, 2)), area, rtol=0.01)
    cx = (ink * PIX[None, None, :]).sum((1, 2)) / ink.sum((1, 2))
    cy = (ink * PIX[None, :, None]).sum((1, 2)) / ink.sum((1, 2))
    np.testing.assert_allclose(cx, s.params.x.values, atol=0.05)
    np.testing.assert_allclose(cy, s.params.y.values, atol=0.05)
    # anti-aliased: partial coverage exists on the outline
    assert ((img > 0.05) & (img < 0.95)).any()


@pytest.mark.parametrize("shape, area", [("square", 2.0), ("triangle", 3 * np.sqrt(3) / 4)])
def test_shapes_areas_with_rotation(shape, area):
    s = stimuli.shapes(n=20, seed=0, shapes=(shape,), rotation=True)
    ink = (1 - s.render()[:, 0]).sum((1, 2))
    np.testing.assert_allclose(ink, area * (s.params.diameter.values / 2) ** 2, rtol=0.02)


def test_triangle_points_up_in_image_frame():
    s = stimuli.shapes(n=1, seed=0, shapes=("triangle",), diameter=80)
    ink = 1 - s.render()[0, 0]
    rows = ink.sum(1)
    top, bottom = np.nonzero(rows > 0.5)[0][[0, -1]]
    assert ink[top + 2].sum() < ink[bottom - 2].sum()  # narrow at the top, wide at the bottom


def test_colours_background_and_grid_layout():
    s = stimuli.circles(n=9, diameter=30, color="red", background=(0, 0, 0.5), layout="grid", canvas=90)
    img = s.render()
    assert np.allclose(img[:, :, 0, 0], [0, 0, 0.5])
    assert np.allclose(sorted(set(np.round(s.params.x.values, 6))), [15, 45, 75])
    centre = img[4, :, 45, 45]
    assert np.allclose(centre, [1, 0, 0])


def test_reproducible_hash_and_roundtrip(tmp_path):
    a, b = stimuli.circles(n=50, seed=7), stimuli.circles(n=50, seed=7)
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != stimuli.circles(n=50, seed=8).content_hash()
    a.to_netcdf(tmp_path / "s.nc")
    c = StimulusSet.from_netcdf(tmp_path / "s.nc")
    assert c.content_hash() == a.content_hash()
    np.testing.assert_array_equal(c.render([3, 4]), a.render([3, 4]))


def test_batches_cover_all_and_are_bounded():
    s = stimuli.circles(n=70, seed=0)
    seen = []
    for idx, img in s.batches(32):
        assert len(idx) == len(img) <= 32
        seen.extend(idx)
    assert seen == list(range(70))
    for bad in (0, -1):
        with pytest.raises(StimulusError, match="batch_size must be a positive integer"):
            next(s.batches(bad))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n": 0}, "positive integer"),
    ({"n": -3}, "positive integer"),
    ({"diameter": (20, 300)}, "larger than the canvas"),
    ({"diameter": (50, 20)}, "0 < lo <= hi"),
    ({"color": "blurple"}, "not a colour"),
    ({"layout": "spiral"}, "layout"),
])
def test_bad_parameters_say_what_is_wrong(kwargs, fragment):
    with pytest.raises(StimulusError, match=fragment):
        stimuli.circles(**kwargs)


def test_shapes_as_one_string_is_refused_with_the_list_to_write():
    with pytest.raises(StimulusError, match=r"list of shape names, e.g. \['square'\]"):
        stimuli.shapes(n=4, shapes="square")


def test_make_by_name_and_suggestion():
    assert len(stimuli.make("circles", n=5)) == 5
    with pytest.raises(StimulusError, match="did you mean 'circles'"):
        stimuli.make("circle", n=5)


def test_figures():
    s = stimuli.circles(n=30, seed=0)
    assert len(stimuli.contact_sheet(s, n=12).axes) >= 12
    axes = stimuli.overview(s, batch_size=8).axes  # centres, mean image, and the colour bar of the diameter
    assert len(axes) == 3 and axes[2].get_ylabel() == "diameter (px)"


def test_registries_are_open_and_say_what_they_know():
    from stimuli import UnknownNameError, generators, is_generator, list_generators, register_generator

    assert {"circles", "shapes"} <= set(list_generators()) and is_generator("circles")
    with pytest.raises(UnknownNameError, match="did you mean 'circles'"):
        generators.lookup("circels")
    register_generator("more_circles", stimuli.circles)
    try:
        assert stimuli.make("more_circles", n=3).params.sizes["stimulus"] == 3
        with pytest.raises(ValueError, match="already registered"):
            register_generator("more_circles", stimuli.shapes)
    finally:
        generators.unregister("more_circles")
    assert not is_generator("more_circles")


def test_extras_figures_and_file_hashes(tmp_path):
    """A set may carry per-stimulus extras (rendered with the images), ask for its figures, and render from files
    whose bytes enter its hash."""
    import xarray as xr

    from stimuli import StimulusSet, figures_for, register_renderer, renderers

    files = [tmp_path / f"{i}.txt" for i in range(3)]
    for i, f in enumerate(files):
        f.write_text(str(i))

    @register_renderer("test_masked")
    def render(params):
        level = np.asarray([float(Path(params.attrs["root"], f).read_text()) for f in params["file"].values])
        img = np.broadcast_to(level[:, None, None, None] / 3, (len(level), 3, 4, 4)).astype(np.float32)
        return {"image": img, "mask": np.broadcast_to(level[:, None, None] > 0, (len(level), 4, 4)).astype(int)}

    try:
        params = xr.Dataset(coords={"stimulus": np.arange(3), "file": ("stimulus", [f.name for f in files])},
                            attrs={"generator": "test", "renderer": "test_masked", "canvas": 4, "seed": 0,
                                   "files": "file", "root": str(tmp_path), "extras": '["mask"]',
                                   "figures": '["contact_sheet"]'})
        s = StimulusSet(params)
        images, extras = s.render_with_extras([1, 2])
        assert images.shape == (2, 3, 4, 4) and s.extras == ["mask"] and extras["mask"].shape == (2, 4, 4)
        assert [e[2]["mask"].shape for e in s.batches(2, extras=True)] == [(2, 4, 4), (1, 4, 4)]
        assert list(figures_for(s)) == ["contact_sheet"]      # asked for; the overview needs x, y anyway
        h = s.content_hash()
        files[2].write_text("1")                               # same parameters, other image file
        assert s.content_hash() != h
        files[2].unlink()
        with pytest.raises(stimuli.StimulusError, match="cannot be read"):
            s.content_hash()
    finally:
        renderers.unregister("test_masked")
