"""Behaviour readouts: CLIP zero-shot probabilities, classifier softmax, datasets, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from subject_factories import clip_subject

from rig.behaviour import ReadoutSpec, make_readout
from rig.errors import RigError
from rig.subjects import load_subject

PROMPTS = ["a black circle", "an empty image", "a square"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny():
    return load_subject("factory", factory="subject_factories:build", seed=0, device="cpu")


@pytest.mark.parametrize("arch", ["ViT-B-32", "RN50"])
def test_zero_shot_equals_manual_computation(arch, images):
    import open_clip

    s = clip_subject(arch)
    readout = make_readout(s, {"prompts": PROMPTS, "target": "a black circle"})
    probs = readout(s.forward(images))
    with torch.no_grad():  # by hand, straight from the open_clip model
        img = s.model.encode_image(s.preprocess(images))
        txt = s.model.encode_text(open_clip.get_tokenizer(arch)(PROMPTS))
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        manual = torch.softmax(s.model.logit_scale.exp() * img @ txt.T, dim=-1)
    assert probs.shape == (2, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    assert readout.labels == PROMPTS and readout.target == 0 and readout.kind == "zero_shot"
    assert readout.performance(probs) == pytest.approx(float(manual[:, 0].mean()))


def test_text_embeddings_are_computed_once(monkeypatch, images):
    s = clip_subject("ViT-B-32")
    readout = make_readout(s, ReadoutSpec(prompts=PROMPTS[:2]))
    calls = []
    monkeypatch.setattr(s, "encode_text", lambda prompts: calls.append(prompts))
    out = s.forward(images[:2])
    first = readout(out)
    torch.testing.assert_close(readout(out), first)
    assert calls == []
    monkeypatch.undo()
    readout.refresh()  # recomputes from the (unchanged) text tower
    torch.testing.assert_close(readout(out), first)


def test_zero_shot_dataset(images, tmp_path):
    s = clip_subject("ViT-B-32")
    readout = make_readout(s, {"prompts": PROMPTS, "target": "an empty image"})
    probs = readout(s.forward(images)).numpy()
    ds = readout.dataset(probs, np.array([10, 11]))
    assert ds.probability.dims == ("stimulus", "choice") and list(ds.choice.values) == PROMPTS
    assert list(ds.stimulus.values) == [10, 11]
    np.testing.assert_array_equal(ds.target_probability.values, probs[:, 1])
    np.testing.assert_array_equal(ds.answer.values, np.array(PROMPTS)[probs.argmax(1)])
    np.testing.assert_array_equal(ds.correct.values, (probs.argmax(1) == 1).astype(np.int8))
    assert ds.attrs["readout"] == "zero_shot" and ds.attrs["target"] == "an empty image"
    assert ds.attrs["logit_scale"] == pytest.approx(s.logit_scale)
    ds.to_netcdf(tmp_path / "behaviour.nc", engine="netcdf4")
    back = xr.open_dataset(tmp_path / "behaviour.nc")
    np.testing.assert_array_equal(back.probability.values, probs)
    assert list(back.choice.values) == PROMPTS
    back.close()


def test_classifier_top_k(tmp_path):
    s = load_subject("timm", "resnet18", seed=0, device="cpu")
    readout = make_readout(s, {"top_k": 3})
    assert readout.kind == "classifier" and len(readout.labels) == 1000 and readout.target is None
    x = torch.rand(5, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    logits = s.forward(x)
    probs = readout(logits)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    ds = readout.dataset(probs)
    top = torch.topk(probs, 3, dim=1)
    np.testing.assert_allclose(ds.top_probability.values, top.values.numpy())
    np.testing.assert_array_equal(ds.top_label.values, np.array(s.class_names)[top.indices.numpy()])
    assert ds.top_probability.dims == ("stimulus", "rank") and ds.attrs["top_k"] == 3
    ds.to_netcdf(tmp_path / "b.nc", engine="netcdf4")


def test_prompts_that_are_class_names_select_those_logits(tiny):
    readout = make_readout(tiny, {"prompts": ["d", "b"], "target": "b"})
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    logits = tiny.forward(x)
    torch.testing.assert_close(readout(logits), torch.softmax(logits[:, [3, 1]], dim=-1))
    assert readout.target == 1


def test_classifier_without_class_names_gets_index_labels():
    s = load_subject("factory", factory="subject_factories:build_nameless", device="cpu")
    readout = make_readout(s, {"target": None})
    assert readout.labels == [f"class_{i}" for i in range(5)]


def test_phantom_readout():
    s = load_subject("phantom", device="cpu")
    readout = make_readout(s, {"prompts": list(s.class_names), "target": s.class_names[0]})
    probs = readout(s.forward(torch.ones(2, 3, s.input_size, s.input_size)))  # blank white images
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))


def test_readout_errors(tiny):
    clip = clip_subject("ViT-B-32")
    with pytest.raises(RigError, match="no text tower"):
        make_readout(tiny, {"prompts": ["a black circle", "an empty image"]})
    with pytest.raises(RigError, match="target 'a circle' is not among the choices"):
        make_readout(clip, {"prompts": ["a black circle", "an empty image"], "target": "a circle"})
    with pytest.raises(RigError, match="give \\[behaviour\\] prompts"):
        make_readout(clip, {"top_k": 3})
    with pytest.raises(RigError, match="duplicates"):
        make_readout(clip, {"prompts": ["a", "a"]})
    readout = make_readout(tiny, {})
    with pytest.raises(RigError, match="needs a target"):
        readout.performance(np.ones((2, 5)) / 5)
    with pytest.raises(RigError, match="do not match"):
        readout.dataset(np.ones((2, 3)) / 3)
    with pytest.raises(RigError, match="\\(batch, features\\)"):
        readout(torch.zeros(2, 5, 1))


def test_accepts_the_protocol_model():
    from rig.protocol import BehaviourSpec

    s = clip_subject("ViT-B-32")
    readout = make_readout(s, BehaviourSpec(prompts=["a black circle", "an empty image"], target="a black circle"))
    assert readout.labels == ["a black circle", "an empty image"] and readout.target == 0
