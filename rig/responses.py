"""Differentiable responses of a site: the callable that gradient RFs need, built from a subject and a site.

    fn = site_response(subject, "visual.transformer.resblocks.5", units=range(8), tokens="cls")
    rfs = analyses.gradient_rfs(fn, images)          # (unit, stimulus, channel, y, x), d response / d pixel

`fn(images)` takes float images `(B, 3, H, W)` in [0, 1] (the stimulus pixels, before the subject's preprocess,
which is differentiable) and returns the chosen cells `(B, n)`: units of the site, at chosen tokens (token
sites) or map positions (conv sites). The forward pass stops at the site: a hook raises as soon as the site
has fired, so the blocks after it never run. `fn.unit_coords` names each column (`site`, `unit`, and `token`,
`token_row`, `token_col` or `map_y`, `map_x`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .errors import SiteError
from .sites import TokenChoice, batch_first, catalogue, primary_output, token_indices

Positions = str | Sequence[Sequence[int]]


class _SiteReached(BaseException):
    """Raised from the site's hook to stop the forward pass (a BaseException, so a model's own `except
    Exception` cannot swallow it)."""


class SiteResponse:
    """Chosen cells of one site as a differentiable function of the stimulus pixels (see the module docstring).

    `units`: channel indices (default all); `tokens` (token sites): `cls | patches | all | [indices]`;
    `positions` (conv sites): `centre | all | [[y, x], ...]` map positions. Columns are ordered token-major
    (or position-major): every unit at the first token, then every unit at the next.
    """

    def __init__(self, subject: Any, site: str, units: Sequence[int] | None = None, tokens: TokenChoice = "cls",
                 positions: Positions = "centre", image_size: tuple[int, int] | None = None):
        infos = {i.name: i for i in catalogue(subject, image_size)}
        if site not in infos:
            from stimuli.registry import did_you_mean

            raise SiteError(f"{site!r} is not a site of {subject.name}{did_you_mean(site, list(infos))} (list them "
                            "with `rig sites`)")
        self.subject, self.info = subject, infos[site]
        self.device = subject.device
        if self.info.calls != 1:
            raise SiteError(f"site {site!r} fires {self.info.calls} times per forward pass; choose a site that fires once")
        n_units = self.info.n_units
        units = np.arange(n_units) if units is None else np.asarray(list(units), np.int64).reshape(-1)
        if units.size == 0 or (units < 0).any() or (units >= n_units).any():
            raise SiteError(f"units {units.tolist()} out of range for site {site!r} with {n_units} units")
        self.unit_coords = self._cells(units, tokens, positions)
        self._module = dict(subject.model.named_modules())[site]

    def _cells(self, units: np.ndarray, tokens: TokenChoice, positions: Positions) -> dict[str, np.ndarray]:
        info = self.info
        if info.layout == "tokens":
            idx = token_indices(info, tokens)
            idx = np.arange(info.shape[0]) if idx is None else idx
            row, col = info.token_positions()
            tok = np.repeat(idx, len(units))
            self._index = (torch.as_tensor(tok), torch.as_tensor(np.tile(units, len(idx))))
            return {"site": np.full(tok.size, info.name), "unit": np.tile(units, len(idx)), "token": tok,
                    "token_row": row[tok], "token_col": col[tok]}
        if info.layout == "conv":
            _, h, w = info.shape
            if isinstance(positions, str):
                if positions == "centre":
                    pos = np.array([[h // 2, w // 2]])
                elif positions == "all":
                    pos = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
                else:
                    raise SiteError(f"positions={positions!r}: use 'centre', 'all' or a list of [y, x] map positions")
            else:
                pos = np.asarray(positions, np.int64).reshape(-1, 2)
                if ((pos < 0) | (pos >= [h, w])).any():
                    raise SiteError(f"positions {pos.tolist()} outside the {h} x {w} map of site {info.name!r}")
            py, px = np.repeat(pos[:, 0], len(units)), np.repeat(pos[:, 1], len(units))
            u = np.tile(units, len(pos))
            self._index = (torch.as_tensor(u), torch.as_tensor(py), torch.as_tensor(px))
            return {"site": np.full(u.size, info.name), "unit": u, "map_y": py, "map_x": px}
        self._index = (torch.as_tensor(units),)
        return {"site": np.full(units.size, info.name), "unit": units}

    def __len__(self) -> int:
        return len(self.unit_coords["unit"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images `(B, 3, H, W)` in [0, 1] -> the chosen cells `(B, n)`, differentiable in the images."""
        captured: list[Any] = []

        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            captured.append(output)
            raise _SiteReached

        handle = self._module.register_forward_hook(hook)
        try:
            self.subject.encode_image(self.subject.preprocess(images.to(self.device)))
        except _SiteReached:
            pass
        finally:
            handle.remove()
        if not captured:
            raise SiteError(f"site {self.info.name!r} did not fire on these images")
        out = batch_first(primary_output(captured[0]), self.info)
        index = tuple(i.to(out.device) for i in self._index)
        if self.info.layout == "tokens":
            return out[:, index[0], index[1]]
        if self.info.layout == "conv":
            return out[:, index[0], index[1], index[2]]
        return out[:, index[0]]


def site_response(subject: Any, site: str, units: Sequence[int] | None = None, tokens: TokenChoice = "cls",
                  positions: Positions = "centre", image_size: tuple[int, int] | None = None) -> SiteResponse:
    """The chosen cells of `site` as a differentiable function of the stimulus pixels (see `SiteResponse`)."""
    return SiteResponse(subject, site, units, tokens, positions, image_size)


__all__ = ["SiteResponse", "site_response"]
