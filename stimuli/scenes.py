"""Saliency-manipulated scenes: the five-condition distractor design of "Saliency Suppressed, Semantics
Surfaced" (study 000), from a user's captioned image folder or from built-in procedural scenes.

Every base image is shown in five conditions: `Baseline` (as it is) and four with a *distractor* pasted in: a
second image of the pool resized to `distractor_area` (10%) of the base's area, aspect kept, pasted fully inside,
flush with a random edge at a random position along it. The distractor is semantically *similar* (cosine
distance of the images' mean caption embeddings below `similar_below`, 0.32) or *dissimilar* (above
`dissimilar_above`, 0.92), and *salient* (cosine distance between the flattened 224 x 224 saliency maps before
and after pasting above `salient_above`, 0.24) or not (below `non_salient_below`, 0.019):

    Control = similar, not salient     Salient = similar, salient
    Semantic = dissimilar, not salient  Semantic_Salient = dissimilar, salient

For each base and condition, up to `tries` candidates (a distractor meeting the semantic criterion, an edge and
a position) are measured; a base is kept only when all four conditions are found (as in the study). Each
stimulus stores its base, condition, distractor, edge, paste box and the two measured distances.

Procedural scenes (`source = "procedural"`, runs offline): 1-3 objects of one of three super-categories (a scene
is a farm, a street or a meal; nine classes in `analyses.semantics.CLASSES`, each drawn as its own shape and hue) and a caption written from what was
drawn ("a cat and a boat on a grey background"); semantic distances from the concept encoder of that vocabulary
(or `semantics = "minilm"`, ...). Bases lie on one mid grey; half of the distractor pool is faint (the same grey,
objects mixed 85% into it: nearly invisible once pasted), half bold (black or white ground, fully saturated
objects; the bases' objects are muted: saturation 0.4-0.7, value 0.55-0.8),
so that both non-salient and salient distractors exist. The ground-truth object masks are the `masks` extra
(label 1..3: the base's objects in drawing order, 4: the distractor's objects; 0 background).

A folder (`source = "folder"`, `images = "path/to/folder"`, `captions = "captions.json"` COCO-style, or a CSV
with columns `file,caption`, one row per caption): bases and distractors come from the folder; images are
centre-cropped to squares and resized to `canvas`.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from .base import StimulusError, StimulusSet, register_renderer
from .catalog import register_generator
from .figures import register_figure

CONDITIONS = ("Baseline", "Control", "Salient", "Semantic", "Semantic_Salient")
#: condition -> (semantically similar, salient)
DESIGN = {"Control": (True, False), "Salient": (True, True), "Semantic": (False, False), "Semantic_Salient": (False, True)}
EDGES = ("top", "right", "bottom", "left")
SHAPES = ("circle", "square", "triangle")
MAX_OBJECTS = 3
MAP_SIZE = 224  # saliency maps are compared at 224 x 224, as in the study
_CACHE: dict[str, xr.Dataset] = {}  # generation is expensive (saliency of every candidate): once per process


def class_style(name: str) -> tuple[str, float]:
    """(shape, hue in degrees) of a procedural object class: shapes cycle, hues 40 degrees apart."""
    from analyses.semantics import CLASSES

    k = list(CLASSES).index(name)
    return SHAPES[k % 3], 40.0 * k


@register_generator("scenes")
def scenes(source: str = "procedural", n: int | None = 20, canvas: int = 224, seed: int = 0,
           images: str | None = None, captions: str | None = None, pool: int | None = None,
           conditions: Sequence[str] = CONDITIONS, distractor_area: float = 0.10, salient_above: float = 0.24,
           non_salient_below: float = 0.019, similar_below: float = 0.32, dissimilar_above: float = 0.92,
           tries: int = 12, saliency: str = "itti_koch", semantics: str | None = None) -> StimulusSet:
    """The five-condition distractor design (see the module docstring).

    Args:
        source: "procedural" (built-in scenes) or "folder" (`images` + `captions`).
        n: base images to keep (all of a folder's that qualify when None); the set has `n x len(conditions)`
            stimuli, ordered base-major (base 0 in every condition, then base 1, ...).
        canvas: side of the square images, pixels.
        pool: procedural only: distractor candidates drawn besides the bases (default 4 n; bases: 2 n + 4).
        conditions: which of the five conditions to show (all are searched: a base needs all four distractors).
        distractor_area: the distractor's area as a fraction of the base's.
        salient_above, non_salient_below: thresholds on the saliency-map cosine distance.
        similar_below, dissimilar_above: thresholds on the caption-embedding cosine distance.
        tries: candidates measured per base and condition before the base is dropped.
        saliency: the saliency model of the criterion (`itti_koch`, `spectral_residual`).
        semantics: the text encoder of the criterion: "concepts" (default for procedural scenes), "minilm"
            (default for folders; `pip install "rig[semantics]"`), "clip:ARCH[:WEIGHTS]", or a file of per-image
            embeddings (.npy, rows in the folder's sorted file order).
    """
    settings = _settings(source, n, canvas, seed, pool, conditions, distractor_area, salient_above,
                         non_salient_below, similar_below, dissimilar_above, tries, saliency)
    _check_sources(source, images, captions)
    if source == "folder":
        root, files, caption_lists = _read_folder(images, captions)
        semantics = semantics or "minilm"
        pool_ds = xr.Dataset({"pool_file": ("image", np.array(files)),
                              "pool_caption": ("image", np.array(["\n".join(c) for c in caption_lists]))})
        settings.update(images=str(root), captions=str(captions))
    else:
        n_base = 20 if n is None else int(n)
        n_pool = 4 * n_base if pool is None else int(pool)
        # more bases than asked for: a base is dropped when one of its four distractors is not found
        pool_ds = _procedural_pool(2 * n_base + 4, n_pool, np.random.default_rng(seed))
        semantics = semantics or "concepts"
        root = None
    settings["semantics"] = str(semantics)
    key = json.dumps(settings, sort_keys=True) + (_files_stamp(root, pool_ds) if root is not None else "")
    if key not in _CACHE:
        _CACHE[key] = _design(pool_ds, settings, root)
    params = _CACHE[key].copy()
    return StimulusSet(params)


def _settings(source: str, n: int | None, canvas: int, seed: int, pool: int | None, conditions: Sequence[str],
              distractor_area: float, salient_above: float, non_salient_below: float, similar_below: float,
              dissimilar_above: float, tries: int, saliency: str) -> dict[str, Any]:
    """The design's settings, checked (cheap: nothing is drawn or measured)."""
    if source not in ("procedural", "folder"):
        raise StimulusError(f"source must be 'procedural' or 'folder', got {source!r}", "source")
    _check_number(canvas, "canvas", 16)
    if n is not None:
        _check_number(n, "n", 1)
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad or not conditions or isinstance(conditions, str):
        raise StimulusError(f"conditions must be a list drawn from {list(CONDITIONS)}, got {conditions!r}", "conditions")
    if not 0 < distractor_area < 1:
        raise StimulusError(f"distractor_area must be a fraction in (0, 1), got {distractor_area!r}", "distractor_area")
    if not 0 <= non_salient_below <= salient_above or not 0 <= similar_below <= dissimilar_above:
        raise StimulusError("thresholds must satisfy 0 <= non_salient_below <= salient_above and 0 <= similar_below "
                            "<= dissimilar_above", "salient_above")
    _check_number(tries, "tries", 1)
    if saliency not in ("itti_koch", "spectral_residual"):
        raise StimulusError(f"saliency must be 'itti_koch' or 'spectral_residual', got {saliency!r}", "saliency")
    settings = dict(source=source, n=n, canvas=int(canvas), seed=int(seed), pool=pool, conditions=list(conditions),
                    distractor_area=float(distractor_area), salient_above=float(salient_above),
                    non_salient_below=float(non_salient_below), similar_below=float(similar_below),
                    dissimilar_above=float(dissimilar_above), tries=int(tries), saliency=saliency)
    return settings


def _check_sources(source: str, images: str | None, captions: str | None) -> None:
    if source == "folder" and (not images or not captions):
        raise StimulusError("source = 'folder' needs images = '<folder>' and captions = '<captions.json or .csv>'",
                            "images")
    if source != "folder" and (images is not None or captions is not None):
        raise StimulusError("images and captions are for source = 'folder'", "images")


def check_scenes(**params: Any) -> None:
    """`scenes`' parameters checked without the distractor search (for `rig validate`): every setting, and for
    a folder that the folder and its captions file exist and the captions parse."""
    import inspect

    try:
        bound = inspect.signature(scenes).bind(**params)
    except TypeError as e:
        raise StimulusError(str(e)) from None
    bound.apply_defaults()
    a = bound.arguments
    _settings(a["source"], a["n"], a["canvas"], a["seed"], a["pool"], a["conditions"], a["distractor_area"],
              a["salient_above"], a["non_salient_below"], a["similar_below"], a["dissimilar_above"], a["tries"],
              a["saliency"])
    _check_sources(a["source"], a["images"], a["captions"])
    if a["source"] == "folder":
        _read_folder(a["images"], a["captions"])


scenes.check = check_scenes  # type: ignore[attr-defined]  (see stimuli.catalog.register_generator)


@register_figure("conditions", requires=("condition", "base"),
                 caption="Example base images (rows) in each condition (columns): the pasted distractor's saliency "
                         "distance (sal) and semantic distance (sem) to the base are given above each image.")
def conditions_figure(stimulus_set: StimulusSet, bases: int = 4) -> Any:
    """A grid of `bases` base images (rows) in every condition of the set (columns), titled with the measured
    saliency and semantic distances of the pasted distractor."""
    from matplotlib.figure import Figure

    p = stimulus_set.params
    conds = list(dict.fromkeys(p["condition"].values.astype(str)))
    chosen = list(dict.fromkeys(p["base"].values.tolist()))[:bases]
    fig = Figure(figsize=(1.9 * len(conds), 2.0 * len(chosen) + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(chosen), len(conds), squeeze=False))
    for r, b in enumerate(chosen):
        for c, cond in enumerate(conds):
            ax = axes[r, c]
            ax.set(xticks=[], yticks=[])
            hit = np.flatnonzero((p["base"].values == b) & (p["condition"].values.astype(str) == cond))
            if not len(hit):
                continue
            i = int(hit[0])
            ax.imshow(stimulus_set.render([i])[0].transpose(1, 2, 0), vmin=0, vmax=1)
            title = cond.replace("_", " ") if r == 0 else ""
            if cond != "Baseline":
                title += f"{chr(10) if title else ''}sal {p['saliency_distance'].values[i]:.3f} " \
                         f"sem {p['semantic_distance'].values[i]:.2f}"
            ax.set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(f"base {b}", fontsize=8)
    return fig


# ----------------------------------------------------------------------------------------------------------
# the design search


def _design(pool_ds: xr.Dataset, s: dict, root: Path | None) -> xr.Dataset:
    from analyses.saliency import resize, saliency_model
    from analyses.semantics import cosine_distance

    rng = np.random.default_rng([s["seed"], 1])
    canvas = s["canvas"]
    attrs = {"generator": "scenes", "renderer": "scenes", "canvas": canvas, "seed": s["seed"],
             "source": s["source"], **{k: s[k] for k in ("distractor_area", "salient_above", "non_salient_below",
                                                           "similar_below", "dissimilar_above", "tries", "saliency",
                                                           "semantics")}}
    if root is not None:
        attrs.update(root=str(root), files="pool_file")
    else:
        attrs.update(extras=json.dumps(["masks"]), mask_labels=json.dumps(["object 1", "object 2", "object 3",
                                                                           "distractor"]))
    n_pool = pool_ds.sizes["image"]
    embeddings = _pool_embeddings(pool_ds, s["semantics"], root)
    sem = np.stack([cosine_distance(embeddings[i], embeddings) for i in range(n_pool)])  # (pool, pool)
    sal_fn = saliency_model(s["saliency"])
    probe = xr.Dataset(pool_ds.data_vars, attrs=attrs)

    def maps(images: np.ndarray) -> np.ndarray:
        m = resize(sal_fn(images).astype(np.float64), (MAP_SIZE, MAP_SIZE))
        return m.reshape(len(m), -1)

    bases = np.flatnonzero(pool_ds["is_base"].values) if "is_base" in pool_ds else np.arange(n_pool)
    bases = rng.permutation(bases)
    want = len(bases) if s["n"] is None else s["n"]
    side = canvas * np.sqrt(s["distractor_area"])
    rows, failures = [], {c: 0 for c in DESIGN}
    for b in bases:
        if len(rows) // 5 >= want:
            break
        base_img = _render_pool(probe, [int(b)], canvas)[0][0]
        base_map = maps(base_img[None])[0]
        found = {}
        for cond, (similar, salient) in DESIGN.items():
            ok = (sem[b] < s["similar_below"]) if similar else (sem[b] > s["dissimilar_above"])
            ok[b] = False
            if "is_base" in pool_ds:
                ok &= ~pool_ds["is_base"].values
            eligible = np.flatnonzero(ok)
            if not salient and "faint" in pool_ds:  # procedural: faint distractors first for non-salient conditions
                faint = pool_ds["faint"].values[eligible]
                eligible = np.r_[rng.permutation(eligible[faint]), rng.permutation(eligible[~faint])]
            else:
                eligible = rng.permutation(eligible)
            if not len(eligible):
                failures[cond] += 1
                break
            order = np.resize(eligible, s["tries"])  # a distractor may come back at another edge or position
            for start in range(0, s["tries"], 4):
                cands = []
                for d in order[start:start + 4]:
                    edge = EDGES[rng.integers(4)]
                    box = _paste_box(edge, rng.random(), canvas, side)
                    cands.append((int(d), edge, box))
                pasted = np.stack([_paste(base_img, _render_pool(probe, [d], canvas)[0][0], box)
                                   for d, _, box in cands])
                dist = cosine_distance(base_map[None], maps(pasted))
                hit = np.flatnonzero(dist > s["salient_above"] if salient else dist < s["non_salient_below"])
                if len(hit):
                    d, edge, box = cands[hit[0]]
                    found[cond] = (d, edge, box, float(dist[hit[0]]), float(sem[b, d]))
                    break
            if cond not in found:
                failures[cond] += 1
                break
        if len(found) == 4:
            rows.append((int(b), "Baseline", -1, "", (0, 0, 0, 0), 0.0, 0.0))
            rows.extend((int(b), c, *found[c]) for c in DESIGN)
    kept = len(rows) // 5
    if kept == 0 or (s["n"] is not None and kept < s["n"]):
        worst = max(failures, key=failures.get)
        raise StimulusError(f"only {kept} of {want} base images found all four distractors ({failures[worst]} failed "
                            f"the {worst} condition within {s['tries']} tries); raise tries, give a larger pool or "
                            "folder, or loosen the thresholds", "tries")
    rows = [r for r in rows if r[1] in s["conditions"]]
    col = list(zip(*rows))
    boxes = np.array(col[4], dtype=np.int64)
    params = xr.Dataset(
        {**{k: v for k, v in pool_ds.data_vars.items()}},
        coords={
            "stimulus": np.arange(len(rows)),
            "base": ("stimulus", np.array(col[0])),
            "condition": ("stimulus", np.array(col[1])),
            "distractor": ("stimulus", np.array(col[2])),
            "edge": ("stimulus", np.array(col[3])),
            "paste_x": ("stimulus", boxes[:, 0], {"units": "px", "long_name": "distractor's left edge"}),
            "paste_y": ("stimulus", boxes[:, 1], {"units": "px", "long_name": "distractor's top edge"}),
            "paste_w": ("stimulus", boxes[:, 2], {"units": "px"}),
            "paste_h": ("stimulus", boxes[:, 3], {"units": "px"}),
            "saliency_distance": ("stimulus", np.array(col[5]), {"long_name": "cosine distance of the saliency "
                                                                 "maps before and after pasting"}),
            "semantic_distance": ("stimulus", np.array(col[6]), {"long_name": "cosine distance of the base's and "
                                                                 "the distractor's caption embeddings"}),
        },
        attrs=attrs)
    params["caption"] = ("stimulus", pool_ds["pool_caption"].values[params["base"].values])
    return params


def _paste_box(edge: str, u: float, canvas: int, side: float) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) of a square distractor of side `side` (every image is squared when loaded, so keeping the
    aspect keeps it square) flush with `edge`, at fraction u along it."""
    w = h = int(np.clip(round(side), 1, canvas))
    if edge in ("top", "bottom"):
        x0, y0 = int(round(u * (canvas - w))), (0 if edge == "top" else canvas - h)
    else:
        x0, y0 = (0 if edge == "left" else canvas - w), int(round(u * (canvas - h)))
    return x0, y0, w, h


def _paste(base: np.ndarray, distractor: np.ndarray, box: Sequence[int]) -> np.ndarray:
    from analyses.saliency import resize

    x0, y0, w, h = (int(v) for v in box)
    out = base.copy()
    out[:, y0:y0 + h, x0:x0 + w] = np.clip(resize(distractor, (h, w)), 0, 1)  # resampling rounds past 1
    return out


# ----------------------------------------------------------------------------------------------------------
# rendering


@register_renderer("scenes")
def render_scenes(params: xr.Dataset) -> dict[str, np.ndarray]:
    """Images `(B, 3, canvas, canvas)` (the base with its distractor pasted, if any) and, for procedural scenes,
    their `masks` `(B, canvas, canvas)` int labels."""
    from analyses.saliency import resize

    canvas = int(params.attrs["canvas"])
    base, dis = params["base"].values, params["distractor"].values
    boxes = np.stack([params[k].values for k in ("paste_x", "paste_y", "paste_w", "paste_h")], axis=1)
    used = sorted(set(base.tolist()) | set(dis[dis >= 0].tolist()))
    images, masks = _render_pool(params, used, canvas)
    at = {p: i for i, p in enumerate(used)}
    out = np.stack([images[at[b]] for b in base])
    mask_out = None if masks is None else np.stack([masks[at[b]] for b in base])
    for k in np.flatnonzero(dis >= 0):
        out[k] = _paste(out[k], images[at[dis[k]]], boxes[k])
        if mask_out is not None:
            x0, y0, w, h = boxes[k]
            small = resize((masks[at[dis[k]]] > 0).astype(np.float32), (h, w)) >= 0.5
            region = mask_out[k, y0:y0 + h, x0:x0 + w]
            region[:] = 0
            region[small] = MAX_OBJECTS + 1
    result = {"image": np.clip(out, 0, 1)}
    if mask_out is not None:
        result["masks"] = mask_out
    return result


def _render_pool(params: xr.Dataset, which: Sequence[int], canvas: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Images `(k, 3, canvas, canvas)` of pool entries, and their object masks (procedural) or None."""
    if "pool_file" in params:
        root = Path(str(params.attrs.get("root", "")))
        return np.stack([_load_square(root / str(params["pool_file"].values[i]), canvas) for i in which]), None
    return _draw_procedural(params.isel(image=list(which)), canvas)


def _draw_procedural(p: xr.Dataset, canvas: int) -> tuple[np.ndarray, np.ndarray]:
    from .geometry import _sdf_circle, _sdf_square, _sdf_triangle

    sdf = {"circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle}
    k = p.sizes["image"]
    bg = p["background"].values.astype(np.float32)
    img = np.broadcast_to(bg[:, :, None, None], (k, 3, canvas, canvas)).copy()
    mask = np.zeros((k, canvas, canvas), np.int64)
    c = np.arange(canvas, dtype=np.float32) + 0.5
    for j in range(p.sizes["object"]):
        for i in range(k):
            name = str(p["object_class"].values[i, j])
            if not name:
                continue
            shape, _ = class_style(name)
            cx, cy, size = (float(p[v].values[i, j]) * canvas for v in ("object_x", "object_y", "object_size"))
            d = sdf[shape](c[None, :] - cx, c[:, None] - cy, np.float32(size / 2))
            cover = np.clip(0.5 - d, 0, 1)
            colour = p["object_color"].values[i, j].astype(np.float32)[:, None, None]
            img[i] = img[i] * (1 - cover) + colour * cover
            mask[i][cover >= 0.5] = j + 1
    return img, mask


def _load_square(path: Path, canvas: int) -> np.ndarray:
    """An image file as `(3, canvas, canvas)` float32 in [0, 1]: centre-cropped to a square, resized (area)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((canvas, canvas), Image.Resampling.BOX if s > canvas else Image.Resampling.BILINEAR)
            return np.asarray(im, np.float32).transpose(2, 0, 1) / 255
    except OSError as e:
        raise StimulusError(f"cannot read image {path} ({e}); the scene set renders from it", "images") from None


# ----------------------------------------------------------------------------------------------------------
# pools


def _procedural_pool(n_base: int, n_pool: int, rng: np.random.Generator) -> xr.Dataset:
    """`n_base` bases (2-3 objects, full contrast) and `n_pool` distractor candidates (1-2 objects; half faint)."""
    from analyses.semantics import CLASSES, SUPER

    names = list(CLASSES)
    total = n_base + n_pool
    is_base = np.arange(total) < n_base
    faint = ~is_base & (rng.random(total) < 0.5)
    # one grey world, so that a faint distractor blends into any base; bold distractors on black or white
    background = np.where((is_base | faint)[:, None], 0.5, rng.choice([0.05, 0.95], size=total)[:, None]) * np.ones(3)
    cls = np.full((total, MAX_OBJECTS), "", dtype=object)
    colour = np.zeros((total, MAX_OBJECTS, 3))
    ox, oy, size = (np.zeros((total, MAX_OBJECTS)) for _ in range(3))
    captions = []
    for i in range(total):
        k = rng.integers(2, 4) if is_base[i] else rng.integers(1, 3)
        theme = np.flatnonzero(np.array([CLASSES[c] for c in names]) == SUPER[rng.integers(len(SUPER))])
        chosen = rng.choice(theme, size=k, replace=False)  # one super-category per scene: a farm, a street, a meal
        for j, c in enumerate(chosen):
            cls[i, j] = names[c]
            hue = class_style(names[c])[1]
            rgb = _hsv(hue, *((rng.uniform(0.4, 0.7), rng.uniform(0.55, 0.8)) if is_base[i] else (1.0, 1.0)))
            colour[i, j] = background[i] + 0.15 * (rgb - background[i]) if faint[i] else rgb
            size[i, j] = rng.uniform(0.2, 0.32)
            ox[i, j] = rng.uniform(size[i, j] / 2, 1 - size[i, j] / 2)
            oy[i, j] = rng.uniform(size[i, j] / 2, 1 - size[i, j] / 2)
        objects = [f"a {cls[i, j]}" for j in range(k)]
        ground = "grey" if background[i, 0] == 0.5 else ("black" if background[i, 0] < 0.5 else "white")
        captions.append((", ".join(objects[:-1]) + " and " if k > 1 else "") + objects[-1] + f" on a {ground} background")
    return xr.Dataset({
        "background": (("image", "rgb"), background),
        "object_class": (("image", "object"), cls.astype(str)),
        "object_color": (("image", "object", "rgb"), colour),
        "object_x": (("image", "object"), ox), "object_y": (("image", "object"), oy),
        "object_size": (("image", "object"), size),
        "is_base": ("image", is_base), "faint": ("image", faint),
        "pool_caption": ("image", np.array(captions)),
    })


def _hsv(hue_deg: float, s: float, v: float) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb([hue_deg / 360 % 1, s, v])


def _pool_embeddings(pool_ds: xr.Dataset, semantics: str, root: Path | None) -> np.ndarray:
    from analyses.semantics import caption_embeddings, concept_embedding

    captions = [str(c) for c in pool_ds["pool_caption"].values]
    if semantics == "concepts":
        return caption_embeddings(captions, concept_embedding)
    path = Path(semantics).expanduser()
    if path.suffix == ".npy":
        if not path.is_file():
            raise StimulusError(f"semantic embeddings file {path} not found", "semantics")
        emb = np.load(path)
        if emb.ndim != 2 or len(emb) != len(captions):
            raise StimulusError(f"{path} holds shape {emb.shape}; expected one row per image ({len(captions)})",
                                "semantics")
        return emb
    encode = _text_encoder(semantics)
    return caption_embeddings(captions, encode)


def _text_encoder(spec: str) -> Callable[[list[str]], np.ndarray]:
    """A text encoder by name, from `rig.semantics` when the rig is installed (it is imported lazily: the
    encoders load torch models)."""
    try:
        from rig.semantics import text_encoder
    except ImportError:  # pragma: no cover  (stimuli used without the rig)
        raise StimulusError(f"semantics = {spec!r} needs the rig's text encoders (rig.semantics)", "semantics") from None
    return text_encoder(spec)


def _read_folder(images: str, captions: str) -> tuple[Path, list[str], list[list[str]]]:
    """(root, files relative to it in sorted order, captions per file) of a captioned image folder."""
    root = Path(images).expanduser()
    if not root.is_dir():
        raise StimulusError(f"image folder {root} not found", "images")
    cap_path = Path(captions).expanduser()
    if not cap_path.is_absolute() and not cap_path.is_file():
        cap_path = root / cap_path
    if not cap_path.is_file():
        raise StimulusError(f"captions file {captions} not found (give a COCO-style .json or a .csv with columns "
                            "file,caption)", "captions")
    by_file: dict[str, list[str]] = {}
    if cap_path.suffix.lower() == ".json":
        try:
            data = json.loads(cap_path.read_text(encoding="utf-8"))
            names = {im["id"]: im["file_name"] for im in data["images"]}
            for a in data["annotations"]:
                by_file.setdefault(names[a["image_id"]], []).append(str(a["caption"]).strip())
        except (KeyError, TypeError, ValueError) as e:
            raise StimulusError(f"{cap_path} is not COCO-style captions (images[].id/file_name, annotations[]."
                                f"image_id/caption): {type(e).__name__}: {e}", "captions") from None
    else:
        with open(cap_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = {c.lower(): c for c in (reader.fieldnames or [])}
            file_col = cols.get("file") or cols.get("file_name") or cols.get("filename") or cols.get("image")
            if file_col is None or "caption" not in cols:
                raise StimulusError(f"{cap_path} needs columns file and caption (got {reader.fieldnames})", "captions")
            for row in reader:
                by_file.setdefault(row[file_col], []).append(row[cols["caption"]].strip())
    files = sorted(f for f in by_file if (root / f).is_file())
    missing = sorted(set(by_file) - set(files))
    if len(files) < 5:
        raise StimulusError(f"{root} has {len(files)} captioned images (a scene design needs at least 5)"
                            + (f"; missing files, e.g. {missing[0]}" if missing else ""), "images")
    return root, files, [by_file[f] for f in files]


def _files_stamp(root: Path, pool_ds: xr.Dataset) -> str:
    stats = [(root / str(f)).stat() for f in pool_ds["pool_file"].values]
    return json.dumps([(s.st_size, s.st_mtime_ns) for s in stats])


def _check_number(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise StimulusError(f"{name} must be an integer >= {minimum}, got {value!r}", name)


class _CallableModule(type(json)):
    """This module is also the function `scenes` (`stimuli.scenes(...)`): importing the submodule `stimuli.scenes`
    would otherwise shadow the package's lazy name with the module."""

    def __call__(self, *args: Any, **kwargs: Any) -> StimulusSet:
        return scenes(*args, **kwargs)


import sys  # noqa: E402

sys.modules[__name__].__class__ = _CallableModule
