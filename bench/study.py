"""Benchmark: the spatial-cells study (`protocols/circles-clip.toml`) end to end, with random weights for both
preparations (the trained network needs a download; the two cost the same), its two preparations side by side
in two processes (as `rig sweep --workers 2` runs them), on a stated fraction of its analyses, with each step's
time and the projected time at full size (3000 stimuli; 12 sites x 50 tokens x 768 units = 460,800 units and
3000 lesioned stimuli per preparation). The sessions (figures, reports) stay in --archive.

    python bench/study.py [--workers 2] [--analyse-blocks 9] [--lesion-stimuli 300] [--sites 12] [--tokens 50]

What is measured and what is projected: the record step runs at the size asked (by default the full
recording: every token of the 12 sites, 2.8 GB per preparation) and is projected only when it is a fraction
(its forward part is timed on its own and kept, the rest scaled by the unit ratio). The ratemaps and
spatial-score steps map the blocks of `--analyse-blocks` only and scale with the units mapped (blocks of units,
no term across units); the unit-lesion step lesions the first `--lesion-stimuli` stimuli and scales with them
(every condition is one suffix forward per stimulus). Wall and CPU seconds (each session's process, all threads)
are both projected; on a shared machine the CPU figure is the comparable one. The projected wall time of the
study is that of the slower preparation when they run side by side (`--workers 2`), their sum otherwise.
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
LESION_BLOCK = 9


def forward_seconds_per_stimulus(device: str, threads: int, batch: int = 32) -> tuple[float, float]:
    """(wall, CPU) seconds per stimulus of one batch of circles through the random-weight ViT-B/32 image tower
    with `threads` torch threads (after a warm-up batch)."""
    import numpy as np
    import torch

    import stimuli
    from rig.subjects import load_subject

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
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
    finally:
        torch.set_num_threads(before)


def step_seconds(folder: Path) -> dict[str, tuple[float, float]]:
    """Per step: (wall seconds, CPU seconds of the session's process, all threads; NaN where not recorded)."""
    steps = json.loads((folder / "session.json").read_text())["steps"]
    return {k: (float(v.get("seconds") or 0.0), float(v.get("cpu_seconds", float("nan"))))
            for k, v in steps.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="processes; 2: the two preparations side by side "
                    "(one torch thread each), 1: one after the other in this process (all threads)")
    ap.add_argument("--sites", type=int, default=FULL_SITES, help="attention blocks recorded (of 12: the last "
                    "ones, and always those analysed)")
    ap.add_argument("--tokens", type=int, default=FULL_TOKENS, help="tokens recorded per site (of 50), spread "
                    "evenly from the CLS token (0) to the last patch (49)")
    ap.add_argument("--analyse-blocks", default=str(LESION_BLOCK), help="comma-separated blocks whose ratemaps and "
                    "scores are computed (the lesion ranking needs block 9)")
    ap.add_argument("--lesion-stimuli", type=int, default=300, help="stimuli lesioned (of --stimuli)")
    ap.add_argument("--lesion-precision", default="float32", choices=["float32", "bfloat16"],
                    help="precision of the lesioned forwards (bfloat16: autocast, its error reported)")
    ap.add_argument("--stimuli", type=int, default=3000)
    ap.add_argument("--shuffles", type=int, default=100)
    ap.add_argument("--device", default="auto", help="subject (and analysis) device: auto, cpu, cuda")
    ap.add_argument("--archive", default=None, help="where the sessions go (default: a temporary folder)")
    a = ap.parse_args()

    import numpy as np

    import rig

    mapped = sorted({int(b) for b in a.analyse_blocks.split(",")} | {LESION_BLOCK})
    recorded = sorted(set(range(FULL_SITES - a.sites, FULL_SITES)) | set(mapped))
    tokens = sorted({int(t) for t in np.linspace(0, FULL_TOKENS - 1, a.tokens).round()})

    def names(blocks: list[int]) -> str:
        return "[" + ", ".join(f'"visual.transformer.resblocks.{b}.attn"' for b in blocks) + "]"

    overrides = ["subject.weights=random", f"subject.device={a.device}", f"stimuli.n={a.stimuli}",
                 f"record.sites={names(recorded)}", f"record.tokens={'all' if len(tokens) == FULL_TOKENS else tokens}",
                 f"analyse.0.sites={names(mapped)}", f"analyse.1.shuffles={a.shuffles}",
                 f"perturb.0.n_stimuli={min(a.lesion_stimuli, a.stimuli)}", f"perturb.0.precision={a.lesion_precision}"]
    archive = Path(a.archive or tempfile.mkdtemp(prefix="scale-study-"))
    load = os.getloadavg()
    t0 = time.perf_counter()
    sweep = rig.sweep(PROTOCOL, archive=archive, overrides=overrides, workers=a.workers if a.workers > 1 else None,
                      progress=False)
    wall = time.perf_counter() - t0
    sessions = sweep.sessions
    if sweep.status != "completed" or any(s is None or s.status != "completed" for s in sessions):
        raise SystemExit(f"sweep {sweep.path} ended {sweep.status}: {[p.get('error') for p in sweep.points]}")
    threads = 1 if a.workers > 1 else None
    import torch

    per_stim, per_stim_cpu = forward_seconds_per_stimulus(str(sessions[0].provenance.get("device", "cpu")),
                                                          threads or torch.get_num_threads())
    recorded_units = len(recorded) * len(tokens) * FULL_UNITS
    mapped_units = len(mapped) * len(tokens) * FULL_UNITS
    full_units = FULL_SITES * FULL_TOKENS * FULL_UNITS
    n_lesion = min(a.lesion_stimuli, a.stimuli)
    scale = {"analyse/ratemaps": full_units / mapped_units, "analyse/spatial_scores": full_units / mapped_units,
             "perturb/unit_lesions": a.stimuli / n_lesion}
    print(f"circles-clip.toml, random weights (both preparations), {a.stimuli} stimuli, {a.shuffles} shuffles, "
          f"{a.workers} worker process(es)")
    print(f"recorded: {len(recorded)} sites x {len(tokens)} tokens x {FULL_UNITS} units = {recorded_units} units; "
          f"mapped and scored: blocks {mapped} = {mapped_units} units (1/{full_units / mapped_units:.0f} of "
          f"{full_units}); lesioned: {n_lesion} stimuli (1/{a.stimuli / n_lesion:.0f}) in {a.lesion_precision}")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs; sweep {sweep.path}")
    print(f"forward pass alone ({threads or torch.get_num_threads()} thread(s)): {1e3 * per_stim:.1f} ms per "
          f"stimulus ({1e3 * per_stim_cpu:.1f} ms cpu)")
    print(f"{'preparation':26s} {'step':24s} {'wall s':>8s} {'projected':>10s} {'cpu s':>8s} {'projected':>10s} "
          f"{'x':>5s}")
    prep_walls, cpu_total = [], 0.0
    for session, point in zip(sessions, sweep.points):
        label = f"{point.get('label') or session.id}"[:26]
        steps, tot = step_seconds(session.path), np.zeros(4)
        for key, (sec, cpu) in steps.items():
            if key == "record" and recorded_units < full_units:
                forward, forward_cpu = per_stim * a.stimuli, per_stim_cpu * a.stimuli
                k = full_units / recorded_units
                proj, proj_cpu = forward + max(sec - forward, 0.0) * k, forward_cpu + max(cpu - forward_cpu, 0.0) * k
            else:
                k = scale.get(key, 1.0)
                proj, proj_cpu = sec * k, cpu * k
            tot += (sec, proj, cpu, proj_cpu)
            print(f"{label:26s} {key:24s} {sec:8.1f} {proj:10.0f} {cpu:8.1f} {proj_cpu:10.0f} {k:5.0f}")
        print(f"{label:26s} {'total':24s} {tot[0]:8.1f} {tot[1]:10.0f} {tot[2]:8.1f} {tot[3]:10.0f}")
        prep_walls.append(tot[1])
        cpu_total += tot[3]
    study_wall = max(prep_walls) if a.workers > 1 else sum(prep_walls)
    print(f"projected at full size: {study_wall / 3600:.2f} h wall for both preparations "
          f"({'side by side' if a.workers > 1 else 'one after the other'}), {cpu_total / 3600:.2f} CPU-hours "
          f"({cpu_total / 3600 / (os.cpu_count() or 1):.2f} h if all {os.cpu_count()} cores were busy); "
          f"this run took {wall:.0f} s wall")
    first = sessions[0]
    scores = first.results["analyses/spatial_scores"]
    drawn = {k[:-len("_shuffles")]: float(scores[k].mean()) for k in scores.data_vars if k.endswith("_shuffles")}

    def counts(column: str) -> dict[str, int]:
        labels, n = np.unique(scores[column].values.astype(str), return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, n)}

    print("shuffles drawn per unit (mean, of %d): %s" % (a.shuffles, ", ".join(f"{k} {v:.1f}" for k, v in drawn.items())))
    print(f"classes (per-unit tests, alpha {scores.attrs.get('alpha')}): {counts('class')}; "
          f"FDR: {counts('class_fdr')}")
    print("headline:", {k: v for k, v in (first.info.get("headline") or {}).items() if "lesion" in k or "@" in k})


if __name__ == "__main__":
    main()
