"""The ratio suite's cases on JAX and torch: the columns beside
TensorFlow's graph and XLA in `cpu.py`'s table.

The same cases (`cases.py`), sizes and gradient scenarios, each case and
backend in a fresh process, the two sides interleaved in it as in `cpu.py`
(median time per step over repeats; the ratio is the median of the paired
per-repeat ratios). A step is a forward and backward pass:

- JAX: `jax.jit` of `jax.value_and_grad` of the loss, the layers' variables
  passed in through a `keras.StatelessScope` (as Keras's own JAX trainer
  does); the peak is XLA's compiled temporary buffer (`memory_analysis`),
  the bytes the step needs beyond its arguments and outputs;
- torch: eager `loss.backward()`; no peak (torch's CPU allocator keeps no
  statistics).

    python -m benchmarks.backends [--tiny] [--repeats N]
"""

import argparse
import itertools
import os
import sys

from benchmarks import protocol

BACKENDS = ("jax", "torch")
SIZES = ("base", "4x batch")
SCENARIOS = {"weights + inputs": True, "weights": False}


def _jax_step(loss_fn, variables, inputs, input_gradients):
    import jax
    import keras

    def loss(values, inputs):
        with keras.StatelessScope(state_mapping=list(zip(variables, values)),
                                  collect_losses=True):
            return loss_fn(*inputs)

    values = [v.value for v in variables]
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1) if input_gradients else 0))
    compiled = grad.lower(values, inputs).compile()
    analysis = compiled.memory_analysis()
    peak = None if analysis is None else analysis.temp_size_in_bytes
    return (lambda: jax.block_until_ready(compiled(values, inputs))), peak


def _torch_step(loss_fn, variables, inputs, input_gradients):
    inputs = tuple(x.detach().clone().requires_grad_(input_gradients) for x in inputs)
    weights = [v.value for v in variables]

    def step():
        loss_fn(*inputs).backward()
        for x in (*weights, *inputs):
            x.grad = None

    return step, None  # eager: done when it returns


def measure(backend, case_fn, kwargs, repeats, min_seconds, input_gradients):
    """Median seconds per step of each side, their paired ratio, and each
    side's peak bytes (None where not measured)."""
    make = _jax_step if backend == "jax" else _torch_step
    steps, peak = {}, {}
    for name, (loss_fn, variables, inputs) in case_fn(**kwargs).items():  # ours first
        steps[name], peak[name] = make(loss_fn, variables, inputs, input_gradients)
        steps[name]()  # compile, warm up
        steps[name]()

    return {**protocol.interleaved(steps, repeats, min_seconds), "peak": peak}


def _worker(backend, name, tiny, repeats, min_seconds):
    from benchmarks import cases

    case_fn = cases.CASES[name][0]
    scenarios = ["weights + inputs"] if case_fn in cases.LOSS_CASES else list(SCENARIOS)
    for size, scenario in itertools.product(SIZES, scenarios):
        result = measure(backend, case_fn, cases.case_kwargs(case_fn, size, tiny), repeats,
                         min_seconds, SCENARIOS[scenario])
        protocol.report({"size": size, "scenario": scenario, **result})


def run(tiny=False, repeats=15, min_seconds=0.2, only=""):
    """The markdown table: one row per case, size and gradient scenario,
    with JAX's and torch's ratio (and JAX's peak) where installed."""
    import importlib.util

    from benchmarks.cases import CASES

    backends = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    results = {}
    for name, backend in itertools.product(CASES, backends):
        if only not in name:
            continue
        print(f"  {name} on {backend}", flush=True)
        env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        args = [backend, name, "--repeats", repeats, "--min-seconds", min_seconds]
        for r in protocol.run_worker("backends", *args, *(["--tiny"] if tiny else []),
                                     env=env, what=f"{name} on {backend}"):
            results[(name, r["size"], r["scenario"], backend)] = r
    header = "| case | size | gradients | " + " | ".join(
        f"{b}: ours / theirs (ms) | {b} ratio" for b in backends
    ) + " | goal | met | JAX peak MB ours / theirs |"
    lines = [header, "|" + " --- |" * 3 + " ---: | ---: |" * len(backends) + " ---: | :---: | ---: |"]
    keys = sorted({k[:3] for k in results}, key=lambda k: (
        list(CASES).index(k[0]), SIZES.index(k[1]), list(SCENARIOS).index(k[2])))
    for name, size, scenario in keys:
        goal = CASES[name][2]
        cells, met = [], True
        for backend in backends:
            r = results[(name, size, scenario, backend)]
            cells.append(f"{r['ours'] * 1e3:.3f} / {r['theirs'] * 1e3:.3f} | {r['ratio']:.2f}")
            met = met and r["ratio"] <= goal
        jax = results.get((name, size, scenario, "jax"))
        peak = "n/a"
        if jax and jax["peak"]["ours"] is not None:
            peak = f"{jax['peak']['ours'] / 2**20:.1f} / {jax['peak']['theirs'] / 2**20:.1f}"
        lines.append(f"| {name} | {size} | {scenario} | {' | '.join(cells)} | <= {goal:g} | "
                     f"{'yes' if met else 'NO'} | {peak} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--only", default="", help="run cases whose name has this")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.min_seconds = 1, 0.0
    if args.worker:
        os.environ.setdefault("KERAS_BACKEND", args.worker[0])
        _worker(*args.worker, args.tiny, args.repeats, args.min_seconds)
        return 0
    print(run(args.tiny, args.repeats, args.min_seconds, args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
