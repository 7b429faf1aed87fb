"""Attention over long sequences: peak memory and step time against length.

Self-attention as the long-sequence question asks it: batch 1, 8 heads of
64, 512 features, the last eighth of the steps padding, one training step
(forward and backward with respect to the input and the weights). Each
point runs in a fresh process, and reports the process's peak resident
memory and the mean of two steps after the first (one from 16384 steps on;
the first includes tracing and compiling):

- `QKVAttention` with its defaults (blockwise once the scores of one example
  pass 128 MiB: from 4096 steps on here), on TensorFlow (graph) and JAX
  (`jax.jit`);
- `QKVAttention(scores_budget_mb=None)` (always the full scores) at 2048
  and 4096 steps, the cost of the blockwise path where the full one fits;
- `QKVAttention` with `use_causal_mask=True`, and with a causal sliding
  window of 512 steps, on TensorFlow (the blocks these hide are skipped);
- a causal prompt of that length written into a KV cache by
  `QKVAttention` (forward only: prefill), on TensorFlow, at 16384 steps
  and the longest length;
- `keras.layers.MultiHeadAttention` with the same padding as an
  `attention_mask`, on TensorFlow, up to 8192 steps (at 16384 its step
  needs more than the 24 GiB of the machine this was written on).

    python -m benchmarks.long_attention [--tiny] [--output-dir DIR]
"""

import argparse
import importlib.util
import os
import resource
import sys
import time

from benchmarks import protocol

ROOT = protocol.ROOT
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
MHA_MAX = 8192
WINDOW = 512


def _worker(length, which, features=512, heads=8, head_size=64):
    import keras
    import numpy as np

    import keras_addons_qa as kaq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, length, features)).astype("float32")
    mask = np.ones((1, length), bool)
    mask[0, length - length // 8 :] = False
    if which == "ours-prefill":  # a causal prompt written into a KV cache
        return _prefill(length, x, mask, heads, head_size)
    if which in ("ours", "ours-causal"):
        layer = kaq.layers.QKVAttention(heads, head_size)
    elif which == "ours-full":
        layer = kaq.layers.QKVAttention(heads, head_size, scores_budget_mb=None)
    elif which == "ours-window":
        layer = kaq.layers.QKVAttention(heads, head_size, sliding_window=WINDOW)
    else:
        layer = keras.layers.MultiHeadAttention(heads, head_size)
    layer(x[:, :8], x[:, :8])

    def forward(x, m):
        if which == "mha":
            pair = keras.ops.logical_and(keras.ops.expand_dims(m, 1), keras.ops.expand_dims(m, 2))
            return layer(x, x, attention_mask=pair)
        causal = which in ("ours-causal", "ours-window")
        return layer(x, x, query_mask=m, value_mask=m, use_causal_mask=causal)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        run = tensorflow_step(layer, forward, x, mask)
    else:
        run = jax_step(layer, forward, x, mask)
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(2 if length < 16384 else 1):  # a step takes minutes beyond
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(length=length, which=which, backend=backend, first=first,
                step=sum(times) / len(times), peak=peak)


def tensorflow_step(layer, forward, x, mask):
    """A `tf.function` training step of `forward(x, mask)`: the gradients of
    `sum(out ** 2)` with respect to `x` and `layer`'s weights, run and read
    by the returned function."""
    import tensorflow as tf

    @tf.function
    def step(x, m):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = forward(x, m)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [x] + layer.trainable_variables)

    x, mask = tf.constant(x), tf.constant(mask)
    return lambda: [g.numpy() for g in step(x, mask)]


def jax_step(layer, forward, x, mask):
    """`tensorflow_step` on JAX: a jitted step of the same gradients."""
    import jax
    import keras

    weights = [v.value for v in layer.trainable_variables]

    def loss(weights, x, m):
        with keras.StatelessScope(state_mapping=list(zip(layer.trainable_variables, weights))):
            out = forward(x, m)
        return (out * out).sum()

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(step(weights, x, mask))


def _prefill(length, x, mask, heads, head_size):
    import keras
    import tensorflow as tf

    import keras_addons_qa as kaq

    layer = kaq.layers.QKVAttention(heads, head_size)
    layer(x[:, :8], x[:, :8])
    cache = tf.zeros((1, 2, length, heads, head_size))

    @tf.function
    def step(x, m, cache):
        return layer(x, x, value_mask=m, use_causal_mask=True, cache=cache,
                     cache_update_index=0)[0]

    x, mask = tf.constant(x), tf.constant(mask)
    start = time.perf_counter()
    step(x, mask, cache).numpy()
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(x, mask, cache).numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(length=length, which="ours-prefill", backend=keras.backend.backend(),
                first=first, step=time.perf_counter() - start, peak=peak)


def _measure(length, which, backend):
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return protocol.run_worker("long_attention", length, which, env=env,
                               what=f"{which} on {backend} at {length}")[-1]


def _cases(lengths):
    backends = ["tensorflow"] + (["jax"] if importlib.util.find_spec("jax") else [])
    for length in lengths:
        for backend in backends:
            yield length, "ours", backend
        if length in (2048, 4096) or (length in lengths[1:3] and length <= 4096):
            yield length, "ours-full", "tensorflow"
        yield length, "ours-causal", "tensorflow"
        yield length, "ours-window", "tensorflow"
        if length <= MHA_MAX:
            yield length, "mha", "tensorflow"
        if length in (16384, lengths[-1]):
            yield length, "ours-prefill", "tensorflow"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (memory, seconds) = plt.subplots(1, 2, figsize=(11, 4))
    labels = {("ours", "tensorflow"): "QKVAttention, TF graph",
              ("ours", "jax"): "QKVAttention, JAX jit",
              ("ours-causal", "tensorflow"): "QKVAttention causal, TF graph",
              ("ours-window", "tensorflow"): f"QKVAttention causal window {WINDOW}, TF graph",
              ("mha", "tensorflow"): "MultiHeadAttention, TF graph"}
    for (which, backend), label in labels.items():
        points = [r for r in rows if r["which"] == which and r["backend"] == backend]
        if not points:
            continue
        lengths = [r["length"] for r in points]
        memory.plot(lengths, [r["peak"] / 2**30 for r in points], "o-", label=label)
        seconds.plot(lengths, [r["step"] for r in points], "o-", label=label)
    ticks = {memory: [0.5, 1, 2, 3, 4, 8], seconds: [0.1, 1, 10, 100]}
    for axis, title in ((memory, "peak resident memory (GiB)"), (seconds, "training step (s)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_title(title)
        axis.grid(True, which="major", alpha=0.3)
        # Labelled ticks only where they read; no minor labels.
        axis.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks[axis]))
        axis.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    memory.axhline(3, color="gray", linestyle="--", linewidth=1)
    handles, names = memory.get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=3, frameon=False)
    figure.suptitle("Self-attention, batch 1, 8 heads of 64, 2 CPU cores")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(tiny=False, output_dir=None, lengths=None):
    """The markdown table (and the plot, unless tiny)."""
    lengths = (64, 128) if tiny else (lengths or LENGTHS)
    rows = []
    for length, which, backend in _cases(lengths):
        row = _measure(length, which, backend)
        rows.append(row)
        print(f"  {which} {backend} T={length}: step {row['step']:.2f} s, "
              f"peak {row['peak'] / 2**30:.2f} GiB", flush=True)
    names = {"ours": "QKVAttention", "ours-full": "QKVAttention, full scores",
             "ours-causal": "QKVAttention, causal",
             "ours-window": f"QKVAttention, causal window {WINDOW}",
             "ours-prefill": "QKVAttention, causal prompt into a cache (forward)",
             "mha": "MultiHeadAttention"}
    lines = [
        "Long sequences: self-attention training step, batch 1, 8 heads of 64, "
        "512 features, the last eighth padding (goal: peak < 3 GiB at 16384 on "
        "TensorFlow and JAX, for the causal step and a prefilled cache too; 32768 "
        "runs; at 2048 within 1.3x of the full path):",
        "",
        "| T | layer | backend | step (s) | peak memory (GiB) | step / MultiHeadAttention's |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    mha = {r["length"]: r for r in rows if r["which"] == "mha"}
    for r in rows:
        ratio = ""
        if r["which"] not in ("mha", "ours-prefill") and r["length"] in mha and r["backend"] == "tensorflow":
            ratio = f"{r['step'] / mha[r['length']]['step']:.2f}"
        lines.append(f"| {r['length']} | {names[r['which']]} | {r['backend']} | "
                     f"{r['step']:.3g} | {r['peak'] / 2**30:.2f} | {ratio} |")
    if not tiny and output_dir:
        plot(rows, os.path.join(output_dir, "long_attention.png"))
        lines += ["", "![Long sequences](../benchmarks/results/long_attention.png)"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--lengths", type=int, nargs="*", help="sequence lengths to run")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        length, which = args.worker
        protocol.report(_worker(int(length), which))
        return 0
    print(run(args.tiny, args.output_dir, tuple(args.lengths or ()) or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
