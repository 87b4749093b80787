"""Benchmark: the spatial-cells study (`protocols/circles-clip.toml`) end to end, with random weights for both
preparations (the trained network needs a download; the two cost the same), on a stated fraction of its units,
with each step's time and the projected time at full size (3000 stimuli x 12 sites x 50 tokens x 768 units =
460,800 units per preparation). The session (figures, report) stays in --archive.

    python bench/study.py [--tokens 2] [--sites 2] [--stimuli 3000] [--shuffles 100] [--device auto]

Projection: the ratemaps and spatial-score steps scale with the number of units (blocks of units, no term
across units), so they are multiplied by full units / measured units. The record step is a forward pass per
stimulus, which does not depend on how many units are kept, plus storage, which does: its forward part is
timed on its own here (one batch, per stimulus) and kept, the rest is scaled by the unit ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL_SITES, FULL_TOKENS, FULL_UNITS = 12, 50, 768
PROTOCOL = ROOT / "protocols" / "circles-clip.toml"


def forward_seconds_per_stimulus(device: str, batch: int = 32) -> float:
    """One batch of circles through the random-weight ViT-B/32 image tower (after a warm-up batch)."""
    import numpy as np
    import torch

    import stimuli
    from rig.subjects import load_subject

    subject = load_subject("open_clip", arch="ViT-B-32", weights="random", seed=0, device=device)
    images = torch.from_numpy(np.ascontiguousarray(stimuli.circles(n=batch, seed=0).render())).to(subject.device)
    with torch.no_grad():
        subject.forward(images)
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        subject.forward(images)
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / batch


def step_seconds(folder: Path) -> dict[str, float]:
    steps = json.loads((folder / "session.json").read_text())["steps"]
    return {k: float(v.get("seconds") or 0.0) for k, v in steps.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2, help="tokens recorded per site (of 50), spread evenly from "
                    "the CLS token (0) to the last patch (49)")
    ap.add_argument("--sites", type=int, default=2, help="attention blocks recorded (of 12; the last ones)")
    ap.add_argument("--stimuli", type=int, default=3000)
    ap.add_argument("--shuffles", type=int, default=100)
    ap.add_argument("--device", default="auto", help="subject (and analysis) device: auto, cpu, cuda")
    ap.add_argument("--archive", default=None, help="where the session goes (default: a temporary folder)")
    a = ap.parse_args()

    import numpy as np

    import rig

    blocks = list(range(FULL_SITES - a.sites, FULL_SITES))
    sites = "[" + ", ".join(f'"visual.transformer.resblocks.{b}.attn"' for b in blocks) + "]"
    overrides = ["subject.weights=random", f"subject.device={a.device}", f"stimuli.n={a.stimuli}",
                 f"record.sites={sites}",
                 f"record.tokens={sorted({int(t) for t in np.linspace(0, FULL_TOKENS - 1, a.tokens).round()})}",
                 f"analyse.1.shuffles={a.shuffles}"]
    archive = Path(a.archive or tempfile.mkdtemp(prefix="scale-study-"))
    load = os.getloadavg()
    t0 = time.perf_counter()
    session = rig.run(PROTOCOL, archive=archive, overrides=overrides, progress=False)
    wall = time.perf_counter() - t0
    if session.status != "completed":
        raise SystemExit(f"session {session.path} ended {session.status}")
    nested = sorted((session.path / "compare").glob("*/session.json"))
    preps = {"openai-slot (random)": step_seconds(session.path)}
    if nested:
        preps["control (random)"] = step_seconds(nested[0].parent)
    per_stim = forward_seconds_per_stimulus(str(session.provenance.get("device", "cpu")))
    units = a.sites * a.tokens * FULL_UNITS
    ratio = FULL_SITES * FULL_TOKENS * FULL_UNITS / units
    print(f"circles-clip.toml, random weights, {a.stimuli} stimuli, {a.sites} sites x {a.tokens} tokens x "
          f"{FULL_UNITS} units = {units} units per preparation (1/{ratio:.0f} of 460,800); {a.shuffles} shuffles")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; session {session.path}")
    print(f"forward pass alone: {1e3 * per_stim:.1f} ms per stimulus")
    total_measured = total_projected = 0.0
    print(f"{'preparation':22s} {'step':28s} {'measured s':>11s} {'projected s':>12s}")
    for prep, steps in preps.items():
        for key, sec in steps.items():
            if key == "compare":
                continue  # the nested session, listed as its own preparation
            if key == "record":
                forward = per_stim * a.stimuli
                proj = forward + max(sec - forward, 0.0) * ratio
            elif key.startswith("analyse/"):
                proj = sec * ratio
            else:
                proj = sec
            total_measured += sec
            total_projected += proj
            print(f"{prep:22s} {key:28s} {sec:11.1f} {proj:12.1f}")
    print(f"{'total':51s} {total_measured:11.1f} {total_projected:12.1f}  "
          f"({total_projected / 3600:.2f} h projected at full size; whole run {wall:.0f} s wall)")
    scores = session.results["analyses/spatial_scores"]
    drawn = {k[:-len("_shuffles")]: float(scores[k].mean()) for k in scores.data_vars if k.endswith("_shuffles")}
    def counts(column: str) -> dict[str, int]:
        labels, n = np.unique(scores[column].values.astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, n)}

    print("shuffles drawn per unit (mean, of %d): %s" % (a.shuffles, ", ".join(f"{k} {v:.1f}" for k, v in drawn.items())))
    print(f"classes (per-unit tests, alpha {scores.attrs.get('alpha')}): {counts('class')}; "
          f"FDR: {counts('class_fdr')}")


if __name__ == "__main__":
    main()
