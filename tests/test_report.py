"""HTML reports: content, escaping of everything a user wrote, working relative links, no network."""
from __future__ import annotations

import argparse
import base64
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from archive_fixtures import T0, live_running, make_session

from rig.archive_cli import add_parsers
from rig.report import write_index, write_reports, write_session_report

EVIL = "<script>alert(\"x\")</script> & 'quoted' \"name\""


class Links(HTMLParser):
    """Collects tags, hrefs, img srcs and the page text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "a":
            self.hrefs.append(a["href"] or "")
        if tag == "img":
            self.srcs.append(a["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> Links:
    p = Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def assert_self_contained(html: str) -> None:
    assert "<script" not in html.lower()
    assert not re.search(r"(src|href)\s*=\s*\"?(https?:)?//", html), "page refers to the network"
    assert "@import" not in html and "url(" not in html


@pytest.fixture
def evil_session(tmp_path: Path) -> Path:
    return make_session(tmp_path, name=EVIL, slug="evil name&co", description=EVIL, figures=("ratemaps", "a b#c"),
                        headline={"frac_spatial": 0.123456, EVIL: EVIL},
                        resolved={"behaviour": {"prompts": [EVIL], "target": EVIL}},
                        error={"type": "RuntimeError", "message": EVIL, "traceback": "Traceback\n  " + EVIL,
                               "step": "record"}, status="failed")


def test_session_report_escapes_everything_a_user_wrote(evil_session: Path) -> None:
    path = write_session_report(evil_session)
    assert path == evil_session / "report.html"
    html = path.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert EVIL not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    page = parse(path)
    text = "".join(page.text)
    # the decoded text shows the strings verbatim: protocol file, description, error, headline, settings
    assert 'name = "<script>alert(\\"x\\")</script>' in text  # the TOML, verbatim
    assert text.count(EVIL) >= 5
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "p", "a", "h1", "h2", "h3", "span",
                              "code", "table", "thead", "tbody", "tr", "th", "td", "pre", "strong", "figure",
                              "img", "figcaption"}
    assert not list(evil_session.glob("*.partial"))


def test_session_report_links_and_figures_resolve(evil_session: Path) -> None:
    path = write_session_report(evil_session)
    page = parse(path)
    assert sorted(unquote(s) for s in page.srcs) == ["figures/a b#c.png", "figures/ratemaps.png"]
    assert all((evil_session / unquote(s)).is_file() for s in page.srcs)
    files = [h for h in page.hrefs if not h.startswith("../")]
    assert {unquote(h) for h in files} >= {"stimuli.nc", "log.txt", "protocol.toml", "figures/a b#c.png"}
    assert all((evil_session / unquote(h)).is_file() for h in files)
    assert "#" not in "".join(page.srcs)  # a '#' in a file name must not become a URL fragment


def test_session_report_content(tmp_path: Path) -> None:
    folder = make_session(tmp_path, headline={"frac_spatial": 0.123456, "best_site": "resblocks.9"},
                          resolved={"stimuli": {"n": 777}})
    html = write_session_report(folder).read_text(encoding="utf-8")
    text = "".join(parse(folder / "report.html").text)
    assert "0.1235" in text and "resblocks.9" in text  # key results, 4 significant digits
    assert "stimuli.n" in text and "777" in text  # resolved settings, flattened
    assert "packages.torch" in text and "2.14.1" in text  # provenance
    assert "analyse/ratemaps" in text and "completed" in text and "1.2 kB" in text
    assert "Error" not in text
    assert 'http-equiv="refresh"' not in html  # only running sessions reload themselves


def test_running_session_report_reloads(tmp_path: Path) -> None:
    folder = live_running(tmp_path, datetime.now(timezone.utc))
    assert 'http-equiv="refresh"' in write_session_report(folder).read_text(encoding="utf-8")


def test_embedded_figures_are_the_png_bytes(tmp_path: Path) -> None:
    folder = make_session(tmp_path)
    page = parse(write_session_report(folder, embed=True))
    (src,) = page.srcs
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == (folder / "figures" / "ratemaps.png").read_bytes()


def test_index_lists_sessions_newest_first_with_links(tmp_path: Path, evil_session: Path) -> None:
    old = make_session(tmp_path, hexid="000000", created=T0 - timedelta(days=1), headline={"frac_spatial": 0.5})
    no_report = make_session(tmp_path, hexid="111111", created=T0 - timedelta(days=2))
    write_session_report(old)
    write_session_report(evil_session)
    index = write_index(tmp_path)
    assert index == tmp_path / "index.html"
    html = index.read_text(encoding="utf-8")
    assert_self_contained(html)
    assert EVIL not in html
    page = parse(index)
    assert [unquote(h) for h in page.hrefs] == [f"{evil_session.name}/report.html", f"{old.name}/report.html"]
    assert all((tmp_path / unquote(h)).is_file() for h in page.hrefs)
    text = "".join(page.text)
    assert text.index(evil_session.name) < text.index(old.name) < text.index(no_report.name)
    assert "failed" in text and "completed" in text and "0.5" in text and "frac_spatial" in text
    # a report links back to the index only where there is one
    assert "../index.html" not in parse(evil_session / "report.html").hrefs
    assert "../index.html" in parse(write_session_report(evil_session)).hrefs


def test_write_reports_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_session(tmp_path, hexid="aaaaaa")
    b = make_session(tmp_path, hexid="bbbbbb", created=T0 + timedelta(hours=1))
    written = write_reports(tmp_path, ["aaaaaa"])
    assert written == [a / "report.html", tmp_path / "index.html"] and not (b / "report.html").exists()
    assert "../index.html" in parse(a / "report.html").hrefs
    parser = argparse.ArgumentParser(prog="rig")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", "--archive", str(tmp_path)])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.split() == [str(b / "report.html"), str(a / "report.html"),
                                               str(tmp_path / "index.html")]
    # rm refreshes the index: no dead link is left
    args = parser.parse_args(["rm", "--archive", str(tmp_path), "aaaaaa", "--yes"])
    assert args.handler(args) == 0
    assert [unquote(h) for h in parse(tmp_path / "index.html").hrefs] == [f"{b.name}/report.html"]
