"""The HTML reports in a real browser: headless Debian chromium driven over the DevTools protocol.

The protocol runs over a pipe (`--remote-debugging-pipe`: commands on fd 3, replies on fd 4, NUL-separated
JSON), so no Python package is needed. Skipped only when chromium is not installed (`.ci/browser-deps.sh`).
"""
from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from archive_fixtures import T0, make_session

from rig.report import write_reports, write_session_report

CHROMIUM = next((p for p in (os.environ.get("RIG_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed; run .ci/browser-deps.sh")]
TIMEOUT_S = 30.0
WIDTH, HEIGHT = 1300, 900  # the window the pages must fit without horizontal overflow


class Chromium:
    """A headless chromium and one page, driven with DevTools protocol commands over a pipe."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        # bash puts our pipe ends on fds 3 and 4, where chromium expects them (dash takes one-digit fds only)
        self.log = profile.with_name("chromium.log")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", str(CHROMIUM), *flags],
            pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.page(f"{domain}.enable")
        self.page("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()}); see {self.log}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict:
        return self.send(method, params, session=self.session)

    def wait_event(self, method: str, after: int) -> dict[str, Any]:
        """The first event `method` among events numbered `after` and later (waiting for it if needed)."""
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for event in self.events[after:]:
                if event.get("method") == method:
                    return event
            self.events.append(self._read_message(deadline))

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        mark = len(self.events)
        self.page("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", mark)

    def click(self, selector: str) -> None:
        """Click the first element matching `selector` and wait for the page it leads to."""
        mark = len(self.events)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        self.wait_event("Page.loadEventFired", mark)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads, CSP violations)."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def screenshot(self, path: Path, full_page: bool = False, max_height: int = 8000) -> bytes:
        """The window (or the whole page, up to `max_height` px) as PNG bytes, also written to `path`."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            height = min(int(self.evaluate("document.documentElement.scrollHeight")), max_height)
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": WIDTH, "height": height,
                                                            "scale": 1})
        data = base64.b64decode(self.page("Page.captureScreenshot", params)["data"])
        path.write_bytes(data)
        return data

    def overflow_px(self) -> int:
        """How far the page is wider than the window (0: no horizontal scrolling)."""
        return int(self.evaluate("document.documentElement.scrollWidth - window.innerWidth"))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path: Path):
    b = Chromium(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def file_of(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", url
    return Path(unquote(parsed.path))


def test_index_and_report_in_chromium(tmp_path: Path, browser: Chromium) -> None:
    from PIL import Image

    root = tmp_path / "archive"
    evil = "<script>alert('x')</script> \"quoted\""
    first = make_session(root, hexid="aaaaaa", figures=("ratemaps", "lesion curve"), headline={"frac": 0.25})
    make_session(root, name=evil, slug="evil", hexid="bbbbbb", created=T0.replace(hour=20), description=evil,
                 status="failed", error={"type": "E", "message": evil, "traceback": evil, "step": "record"})
    write_reports(root)

    browser.navigate((root / "index.html").as_uri())
    assert browser.evaluate("document.title").startswith("rig sessions")
    assert browser.evaluate("document.querySelectorAll('tbody tr').length") == 2
    assert evil in browser.evaluate("document.body.innerText")  # shown as text, never run
    assert browser.evaluate("typeof window.alert") == "function" and browser.evaluate("document.scripts.length") == 0

    # click through from the index to the first session's report
    browser.click(f'a[href="{first.name}/report.html"]')
    assert file_of(browser.evaluate("location.href")) == first / "report.html"
    images = browser.evaluate("Array.from(document.images, i => [i.getAttribute('src'), i.complete, "
                              "i.naturalWidth, i.naturalHeight])")
    assert len(images) == 2
    assert all(complete and w > 0 and h > 0 for _src, complete, w, h in images), images
    links = browser.evaluate("Array.from(document.links, a => a.href)")
    assert len(links) >= 8  # index, files
    assert all(file_of(u).is_file() for u in links), links
    shot = tmp_path / "report.png"  # kept under pytest's tmp folder for a look
    data = browser.screenshot(shot)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = Image.open(io.BytesIO(data)).convert("RGB")
    assert pixels.size == (WIDTH, HEIGHT)
    colours = pixels.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables, the figure: not a blank page

    # and back to the index by its link
    browser.click('a[href="../index.html"]')
    assert file_of(browser.evaluate("location.href")) == root / "index.html"

    # a report with its figures embedded as data URIs renders them too (the page's CSP allows data: images)
    embedded = write_session_report(first, embed=True)
    browser.navigate(embedded.as_uri())
    assert browser.evaluate("Array.from(document.images, i => i.src.startsWith('data:image/png') && "
                            "i.naturalWidth > 0)") == [True, True]
    assert browser.errors() == []


def _study_session(root: Path) -> Path:
    """A completed session whose report has the figures of a real one (12 sites), with captions, and many key
    results with long names: what used to overflow a 1300 px window or shrink the figures unreadably."""
    import numpy as np
    import xarray as xr
    from matplotlib.figure import Figure

    import stimuli
    from analyses import score_distributions, top_units_figure
    from stimuli.figures import overview

    headline = {f"a long key result number {i} (units)": 0.123456 * i for i in range(16)}
    folder = make_session(root, hexid="cccccc", figures=(), headline=headline,
                          resolved={"subject": {"source": "factory", "arch": None,
                                                "factory": "a_lab_package.models.very_long_module_name:build"}})
    rng = np.random.default_rng(0)
    sites = [f"block {i}.attn" for i in range(12)]
    maps = {s: rng.normal(size=(40, 14, 14)) for s in sites}
    scores = {s: {k: rng.normal(size=40) for k in ("spatial_information", "grid_score", "border_score")}
              for s in sites}
    table = xr.Dataset({k: ("cell", np.concatenate([scores[s][k] for s in sites])) for k in scores[sites[0]]},
                       coords={"site": ("cell", np.repeat(sites, 40))})
    figures = {
        "design": {"figures/stimuli_overview.png": (overview(stimuli.circles(n=200, seed=0)),
                                                    "Every stimulus centre, coloured by diameter (px).")},
        "analyse/spatial_scores": {
            "figures/spatial_scores_top_units.png": (top_units_figure(maps, scores, title="top units"),
                                                     "The top 5 units per site and score."),
            "figures/spatial_scores_distributions.png": (score_distributions(table),
                                                         "Each score's distribution over units.")},
    }
    info = json.loads((folder / "session.json").read_text())
    info["steps"]["analyse/spatial_scores"] = {"status": "done", "seconds": 3.0, "outputs": []}
    for key, drawn in figures.items():
        for rel, (fig, caption) in drawn.items():
            (folder / rel).parent.mkdir(exist_ok=True)
            fig.savefig(folder / rel, dpi=110)
            info["steps"][key].setdefault("outputs", []).append(rel)
            info["steps"][key].setdefault("figures", {})[rel] = caption
    (folder / "session.json").write_text(json.dumps(info))
    wide = Figure(figsize=(20, 2))  # a figure wider than the page is scaled down, never overflows it
    wide.add_subplot().plot([0, 1])
    wide.savefig(folder / "figures" / "wide.png", dpi=110)
    return folder


def test_report_and_index_fit_1300_px_and_read_in_study_order(tmp_path: Path, browser: Chromium) -> None:
    shots = Path(os.environ.get("RIG_SCREENSHOTS") or tmp_path)  # keep them for a look: RIG_SCREENSHOTS=DIR
    shots.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "archive"
    folder = _study_session(root)
    make_session(root, hexid="dddddd", status="failed", created=T0.replace(hour=21),
                 error={"type": "SiteError", "message": "no site 'x'", "step": "record", "traceback": "T"})
    write_reports(root)

    browser.navigate((root / "index.html").as_uri())
    assert browser.overflow_px() == 0
    text = browser.evaluate("document.body.innerText")
    assert "2 sessions, newest first" in text and "a long key result number 15 (units): 1.852" in text
    browser.screenshot(shots / "index.png")

    browser.navigate((folder / "report.html").as_uri())
    assert browser.overflow_px() == 0
    headings = browser.evaluate("Array.from(document.querySelectorAll('h3'), h => h.textContent)")
    assert headings == ["design", "analyse/spatial_scores", "other figures"]  # study order: the steps as they ran
    captions = browser.evaluate("Array.from(document.querySelectorAll('figcaption'), c => c.innerText)")
    assert captions[0].startswith("Figure 1. Every stimulus centre") and captions[2].startswith("Figure 3. Each score")
    assert browser.evaluate("parseFloat(getComputedStyle(document.querySelector('figcaption')).fontSize)") >= 13
    images = browser.evaluate("Array.from(document.images, i => [i.getAttribute('src'), i.naturalWidth, "
                              "i.width])")  # the content box: without the border
    for src, natural, shown in images:  # figures made to fit are shown at their own size: 8 pt stays 8 pt
        assert natural > 0, src
        if natural <= 1240:
            assert abs(shown - natural) < 1, (src, natural, shown)
        else:
            assert shown < WIDTH, (src, natural, shown)
    browser.screenshot(shots / "report.png", full_page=True)
    assert browser.errors() == []


def test_index_of_one_session_says_session(tmp_path: Path, browser: Chromium) -> None:
    make_session(tmp_path)
    write_reports(tmp_path)
    browser.navigate((tmp_path / "index.html").as_uri())
    assert "1 session, newest first" in browser.evaluate("document.body.innerText")
