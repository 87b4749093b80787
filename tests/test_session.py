"""Sessions end to end on the planted-truth phantom: run, browse, kill (SIGKILL / SIGTERM), resume, refuse."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import pytest
import xarray as xr

import rig
from rig.errors import RigError

PHANTOM = """\
schema_version = 1
name = "phantom-session"
description = "planted truth <b>&</b> \\"quotes\\""

[subject]
source = "phantom"

[stimuli]
generator = "circles"
n = {n}
diameter = [20, 40]
seed = 1

[record]
sites = ["place", "grid", "border", "units"]
batch_size = {batch}

[behaviour]
prompts = ["a stimulus", "an empty image"]
target = "a stimulus"

[[analyse]]
type = "ratemaps"
bins = 14

[[analyse]]
type = "spatial_scores"
shuffles = 0

[[perturb]]
type = "unit_lesions"
site = "place"
strategy = ["random", "targeted"]
proportions = [0.0, 0.5, 1.0]
repeats = 2
n_stimuli = 40
"""


def _protocol(tmp_path: Path, n: int = 300, batch: int = 32) -> Path:
    f = tmp_path / "phantom.toml"
    f.write_text(PHANTOM.format(n=n, batch=batch))
    return f


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An archive with two completed phantom sessions that differ in one setting."""
    root = tmp_path_factory.mktemp("archive")
    proto = _protocol(tmp_path_factory.mktemp("p"))
    a = rig.run(proto, archive=root, progress=False)
    b = rig.run(proto, archive=root, overrides=["stimuli.seed=2"], progress=False)
    return root, a, b


def test_session_folder_holds_every_step(archive):
    root, a, _ = archive
    assert a.status == "completed"
    for name in ("protocol.toml", "protocol.resolved.json", "session.json", "provenance.json", "stimuli.nc",
                 "recording.nc", "behaviour.nc", "analyses/ratemaps.nc", "analyses/spatial_scores.nc",
                 "perturb/unit_lesions.nc", "report.html", "log.txt"):
        assert (a.path / name).is_file(), name
    assert not list(a.path.rglob("*.partial"))
    info = a.info
    assert all(s["status"] == "done" for s in info["steps"].values())
    prov = a.provenance
    assert prov["stimulus_hash"] == a.stimuli.content_hash()
    assert prov["protocol_hash"] == a.protocol.hash() and len(prov["weights_sha256"]) == 64
    rec = a.recording
    # sites differ in size (stored as unit_64, unit_100): each is given back under the canonical dims
    assert rec["place"].dims == ("stimulus", "unit") and rec.n_stimuli == 300 and rec["units"].sizes["unit"] == 100
    assert rec.stored("place").dims == ("stimulus", "unit_64")
    assert {"x", "y", "diameter"} <= set(rec.stimuli.coords) and {"x", "y"} <= set(rec["place"].coords)
    assert 0.9 < float(a.behaviour["target_probability"].mean()) <= 1
    results = a.results
    assert {"analyses/ratemaps", "analyses/spatial_scores", "perturb/unit_lesions"} <= set(results)
    # planted truth survives the whole pipeline: the lesion of all place units abolishes detection
    lesion = results["perturb/unit_lesions"]
    assert float(lesion["mean"].sel(strategy="targeted", proportion=1.0)) < 0.2


def test_browsing_commands(archive):
    root, a, b = archive
    out = _cli("ls", "--archive", str(root), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == [b.id, a.id]  # newest first
    out = _cli("show", a.id, "--archive", str(root), "--json")
    shown = json.loads(out.stdout)
    assert shown["status"] == "completed" and shown["headline"]["stimuli"] == 300
    out = _cli("diff", a.id, b.id, "--archive", str(root), "--json")
    diff = json.loads(out.stdout)
    assert diff["settings"] == {"stimuli.seed": [1, 2]}
    out = _cli("ls", "--archive", str(root), "--where", "stimuli.seed=2", "--json")
    assert [r["id"] for r in json.loads(out.stdout)] == [b.id]
    assert rig.open_session(a.path).status == "completed"
    assert rig.Archive(root).sessions().shape[0] == 2


def test_copied_session_still_opens_and_reports(archive, tmp_path):
    _, a, _ = archive
    copy = tmp_path / "elsewhere" / a.id
    shutil.copytree(a.path, copy)
    s = rig.open_session(copy)
    assert s.status == "completed" and s.recording["units"].shape == (300, 100)
    out = _cli("report", "--archive", str(copy.parent))
    assert out.returncode == 0, out.stderr
    html = (copy / "report.html").read_text()
    assert "<b>&</b>" not in html and "&lt;b&gt;&amp;&lt;/b&gt;" in html


def test_report_shows_figures_in_step_order_with_captions(archive):
    _, a, _ = archive
    html = (a.path / "report.html").read_text()
    figures = html[html.index("<h2>Figures</h2>"):html.index("<h2>Protocol</h2>")]
    headings = [h.split("</h3>")[0] for h in figures.split("<h3>")[1:]]
    assert headings == ["design", "analyse/spatial_scores", "perturb/unit_lesions"]
    steps = json.loads((a.path / "session.json").read_text())["steps"]
    caption = steps["perturb/unit_lesions"]["figures"]["figures/unit_lesions.png"]
    assert "silenced" in caption and caption in figures


def _start(proto: Path, root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rig.cli", "run", str(proto), "--archive", str(root), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"session ended before the condition: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("timed out")


@pytest.mark.slow
def test_sigkill_during_recording_then_resume_equals_uninterrupted(tmp_path):
    proto = _protocol(tmp_path, n=1500, batch=8)
    root = tmp_path / "archive"
    proc = _start(proto, root)
    parts = lambda: list(root.glob("*/recording.nc.parts/part-00000.nc"))  # noqa: E731
    _wait_for(lambda: bool(parts()), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = parts()[0].parent.parent
    assert rig.open_session(folder).status == "stale"
    out = _cli("ls", "--archive", str(root), "--json")
    assert json.loads(out.stdout)[0]["status"] == "stale"
    assert not (folder / "recording.nc").exists()
    for f in folder.rglob("*.nc"):  # every finished file opens: nothing truncated under a final name
        netCDF4.Dataset(f).close()
    out = _cli("resume", folder.name, "--archive", str(root), "--quiet")
    assert out.returncode == 0, out.stderr
    resumed = rig.open_session(folder)
    assert resumed.status == "completed"
    fresh = rig.run(proto, archive=tmp_path / "fresh", progress=False)
    for name in ("recording.nc", "behaviour.nc", "analyses/ratemaps.nc", "perturb/unit_lesions.nc"):
        with xr.open_dataset(folder / name) as x, xr.open_dataset(fresh.path / name) as y:
            xr.testing.assert_identical(x.drop_attrs(), y.drop_attrs())


@pytest.mark.slow
def test_sigterm_marks_interrupted(tmp_path):
    proto = _protocol(tmp_path, n=1500, batch=8)
    root = tmp_path / "archive"
    proc = _start(proto, root)
    _wait_for(lambda: any(json.loads(p.read_text()).get("steps", {}).get("record", {}).get("status") == "running"
                          for p in root.glob("*/session.json")), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rig resume" in err and "Traceback" not in err, err
    (folder,) = root.iterdir()
    info = json.loads((folder / "session.json").read_text())
    assert info["status"] == "interrupted" and info["steps"]["record"]["status"] == "interrupted"


def _interrupted_session(tmp_path: Path) -> Path:
    """A session stopped after its design step (the record step raised)."""
    proto = _protocol(tmp_path, n=50)
    root = tmp_path / "archive"
    with pytest.raises(KeyboardInterrupt):
        from rig.steps import get_step

        record = get_step("record")
        record.run = lambda ctx, spec: (_ for _ in ()).throw(KeyboardInterrupt())
        try:
            rig.run(proto, archive=root, progress=False)
        finally:
            del record.run  # the class's own run again
    (folder,) = root.iterdir()
    return folder


def test_interrupt_then_resume_redoes_only_unfinished_steps(tmp_path):
    folder = _interrupted_session(tmp_path)
    info = json.loads((folder / "session.json").read_text())
    assert info["status"] == "interrupted" and info["steps"]["design"]["status"] == "done"
    stamp = (folder / "stimuli.nc").stat().st_mtime_ns
    s = rig.resume(folder, progress=False)
    assert s.status == "completed"
    assert (folder / "stimuli.nc").stat().st_mtime_ns == stamp  # design was not redone


def test_resume_refuses_edited_protocol_and_a_locked_session(tmp_path):
    folder = _interrupted_session(tmp_path)
    text = (folder / "protocol.toml").read_text()
    (folder / "protocol.toml").write_text(text.replace("n = 50", "n = 60"))
    with pytest.raises(RigError, match="protocol.toml was edited"):
        rig.resume(folder, progress=False)
    (folder / "protocol.toml").write_text(text)
    assert not (folder / ".lock").exists()  # a session that ended leaves no lock file behind
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR)  # another writer holds the lock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RigError, match="being written by another process"):
            rig.resume(folder, progress=False)
    finally:
        os.close(fd)


def test_resume_refuses_results_of_other_code(tmp_path):
    folder = _interrupted_session(tmp_path)
    prov = json.loads((folder / "provenance.json").read_text())
    (folder / "provenance.json").write_text(json.dumps({**prov, "code_hash": "other"}))
    with pytest.raises(RigError, match=r"cannot resume: code_hash changed \(other -> [0-9a-f]{64}\).*\(design\)"):
        rig.resume(folder, progress=False)


def test_mistakes_leave_no_session_behind(tmp_path):
    proto = _protocol(tmp_path)
    proto.write_text(proto.read_text().replace('"place", "grid"', '"plaec", "grid"'))
    root = tmp_path / "archive"
    out = _cli("run", str(proto), "--archive", str(root))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{proto}:" in out.stderr and "record.sites" in out.stderr and "place" in out.stderr
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.slow
def test_phantom_protocol_recovers_the_planted_truth(tmp_path):
    """protocols/phantom.toml end to end: every planted grid unit is classified grid, border units border,
    place units spatially informative, untuned units not; lesioning the targeted units abolishes behaviour
    while random lesions of as many units do not."""
    from rig.phantom import build

    root = Path(__file__).resolve().parent.parent
    s = rig.run(root / "protocols" / "phantom.toml", archive=tmp_path, progress=False,
                overrides=["perturb.0.n_stimuli=100", "perturb.0.repeats=3"])
    scores = s.results["analyses/spatial_scores"]
    truth = build(seed=s.protocol.subject.seed).truth()
    planted = truth["cell_class"].values.astype(str)
    found = scores["class"].values.astype(str)
    alpha = scores.attrs["alpha"]
    assert (found[planted == "grid"] == "grid").all()
    assert (found[planted == "border"] == "border").all()
    assert (scores["spatial_information_p"].values[planted == "place"] <= alpha).all()
    assert (found[planted == "place"] != "none").all()
    assert (found[planted == "untuned"] == "none").mean() >= 15 / 16
    lesion = s.results["perturb/unit_lesions"]["mean"]
    assert float(lesion.sel(strategy="targeted", proportion=0.3)) < 0.1
    assert float(lesion.sel(strategy="random", proportion=0.3)) > 0.5
    assert float(lesion.sel(strategy="targeted", proportion=0.1)) < 0.1  # the place units covering the stimulus
    assert float(lesion.sel(strategy="by_mean", proportion=0.1)) > 0.9  # as many loud units, anywhere: no effect


def test_rerun_makes_a_new_session_from_the_saved_protocol(archive, tmp_path):
    _, _, a = archive  # the session run with an override: the rerun applies it again
    assert a.overrides == ["stimuli.seed=2"] and archive[1].overrides is None
    root = tmp_path / "other"
    shutil.copytree(a.path, root / a.id)
    out = _cli("rerun", a.id, "--archive", str(root), "--quiet")
    assert out.returncode == 0, out.stderr
    new = [p for p in root.iterdir() if p.name != a.id]
    assert len(new) == 1
    b = rig.open_session(new[0])
    assert b.status == "completed" and b.protocol.hash() == a.protocol.hash()
    with xr.open_dataset(a.path / "recording.nc") as x, xr.open_dataset(b.path / "recording.nc") as y:
        xr.testing.assert_identical(x.drop_attrs(), y.drop_attrs())


def test_compare_two_sessions_side_by_side(archive, tmp_path):
    root, a, b = archive
    out = _cli("compare", a.id, b.id, "--archive", str(root), "--out", str(tmp_path / "c.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = _cli("compare", a.id, b.id, "--archive", str(root), "--analysis", "nothing")
    assert out.returncode == 2 and "has no analyses/nothing.nc" in out.stderr


def test_compare_overrides_are_validated_with_the_protocol(tmp_path):
    proto = _protocol(tmp_path)
    proto.write_text(proto.read_text() + '\n[compare]\noverrides = ["subject.sed=1"]\n')
    with pytest.raises(RigError, match=r"compare.overrides: subject.sed: unknown key; did you mean 'seed'"):
        rig.load_protocol(proto)


@pytest.mark.parametrize("old, new, key", [
    ('source = "phantom"', 'source = "phantom"\ndevice = "warp9"', "device"),
    ('source = "phantom"', 'source = "timm"\narch = "resnet18"\nweights = "/no/such/file.pt"', "weights"),
    ('source = "phantom"', 'source = "open_clip"\narch = "ViT-B-23"', "arch"),
])
def test_subject_errors_name_the_setting_at_fault(tmp_path, old, new, key):
    proto = _protocol(tmp_path)
    proto.write_text(proto.read_text().replace(old, new))
    with pytest.raises(RigError, match=rf"^{proto}:\d+: subject\.{key}: "):
        rig.run(proto, archive=tmp_path / "archive", progress=False)
    assert not (tmp_path / "archive").exists()


def test_a_warning_raised_per_site_is_noted_once(tmp_path, capsys):
    """Too few shuffles for the FDR correction at every site: spatial_scores says so once for all sites, and the
    session passes it on once: one `note` line on stderr (with progress on), in session.json, `rig show` and the
    report."""
    text = PHANTOM.format(n=120, batch=64).replace("shuffles = 0", "shuffles = 3")
    text = text[:text.index("[[perturb]]")]
    (tmp_path / "p.toml").write_text(text)
    quiet = rig.run(tmp_path / "p.toml", archive=tmp_path / "quiet", progress=False)
    assert "note (" not in capsys.readouterr().err and quiet.info["steps"]["analyse/spatial_scores"]["warnings"]
    s = rig.run(tmp_path / "p.toml", archive=tmp_path / "archive", progress=True)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note (analyse/spatial_scores)")]
    assert len(notes) == 1 and "too few for class_fdr" in notes[0], err
    assert s.info["steps"]["analyse/spatial_scores"]["warnings"] == [notes[0].split(": ", 1)[1]]
    shown = _cli("show", s.id, "--archive", str(tmp_path / "archive"))
    assert "notes (warnings the steps raised)" in shown.stdout and "too few for class_fdr" in shown.stdout
    assert "<h2>Notes</h2>" in (s.path / "report.html").read_text()


def test_an_interruption_swallowed_by_a_finalizer_is_delivered_again(capfd):
    """SIGTERM during a finalizer: Python swallows the handler's exception and calls the unraisable hook, which
    delivers the interruption to the main thread again, after the hook, with nothing printed."""
    from rig.session import SessionInterrupted, _sigterm_raises

    class Dying:
        def __del__(self):
            raise SessionInterrupted("signal 15")

    with pytest.raises(SessionInterrupted):
        with _sigterm_raises():
            Dying()  # its __del__ raises: swallowed, passed to sys.unraisablehook
            time.sleep(5)
    assert "Exception ignored" not in capfd.readouterr().err
