"""Benchmark: a unit-lesion sweep at resblock 9 of CLIP ViT-B/32 (random weights), cached prefix vs full forward
(`--cnn`: at layer4 of torchvision ResNet-18, random weights, whose stages are children of the model).

Both paths use the real subject (`rig.subjects.load_subject`) and readout (`rig.behaviour.make_readout`) on the
same pre-rendered images (the naive path renders nothing per condition): the naive path is one full forward of
all stimuli per condition, the cached path `PrefixRunner` (blocks 0-8 once, then blocks 9-11 per condition,
the last on the CLS token only). Conditions run interleaved (cached, then naive, per condition) so load from
other processes hits both alike; wall and CPU (`time.process_time`) times are printed side by side with ratios,
and the two paths are checked to agree.
    python bench/lesions.py [--n 64] [--conditions 40] [--batch-size 32] [--cnn]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import stimuli
from rig.behaviour import make_readout
from rig.lesions import PrefixRunner, silenced
from rig.lesions.silence import n_site_units
from rig.lesions.units import site_shape
from rig.subjects import load_subject


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--conditions", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--site", default=None, help="default: visual.transformer.resblocks.9.attn, or layer4 (--cnn)")
    ap.add_argument("--cnn", action="store_true", help="ResNet-18 instead of CLIP ViT-B/32")
    a = ap.parse_args()
    if a.cnn:
        subject = load_subject("torchvision", "resnet18", "random", seed=0, device="cpu")
        prompts = ["ping-pong ball", "envelope"]
    else:
        subject = load_subject("open_clip", "ViT-B-32", "random", seed=0, device="cpu")
        prompts = ["a black circle", "an empty image"]
    a.site = a.site or ("layer4" if a.cnn else "visual.transformer.resblocks.9.attn")
    readout = make_readout(subject, {"prompts": prompts, "target": prompts[0]})
    stim = stimuli.circles(n=a.n, canvas=224, seed=0)
    images = np.concatenate([im for _, im in stim.batches(a.batch_size)])  # rendered once, used by both paths
    props = (np.arange(a.conditions) + 0.5) / a.conditions  # distinct random masks per condition
    rng = np.random.default_rng(0)
    wall = {"cached": 0.0, "naive": 0.0}
    cpu = dict(wall)
    diff = 0.0
    with PrefixRunner(subject, images, a.batch_size) as cached, \
            PrefixRunner(subject, images, a.batch_size, use_cache=False) as naive, \
            silenced(subject.model.get_submodule(a.site)) as silencer:
        n_units = n_site_units(site_shape(naive, a.site)[0])
        t, c = time.perf_counter(), time.process_time()
        cached.prepare(a.site)
        prep_wall, prep_cpu = time.perf_counter() - t, time.process_time() - c
        for p in props:
            masks = rng.permutation(n_units)[None, :] < round(p * n_units)  # (1, U): shared by all stimuli
            out = {}
            for mode, runner in (("cached", cached), ("naive", naive)):
                t, c = time.perf_counter(), time.process_time()
                out[mode] = runner.run(readout, lambda idx: setattr(silencer, "mask", masks.repeat(len(idx), 0)))
                wall[mode] += time.perf_counter() - t
                cpu[mode] += time.process_time() - c
            diff = max(diff, float(np.abs(out["cached"] - out["naive"]).max()))
    k = a.conditions
    print(f"{subject.name}, {a.n} stimuli, {k} unit-lesion conditions at {a.site} ({n_units} units), torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} (at the end)")
    print(f"  cache: {cached.split.block if cached.split else cached.fallback}, CLS-only last block "
          f"{cached.cls_only}, stem replayed {cached.stem}")
    print(f"  {'':28s} {'wall s':>9s} {'cpu s':>9s}")
    print(f"  {'cache preparation (once)':28s} {prep_wall:9.1f} {prep_cpu:9.1f}")
    print(f"  {'cached, per condition':28s} {wall['cached'] / k:9.2f} {cpu['cached'] / k:9.2f}")
    print(f"  {'full forward, per condition':28s} {wall['naive'] / k:9.2f} {cpu['naive'] / k:9.2f}")
    tot_w, tot_c = prep_wall + wall["cached"], prep_cpu + cpu["cached"]
    print(f"  speed-up per condition     : wall {wall['naive'] / wall['cached']:.2f}x, cpu "
          f"{cpu['naive'] / cpu['cached']:.2f}x")
    print(f"  speed-up for the {k}-condition sweep incl. preparation: wall {wall['naive'] / tot_w:.2f}x, "
          f"cpu {cpu['naive'] / tot_c:.2f}x   max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
