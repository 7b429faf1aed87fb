"""Screenshots of pages of the built site, as a reader's browser shows them.

Opens pages of site/ (built by `make docs`) as files, the way the README
tells a reader to, and has headless Chromium save a PNG of each page below: two API pages (class and function
signatures from the docstrings), a tutorial page with its figure, and the
home page. Used by
`make docs-screenshots`; look at the PNGs after changing the pages, the
theme or mkdocs.yml.

    python docs/screenshots.py [--site DIR] [--output-dir DIR] [--browser PATH]

Needs Chromium (Debian: `apt-get install chromium`).
"""

import argparse
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (file name, page of the site, window height). Headless Chromium draws a
# blank page when it has scrolled to an anchor, so each shot is the top of
# a page, in a window tall enough for what it is there to show.
PAGES = [
    ("api_crf_loss.png", "api/crf_loss.html", 1500),  # a class: signature, arguments
    ("api_text.png", "api/text.html", 2600),  # functions: signatures, arguments, returns
    ("tutorial_03.png", "tutorials/03_masked_attention_pooling.html", 1700),  # figure
    ("home.png", "index.html", 1400),
]


def screenshot(browser, url, path, height, width=1280):
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",  # needed as root; the pages are our own
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "--virtual-time-budget=3000",  # let the page's scripts finish
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(ROOT / "site"))
    parser.add_argument("--output-dir", default=str(ROOT / "build" / "screenshots"))
    parser.add_argument("--browser", default=None)
    args = parser.parse_args(argv)
    site = pathlib.Path(args.site)
    if not (site / "index.html").is_file():
        print(f"no site in {site}: run `make docs` first", file=sys.stderr)
        return 1
    browser = args.browser or next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
        None,
    )
    if browser is None:
        print("Chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 1
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for name, page, height in PAGES:
        path = output / name
        screenshot(browser, (site / page).resolve().as_uri(), path, height)
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
