"""The spectral study in the rig: shape masks, the segmentation phantom, and the ncut / segmentation /
alignedcut steps end to end on protocols/alignedcut-phantom.toml (planted truth)."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import analyses
import rig
import stimuli
from rig.errors import RigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """Small graphs: BLAS / OpenMP / torch threads only contend on a shared 2-core machine."""
    from threadpoolctl import threadpool_limits
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def test_shapes_give_masks_labelled_by_shape():
    s = stimuli.make("shapes", n=9, diameter=[40, 90], seed=3, shapes=["triangle", "square"])
    images, extras = s.render_with_extras()
    masks = extras["masks"]
    assert s.extras == ["masks"] and masks.shape == (9, 224, 224) and masks.dtype.kind == "i"
    names = ["triangle", "square"]
    for img, m, kind in zip(images, masks, s.params["shape"].values):
        assert set(np.unique(m)) == {0, names.index(kind) + 1}
        assert ((img[0] < 0.5) == (m > 0)).mean() == 1.0  # the mask is the shape's pixels (coverage >= 1/2)
    assert stimuli.make("circles", n=2).render_extras()["masks"].max() == 1


def test_segmentation_phantom_reads_coverage_and_category():
    from rig.segmentation_phantom import CATEGORIES, build
    model = build(seed=0)
    s = stimuli.make("shapes", n=24, diameter=[50, 140], seed=1)
    images, extras = s.render_with_extras()
    x = torch.from_numpy(images)
    cover, on = model.coverage(x)
    truth = analyses.patch_label_counts(extras["masks"], (14, 14))
    frac = truth[..., 1:].sum(-1) / truth.sum(-1)
    assert np.abs(cover.numpy().reshape(24, 14, 14) - frac).max() < 0.02
    kinds = [CATEGORIES.index(k) for k in s.params["shape"].values]
    assert (model.category(on).numpy() == kinds).all()
    tokens = model(x)
    assert tokens.shape == (24, 197, 32) and torch.allclose(tokens[:, 0], tokens[:, 1:].mean(1), atol=1e-5)
    assert torch.equal(model(x), tokens)  # frozen noise: same image, same answer
    t = model.truth()
    assert list(t.site.values) == ["sites.noise", "sites.figure", "sites.figure_rotated", "sites.category"]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """protocols/alignedcut-phantom.toml, smaller (48 shapes, smaller subgraphs, PCA colours)."""
    from threadpoolctl import threadpool_limits
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        s = rig.run(ROOT / "protocols" / "alignedcut-phantom.toml", archive=tmp_path_factory.mktemp("arch"),
                    progress=False, overrides=["stimuli.n=48", "analyse.0.n_sample=1200",
                                               "analyse.2.n_sample=1500", "analyse.3.method=pca"])
    torch.set_num_threads(before)
    return s


def test_phantom_protocol_recovers_planted_segments(session):
    assert session.status == "completed"
    seg = session.results["analyses/segmentation"]
    fg, cat = seg["miou"].sel(task="figure_ground"), seg["miou"].sel(task="category")
    for site in ("sites.figure", "sites.figure_rotated", "sites.category"):
        assert float(fg.sel(site=site)) > 0.8
    assert float(fg.sel(site="sites.noise")) < 0.6
    assert float(cat.sel(site="sites.category")) > 0.75
    assert float(cat.sel(site="sites.category")) > float(cat.sel(site="sites.figure")) + 0.3
    assert float(cat.sel(site="sites.noise")) < 0.35
    head = session.info["headline"]
    assert head["figure-ground mIoU (best site)"] == pytest.approx(float(fg.max()), abs=1e-3)
    eig = session.results["analyses/ncut"]["eigenvectors"]
    assert eig.dims == ("site", "stimulus", "token", "eig") and eig.shape == (4, 48, 196, 10)
    assert int(eig["token_row"].min()) == 0  # patch tokens only


def test_alignment_puts_the_rotated_site_on_its_original(session):
    """sites.figure_rotated = sites.figure x a planted rotation: aligned, the joint cut gives both sites the
    same eigenvectors; unaligned, they fall apart."""
    joint = session.results["analyses/joint"]["eigenvectors"]
    a, b = joint.sel(site="sites.figure").values, joint.sel(site="sites.figure_rotated").values
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    from rig.steps.ncut import node_layout
    rec = session.recording
    views = {s: node_layout(rec[s].rename(s)) for s in ("sites.figure", "sites.figure_rotated")}
    raw = analyses.unstack_nodes(analyses.nystrom_ncut(views, n_eig=4, n_sample=1500))
    ra, rb = raw.sel(site="sites.figure").values, raw.sel(site="sites.figure_rotated").values
    assert np.abs(ra - rb).max() > 0.5 * np.abs(ra).max()


def test_alignedcut_figures_and_results(session):
    col = session.results["analyses/alignedcut"]
    assert col["rgb"].dims == ("site", "stimulus", "token", "rgb") and float(col["rgb"].max()) <= 1
    assert col["embedding"].sizes["component"] == 2
    figs = {Path(k).name: v for step in session.info["steps"].values() for k, v in (step.get("figures") or {}).items()}
    for name in ("alignedcut_colors.png", "alignedcut_trajectories.png", "segmentation.png"):
        assert (session.path / "figures" / name).is_file()
        assert figs.get(name), f"{name} has no caption"
    assert "oracle" in figs["segmentation.png"].lower()


def test_step_checks_before_any_stimulus_is_shown(tmp_path):
    text = (ROOT / "protocols" / "alignedcut-phantom.toml").read_text()
    bad = tmp_path / "cls.toml"
    bad.write_text(text.replace('tokens = "patches"', 'tokens = "cls"'))
    with pytest.raises(RigError, match="record tokens = 'patches' or 'all'"):
        rig.run(bad, archive=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    with pytest.raises(RigError, match="align needs joint"):
        rig.run(ROOT / "protocols" / "alignedcut-phantom.toml", archive=tmp_path / "a", progress=False,
                overrides=["analyse.2.joint=false"])
    with pytest.raises(RigError, match="target"):
        rig.run(ROOT / "protocols" / "alignedcut-phantom.toml", archive=tmp_path / "a", progress=False,
                overrides=["analyse.2.align=brain"])


def test_brain_alignment_from_a_target_file(tmp_path, session):
    """align = "brain": maps learned to predict responses read from a netCDF file (stimulus, voxel)."""
    from rig.steps.ncut import NcutSettings, fit_alignment, node_layout, read_target
    rec = session.recording
    views = {("", s): node_layout(rec[s].rename(s)) for s in ("sites.figure", "sites.category")}
    shape = session.stimuli.params["shape"].values
    y = np.stack([shape == k for k in ("circle", "square", "triangle")], 1).astype(np.float32)  # a "brain"
    path = tmp_path / "target.nc"
    xr.Dataset({"voxels": (("stimulus", "voxel"), y)}, coords={"stimulus": np.arange(48)}).to_netcdf(path)
    spec = NcutSettings(type="ncut", joint=True, align="brain", target=str(path), align_dim=8, align_stimuli=48,
                        align_steps=40)
    assert read_target(spec, np.array([3, 1])).tolist() == y[[3, 1]].tolist()
    al = fit_alignment(spec, views, logging.getLogger("test"))
    assert al.method == "brain" and al.dim == 8 and al.info["r2"]["sites.category"] > 0.5
    with pytest.raises(RigError, match="lacks stimuli"):
        read_target(spec, np.array([100]))


def test_cut_across_sessions_gives_subject_by_site(session):
    """The multi-subject form (for a sweep's sessions): (subject, site, stimulus, token, eig); two copies of one
    recording cut jointly get the same eigenvectors."""
    from rig.steps.ncut import NcutSettings, cut, node_layout
    rec = session.recording
    views = {(label, s): node_layout(rec[s].rename(s)) for label in ("a", "b")
             for s in ("sites.figure", "sites.category")}
    spec = NcutSettings(type="ncut", joint=True, n_eig=5, n_sample=1500)
    ds = cut(views, spec, logging.getLogger("test"))
    e = ds["eigenvectors"]
    assert e.dims == ("subject", "site", "stimulus", "token", "eig") and list(ds.site.values) == ["sites.figure",
                                                                                                   "sites.category"]
    assert np.abs(e.sel(subject="a").values - e.sel(subject="b").values).max() < 1e-4
    seg = analyses.oracle_segmentation(e, session.stimuli.render_extras()["masks"], n_eig=5, binary=True)
    assert list(seg.site.values) == ["a/sites.figure", "a/sites.category", "b/sites.figure", "b/sites.category"]
    assert float(seg.miou.sel(site="b/sites.figure")) > 0.8
