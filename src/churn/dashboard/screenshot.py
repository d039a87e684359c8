"""`make screenshot`: a headless Chromium PNG of every dashboard page, each checked not blank.

Starts the app on a free loopback port over ``--db``'s read copy, drives Debian's chromium
(``/usr/bin/chromium``; never a browser download) through Playwright, waits for each
page's rendered content (its title, then Streamlit's "running" indicator gone and every
chart drawn), and saves ``<out>/<page>.png``. A picture whose pixels barely vary (a blank
or error-free white page) fails the run.

    python -m churn.dashboard.screenshot --db data/demo.duckdb --out data/screenshots
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from churn.dashboard import queries as q
from churn.dashboard.common import FOOTER
from churn.dashboard.pages import PAGES
from churn.dashboard.server import streamlit_command, streamlit_env
from churn.warehouse import connect_read_copy

__all__ = ["is_blank", "main", "take_screenshots"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
#: Below this standard deviation of grey levels a picture is taken as blank.
MIN_STDDEV = 8.0
WIDTH, HEIGHT = 1600, 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(base: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the server answers its health check (it died, or ``timeout``: an error)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the dashboard server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def is_blank(path: Path) -> tuple[bool, float]:
    """Whether the PNG is (near) one colour; and its grey-level standard deviation."""
    from PIL import Image, ImageStat

    with Image.open(path) as img:
        stddev = float(ImageStat.Stat(img.convert("L")).stddev[0])
    return stddev < MIN_STDDEV, stddev


def _showcase_account(db: Path) -> str | None:
    """The account page shows the worklist's first account with failed payments, if any."""
    con = connect_read_copy(db)
    try:
        top = q.worklist(con, q.WorklistFilters(payment_health=("Failed",)), limit=1)
        if top.is_empty():
            top = q.worklist(con, limit=1)
        return None if top.is_empty() else str(top["account_id"][0])
    finally:
        con.close()


def _wait_rendered(page: Any) -> None:
    """Until the script has run to its footer, nothing is a placeholder, every chart is
    drawn and every table holds its cells; then two frames for the canvases to paint."""
    page.get_by_text(FOOTER).first.wait_for()
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-testid=\"stSkeleton\"]')"
    )
    charts = page.locator("[data-testid='stVegaLiteChart']")
    for n in range(charts.count()):
        charts.nth(n).locator("canvas, svg").first.wait_for()
    tables = page.locator("[data-testid='stDataFrame']")
    for n in range(tables.count()):
        # The grid's accessible cells appear once its data has arrived.
        tables.nth(n).locator("[role='gridcell']").first.wait_for(state="attached")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def take_screenshots(db: Path, out: Path, *, timeout: float = 120.0) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    account = _showcase_account(db)
    server = subprocess.Popen(
        streamlit_command("127.0.0.1", port),
        env=streamlit_env(db),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    shots = []
    try:
        _wait_healthy(base, server, timeout)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.set_default_timeout(timeout * 1000)
            for i, (_file, title, path, _icon) in enumerate(PAGES):
                url = f"{base}/" if i == 0 else f"{base}/{path}"
                if path == "account" and account:
                    url += f"?account={account}"
                page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
                page.goto(url)
                page.get_by_role("heading", name=title, exact=True).first.wait_for()
                _wait_rendered(page)
                # Streamlit scrolls inside its main block: grow the window to the page's
                # height so the picture holds all of it, and wait for it to settle again.
                height = page.evaluate(
                    "() => document.querySelector('[data-testid=stMain]').scrollHeight"
                )
                page.set_viewport_size({"width": WIDTH, "height": max(HEIGHT, int(height) + 40)})
                _wait_rendered(page)
                errors = page.locator("[data-testid='stException']")
                if errors.count():
                    raise RuntimeError(f"page {title} shows an exception")
                target = out / f"{path}.png"
                page.screenshot(path=str(target), full_page=True)
                shots.append(target)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("data/demo.duckdb"))
    parser.add_argument("--out", type=Path, default=Path("data/screenshots"))
    args = parser.parse_args(argv)
    shots = take_screenshots(args.db, args.out)
    failed = 0
    for shot in shots:
        blank, stddev = is_blank(shot)
        failed += blank
        print(f"{shot}  grey-level stddev {stddev:.1f}{'  BLANK' if blank else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
