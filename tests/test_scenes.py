"""Saliency-manipulated scenes (procedural and from a captioned folder) meet their thresholds; image folders."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import stimuli
from stimuli import StimulusError
from stimuli.scenes import CONDITIONS, DESIGN, MAX_OBJECTS

FAST = dict(canvas=64, saliency="spectral_residual")


@pytest.fixture(scope="module")
def procedural():
    return stimuli.scenes(n=3, seed=0, **FAST)


def test_scenes_conditions_meet_their_thresholds(procedural):
    p = procedural.params
    a = p.attrs
    assert len(procedural) == 15 and list(p.condition.values[:5]) == list(CONDITIONS)
    for i in range(len(procedural)):
        cond = str(p.condition.values[i])
        if cond == "Baseline":
            assert p.distractor.values[i] == -1 and p.edge.values[i] == ""
            continue
        similar, salient = DESIGN[cond]
        sal, sem = float(p.saliency_distance.values[i]), float(p.semantic_distance.values[i])
        assert sal > a["salient_above"] if salient else sal < a["non_salient_below"]
        assert sem < a["similar_below"] if similar else sem > a["dissimilar_above"]
        x, y, w, h = (int(p[k].values[i]) for k in ("paste_x", "paste_y", "paste_w", "paste_h"))
        edge = str(p.edge.values[i])
        assert {"top": y == 0, "bottom": y + h == 64, "left": x == 0, "right": x + w == 64}[edge]
        assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64
        assert w * h == pytest.approx(0.1 * 64 * 64, rel=0.15)
    bases = p.base.values.reshape(3, 5)
    assert (bases == bases[:, :1]).all()  # base-major: each base in all five conditions


def test_scenes_render_the_measured_distractor_and_its_masks(procedural):
    from analyses.saliency import resize, spectral_residual
    from analyses.semantics import cosine_distance

    p = procedural.params
    images, extras = procedural.render_with_extras([0, 2])  # base 0: Baseline and Salient
    assert images.shape == (2, 3, 64, 64) and extras["masks"].shape == (2, 64, 64)
    maps = resize(spectral_residual(images).astype(np.float64), (224, 224)).reshape(2, -1)
    assert cosine_distance(maps[0], maps[1])[0] == pytest.approx(float(p.saliency_distance.values[2]), abs=1e-5)
    x, y, w, h = (int(p[k].values[2]) for k in ("paste_x", "paste_y", "paste_w", "paste_h"))
    masks = extras["masks"]
    assert set(np.unique(masks[0])) <= set(range(MAX_OBJECTS + 1)) and masks[0].max() >= 2  # bases: 2-3 objects
    assert (masks[1][y:y + h, x:x + w] == MAX_OBJECTS + 1).any()  # the distractor's objects
    outside = np.ones((64, 64), bool)
    outside[y:y + h, x:x + w] = False
    assert (masks[1][outside] == masks[0][outside]).all()
    assert json.loads(p.attrs["mask_labels"])[-1] == "distractor"


def test_scenes_are_reproducible_and_stored(procedural, tmp_path):
    again = stimuli.scenes(n=3, seed=0, **FAST)
    assert again.content_hash() == procedural.content_hash()
    procedural.to_netcdf(tmp_path / "s.nc")
    back = stimuli.StimulusSet.from_netcdf(tmp_path / "s.nc")
    np.testing.assert_array_equal(back.render([4]), procedural.render([4]))
    assert "caption" in back.params and str(back.params.caption.values[0]).endswith("background")


def test_scene_arguments_are_checked():
    with pytest.raises(StimulusError, match="source"):
        stimuli.scenes(source="coco")
    with pytest.raises(StimulusError, match="conditions"):
        stimuli.scenes(conditions=["Baseline", "Salinet"])
    with pytest.raises(StimulusError, match="images"):
        stimuli.scenes(source="folder")
    with pytest.raises(StimulusError, match="found all four distractors"):
        stimuli.scenes(n=2, non_salient_below=0.0, tries=1, **FAST)


def write_folder(tmp_path, n=14, fmt="json"):
    """A captioned folder made of procedural scenes saved as PNG files (captions name their objects)."""
    from PIL import Image

    from stimuli.scenes import _draw_procedural, _procedural_pool

    pool = _procedural_pool(n // 2, n - n // 2, np.random.default_rng(3))
    images, _ = _draw_procedural(pool, 48)
    folder = tmp_path / "images"
    folder.mkdir()
    caps = [str(c) for c in pool.pool_caption.values]
    for i, img in enumerate(images):
        Image.fromarray((img.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"im{i:02d}.png")
    if fmt == "json":
        data = {"images": [{"id": i, "file_name": f"im{i:02d}.png"} for i in range(n)],
                "annotations": [{"image_id": i, "caption": c} for i, c in enumerate(caps)]}
        (folder / "captions.json").write_text(json.dumps(data))
        return folder, "captions.json"
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        w.writerows([(f"im{i:02d}.png", c) for i, c in enumerate(caps)])
    return folder, str(tmp_path / "captions.csv")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_scenes_from_a_captioned_folder(tmp_path, fmt):
    folder, captions = write_folder(tmp_path, fmt=fmt)
    s = stimuli.scenes(source="folder", images=str(folder), captions=captions, n=None, semantics="concepts",
                       canvas=48, saliency="spectral_residual", tries=24, non_salient_below=0.05, salient_above=0.1)
    p = s.params
    assert len(s) % 5 == 0 and len(s) >= 5 and p.attrs["files"] == "pool_file"
    assert s.render([0, 1]).shape == (2, 3, 48, 48) and s.extras == []
    h = s.content_hash()
    (folder / str(p.pool_file.values[0])).write_bytes((folder / str(p.pool_file.values[1])).read_bytes())
    assert s.content_hash() != h  # the files' bytes are part of the hash


def test_folder_generator(tmp_path):
    folder, _ = write_folder(tmp_path, n=6)
    s = stimuli.folder(str(folder), canvas=32)
    assert len(s) == 6 and list(s.params.file.values[:2]) == ["im00.png", "im01.png"]
    assert s.render([1]).shape == (1, 3, 32, 32)
    sub = stimuli.folder(str(folder), canvas=32, n=3, seed=1)
    assert len(sub) == 3 and set(sub.params.file.values) <= set(s.params.file.values)
    h = s.content_hash()
    (folder / "im00.png").write_bytes((folder / "im01.png").read_bytes())
    assert stimuli.folder(str(folder), canvas=32).content_hash() != h
    with pytest.raises(StimulusError, match="no images"):
        stimuli.folder(str(folder), pattern="*.jpg")
    with pytest.raises(StimulusError, match="not found"):
        stimuli.folder(str(tmp_path / "nope"))
    assert callable(stimuli.scenes) and callable(stimuli.folder)


def test_validating_a_scenes_protocol_checks_without_searching(monkeypatch, tmp_path):
    """`rig validate` checks every scene setting but never runs the (expensive) distractor search."""
    import stimuli.scenes as scenes_module
    from rig.errors import ProtocolError
    from rig.protocol import load_protocol

    def no_search(*args, **kwargs):
        raise AssertionError("validation ran the distractor search")

    monkeypatch.setattr(scenes_module, "_design", no_search)
    text = ('schema_version = 1\nname = "v"\n[subject]\nsource = "phantom"\n[stimuli]\ngenerator = "scenes"\n'
            'n = 4\n{extra}\n[record]\nsites = ["place"]\n')
    good = tmp_path / "good.toml"
    good.write_text(text.format(extra="tries = 3"))
    assert load_protocol(good).stimuli.generator == "scenes"
    bad = tmp_path / "bad.toml"
    bad.write_text(text.format(extra="distractor_area = 2.0"))
    with pytest.raises(ProtocolError, match=r"bad.toml:8: stimuli.distractor_area: distractor_area must be a fraction"):
        load_protocol(bad)
    folder = tmp_path / "folder.toml"
    folder.write_text(text.format(extra=f'source = "folder"\nimages = "{tmp_path / "none"}"\ncaptions = "c.json"'))
    with pytest.raises(ProtocolError, match="stimuli.images: image folder .* not found"):
        load_protocol(folder)
