"""Re-run only what a lesion changes: cache the input of the lesioned block, run only the rest per condition.

For a model built as a sequence of blocks (an `nn.ModuleList` / `nn.Sequential` whose children run in order,
each once: ViT blocks, ResNet stages), a lesion inside block i leaves blocks 0..i-1 unchanged. `PrefixRunner`
runs the model once per stimulus batch up to block i (the forward is stopped there), keeps the block's input
(args and kwargs; in memory up to a byte budget, then on disk), and for each condition runs the model's own
forward again with blocks 0..i-1 made pass-through and block i's input replaced by the cached one, so only
block i onward and the head are computed (the cheap stem runs on zero images; its output is discarded).
The first time a container is used the cached path is checked against the full forward on the first batch;
a mismatch, a site outside any block sequence, or blocks that do not run in order fall back to the exact full
forward (`runner.fallback` says why).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from rig.errors import SiteError
from rig.lesions.source import StimulusSource

Readout = Callable[[torch.Tensor], torch.Tensor]
_MISSING = object()


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the block input is stored."""


def _passthrough(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


@dataclass(frozen=True)
class BlockSplit:
    """Where a site sits in a block sequence: `container` (module name, '' = model) and block `index`."""

    container: str
    index: int
    key: str  # the child's name inside the container

    @property
    def block(self) -> str:
        """Module name of the block holding the site."""
        return f"{self.container}.{self.key}" if self.container else self.key


def split_candidates(model: nn.Module, site: str) -> list[BlockSplit]:
    """Block sequences holding `site`, innermost first (only blocks after the first can save work)."""
    modules = dict(model.named_modules())
    if site not in modules:
        raise SiteError(f"no module named {site!r} in the subject; use a name from model.named_modules()")
    parts = site.split(".") if site else []
    out = []
    for j in range(len(parts) - 1, -1, -1):
        container = modules[".".join(parts[:j])]
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            keys = list(container._modules)
            out.append(BlockSplit(".".join(parts[:j]), keys.index(parts[j]), parts[j]))
    return out


def _to(obj: Any, device: torch.device | str, clone: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().to(device)
        return obj.clone() if clone else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device, clone) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device, clone) for k, v in obj.items()}
    return obj


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return 0


class PrefixRunner:
    """Runs the subject's image path on a stimulus source for many conditions, re-running only the suffix.

    `prepare(site)` caches the input of the block holding `site`; `run(readout, on_batch)` returns the
    readout `(N, K)` for the current state of the model (lesions are applied by the caller around `run`).
    Weight lesions may change only modules inside or after that block (`covers(name)` tells).
    """

    def __init__(
        self,
        subject: Any,
        stimuli: Any,
        batch_size: int = 32,
        max_cache_bytes: int = 2**30,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ):
        self.subject, self.model = subject, subject.model
        self.source = stimuli if isinstance(stimuli, StimulusSource) else StimulusSource(stimuli)
        self.batch_size, self.max_cache_bytes, self.use_cache = batch_size, max_cache_bytes, use_cache
        self._cache_root = cache_dir
        self._tmp: Path | None = None
        self.split: BlockSplit | None = None
        self.fallback: str | None = "not prepared"
        self._entries: list[tuple[np.ndarray, tuple, Any]] = []  # (indices, image shape, payload | path)
        self._verified: set[str] = set()
        self.device = torch.device(getattr(subject, "device", "cpu"))

    # -- public ---------------------------------------------------------------------------------------------
    def prepare(self, site: str | None) -> None:
        """Cache the input of the block holding `site` (None, or no usable block sequence: full forward)."""
        if not self.use_cache or site is None:
            self._set_fallback("cache disabled" if not self.use_cache else "no site")
            return
        if self.split is not None and self.covers(site) and self._split_for(site) == self.split:
            return
        reasons = []
        for split in split_candidates(self.model, site):
            if split.index == 0:
                continue
            reason = self._build(split)
            if reason is None:
                return
            reasons.append(reason)
        self._set_fallback("; ".join(reasons) or f"{site!r} is not in a later block of a block sequence")

    def covers(self, name: str) -> bool:
        """True if module `name` runs inside or after the cached block (a lesion there keeps the cache valid)."""
        if self.split is None:
            return True
        prefix = f"{self.split.container}." if self.split.container else ""
        if not name.startswith(prefix):
            return False
        keys = list(self._container(self.split)._modules)
        child = name[len(prefix):].split(".")[0]
        return child in keys and keys.index(child) >= self.split.index

    def run(self, readout: Readout, on_batch: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """Readout `(N, K)` float32 over all stimuli; `on_batch(indices)` is called before each batch."""
        outs: list[np.ndarray] = []
        with torch.no_grad():
            if self.split is None:
                for idx, images in self.source.batches(self.batch_size):
                    if on_batch:
                        on_batch(idx)
                    outs.append(self._readout(readout, self._forward(images)))
            else:
                for idx, shape, payload in self._entries:
                    if on_batch:
                        on_batch(idx)
                    outs.append(self._readout(readout, self._suffix_forward(shape, self._load(payload))))
        return np.concatenate(outs, axis=0)

    def close(self) -> None:
        """Drop the cache (and its folder on disk)."""
        self._entries = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "PrefixRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------------
    def _split_for(self, site: str) -> BlockSplit | None:
        for s in split_candidates(self.model, site):
            if self.split is not None and s.container == self.split.container:
                return s
        return None

    def _set_fallback(self, reason: str) -> None:
        self.close()
        self.split, self.fallback = None, reason

    def _container(self, split: BlockSplit) -> nn.Module:
        return self.model.get_submodule(split.container) if split.container else self.model

    def _forward(self, images: np.ndarray) -> torch.Tensor:
        out = self.subject.forward(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return out[0] if isinstance(out, (tuple, list)) else out

    @staticmethod
    def _readout(readout: Readout, output: torch.Tensor) -> np.ndarray:
        return readout(output).detach().float().cpu().numpy()

    @contextlib.contextmanager
    def _substituted(self, split: BlockSplit, cached: tuple[tuple, dict]) -> Iterator[None]:
        """Blocks before `split.index` pass through; block `split.index` receives the cached input."""
        container = self._container(split)
        before = [container._modules[k] for k in list(container._modules)[: split.index]]
        saved = [b.__dict__.get("forward", _MISSING) for b in before]
        handle = container._modules[split.key].register_forward_pre_hook(
            lambda m, a, k: (cached[0], cached[1]), with_kwargs=True
        )
        try:
            for b in before:
                b.forward = _passthrough
            yield
        finally:
            handle.remove()
            for b, s in zip(before, saved):
                if s is _MISSING:
                    b.__dict__.pop("forward", None)
                else:
                    b.forward = s

    def _suffix_forward(self, shape: tuple, cached: tuple[tuple, dict]) -> torch.Tensor:
        with self._substituted(self.split, cached):
            return self._forward(np.zeros(shape, np.float32))

    def _capture(self, images: np.ndarray, split: BlockSplit, order: list[int] | None = None,
                 full: list | None = None):
        """Input (args, kwargs) of block `split` for `images`; the forward stops there unless `full` is a list,
        which then receives the full forward's output (used to verify the cached path at no extra cost)."""
        container = self._container(split)
        keys = list(container._modules)
        store: dict[str, Any] = {}

        def grab(m: nn.Module, args: tuple, kwargs: dict):
            store["input"] = (_to(args, self.device, clone=True), _to(kwargs, self.device, clone=True))
            if full is None:
                raise _Stop

        handles = []
        if order is not None:  # registered first, so they run before `grab` stops the forward
            handles = [
                container._modules[k].register_forward_pre_hook(lambda m, a, i=i: order.append(i))
                for i, k in enumerate(keys)
            ]
        handles.append(container._modules[split.key].register_forward_pre_hook(grab, with_kwargs=True))
        try:
            with torch.no_grad():
                out = self._forward(images)
            if full is not None:
                full.append(out)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return store.get("input")

    def _build(self, split: BlockSplit) -> str | None:
        """Cache block inputs for `split` over all stimuli; returns None on success, else why not."""
        progressive = (
            self.split is not None and self.split.container == split.container and self.split.index < split.index
        )
        old_split, old_entries, old_tmp = self.split, self._entries, self._tmp
        self._entries, self._tmp, used = [], None, 0
        first_images, first_out = None, []
        verify = split.container not in self._verified
        try:
            for b, (idx, images) in enumerate(self.source.batches(self.batch_size)):
                order: list[int] | None = [] if (b == 0 and not progressive) else None
                if progressive:
                    _, shape, payload = old_entries[b]
                    with self._substituted(old_split, self._load(payload)):
                        cached = self._capture(np.zeros(shape, np.float32), split)
                else:
                    cached = self._capture(images, split, order, first_out if (b == 0 and verify) else None)
                reason = None
                if cached is None:
                    reason = "the block did not run"
                elif order is not None and (order != list(range(len(order))) or len(order) <= split.index):
                    reason = f"blocks of {split.container!r} ran in order {order}, not in sequence"
                if reason is not None:
                    self._set_fallback(reason)
                    return reason
                if b == 0:
                    first_images = images
                used += _nbytes(cached)
                self._entries.append((np.asarray(idx), tuple(images.shape), self._store(cached, used, b)))
        finally:
            if old_tmp is not None and old_tmp != self._tmp:
                shutil.rmtree(old_tmp, ignore_errors=True)
        self.split, self.fallback = split, None
        if split.container not in self._verified:
            with torch.no_grad():
                full = first_out[0] if first_out else self._forward(first_images)
                part = self._suffix_forward(tuple(first_images.shape), self._load(self._entries[0][2]))
            if full.shape != part.shape or not torch.allclose(full, part, rtol=1e-4, atol=1e-5):
                self._set_fallback(f"cached suffix of {split.container!r} differs from the full forward")
                return self.fallback
            self._verified.add(split.container)
        return None

    def _store(self, cached: tuple, used: int, b: int) -> Any:
        if used <= self.max_cache_bytes:
            return cached
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="rig-prefix-", dir=self._cache_root))
        path = self._tmp / f"batch{b:06d}.pt"
        torch.save(_to(cached, "cpu"), path)
        return path

    def _load(self, payload: Any) -> tuple[tuple, dict]:
        if isinstance(payload, Path):
            return _to(torch.load(payload, weights_only=True), self.device)
        return payload
