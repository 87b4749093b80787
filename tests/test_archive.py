"""Archive: listing with filters and staleness, finding, diffing, removing; the archive CLI commands."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from archive_fixtures import T0, live_running, make_session

from rig.archive import Archive, SessionInfo, flatten, human_bytes, value_matches
from rig.archive_cli import add_parsers, format_table
from rig.errors import RigError


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    """Four sessions: two protocols, two weights, n=300/3000, one failed, one running (stale or live)."""
    root = tmp_path / "sessions"
    make_session(root, "circles", "aaaaaa", T0, headline={"frac_spatial": 0.25, "n_units": 768})
    make_session(root, "circles", "bbbbbb", T0 + timedelta(hours=1), resolved={"subject": {"weights": "openai"},
                 "stimuli": {"n": 3000}}, provenance={"packages": {"torch": "2.15.0"}},
                 headline={"frac_spatial": 0.5, "n_units": 768})
    make_session(root, "shapes", "cccccc", T0 + timedelta(hours=2), status="failed",
                 error={"type": "SiteError", "message": "no site 'x'", "traceback": "Traceback...", "step": "record"})
    # running, but its heartbeat stopped long ago: stale
    make_session(root, "shapes", "dddddd", T0 + timedelta(hours=3), status="running")
    return Archive(root)


def test_sessions_lists_newest_first_with_headline_columns(archive: Archive) -> None:
    df = archive.sessions()
    assert list(df["id"].str[-6:]) == ["dddddd", "cccccc", "bbbbbb", "aaaaaa"]
    assert list(df.columns[:6]) == ["id", "status", "protocol", "subject", "created", "seconds"]
    assert {"frac_spatial", "n_units"} <= set(df.columns)
    assert list(df["status"]) == ["stale", "failed", "completed", "completed"]
    assert df.loc[df["id"].str.endswith("bbbbbb"), "subject"].item() == "open_clip:ViT-B-32:openai"
    assert df["seconds"].tolist() == [42.0] * 4
    assert str(df["created"].dt.tz) == "UTC"
    assert df.loc[df["id"].str.endswith("aaaaaa"), "frac_spatial"].item() == 0.25


def test_running_session_is_live_or_stale(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    live = live_running(tmp_path, now, hexid="111111")
    assert SessionInfo.read(live).status == "running"
    # heartbeat 16 s old with a 5 s interval: stale even though the pid is alive
    assert SessionInfo.read(live, now=(now + timedelta(seconds=16)).timestamp()).status == "stale"
    assert SessionInfo.read(live, now=(now + timedelta(seconds=14)).timestamp()).status == "running"
    # fresh heartbeat but the process is gone on this host: stale
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = make_session(tmp_path, hexid="222222", status="running", heartbeat=now, pid=proc.pid,
                        host=os.uname().nodename)
    info = SessionInfo.read(dead)
    assert (info.status, info.recorded_status) == ("stale", "running")
    # a pid on another host cannot be checked: the heartbeat decides
    other = make_session(tmp_path, hexid="333333", status="running", heartbeat=now, pid=proc.pid, host="far")
    assert SessionInfo.read(other).status == "running"
    # a running session without a readable heartbeat is stale
    info = json.loads((other / "session.json").read_text())
    (other / "session.json").write_text(json.dumps({**info, "heartbeat": "garbage"}))
    assert SessionInfo.read(other).status == "stale"


def test_filters(archive: Archive) -> None:
    ids = lambda **kw: [r["id"][-6:] for r in archive.records(**kw)]  # noqa: E731
    assert ids(status="completed") == ["bbbbbb", "aaaaaa"]
    assert ids(status="failed,stale") == ["dddddd", "cccccc"]
    assert ids(protocol="shapes") == ["dddddd", "cccccc"]
    assert ids(protocol="sha*") == ["dddddd", "cccccc"]
    assert ids(protocol="shape") == []
    assert ids(subject="openai") == ["bbbbbb"]
    assert ids(subject="open_clip:ViT-B-32:random") == ["dddddd", "cccccc", "aaaaaa"]
    assert ids(subject="ViT-B-32") == ids()
    assert ids(where={"subject.weights": "random"}) == ["dddddd", "cccccc", "aaaaaa"]
    assert ids(where={"stimuli.n": "3000"}) == ["bbbbbb"]
    assert ids(where={"stimuli.n": 3000.0}) == ["bbbbbb"]
    assert ids(where={"stimuli.n": "300"}) == ["dddddd", "cccccc", "aaaaaa"]
    assert ids(where={"stimuli.diameter": "[20, 80]"}) == ids()
    assert ids(where={"stimuli.diameter": "20,81"}) == []
    assert ids(where={"analyse.0.bins": "28", "subject.weights": "open*"}) == ["bbbbbb"]
    assert ids(status="completed", where={"subject.weights": "random"}) == ["aaaaaa"]
    df = archive.sessions(protocol="circles", where={"stimuli.n": 300})
    assert df["id"].str[-6:].tolist() == ["aaaaaa"]


def test_where_unknown_key_suggests_the_nearest(archive: Archive) -> None:
    with pytest.raises(RigError, match="subject.weights"):
        archive.records(where={"subject.weight": "random"})


def test_value_matches() -> None:
    assert value_matches(300, "300") and value_matches(300, "3e2") and value_matches(0.5, "0.50")
    assert not value_matches(300, "301") and not value_matches("300a", "300")
    assert value_matches(True, "true") and not value_matches(True, "1") and value_matches(False, "False")
    assert value_matches("random", "random") and not value_matches("random", "Random")
    assert value_matches(None, "null") and not value_matches(None, "0")
    assert value_matches([20, 80], "[20, 80]") and value_matches([20, 80], "20,80")
    assert value_matches(["a", "b"], '["a","b"]') and not value_matches([20, 80], "[20]")
    assert value_matches("ViT-B-32", "ViT-*") and not value_matches("ViT-B-32", "RN*")


def test_flatten() -> None:
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "l": [{"t": "x"}, {"t": "y"}], "e": {}, "n": None})
    assert flat == {"a.b": 1, "a.c": [1, 2], "l.0.t": "x", "l.1.t": "y", "e": {}, "n": None}


def test_find(archive: Archive, tmp_path: Path) -> None:
    full = archive.session_dirs()[0].name
    assert archive.find(full).id == full
    assert archive.find("20241125T190012Z").id == full  # unique prefix
    assert archive.find("aaaaaa").id == full  # unique part (the hex suffix)
    assert archive.find(str(archive.root / full)).id == full  # a path
    assert archive.find(archive.root / full).id == full
    assert archive.find("latest").id.endswith("dddddd")
    with pytest.raises(RigError, match=r"matches 2 sessions .*bbbbbb.*|matches 2 sessions .*aaaaaa"):
        archive.find("circles")
    with pytest.raises(RigError, match="no session 'zzz'"):
        archive.find("zzz")
    with pytest.raises(RigError, match="holds no sessions"):
        Archive(tmp_path / "empty").find("x")
    with pytest.raises(RigError, match="not a session folder"):
        SessionInfo.read(tmp_path)


def test_diff_reports_only_differences(archive: Archive) -> None:
    d = archive.diff("aaaaaa", "bbbbbb")
    assert d["a"].endswith("aaaaaa") and d["b"].endswith("bbbbbb")
    assert d["settings"] == {"subject.weights": ["random", "openai"], "stimuli.n": [300, 3000]}
    assert d["provenance"] == {"packages.torch": ["2.14.1", "2.15.0"]}  # 'created' always differs: left out
    assert d["headline"] == {"frac_spatial": [0.25, 0.5]}
    same = archive.diff("aaaaaa", "aaaaaa")
    assert same["settings"] == same["provenance"] == same["headline"] == {}
    d2 = archive.diff("aaaaaa", "cccccc")
    assert d2["settings"]["name"] == ["circles", "shapes"]
    assert d2["headline"] == {"frac_spatial": [0.25, None]}


def test_remove_frees_the_folder(archive: Archive) -> None:
    folder = archive.find("aaaaaa").path
    (folder / ".lock").write_bytes(b"x" * 100)  # hidden files are not listed, but they are freed
    assert ".lock" not in dict(archive.find("aaaaaa").files)
    size = du(folder)
    assert size > 1234
    assert archive.remove("aaaaaa") == size
    assert not folder.exists()
    assert len(archive.session_dirs()) == 3
    stale = archive.find("dddddd").path  # recorded as running, but stale: removable
    size = du(stale)
    assert archive.remove("dddddd") == size
    assert not stale.exists()


def test_remove_refuses_a_live_session_unless_forced(tmp_path: Path) -> None:
    folder = live_running(tmp_path, datetime.now(timezone.utc))
    archive = Archive(tmp_path)
    with pytest.raises(RigError, match="is running"):
        archive.remove(folder.name)
    assert folder.exists()
    assert archive.remove(folder.name, force=True) > 0
    assert not folder.exists()


def test_session_info_files_and_json(archive: Archive) -> None:
    info = archive.find("aaaaaa")
    files = dict(info.files)
    assert files["stimuli.nc"] == 1234
    assert "figures/ratemaps.png" in files and files["figures/ratemaps.png"] > 100
    d = info.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["created"] == "2024-11-25T19:00:12Z" and d["status"] == "completed"
    assert {f["path"] for f in d["files"]} == set(files)


def test_steps_in_pipeline_order(tmp_path: Path) -> None:
    folder = make_session(tmp_path, resolved={"perturb": [{"name": None, "type": "unit_lesions"}]})
    info = json.loads((folder / "session.json").read_text())
    names = ["analyse/spatial_scores", "perturb/unit_lesions", "record", "analyse/ratemaps", "design", "extra"]
    info["steps"] = {n: {"status": "pending"} for n in names}
    (folder / "session.json").write_text(json.dumps(info, sort_keys=True))
    assert list(SessionInfo.read(folder).steps) == ["design", "record", "analyse/ratemaps",
                                                    "analyse/spatial_scores", "perturb/unit_lesions", "extra"]


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 1_500_000, 3.2e9)] == ["0 B", "999 B", "1.0 kB", "1.5 MB",
                                                                             "3.2 GB"]


def test_format_table_aligns_columns() -> None:
    text = format_table(["name", "n"], [["a", 1], ["long name", 1234.25]])
    lines = text.splitlines()
    assert lines[0] == "name          n"
    assert lines[1] == "---------  ----"
    assert lines[2] == "a             1"
    assert lines[3] == "long name  1234"  # 4 significant digits, numbers right-aligned
    assert len({len(line) for line in lines}) == 1


# ---- CLI -----------------------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rig")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_ls(archive: Archive, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIG_ARCHIVE", str(archive.root))
    assert run_cli(["ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"][-6:] for r in rows] == ["dddddd", "cccccc", "bbbbbb", "aaaaaa"]
    assert rows[-1]["created"] == "2024-11-25T19:00:12Z" and rows[-1]["frac_spatial"] == 0.25
    assert run_cli(["ls", "--where", "stimuli.n=3000", "--json"]) == 0
    assert [r["id"][-6:] for r in json.loads(capsys.readouterr().out)] == ["bbbbbb"]
    assert run_cli(["ls", "--archive", str(archive.root), "--status", "completed", "--subject", "random"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "status", "protocol", "subject", "created", "seconds", "frac_spatial",
                              "n_units"]
    assert len(out) == 3 and out[2].startswith("20241125T190012Z-circles-aaaaaa  completed")
    with pytest.raises(RigError, match="KEY=VALUE"):
        run_cli(["ls", "--where", "stimuli.n"])


def test_cli_show(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["show", "--archive", str(archive.root), "cccccc"]) == 0
    out = capsys.readouterr().out
    assert "status    failed" in out and "error in step record: SiteError: no site 'x'" in out
    assert "rig resume 20241125T210012Z-shapes-cccccc" in out
    assert "stimuli.nc" in out and "1.2 kB" in out and "analyse/ratemaps" in out
    assert run_cli(["show", "--archive", str(archive.root), "cccccc", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["error"]["type"] == "SiteError" and d["steps"]["record"]["status"] == "failed"


def test_cli_diff(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["diff", "--archive", str(archive.root), "aaaaaa", "bbbbbb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["stimuli.n"] == [300, 3000]
    assert run_cli(["diff", "--archive", str(archive.root), "aaaaaa", "bbbbbb"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["stimuli.n", "300", "3000"] for line in lines)
    assert any(line.split() == ["provenance:", "packages.torch", "2.14.1", "2.15.0"] for line in lines)


def test_cli_rm(archive: Archive, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    with pytest.raises(RigError, match="--yes"):
        run_cli(["rm", "--archive", str(archive.root), "aaaaaa"])
    assert len(archive.session_dirs()) == 4
    size = du(archive.find("aaaaaa").path) + du(archive.find("bbbbbb").path)
    assert run_cli(["rm", "--archive", str(archive.root), "aaaaaa", "bbbbbb", "--yes"]) == 0
    assert f"freed {human_bytes(size)}" in capsys.readouterr().out
    assert [p.name[-6:] for p in archive.session_dirs()] == ["cccccc", "dddddd"]


def test_cli_rm_refuses_live_session_before_deleting_any(tmp_path: Path) -> None:
    live = live_running(tmp_path, datetime.now(timezone.utc), hexid="111111")
    other = make_session(tmp_path, hexid="222222")
    with pytest.raises(RigError, match="running now"):
        run_cli(["rm", "--archive", str(tmp_path), "222222", "111111", "--yes"])
    assert live.exists() and other.exists()
