"""Weight lesions: zero each weighted submodule of a tower in turn, measure behaviour, restore exactly."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from rig.errors import RigError, SiteError
from rig.io import atomic_path
from rig.lesions.prefix import PrefixRunner
from rig.lesions.restore import lesion_parameters, lesioned
from rig.lesions.source import StimulusSource
from rig.lesions.store import ConditionStore


def towers(model: nn.Module) -> dict[str, str]:
    """Tower name -> root module name: CLIP-like models (with `visual` and `encode_text`) give
    `{"visual": "visual", "text": ""}` (text = everything outside `visual`); others `{"image": ""}`."""
    if hasattr(model, "visual") and hasattr(model, "encode_text"):
        return {"visual": "visual", "text": ""}
    return {"image": ""}


def weighted_modules(model: nn.Module, tower: str | None = None) -> list[str]:
    """Modules that own parameters directly, in `named_modules()` order, for one tower (None: all towers).

    The tower root itself is excluded: its own parameters are embeddings / projections / the logit scale,
    not a layer. CLIP ViT-B/32 (open_clip): 75 visual entries (conv1, ln_pre, 12 x [ln_1, attn, attn.out_proj,
    ln_2, mlp.c_fc, mlp.c_proj], ln_post) and 74 text entries (12 x the same 6, token_embedding, ln_final).
    """
    roots = towers(model)
    if tower is not None and tower not in roots:
        raise RigError(f"unknown tower {tower!r}; this subject has {', '.join(roots)}")
    names = []
    for name, m in model.named_modules():
        if name in roots.values() or not any(True for _ in m.parameters(recurse=False)):
            continue
        t = _tower_of(name, roots)
        if tower is None or t == tower:
            names.append(name)
    return names


def _tower_of(name: str, roots: dict[str, str]) -> str:
    best = max((r for r in roots.values() if r == "" or name == r or name.startswith(r + ".")), key=len)
    return next(t for t, r in roots.items() if r == best)


def _image_path_modules(runner: PrefixRunner, names: Sequence[str]) -> set[str]:
    """Which of `names` run when the subject encodes an image (one probe image)."""
    ran: set[str] = set()
    handles = [runner.model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: ran.add(n)) for n in names]
    try:
        runner.probe()
    finally:
        for h in handles:
            h.remove()
    return ran


def weight_lesions(
    subject: Any,
    stimuli: Any,
    readout: Any,
    modules: Sequence[str] | None = None,
    *,
    include_bias: bool = False,
    rebuild_readout: Callable[[], Any] | None = None,
    batch_size: int = 32,
    folder: str | Path | None = None,
    use_cache: bool = True,
    max_cache_bytes: int = 2**30,
) -> xr.Dataset:
    """Zero the weights of each module in `modules` (default: every weighted module of every tower) in turn.

    Image-path modules re-run the image forward (only from the lesioned block on, see `PrefixRunner`);
    modules outside the image path (the text tower) reuse the unlesioned image outputs and rebuild the
    readout under the lesion with `rebuild_readout()` (e.g. `lambda: make_readout(subject, spec)`), so text
    embeddings are computed once per condition. Biases are zeroed only with `include_bias`.

    Returns `probability(module, stimulus, choice)`, `target_probability(module, stimulus)` and
    `mean(module)` (with a target), `baseline_probability(stimulus, choice)`, `baseline_mean`, coordinates
    `tower(module)` and `n_zeroed(module)` (parameters set to 0). With `folder`, resumable per module and
    written atomically to `folder/weight_lesions.nc`.
    """
    model = subject.model
    names = list(modules) if modules is not None else weighted_modules(model)
    if not names:
        raise RigError("no modules to lesion; pass module names (see rig.lesions.weighted_modules(model))")
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        raise SiteError(f"no module named {missing[0]!r}; list candidates with rig.lesions.weighted_modules(model)")
    source = StimulusSource(stimuli)
    runner = PrefixRunner(subject, source, batch_size, max_cache_bytes, use_cache=use_cache)
    image_path = _image_path_modules(runner, names)
    if rebuild_readout is None and any(n not in image_path for n in names):
        off = next(n for n in names if n not in image_path)
        raise RigError(f"{off!r} is not on the image path (text tower?); pass rebuild_readout to lesion it")
    roots = towers(model)
    spec = dict(modules=names, include_bias=include_bias, n_stimuli=source.n, stimuli=source.content_hash(),
                subject=str(getattr(subject, "name", type(model).__name__)))
    store = ConditionStore(folder, spec)
    try:
        outputs = torch.from_numpy(runner.run(lambda out: out))  # unlesioned image outputs (N, D)
        baseline = _batched(readout, outputs, batch_size)
        probs = []
        for name in names:
            p = store.get(name)
            if p is None:
                module = model.get_submodule(name)
                if name in image_path:
                    runner.prepare(name)
                    if not runner.covers(name):
                        runner.prepare(None)
                    with lesioned(module, include_bias):
                        p = runner.run(readout)
                else:
                    with lesioned(module, include_bias):
                        p = _batched(rebuild_readout(), outputs, batch_size)
                store.put(name, p)
            probs.append(p)
    finally:
        runner.close()
    ds = xr.Dataset(
        {"probability": (("module", "stimulus", "choice"), np.stack(probs).astype(np.float32)),
         "baseline_probability": (("stimulus", "choice"), baseline.astype(np.float32))},
        coords={"module": names, "stimulus": np.arange(source.n),
                "tower": ("module", [_tower_of(n, roots) for n in names]),
                "n_zeroed": ("module", [sum(p.numel() for _, p in lesion_parameters(known[n], include_bias))
                                        for n in names])},
    )
    labels = getattr(readout, "labels", None)
    if labels:
        ds = ds.assign_coords(choice=list(labels))
    target = getattr(readout, "target", None)
    if target is not None:
        ds["target_probability"] = ds["probability"].isel(choice=target)
        ds["mean"] = ds["target_probability"].mean("stimulus")
        ds["baseline_mean"] = ds["baseline_probability"].isel(choice=target).mean("stimulus")
        ds.attrs["target"] = str(labels[target] if labels else target)
    ds.attrs.update(include_bias=int(include_bias), lesion="weights set to 0" + (" (and biases)" if include_bias else ""),
                    image_path_modules=json.dumps(sorted(image_path)))
    if folder is not None:
        with atomic_path(Path(folder) / "weight_lesions.nc") as tmp:
            ds.to_netcdf(tmp)
    return ds


def _batched(readout: Any, outputs: torch.Tensor, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([readout(outputs[i:i + batch_size]).float().cpu().numpy()
                               for i in range(0, len(outputs), batch_size)])
