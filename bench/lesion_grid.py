"""Benchmark: the cost of one (stimulus, condition) of a unit-lesion grid at resblock 9 of CLIP ViT-B/32 (random
weights), for the ways `PrefixRunner` can run it, side by side on the same images and unit sets:

- `block input, one condition at a time`: the cache holds block 9's input; each condition runs blocks 9-11 over
  all stimuli (the code before site replay);
- `site replayed, one at a time`: the cache also holds the site's output, so block 9's attention is skipped;
- `site replayed, P per forward`: conditions batched per stimulus (`run_conditions`): each stimulus batch runs
  P unit sets in one forward of P x batch rows (what `unit_lesions` does, P = `per_forward`);
- `site replayed, bfloat16`: the same under `torch.autocast` in bfloat16 (`unit_lesions(precision="bfloat16")`);
  its max |diff| is its error against float32.

Rounds alternate between the ways so that load from other processes hits all alike; best round of each is
printed (wall and CPU ms per (stimulus, condition)), with its ratio to the first way and the largest difference
of readouts from it.
    python bench/lesion_grid.py [--n 128] [--conditions 8] [--batch-size 64] [--rounds 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch

import stimuli
from rig.behaviour import make_readout
from rig.lesions import PrefixRunner, silenced
from rig.subjects import load_subject

SITE = "visual.transformer.resblocks.9.attn"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--conditions", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--per-forward", default="2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: as a sweep worker of the study)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    subject = load_subject("open_clip", "ViT-B-32", "random", seed=0, device="cpu")
    readout = make_readout(subject, {"prompts": ["a black circle", "an empty image"], "target": "a black circle"})
    images = np.concatenate([im for _, im in stimuli.circles(n=a.n, canvas=224, seed=0).batches(a.batch_size)])
    rng = np.random.default_rng(0)
    sets = rng.random((a.conditions, a.n, 768)) < rng.random((a.conditions, 1, 1))  # a unit set per stimulus
    ways = [("block input, one condition at a time", False, 0), ("site replayed, one at a time", True, 0)]
    ways += [(f"site replayed, {p} per forward", True, p) for p in map(int, a.per_forward.split(","))]
    ways += [("site replayed, bfloat16", True, -1)]
    best = {name: (np.inf, np.inf) for name, _, _ in ways}
    outs = {}
    with silenced(subject.model.get_submodule(SITE)) as silencer:
        runners = {}
        for name, replay, _ in ways[:2]:
            runners[replay] = PrefixRunner(subject, images, a.batch_size)
            runners[replay].prepare(SITE, replay=replay)
        for _ in range(a.rounds):
            for name, replay, per in ways:
                runner = runners[replay]
                t, c = time.perf_counter(), time.process_time()
                if per <= 0:
                    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if per < 0 else contextlib.nullcontext()
                    with ctx:
                        out = np.stack([runner.run(readout, lambda idx, k=k: setattr(silencer, "mask", sets[k][idx]))
                                        for k in range(a.conditions)])
                else:
                    out = np.zeros((a.conditions, a.n, 2), np.float32)

                    def set_masks(conds: np.ndarray, idx: np.ndarray) -> None:
                        silencer.mask = np.concatenate([sets[k][idx] for k in conds])

                    runner.run_conditions(readout, a.conditions, set_masks, per_forward=per,
                                          keep=lambda idx, o: out.__setitem__((slice(None), idx), o))
                w, cp = time.perf_counter() - t, time.process_time() - c
                best[name] = (min(best[name][0], w), min(best[name][1], cp))
                outs[name] = out
        for r in runners.values():
            r.close()
    cells = a.n * a.conditions
    first = ways[0][0]
    print(f"{subject.name}, {a.n} stimuli x {a.conditions} unit sets at {SITE}, batches of {a.batch_size} stimuli, "
          f"torch threads {a.threads}, best of {a.rounds} rounds; load average {os.getloadavg()[0]:.2f} (at the end)")
    print(f"  {'':40s} {'wall ms':>8s} {'cpu ms':>8s} {'cpu ratio':>10s} {'max |diff|':>11s}  per (stimulus, condition)")
    for name, _, _ in ways:
        w, cp = best[name]
        diff = float(np.abs(outs[name] - outs[first]).max())
        print(f"  {name:40s} {1e3 * w / cells:8.2f} {1e3 * cp / cells:8.2f} {best[first][1] / cp:9.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
