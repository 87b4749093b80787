"""Figures a reader can read: text of 8 pt or more at the saved size, colour bars with units, a distinct colour
per site, the null and the threshold on the score distributions, widths that fit the report unshrunk."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.text import Text

from analyses.spatial_figures import compare_preparations, score_distributions, site_styles, top_units_figure

SCORES = ("spatial_information", "grid_score", "border_score")
DPI = 110  # what the session saves figures at (rig.layout.SessionLayout.write_figure)
REPORT_PX = 1240  # the report's content width: wider figures would be shrunk


def drawn_text(fig) -> list[Text]:
    """Every visible, non-empty text of a figure after drawing it (tick labels included)."""
    fig.savefig(io.BytesIO(), dpi=DPI, format="png")
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def assert_readable(fig) -> None:
    small = [(t.get_text(), t.get_fontsize()) for t in drawn_text(fig) if t.get_fontsize() < 8]
    assert not small, small
    assert fig.get_figwidth() * DPI <= REPORT_PX, fig.get_figwidth() * DPI


def colour_bars(fig) -> list:
    return [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def site_table(n_sites: int, n_units: int = 50, null_sd: float = 1.0, seed: int = 0) -> xr.Dataset:
    """A spatial_scores-like table along `cell`: scores, per-unit null mean 0 and sd `null_sd`, p-values."""
    rng = np.random.default_rng(seed)
    n = n_sites * n_units
    data = {}
    for k in SCORES:
        data[k] = ("cell", rng.normal(1.0, 1.0, n))
        data[f"{k}_null_mean"] = ("cell", np.zeros(n))
        data[f"{k}_null_sd"] = ("cell", np.full(n, null_sd))
        data[f"{k}_p"] = ("cell", np.linspace(0.001, 1, n))
    site = np.repeat([f"block {i}.attn" for i in range(n_sites)], n_units)
    return xr.Dataset(data, coords={"site": ("cell", site)}, attrs={"alpha": 0.05})


def test_site_styles_are_distinct_for_many_sites():
    twelve = site_styles(12)
    rgb = [np.array(to_rgb(c)) for c, _ in twelve]
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)) > 0.1
    assert {s for _, s in twelve} == {"-"}  # 12 sites: colours alone tell them apart
    many = [(to_rgb(c), s) for c, s in site_styles(60)]
    assert len(set(many)) == 60


def test_top_units_figure_has_a_colour_bar_unit_names_and_readable_text():
    rng = np.random.default_rng(1)
    maps = {f"layer{i}": rng.normal(size=(40, 10, 10)) for i in range(12)}
    scores = {s: {k: rng.normal(size=40) for k in SCORES} for s in maps}
    names = {s: [f"{u} ({u // 7},{u % 7})" for u in range(40)] for s in maps}  # channel (map_y, map_x)
    fig = top_units_figure(maps, scores, k=5, labels=names, title="top units")
    assert_readable(fig)
    (bar,) = colour_bars(fig)
    assert "sd" in bar.ax.get_ylabel() and bar.vmin == -3 and bar.vmax == 3
    best = int(np.argmax(scores["layer0"]["grid_score"]))
    titles = [ax.get_title().split("\n") for ax in fig.axes]  # name (broken where too wide), score
    assert [f"{best}", f"({best // 7},{best % 7})", f"{scores['layer0']['grid_score'][best]:.2f}"] in titles \
        or [f"{best} ({best // 7},{best % 7})", f"{scores['layer0']['grid_score'][best]:.2f}"] in titles
    # maps of different scale share the colour bar: each panel is z-scored over its visited bins
    image = fig.axes[0].get_images()[0].get_array()
    assert abs(float(image.mean())) < 1e-6 and abs(float(image.std()) - 1) < 1e-6


def test_score_distributions_show_the_null_and_the_threshold():
    table = site_table(12)
    fig = score_distributions(table)
    assert_readable(fig)
    for ax in fig.axes[:3]:
        assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the null
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        assert len(dashed) == 1
        np.testing.assert_allclose(dashed[0].get_xdata()[0], 1.6449, atol=1e-3)  # null mean + z(0.95) sd
        assert ax.get_title() == f"{int(np.sum(table['grid_score_p'].values <= 0.05))} of 600 units p \u2264 0.05"
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:12] == [f"block {i}.attn" for i in range(12)] and "shuffle null (per site)" in labels
    colours = {tuple(to_rgb(h.get_edgecolor())) for h in legend.legend_handles[:12]}
    assert len(colours) == 12


def test_score_distributions_without_nulls_and_from_a_mapping():
    rng = np.random.default_rng(2)
    scores = {f"s{i}": {k: rng.normal(size=30) for k in SCORES} for i in range(3)}
    fig = score_distributions(scores)
    assert_readable(fig)
    assert not any(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)
    assert all(ax.get_xlabel() for ax in fig.axes)


def test_compare_preparations_is_readable():
    table = site_table(2)
    fig = compare_preparations(table, table, labels=("trained", "random"))
    assert_readable(fig)
    assert fig.axes[0].get_xlabel() == "spatial information (bits/spike)"


@pytest.fixture(scope="module")
def circles():
    import stimuli

    return stimuli.circles(n=64, canvas=64, diameter=(6, 20), seed=0)


def test_stimulus_figures_are_readable_and_the_overview_has_a_colour_bar(circles):
    from stimuli.figures import contact_sheet, figure_types, overview

    assert_readable(contact_sheet(circles))
    fig = overview(circles)
    assert_readable(fig)
    (bar,) = colour_bars(fig)
    assert bar.ax.get_ylabel() == "diameter (px)"
    assert "colour bar" in figure_types.lookup("overview").caption


def test_score_distributions_say_when_too_few_shuffles_were_run():
    table = site_table(2).assign_attrs(shuffles=10)  # p >= 1/11 > 0.05: no unit can be significant
    assert score_distributions(table).axes[0].get_title() == "p \u2264 0.05 needs \u2265 19 shuffles"
    assert score_distributions(table.assign_attrs(shuffles=19)).axes[0].get_title().endswith("units p \u2264 0.05")
