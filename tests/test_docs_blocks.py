"""Every Python block of README.md, DESCRIPTION.md (the package index's
description) and docs/**/*.md runs as written.

Each page is one test: its ```python blocks run in order in one fresh
namespace (so a later block may use names an earlier block of the same page
defined, as a reader running the page top to bottom would), in a temporary
working directory (blocks that save files write there). A `print(...)` line
that ends with a comment states what it prints: the comment must be among
the lines the block prints, in that order.

A block preceded by `<!-- not-run: reason -->` is not run; the reason says
why (it needs several processes or devices) and which test runs it
instead. There are few of them, and the count is checked so that more do
not creep in unnoticed.

The blocks run on the default TensorFlow backend, as the pages show them.
The tutorial pages (docs/tutorials/NN_name.md) are generated from
examples/NN_name.py, which tests/test_examples.py runs end to end; here
they are checked to be up to date with their scripts
(`python docs/gen_tutorials.py --check`), not run again.
"""

import contextlib
import importlib.util
import io
import pathlib
import re

import keras
import pytest

from tests import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent
TUTORIAL_PAGE = re.compile(r"docs/tutorials/\d\d_[^/]+\.md$")
FENCE = re.compile(
    r"(?P<marker><!-- not-run: (?P<reason>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```$",
    re.M | re.S,
)
# Blocks that are shown but not run, and why (see the module docstring).
EXPECTED_NOT_RUN = 3


def pages():
    found = [ROOT / "README.md", ROOT / "DESCRIPTION.md"]
    found += sorted((ROOT / "docs").rglob("*.md"))
    return [
        p
        for p in found
        if not TUTORIAL_PAGE.search(p.relative_to(ROOT).as_posix())
    ]


def blocks(page):
    """[(code, reason or None)] for each ```python block of `page`."""
    text = page.read_text()
    return [(m["code"], m["reason"]) for m in FENCE.finditer(text)]


def expected_prints(code):
    """The comment after each `print(...)` statement line (None if none)."""
    expected = []
    for line in code.splitlines():
        if line.startswith("print("):
            comment = re.search(r"\)\s+#\s?(.*)$", line)
            expected.append(comment.group(1).strip() if comment else None)
    return expected


def _id(page):
    return page.relative_to(ROOT).as_posix()


RUNNABLE = [p for p in pages() if any(r is None for _, r in blocks(p))]


# The pages show the default TensorFlow backend (an export to LiteRT, for
# one, needs it); each component is tested on every backend elsewhere.
@pytest.mark.skipif(
    harness.BACKEND != "tensorflow",
    reason="documentation blocks run on the default TensorFlow backend only",
)
@pytest.mark.parametrize("page", RUNNABLE, ids=[_id(p) for p in RUNNABLE])
def test_page_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    try:
        for number, (code, reason) in enumerate(blocks(page), 1):
            if reason is not None:
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{_id(page)}, block {number}", "exec"), namespace)
            # The stated lines, in order, among what the block printed (the
            # libraries may print more, e.g. an export's summary).
            printed = [line.strip() for line in out.getvalue().splitlines()]
            position = 0
            for want in filter(None, expected_prints(code)):
                assert want in printed[position:], (
                    f"block {number}: {want!r} not printed; printed: {printed}"
                )
                position = printed.index(want, position) + 1
    finally:
        keras.backend.clear_session()
        keras.config.set_dtype_policy("float32")


def test_not_run_blocks_are_few_and_say_why():
    skipped = [
        (_id(p), reason) for p in pages() for _, reason in blocks(p) if reason is not None
    ]
    for page, reason in skipped:
        assert len(reason.split()) >= 4, (page, reason)
    assert len(skipped) == EXPECTED_NOT_RUN, skipped


def test_every_python_fence_is_found():
    # A ```python fence the pattern above missed (indented, or with
    # options) would silently escape the test.
    for page in pages():
        text = page.read_text()
        fences = len(re.findall(r"^\s*```\s*(python|py)\b", text, re.M))
        assert fences == len(blocks(page)), _id(page)


def test_tutorial_pages_match_their_scripts():
    pytest.importorskip("jupytext")
    spec = importlib.util.spec_from_file_location(
        "gen_tutorials", ROOT / "docs" / "gen_tutorials.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, (
        "docs/tutorials/ is out of date: run `make docs-tutorials` "
        "(after `make demo` for new results)"
    )


def test_every_public_name_has_an_api_entry():
    # mkdocstrings renders `::: name` directives; a module's directive
    # renders every name in its `__all__`.
    import keras_addons_qa as kaq

    targets = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        targets |= set(re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M))
    missing = []
    for module_name in ("layers", "losses", "constraints", "ops", "text"):
        module = getattr(kaq, module_name)
        for name in module.__all__:
            full = f"keras_addons_qa.{module_name}.{name}"
            if full not in targets and f"keras_addons_qa.{module_name}" not in targets:
                missing.append(full)
    assert not missing, missing
