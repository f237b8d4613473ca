"""Open the exported page in headless Chromium through Playwright (tests, benchmarks, screenshots).

The browser is the system's (Debian's `chromium` package), never one Playwright downloads; the flags
keep it off the network (the page needs none) and without a GPU.
"""
from __future__ import annotations

import base64
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """$DEQNCA_CHROMIUM, else /usr/bin/chromium, else `chromium` on the PATH; None when there is none."""
    for p in (os.environ.get("DEQNCA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if p and Path(p).exists():
            return p
    return None


def missing() -> str | None:
    """Why the page cannot be driven here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if chromium_path() is None:
        return "no chromium executable (apt-get install chromium, or set DEQNCA_CHROMIUM)"
    return None


@contextmanager
def launch():
    """A headless Chromium (Playwright's Browser), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser, index, width: int = 1100, height: int = 900):
    """(page, log): the page at `index` loaded and ready in `browser`; log collects console errors and
    warnings, page errors and any request that is not file://."""
    page = browser.new_page(viewport={"width": width, "height": height})
    log = []
    page.on("console", lambda m: log.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: log.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith("file://") else log.append(f"request: {r.url}"))
    try:
        page.goto(Path(index).resolve().as_uri())
        page.wait_for_function("window.deqncaTest && window.deqncaTest.ready", timeout=30_000)
        yield page, log
    finally:
        page.close()


def b64(t) -> str:
    """A tensor or array as the page's test hook takes it: its float32 (or uint8) bytes in base64."""
    a = np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
    if a.dtype != np.uint8:
        a = a.astype("<f4")
    return base64.b64encode(a.tobytes()).decode()


def unb64(s: str, dtype="<f4") -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype)
