"""The phantom: a planted-truth subject whose every unit has a known spatial tuning.

A small `nn.Module` pipeline that looks at the pixels of an image, finds the stimulus, and drives planted
populations of "cells" from its position, so that every analysis of the rig can be checked against the truth
(`Phantom.truth()`) and every lesion against a known answer. Its sites (`model.named_modules()` names):

    locate   (B, 4)  where the stimulus is, from its pixels: contrast against the background (median colour of
                     the image's outer ring of pixels), mean over channels, minus a small floor, used as weights
                     of a centroid. Columns `x`, `y` (centre, px, image frame: x right, y down, origin at the
                     top-left corner, pixel j covering [j, j+1)), `area` (px^2), `presence` = 1 - exp(-area /
                     presence_scale) (0 on an empty image, ~1 for any visible stimulus).
    place    (B, n_place)   Gaussian fields, peak 1, centre `(centre_x, centre_y)` px, s.d. `field_width` px
                     (default 0.6 x the lattice step), on a regular lattice over the canvas: `round(sqrt(n))`
                     rows of evenly spread centres (8 x 8, 28 px apart, by default).
    grid     (B, n_grid)    rectified sum of three cosines 60 degrees apart: peaks 1 on a triangular lattice
                     of side `spacing` px, rotated by `orientation` degrees, one peak at `(phase_x, phase_y)`.
    border   (B, n_border)  a band along the unit's `wall`: sigmoid((field_width - distance to the wall) / 4 px),
                     1 at the wall, 1/2 at `field_width` px; walls cycle north (y = 0), east, south, west.
                     The default widths (24-32 px, 3-4 bins of 28 over 224 px) keep the band connected in a
                     ratemap even though circle centres never come closer to a wall than their radius.
    untuned  (B, n_untuned) position-free: a lognormal "rate" driven by frozen noise from the pixel content
                     (mean `baseline`), so their ratemaps are flat up to sampling noise. (Stimulus size is not
                     used: with circles kept inside the canvas, size and position are correlated.)
    units    (B, U)  all planted units side by side (place, grid, border, untuned), U = sum of the counts;
                     `truth()` describes them in this order.
    readout  (B, 2)  behaviour logits for `class_names = ["a stimulus", "an empty image"]`.

Every population is multiplied by `presence` (silent on an empty image) and by a per-unit `weight` parameter
(1; zeroing a module's weights silences it). With `noise > 0` every unit gets additive frozen Gaussian noise
of that s.d.: a function of the image's pixels (quantised to 8 bits) and `noise_seed` (default: `seed`), so
the same image always gives the same answer (reproducible recordings, comparable lesions) while different
images vary.

The behaviour readout. Only place units drive it. Each place unit contributes `(r - kappa) / (1 - kappa)` when
its response r exceeds `kappa` (default 0.25), so it "sees" a stimulus only inside its *field*, the disc of
radius `field_radius = field_width * sqrt(2 ln(1 / kappa))` around its centre. With the default width, kappa and
criterion every position on the canvas lies in some field with drive >= 0.33 > criterion (a narrower
`place_width`, a larger `readout_threshold` or a `place_jitter` can leave blind spots, on purpose). The
detection drive is the sum of these contributions and the logit of "a stimulus" against "an empty image" is
`gain * (drive - criterion)` (the second logit is 0), so `softmax(logits)[:, 0] = sigmoid(gain * (drive -
criterion))`. An empty image gives drive 0, hence "empty". Silencing the place units whose fields cover a region
leaves zero drive for stimuli there (detection is abolished) while stimuli elsewhere keep their own fields;
`Phantom.covering(x, y)` names those units.

Example (a protocol uses `[subject] source = "phantom"`, options passed on to `build`):

    model = rig.phantom.build(seed=0, n_grid=6, noise=0.05)
    truth = model.truth()                      # xr.Dataset over `unit`: cell_class, centre_x, spacing, wall...
    logits = model(torch.from_numpy(stimuli.circles(n=8).render()))   # (8, 2); softmax -> P("a stimulus")
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from .errors import SubjectError

#: planted populations, in the order of the `units` site
POPULATIONS = ("place", "grid", "border", "untuned")
#: walls of the canvas, in the order border units are assigned to them
WALLS = ("north", "east", "south", "west")
#: readout labels: logit 0 = "a stimulus", logit 1 = "an empty image"
CLASS_NAMES = ["a stimulus", "an empty image"]


class Locate(nn.Module):
    """Stimulus centre and size from the pixels: images `(B, 3, H, W)` in [0, 1] -> `(B, 4)` x, y, area, presence.

    Positions and areas are expressed on a `canvas` x `canvas` pixel frame (the image is scaled to it when its
    size differs). An empty image (no contrast) gives the canvas centre, area 0 and presence 0.
    """

    columns = ("x", "y", "area", "presence")

    def __init__(self, canvas: int, contrast_floor: float = 0.05, presence_scale: float = 30.0):
        super().__init__()
        self.canvas = int(canvas)
        self.contrast_floor = float(contrast_floor)
        self.presence_scale = float(presence_scale)

    def contrast(self, images: torch.Tensor) -> torch.Tensor:
        """Centroid weights `(B, H, W)` in [0, 1]: mean absolute difference to the background colour, floored."""
        ring = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]],
                         dim=2)  # (B, 3, perimeter)
        background = ring.median(dim=2).values[:, :, None, None]
        c = (images - background).abs().mean(dim=1)
        return torch.relu(c - self.contrast_floor) / (1.0 - self.contrast_floor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        w = self.contrast(images)
        _, h, wd = w.shape
        sx, sy = self.canvas / wd, self.canvas / h
        xs = (torch.arange(wd, device=w.device, dtype=w.dtype) + 0.5) * sx
        ys = (torch.arange(h, device=w.device, dtype=w.dtype) + 0.5) * sy
        mass = w.sum(dim=(1, 2))
        eps = 1e-3  # pulls an empty image's centroid to the canvas centre instead of 0 / 0
        centre = self.canvas / 2
        x = (w.sum(dim=1) @ xs + eps * centre) / (mass + eps)
        y = (w.sum(dim=2) @ ys + eps * centre) / (mass + eps)
        area = mass * sx * sy
        presence = 1.0 - torch.exp(-area / self.presence_scale)
        return torch.stack([x, y, area, presence], dim=1)


class _Population(nn.Module):
    """Base of the planted populations: a `weight` (gain) per unit and additive frozen noise of s.d. `noise`."""

    def __init__(self, n: int, noise: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n), requires_grad=False)
        self.noise = float(noise)

    @property
    def n(self) -> int:
        return self.weight.numel()

    def tuning(self, loc: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, loc: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """`loc` (B, 4) from `Locate`; `xi` (B, 2n) frozen standard normals: [:, :n] noise, [:, n:] drive."""
        n = self.n
        r = loc[:, 3:4] * self.weight * self.tuning(loc, xi[:, n:])
        return r + self.noise * xi[:, :n] if self.noise > 0 else r


class PlaceCells(_Population):
    """Gaussian place fields: `exp(-|p - centre|^2 / (2 width^2))`, centres `(n, 2)` px, widths `(n,)` px."""

    def __init__(self, centres: np.ndarray, widths: np.ndarray, noise: float = 0.0):
        super().__init__(len(centres), noise)
        self.register_buffer("centres", torch.as_tensor(centres, dtype=torch.float32))
        self.register_buffer("widths", torch.as_tensor(widths, dtype=torch.float32))

    def tuning(self, loc: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        d2 = ((loc[:, None, :2] - self.centres[None]) ** 2).sum(-1)
        return torch.exp(-d2 / (2 * self.widths**2))


class GridCells(_Population):
    """Hexagonal grid fields: `relu(mean_m cos(k_m . (p - phase)))`, three wave vectors 60 degrees apart.

    `|k| = 4 pi / (sqrt(3) spacing)` puts the peaks (value 1) on a triangular lattice of side `spacing` px.
    """

    def __init__(self, spacing: np.ndarray, orientation_deg: np.ndarray, phase: np.ndarray, noise: float = 0.0):
        super().__init__(len(spacing), noise)
        spacing = np.asarray(spacing, np.float64)
        angles = np.deg2rad(np.asarray(orientation_deg, np.float64))[:, None] + np.arange(3) * np.pi / 3
        k = (4 * np.pi / (np.sqrt(3) * spacing))[:, None, None] * np.stack([np.cos(angles), np.sin(angles)], -1)
        self.register_buffer("wave_vectors", torch.as_tensor(k, dtype=torch.float32))  # (n, 3, 2) rad/px
        self.register_buffer("phase", torch.as_tensor(phase, dtype=torch.float32))  # (n, 2) px

    def tuning(self, loc: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        rel = loc[:, None, :2] - self.phase[None]  # (B, n, 2)
        g = torch.cos(torch.einsum("bnd,nmd->bnm", rel, self.wave_vectors)).mean(-1)
        return torch.relu(g)


class BorderCells(_Population):
    """Border fields: a band along the wall, `sigmoid((width - distance to the wall) / edge)`.

    `wall` (n,) indexes `WALLS`; `widths` (n,) px: distance from the wall where the response is half its peak;
    `edge` px: how sharply it falls off there.
    """

    def __init__(self, wall: np.ndarray, widths: np.ndarray, canvas: int, edge: float = 4.0, noise: float = 0.0):
        super().__init__(len(wall), noise)
        wall = np.asarray(wall, np.int64)
        self.register_buffer("wall", torch.as_tensor(wall))  # index into WALLS
        # distance = offset + sign * coordinate, coordinate 0 = x, 1 = y
        axis = np.array([1, 0, 1, 0])[wall]  # north/south use y, east/west use x
        sign = np.array([1.0, -1.0, -1.0, 1.0])[wall]
        offset = np.array([0.0, canvas, canvas, 0.0])[wall]
        self.register_buffer("axis", torch.as_tensor(axis))
        self.register_buffer("sign", torch.as_tensor(sign, dtype=torch.float32))
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("widths", torch.as_tensor(widths, dtype=torch.float32))
        self.edge = float(edge)

    def tuning(self, loc: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        distance = self.offset + self.sign * loc[:, self.axis]  # (B, n) px
        return torch.sigmoid((self.widths - distance) / self.edge)


class UntunedCells(_Population):
    """Position-free units: `baseline * exp(s * xi - s^2 / 2)` (lognormal, mean `baseline`), xi frozen noise."""

    def __init__(self, baseline: np.ndarray, spread: float = 0.5, noise: float = 0.0):
        super().__init__(len(baseline), noise)
        self.register_buffer("baseline", torch.as_tensor(baseline, dtype=torch.float32))
        self.spread = float(spread)

    def tuning(self, loc: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
        s = self.spread
        return self.baseline * torch.exp(s * drive - s * s / 2)


class Units(nn.Module):
    """All planted populations side by side: `(B, n_1), (B, n_2), ... -> (B, U)`."""

    def forward(self, *populations: torch.Tensor) -> torch.Tensor:
        return torch.cat(populations, dim=1)


class DetectionReadout(nn.Module):
    """Behaviour: units `(B, U)` -> logits `(B, 2)` for ("a stimulus", "an empty image").

    `drive = sum_i weight_i * relu(u_i - threshold_i)`; logits = `[gain * (drive - criterion), 0]`.
    """

    def __init__(self, weight: np.ndarray, threshold: np.ndarray, gain: float, criterion: float):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(weight, dtype=torch.float32), requires_grad=False)
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32))
        self.gain = float(gain)
        self.criterion = float(criterion)

    def drive(self, units: torch.Tensor) -> torch.Tensor:
        """Detection drive `(B,)`: 0 on an empty image, >= the lattice's coverage minimum on a stimulus."""
        return (self.weight * torch.relu(units - self.threshold)).sum(dim=1)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        s = self.gain * (self.drive(units) - self.criterion)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


class Phantom(nn.Module):
    """The planted-truth subject (see the module docstring); build it with `build(seed, ...)`.

    Input: images `(B, 3, H, W)` in [0, 1], RGB, no transform. Output: readout logits `(B, 2)`.

    Settings: `seed` (every planted parameter), `canvas` (px; also `input_size`), population counts
    `n_place`, `n_grid`, `n_border`, `n_untuned`; `place_width` (px, default 0.6 lattice steps), `place_jitter`
    (lattice steps, uniform); `grid_spacing`, `border_width` (px: a number or a (lo, hi) range drawn uniformly);
    grid orientations are uniform in [0, 60) degrees and phases uniform over the canvas; `noise` (s.d.) and
    `noise_seed`; readout `readout_threshold` (kappa), `readout_gain`, `readout_criterion`; locate
    `contrast_floor` (contrast below it is ignored) and `presence_scale` (px^2).
    """

    def __init__(self, *, seed: int = 0, canvas: int = 224, n_place: int = 64, n_grid: int = 12,
                 n_border: int = 8, n_untuned: int = 16, place_width: float | None = None,
                 place_jitter: float = 0.0, grid_spacing: float | Sequence[float] = (48.0, 80.0),
                 border_width: float | Sequence[float] = (24.0, 32.0), noise: float = 0.0,
                 noise_seed: int | None = None,
                 readout_threshold: float = 0.25, readout_gain: float = 40.0, readout_criterion: float = 0.15,
                 contrast_floor: float = 0.05, presence_scale: float = 30.0):
        super().__init__()
        _check(seed=seed, canvas=canvas, n_place=n_place, n_grid=n_grid, n_border=n_border, n_untuned=n_untuned,
               noise=noise, readout_threshold=readout_threshold, place_jitter=place_jitter,
               contrast_floor=contrast_floor, presence_scale=presence_scale)
        self.seed, self.canvas, self.noise = int(seed), int(canvas), float(noise)
        self.noise_seed = self.seed if noise_seed is None else int(noise_seed)
        self.input_size = int(canvas)
        self.class_names = list(CLASS_NAMES)
        rng = np.random.default_rng([int(seed), 0x70686E74])  # "phnt": own stream, independent of the noise

        centres, lattice_step = _lattice(n_place, canvas)
        if place_jitter > 0:
            centres = centres + rng.uniform(-place_jitter, place_jitter, centres.shape) * lattice_step
        width = 0.6 * lattice_step if place_width is None else float(place_width)
        if width <= 0:
            raise SubjectError(f"place_width must be > 0 px, got {place_width!r}")
        spacing = _draw(rng, grid_spacing, n_grid, "grid_spacing")
        orientation = rng.uniform(0.0, 60.0, n_grid)
        phase = rng.uniform(0.0, canvas, (n_grid, 2))
        walls = np.arange(n_border) % len(WALLS)
        bwidth = _draw(rng, border_width, n_border, "border_width")
        baseline = rng.uniform(0.2, 1.0, n_untuned)

        self.locate = Locate(canvas, contrast_floor, presence_scale)
        self.place = PlaceCells(centres, np.full(n_place, width), noise)
        self.grid = GridCells(spacing, orientation, phase, noise)
        self.border = BorderCells(walls, bwidth, canvas, noise=noise)
        self.untuned = UntunedCells(baseline, noise=noise)
        self.units = Units()
        kappa = float(readout_threshold)
        n_units = n_place + n_grid + n_border + n_untuned
        weight, threshold = np.zeros(n_units), np.zeros(n_units)
        weight[:n_place], threshold[:n_place] = 1.0 / (1.0 - kappa), kappa
        self.readout = DetectionReadout(weight, threshold, readout_gain, readout_criterion)
        self.lattice_step = lattice_step  # px
        self.field_radius = width * math.sqrt(2 * math.log(1 / kappa))  # px, where a place unit drives the readout
        self._grid_truth = (spacing, orientation, phase)

    @property
    def populations(self) -> dict[str, slice]:
        """Population name -> its columns in the `units` site."""
        out, start = {}, 0
        for name in POPULATIONS:
            n = getattr(self, name).n
            out[name] = slice(start, start + n)
            start += n
        return out

    @property
    def n_units(self) -> int:
        return sum(getattr(self, name).n for name in POPULATIONS)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.readout.weight.dtype)
        loc = self.locate(images)
        xi = self.frozen_noise(images)  # (B, 2U): per unit, noise then drive
        pops = [getattr(self, name)(loc, xi[:, 2 * s.start:2 * s.stop]) for name, s in self.populations.items()]
        return self.readout(self.units(*pops))

    def frozen_noise(self, images: torch.Tensor) -> torch.Tensor:
        """Standard normals `(B, 2U)`, a deterministic function of each image's 8-bit pixels and `noise_seed`.

        Zeros where nothing uses them (`noise == 0` and no untuned units), so the phantom stays cheap.
        """
        b, u = images.shape[0], self.n_units
        if self.noise == 0 and self.untuned.n == 0:
            return images.new_zeros(b, 2 * u)
        pixels = images.detach().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()  # 8-bit
        out = np.empty((b, 2 * u), np.float32)
        for i in range(b):  # one hash per image (not per unit)
            key = hashlib.blake2b(pixels[i].tobytes(), digest_size=16).digest()
            words = np.frombuffer(key, np.uint32).tolist()
            out[i] = np.random.default_rng([self.noise_seed, *words]).standard_normal(2 * u)
        return torch.from_numpy(out).to(images.device, images.dtype)

    def covering(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Boolean `(U,)`: the place units whose readout field (radius `field_radius`) contains any point (x, y) px."""
        pts = np.stack(np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float)), -1).reshape(-1, 2)
        centres = self.place.centres.detach().cpu().numpy().astype(float)
        d2 = ((pts[:, None, :] - centres[None]) ** 2).sum(-1)  # (points, n_place)
        mask = np.zeros(self.n_units, bool)
        mask[self.populations["place"]] = (d2 <= self.field_radius**2).any(0)
        return mask

    def truth(self) -> xr.Dataset:
        """The planted tuning of every unit of the `units` site (dim `unit`, in site order), NaN where n/a."""
        u, sl = self.n_units, self.populations
        nan = np.full(u, np.nan)
        cls = np.empty(u, object)
        index = np.zeros(u, np.int64)
        for name, s in sl.items():
            cls[s] = name
            index[s] = np.arange(s.stop - s.start)
        cx, cy, width, radius = nan.copy(), nan.copy(), nan.copy(), nan.copy()
        spacing, orient, px, py, base = nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy()
        wall = np.full(u, "", object)
        c = self.place.centres.cpu().numpy()
        cx[sl["place"]], cy[sl["place"]] = c[:, 0], c[:, 1]
        width[sl["place"]] = self.place.widths.cpu().numpy()
        radius[sl["place"]] = self.field_radius
        g_spacing, g_orient, g_phase = self._grid_truth
        spacing[sl["grid"]], orient[sl["grid"]] = g_spacing, g_orient
        px[sl["grid"]], py[sl["grid"]] = g_phase[:, 0], g_phase[:, 1]
        wall[sl["border"]] = np.asarray(WALLS, object)[self.border.wall.cpu().numpy()]
        width[sl["border"]] = self.border.widths.cpu().numpy()
        base[sl["untuned"]] = self.untuned.baseline.cpu().numpy()

        def var(values: np.ndarray, units: str | None = None, **attrs) -> tuple:
            if units:
                attrs["units"] = units
            return ("unit", values, attrs)

        return xr.Dataset(
            {
                "cell_class": var(cls.astype(str), description="planted population: " + ", ".join(POPULATIONS)),
                "centre_x": var(cx, "px", description="place field centre x"),
                "centre_y": var(cy, "px", description="place field centre y"),
                "field_width": var(width, "px", description="place: Gaussian s.d.; border: half-response distance"),
                "field_radius": var(radius, "px", description="place: radius where it drives the readout"),
                "spacing": var(spacing, "px", description="grid: distance between neighbouring peaks"),
                "orientation": var(orient, "degree", description="grid: angle of the first wave vector"),
                "phase_x": var(px, "px", description="grid: x of one peak"),
                "phase_y": var(py, "px", description="grid: y of one peak"),
                "wall": var(wall.astype(str), description="border: " + ", ".join(WALLS) + " (north: y = 0)"),
                "baseline": var(base, description="untuned: mean response"),
                "readout_weight": var(self.readout.weight.detach().cpu().numpy().astype(float)),
                "readout_threshold": var(self.readout.threshold.cpu().numpy().astype(float)),
            },
            coords={"unit": np.arange(u), "site": ("unit", np.array(["units"] * u)),
                    "index_in_population": ("unit", index)},
            attrs={"subject": "phantom", "seed": self.seed, "canvas": self.canvas, "noise": self.noise,
                   "noise_seed": self.noise_seed,
                   "class_names": list(self.class_names), "readout_gain": self.readout.gain,
                   "readout_criterion": self.readout.criterion,
                   "readout": "logit('a stimulus') = gain * (sum_i weight_i * relu(u_i - threshold_i) - criterion); "
                              "logit('an empty image') = 0"},
        )


def build(seed: int = 0, **kwargs) -> Phantom:
    """The phantom subject, in eval mode (factory `"rig.phantom:build"`); keyword arguments as `Phantom`."""
    try:
        return Phantom(seed=seed, **kwargs).eval()
    except TypeError as e:  # an unknown keyword argument
        raise SubjectError(f"phantom: {e}; see rig.phantom.Phantom for the settings") from None


def _lattice(n: int, canvas: int) -> tuple[np.ndarray, float]:
    """`n` centres on a row-major lattice over the canvas (`(n, 2)` px) and its largest step (px).

    `rows = round(sqrt(n))` rows of `floor` or `ceil(n / rows)` evenly spread centres, so no point of the
    canvas is farther than `step / sqrt(2)` from a centre.
    """
    rows = max(1, round(math.sqrt(n)))
    per_row = np.full(rows, n // rows) + (np.arange(rows) < n % rows)
    out = [np.stack([(np.arange(k) + 0.5) * canvas / k, np.full(k, (row + 0.5) * canvas / rows)], -1)
           for row, k in enumerate(per_row)]
    return np.concatenate(out), canvas / min(rows, int(per_row.min()))


def _draw(rng: np.random.Generator, value: float | Sequence[float], n: int, name: str) -> np.ndarray:
    """`n` values uniform in `(lo, hi)` px, or all equal to one number; must be > 0."""
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if not 0 < lo <= hi:
        raise SubjectError(f"{name} must be a positive number or (lo, hi) with 0 < lo <= hi px, got {value!r}")
    return rng.uniform(lo, hi, n) if hi > lo else np.full(n, float(lo))


def _check(**settings: float) -> None:
    for name in ("n_place", "n_grid", "n_border", "n_untuned", "canvas", "seed"):
        v = settings[name]
        if int(v) != v or v < 0:
            raise SubjectError(f"{name} must be a non-negative integer, got {v!r}")
    if settings["n_place"] < 1:
        raise SubjectError("n_place must be >= 1: the behaviour readout is driven by place units")
    if settings["canvas"] < 8:
        raise SubjectError(f"canvas must be at least 8 px, got {settings['canvas']!r}")
    if settings["noise"] < 0:
        raise SubjectError(f"noise must be a non-negative s.d., got {settings['noise']!r}")
    if not 0 < settings["readout_threshold"] < 1:
        raise SubjectError(f"readout_threshold must be in (0, 1), got {settings['readout_threshold']!r}")
    if not 0 <= settings["place_jitter"] < 0.5:
        raise SubjectError(f"place_jitter must be in [0, 0.5) lattice steps, got {settings['place_jitter']!r}")
    if not 0 <= settings["contrast_floor"] < 1:
        raise SubjectError(f"contrast_floor must be in [0, 1), got {settings['contrast_floor']!r}")
    if settings["presence_scale"] <= 0:
        raise SubjectError(f"presence_scale must be > 0 px^2, got {settings['presence_scale']!r}")
