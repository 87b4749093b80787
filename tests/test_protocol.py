"""Protocol files: strict schema, one clear `file:line: key: message` per mistake, overrides, JSON Schema."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rig.errors import ProtocolError
from rig.protocol import Range, json_schema, load_protocol, parse_protocol

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
schema_version = 1
name = "t"

[subject]
source = "open_clip"
arch = "ViT-B-32"
weights = "random"

[stimuli]
generator = "circles"
n = 10
diameter = [20, 40]

[record]
sites = ["visual.transformer.resblocks.*.attn"]
tokens = "cls"

[behaviour]
prompts = ["a black circle", "an empty image"]
target = "a black circle"

[[analyse]]
type = "ratemaps"
bins = 8

[[perturb]]
type = "unit_lesions"
site = "visual.transformer.resblocks.9.attn"
proportions = { start = 0.0, stop = 1.0, step = 0.25 }
"""

# (description, replace this, by this, expected line, fragment of the message)
MISTAKES = [
    ("typo'd key", 'weights = "random"', 'wieghts = "random"', 7, "subject.wieghts: unknown key; did you mean 'weights'"),
    ("wrong type", "n = 10", 'n = "ten"', 11, "stimuli.n: Input should be a valid integer"),
    ("bad range", "n = 10", "n = 0", 11, "stimuli.n: Input should be greater than 0"),
    ("bad proportions", "stop = 1.0", "stop = 2.0", 29, "perturb.0.proportions: proportions must lie in [0, 1]"),
    ("unknown generator", 'generator = "circles"', 'generator = "circels"', 10,
     "stimuli.generator: unknown generator 'circels'; did you mean 'circles'"),
    ("generator parameter typo", "diameter = [20, 40]", "diametre = [20, 40]", 12,
     "stimuli.diametre: not a parameter of generator 'circles'; did you mean 'diameter'"),
    ("diameter larger than canvas", "diameter = [20, 40]", "diameter = [20, 400]", 12,
     "stimuli.diameter: diameter 400 px is larger than the canvas"),
    ("malformed TOML", 'tokens = "cls"', 'tokens = "cls', 16, "malformed TOML"),
    ("unknown step type", 'type = "ratemaps"', 'type = "ratemap"', 22,
     "unknown step type 'ratemap'; did you mean 'ratemaps'"),
    ("bad choice", 'tokens = "cls"', 'tokens = "cls_token"', 16, "record.tokens"),
    ("target not a prompt", 'target = "a black circle"', 'target = "a circle"', 18, "behaviour: target 'a circle'"),
    ("missing section", '[record]\nsites = ["visual.transformer.resblocks.*.attn"]\ntokens = "cls"\n', "", 1,
     "record: required key is missing"),
    ("unknown top-level key", 'name = "t"', 'name = "t"\nnmae = "u"', 3, "nmae: unknown key; did you mean 'name'"),
    ("factory without path", 'source = "open_clip"', 'source = "factory"', 4, "needs factory = 'package.module:callable'"),
]


def test_good_protocol_resolves_defaults():
    p = parse_protocol(GOOD, "good.toml")
    r = p.resolved()
    assert r["subject"]["seed"] == 0 and r["record"]["dtype"] == "float32"
    assert r["analyse"][0]["smoothing"] == 1.0
    assert p.perturb[0].proportions.values() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert p.hash() == parse_protocol(GOOD).hash()


@pytest.mark.parametrize("what, old, new, line, fragment", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_names_file_line_and_key(tmp_path, what, old, new, line, fragment):
    assert old in GOOD
    f = tmp_path / "bad.toml"
    f.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ProtocolError) as e:
        load_protocol(f)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{f}:{line}: "), first
    assert fragment in first, first


def test_cli_validate_prints_one_line_without_traceback(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(GOOD.replace('weights = "random"', 'wieghts = "random"'))
    out = subprocess.run([sys.executable, "-m", "rig.cli", "validate", str(f)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {f}:7: subject.wieghts: unknown key; did you mean 'weights'? "
                                               "(valid keys: source, arch, weights, seed, device, factory, options, "
                                               "saliency_channels)"]


def test_overrides_change_values_and_report_bad_paths():
    p = parse_protocol(GOOD, overrides=["stimuli.n=500", "subject.weights=openai", "analyse.0.bins=14",
                                        "record.tokens=all"])
    assert (p.stimuli.n, p.subject.weights, p.analyse[0].bins, p.record.tokens) == (500, "openai", 14, "all")
    with pytest.raises(ProtocolError, match="has no entry 3"):
        parse_protocol(GOOD, overrides=["analyse.3.bins=2"])
    with pytest.raises(ProtocolError, match="stimuli.nn: not a parameter"):
        parse_protocol(GOOD, overrides=["stimuli.nn=5"])
    for item, value in (("name.x=1", "'t'"), ("stimuli.n.x=3", "10"), ("analyse.0.bins.y=2", "8")):
        with pytest.raises(ProtocolError, match=f"is a value \\({value}\\), not a table"):
            parse_protocol(GOOD, overrides=[item])


def test_step_names_must_be_unique():
    text = GOOD + '\n[[analyse]]\ntype = "ratemaps"\n'
    with pytest.raises(ProtocolError, match="unique names"):
        parse_protocol(text)
    parse_protocol(text + 'name = "fine"\n')


def test_spatial_scores_must_follow_their_ratemaps():
    head = GOOD.split("[[perturb]]")[0].replace('bins = 8\n', 'name = "a"\nbins = 8\n')
    scores = '\n[[analyse]]\ntype = "spatial_scores"\nname = "{n}"\nratemaps = "{m}"\n'
    later = '\n[[analyse]]\ntype = "ratemaps"\nname = "b"\n'
    parse_protocol(head + scores.format(n="s1", m="a") + later)
    with pytest.raises(ProtocolError, match="analyse.2: ratemaps = 'b' must name an earlier ratemaps step"):
        parse_protocol(head + scores.format(n="s1", m="a") + scores.format(n="s2", m="b") + later)


def test_range_is_inclusive():
    assert len(Range(start=0, stop=1, step=0.025).values()) == 41


def test_shipped_protocols_validate(tmp_path):
    folder = captions = None
    for f in sorted((ROOT / "protocols").glob("*.toml")):
        if 'source = "folder"' in f.read_text():  # the user's captioned images: a small stand-in folder
            from test_scenes import write_folder

            if folder is None:
                folder, captions = write_folder(tmp_path, n=14)
            load_protocol(f, overrides=[f"stimuli.images={folder}", f"stimuli.captions={captions}", "stimuli.n=1",
                                        "stimuli.semantics=concepts", "stimuli.canvas=48",
                                        "stimuli.saliency=spectral_residual", "stimuli.tries=24"])
            continue
        load_protocol(f)


def test_json_schema_describes_the_sections():
    schema = json_schema()
    json.dumps(schema)
    assert {"subject", "stimuli", "record", "analyse", "perturb"} <= set(schema["properties"])


def test_range_floors_like_the_lesion_grid():
    """step 0.35 from 0 to 1 gives [0, .35, .7] (rounding the count gave 1.05, which the protocol then rejected)."""
    from rig.lesions import proportion_grid

    assert Range(start=0, stop=1, step=0.35).values() == [0.0, 0.35, 0.7]
    assert Range(start=0, stop=1, step=0.35).values() == proportion_grid(0, 1, 0.35).tolist()
    p = parse_protocol(GOOD.replace("step = 0.25", "step = 0.35"))
    assert p.perturb[0].proportions.values() == [0.0, 0.35, 0.7]


def test_step_keys_come_from_the_steps_own_schema():
    """A typo inside a step lists that step's keys (not the first step type's), with did-you-mean."""
    text = GOOD.replace("[[perturb]]", '[[analyse]]\ntype = "spatial_scores"\nshufles = 10\n\n[[perturb]]')
    with pytest.raises(ProtocolError) as e:
        parse_protocol(text, "t.toml")
    msg = str(e.value)
    assert "analyse.1.shufles: unknown key; did you mean 'shuffles'?" in msg and "alpha" in msg and "bins" not in msg


def test_a_step_that_needs_another_says_so():
    text = GOOD.replace('[[analyse]]\ntype = "ratemaps"\nbins = 8\n', '[[analyse]]\ntype = "spatial_scores"\n')
    with pytest.raises(ProtocolError, match="analyse.0: spatial_scores needs a ratemaps step before it"):
        parse_protocol(text.split("[[perturb]]")[0])
