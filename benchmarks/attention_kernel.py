"""`ops.attention` against its goals: the blockwise path against the full
one, JAX against TensorFlow, causal order and windows against the full
step, the rate of useful work against the machine's matrix products, and
PyTorch's CPU flash kernel.

Every case is one training step of the bare kernel (forward, and the
gradients of query, key and value): batch 1, 8 heads of 64, self-attention
without padding. Each case runs in a fresh process (peak resident memory is
the process's), in `--runs` interleaved rounds; the table gives the median
step and the spread (min-max) over the rounds. Cases:

- `full` / `blockwise`: `scores_budget_mb=None` against the default budget
  (at 2048 steps, where the default keeps the full scores, half of them:
  64 MiB), TensorFlow graph; `blockwise` also on JAX (`jax.jit`), and
  `full` on JAX at 4096 steps (how XLA's CPU code compares on its own);
- `causal`, `window`: the blockwise path with `is_causal=True`, and with a
  causal sliding window of 512 steps;
- `torch-sdpa`: `torch.nn.functional.scaled_dot_product_attention` without
  a mask (its flash kernel on a CPU), against TensorFlow's `blockwise`;
- `layer` / `layer-mha`: the layers rather than the bare kernel,
  `QKVAttention` with its defaults against `keras.layers.MultiHeadAttention`
  (512 features, the last eighth of the steps padding: a value mask for
  ours, the same pairs as an `attention_mask` for Keras's), gradients of
  the input and the weights; TensorFlow graph, and torch, where Keras's
  layer goes to `scaled_dot_product_attention`;
- `matmul`: the float32 matrix-multiply rate of the same kind of process
  (TensorFlow, 4096 x 4096 by 4096 x 4096), against which the useful
  attention FLOPs per second are reported (`12 * heads * T * S * head_dim`
  for forward and backward, times the visible fraction under causal order
  or a window).

TensorFlow runs as installed (`tensorflow`): it turns its oneDNN kernels on
by default only on CPUs with AVX-512 VNNI, BF16 or AMX, and uses Eigen's
elsewhere. `tensorflow-onednn` is the same process with
`TF_ENABLE_ONEDNN_OPTS=1` (oneDNN's matrix products on any x86 CPU), for
the comparison with PyTorch, whose CPU build always uses its own oneDNN
kernels; its matmul rate is measured under the same setting.

    python -m benchmarks.attention_kernel [--tiny] [--runs N]
"""

import argparse
import os
import resource
import statistics
import sys
import time

from benchmarks import long_attention
from benchmarks import protocol

HEADS, HEAD_DIM, WINDOW = 8, 64, 512
MATMUL = 4096


def _visible_fraction(which, length):
    if which == "causal":
        return (length + 1) / (2 * length)
    if which == "window":  # keys j with i - WINDOW < j <= i
        w = min(WINDOW, length)
        return (w * length - w * (w - 1) / 2) / length**2
    return 1.0


def _budget(which, length):
    if which == "full":
        return None
    full_mb = HEADS * length * length * 4 / 2**20
    return min(128.0, full_mb / 2)


def _tensorflow_step(which, length):
    import tensorflow as tf

    from keras_addons_qa import ops as kaq_ops

    rng = tf.random.Generator.from_seed(0)
    q, k, v = (rng.normal((1, length, HEADS, HEAD_DIM)) for _ in range(3))
    options = dict(is_causal=which in ("causal", "window"),
                   sliding_window=WINDOW if which == "window" else None,
                   scores_budget_mb=_budget(which, length))

    @tf.function
    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = kaq_ops.attention(q, k, v, **options)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [q, k, v])

    return lambda: step(q, k, v)  # eager calls on a CPU return when done


def _jax_step(which, length):
    import jax

    from keras_addons_qa import ops as kaq_ops

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (1, length, HEADS, HEAD_DIM)) for key in keys)
    options = dict(is_causal=which in ("causal", "window"),
                   sliding_window=WINDOW if which == "window" else None,
                   scores_budget_mb=_budget(which, length))

    def loss(q, k, v):
        out = kaq_ops.attention(q, k, v, **options)
        return (out * out).sum()

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return lambda: jax.block_until_ready(step(q, k, v))


def _torch_step(length):
    import torch

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, generator=gen, requires_grad=True)
               for _ in range(3))

    def run():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        (out * out).sum().backward()
        for x in (q, k, v):
            x.grad = None

    return run


def _layer_step(which, backend, length, features=512):
    import keras
    import numpy as np

    import keras_addons_qa as kaq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, length, features)).astype("float32")
    mask = np.ones((1, length), bool)
    mask[0, length - length // 8:] = False
    if which == "layer":
        layer = kaq.layers.QKVAttention(HEADS, HEAD_DIM)
    else:
        layer = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)
    layer(x[:, :8], x[:, :8])

    def forward(x, m):
        if which == "layer":
            return layer(x, x, query_mask=m, value_mask=m)
        pairs = keras.ops.logical_and(keras.ops.expand_dims(m, 1), keras.ops.expand_dims(m, 2))
        return layer(x, x, attention_mask=pairs)

    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        mask = torch.tensor(mask)

        def run():
            out = forward(x, mask)
            (out * out).sum().backward()
            x.grad = None
            for w in layer.trainable_variables:
                w.value.grad = None

        return run
    if backend == "jax":
        return long_attention.jax_step(layer, forward, x, mask)
    return long_attention.tensorflow_step(layer, forward, x, mask)


def _matmul_rate():
    import tensorflow as tf

    a = tf.random.normal((MATMUL, MATMUL))
    b = tf.random.normal((MATMUL, MATMUL))
    matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    matmul(a, b).numpy()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * MATMUL**3 / min(times)


def _worker(which, backend, length):
    if which == "matmul":
        return dict(which=which, backend=backend, length=0, step=0.0,
                    rate=_matmul_rate(), peak=0)
    backend = backend.split("-")[0]  # tensorflow-onednn: TensorFlow (see _measure)
    if which == "torch-sdpa":
        run = _torch_step(length)
    elif which.startswith("layer"):
        run = _layer_step(which, backend, length)
    elif backend == "jax":
        run = _jax_step(which, length)
    else:
        run = _tensorflow_step(which, length)
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    times = []
    for _ in range(2 if length <= 16384 else 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    step = min(times)
    flops = 0.0 if which.startswith("layer") else 12 * HEADS * length * length * HEAD_DIM * _visible_fraction(which, length)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(which=which, backend=backend, length=length, first=first, step=step,
                rate=flops / step, peak=peak)


def _measure(which, backend, length):
    env = {**os.environ, "KERAS_BACKEND": "torch" if which == "torch-sdpa" else backend.split("-")[0],
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == "tensorflow-onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return protocol.run_worker("attention_kernel", which, backend, length, env=env,
                               what=f"{which} on {backend} at {length}")[-1]


def _cases(tiny):
    """(which, backend, length), and the rows of the goal table as
    (label, case, baseline case, goal)."""
    import importlib.util

    jax = importlib.util.find_spec("jax") is not None
    torch = importlib.util.find_spec("torch") is not None
    short, mid, long_, longest = (64, 128, 512, 1024) if tiny else (2048, 4096, 16384, 131072)
    rows = []
    for t in (short, mid, 2 * mid):
        rows.append((f"blockwise / full, TF, T={t}", ("blockwise", "tensorflow", t),
                     ("full", "tensorflow", t), 1.2))
    if jax:
        for t in (mid, 2 * mid):
            rows.append((f"blockwise JAX / TF, T={t}", ("blockwise", "jax", t),
                         ("blockwise", "tensorflow", t), 1.25))
    rows.append((f"causal / non-causal, TF, T={long_}", ("causal", "tensorflow", long_),
                 ("blockwise", "tensorflow", long_), 0.6))
    rows.append((f"causal window {WINDOW} / non-causal, TF, T={long_}",
                 ("window", "tensorflow", long_), ("blockwise", "tensorflow", long_), 0.15))
    rows.append((f"causal window {WINDOW}: T={longest} / T={long_}, per step",
                 ("window", "tensorflow", longest), ("window", "tensorflow", long_),
                 1.3 * longest / long_))
    # Absolute goals (no baseline case): peak resident memory in GiB.
    rows.append((f"causal window {WINDOW}, TF, T={longest}: peak memory (GiB)",
                 ("window", "tensorflow", longest), None, 3.0, "peak"))
    for backend in ("tensorflow", "jax") if jax else ("tensorflow",):
        rows.append((f"QKVAttention, {backend}, T={long_} non-causal: peak memory (GiB)",
                     ("layer", backend, long_), None, 1.5, "peak"))
    for tf_ in ("tensorflow", "tensorflow-onednn"):
        name = "TF" if tf_ == "tensorflow" else "TF (oneDNN on)"
        rows.append((f"{name} blockwise: useful work / matmul rate, T={long_}",
                     ("blockwise", tf_, long_), ("matmul", tf_, 0), 0.7, "share"))
        if torch:
            for t in (2 * mid, long_):
                rows.append((f"{name} blockwise / torch SDPA (flash), T={t}",
                             ("blockwise", tf_, t), ("torch-sdpa", "torch", t), 1.0))
    rows.append((f"QKVAttention / MultiHeadAttention, TF, T={mid}", ("layer", "tensorflow", mid),
                 ("layer-mha", "tensorflow", mid), 1.25))
    if torch:
        for t in (short, mid, 2 * mid):
            rows.append((f"QKVAttention / MultiHeadAttention, torch, T={t}",
                         ("layer", "torch", t), ("layer-mha", "torch", t), 1.1))
            rows.append((f"same, peak memory, torch, T={t}", ("layer", "torch", t),
                         ("layer-mha", "torch", t), 1.1, "peak"))
    cases = []
    for _, a, b, *_ in rows:
        for case in (a, b):
            if case is not None and case not in cases:
                cases.append(case)
    if jax:  # context for the JAX goal: XLA's own full path on this CPU
        cases.append(("full", "jax", mid))
    # The matrix-product rates last, in the order of the backends above.
    cases = [c for c in cases if c[0] != "matmul"]
    cases += [("matmul", "tensorflow", 0), ("matmul", "tensorflow-onednn", 0)]
    return cases, rows


def _spread(values, scale=1.0):
    """The median and, over several runs, the min-max, 3 significant digits."""
    mid = statistics.median(values) * scale
    if len(values) == 1:
        return f"{mid:.3g}"
    return f"{mid:.3g} ({min(values) * scale:.3g}-{max(values) * scale:.3g})"


def run(tiny=False, runs=3):
    """The markdown tables."""
    runs = 1 if tiny else runs
    cases, rows = _cases(tiny)
    measured = {case: [] for case in cases}
    for round_ in range(runs):
        for case in cases:
            result = _measure(*case)
            measured[case].append(result)
            print(f"  round {round_ + 1}: {case[0]} {case[1]} T={case[2]}: "
                  f"step {result['step']:.3f} s, peak {result['peak'] / 2**30:.2f} GiB",
                  flush=True)
    def matmul(backend):
        """Each round's matmul rate of the TensorFlow setting `backend` ran
        under (TensorFlow's as installed for JAX and torch)."""
        key = backend if backend == "tensorflow-onednn" else "tensorflow"
        return [r["rate"] for r in measured[("matmul", key, 0)]]

    lines = [
        f"`ops.attention`, training step of the bare kernel (batch 1, {HEADS} heads of "
        f"{HEAD_DIM}, no padding), median of {runs} rounds (min-max):",
        "",
        "| case | step (s) | peak memory (GiB) | useful GFLOP/s | of matmul rate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        which, backend, length = case
        if which == "matmul":
            continue
        results = measured[case]
        rates = [r["rate"] for r in results]
        share = [r / m for r, m in zip(rates, matmul(backend))]
        work = f"{_spread(rates, 1e-9)} | {_spread(share)}" if rates[0] else "| "
        lines.append(
            f"| {which}, {backend}, T={length} | {_spread([r['step'] for r in results])} | "
            f"{_spread([r['peak'] for r in results], 2**-30)} | {work} |"
        )
    lines += [
        "",
        f"TensorFlow float32 matrix products ({MATMUL}^3): {_spread(matmul('tensorflow'), 1e-9)} "
        f"GFLOP/s as installed, {_spread(matmul('tensorflow-onednn'), 1e-9)} with oneDNN on.",
        "",
        "| target | ratio (or GiB) | goal | met |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, a, b, goal, *key in rows:
        key = key[0] if key else "step"
        at_least = key == "share"  # a share of the matmul rate: higher is better
        if b is None:  # an absolute goal, in GiB
            ratios = [x[key] / 2**30 for x in measured[a]]
        elif at_least:
            ratios = [x["rate"] / y["rate"] for x, y in zip(measured[a], measured[b])]
        else:
            ratios = [x[key] / y[key] for x, y in zip(measured[a], measured[b])]
        median = statistics.median(ratios)
        met = "yes" if (median >= goal if at_least else median <= goal) else "no"
        lines.append(f"| {label} | {_spread(ratios)} | {'>=' if at_least else '<='} {goal:g} | {met} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        which, backend, length = args.worker
        protocol.report(_worker(which, backend, int(length)))
        return 0
    print(run(args.tiny, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
