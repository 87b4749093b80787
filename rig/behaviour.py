"""Behaviour: a per-stimulus readout of a subject's image output as probabilities over choices.

`make_readout(subject, spec) -> Readout`. With `prompts`, a CLIP subject answers zero-shot: probabilities are
`softmax(logit_scale * cos(image_embedding, text_embedding))` over the prompts (text embeddings computed once,
at construction; `refresh()` recomputes them, e.g. after lesioning the text tower). A subject without a text
tower can take prompts that are its own class names (softmax over those logits). Without prompts a classifier
answers with a softmax over all its classes (`top_k` keeps the k best per stimulus in the dataset).
The blog's "performance" is the mean probability of the target prompt (`Readout.performance`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr
from pydantic import BaseModel, Field

from .errors import RigError
from .subjects import Subject


class ReadoutSpec(BaseModel):
    """What to read out: zero-shot `prompts` (+ `target`, the correct one), or a classifier's `top_k`."""

    prompts: list[str] | None = Field(None, min_length=1)
    target: str | None = None
    top_k: int | None = Field(None, gt=0)


@dataclass
class Readout:
    """Maps a subject's image output `(B, ...)` to probabilities `(B, K)` over `labels`.

    `kind`: `"zero_shot"` (CLIP prompts) or `"classifier"` (softmax over logits, `columns` selects classes).
    `target`: index into `labels` of the correct choice, or `None`.
    """

    subject: Subject
    kind: str
    labels: list[str]
    target: int | None = None
    top_k: int | None = None
    columns: np.ndarray | None = None  # classifier: output columns (class indices) kept, in `labels` order
    text: torch.Tensor | None = field(default=None, repr=False)  # zero-shot: unit-norm text embeddings (K, D)

    def __post_init__(self) -> None:
        if self.kind == "zero_shot" and self.text is None:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the prompts' text embeddings from the subject's current text tower (zero-shot only)."""
        if self.kind == "zero_shot":
            self.text = self.subject.encode_text(self.labels)

    def __call__(self, output: Any) -> torch.Tensor:
        """Image output `(B, D)` (embeddings) or `(B, C)` (logits) -> probabilities `(B, K)` float32, same device."""
        out = output[0] if isinstance(output, (tuple, list)) else output
        out = torch.as_tensor(out).float()
        if out.ndim != 2:
            raise RigError(f"behaviour readout needs a (batch, features) output from {self.subject.name}, got shape "
                           f"{tuple(out.shape)}; remove [behaviour] or use a subject whose output is 2-D")
        if self.kind == "zero_shot":
            emb = out / out.norm(dim=-1, keepdim=True)
            logits = float(self.subject.logit_scale) * emb @ self.text.to(out.device, out.dtype).T
        else:
            logits = out if self.columns is None else out[:, torch.as_tensor(self.columns, device=out.device)]
            if logits.shape[1] != len(self.labels):
                raise RigError(f"{self.subject.name} gives {logits.shape[1]} outputs but the readout has "
                               f"{len(self.labels)} labels; check the subject's class names")
        return torch.softmax(logits, dim=-1)

    def performance(self, probs: np.ndarray | torch.Tensor) -> float:
        """Mean probability of the target choice over stimuli (`probs` `(N, K)`)."""
        if self.target is None:
            raise RigError("performance needs a target; set [behaviour] target to one of the prompts")
        return float(np.asarray(torch.as_tensor(probs).detach().cpu(), dtype=np.float64)[:, self.target].mean())

    def describe(self) -> dict[str, Any]:
        """JSON-able description, also written as the dataset's attrs."""
        d: dict[str, Any] = {"readout": self.kind, "subject": self.subject.name, "n_choices": len(self.labels),
                             "labels_json": json.dumps(self.labels)}
        if self.target is not None:
            d["target"] = self.labels[self.target]
        if self.kind == "zero_shot":
            d["logit_scale"] = float(self.subject.logit_scale)
            d["rule"] = "softmax over prompts of logit_scale * cos(image_embedding, text_embedding)"
        else:
            d["rule"] = "softmax over the classifier's logits" + (" of the named classes" if self.columns is not None
                                                                  else "")
        if self.top_k is not None:
            d["top_k"] = int(self.top_k)
        return d

    def dataset(self, probs: np.ndarray | torch.Tensor, stimulus_index: np.ndarray | None = None) -> xr.Dataset:
        """Probabilities `(N, K)` -> `xr.Dataset`: `probability(stimulus, choice)`, `answer(stimulus)` (the most
        probable label), with a target `target_probability(stimulus)` and `correct(stimulus)`, with `top_k`
        `top_probability(stimulus, rank)` and `top_label(stimulus, rank)`."""
        p = np.asarray(torch.as_tensor(probs).detach().cpu(), dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != len(self.labels):
            raise RigError(f"probabilities of shape {p.shape} do not match the readout's {len(self.labels)} choices")
        n = p.shape[0]
        index = np.arange(n) if stimulus_index is None else np.asarray(stimulus_index)
        labels = np.asarray(self.labels, dtype=object)
        best = p.argmax(axis=1)
        data: dict[str, Any] = {
            "probability": (("stimulus", "choice"), p, {"long_name": "probability of each choice"}),
            "answer": (("stimulus",), labels[best].astype(str), {"long_name": "most probable choice"}),
        }
        if self.target is not None:
            data["target_probability"] = (("stimulus",), p[:, self.target],
                                          {"long_name": f"probability of {self.labels[self.target]!r}"})
            data["correct"] = (("stimulus",), (best == self.target).astype(np.int8),
                               {"long_name": "1 where the most probable choice is the target"})
        if self.top_k is not None:
            k = min(self.top_k, p.shape[1])
            top = np.argsort(-p, axis=1, kind="stable")[:, :k]
            data["top_probability"] = (("stimulus", "rank"), np.take_along_axis(p, top, axis=1), {})
            data["top_label"] = (("stimulus", "rank"), labels[top].astype(str), {})
        coords = {"stimulus": index, "choice": np.asarray(self.labels, dtype=str)}
        if self.top_k is not None:
            coords["rank"] = np.arange(min(self.top_k, p.shape[1]))
        return xr.Dataset(data, coords=coords, attrs=self.describe())


def make_readout(subject: Subject, spec: ReadoutSpec | Mapping[str, Any] | Any) -> Readout:
    """Build the readout described by `spec` (`ReadoutSpec`, a dict, or a pydantic model with the same fields).

    Raises `RigError` if prompts are given to a subject without a text tower whose class names do not include
    them, if the target is not among the prompts / labels, or if a CLIP subject gets no prompts.
    """
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    spec = ReadoutSpec.model_validate(dict(spec))
    if spec.prompts is not None:
        labels = list(spec.prompts)
        if len(set(labels)) != len(labels):
            raise RigError(f"behaviour prompts {labels} contain duplicates; give each prompt once")
        if subject.has_text:
            readout = Readout(subject, "zero_shot", labels, top_k=spec.top_k)
        elif subject.class_names is not None and all(p in subject.class_names for p in labels):
            columns = np.array([subject.class_names.index(p) for p in labels])
            readout = Readout(subject, "classifier", labels, top_k=spec.top_k, columns=columns)
        else:
            hint = (f"its classes are e.g. {subject.class_names[:3]}" if subject.class_names
                    else "it has no class names")
            raise RigError(f"{subject.name} has no text tower for prompts {labels} ({hint}); use an open_clip subject "
                           "or remove prompts to read out its classes")
    else:
        if subject.has_text:
            raise RigError(f"{subject.name} is a CLIP subject: give [behaviour] prompts, e.g. "
                           "[\"a black circle\", \"an empty image\"]")
        labels = list(subject.class_names) if subject.class_names is not None else _index_labels(subject)
        readout = Readout(subject, "classifier", labels, top_k=spec.top_k)
    if spec.target is not None:
        if spec.target not in readout.labels:
            from stimuli.registry import did_you_mean

            raise RigError(f"behaviour target {spec.target!r} is not among the choices"
                           f"{did_you_mean(spec.target, readout.labels)} ({', '.join(readout.labels[:5])}"
                           f"{f', ... {len(readout.labels)} in all' if len(readout.labels) > 5 else ''})")
        readout.target = readout.labels.index(spec.target)
    return readout


def _index_labels(subject: Subject) -> list[str]:
    """`class_0 ...` for a classifier without class names; its output width from one blank image."""
    blank = torch.full((1, 3, subject.input_size, subject.input_size), 0.5, device=subject.device)
    out = subject.forward(blank)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim != 2:
        raise RigError(f"{subject.name} output has shape {tuple(out.shape)}; a behaviour readout needs "
                       "(batch, classes) logits")
    return [f"class_{i}" for i in range(out.shape[1])]
