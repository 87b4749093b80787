"""Measurement: are "targeted" unit sets position-specific, or the loudest units again? (issue 14)

Random-weight CLIP ViT-B/32, the CLS token of resblock 9's attention output, circles; for every stimulus the
top `--top` share of units by each strategy, compared with the position-free control (`by_mean`: the units with
the highest mean response) and with the blog's raw ranking. Overlap = mean over stimuli of |A and B| / k
(1 = the same set). Ratemaps as the quickstart makes them (bins, smoothing, min_occupancy, regress_out);
rankings held out (5 folds) and circular.
    python bench/lesion_sets.py [--n 300] [--bins 14] [--top 0.1]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import xarray as xr

import analyses
import stimuli
from rig.lesions import held_out_scores, map_scores, unit_ranks
from rig.lesions.ranking import ranks_from_scores, set_overlap
from rig.subjects import load_subject


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--bins", type=int, default=14)
    ap.add_argument("--top", type=float, default=0.1)
    ap.add_argument("--min-occupancy", type=int, default=1)
    ap.add_argument("--site", default="visual.transformer.resblocks.9.attn")
    a = ap.parse_args()
    t0 = time.perf_counter()
    subject = load_subject("open_clip", "ViT-B-32", "random", seed=0, device="cpu")
    design = stimuli.circles(n=a.n, canvas=224, diameter=(20, 80), seed=0)
    cls = []
    hook = subject.model.get_submodule(a.site).register_forward_hook(lambda m, i, o: cls.append(o[0][:, 0].clone()))
    try:
        for _, images in design.batches(32):
            subject.forward(torch.from_numpy(images))
    finally:
        hook.remove()
    coords = {c: ("stimulus", design.params[c].values) for c in ("x", "y", "diameter")}
    rec = xr.DataArray(torch.cat(cls).numpy(), dims=("stimulus", "unit"), coords=coords)
    kw = dict(bins=a.bins, extent=(0, 224), smoothing=1.0, min_occupancy=a.min_occupancy, regress_out=["diameter"])
    lesion = np.arange(a.n)
    x, y = design.params["x"].values, design.params["y"].values
    scores = {"held out (5 folds)": held_out_scores(rec, lesion, folds=5, seed=0, **kw),
              "circular": map_scores(analyses.ratemaps(rec, **kw), x, y, mean=rec.values.mean(0))}
    n_units = rec.sizes["unit"]
    k = int(round(a.top * n_units))
    print(f"CLIP ViT-B-32 random, {a.site} CLS, {a.n} circles, {n_units} units, top {a.top:.0%} = {k} units, "
          f"ratemaps {kw}; {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f}")
    for how, sc in scores.items():
        mean = ranks_from_scores(sc.mean[None])
        abs_mean = ranks_from_scores(np.abs(sc.mean)[None])
        raw = unit_ranks("targeted_raw", n_units, a.n, scores=sc)
        print(f"\n  ranking maps {how}; {sc.n_nearest} stimuli ranked at the nearest visited bin")
        print(f"  {'strategy':18s} {'vs by_mean':>10s} {'vs |mean|':>10s} {'vs targeted_raw':>16s} {'distinct sets':>14s}")
        for strategy in ("targeted_raw", "targeted_raw_abs", "targeted", "targeted_abs"):
            ranks = unit_ranks(strategy, n_units, a.n, scores=sc)
            distinct = len({tuple(np.flatnonzero(r < k)) for r in ranks})
            print(f"  {strategy:18s} {set_overlap(ranks, mean, k):10.3f} {set_overlap(ranks, abs_mean, k):10.3f} "
                  f"{set_overlap(ranks, raw, k):16.3f} {distinct:14d}")
    held, circ = (unit_ranks("targeted", n_units, a.n, scores=sc) for sc in scores.values())
    print(f"\n  targeted, held out vs circular: overlap {set_overlap(held, circ, k):.3f}")


if __name__ == "__main__":
    main()
