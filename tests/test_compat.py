"""Session folders written by earlier versions of the rig keep opening, listing, reporting and comparing.

`fixtures/session_v0/` holds a phantom session made by the rig before the extension spine (commit 7bf64da)
from `fixtures/session_v0/make_it.toml`; it is copied before use, never written in place.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rig

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "session_v0"
SESSION_ID = "20261207T142040Z-phantom-v0-58926a"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.fixture
def old_archive(tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(FIXTURE / SESSION_ID, root / SESSION_ID)
    return root


def test_old_session_opens_with_its_data(old_archive):
    s = rig.open_session(old_archive / SESSION_ID)
    assert s.status == "completed" and s.protocol.name == "phantom-v0"
    rec = s.recording
    assert set(rec) == {"place", "grid", "border"}
    assert rec["place"].dims == ("stimulus", "unit") and rec["place"].shape == (120, 64)
    assert {"x", "y", "diameter"} <= set(rec["place"].coords)
    assert set(s.results) == {"analyses/ratemaps", "analyses/spatial_scores", "perturb/unit_lesions"}
    scores = s.results["analyses/spatial_scores"]
    assert scores.sizes["cell"] == 84 and np.isfinite(scores["spatial_information"].values).all()
    lesions = s.results["perturb/unit_lesions"]
    assert set(lesions["strategy"].values.astype(str)) == {"random", "targeted"}


def test_old_session_lists_shows_and_reports(old_archive):
    out = _cli("ls", "--archive", str(old_archive), "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [e["id"] for e in listed] == [SESSION_ID] and listed[0]["status"] == "completed"
    out = _cli("show", SESSION_ID, "--archive", str(old_archive))
    assert out.returncode == 0 and "phantom-v0" in out.stdout, out.stderr
    out = _cli("report", "--archive", str(old_archive))
    assert out.returncode == 0, out.stderr
    html = (old_archive / SESSION_ID / "report.html").read_text()
    assert "figures/unit_lesions.png" in html and "figures/stimuli_overview.png" in html


def test_old_session_compares_with_itself(old_archive, tmp_path):
    copy_id = SESSION_ID.replace("58926a", "58926b")
    shutil.copytree(old_archive / SESSION_ID, old_archive / copy_id)
    data = json.loads((old_archive / copy_id / "session.json").read_text())
    data["id"] = copy_id
    (old_archive / copy_id / "session.json").write_text(json.dumps(data))
    out = _cli("compare", SESSION_ID, copy_id, "--archive", str(old_archive), "--out", str(tmp_path / "c.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
