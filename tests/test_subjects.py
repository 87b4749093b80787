"""Subjects: building from open_clip / timm / torchvision / factories, weights, preprocess agreement, errors."""
from __future__ import annotations

import time
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from subject_factories import TinyNet, clip_subject, disc_image

from rig.errors import RigError, SubjectError
from rig.subjects import SOURCES, load_checkpoint, load_subject, register_source, resolve_device
from rig.transforms import TensorPreprocess


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _ours_vs_library(preprocess, library_transform, img: np.ndarray) -> np.ndarray:
    """|ours - library| on one uint8 (H, W, 3) image, in normalised input units."""
    ref = library_transform(Image.fromarray(img)).numpy()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    ours = preprocess(x)[0].numpy()
    assert ours.shape == ref.shape
    return np.abs(ours - ref)


@pytest.fixture(scope="module")
def resnet18_timm():
    return load_subject("timm", "resnet18", seed=0, device="cpu")


# ---------------------------------------------------------------------------------------------------- open_clip


@pytest.mark.parametrize("arch, dim", [("ViT-B-32", 512), ("RN50", 1024)])
def test_open_clip_subject(arch, dim):
    s = clip_subject(arch)
    assert s.name == f"open_clip:{arch}:random" and s.input_size == 224 and s.has_text
    assert not s.model.training and not any(p.requires_grad for p in s.model.parameters())
    assert s.logit_scale == pytest.approx(float(s.model.logit_scale.exp()))
    assert s.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's own init
    out = s.forward(np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32))
    assert out.shape == (2, dim) and not out.requires_grad
    text = s.encode_text(["a black circle", "an empty image"])
    assert text.shape == (2, dim)
    np.testing.assert_allclose(text.norm(dim=-1).numpy(), 1.0, rtol=1e-5)


def test_open_clip_site_names_are_relative_to_the_full_model():
    names = dict(clip_subject("ViT-B-32").model.named_modules())
    assert "visual.transformer.resblocks.9.attn" in names and "transformer.resblocks.9.attn" in names


@pytest.mark.parametrize("arch", ["ViT-B-32", "RN50"])
@pytest.mark.parametrize("hw", [(250, 300), (224, 224), (180, 160), (600, 500)])
def test_open_clip_preprocess_matches_library_pipeline(arch, hw):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    s = clip_subject(arch)
    library = image_transform_v2(PreprocessCfg(**s.model.visual.preprocess_cfg), is_train=False)
    diff = _ours_vs_library(s.preprocess, library, disc_image(*hw))
    # PIL resizes uint8 (rounding to 1/255) with its own bicubic kernel: small differences, mostly at edges
    # (measured: mean 0.004-0.005, max 0.04-0.16; bilinear instead of bicubic gives mean 0.016-0.033)
    assert diff.mean() < 0.008 and diff.max() < 0.2
    if hw == (224, 224):
        assert diff.max() < 1e-6  # already the model's size: no resize, exact


def test_preprocess_tolerance_detects_a_wrong_interpolation():
    import dataclasses

    from open_clip.transform import PreprocessCfg, image_transform_v2

    s = clip_subject("ViT-B-32")
    library = image_transform_v2(PreprocessCfg(**s.model.visual.preprocess_cfg), is_train=False)
    wrong = dataclasses.replace(s.transform, interpolation="bilinear")
    assert _ours_vs_library(wrong, library, disc_image(250, 300)).mean() > 0.008


@pytest.mark.slow
def test_open_clip_random_weights_are_seeded_with_the_library_init():
    import open_clip

    before = torch.random.get_rng_state()
    a = load_subject("open_clip", "ViT-S-32", seed=5, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)  # no global RNG state leaks
    b = load_subject("open_clip", "ViT-S-32", seed=6, device="cpu")
    assert not _params_equal(a.model, b.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        ref = open_clip.create_model("ViT-S-32")
    assert _params_equal(a.model, ref)  # same seed -> identical, and exactly the library's own init


def _offline_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_open_clip_missing_weights_offline_is_a_clear_error(monkeypatch, tmp_path):
    _offline_hub(monkeypatch, tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(SubjectError) as err:
        load_subject("open_clip", "RN50", weights="openai", device="cpu")
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "\n" not in msg and "'openai'" in msg and "RN50" in msg
    assert "timm/resnet50_clip.openai" in msg and str(tmp_path / "hf") in msg and "offline" in msg
    assert 'weights = "/path/to/file.pt"' in msg


def test_unreachable_hub_switches_to_cache_only_and_restores(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    import rig.subjects as subjects

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(subjects, "_reachable", lambda host, timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(SubjectError, match="timm/resnet18"):
        load_subject("timm", "resnet18", weights="pretrained", device="cpu")
    assert time.perf_counter() - t0 < 10  # no ~45 s of hub retries
    assert hc.HF_HUB_OFFLINE is False


def test_open_clip_unknown_tag_lists_tags():
    with pytest.raises(SubjectError, match="laion2b_s34b_b79k"):
        load_subject("open_clip", "ViT-B-32", weights="no-such-tag", device="cpu")


@pytest.mark.parametrize("source, arch, expected", [("open_clip", "ViT-B-23", "ViT-B-32"),
                                                    ("timm", "resnet181", "resnet18"),
                                                    ("torchvision", "resnet181", "resnet18")])
def test_unknown_arch_suggests_close_names(source, arch, expected):
    with pytest.raises(SubjectError) as err:
        load_subject(source, arch, device="cpu")
    assert f"unknown {source} arch" in str(err.value) and expected in str(err.value)


# ---------------------------------------------------------------------------------------------------- timm


def test_timm_resnet_subject(resnet18_timm):
    s = resnet18_timm
    assert s.name == "timm:resnet18:random" and s.input_size == 224 and not s.has_text
    assert len(s.class_names) == 1000 and s.class_names[0] == "tench"
    out = s.forward(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 1000)
    with pytest.raises(SubjectError, match="no text tower"):
        s.encode_text(["a circle"])


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_timm_preprocess_matches_library_pipeline(arch, resnet18_timm):
    from timm.data import create_transform, resolve_data_config

    s = resnet18_timm if arch == "resnet18" else load_subject("timm", arch, device="cpu")
    assert s.input_size == 224
    library = create_transform(**resolve_data_config({}, model=s.model), is_training=False)
    diff = _ours_vs_library(s.preprocess, library, disc_image(250, 300))
    assert diff.mean() < 0.01 and diff.max() < 0.25
    if arch != "resnet18":
        assert s.forward(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_timm_random_weights_are_seeded(resnet18_timm):
    before = torch.random.get_rng_state()
    again = load_subject("timm", "resnet18", seed=0, device="cpu")
    other = load_subject("timm", "resnet18", seed=1, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _params_equal(resnet18_timm.model, again.model)
    assert not _params_equal(resnet18_timm.model, other.model)


def test_timm_missing_weights_offline(monkeypatch, tmp_path):
    _offline_hub(monkeypatch, tmp_path)
    with pytest.raises(SubjectError) as err:
        load_subject("timm", "resnet18", weights="pretrained", device="cpu")
    msg = str(err.value)
    assert "timm/resnet18.a1_in1k" in msg and 'weights = "/path/to/file.pt"' in msg
    with pytest.raises(SubjectError, match="no pretrained tag"):
        load_subject("timm", "resnet18", weights="nonsense_tag", device="cpu")


# ---------------------------------------------------------------------------------------------------- torchvision


def test_torchvision_random_subject():
    s = load_subject("torchvision", "resnet18", seed=0, device="cpu")
    assert s.name == "torchvision:resnet18:random" and s.input_size == 224
    assert s.transform.mean == pytest.approx((0.485, 0.456, 0.406)) and s.transform.crop == (224, 224)
    assert s.forward(torch.rand(2, 3, 224, 224)).shape == (2, 1000)
    assert s.class_names is not None and s.class_names[0] == "tench"
    assert _params_equal(s.model, load_subject("torchvision", "resnet18", seed=0, device="cpu").model)


def test_torchvision_weights_transform_matches_library_pipeline():
    from torchvision.models import ResNet18_Weights

    library = ResNet18_Weights.IMAGENET1K_V1.transforms()  # no download: just the settings
    ours = TensorPreprocess.from_library(library)
    assert ours.interpolation == "bilinear" and ours.resize == 256 and ours.crop == (224, 224)
    x = torch.from_numpy(disc_image(250, 300)).permute(2, 0, 1)
    ref = library(x[None])[0].numpy()  # the library's own transform on a uint8 tensor
    diff = np.abs(ours(x[None].float() / 255)[0].numpy() - ref)
    assert diff.mean() < 0.01 and diff.max() < 0.1


def test_torchvision_missing_weights_offline(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SubjectError) as err:
        load_subject("torchvision", "resnet18", weights="IMAGENET1K_V1", device="cpu")
    msg = str(err.value)
    assert "download.pytorch.org/models/resnet18" in msg and str(tmp_path / "torch") in msg
    assert 'weights = "/path/to/file.pt"' in msg and "\n" not in msg
    with pytest.raises(SubjectError, match="IMAGENET1K_V1"):
        load_subject("torchvision", "resnet18", weights="IMAGENET9K", device="cpu")


# ---------------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("layout", ["plain.pt", "state_dict.pth", "model.bin", "file.safetensors", "module.pt"])
def test_local_checkpoint_loads_exactly(tmp_path, layout):
    src = load_subject("timm", "resnet18", seed=3, device="cpu")
    sd = src.model.state_dict()
    path = tmp_path / layout
    if layout.endswith(".safetensors"):
        import safetensors.torch
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout.startswith("state_dict"):
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif layout.startswith("model"):
        torch.save({"model": sd}, path)
    elif layout.startswith("module"):
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    s = load_subject("timm", "resnet18", weights=str(path), seed=0, device="cpu")
    assert _params_equal(s.model, src.model)
    assert s.name == f"timm:resnet18:{layout}"


def test_checkpoint_mismatch_lists_keys(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(TinyNet().state_dict(), path)
    with pytest.raises(SubjectError) as err:
        load_subject("timm", "resnet18", weights=str(path), device="cpu")
    msg = str(err.value)
    assert "missing (" in msg and "conv1.weight" in msg and "unexpected (" in msg and "head.weight" in msg
    wrong = TinyNet().state_dict()
    wrong["head.weight"] = torch.zeros(7, 4)
    torch.save(wrong, path)
    with pytest.raises(SubjectError, match=r"wrong shape \(1\): head.weight \(7, 4\) vs \(5, 4\)"):
        load_checkpoint(TinyNet(), path)
    with pytest.raises(SubjectError, match="not found"):
        load_subject("timm", "resnet18", weights=str(tmp_path / "nope.pt"), device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SubjectError, match="cannot read checkpoint"):
        load_subject("timm", "resnet18", weights=str(tmp_path / "junk.pt"), device="cpu")


# ---------------------------------------------------------------------------------------------------- factory


def test_factory_subject_receives_images_in_0_1_and_seed():
    s = load_subject("factory", factory="subject_factories:build", seed=3, device="cpu")
    assert s.name == "factory:subject_factories:build:random" and s.input_size == 32
    assert s.class_names == ["a", "b", "c", "d", "e"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        ref = TinyNet()
    assert _params_equal(s.model, ref)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(s.forward(x), ref(x))  # no transform: the module gets the [0, 1] images


def test_factory_without_seed_argument_is_seeded_by_the_rig():
    before = torch.random.get_rng_state()
    a = load_subject("factory", factory="subject_factories:build_unseeded", seed=1, device="cpu")
    b = load_subject("factory", factory="subject_factories:build_unseeded", seed=1, device="cpu")
    c = load_subject("factory", factory="subject_factories:build_unseeded", seed=2, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _params_equal(a.model, b.model) and not _params_equal(a.model, c.model)


def test_factory_with_transform_matches_its_pipeline():
    import subject_factories

    s = load_subject("factory", factory="subject_factories:build_with_transform", device="cpu")
    assert s.input_size == 32
    _, library = subject_factories.build_with_transform()
    diff = _ours_vs_library(s.preprocess, library, disc_image(50, 60))
    assert diff.mean() < 0.03 and diff.max() < 0.5  # bilinear on a 60->48 px noise texture


@pytest.mark.parametrize("spec, match", [("subject_factories_nope:build", "cannot import 'subject_factories_nope'"),
                                         ("subject_factories:nope", "has no attribute 'nope'"),
                                         ("subject_factories:build_broken", "returned int"),
                                         ("subject_factories.build", "package.module:callable")])
def test_factory_errors_name_the_string(spec, match):
    with pytest.raises(SubjectError, match=match) as err:
        load_subject("factory", factory=spec, device="cpu")
    assert spec in str(err.value) or "package.module:callable" in str(err.value)


def test_phantom_source_maps_to_its_factory():
    s = load_subject("phantom", seed=0, device="cpu")
    assert s.name == "phantom:random" and s.class_names is not None
    assert s.forward(torch.rand(1, 3, s.input_size, s.input_size)).shape[0] == 1


def test_register_source_extends_the_table():
    register_source("mine", lambda req: load_subject("factory", factory="subject_factories:build", seed=req.seed,
                                                     device=req.device))
    try:
        assert "mine" in SOURCES and load_subject("mine", seed=2, device="cpu").input_size == 32
    finally:
        SOURCES.unregister("mine")
    with pytest.raises(SubjectError, match="unknown subject source 'nope'"):
        load_subject("nope", "x")


def test_devices():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SubjectError, match="unknown device"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(SubjectError, match="CUDA is not available"):
            resolve_device("cuda")
    assert issubclass(SubjectError, RigError)


def test_forward_rejects_wrong_image_shape(resnet18_timm):
    with pytest.raises(SubjectError, match=r"\(B, 3, H, W\)"):
        resnet18_timm.forward(torch.rand(3, 224, 224))
    with pytest.raises(SubjectError, match="floats in"):
        resnet18_timm.forward(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


def test_weights_hash_tracks_parameters():
    a = load_subject("factory", factory="subject_factories:build", seed=0, device="cpu")
    b = load_subject("factory", factory="subject_factories:build", seed=0, device="cpu")
    h = a.weights_hash()
    assert h == b.weights_hash() and len(h) == 64
    with torch.no_grad():
        b.model.head.bias[0] += 1
    assert b.weights_hash() != h
    a.model.register_buffer("scale", torch.tensor(2.0))  # 0-dim, like CLIP's logit_scale
    h0 = a.weights_hash()
    a.model.scale.fill_(3.0)
    assert a.weights_hash() != h0
    assert a.describe()["n_parameters"] == sum(p.numel() for p in a.model.parameters())


def test_options_reach_the_builder():
    s = load_subject("timm", "resnet18", device="cpu", options={"num_classes": 7})
    assert s.forward(torch.rand(1, 3, 224, 224)).shape == (1, 7) and s.class_names is None
    t = load_subject("torchvision", "resnet18", device="cpu", options={"num_classes": 3})
    assert t.forward(torch.rand(1, 3, 224, 224)).shape == (1, 3) and t.class_names is None
    p = load_subject("phantom", device="cpu", options={"n_place": 9})
    assert p.model.populations["place"] == slice(0, 9)
    with pytest.raises(SubjectError, match=r"does not accept the options \['bogus'\]"):
        load_subject("factory", factory="subject_factories:build", device="cpu", options={"bogus": 1})
