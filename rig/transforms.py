"""A library's image transform (resize, centre crop, normalise) re-done on batched tensors on the device.

`TensorPreprocess.from_library(transform)` reads the settings out of an open_clip / timm / torchvision
transform (a `Compose` of `Resize`, `CenterCrop`, `Normalize`, to-tensor steps, or torchvision's
`ImageClassification`) so that a subject's preprocess is exactly the library's pipeline, minus PIL.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from .errors import SubjectError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Steps that only convert PIL/uint8 to float tensors in [0, 1]: our input already is one.
_CONVERSIONS = {"ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "MaybeConvertMode", "ToImage",
                "ToDtype", "ConvertImageDtype", "ToPureTensor"}


@dataclass(frozen=True)
class TensorPreprocess:
    """Resize -> centre crop -> normalise, on float tensors `(B, 3, H, W)` in [0, 1].

    `resize`: `None` (no resize), an int (the shorter side becomes this many pixels, aspect kept, torchvision
    semantics, `max_size` caps the longer side) or `(H, W)` (squash). `crop`: `(H, W)` centre crop or `None`.
    `interpolation`: `"bilinear" | "bicubic" | "nearest"` (antialiased, as PIL does). After resizing, values are
    clamped to [0, 1] (PIL resizes uint8, so bicubic overshoot is clipped there too).
    """

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    max_size: int | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """`images` `(B, 3, H, W)` float in [0, 1] -> model input `(B, 3, h, w)` on the same device."""
        x = images
        if self.resize is not None and tuple(x.shape[-2:]) != self._resized_shape(x.shape[-2:]):
            x = TF.resize(x, list(self._size_arg()), interpolation=InterpolationMode(self.interpolation),
                          max_size=self.max_size, antialias=True).clamp_(0.0, 1.0)
        if self.crop is not None and tuple(x.shape[-2:]) != tuple(self.crop):
            x = TF.center_crop(x, list(self.crop))
        if self.mean is not None:
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            x = (x - mean) / std
        return x

    @property
    def output_size(self) -> int | None:
        """Side of the (square) model input in pixels when the pipeline fixes it, else `None`."""
        if self.crop is not None:
            return int(self.crop[-1])
        if isinstance(self.resize, tuple):
            return int(self.resize[-1])
        return None

    def describe(self) -> dict[str, Any]:
        """The settings as a JSON-able dict (for provenance)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def _size_arg(self) -> Sequence[int]:
        return [self.resize] if isinstance(self.resize, int) else list(self.resize)

    def _resized_shape(self, hw: Sequence[int]) -> tuple[int, int]:
        if isinstance(self.resize, tuple):
            return self.resize
        h, w = int(hw[0]), int(hw[1])
        short, long_ = (h, w) if h <= w else (w, h)
        new_short, new_long = self.resize, int(self.resize * long_ / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if h <= w else (new_long, new_short)

    @classmethod
    def from_library(cls, transform: Any) -> "TensorPreprocess":
        """Read resize / crop / normalise settings out of a library's eval transform.

        Raises `SubjectError` for a step it cannot reproduce on tensors (e.g. padding resize modes).
        """
        kind = type(transform).__name__
        if kind == "ImageClassification":  # torchvision weights.transforms()
            return cls(resize=int(transform.resize_size[0]), crop=_pair(transform.crop_size),
                       mean=tuple(map(float, transform.mean)), std=tuple(map(float, transform.std)),
                       interpolation=InterpolationMode(transform.interpolation).value)
        steps = list(getattr(transform, "transforms", [transform]))
        settings: dict[str, Any] = {}
        for step in steps:
            name = type(step).__name__
            if name == "Resize":
                size = step.size
                settings["resize"] = int(size) if isinstance(size, int) else (
                    int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1])))
                settings["interpolation"] = InterpolationMode(step.interpolation).value
                settings["max_size"] = step.max_size
            elif name == "CenterCrop":
                settings["crop"] = _pair(step.size)
            elif name == "Normalize":
                settings["mean"] = tuple(float(v) for v in torch.as_tensor(step.mean, dtype=torch.float64).flatten())
                settings["std"] = tuple(float(v) for v in torch.as_tensor(step.std, dtype=torch.float64).flatten())
            elif name in _CONVERSIONS or getattr(getattr(step, "lambd", None), "__name__", "") == "_convert_to_rgb":
                continue
            else:
                raise SubjectError(
                    f"cannot reproduce the preprocess step {name} on tensors; use a resize mode with centre crop, "
                    "or a factory subject that returns (module, transform)")
        return cls(**settings)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = [int(s) for s in size]
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
