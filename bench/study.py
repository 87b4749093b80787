"""Benchmark: the spatial-cells study (`protocols/circles-clip.toml`) end to end, with random weights for both
preparations (the trained network needs a download; the two cost the same), on a stated fraction of its units,
with each step's time and the projected time at full size (3000 stimuli x 12 sites x 50 tokens x 768 units =
460,800 units per preparation). The session (figures, report) stays in --archive.

    python bench/study.py [--tokens 2] [--sites 2] [--stimuli 3000] [--shuffles 100] [--device auto]

Projection: the ratemaps and spatial-score steps scale with the number of units (blocks of units, no term
across units), so they are multiplied by full units / measured units. The record step is a forward pass per
stimulus, which does not depend on how many units are kept, plus storage, which does: its forward part is
timed on its own here (one batch, per stimulus) and kept, the rest is scaled by the unit ratio. Wall and CPU
seconds (the process's, all threads) are both projected: on a shared machine the CPU figure is the
comparable one, and CPU / cores is the wall time the run would take with the cores to itself.
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


def forward_seconds_per_stimulus(device: str, batch: int = 32) -> tuple[float, float]:
    """(wall, CPU) seconds per stimulus of one batch of circles through the random-weight ViT-B/32 image tower
    (after a warm-up batch)."""
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
        t, c = time.perf_counter(), time.process_time()
        subject.forward(images)
        if subject.device.type == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / batch, (time.process_time() - c) / batch


def step_seconds(folder: Path) -> dict[str, tuple[float, float]]:
    """Per step: (wall seconds, CPU seconds of the process, all threads; NaN where not recorded)."""
    steps = json.loads((folder / "session.json").read_text())["steps"]
    return {k: (float(v.get("seconds") or 0.0), float(v.get("cpu_seconds", float("nan"))))
            for k, v in steps.items()}


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
    preps = {"openai-slot (random)": step_seconds(session.path)}
    if session.sweep:  # [compare] runs as a two-point sweep: the control is its second session
        from rig.sweeps import Sweep

        control = Sweep(archive / "sweeps" / session.sweep).sessions[1]
        preps["control (random)"] = step_seconds(control.path)
    per_stim, per_stim_cpu = forward_seconds_per_stimulus(str(session.provenance.get("device", "cpu")))
    units = a.sites * a.tokens * FULL_UNITS
    ratio = FULL_SITES * FULL_TOKENS * FULL_UNITS / units
    print(f"circles-clip.toml, random weights, {a.stimuli} stimuli, {a.sites} sites x {a.tokens} tokens x "
          f"{FULL_UNITS} units = {units} units per preparation (1/{ratio:.0f} of 460,800); {a.shuffles} shuffles")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; session {session.path}")
    print(f"forward pass alone: {1e3 * per_stim:.1f} ms per stimulus ({1e3 * per_stim_cpu:.1f} ms cpu)")
    tot = np.zeros(4)  # measured wall, projected wall, measured cpu, projected cpu
    print(f"{'preparation':22s} {'step':24s} {'wall s':>8s} {'projected':>10s} {'cpu s':>8s} {'projected':>10s} "
          f"{'cpu ms/unit':>11s}")
    for prep, steps in preps.items():
        for key, (sec, cpu) in steps.items():
            if key == "record":
                forward, forward_cpu = per_stim * a.stimuli, per_stim_cpu * a.stimuli
                proj = forward + max(sec - forward, 0.0) * ratio
                proj_cpu = forward_cpu + max(cpu - forward_cpu, 0.0) * ratio
            elif key.startswith("analyse/"):
                proj, proj_cpu = sec * ratio, cpu * ratio
            else:
                proj, proj_cpu = sec, cpu
            tot += (sec, proj, cpu, proj_cpu)
            per_unit = f"{1e3 * cpu / units:11.2f}" if key.startswith("analyse/") else f"{'':11s}"
            print(f"{prep:22s} {key:24s} {sec:8.1f} {proj:10.0f} {cpu:8.1f} {proj_cpu:10.0f} {per_unit}")
    print(f"{'total':47s} {tot[0]:8.1f} {tot[1]:10.0f} {tot[2]:8.1f} {tot[3]:10.0f}")
    print(f"projected at full size: {tot[1] / 3600:.2f} h wall as measured here, {tot[3] / 3600:.2f} CPU-hours "
          f"({tot[3] / 3600 / (os.cpu_count() or 1):.2f} h wall if all {os.cpu_count()} cores were ours); "
          f"whole run {wall:.0f} s wall")
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
