"""Recorder: values equal a manual forward pass, tokens, layouts, int16, chunking, crash + resume, behaviour."""
from __future__ import annotations

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import stimuli
from rig.errors import RigError
from rig.recorder import open_recording, record
from rig.subjects import load_subject
from test_sites import factory

ATTN = ["visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.11.attn"]


@pytest.fixture(scope="module")
def vit():
    return load_subject("open_clip", "ViT-B-32", weights="random", seed=0, device="cpu")


@pytest.fixture(scope="module")
def circles():
    return stimuli.circles(n=3, seed=1)


def manual_vit_attn(subject, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Attention outputs `(B, 50, 768)` of every block, by running the blocks by hand (no hooks)."""
    v, outs = subject.model.visual, {}
    for lo in range(0, len(images), batch_size):
        with torch.no_grad():
            x = v._embeds(subject.preprocess(torch.from_numpy(images[lo:lo + batch_size])))
            for k, blk in enumerate(v.transformer.resblocks):
                outs.setdefault(f"visual.transformer.resblocks.{k}.attn", []).append(blk.attention(blk.ln_1(x)))
                x = blk(x)
    return {k: torch.cat(v).numpy() for k, v in outs.items()}


@pytest.fixture(scope="module")
def vit_truth(vit, circles):
    return manual_vit_attn(vit, circles.render(), batch_size=2)


@pytest.mark.slow
@pytest.mark.parametrize("tokens,keep", [("cls", [0]), ("all", list(range(50))), ("patches", list(range(1, 50))),
                                         ([0, 8, 49], [0, 8, 49])])
def test_vit_tokens_equal_manual_forward(vit, circles, vit_truth, tmp_path, tokens, keep):
    path = record(vit, circles, ATTN, tmp_path / "rec.nc", tokens=tokens, batch_size=2, progress=False)
    ds = open_recording(path)
    for site in ATTN:
        want = vit_truth[site][:, keep]
        if tokens == "cls":
            assert ds[site].dims == ("stimulus", "unit")
            np.testing.assert_array_equal(ds[site].values, want[:, 0])
        else:
            assert ds[site].dims == ("stimulus", "token", "unit")
            np.testing.assert_array_equal(ds[site].values, want)
            assert ds[site]["token"].values.tolist() == keep
            grid = np.arange(49)
            assert ds[site]["token_row"].values.tolist() == [-1 if t == 0 else grid[t - 1] // 7 for t in keep]
            assert ds[site]["token_col"].values.tolist() == [-1 if t == 0 else grid[t - 1] % 7 for t in keep]
    np.testing.assert_array_equal(ds.stimuli["x"].values, circles.params["x"].values)
    np.testing.assert_array_equal(ds[ATTN[0]]["diameter"].values, circles.params["diameter"].values)
    assert ds.stimuli["shape"].values.tolist() == circles.params["shape"].values.tolist()
    assert ds.attrs["subject"] == vit.name and ds.attrs["stimuli_hash"] == circles.content_hash()
    ds.close()


class SmallCNN(nn.Module):
    """conv -> in-place ReLU (alters the conv output tensor afterwards) -> pool -> linear: conv and flat sites."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 5, stride=4)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_conv_and_flat_sites_equal_manual_forward(circles, tmp_path):
    subject = factory("test_recorder:SmallCNN")
    net = subject.model
    path = record(subject, circles, ["conv", "fc"], tmp_path / "cnn.nc", batch_size=4, progress=False)
    with torch.no_grad():
        x = subject.preprocess(torch.from_numpy(circles.render()))
        conv = net.conv(x)
        fc = net.fc(net.pool(torch.relu(conv)).flatten(1))
    ds = open_recording(path)
    assert ds.stored("conv").dims == ("stimulus", "unit_4", "map_y", "map_x")   # sizes disagree: unit_<size>
    assert ds.stored("fc").dims == ("stimulus", "unit_5")
    assert ds["conv"].dims == ("stimulus", "unit", "map_y", "map_x") and ds["fc"].dims == ("stimulus", "unit")
    np.testing.assert_allclose(ds["conv"].values, conv.numpy(), rtol=1e-6, atol=1e-6)  # pre-ReLU values
    assert (ds["conv"].values < 0).any()
    np.testing.assert_allclose(ds["fc"].values, fc.numpy(), rtol=1e-6, atol=1e-6)
    ds.close()


def test_seq_first_batch_first_and_tuple_outputs(tmp_path):
    subject = factory("TokenNet")
    net = subject.model
    st = stimuli.circles(n=5, canvas=8, diameter=(2, 4), seed=0)
    path = record(subject, st, ["seq3", "seq5", "bat3", "bat5"], tmp_path / "tok.nc", tokens="all", batch_size=3,
                  progress=False)
    x = subject.preprocess(torch.from_numpy(st.render()))
    with torch.no_grad():
        want = {"seq3": net.seq3(x).transpose(0, 1), "seq5": net.seq5(x)[0].transpose(0, 1),
                "bat3": net.bat3(x), "bat5": net.bat5(x)}
    ds = open_recording(path)
    for k, v in want.items():
        assert ds.stored(k).dims == ("stimulus", f"token_{v.shape[1]}", "unit")
        assert ds[k].dims == ("stimulus", "token", "unit")
        np.testing.assert_allclose(ds[k].values, v.numpy(), rtol=1e-6, atol=1e-6)
    assert ds.dataset["token_row_5"].values.tolist() == [-1, 0, 0, 1, 1]
    assert ds["seq5"]["token_row"].values.tolist() == [-1, 0, 0, 1, 1]
    ds.close()


def test_int16_round_trip_within_half_a_step(vit, circles, vit_truth, tmp_path):
    path = record(vit, circles, ATTN, tmp_path / "q.nc", tokens="all", dtype="int16", batch_size=2, progress=False)
    with netCDF4.Dataset(path) as nc:
        var = nc.variables[ATTN[1]]
        assert var.dtype == np.int16
        scale = float(var.scale_factor)
    ds = open_recording(path)
    got = ds[ATTN[1]].values
    assert got.dtype.kind == "f"
    err = np.abs(got.astype(np.float64) - vit_truth[ATTN[1]])
    span = np.ptp(vit_truth[ATTN[1]][:2])            # the first batch sets the range
    assert err.max() <= scale / 2 * (1 + 1e-3) + 1e-6
    assert scale <= 2 * span / 65534 * (1 + 1e-3)
    assert int(ds[ATTN[1]].attrs.get("n_clipped", ds[ATTN[1]].encoding.get("n_clipped", 0))) == 0
    ds.close()


class Grow(nn.Module):
    """Adds 100 per call: later batches overflow the first batch's int16 range."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + 100.0 * self.calls


class Growing(nn.Module):
    """A flat site `lin` whose output grows from batch to batch."""

    input_size = 8

    def __init__(self):
        super().__init__()
        self.pre, self.lin = nn.Linear(3, 2), Grow()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.pre(x.mean(dim=(2, 3))))


def test_int16_overflow_is_clipped_and_flagged(tmp_path):
    subject = factory("test_recorder:Growing")
    st = stimuli.circles(n=6, canvas=8, diameter=(2, 4), seed=0)
    with pytest.warns(UserWarning, match="clipped"):
        path = record(subject, st, ["lin"], tmp_path / "g.nc", dtype="int16", batch_size=2, progress=False)
    with netCDF4.Dataset(path) as nc:
        assert int(nc.variables["lin"].n_clipped) == 8   # batches 2 and 3 (4 stimuli x 2 units) out of range
        raw = nc.variables["lin"]
        raw.set_auto_maskandscale(False)
        assert np.abs(raw[:]).max() == 32767


def test_dtype_errors(vit, circles, tmp_path):
    with pytest.raises(RigError, match="int16"):
        record(vit, circles, ATTN, tmp_path / "h.nc", dtype="float16", progress=False)
    with pytest.raises(RigError, match="float32"):
        record(vit, circles, ATTN, tmp_path / "h.nc", dtype="float64", progress=False)


def test_chunking_and_unlimited_stimulus_dim(tmp_path):
    subject = factory("test_recorder:SmallCNN")
    st = stimuli.circles(n=260, canvas=64, diameter=(4, 8), seed=0)
    path = record(subject, st, ["conv", "fc"], tmp_path / "c.nc", batch_size=64, progress=False)
    tok = factory("TokenNet")
    path2 = record(tok, stimuli.circles(n=3, canvas=8, diameter=(2, 4), seed=0), ["bat5"], tmp_path / "t.nc",
                   tokens="all", progress=False)
    with netCDF4.Dataset(path) as nc, netCDF4.Dataset(path2) as nc2:
        assert nc.dimensions["stimulus"].isunlimited()
        assert nc.variables["conv"].chunking() == [250, 4, 15, 15]
        assert nc.variables["fc"].chunking() == [250, 5]
        assert nc.dimensions["stimulus"].size == 260
        assert nc2.variables["bat5"].chunking() == [3, 5, 4]          # 3 stimuli: chunks no longer than that
    from rig.recorder import _chunks
    assert _chunks((50, 768), "tokens", 4, 500) == (250, 50, 16)          # ViT-B-32 all tokens: 800 kB
    assert _chunks((768, 56, 56), "conv", 4, 500) == (250, 1, 56, 56)     # large maps: fewer units per chunk


class Boom(Exception):
    pass


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, dtype):
    subject = factory("test_recorder:SmallCNN")
    net = subject.model
    st = stimuli.circles(n=11, canvas=32, diameter=(4, 10), seed=2)
    want = record(subject, st, ["conv", "fc"], tmp_path / "ref.nc", batch_size=2, shard_size=4, dtype=dtype,
                  progress=False)

    calls = {"n": 0}

    def crash(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 4 + 1:            # 2 shards of 2 batches, then die (the catalogue is probed already)
            raise Boom()
    handle = net.fc.register_forward_hook(crash)
    path = tmp_path / "rec.nc"
    with pytest.raises(Boom):
        record(subject, st, ["conv", "fc"], path, batch_size=2, shard_size=4, dtype=dtype, progress=False)
    handle.remove()
    parts = tmp_path / "rec.nc.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000.nc", "part-00001.nc"]
    assert not path.exists()
    with pytest.raises(RigError, match="incomplete"):
        open_recording(path)
    (parts / "part-00002.nc.partial").write_bytes(b"half a file, as left by SIGKILL")
    with pytest.raises(RigError, match="other settings"):
        other = "float32" if dtype == "int16" else "int16"
        record(subject, st, ["conv", "fc"], path, batch_size=2, shard_size=4, dtype=other, progress=False)

    calls["n"] = 0
    handle = net.fc.register_forward_hook(crash)
    record(subject, st, ["conv", "fc"], path, batch_size=2, shard_size=4, dtype=dtype, progress=False)
    handle.remove()
    assert calls["n"] == 2       # only the 3 remaining stimuli of shard 2 (two batches) are recorded again
    assert not parts.exists()
    got, ref = open_recording(path), open_recording(want)
    xr.testing.assert_identical(got.dataset.drop_attrs(), ref.dataset.drop_attrs())
    assert got.attrs["rig_settings"] == ref.attrs["rig_settings"]
    got.close(), ref.close()

    calls["n"] = 0                                   # complete + same settings: returned without recording
    handle = net.fc.register_forward_hook(crash)
    again = record(subject, st, ["conv", "fc"], path, batch_size=2, shard_size=4, dtype=dtype, progress=False)
    assert again == path
    handle.remove()
    assert calls["n"] == 0                           # not even a probe: the catalogue is kept on the subject
    with pytest.raises(RigError, match="already exists"):
        record(subject, st, ["fc"], path, batch_size=2, shard_size=4, dtype=dtype, progress=False)


class Readout:
    """The Readout contract: probabilities (B, K) from the image output, `.labels`, `.dataset(...)`."""

    labels = ["a", "b", "c"]
    target = 1

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output[:, :3], dim=1)

    def dataset(self, probs: np.ndarray, stimulus_index: np.ndarray) -> xr.Dataset:
        return xr.Dataset({"probability": (("stimulus", "choice"), probs),
                           "target_probability": ("stimulus", probs[:, self.target])},
                          coords={"stimulus": stimulus_index, "choice": self.labels})


def test_behaviour_from_the_same_forward_pass(circles, tmp_path):
    subject = factory("test_recorder:SmallCNN")
    path = record(subject, circles, ["fc"], tmp_path / "rec.nc", readout=Readout(), batch_size=4, shard_size=4,
                  progress=False)
    beh = xr.open_dataset(tmp_path / "behaviour.nc")
    want = torch.softmax(subject.forward(torch.from_numpy(circles.render()))[:, :3], dim=1).numpy()
    np.testing.assert_allclose(beh["probability"].values, want, rtol=1e-6)
    assert beh["choice"].values.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(beh["x"].values, circles.params["x"].values)
    rec = open_recording(path)
    np.testing.assert_allclose(rec["fc"].values[:, :3], subject.forward(torch.from_numpy(circles.render()))[:, :3],
                               rtol=1e-6)
    beh.close(), rec.close()
