"""Benchmark: a unit-lesion sweep at resblock 9 of CLIP ViT-B/32 (random weights), cached prefix vs full forward.

Prints wall times measured side by side in one run and their ratio; also checks the two give the same answer.
    python bench/lesions.py [--n 64] [--conditions 40] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

import stimuli
from rig.lesions import unit_lesions

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


class ClipSubject:
    """Minimal stand-in for rig.subjects.Subject (224 px input, CLIP normalisation)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.device, self.name = model.eval(), torch.device("cpu"), "open_clip:ViT-B-32:random"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode_image((images - MEAN) / STD)


class ZeroShot:
    def __init__(self, model: torch.nn.Module, prompts: list[str], target: int = 0):
        self.labels, self.target = prompts, target
        with torch.no_grad():
            self.text = F.normalize(model.encode_text(open_clip.tokenize(prompts)), dim=-1)

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return (100.0 * F.normalize(out, dim=-1) @ self.text.T).softmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--conditions", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--site", default="visual.transformer.resblocks.9.attn")
    a = ap.parse_args()
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    subject, readout = ClipSubject(model), ZeroShot(model, ["a black circle", "an empty image"])
    stim = stimuli.circles(n=a.n, canvas=224, seed=0)
    props = (np.arange(a.conditions) + 0.5) / a.conditions  # distinct masks: no condition is deduplicated
    kw = dict(site=a.site, strategy="random", proportions=props, repeats=1, seed=0, batch_size=a.batch_size)
    times, results = {}, {}
    for mode, cache in (("cached", True), ("naive", False)):
        t = time.perf_counter()
        results[mode] = unit_lesions(subject, stim, readout, use_cache=cache, **kw)
        times[mode] = time.perf_counter() - t
    diff = float(np.abs(results["cached"]["target_probability"] - results["naive"]["target_probability"]).max())
    print(f"CLIP ViT-B-32 random, {a.n} stimuli, {a.conditions} unit-lesion conditions at {a.site}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  cache: {results['cached'].attrs['prefix_cache']}")
    print(f"  cached prefix : {times['cached']:8.1f} s  ({times['cached'] / a.conditions:.2f} s/condition)")
    print(f"  full forward  : {times['naive']:8.1f} s  ({times['naive'] / a.conditions:.2f} s/condition)")
    print(f"  speed-up      : {times['naive'] / times['cached']:8.2f} x   max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
