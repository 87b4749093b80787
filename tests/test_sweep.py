"""Sweeps: expansion and validation of [sweep], one session per point grouped by a sweep id, re-running skips
and resumes, the [[across]] steps, [compare] as a two-point sweep, and the Dask executors."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pytest
import xarray as xr

import rig
from rig.errors import ProtocolError, RigError
from rig.steps import Needs, Step, StepSettings, register_step

TINY = """\
schema_version = 1
name = "tiny-sweep"

[subject]
source = "factory"
factory = "subject_factories:tiny"
device = "cpu"

[stimuli]
generator = "circles"
n = 12
canvas = 32
diameter = [4, 8]
seed = 1

[record]
sites = ["conv", "head"]
"""

GRID = TINY + """
[sweep]
grid = { "subject.options.channels" = [4, 8], "stimuli.seed" = [1, 2] }   # 2 subjects x 2 seeds

[[across]]
type = "unit_means"
"""


class UnitMeansSettings(StepSettings):
    type: Literal["unit_means"]
    site: str = "head"


@register_step
class UnitMeans(Step):
    """Test across step: the mean response of every session's units at one site, one value per session."""

    section = "across"
    Settings = UnitMeansSettings

    def run(self, ctx, spec):
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        means = [float(s.recording[spec.site].mean()) for s in ctx.sessions]
        ctx.write_result(xr.Dataset({"mean": ("session", means)},
                                    coords={"label": ("session", [s.label for s in ctx.sessions])}))
        fig = Figure(figsize=(3, 2))
        fig.subplots().bar(range(len(means)), means)
        ctx.write_figure(spec.key, fig, caption="Mean response of the head units per session (a.u.).")
        ctx.headline["sessions seen"] = len(ctx.sessions)
        ctx.headline["points"] = json.dumps([s.point for s in ctx.sessions])


class BestGridSettings(StepSettings):
    type: Literal["best_grid"]
    scores: Annotated[str, Needs("spatial_scores")] = "spatial_scores"


@register_step
class BestGrid(Step):
    """Test across step: the best grid score of each session, read through `ctx.results_of`."""

    section = "across"
    Settings = BestGridSettings

    def run(self, ctx, spec):
        files = ctx.results_of(spec, "scores")
        best = {}
        for label, path in files.items():
            with xr.open_dataset(path) as ds:
                best[label] = float(ds["grid_score"].max())
        ctx.write_result(xr.Dataset({"best": ("session", list(best.values()))},
                                    coords={"label": ("session", list(best))}))


def _write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`rig` of the checkout under test, with the tests' subject factories importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)


# ----------------------------------------------------------------------------------------------------------
# expansion and validation


def test_grid_and_points_expand_to_validated_sessions(tmp_path):
    text = TINY + """
[sweep]
points = [
  { "subject.options.channels" = 4, label = "narrow" },
  { subject = { options = { channels = 8 } } },
]
grid = { "stimuli.seed" = [1, 2] }
"""
    plan = rig.sweep(_write(tmp_path, text), dry_run=True)
    assert [p.label for p in plan.points] == ["narrow, seed=1", "narrow, seed=2", "channels=8, seed=1",
                                             "channels=8, seed=2"]
    assert [(p.protocol.subject.options["channels"], p.protocol.stimuli.seed) for p in plan.points] == [
        (4, 1), (4, 2), (8, 1), (8, 2)]
    assert all(p.protocol.sweep is None and not p.protocol.across for p in plan.points)
    # the same sweep written as [[sweep.points]] tables and a [sweep.grid] table: the same points, the same id
    tables = TINY + """
[[sweep.points]]
"subject.options.channels" = 4
label = "narrow"

[[sweep.points]]
"subject.options.channels" = 8

[sweep.grid]
"stimuli.seed" = [1, 2]
"""
    again = rig.sweep(_write(tmp_path, tables, "tables.toml"), dry_run=True)
    assert [p.label for p in again.points] == [p.label for p in plan.points] and again.key == plan.key


@pytest.mark.parametrize("sweep, line, message", [
    ('grid = { "subject.sed" = [0, 1] }', 20, r"sweep point 0 \(sed=0\): subject.sed: unknown key; did you mean 'seed'"),
    ('grid = { "stimuli.n" = [10, "many"] }', 20, r"sweep point 1 \(n=many\): stimuli.n: .*integer"),
    ('points = [\n  { "stimuli.seed" = 2 },\n  { "stimuli.n" = -1 },\n]', 22, r"sweep point 1 \(.*\): stimuli.n: "),
    ('grid = { "stimuli.seed" = [] }', 20, r"sweep.grid.stimuli.seed: needs a non-empty list"),
    ('grid = { "sweep.grid" = [1] }', 20, r"'sweep.grid' cannot vary"),
    ('points = [{ "stimuli.seed" = 2 }, { "stimuli.seed" = 2 }]', 19, r"points 0 and 1 have the same settings"),
    ('points = [{ "stimuli.seed" = 2 }]\ngrid = { "stimuli.seed" = [1] }', 20, r"also swept by sweep.grid"),
    ('grid = { "analyse.3.bins" = [4] }', 20, r"analyse has no entry 3"),
    ('', 19, r"a sweep needs grid"),
])
def test_sweep_mistakes_name_the_file_line_and_point(tmp_path, sweep, line, message):
    f = _write(tmp_path, TINY + "\n[sweep]\n" + sweep + "\n")
    with pytest.raises(ProtocolError, match=rf"^{f}:{line}: .*{message}"):
        rig.load_protocol(f)


def test_across_needs_a_sweep_and_sweep_excludes_compare(tmp_path):
    with pytest.raises(ProtocolError, match=r"\[\[across\]\] steps run over the sessions of a sweep"):
        rig.load_protocol(_write(tmp_path, TINY + '\n[[across]]\ntype = "compare"\n'))
    text = GRID + '\n[compare]\noverrides = ["subject.seed=1"]\n'
    with pytest.raises(ProtocolError, match=r"\[sweep\] or \[compare\], not both"):
        rig.load_protocol(_write(tmp_path, text))
    with pytest.raises(ProtocolError, match=r"sweep.toml:22: across.0: unknown step type 'nope'"):
        rig.load_protocol(_write(tmp_path, GRID.replace('type = "unit_means"', 'type = "nope"')))
    with pytest.raises(ProtocolError, match=r"across.0: best_grid needs a spatial_scores step before it"):
        rig.load_protocol(_write(tmp_path, GRID.replace('type = "unit_means"', 'type = "best_grid"')))


def test_cli_dry_run_lists_points_and_run_refuses_a_sweep(tmp_path):
    f = _write(tmp_path, GRID.replace("unit_means", "compare"))  # a step the `rig` process knows
    out = _cli("sweep", str(f), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "4 points" in out.stdout and "channels=8, seed=2" in out.stdout
    out = _cli("validate", str(f))
    assert out.returncode == 0 and "sweep of 4 points" in out.stdout
    out = _cli("run", str(f), "--archive", str(tmp_path / "a"))
    assert out.returncode == 2 and "has a [sweep] table: run it with `rig sweep" in out.stderr
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------------------------------------
# running


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """A 2 subjects x 2 seeds sweep of tiny models, run in-process."""
    root = tmp_path_factory.mktemp("seq")
    f = _write(tmp_path_factory.mktemp("p"), GRID)
    return f, root, rig.sweep(f, archive=root, progress=False)


def test_each_point_is_a_session_of_the_archive_grouped_by_the_sweep(sequential):
    f, root, done = sequential
    assert done.status == "completed" and len(done.points) == 4
    assert all(p["status"] == "completed" and p["attempts"] == 1 for p in done.points)
    sessions = done.sessions
    assert [s.label for s in sessions] == [p["label"] for p in done.points]
    assert [s.point for s in sessions] == [p["settings"] for p in done.points]
    assert [s.protocol.subject.options["channels"] for s in sessions] == [4, 4, 8, 8]
    assert {s.path.parent for s in sessions} == {root}  # ordinary sessions of the archive
    rows = json.loads(_cli("ls", "--archive", str(root), "--json").stdout)
    assert len(rows) == 4 and {r["sweep"] for r in rows} == {done.id}
    assert len(rig.Archive(root).records(sweep=done.id[-8:])) == 4
    assert sessions[2].recording["head"].sizes["stimulus"] == 12


def test_across_steps_run_in_the_sweep_folder_over_all_sessions(sequential):
    _f, _root, done = sequential
    assert done.path.parent.name == "sweeps" and (done.path / "sweep.json").is_file()
    means = done.results["analyses/unit_means"]
    assert list(means["label"].values) == [s.label for s in done.sessions]
    expected = [float(s.recording["head"].mean()) for s in done.sessions]
    np.testing.assert_allclose(means["mean"].values, expected)
    across = done.info["across"]["across/unit_means"]
    assert across["status"] == "done" and across["figures"] == {
        "figures/unit_means.png": "Mean response of the head units per session (a.u.)."}
    assert done.info["headline"]["sessions seen"] == 4
    html = done.report.read_text()
    assert "Mean response of the head units" in html and all(s.id in html for s in done.sessions)


def test_open_sessions_gives_one_lazy_object_along_session(sequential):
    import dask.array

    _f, _root, done = sequential
    sessions = done.sessions
    conv = rig.open_sessions(done, "recording", site="conv", by="stimulus")
    assert conv.dims == ("session", "stimulus", "unit", "map_y", "map_x") and isinstance(conv.data, dask.array.Array)
    assert conv.sizes["unit"] == 8 and conv.chunks[0] == (1, 1, 1, 1)  # one session per chunk
    assert conv.chunks[2] == (8,)  # by stimulus: every unit of a block of stimuli
    assert list(conv["session"].values) == [s.id for s in sessions]
    assert list(conv["label"].values) == [s.label for s in sessions]
    assert list(conv["subject.options.channels"].values) == [4, 4, 8, 8]
    for i, s in enumerate(sessions):
        eager = s.recording["conv"].values
        np.testing.assert_array_equal(conv[i, :, :eager.shape[1]].values, eager)
        assert np.isnan(conv[i, :, eager.shape[1]:].values).all()  # 4-channel subjects: padded
    by_unit = rig.open_sessions([s.path for s in sessions], "recording", site="conv", chunk_mb=1e-4)
    assert by_unit.chunks[1] == (12,) and max(by_unit.chunks[2]) < 8  # by unit: every stimulus of a few units
    means = by_unit.mean(["stimulus", "map_y", "map_x"]).groupby("subject.options.channels").mean().compute()
    assert means.sizes == {"subject.options.channels": 2, "unit": 8}
    with pytest.raises(RigError, match="did not record site 'nope'"):
        rig.open_sessions(done, "recording", site="nope")
    with pytest.raises(RigError, match="has no 'analyses/nothing'"):
        done.open("analyses/nothing")


def test_running_again_skips_completed_points(sequential):
    f, root, done = sequential
    before = sorted(p.name for p in root.iterdir())
    again = rig.sweep(f, archive=root, progress=False)
    assert again.id == done.id and again.status == "completed"
    assert sorted(p.name for p in root.iterdir()) == before
    assert [p["attempts"] for p in again.points] == [1, 1, 1, 1]


def test_an_interrupted_point_is_resumed_and_a_failed_one_reported(tmp_path):
    text = TINY + """
[sweep]
points = [{ "stimuli.seed" = 1 }, { "stimuli.seed" = 2 }, { "subject.options" = { width = 3 } }]
"""
    f, root = _write(tmp_path, text), tmp_path / "archive"
    done = rig.sweep(f, archive=root, progress=False)
    assert done.status == "failed" and [p["status"] for p in done.points] == ["completed", "completed", "failed"]
    assert "width" in done.points[2]["error"] and done.points[2]["attempts"] == 1  # a user mistake: no retry
    assert "did not complete" in done.info["error"]["message"]
    # point 1's session was interrupted during record: running the sweep again finishes that same session
    s1 = done.sessions[1]
    info = s1.info
    info["status"], info["steps"]["record"]["status"] = "interrupted", "interrupted"
    (s1.path / "session.json").write_text(json.dumps(info))
    (s1.path / "recording.nc").unlink()
    again = rig.sweep(f, archive=root, progress=False)
    assert again.sessions[1].id == s1.id and again.sessions[1].status == "completed"
    assert (s1.path / "recording.nc").is_file()
    assert again.points[2]["status"] == "failed" and again.points[2]["attempts"] == 2
    out = _cli("sweep", str(f), "--archive", str(root), "--quiet")
    assert out.returncode == 1 and "failed (2/3 points completed)" in out.stdout


def test_a_sweep_stopped_by_sigterm_is_marked_interrupted_and_finished_by_running_it_again(tmp_path):
    import signal
    import time

    f = _write(tmp_path, TINY + '\n[sweep]\ngrid = { "stimuli.seed" = [1, 2] }\n')
    root = tmp_path / "archive"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli", "sweep", str(f), "--archive", str(root), "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def design_done() -> bool:  # the first session has done a step: stopping it now leaves something to resume
        for f in root.glob("*/session.json"):
            with contextlib.suppress(ValueError, OSError):
                return json.loads(f.read_text())["steps"]["design"]["status"] == "done"
        return False

    deadline = time.monotonic() + 120
    while not design_done() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "is marked interrupted; finish it with `rig sweep" in err, err
    stopped = rig.open_sweep("latest", archive=root)
    assert stopped.status == "interrupted"
    first = next(root.glob("*/session.json")).parent.name
    done = rig.sweep(f, archive=root, progress=False)
    assert done.id == stopped.id and done.status == "completed" and done.sessions[0].id == first


def test_a_transient_failure_is_retried_and_resumes_the_same_session(tmp_path):
    marker = tmp_path / "failed-once"
    text = TINY + f"""
[sweep]
points = [{{ "stimuli.seed" = 1 }}, {{ "subject.factory" = "subject_factories:flaky", "subject.options" = {{ marker = "{marker}" }} }}]
"""
    done = rig.sweep(_write(tmp_path, text), archive=tmp_path / "archive", progress=False)
    assert done.status == "completed" and marker.is_file()
    assert [p["attempts"] for p in done.points] == [1, 2]
    log = (done.path / "log.txt").read_text()
    assert "point 1 (factory=subject_factories:flaky, marker=" in log and "RuntimeError: a transient fault" in log
    assert len(list((tmp_path / "archive").glob("*/session.json"))) == 2  # the retry resumed the failed session
    assert done.sessions[1].info["steps"]["record"]["status"] == "done"


def test_compare_is_a_two_point_sweep_with_figures_side_by_side(tmp_path):
    text = TINY.replace('sites = ["conv", "head"]', 'sites = ["conv"]') + """
[[analyse]]
type = "ratemaps"
bins = 4

[[analyse]]
type = "spatial_scores"
shuffles = 0

[compare]
overrides = ["subject.seed=1"]
label = "another init"

[[across]]
type = "best_grid"
"""
    root = tmp_path / "archive"
    s = rig.run(_write(tmp_path, text), archive=root, progress=False)
    assert s.status == "completed" and s.protocol.compare is None and s.protocol.subject.seed == 0
    done = rig.open_sweep(s.sweep, archive=root)
    assert [p["label"] for p in done.points] == ["seed=0", "another init"]
    other = done.sessions[1]
    assert other.protocol.subject.seed == 1 and other.label == "another init"
    assert (done.path / "figures" / "compare_spatial_scores.png").is_file()
    assert list(done.info["across"]) == ["across/best_grid", "across/compare"]
    best = done.results["analyses/best_grid"]
    assert list(best["label"].values) == ["seed=0", "another init"]
    np.testing.assert_allclose(best["best"][1], float(other.results["analyses/spatial_scores"]["grid_score"].max()))
    table = done.results["analyses/compare"]
    assert list(table["id"].values) == [s.id, other.id]
    scores = rig.open_sessions(done, "analyses/spatial_scores")
    assert scores["grid_score"].dims == ("session", "cell") and list(scores["label"].values) == ["seed=0",
                                                                                                "another init"]
    np.testing.assert_array_equal(scores["grid_score"][1].values, other.results["analyses/spatial_scores"]["grid_score"])
    assert len(rig.Archive(root).records()) == 2
    again = rig.run(done.path / "protocol.toml", archive=root, progress=False)  # `rig run`: always new sessions
    assert again.id != s.id and again.sweep != done.id and len(rig.Archive(root).records()) == 4


def test_sessions_made_with_a_nested_compare_folder_still_open_list_and_report(tmp_path):
    """Before sweeps, [compare] ran a nested session in compare/ and drew compare_*.png into the session."""
    from archive_fixtures import make_session, tiny_png

    from rig.report import write_session_report

    root = tmp_path / "archive"
    folder = make_session(root, "circles", resolved={"compare": {"overrides": ["subject.weights=random"],
                                                                 "label": "random weights (control)"}})
    info = json.loads((folder / "session.json").read_text())
    info["steps"]["compare"] = {"status": "done", "outputs": ["figures/compare_spatial_scores.png"],
                                "figures": {"figures/compare_spatial_scores.png": "trained beside random"}}
    (folder / "session.json").write_text(json.dumps(info))
    tiny_png(folder / "figures" / "compare_spatial_scores.png")
    nested = make_session(folder / "compare", "circles", hexid="bbbbbb")
    assert [r["id"] for r in rig.Archive(root).records()] == [folder.name]
    s = rig.open_session(folder)
    assert s.protocol.compare.label == "random weights (control)" and s.sweep is None and s.label == s.id
    html = write_session_report(folder).read_text()
    assert "trained beside random" in html and f"compare/{nested.name}" in html


# ----------------------------------------------------------------------------------------------------------
# Dask


def _recordings(done) -> list[xr.Dataset]:
    out = []
    for s in done.sessions:
        with xr.open_dataset(s.path / "recording.nc") as ds:
            out.append(ds.load().drop_attrs())
    return out


@pytest.mark.slow
def test_a_local_cluster_gives_the_same_sessions_as_running_in_process(sequential, tmp_path):
    f, _root, seq = sequential
    done = rig.sweep(f, archive=tmp_path / "archive", workers=2, progress=False)
    assert done.status == "completed" and done.info["executor"] == {"kind": "dask-local", "workers": 2,
                                                                   "threads_per_worker": 1}
    assert [p["label"] for p in done.points] == [p["label"] for p in seq.points]
    assert len({p["worker"] for p in done.points}) == 2  # both workers ran sessions
    for a, b in zip(_recordings(seq), _recordings(done)):
        xr.testing.assert_identical(a, b)
    xr.testing.assert_identical(seq.results["analyses/unit_means"], done.results["analyses/unit_means"])


@pytest.mark.slow
def test_local_workers_keep_one_blas_thread_and_glibc_s_own_malloc_thresholds():
    """Dask's MALLOC_TRIM_THRESHOLD_ made every large temporary array a fresh mmap (the nulls ran 2.2x slower)."""
    from rig.sweep_exec import DaskExecutor

    with DaskExecutor(workers=1) as ex:
        (env,) = ex.client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_",
                                                                       "OPENBLAS_NUM_THREADS")}).values()
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OPENBLAS_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cluster():
    """A running Dask cluster of two one-thread workers, one of which declares a GPU."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    worker = {"cls": Nanny, "options": {"nthreads": 1, "silence_logs": 40}}
    gpu = {"cls": Nanny, "options": {"nthreads": 1, "silence_logs": 40, "resources": {"GPU": 1}}}
    with SpecCluster(workers={"cpu": worker, "gpu": gpu}, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": None}}, silence_logs=40) as spec, Client(spec) as client:
        yield spec.scheduler_address, client


@pytest.mark.slow
def test_gpu_points_run_only_on_workers_that_declare_a_gpu(cluster, tmp_path, monkeypatch):
    from rig.sweeps import Point

    address, client = cluster
    pids = client.run(os.getpid)
    gpu_worker = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"].get("GPU"))
    # the points of the 8-channel subject are marked as needing a GPU (their device stays the CPU here)
    monkeypatch.setattr(Point, "needs_gpu", property(lambda p: p.settings.get("subject.options.channels") == 8))
    done = rig.sweep(_write(tmp_path, GRID), archive=tmp_path / "archive", scheduler=address, progress=False)
    assert done.status == "completed" and done.info["executor"]["scheduler"] == address
    for s in done.sessions:
        on_gpu = s.info["pid"] == pids[gpu_worker]
        assert on_gpu or s.protocol.subject.options["channels"] == 4


@pytest.mark.slow
def test_killing_a_worker_mid_sweep_loses_no_point(cluster, tmp_path):
    import signal
    import threading
    import time

    address, client = cluster
    root = tmp_path / "archive"
    killed: list[tuple[str, int]] = []

    def kill_first_running_session() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for f in root.glob("*/session.json"):
                with contextlib.suppress(ValueError, OSError):
                    info = json.loads(f.read_text())
                    if info["status"] == "running" and info["pid"] != os.getpid():
                        os.kill(info["pid"], signal.SIGKILL)
                        killed.append((info["id"], info["pid"]))
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_running_session, daemon=True)
    killer.start()
    done = rig.sweep(_write(tmp_path, GRID), archive=root, scheduler=address, progress=False)
    killer.join()
    assert killed, "no session was seen running"
    assert all(p["status"] in ("completed", "failed") for p in done.points)
    assert all(p["status"] == "completed" or p["error"] for p in done.points)
    assert done.status == "completed"  # the scheduler gave the killed task to a worker again
    session_id, _pid = killed[0]
    if (root / session_id).exists():  # it had done a step: resumed
        assert rig.open_session(root / session_id).status == "completed"
    else:  # killed before its first step was done: replaced by a new session
        assert session_id not in [s.id for s in done.sessions]


@pytest.mark.slow
def test_the_offline_sweep_protocol_runs(tmp_path, capsys):
    """protocols/sweep-tiny.toml, smaller: 4 phantom sessions and their scores side by side."""
    from rig.cli import main

    args = ["sweep", str(ROOT / "protocols" / "sweep-tiny.toml"), "--archive", str(tmp_path), "--quiet",
            "--set", "stimuli.n=150", "--set", "analyse.1.shuffles=0"]
    assert main(args) == 0
    assert "completed (4/4 points completed)" in capsys.readouterr().out
    done = rig.open_sweep("latest", archive=tmp_path)
    assert [s.protocol.subject.options["noise"] for s in done.sessions] == [0.05, 0.05, 1.0, 1.0]
    assert (done.path / "figures" / "compare_spatial_scores.png").is_file()
    grid = rig.open_sessions(done, "analyses/spatial_scores")["grid_score"].max("cell").compute()
    assert grid.sizes == {"session": 4} and np.isfinite(grid).all()



@pytest.mark.slow
def test_the_study_000_model_sweep_finds_its_planted_subjects(tmp_path):
    """protocols/saliency-semantics-models-offline.toml, smaller and without its CLIP point (the slow one): the
    planted subjects come out as planted, and their RSA curves are drawn in one figure."""
    text = (ROOT / "protocols" / "saliency-semantics-models-offline.toml").read_text()
    text = text[:text.rindex("[[sweep.points]]")] + text[text.index("[[across]]"):]  # the two planted points
    small = ["stimuli.n=10", "stimuli.canvas=64", "stimuli.saliency=spectral_residual",
             "analyse.0.model=spectral_residual", "analyse.1.bootstrap=50"]
    done = rig.sweep(_write(tmp_path, text), archive=tmp_path / "archive", overrides=small, progress=False)
    assert done.status == "completed", done.info["error"]
    rsa = rig.open_sessions(done, "analyses/rsa")["rsa"].sel(site="units", condition="Baseline")
    assert list(rsa["label"].values) == ["planted: saliency only", "planted: semantics only"]
    assert float(rsa.sel(reference="saliency")[0]) > 0.9 and abs(float(rsa.sel(reference="semantic")[0])) < 0.25
    assert float(rsa.sel(reference="semantic")[1]) > 0.9 and abs(float(rsa.sel(reference="saliency")[1])) < 0.25
    caption = done.info["across"]["across/compare"]["figures"]["figures/compare_rsa.png"]
    assert "Spearman RSA of every site" in caption and "planted: semantics only" in caption
