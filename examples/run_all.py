"""Runs every tutorial (`examples/NN_*.py`) and prints a summary table.

Used by `make demo` (full runs) and by the tests (`--quick`). Each tutorial
runs in its own process, as a user would run it, and must exit 0, write its
PNG to the output directory and print a `RESULT ...` line, which becomes
the table's key-metric column; its whole printout is saved beside the PNG.

    python examples/run_all.py [--quick] [--output-dir DIR] [NAME ...]
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time

EXAMPLES = pathlib.Path(__file__).resolve().parent


def tutorials():
    return sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))


def run_tutorial(path, output_dir, quick):
    """Runs one tutorial; returns (ok, seconds, result line, full output)."""
    command = [sys.executable, str(path), "--output-dir", str(output_dir)]
    if quick:
        command.append("--quick")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    # The full printout, for the numbers behind the summary line.
    (pathlib.Path(output_dir) / (path.stem + ".log")).write_text(output)
    png = pathlib.Path(output_dir) / (path.stem + ".png")
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    ok = done.returncode == 0 and png.is_file() and bool(results)
    result = results[-1][len("RESULT") :].strip() if results else "(no RESULT line)"
    return ok, seconds, result, output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default=str(EXAMPLES / "output"))
    parser.add_argument("names", nargs="*", help="substrings of tutorial names")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    chosen = [
        p for p in tutorials() if not args.names or any(n in p.name for n in args.names)
    ]
    rows, failed = [], []
    for path in chosen:
        print(f"running {path.name} ...", flush=True)
        ok, seconds, result, output = run_tutorial(path, args.output_dir, args.quick)
        rows.append((path.stem, result, seconds, ok))
        if not ok:
            failed.append(path.name)
            print(output[-4000:])
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"\n{'tutorial':<{width}}  {'seconds':>7}  key metric")
    for name, result, seconds, ok in rows:
        flag = "" if ok else "  FAILED"
        print(f"{name:<{width}}  {seconds:7.1f}  {result}{flag}")
    print(f"\nfigures and full printouts (.log) in {args.output_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
