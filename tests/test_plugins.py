"""Extending the rig from a package of one's own: the example plugin under tests/plugin adds a step type, a
stimulus generator (and its renderer) and a subject source through entry points, without editing `rig/`; it is
installed here with pip and run from a protocol file in a fresh process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parent / "plugin"

PROTOCOL = """\
schema_version = 1
name = "plugin-demo"

[subject]
source = "tiny_cnn"
options = {{ channels = 6 }}

[stimuli]
generator = "bars"
n = 60
length = 20.0
seed = 3

[record]
sites = ["conv1", "conv2", "head"]

[[analyse]]
type = "{step}"
sites = ["conv*", "head"]
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment in which the plugin is installed (pip, into a folder on PYTHONPATH)."""
    target = tmp_path_factory.mktemp("site-packages")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(PLUGIN)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert list(target.glob("rig_demo_plugin-*.dist-info/entry_points.txt"))
    env = dict(os.environ)
    # the checkout under test first (not whichever checkout `pip install -e` pointed at), then the plugin
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN.parents[1]), str(target), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _rig(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_plugin_step_generator_and_source_run_from_a_protocol(plugin_env, tmp_path):
    proto = tmp_path / "demo.toml"
    proto.write_text(PROTOCOL.format(step="response_stats"))
    out = _rig(plugin_env, "run", str(proto), "--archive", str(tmp_path / "archive"), "--quiet")
    assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "archive").iterdir()
    check = f"""
import json, numpy as np, rig
s = rig.open_session({str(folder)!r})
stats, rec = s.results["analyses/response_stats"], s.recording
conv = stats.where(stats.site == "conv1", drop=True)
want = rec["conv1"].mean("stimulus").values          # canonical dims (unit, map_y, map_x), whatever the storage
got = np.full(want.shape, np.nan)
got[conv.unit.values.astype(int), conv.map_y.values.astype(int), conv.map_x.values.astype(int)] = conv["mean"].values
print(json.dumps({{"status": s.status, "max_err": float(np.abs(got - want).max()), "n": int(stats.sizes["cell"]),
                  "generator": s.stimuli.params.attrs["generator"], "subject": s.provenance["subject"]["name"],
                  "dims": list(rec["conv1"].dims), "units": s.info["headline"]["units"]}}))
"""
    res = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=plugin_env)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["status"] == "completed" and got["generator"] == "bars" and got["subject"] == "tiny_cnn:random"
    assert got["dims"] == ["stimulus", "unit", "map_y", "map_x"]
    assert got["max_err"] < 1e-5 and got["n"] == got["units"]  # one row per recorded value: conv1 + conv2 + head
    assert (folder / "figures" / "response_stats.png").is_file()


def test_plugins_show_in_the_schema_and_in_did_you_mean(plugin_env, tmp_path):
    out = _rig(plugin_env, "schema")
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert "ResponseStatsSettings" in schema["$defs"]
    assert "tiny_cnn" in schema["$defs"]["SubjectSpec"]["properties"]["source"]["enum"]
    assert "bars" in schema["$defs"]["StimuliSpec"]["properties"]["generator"]["enum"]
    proto = tmp_path / "typo.toml"
    proto.write_text(PROTOCOL.format(step="respons_stats"))
    out = _rig(plugin_env, "validate", str(proto))
    assert out.returncode == 2 and "did you mean 'response_stats'" in out.stderr, out.stderr


def test_without_the_plugin_its_names_are_unknown(tmp_path):
    proto = tmp_path / "demo.toml"
    proto.write_text(PROTOCOL.format(step="response_stats"))
    out = _rig(dict(os.environ), "validate", str(proto))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown subject source 'tiny_cnn'" in out.stderr, out.stderr
