"""How a benchmark measures in fresh processes: it runs
`python -m benchmarks.<module> --worker ...`, and the worker prints each
result as one `RESULT <json>` line (its other output is free)."""

import json
import os
import statistics
import subprocess
import sys
import time

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


def interleaved(steps, repeats, min_seconds):
    """Times `steps`, a dict of side name -> step callable (`"ours"` and
    `"theirs"` among them), each call running one step to completion.

    The sides run interleaved (ours, theirs, ours, ...), each repeat the
    same number of steps per side, enough for `min_seconds` on the slower
    side. Returns each side's median over repeats of its mean time per step,
    and `"ratio"`: the median of the paired per-repeat ratios ours / theirs
    (the two sides of a repeat ran back to back, which cancels the slow
    drifts of a shared machine), and `"ratios"`: the same for every side.
    """

    def timed(step, n):
        start = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - start) / n

    slow = max(timed(step, 1) for step in steps.values())
    n = max(1, int(min_seconds / max(slow, 1e-6)))
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step, n))
    ratios = {name: statistics.median(a / b for a, b in zip(t, times["theirs"]))
              for name, t in times.items()}
    return {
        **{name: statistics.median(t) for name, t in times.items()},
        "ratio": ratios["ours"],
        "ratios": ratios,
    }
