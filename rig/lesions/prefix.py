"""Re-run only what a lesion changes: cache the input of the lesioned block, run only the rest per condition.

For a model built as a sequence of blocks (an `nn.ModuleList` / `nn.Sequential` whose children run in order,
each once: ViT blocks, ResNet stages; or any module whose children are seen to run so, such as a torchvision
ResNet whose stages are children of the model), a lesion inside block i leaves blocks 0..i-1 unchanged. `PrefixRunner`
runs the model once per stimulus batch up to block i (the forward is stopped there), keeps the block's input
(args and kwargs; in memory up to a byte budget, then on disk), and for each condition runs the model's own
forward again with blocks 0..i-1 made pass-through and block i's input replaced by the cached one, so only
block i onward and the head are computed. The model still needs *some* input: it gets zero images, and
every module that runs before the first block (the stem: patch embedding, ln_pre, earlier ResNet stages) returns
its output for zero images, computed once per batch shape (`_StemMemo`), so the stem costs nothing per condition.
For an open_clip ViT whose image output is the CLS token (`pool_type='tok'`, no `attn_pool`, no token output),
the last block computes attention with the CLS query only and its MLP on CLS only (`cls_only_forward`).
`prepare(site, replay=True)` (unit lesions, which only mask the site's output) also caches the site's own output
and replays it in every suffix forward, so the site's computation is skipped too (at resblock 9's attention of
ViT-B/32: 1.20x less CPU per condition, `bench/lesion_grid.py`), for twice the cache.
The first time a container is used the cached path is checked against the full forward on the first batch
(CLS-only path first, then without it); a mismatch, a site outside any block sequence, or blocks that do not run
in order fall back to the exact full forward (`runner.fallback` says why).
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

from rig.errors import RigError, SiteError
from rig.lesions.source import StimulusSource

Readout = Callable[[torch.Tensor], torch.Tensor]
_MISSING = object()


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the block input is stored."""


def _passthrough(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


def cls_only_forward(model: nn.Module, split: "BlockSplit") -> tuple[nn.Module, Callable] | None:
    """For an open_clip ViT whose pooled output is token 0, the last block computing only token 0.

    Returns `(last_block, forward)`, where `forward(q_x, attn_mask=None)` equals the block's forward restricted
    to token 0 (`(B, 1, D)`: keys/values from all tokens, query, residuals and MLP on CLS only; submodule hooks
    still fire, on CLS-only outputs after `ln_1`); None when the model is not such a ViT (other pooling,
    `attn_pool`, token outputs, non-batch-first, or a custom block type).
    """
    try:
        from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    parts = split.container.split(".")
    if len(parts) < 2 or parts[-1] != "resblocks":
        return None
    modules = dict(model.named_modules())
    transformer, vit = modules.get(".".join(parts[:-1])), modules.get(".".join(parts[:-2]))
    if not (isinstance(transformer, Transformer) and isinstance(vit, VisionTransformer)):
        return None
    if (getattr(vit, "attn_pool", None) is not None or getattr(vit, "pool_type", None) != "tok"
            or getattr(vit, "output_tokens", True) or not getattr(transformer, "batch_first", False)
            or transformer.grad_checkpointing):
        return None
    block = transformer.resblocks[-1]
    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return None
    original = block.forward

    def forward(q_x: torch.Tensor, k_x: Any = None, v_x: Any = None, attn_mask: Any = None) -> torch.Tensor:
        if k_x is not None or v_x is not None or attn_mask is not None:
            return original(q_x, k_x, v_x, attn_mask)
        y = block.ln_1(q_x)
        x = q_x[:, :1] + block.ls_1(block.attn(y[:, :1], y, y, need_weights=False)[0])
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    return block, forward


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
    """Where `site` could be split off: the block sequences (`nn.ModuleList` / `nn.Sequential`) holding it,
    innermost first, then the other modules holding it (e.g. a torchvision ResNet, whose stages are children of
    the model), innermost first. Only blocks after the first can save work; any split is used only when its
    children are seen to run once each in order and the cached path matches the full forward."""
    modules = dict(model.named_modules())
    if site not in modules:
        raise SiteError(f"no module named {site!r} in the subject; use a name from model.named_modules()")
    parts = site.split(".") if site else []
    sequences, others = [], []
    for j in range(len(parts) - 1, -1, -1):
        container = modules[".".join(parts[:j])]
        split = BlockSplit(".".join(parts[:j]), list(container._modules).index(parts[j]), parts[j])
        (sequences if isinstance(container, (nn.ModuleList, nn.Sequential)) else others).append(split)
    return sequences + others


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
        self._verified: dict[str, tuple[nn.Module, Callable] | None] = {}  # container -> its CLS-only path
        self._stem: dict[tuple, dict[str, Any]] = {}  # image shape -> {stem module: its output for zero images}
        self._inputs: dict[tuple, torch.Tensor] = {}  # image shape -> preprocessed zero images
        self._cls: tuple[nn.Module, Callable] | None = None  # CLS-only last block, when verified
        self.replay: str | None = None  # the site whose cached output suffix forwards replay
        self._axes: Any = None  # batch axis of every tensor of a cache entry (`_batch_axes`)
        self.device = torch.device(getattr(subject, "device", "cpu"))

    # -- public ---------------------------------------------------------------------------------------------
    def prepare(self, site: str | None, replay: bool = False) -> None:
        """Cache the input of the block holding `site` (None, or no usable block sequence: full forward).

        `replay`: also cache `site`'s output and return it from the site in every suffix forward (its forward
        hooks still run, so a lesion that masks that output is applied; one that changes the site's weights or
        input is not: `covers(site)` is then False)."""
        if not self.use_cache or site is None:
            self._set_fallback("cache disabled" if not self.use_cache else "no site")
            return
        wanted = site if replay else None
        if (self.split is not None and self.replay == wanted and (replay or self.covers(site))
                and self._split_for(site) == self.split):
            return
        reasons = []
        for split in split_candidates(self.model, site):
            if split.index == 0:
                continue
            for r in dict.fromkeys([wanted, None]):  # without the replay if it does not match the full forward
                reason = self._build(split, r)
                if reason is None:
                    return
                reasons.append(reason + (" (site replayed)" if r else ""))
        self._set_fallback("; ".join(reasons) or f"{site!r} is not in a later block of a block sequence")

    def covers(self, name: str) -> bool:
        """True if module `name` runs inside or after the cached block (a lesion there keeps the cache valid)."""
        if self.split is None:
            return True
        if self.replay is not None and (name == self.replay or name.startswith(self.replay + ".")):
            return False
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
            for idx, images, shape, payload in self._stimulus_batches():
                if on_batch:
                    on_batch(idx)
                outs.append(self._readout(readout, self._batch_forward(images, shape, payload)))
        return np.concatenate(outs, axis=0)

    def run_conditions(self, readout: Readout, n_conditions: int,
                       set_masks: Callable[[np.ndarray, np.ndarray], None], per_forward: int = 1,
                       done: Callable[[np.ndarray], np.ndarray | None] | None = None,
                       keep: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        """Many conditions batched per stimulus: each batch of B stimuli (its cache entry loaded once) runs
        with up to `per_forward` conditions tiled into one forward of (conditions x B) rows, condition-major
        (row j: condition `conds[j // B]`, stimulus `idx[j % B]`); `set_masks(conds, idx)` is called before each
        forward. `done(idx)` returns the stored `(C, B, K)` readout of a stimulus batch finished earlier (or None:
        run it); `keep(idx, out)` receives each batch's `(C, B, K)` readout when it is computed."""
        conds_all = np.arange(n_conditions)
        per_forward = max(per_forward, 1) if self.source.n > 1 else 1
        with torch.no_grad():
            for idx, images, shape, payload in self._stimulus_batches():
                if done is not None and done(idx) is not None:
                    continue
                cached = None if payload is None else self._load(payload)  # read once for all conditions
                parts = []
                for c0 in range(0, n_conditions, per_forward):
                    conds = conds_all[c0:c0 + per_forward]
                    set_masks(conds, idx)
                    out = self._batch_forward(images, shape, cached, len(conds))
                    parts.append(self._readout(readout, out).reshape(len(conds), len(idx), -1))
                if keep is not None:
                    keep(idx, np.concatenate(parts))

    def probe(self, n: int = 1) -> None:
        """One full forward of the first `n` stimuli (no grad), for hooks the caller registered around it."""
        _, images = next(iter(self.source.batches(n)))
        with torch.no_grad():
            self._forward(images[:n])

    @property
    def cls_only(self) -> bool:
        """True when the last block computes only the CLS token (verified against the full forward)."""
        return self.split is not None and self._cls is not None

    @property
    def stem(self) -> list[str]:
        """Modules replayed from their zero-image outputs in suffix forwards (empty before the first run)."""
        return sorted({n for outs in self._stem.values() for n in outs})

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
    def _stimulus_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray | None, tuple, Any]]:
        """(indices, images or None, image shape, cache payload or None) per stimulus batch."""
        if self.split is None:
            for idx, images in self.source.batches(self.batch_size):
                yield np.asarray(idx), images, tuple(images.shape), None
        else:
            for idx, shape, payload in self._entries:
                yield idx, None, shape, payload

    def _batch_forward(self, images: np.ndarray | None, shape: tuple, cached: Any, copies: int = 1) -> torch.Tensor:
        """The model's output for one stimulus batch repeated `copies` times (condition-major): the full forward
        of its images, or the suffix forward of its cache entry (`cached`: a payload or a loaded entry)."""
        if self.split is None:
            return self._forward(images if copies == 1 else np.concatenate([images] * copies))
        entry = self._tile(self._load(cached), copies)
        return self._suffix_forward((copies * shape[0],) + tuple(shape[1:]), entry)

    def _batch_axes(self) -> Any:
        """The batch axis of every tensor in a cache entry (None: not batched, e.g. a mask), from the cached
        structures of one and of two stimuli (the axis that grows)."""
        if self._axes is None:
            _, images = next(iter(self.source.batches(2)))
            if len(images) < 2:
                raise RigError("tiling a cache entry needs the batch axis, seen with at least 2 stimuli")
            one, two = (self._capture(images[:n], self.split, replay=self.replay) for n in (1, 2))

            def axis(a: Any, b: Any) -> Any:
                if isinstance(a, torch.Tensor):
                    moving = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
                    return moving[0] if moving else None
                if isinstance(a, (tuple, list)):
                    return type(a)(axis(x, y) for x, y in zip(a, b))
                if isinstance(a, dict):
                    return {k: axis(a[k], b[k]) for k in a}
                return None

            self._axes = axis(one, two)
        return self._axes

    def _tile(self, cached: Any, n: int) -> Any:
        """The cache entry repeated `n` times along each tensor's batch axis (condition-major)."""
        if n == 1:
            return cached

        def tile(obj: Any, ax: Any) -> Any:
            if isinstance(obj, torch.Tensor):
                return obj if ax is None else torch.cat([obj] * n, dim=ax)
            if isinstance(obj, (tuple, list)):
                return type(obj)(tile(o, a) for o, a in zip(obj, ax))
            if isinstance(obj, dict):
                return {k: tile(v, ax[k]) for k, v in obj.items()}
            return obj

        return tile(cached, self._batch_axes())

    def _split_for(self, site: str) -> BlockSplit | None:
        for s in split_candidates(self.model, site):
            if self.split is not None and s.container == self.split.container:
                return s
        return None

    def _set_fallback(self, reason: str) -> None:
        self.close()
        self.split, self.fallback, self._cls, self.replay, self._axes = None, reason, None, None, None
        self._stem, self._inputs = {}, {}

    def _container(self, split: BlockSplit) -> nn.Module:
        return self.model.get_submodule(split.container) if split.container else self.model

    def _forward(self, images: np.ndarray) -> torch.Tensor:
        out = self.subject.forward(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return out[0] if isinstance(out, (tuple, list)) else out

    @staticmethod
    def _readout(readout: Readout, output: torch.Tensor) -> np.ndarray:
        return readout(output).detach().float().cpu().numpy()

    @contextlib.contextmanager
    def _substituted(self, split: BlockSplit, cached: tuple[tuple, dict], stem: dict[str, Any] | None = None,
                     cls_only: bool = False) -> Iterator[None]:
        """Blocks before `split.index` pass through; block `split.index` receives the cached input (and the
        replayed site returns its cached output, when `cached` holds one); the `stem` modules return their stored
        outputs; with `cls_only`, the last block computes token 0 only."""
        container = self._container(split)
        patches: list[tuple[nn.Module, Callable]] = [
            (container._modules[k], _passthrough) for k in list(container._modules)[: split.index]
        ]
        if len(cached) > 2 and self.replay is not None:
            patches.append((self.model.get_submodule(self.replay),
                            lambda *a, _o=cached[2], **k: _to(_o, self.device, True)))
        for name, out in (stem or {}).items():
            patches.append((self.model.get_submodule(name), lambda *a, _o=out, **k: _to(_o, self.device, True)))
        if cls_only and self._cls is not None:
            patches.append(self._cls)
        saved = [m.__dict__.get("forward", _MISSING) for m, _ in patches]
        handle = container._modules[split.key].register_forward_pre_hook(
            lambda m, a, k: (cached[0], cached[1]), with_kwargs=True
        )
        try:
            for m, f in patches:
                m.forward = f
            yield
        finally:
            handle.remove()
            for (m, _), s in zip(reversed(patches), reversed(saved)):
                if s is _MISSING:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = s

    def _zero_forward(self, shape: tuple) -> torch.Tensor:
        """The subject's image path on zero images of `shape` (preprocessing done once per shape)."""
        from rig.subjects import Subject

        if not (isinstance(self.subject, Subject) and type(self.subject).forward is Subject.forward):
            return self._forward(np.zeros(shape, np.float32))
        if shape not in self._inputs:
            with torch.no_grad():
                self._inputs[shape] = self.subject.preprocess(torch.zeros(shape, device=self.device))
        with torch.no_grad():
            out = self.subject.encode_image(self._inputs[shape])
        return out[0] if isinstance(out, (tuple, list)) else out

    def _stem_outputs(self, split: BlockSplit, shape: tuple) -> dict[str, Any]:
        """Outputs, for zero images of `shape`, of the outermost modules that run once before the container's
        first block (and are not its ancestors): they do not depend on the cached input, so they are computed
        once and replayed in every suffix forward."""
        if shape in self._stem:
            return self._stem[shape]
        container = self._container(split)
        skip = {n for n, _ in container.named_modules(prefix=split.container)}
        parts = split.container.split(".") if split.container else []
        skip |= {".".join(parts[:j]) for j in range(len(parts))}
        calls: dict[str, list] = {}

        def record(name: str):
            return lambda m, a, out: calls.setdefault(name, []).append(_to(out, self.device, clone=True))

        def stop(m: nn.Module, a: tuple) -> None:
            raise _Stop

        handles = [m.register_forward_hook(record(n)) for n, m in self.model.named_modules() if n not in skip]
        handles.append(next(iter(container._modules.values())).register_forward_pre_hook(stop))
        stopped = False
        try:
            self._zero_forward(shape)
        except _Stop:
            stopped = True
        finally:
            for h in handles:
                h.remove()
        once = {n for n, outs in calls.items() if len(outs) == 1} if stopped else set()
        outer = {n for n in once if not any(n.startswith(o + ".") for o in once)}
        self._stem[shape] = {n: calls[n][0] for n in outer}
        return self._stem[shape]

    def _suffix_forward(self, shape: tuple, cached: tuple[tuple, dict]) -> torch.Tensor:
        stem = self._stem_outputs(self.split, shape)
        with self._substituted(self.split, cached, stem, cls_only=True):
            return self._zero_forward(shape)

    def _capture(self, images: np.ndarray, split: BlockSplit, order: list[int] | None = None,
                 full: list | None = None, replay: str | None = None):
        """Input (args, kwargs) of block `split` for `images`, plus the output of the site `replay` when given
        (args, kwargs, output); the forward stops there unless `full` is a list, which then receives the full
        forward's output (used to verify the cached path at no extra cost)."""
        container = self._container(split)
        keys = list(container._modules)
        store: dict[str, Any] = {}

        def grab(m: nn.Module, args: tuple, kwargs: dict):
            store["input"] = (_to(args, self.device, clone=True), _to(kwargs, self.device, clone=True))
            if full is None and replay is None:
                raise _Stop

        def grab_site(m: nn.Module, args: tuple, out: Any):  # before any lesion hook on the site (prepend)
            if "input" in store and "site" not in store:
                store["site"] = _to(out, self.device, clone=True)
                if full is None:
                    raise _Stop

        handles = []
        if order is not None:  # registered first, so they run before `grab` stops the forward
            handles = [
                container._modules[k].register_forward_pre_hook(lambda m, a, i=i: order.append(i))
                for i, k in enumerate(keys)
            ]
        handles.append(container._modules[split.key].register_forward_pre_hook(grab, with_kwargs=True))
        if replay is not None:
            handles.append(self.model.get_submodule(replay).register_forward_hook(grab_site, prepend=True))
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
        if replay is not None:
            return store["input"] + (store["site"],) if "site" in store else None
        return store.get("input")

    def _build(self, split: BlockSplit, replay: str | None = None) -> str | None:
        """Cache block inputs for `split` (and the outputs of site `replay`) over all stimuli; returns None on
        success, else why not."""
        progressive = (
            self.split is not None and self.split.container == split.container and self.split.index < split.index
            and self.replay is None and replay is None
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
                    with self._substituted(old_split, self._load(payload), self._stem_outputs(old_split, shape)):
                        cached = self._capture(np.zeros(shape, np.float32), split)
                else:
                    cached = self._capture(images, split, order, first_out if (b == 0 and verify) else None,
                                           replay)
                reason = None
                if cached is None:
                    reason = "the block (or the replayed site) did not run"
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
        if self.split is None or self.split.container != split.container:
            self._stem, self._inputs = {}, {}
        self.split, self.fallback, self.replay, self._axes = split, None, replay, None
        if split.container in self._verified and replay is None:
            self._cls = self._verified[split.container]
            return None
        with torch.no_grad():
            full = first_out[0] if first_out else self._forward(first_images)
        cls_only = cls_only_forward(self.model, split)
        for self._cls in ([cls_only] if cls_only else []) + [None]:
            try:
                with torch.no_grad():
                    part = self._suffix_forward(tuple(first_images.shape), self._load(self._entries[0][2]))
            except Exception:  # noqa: BLE001 - a container whose forward needs its earlier children's real outputs
                continue
            if full.shape == part.shape and torch.allclose(full, part, rtol=1e-4, atol=1e-5):
                self._verified[split.container] = self._cls
                return None
        self._set_fallback(f"cached suffix of {split.container!r} differs from the full forward")
        return self.fallback

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
