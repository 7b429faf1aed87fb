"""Converts the tutorials (`examples/NN_*.py`, percent format) to notebooks.

Used by `make notebooks`; jupytext does the conversion, so a tutorial's
`# %%` cells become code cells and `# %% [markdown]` cells become prose.

    python examples/to_notebooks.py [--output-dir DIR] [NAME ...]
"""

import argparse
import pathlib
import sys

import jupytext

EXAMPLES = pathlib.Path(__file__).resolve().parent


def convert(path, output_dir):
    """Writes `output_dir/<stem>.ipynb` from one tutorial; returns its path."""
    notebook = jupytext.read(path, fmt="py:percent")
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    target = pathlib.Path(output_dir) / (pathlib.Path(path).stem + ".ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(notebook, target, fmt="ipynb")
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(EXAMPLES / "notebooks"))
    parser.add_argument("names", nargs="*", help="substrings of tutorial names")
    args = parser.parse_args(argv)
    for path in sorted(EXAMPLES.glob("[0-9][0-9]_*.py")):
        if not args.names or any(n in path.name for n in args.names):
            print(convert(path, args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
