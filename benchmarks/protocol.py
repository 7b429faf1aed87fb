"""How a benchmark measures in fresh processes: it runs
`python -m benchmarks.<module> --worker ...`, and the worker prints each
result as one `RESULT <json>` line (its other output is free)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "RESULT "


def report(value):
    """Prints `value` (JSON-serializable) for the parent process."""
    print(MARKER + json.dumps(value), flush=True)


def run_worker(module, *args, env=None, what=None):
    """Runs `module`'s worker with `args` from the repository root, with
    `env` added to the environment; returns the values it reported, in
    order. Raises `RuntimeError` with the ends of its output if it fails or
    reports nothing."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--worker", *map(str, args)],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
    )
    values = [json.loads(line[len(MARKER):]) for line in done.stdout.splitlines()
              if line.startswith(MARKER)]
    if done.returncode != 0 or not values:
        raise RuntimeError(
            f"{what or module} failed (exit {done.returncode}, {len(values)} results):\n"
            f"{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return values
