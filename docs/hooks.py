"""MkDocs hooks (mkdocs.yml `hooks:`): files from outside docs/ that pages show.

`make bench` writes docs/benchmarks.md with image links of the form
`benchmarks/results/NAME.png`; the images live in the repository's
benchmarks/results/. This hook adds them to the site at that path, so the
links resolve in the built site without a copy under docs/.
"""

import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        uri = f"benchmarks/results/{png.name}"
        if files.get_file_from_path(uri) is None:
            files.append(
                File(
                    uri,
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files


def on_page_markdown(markdown, page, config, files):
    # The same images linked the way that also works when GitHub shows the
    # file (relative to docs/): point them at the path added above.
    if page.file.src_uri == "benchmarks.md":
        markdown = markdown.replace("](../benchmarks/results/", "](benchmarks/results/")
    return markdown


def on_page_read_source(page, config):
    # The home page is the README, so the two cannot drift apart; its links
    # into docs/ become links relative to docs/.
    if page.file.src_uri == "index.md":
        text = (ROOT / "README.md").read_text()
        return text.replace("](docs/", "](").replace("](CHANGELOG.md)", "](changelog.md)")
    return None
