"""Semantic embeddings of images from their captions: the mean of each image's caption embeddings (the study's
semantic features), from any text encoder given as a callable, and the built-in *concept* encoder of the
procedural scenes' vocabulary (no model: it runs anywhere).

Text encoders that need a model (a sentence-transformers model such as all-MiniLM-L6-v2, CLIP's text tower) are
built by `rig.semantics.text_encoder` and passed in as `encode(list[str]) -> (n, d)`.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from .ratemaps import AnalysisInputError

#: the procedural scenes' object classes and their super-categories (the semantic structure they plant)
CLASSES: dict[str, str] = {"cat": "animal", "dog": "animal", "bird": "animal",
                           "car": "vehicle", "boat": "vehicle", "plane": "vehicle",
                           "apple": "food", "cake": "food", "bread": "food"}
SUPER = tuple(dict.fromkeys(CLASSES.values()))
#: weights of a concept vector: its super-category and its own class (two classes of one super-category are at
#: cosine distance 1 - 1 / (1 + 0.5^2) = 0.2; of two super-categories at distance 1)
SUPER_WEIGHT, CLASS_WEIGHT = 1.0, 0.5


def concept_embedding(captions: Sequence[str]) -> np.ndarray:
    """`(n, n_super + n_classes)` float64: each caption's class words (`CLASSES`, singular or plural), each as
    its super-category (weight 1) plus its own class (weight 0.5), summed and scaled to unit length. A caption
    naming no known class raises (use a trained text encoder for free text)."""
    names = list(CLASSES)
    out = np.zeros((len(captions), len(SUPER) + len(names)))
    for i, caption in enumerate(captions):
        words = re.findall(r"[a-z]+", str(caption).lower())
        found = [w.rstrip("s") if w.rstrip("s") in CLASSES else w for w in words]
        found = [w for w in found if w in CLASSES]
        if not found:
            raise AnalysisInputError(f"caption {caption!r} names none of the concept classes ({', '.join(names)}); "
                                     "use a trained text encoder (e.g. semantics = 'minilm') for free text")
        for w in found:
            out[i, SUPER.index(CLASSES[w])] += SUPER_WEIGHT
            out[i, len(SUPER) + names.index(w)] += CLASS_WEIGHT
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def caption_embeddings(captions: Sequence[str | Sequence[str]], encode: Callable[[list[str]], np.ndarray]
                       ) -> np.ndarray:
    """Per image, the mean of its captions' embeddings, each scaled to unit length first: `(n_images, d)`.

    `captions`: one caption or a list of captions per image (a string holding several captions separated by
    newlines counts as that list); `encode(list[str]) -> (n, d)`: a text encoder (`concept_embedding`, or one
    from `rig.semantics.text_encoder`)."""
    per_image = [[c for c in (item.split("\n") if isinstance(item, str) else item) if str(c).strip()]
                 for item in captions]
    empty = [i for i, c in enumerate(per_image) if not c]
    if empty:
        raise AnalysisInputError(f"{len(empty)} image(s) have no caption (first: #{empty[0]}); every image needs one")
    flat = [str(c) for item in per_image for c in item]
    vectors = np.asarray(encode(flat), dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(flat):
        raise AnalysisInputError(f"the text encoder returned shape {vectors.shape} for {len(flat)} captions; "
                                 "it must return (n_captions, d)")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    bounds = np.cumsum([0] + [len(c) for c in per_image])
    return np.stack([vectors[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance `1 - a.b / (|a| |b|)` between `(n, d)` arrays (or one row against many)."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    num = np.einsum("ij,ij->i", *np.broadcast_arrays(a, b))
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(1 - num / den, 0, 2)  # rounding can take identical vectors a hair below 0
