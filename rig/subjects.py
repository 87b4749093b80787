"""Subjects: the network under study, built from open_clip, timm, torchvision or a user's factory.

`load_subject(source, arch, weights, seed, device, factory) -> Subject`. Sources are a registry (`sources`,
name -> `Source`) that other modules and installed packages extend with `register_source` (plugins: entry
point group `rig.sources`); a protocol's `[subject] source` is checked against it.

Weights: `"random"` builds the library's own initialisation under a forked, seeded torch RNG (no global RNG
state leaks; same seed -> identical parameters). A library tag loads through the library (offline: a
`SubjectError` names where it looked and how to pass a local file). A path ending in `.pt/.pth/.bin/
.safetensors` is a local checkpoint (plain state dict, or a dict with `state_dict` / `model`), loaded strictly
into the randomly built `arch` (for OpenAI CLIP weights use the `-quickgelu` arch, e.g. `ViT-B-32-quickgelu`,
as open_clip's `"openai"` tag does).
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import inspect
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from stimuli.registry import did_you_mean

from .errors import SubjectError
from .sources import SOURCES, Source, is_source, list_sources, register_source, sources  # noqa: F401
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TensorPreprocess

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
DEFAULT_INPUT_SIZE = 224
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class Subject:
    """A network ready to record: `model` in eval mode on `device`, with its own input transform.

    `preprocess(images01)` maps float `(B, 3, H, W)` in [0, 1] to model input; `encode_image(x)` is the image
    path (CLIP: image embedding `(B, D)`, classifier: logits `(B, C)`, factory: the module output `(B, ...)`);
    `forward(images01)` is both under `torch.no_grad()`. CLIP subjects also have `encode_text` and
    `logit_scale`; classifiers may have `class_names`.
    """

    model: nn.Module
    device: torch.device
    input_size: int
    name: str
    source: str
    arch: str | None
    weights: str
    seed: int
    transform: Callable[[torch.Tensor], torch.Tensor]
    image_encoder: Callable[[torch.Tensor], Any]
    class_names: list[str] | None = None
    logit_scale: float | None = None
    tokenizer: Callable[[list[str]], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def has_text(self) -> bool:
        """True for subjects with a text tower (CLIP)."""
        return self.tokenizer is not None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float `(B, 3, H, W)` in [0, 1] on `device` -> model input (resize, centre crop, normalise)."""
        return self.transform(images)

    def encode_image(self, x: torch.Tensor) -> Any:
        """The model's image path on preprocessed input `x`."""
        return self.image_encoder(x)

    def forward(self, images: torch.Tensor | np.ndarray) -> Any:
        """`encode_image(preprocess(images))` under `no_grad`; `images` float `(B, 3, H, W)` in [0, 1]."""
        x = torch.as_tensor(images)
        if not x.is_floating_point():
            raise SubjectError(f"{self.name}: images must be floats in [0, 1], got {x.dtype}; divide uint8 images "
                               "by 255")
        x = x.to(self.device, torch.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise SubjectError(f"{self.name}: images must be (B, 3, H, W) floats in [0, 1], got shape "
                               f"{tuple(x.shape)}")
        with torch.no_grad():
            return self.encode_image(self.preprocess(x))

    __call__ = forward

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings `(K, D)` of `prompts` (CLIP subjects only)."""
        if self.tokenizer is None:
            raise SubjectError(f"{self.name} has no text tower; text prompts need a CLIP subject "
                               "(source = \"open_clip\")")
        tokens = self.tokenizer(list(prompts)).to(self.device)
        with torch.no_grad():
            emb = self.model.encode_text(tokens).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    def weights_hash(self) -> str:
        """sha256 (hex) over the model's state dict (names, dtypes, shapes, bytes), for provenance."""
        return weights_hash(self.model)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for provenance and reports)."""
        return {"name": self.name, "source": self.source, "arch": self.arch, "weights": self.weights,
                "seed": self.seed, "device": str(self.device), "input_size": self.input_size,
                "n_parameters": int(sum(p.numel() for p in self.model.parameters())),
                "preprocess": getattr(self.transform, "describe", lambda: repr(self.transform))(),
                "has_text": self.has_text, "logit_scale": self.logit_scale,
                "n_classes": None if self.class_names is None else len(self.class_names)}


def weights_hash(model: nn.Module, sample: int | None = None) -> str:
    """sha256 (hex) over `model.state_dict()`: every tensor's name, dtype, shape and bytes, in order.

    The one weights hash of the rig (provenance, recording settings, exact-restoration checks of lesions).
    With `sample`, only the first `sample` values of each tensor are hashed: a cheap fingerprint (no copy of a
    large model) that still tells other weights apart, for checks that run often.
    """
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().reshape(-1)  # 1-D: a 0-dim tensor cannot be viewed as bytes
        t = (t[:sample] if sample is not None else t).to("cpu").contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass(frozen=True)
class SubjectRequest:
    """What `load_subject` was asked for, handed to a source's builder."""

    source: str
    arch: str | None
    weights: str
    seed: int
    device: torch.device
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the library / factory builder

    @property
    def checkpoint(self) -> Path | None:
        """The local checkpoint path when `weights` names one, else `None`."""
        return _checkpoint_path(self.weights)

    @property
    def random(self) -> bool:
        return self.weights == "random"


Builder = Callable[[SubjectRequest], Subject]


def load_subject(source: str, arch: str | None = None, weights: str = "random", seed: int = 0,
                 device: str | torch.device = "auto", factory: str | None = None,
                 options: Mapping[str, Any] | None = None,
                 saliency_channels: Mapping[str, Any] | None = None) -> Subject:
    """Build a subject. `source`: `open_clip | timm | torchvision | factory | phantom` (or registered).

    `arch`: the library's model name (`ViT-B-32`, `RN50`, `resnet18`, ...); `weights`: `"random"`, a library
    tag (`"openai"`, `"pretrained"`, `"IMAGENET1K_V1"`, ...) or a local checkpoint path; `factory`:
    `"package.module:callable"` for `source="factory"`; `options`: keyword arguments passed on to the builder
    (`timm.create_model`, `torchvision.models.get_model`, `open_clip.create_model_and_transforms`, or the
    factory), e.g. `{"num_classes": 10}` or `{"force_quick_gelu": True}`; `saliency_channels`: `{model, sigma,
    channels}` appends saliency channels to the input (`rig.saliency_input`). Raises `SubjectError` with what to do.
    """
    if source not in sources:
        raise SubjectError(f"unknown subject source {source!r}{did_you_mean(str(source), list(sources))}; use one "
                           f"of {', '.join(sources)}", key="source")
    entry = sources.lookup(source)
    if entry.needs_arch and not arch:
        raise SubjectError(f"source = {source!r} needs an arch (a model name, e.g. \"resnet18\")")
    if source == "factory" and not factory:
        raise SubjectError("source = \"factory\" needs factory = \"package.module:callable\"", key="factory")
    request = SubjectRequest(source, arch, str(weights), int(seed), resolve_device(device), factory, dict(options or {}))
    subject = entry.builder()(request)
    if saliency_channels is not None:
        from .saliency_input import add_saliency_channels

        subject = add_saliency_channels(subject, **saliency_channels)
    return subject


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` -> CUDA when available, else CPU; otherwise the named device (checked to exist)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SubjectError(f"unknown device {device!r}; use \"auto\", \"cpu\" or \"cuda\"", key="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SubjectError(f"device {device!r} asked for but CUDA is not available; use device = \"auto\" or "
                           "\"cpu\"", key="device")
    return dev


# ----------------------------------------------------------------------------------------------------------
# shared helpers


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the torch CPU RNG seeded to `seed`, restoring the global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library logging during a build ("initialised randomly", hub retries, download errors: failures are
    raised as `SubjectError` instead)."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _checkpoint_path(weights: str) -> Path | None:
    looks_like_path = weights.lower().endswith(CHECKPOINT_SUFFIXES) or os.sep in weights or weights.startswith(".")
    if not looks_like_path:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise SubjectError(f"checkpoint {weights!r} not found; give the path of a .pt/.pth/.bin/.safetensors file",
                           key="weights")
    return path


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict into `model` strictly (plain dict, or under `state_dict` / `model`)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch
            state = safetensors.torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling of non-tensor objects, corrupt file
        raise SubjectError(f"cannot read checkpoint {str(path)!r} ({type(e).__name__}: {_first_line(str(e), 160)}); "
                           "save it with torch.save(model.state_dict(), path)", key="weights") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SubjectError(f"checkpoint {str(path)!r} is not a state dict of tensors; save it with "
                           "torch.save(model.state_dict(), path)", key="weights")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        raise SubjectError(f"checkpoint {str(path)!r} does not fit the model: {'; '.join(parts)}; check arch "
                           "and that the file holds this model's state_dict", key="weights")
    model.load_state_dict(state, strict=True)


def _arch(req: SubjectRequest) -> str:
    if not req.arch:
        raise SubjectError(f"source = {req.source!r} needs an arch (a model name, e.g. \"resnet18\")")
    return str(req.arch)


def _unknown_arch(source: str, arch: str, names: Sequence[str]) -> SubjectError:
    close = difflib.get_close_matches(arch, list(names), n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"see the {source} model list"
    return SubjectError(f"unknown {source} arch {arch!r}; {hint}")


def _bad_options(label: str, req: SubjectRequest, error: TypeError) -> SubjectError:
    if not req.options:
        return SubjectError(f"cannot build {label}: TypeError: {_first_line(str(error), 200)}")
    return SubjectError(f"{label} does not accept the options {sorted(req.options)} "
                        f"({_first_line(str(error), 200)}); fix [subject] options")


def _hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _reachable(host: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_guard() -> Iterator[None]:
    """Make Hugging Face hub downloads fail fast when the hub cannot be reached (cache-only mode).

    Without this, an offline `hf_hub_download` retries for ~45 s before failing.
    """
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    if constants.HF_HUB_OFFLINE or _reachable(_hub_host()):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants
        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"


def _first_line(text: str, limit: int) -> str:
    """First line of `text`, cut at a word boundary to at most `limit` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _weights_unavailable(label: str, tag: str, where: str, error: BaseException) -> SubjectError:
    text = str(error)
    offline = ("local cache" in text or "Name or service not known" in text or "urlopen error" in text
               or type(error).__name__ in ("LocalEntryNotFoundError", "URLError", "OfflineModeIsEnabled"))
    if offline:
        reason = "not downloaded yet and the server cannot be reached (offline?)"
    else:
        reason = _first_line(text, 160) or type(error).__name__
    return SubjectError(
        f"cannot load weights {tag!r} for {label}: {reason} (looked for {where}); download them once online, "
        f"or set weights = \"/path/to/file.pt\" in the protocol's [subject] to use a local state dict",
        key="weights")


def _finish(req: SubjectRequest, model: nn.Module, transform: Callable, encoder: Callable[[nn.Module], Callable],
            input_size: int, name: str, **extra: Any) -> Subject:
    """Checkpoint (if any), eval mode, frozen parameters, device; wrap into a `Subject`."""
    if req.checkpoint is not None:
        load_checkpoint(model, req.checkpoint)
    model = model.to(req.device).eval()
    model.requires_grad_(False)
    weights = req.checkpoint.name if req.checkpoint is not None else req.weights
    return Subject(model=model, device=req.device, input_size=int(input_size), name=f"{name}:{weights}",
                   source=req.source, arch=req.arch, weights=req.weights, seed=req.seed, transform=transform,
                   image_encoder=encoder(model), **extra)


# ----------------------------------------------------------------------------------------------------------
# open_clip


def build_open_clip(req: SubjectRequest) -> Subject:
    import open_clip

    arch = _arch(req)
    if arch not in open_clip.list_models():
        raise _unknown_arch("open_clip", arch, open_clip.list_models())
    tag = None if (req.random or req.checkpoint is not None) else req.weights
    if tag is not None and tag not in open_clip.list_pretrained_tags_by_model(arch):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise SubjectError(f"open_clip {arch} has no pretrained tag {tag!r}; use one of {', '.join(tags) or '(none)'}"
                           ", \"random\", or a checkpoint path", key="weights")
    try:
        with seeded(req.seed), _quiet(), _hub_guard():
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=tag, **req.options)
    except TypeError as e:
        raise _bad_options(f"open_clip {arch}", req, e) from None
    except Exception as e:  # hub / URL failures, offline
        if tag is None:
            raise SubjectError(f"cannot build open_clip {arch}: {_first_line(str(e), 200)}") from None
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        where = (f"Hugging Face hub repo {cfg['hf_hub'].rstrip('/')} in {_hf_cache_dir()}" if cfg.get("hf_hub")
                 else f"{cfg.get('url')} in {os.path.expanduser('~/.cache/clip')}")
        raise _weights_unavailable(f"open_clip {arch}", tag, where, e) from None
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:  # HF tokenizers need a download
        raise SubjectError(f"cannot load the text tokenizer of open_clip {arch}: {_first_line(str(e), 160)}; "
                           "it must be in the Hugging Face cache") from None
    preprocess = TensorPreprocess.from_library(transform)
    return _finish(req, model, preprocess, lambda m: m.encode_image, preprocess.output_size or DEFAULT_INPUT_SIZE,
                   f"open_clip:{arch}", tokenizer=tokenizer, logit_scale=float(model.logit_scale.exp().item()))


# ----------------------------------------------------------------------------------------------------------
# timm


def build_timm(req: SubjectRequest) -> Subject:
    import timm
    from timm.data import ImageNetInfo, create_transform, infer_imagenet_subset, resolve_data_config

    arch = _arch(req)
    base = arch.split(".")[0]
    if not timm.is_model(base):
        raise _unknown_arch("timm", base, timm.list_models())
    pretrained = not (req.random or req.checkpoint is not None)
    name = arch
    if pretrained and req.weights != "pretrained":
        name = f"{base}.{req.weights}"
        if name not in timm.list_pretrained(f"{base}.*"):
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")]
            raise SubjectError(f"timm {base} has no pretrained tag {req.weights!r}; use \"pretrained\" or one of "
                               f"{', '.join(tags[:8]) or '(none)'}, \"random\", or a checkpoint path", key="weights")
    try:
        with seeded(req.seed), _quiet(), _hub_guard():
            model = timm.create_model(name, pretrained=pretrained, **req.options)
    except TypeError as e:
        raise _bad_options(f"timm {arch}", req, e) from None
    except Exception as e:
        if not pretrained:
            raise SubjectError(f"cannot build timm {arch}: {_first_line(str(e), 200)}") from None
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        where = (f"Hugging Face hub repo {hub_id} in {_hf_cache_dir()}" if hub_id
                 else f"{getattr(cfg, 'url', '?')} in {torch.hub.get_dir()}")
        raise _weights_unavailable(f"timm {arch}", req.weights, where, e) from None
    config = resolve_data_config({}, model=model)
    preprocess = TensorPreprocess.from_library(create_transform(**config, is_training=False))
    subset = infer_imagenet_subset(model)
    class_names = None
    if subset is not None and getattr(model, "num_classes", 0):
        info = ImageNetInfo(subset)
        if info.num_classes() == model.num_classes:
            class_names = [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]
    return _finish(req, model, preprocess, lambda m: m, int(config["input_size"][-1]), f"timm:{arch}",
                   class_names=class_names)


# ----------------------------------------------------------------------------------------------------------
# torchvision


def build_torchvision(req: SubjectRequest) -> Subject:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    arch = _arch(req).lower()
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        raise _unknown_arch("torchvision", str(req.arch), names)
    enum = get_model_weights(arch)
    weights = None
    if not (req.random or req.checkpoint is not None):
        tag = req.weights.split(".")[-1]
        try:
            weights = enum[tag] if tag != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise SubjectError(f"torchvision {arch} has no weights {req.weights!r}; use one of DEFAULT, "
                               f"{', '.join(w.name for w in enum)}, \"random\", or a checkpoint path",
                               key="weights") from None
    try:
        with seeded(req.seed), _quiet():
            model = get_model(arch, weights=weights, **req.options)
    except TypeError as e:
        raise _bad_options(f"torchvision {arch}", req, e) from None
    except Exception as e:  # URLError offline, hash mismatch
        if weights is None:
            raise SubjectError(f"cannot build torchvision {arch}: {_first_line(str(e), 200)}") from None
        where = f"{weights.url} in {os.path.join(torch.hub.get_dir(), 'checkpoints')}"
        raise _weights_unavailable(f"torchvision {arch}", req.weights, where, e) from None
    reference = weights if weights is not None else enum.DEFAULT
    categories = list(reference.meta.get("categories") or []) or None
    if weights is not None:
        preprocess = TensorPreprocess.from_library(weights.transforms())
    else:
        size = int(getattr(model, "image_size", DEFAULT_INPUT_SIZE))
        preprocess = TensorPreprocess(resize=round(size * 256 / 224), crop=(size, size), mean=IMAGENET_MEAN,
                                      std=IMAGENET_STD, interpolation="bilinear")
    n_out = _n_outputs(model)
    class_names = categories if categories is not None and len(categories) == n_out else None
    return _finish(req, model, preprocess, lambda m: m, preprocess.output_size or DEFAULT_INPUT_SIZE,
                   f"torchvision:{arch}", class_names=class_names)


def _n_outputs(model: nn.Module) -> int | None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


# ----------------------------------------------------------------------------------------------------------
# factory


def build_factory(req: SubjectRequest) -> Subject:
    spec = str(req.factory)
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SubjectError(f"factory {spec!r} must look like \"package.module:callable\"", key="factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise SubjectError(f"factory {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); check the "
                           "module is on the Python path", key="factory") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise SubjectError(f"factory {spec!r}: module {module_name!r} has no attribute {attr!r}", key="factory")
    if not callable(fn):
        raise SubjectError(f"factory {spec!r}: {attr!r} is not callable", key="factory")
    kwargs: dict[str, Any] = dict(req.options)
    try:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if "seed" in params or takes_any:
            kwargs["seed"] = req.seed
        if req.arch is not None and ("arch" in params or takes_any):
            kwargs["arch"] = req.arch
    except (TypeError, ValueError):
        pass
    if not (req.random or req.checkpoint is not None):
        raise SubjectError(f"factory subjects take weights = \"random\" (the factory's own) or a checkpoint path, "
                           f"not {req.weights!r}", key="factory")
    with seeded(req.seed):
        try:
            built = fn(**kwargs)
        except SubjectError:
            raise
        except TypeError as e:
            raise _bad_options(f"factory {spec!r}", req, e) from None
        except Exception as e:
            raise SubjectError(f"factory {spec!r} failed: {type(e).__name__}: {_first_line(str(e), 200)}",
                               key="factory") \
                from None
    model, transform = (built if isinstance(built, tuple) and len(built) == 2 else (built, None))
    if not isinstance(model, nn.Module):
        raise SubjectError(f"factory {spec!r} returned {type(model).__name__}; it must return an nn.Module or "
                           "(module, transform)", key="factory")
    return from_module(req, model, transform, label=req.source if req.source != "factory" else f"factory:{spec}")


def from_module(req: SubjectRequest, model: nn.Module, transform: Any = None, label: str | None = None) -> Subject:
    """A `Subject` around a torch module, for sources of one's own (`register_source`): `transform` is a
    torchvision-style transform (redone on tensors), a callable on float tensors `(B, 3, H, W)` in [0, 1], or
    None (the module receives the images as they are); the input size comes from `model.input_size`, else the
    transform, else 224; class names from `model.class_names`. A checkpoint in `req.weights` is loaded."""
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    if transform is None:
        preprocess = TensorPreprocess()
    else:
        try:
            preprocess = TensorPreprocess.from_library(transform)
        except SubjectError:
            preprocess = transform  # a callable on tensors (B, 3, H, W) in [0, 1]
    size = getattr(model, "input_size", None) or getattr(preprocess, "output_size", None) or DEFAULT_INPUT_SIZE
    names = getattr(model, "class_names", None)
    return _finish(req, model, preprocess, lambda m: m, int(size), label or req.source,
                   class_names=list(names) if names is not None else None)


def build_phantom(req: SubjectRequest) -> Subject:
    """The planted-truth phantom (`rig.phantom`), built as a factory subject."""
    from dataclasses import replace

    return build_factory(replace(req, factory=req.factory or "rig.phantom:build"))
