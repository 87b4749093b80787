"""Sites: catalogue (probe hooks, layout and seq-first detection, token grid), glob selection, token choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rig.errors import SiteError
from rig.sites import catalogue, format_catalogue, select_sites, token_indices
from rig.subjects import load_subject


def factory(name: str):
    """A factory subject built by `load_subject` from a callable `module:name` (default module: this one)."""
    return load_subject("factory", factory=name if ":" in name else f"test_sites:{name}", device="cpu")


class Tokens(nn.Module):
    """Emits T tokens of D units from an image, sequence-first `(T, B, D)` or batch-first `(B, T, D)`."""

    def __init__(self, t: int, d: int = 4, seq_first: bool = False, as_tuple: bool = False):
        super().__init__()
        self.t, self.seq_first, self.as_tuple = t, seq_first, as_tuple
        self.proj = nn.Linear(3, t * d)

    def forward(self, x: torch.Tensor):
        y = self.proj(x.mean(dim=(2, 3))).reshape(x.shape[0], self.t, -1)
        y = y.transpose(0, 1).contiguous() if self.seq_first else y
        return (y, torch.zeros(1)) if self.as_tuple else y


class TokenNet(nn.Module):
    """Four token sites: seq-first and batch-first, each with T = 3 (== a probe batch size) and T = 5."""

    input_size = 8

    def __init__(self):
        super().__init__()
        self.seq3, self.seq5 = Tokens(3, seq_first=True), Tokens(5, seq_first=True, as_tuple=True)
        self.bat3, self.bat5 = Tokens(3), Tokens(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.seq3(x), self.seq5(x)[0]
        return a.sum(0) + b.sum(0) + self.bat3(x).sum(1) + self.bat5(x).sum(1)


def four_tokens() -> nn.Module:
    """Batch-first, 4 tokens (a 2x2 grid, no CLS)."""
    net = nn.Sequential(Tokens(4))
    net.input_size = 8
    return net


def timm_registers() -> nn.Module:
    """timm ViT with CLS + 2 register tokens and a 4x4 patch grid."""
    import timm
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, reg_tokens=2, img_size=64)
    net.input_size = 64
    return net


@pytest.fixture(scope="module")
def vit():
    subject = load_subject("open_clip", "ViT-B-32", weights="random", seed=0, device="cpu")
    return subject, catalogue(subject)


def test_catalogue_vit_image_path_only(vit):
    subject, infos = vit
    by = {i.name: i for i in infos}
    attn = by["visual.transformer.resblocks.9.attn"]
    assert (attn.layout, attn.shape, attn.type, attn.tuple_output) == ("tokens", (50, 768), "MultiheadAttention", True)
    assert (attn.grid, attn.n_prefix) == ((7, 7), 1)
    assert by["visual.conv1"].layout == "conv" and by["visual.conv1"].shape == (768, 7, 7)
    assert by["visual"].layout == "flat" and by["visual"].shape == (512,)
    assert not any(n.startswith("transformer.") or n.startswith("token_embedding") for n in by), "text tower fired"
    assert "visual.transformer.resblocks.0.attn.out_proj" not in by   # never called as a module
    names = [n for n, _ in subject.model.named_modules()]
    assert [i.name for i in infos] == [n for n in names if n in by]   # model order


def test_token_positions_cls_then_row_major_grid(vit):
    info = {i.name: i for i in vit[1]}["visual.transformer.resblocks.0.attn"]
    row, col = info.token_positions()
    assert row[0] == -1 and col[0] == -1
    assert row[1:].tolist() == np.repeat(np.arange(7), 7).tolist()
    assert col[1:].tolist() == np.tile(np.arange(7), 7).tolist()


@pytest.mark.parametrize("name,t,seq_first", [("seq3", 3, True), ("seq5", 5, True), ("bat3", 3, False),
                                              ("bat5", 5, False)])
def test_seq_first_detected_not_assumed(name, t, seq_first):
    infos = {i.name: i for i in catalogue(factory("TokenNet"))}
    info = infos[name]
    assert (info.layout, info.shape, info.seq_first) == ("tokens", (t, 4), seq_first)
    assert info.tuple_output == (name == "seq5")
    assert infos[f"{name}.proj"].layout == "flat"
    if t == 5:   # T - 1 = 4 is a square: CLS + 2x2 grid
        assert (info.grid, info.n_prefix) == ((2, 2), 1)
        assert info.token_positions()[0].tolist() == [-1, 0, 0, 1, 1]
    else:
        assert info.grid is None and info.token_positions()[0].tolist() == [-1, -1, -1]


def test_timm_grid_from_patch_embed():
    infos = {i.name: i for i in catalogue(factory("timm_registers"))}
    info = infos["blocks.0"]
    assert (info.shape[0], info.grid, info.n_prefix) == (1 + 2 + 16, (4, 4), 3)
    assert info.token_positions()[0][:4].tolist() == [-1, -1, -1, 0]


def test_select_sites_globs_in_model_order(vit):
    subject, infos = vit
    got = select_sites(subject, ["visual.transformer.resblocks.1?.attn", "visual.conv1",
                                 "visual.transformer.resblocks.[0-1].attn"], infos)
    assert got == ["visual.conv1", "visual.transformer.resblocks.0.attn", "visual.transformer.resblocks.1.attn",
                   "visual.transformer.resblocks.10.attn", "visual.transformer.resblocks.11.attn"]
    assert len(select_sites(subject, "visual.transformer.resblocks.*.attn", infos)) == 12


def test_select_sites_unknown_pattern_suggests_nearest(vit):
    subject, infos = vit
    with pytest.raises(SiteError, match=r"resblock\.\*\.attn.*nearest: visual\.transformer\.resblocks\.0\.attn"):
        select_sites(subject, ["visual.transformer.resblock.*.attn"], infos)
    with pytest.raises(SiteError, match="matches no site"):
        select_sites(subject, "transformer.resblocks.0.attn", infos)   # text tower: not on the image path


def test_token_indices(vit):
    info = {i.name: i for i in vit[1]}["visual.transformer.resblocks.0.attn"]
    assert token_indices(info, "cls").tolist() == [0]
    assert token_indices(info, "patches").tolist() == list(range(1, 50))
    assert token_indices(info, "all") is None
    assert token_indices(info, [0, -1, 3]).tolist() == [0, 49, 3]
    for bad in ([50], [], "first"):
        with pytest.raises(SiteError):
            token_indices(info, bad)
    conv = {i.name: i for i in vit[1]}["visual.conv1"]
    assert token_indices(conv, "cls") is None


def test_cls_refused_without_prefix_token():
    info = {i.name: i for i in catalogue(factory("TokenNet"))}["bat3"]
    with pytest.raises(SiteError, match="tokens='all'"):
        token_indices(info, "patches")
    info4 = catalogue(factory("four_tokens"))[0]   # 4 tokens = 2x2, no CLS
    assert (info4.grid, info4.n_prefix) == ((2, 2), 0)
    assert token_indices(info4, "patches").tolist() == [0, 1, 2, 3]
    with pytest.raises(SiteError, match="no CLS token"):
        token_indices(info4, "cls")


def test_format_catalogue_table(vit):
    text = format_catalogue(vit[1])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "type", "output", "shape", "layout"]
    row = next(line for line in lines if line.startswith("visual.transformer.resblocks.3.attn "))
    assert row.split()[1:] == ["MultiheadAttention", "(50,", "768)", "tokens"]
    assert len(lines) == len(vit[1]) + 2
