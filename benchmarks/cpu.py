"""CPU ratio suite: each component against what a user would write instead.

Every case times forward+backward (gradients of a scalar) in float32 on the
TensorFlow backend, both as a `tf.function` graph and with `jit_compile=True`,
in two gradient scenarios: with respect to the trainable weights and the
inputs ("weights + inputs", a layer inside a network), and with respect to
the weights only ("weights", a layer on inputs that need no gradient: frozen
or precomputed features); and at two sizes, the case's own and one with a 4x
larger batch. A loss's input is the prediction being trained, so the loss
cases have only the first scenario. (`backends.py` times the same cases on
JAX and torch, for the columns beside this table.) Each case and mode runs
in a fresh Python process, so that no case inherits another's allocator
state, compiled kernels or warm caches; inside it, the two sides of the case
run in the same process, interleaved (ours, theirs, ours, theirs, ...), and
each reports the median over repeats of the mean time per step; the ratio is
the median over repeats of ours / theirs in that repeat (lower is better).
Peak memory is the most bytes a step's live tensors requested at once,
from the allocator events of TensorFlow's profiler (BFC allocator on the
CPU, enabled by this module through `TF_CPU_ALLOCATOR_USE_BFC`); the
allocator's own peak, which counts whole chunks, is printed beside it. Each
is the median over five steps, taken for each side right after its warm-up
and before the other side runs (ours first).

    python -m benchmarks [--tiny] [--repeats N] [--output-dir DIR]
                         [--update-docs]
"""

import argparse
import datetime
import functools
import glob
import importlib.util
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import protocol  # noqa: E402
from benchmarks.cases import CASES  # noqa: E402
from benchmarks.cases import LOSS_CASES  # noqa: E402
from benchmarks.cases import case_kwargs  # noqa: E402
from benchmarks.cases import case_masked_attention_pooling  # noqa: E402
from benchmarks.cases import case_qkv_attention  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------- the timing


SCENARIOS = {"weights + inputs": True, "weights": False}
SIZES = ("base", "4x batch")


def make_step(loss_fn, variables, inputs, jit, input_gradients=True):
    sources = list(variables)

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def step(*inputs):
        with tf.GradientTape() as tape:
            if input_gradients:
                tape.watch(list(inputs))
            loss = loss_fn(*inputs)
        return loss, tape.gradient(
            loss, sources + (list(inputs) if input_gradients else [])
        )

    return step


def _run(step, inputs, n):
    start = time.perf_counter()
    for _ in range(n):
        out = step(*inputs)
    tf.nest.map_structure(lambda t: t.numpy() if t is not None else None, out)
    return (time.perf_counter() - start) / n


_STEP = "kaq_measured_step"


def peak_bytes(step, inputs, steps=5):
    """Peak bytes a step's tensors request, the median over `steps` steps.

    Returns `{"requested": ..., "chunks": ...}` (None where not
    measurable). `requested` is the peak of the running sum of the bytes
    each allocation asked for, read from the profiler's allocator events:
    it depends only on which tensors the step holds at once.
    `chunks` is the BFC allocator's own peak, which counts whole chunks:
    the allocator hands a request any free chunk of less than twice its
    size without splitting it, so that figure also depends on how earlier
    allocations left the free chunks. From one process to the next, with
    the same allocations, the loss's chunk peak is 2.1 or 3.1 MB and its
    requested peak 2.16 MB. The goals are read on `requested`.
    """
    chunks = []
    try:
        for _ in range(steps):
            tf.config.experimental.reset_memory_stats("CPU:0")
            before = tf.config.experimental.get_memory_info("CPU:0")["current"]
            step(*inputs)
            chunks.append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
    except (ValueError, RuntimeError):
        return {"requested": None, "chunks": None}
    return {"requested": _requested_peak(step, inputs, steps),
            "chunks": statistics.median(chunks)}


def _requested_peak(step, inputs, steps):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for i in range(steps):
                with tf.profiler.experimental.Trace(_STEP, step_num=i):
                    step(*inputs)
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        with open(path, "rb") as f:
            space = xplane_pb2.XSpace.FromString(f.read())
    windows, changes = [], []
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        stats = {key: meta.name for key, meta in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                start = line.timestamp_ns * 1000 + event.offset_ps
                if name.startswith(_STEP):
                    windows.append((start, start + event.duration_ps))
                elif name in ("MemoryAllocation", "MemoryDeallocation"):
                    size = next((s.int64_value or s.uint64_value for s in event.stats
                                 if stats.get(s.metadata_id) == "requested_bytes"), 0)
                    changes.append((start, size if name == "MemoryAllocation" else -size))
    if len(windows) != steps or not changes:
        return None
    changes.sort()
    peaks = []
    for low, high in sorted(windows):
        live = peak = 0
        for time_ps, change in changes:
            if low <= time_ps <= high:
                live += change
                peak = max(peak, live)
        peaks.append(peak)
    return statistics.median(peaks)


def measure(case_fn, kwargs, jit, repeats, min_seconds, input_gradients=True):
    sides = case_fn(**kwargs)
    steps, peak = {}, {}
    for name, (loss_fn, variables, inputs) in sides.items():  # ours first
        step = make_step(loss_fn, variables, inputs, jit, input_gradients)
        steps[name] = (step, inputs)
        _run(*steps[name], 2)  # trace, compile, warm up
        # Each side's peak is taken before the next side has run, so the
        # allocator's chunk figure of ours never starts from the free chunks
        # the other side left (the requested bytes do not depend on them).
        peak[name] = peak_bytes(*steps[name])
    result = protocol.interleaved(
        {name: functools.partial(step, *inputs) for name, (step, inputs) in steps.items()},
        repeats, min_seconds)
    result["peak"] = peak
    return result


def measure_in_fresh_process(name, combos, tiny, repeats, min_seconds):
    """`measure` for one case, in a new Python process: one result per
    `(mode, scenario, size)` in `combos`.

    The BFC allocator keeps the chunks earlier cases freed, and hands a
    request a free chunk of up to twice its size, counting all of it as in
    use: in one process, the loss's peak moved from 2.3 to 3.1 MB depending
    on which cases ran before it. A fresh process per case, mode, scenario
    and size gives every measurement the same start (smoke-test runs, which
    measure nothing, put a case's combinations in one process).
    """
    args = [name, json.dumps(combos), "--repeats", repeats, "--min-seconds", min_seconds]
    results = protocol.run_worker("cpu", *args, *(["--tiny"] if tiny else []),
                                  what=f"measuring {name!r} {combos}")
    if len(results) != len(combos):
        raise RuntimeError(f"measuring {name!r} {combos}: {len(results)} results")
    return results


def _worker(name, combos, tiny, repeats, min_seconds):
    case_fn = CASES[name][0]
    for mode, scenario, size in json.loads(combos):
        result = measure(case_fn, case_kwargs(case_fn, size, tiny), mode == "XLA",
                         repeats, min_seconds, SCENARIOS[scenario])
        protocol.report(result)
    return 0


def scaling(lengths, repeats, min_seconds):
    """Step time vs sequence length for the two attention layers (graph)."""
    rows = []
    for length in lengths:
        qkv = measure(case_qkv_attention, dict(batch=4, length=length), False,
                      repeats, min_seconds)
        pool = measure(case_masked_attention_pooling, dict(length=length), False,
                       repeats, min_seconds)
        rows.append((length, qkv["ours"], qkv["theirs"], pool["ours"], pool["theirs"]))
        print(f"  T={length:5d}  QKV {qkv['ours'] * 1e3:8.2f} ms (MHA "
              f"{qkv['theirs'] * 1e3:8.2f})  pooling {pool['ours'] * 1e3:7.2f} ms "
              f"(stock {pool['theirs'] * 1e3:7.2f})", flush=True)
    return rows


def _mb(value):
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def _memory(peak, kind="requested"):
    ours, theirs = peak["ours"][kind], peak["theirs"][kind]
    text = f"{_mb(ours)} / {_mb(theirs)}"
    if ours and theirs:
        ratio = theirs / ours if theirs > ours else ours / theirs
        digits = 0 if ratio >= 10 else 2
        text += f" ({ratio:.{digits}f}x {'less' if theirs > ours else 'more'})"
    return text


def machine():
    cpus = os.cpu_count()
    return (f"{platform.processor() or platform.machine()}, {cpus} CPU cores, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}")


def table(results):
    lines = [
        "| case | theirs | size | gradients | mode | ours (ms) | theirs (ms) |"
        " ratio | goal | met | peak MB ours / theirs (requested) |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for (name, theirs, goal, size, scenario, mode), r in results.items():
        ratio = r["ratio"]
        lines.append(
            f"| {name} | {theirs} | {size} | {scenario} | {mode} | "
            f"{r['ours'] * 1e3:.3f} | "
            f"{r['theirs'] * 1e3:.3f} | {ratio:.2f} | <= {goal:g} | "
            f"{'yes' if ratio <= goal else 'NO'} | {_memory(r['peak'])} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for index, label, style in (
        (1, "QKVAttention (B4 D128 H4)", "o-"),
        (2, "MultiHeadAttention", "o--"),
        (3, "MaskedAttentionPooling (B64 D128)", "s-"),
        (4, "stock pooling composition", "s--"),
    ):
        ax.plot(lengths, [r[index] * 1e3 for r in rows], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("fwd+bwd ms (tf.function graph, CPU)")
    ax.legend(fontsize=8)
    ax.set_title("Step time vs sequence length")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def update_docs(markdown):
    """Writes the tables into `docs/benchmarks.md`, between its markers."""
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    start, end = "<!-- bench:cpu:start -->", "<!-- bench:cpu:end -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        raise SystemExit(f"docs/benchmarks.md has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{markdown}\n{end}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=0.2,
                        help="length of one timed repeat of one side")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the tables in docs/benchmarks.md")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--only", default="", help="run cases whose name has this")
    parser.add_argument("--ratios-only", action="store_true",
                        help="the ratio table and the whole models only; print, write nothing")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "COMBOS"),
                        help=argparse.SUPPRESS)  # one case, in a fresh process
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.min_seconds = 1, 0.0
    if args.worker:
        return _worker(*args.worker, args.tiny, args.repeats, args.min_seconds)
    os.makedirs(args.output_dir, exist_ok=True)

    results = {}
    for name, (case_fn, theirs, goal) in CASES.items():
        if args.only not in name:
            continue
        scenarios = SCENARIOS if case_fn not in LOSS_CASES else ["weights + inputs"]
        combos = [(mode, scenario, size) for size, scenario, mode in
                  itertools.product(SIZES, scenarios, ("graph", "XLA"))]
        if args.tiny:
            measured = measure_in_fresh_process(name, combos, True, args.repeats,
                                                args.min_seconds)
        else:
            measured = [measure_in_fresh_process(name, [combo], False, args.repeats,
                                                 args.min_seconds)[0]
                        for combo in combos]
        for (mode, scenario, size), r in zip(combos, measured):
            results[(name, theirs, goal, size, scenario, mode)] = r
            print(f"{name} [{size}, {scenario}, {mode}]: ours {r['ours'] * 1e3:.3f} ms, theirs "
                  f"{r['theirs'] * 1e3:.3f} ms, ratio {r['ratio']:.2f} "
                  f"(goal <= {goal:g}); peak MB requested {_memory(r['peak'])}, "
                  f"allocator chunks {_memory(r['peak'], 'chunks')}", flush=True)

    stamp = datetime.date.today().isoformat()
    sizes = " at smoke-test sizes (--tiny): not a measurement" if args.tiny else ""
    markdown = (f"Measured {stamp} on {machine()}; fwd+bwd, float32, median of "
                f"{args.repeats} interleaved repeats (ratio: median of the "
                f"paired per-repeat ratios); peak memory: bytes requested by the "
                f"step's live tensors{sizes}.\n\n{table(results)}")
    from benchmarks import backends

    print("the same cases on JAX and torch:", flush=True)
    markdown += ("\n\nThe same cases on JAX (`jax.jit`) and torch (eager), each case and "
                 "backend in a fresh process (`benchmarks/backends.py`):\n\n"
                 + backends.run(args.tiny, args.repeats, args.min_seconds, args.only))
    if importlib.util.find_spec("torch") is not None:
        from benchmarks import penalty_floor

        print("the penalty's floor on torch:", flush=True)
        markdown += ("\n\nThe penalty's floor on torch: a Keras layer after the same "
                     "`Dense`, step / `Dense` alone, runs one after another "
                     "(`benchmarks/penalty_floor.py`):\n\n"
                     + penalty_floor.run(runs=1 if args.tiny else 3, tiny=args.tiny))
    from benchmarks import end_to_end

    print("whole models in fit:", flush=True)
    markdown += "\n\n" + end_to_end.run(tiny=args.tiny)
    if args.ratios_only:
        print("\n" + markdown)
        return 0
    from benchmarks import decode

    print("monotone decoding at size:", flush=True)
    markdown += "\n\n" + decode.run(tiny=args.tiny)
    from benchmarks import crf

    print("CRF functions against a Python loop over time:", flush=True)
    markdown += "\n\n" + crf.run(tiny=args.tiny)
    from benchmarks import crf_scaling

    print("the CRF against the length and its peers:", flush=True)
    markdown += "\n\n" + crf_scaling.run(tiny=args.tiny)
    from benchmarks import attention_kernel

    print("ops.attention against its goals:", flush=True)
    markdown += "\n\n" + attention_kernel.run(tiny=args.tiny)
    from benchmarks import long_attention

    print("attention over long sequences:", flush=True)
    markdown += "\n\n" + long_attention.run(tiny=args.tiny, output_dir=args.output_dir)
    if not args.no_scaling:
        lengths = [16, 32] if args.tiny else [64, 128, 256, 512, 1024, 2048]
        print("scaling with sequence length (graph mode):", flush=True)
        rows = scaling(lengths, max(1, args.repeats // 2), args.min_seconds)
        plot(rows, os.path.join(args.output_dir, "cpu_scaling.png"))
        markdown += "\n\n![CPU scaling](../benchmarks/results/cpu_scaling.png)"
    with open(os.path.join(args.output_dir, "cpu.md"), "w") as f:
        f.write(markdown + "\n")
    print("\n" + markdown)
    if args.update_docs:
        update_docs(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
