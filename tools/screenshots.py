"""Open every page of the built book in headless Chromium, save screenshots, fail on console errors.

    python -m tools.screenshots [--width 1280 390] [--html _build/html] [--output _build/screenshots]

Each page of the table of contents is served from ``_build/html`` on 127.0.0.1 and opened at
each given window width (by default a laptop's 1280 px and a phone's 390 px), as a student
reading online would; PNGs of its top, middle and end are saved as
``<page>-<width>-{top,middle,end}.png``. A page wider than the window (a column or an equation
off-screen that the reader would have to find by scrolling the whole page sideways) is listed,
and so is a page whose visible code cells wrap at a laptop's width (1000 px or more).
Any JavaScript console error (a missing file, a script that does not parse) fails the command. Without Chromium and chromedriver (Debian's
``chromium`` and ``chromium-driver``) or the ``selenium`` package it says so and exits 0.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver",)


def book_pages(html: Path) -> list[Path]:
    """The book's pages: the intro (index), book/*.html and notebooks/*.html."""
    pages = [html / "index.html"] + sorted((html / "book").rglob("*.html")) + sorted((html / "notebooks").glob("*.html"))
    return [p for p in pages if p.exists()]


#: Counts the extra screen lines of code cells whose lines wrap (cells folded away count 0).
WRAPPED_CODE_JS = """
let wrapped = 0;
for (const pre of document.querySelectorAll('div.cell_input pre, div.highlight-python pre, div.highlight-bash pre')) {
  if (pre.clientHeight === 0) continue;
  const style = getComputedStyle(pre);
  const lines = pre.textContent.replace(/\\n$/, '').split('\\n').length;
  const padding = parseFloat(style.paddingTop) + parseFloat(style.paddingBottom);
  wrapped += Math.max(0, Math.round((pre.clientHeight - padding) / parseFloat(style.lineHeight)) - lines);
}
return wrapped;
"""
#: From this window width on, a teaching code line (at most 88 columns) must not wrap.
LAPTOP_PX = 1000


def find(candidates: tuple[str, ...]) -> str | None:
    """The first existing path among ``candidates``, else the first of their names on $PATH."""
    found = next((c for c in candidates if Path(c).exists()), None)
    return found or next((shutil.which(Path(c).name) for c in candidates if shutil.which(Path(c).name)), None)


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, nargs="+", default=[1280, 390])
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--output", type=Path, default=ROOT / "_build" / "screenshots")
    args = parser.parse_args(argv)
    chromium, driver_path = find(CHROMIUM), find(CHROMEDRIVER)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver_path and webdriver):
        print("screenshots: skipped (needs Debian's chromium and chromium-driver, and selenium)")
        return 0
    if not (args.html / "index.html").exists():
        print(f"screenshots: no built book at {args.html}; run `make html` first", file=sys.stderr)
        return 2
    shutil.rmtree(args.output, ignore_errors=True)
    args.output.mkdir(parents=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={args.width[0]},{args.height}", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    server, port = serve(args.html)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    errors: list[str] = []
    too_wide: list[str] = []
    wrapped_code: list[str] = []
    try:
        for width in args.width:
            driver.set_window_size(width, args.height)
            for page in book_pages(args.html):
                rel = page.relative_to(args.html).as_posix()
                driver.get(f"http://127.0.0.1:{port}/{rel}")
                time.sleep(1.0)  # let MathJax typeset and the theme's scripts settle
                height = driver.execute_script("return document.documentElement.scrollHeight")
                wide = driver.execute_script("return document.documentElement.scrollWidth")
                inner = driver.execute_script("return window.innerWidth")
                if wide > inner + 1:
                    too_wide.append(f"{rel} at {width} px: the page is {wide} px wide")
                wrapped = driver.execute_script(WRAPPED_CODE_JS) if width >= LAPTOP_PX else 0
                if wrapped:
                    wrapped_code.append(f"{rel} at {width} px: {wrapped} extra screen lines")
                stem = rel.removesuffix(".html").replace("/", "_")
                for where, y in (("top", 0), ("middle", max(0, height // 2 - args.height // 2)),
                                 ("end", max(0, height - args.height))):
                    driver.execute_script(f"window.scrollTo(0, {y});")
                    time.sleep(0.2)
                    driver.save_screenshot(str(args.output / f"{stem}-{width}-{where}.png"))
                for entry in driver.get_log("browser"):
                    if entry.get("level") == "SEVERE":
                        errors.append(f"{rel}: {entry.get('message')}")
                print(f"screenshots: {rel} at {width} px ({height} px high)")
    finally:
        driver.quit()
        server.shutdown()
    for line in too_wide:
        print(f"WIDER THAN THE WINDOW: {line}")
    for line in wrapped_code:
        print(f"WRAPPED CODE: {line}")
    for error in errors:
        print(f"CONSOLE ERROR: {error}", file=sys.stderr)
    print(f"screenshots: {len(book_pages(args.html))} pages at {len(args.width)} widths in "
          f"{args.output.relative_to(ROOT)}, {len(too_wide)} wider than the window, "
          f"{len(wrapped_code)} with wrapped code at laptop width, "
          f"{len(errors)} console errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
