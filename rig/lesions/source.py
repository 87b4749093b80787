"""Stimuli for lesion runs: an image array or a stimulus set, rendered batch by batch, re-iterable."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from stimuli.base import StimulusError


class StimulusSource:
    """Wraps an image array `(N, 3, H, W)` float32 in [0, 1] or a `StimulusSet` (anything with `batches`)."""

    def __init__(self, stimuli: Any):
        if isinstance(stimuli, (np.ndarray, torch.Tensor)):
            images = np.asarray(stimuli, dtype=np.float32)
            if images.ndim != 4 or images.shape[1] != 3:
                raise StimulusError(f"images must be (N, 3, H, W), got {images.shape}; pass a stimulus set or RGB batch")
            self.images: np.ndarray | None = images
            self.stimulus_set = None
            self.n = len(images)
        elif hasattr(stimuli, "batches") and hasattr(stimuli, "__len__"):
            self.images, self.stimulus_set, self.n = None, stimuli, len(stimuli)
        else:
            raise StimulusError(f"cannot use {type(stimuli).__name__} as stimuli; pass an image array or a StimulusSet")

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield `(indices, images)` in stimulus order."""
        if self.images is None:
            yield from self.stimulus_set.batches(batch_size)
            return
        for start in range(0, self.n, batch_size):
            idx = np.arange(start, min(start + batch_size, self.n))
            yield idx, self.images[idx]

    def positions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Stimulus centres `(x, y)` in pixels when the stimuli are a stimulus set with `x`, `y`, else None."""
        params = getattr(self.stimulus_set, "params", None)
        if params is None or "x" not in params or "y" not in params:
            return None
        return np.asarray(params["x"].values, float), np.asarray(params["y"].values, float)

    def content_hash(self) -> str | None:
        """The stimulus set's hash (or a hash of the images), for checking that a resumed sweep matches."""
        if self.stimulus_set is not None and hasattr(self.stimulus_set, "content_hash"):
            return str(self.stimulus_set.content_hash())
        if self.images is not None:
            import hashlib

            return hashlib.sha256(np.ascontiguousarray(self.images).tobytes()).hexdigest()
        return None
