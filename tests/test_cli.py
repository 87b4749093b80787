"""The `rig` command line: help, sites, schema, dry runs, and errors without tracebacks."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rig(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_every_command():
    out = rig("--help")
    for command in ("run", "validate", "resume", "rerun", "sites", "schema", "ls", "show", "diff", "rm", "report",
                    "compare", "sweep"):
        assert command in out.stdout


def test_sites_of_a_model_and_of_a_protocol():
    out = rig("sites", "phantom")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "type", "output", "shape", "layout"]
    assert any(line.split()[:3] == ["place", "PlaceCells", "(64)"] for line in lines)
    out = rig("sites", "protocols/quickstart.toml", "--match", "visual.transformer.resblocks.9.*")
    assert out.returncode == 0, out.stderr
    assert "visual.transformer.resblocks.9.attn " in out.stdout and "(50, 768)" in out.stdout
    assert "resblocks.8" not in out.stdout


def test_unknown_model_is_one_line_with_suggestions():
    out = rig("sites", "open_clip:ViT-B-23")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and "ViT-B-32" in out.stderr


def test_schema_and_dry_run():
    schema = json.loads(rig("schema").stdout)
    assert schema["title"] == "rig protocol"
    out = rig("run", "protocols/quickstart.toml", "--dry-run", "--set", "stimuli.n=42")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stimuli"]["n"] == 42


def test_missing_pretrained_weights_offline_is_one_line_and_writes_nothing(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # never download in tests, even on a networked machine
    out = subprocess.run([sys.executable, "-m", "rig.cli", "run", "protocols/circles-clip.toml", "--archive",
                          str(tmp_path / "archive")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: protocols/circles-clip.toml:14: subject.weights: ")
    for fragment in ("'openai'", "ViT-B-32", "huggingface", 'weights = "/path/to/file.pt"'):
        assert fragment in line, fragment
    assert not (tmp_path / "archive").exists()
