"""The CRF's step time against the sequence length, and against its peers.

Batch 64, 20 tags, a quarter of each batch right-padded to half its
length; for each backend in a process of its own, at T = 64 to 512:

- `crf_log_likelihood` with its gradient (inputs and transitions);
- `crf_decode`;
- a `CRF(use_kernel=False)` + `CRFLoss` model's `train_on_batch` step, the
  padding given by a `Masking` layer (the layer also decodes in it).

TensorFlow runs as a graph (`tf.function`, what `fit` runs on a CPU) and
under XLA (`jit_compile=True`); JAX under `jax.jit`; torch eagerly. On
torch, pytorch-crf's `CRF` (log-likelihood + gradient, decode; where it is
installed, as `make test-backends` does) and the same
model with a textbook loss (a Python loop over time) run interleaved with
ours in the same process. Each cell is the median of `--repeats` calls
after a first (tracing, compiling) one; `growth` is the time at the longest
length over the time at a quarter of it (4 is linear).

    python -m benchmarks.crf_scaling [--tiny] [--repeats N]
"""

import argparse
import importlib.util
import sys
import time

from benchmarks import protocol

LENGTHS = (64, 128, 256, 512)
BATCH, TAGS = 64, 20
TINY = dict(lengths=(4, 8, 16), batch=3, tags=4)
# TensorFlow Addons 0.23 on TensorFlow 2.15, graph mode, batch 64, 256
# steps, 20 tags, pinned to one core, in processes alternating with ours
# (it cannot be installed next to TensorFlow 2.16+, so these are figures
# from that environment, not a measurement of this run).
TFA_MS = {"log-likelihood + gradient": 33.6, "decode": 23.0}


def _data(batch, steps, tags):
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(batch, steps, tags)).astype("float32")
    lengths = np.full(batch, steps, "int32")
    lengths[: max(1, batch // 4)] = max(1, steps // 2)
    inputs[np.arange(steps)[None] >= lengths[:, None]] = 0.0  # `Masking` reads it
    labels = rng.integers(0, tags, size=(batch, steps)).astype("int32")
    transitions = rng.normal(size=(tags, tags)).astype("float32")
    return inputs, labels, lengths, transitions


def _loop_chain_loss(y_true, y_pred):
    """`CRFLoss` as Q&A answers write it: a Python loop over the steps of
    the layer's potentials (torch)."""
    import torch

    num_tags = y_pred.shape[-1]
    valid = y_pred[:, :, num_tags, 0] > 0.5
    alpha = torch.full_like(y_pred[:, 0, 0], -1e30)
    alpha[:, 0] = 0.0
    score = torch.zeros_like(alpha[:, 0])
    previous = torch.zeros_like(y_true[:, 0]).long()
    for t in range(y_pred.shape[1]):
        edges, active, tag = y_pred[:, t, :num_tags], valid[:, t], y_true[:, t].long()
        new = torch.logsumexp(alpha.unsqueeze(2) + edges, dim=1)
        alpha = torch.where(active.unsqueeze(1), new, alpha)
        picked = edges[torch.arange(len(tag)), previous, tag]
        score = score + torch.where(active, picked, torch.zeros_like(picked))
        previous = torch.where(active, tag, previous)
    return torch.logsumexp(alpha, dim=1) - score


def _timer(repeats):
    import numpy as np

    def measure(*fns):
        """Medians (s) of `fns`, called in turn `repeats` times after one
        call each."""
        for fn in fns:
            fn()
        times = [[] for _ in fns]
        for _ in range(repeats):
            for fn, into in zip(fns, times):
                start = time.perf_counter()
                fn()
                into.append(time.perf_counter() - start)
        return [float(np.median(t)) for t in times]

    return measure


def _worker(backend, mode, lengths, batch, tags, repeats):
    import keras
    import numpy as np

    import keras_addons_qa as kaq
    from keras_addons_qa import text

    measure = _timer(repeats)
    rows = []
    for steps in lengths:
        inputs, labels, lengths_, transitions = _data(batch, steps, tags)
        model = keras.Sequential([
            keras.Input((None, tags)),
            keras.layers.Masking(0.0),
            kaq.layers.CRF(tags, use_kernel=False, name="crf"),
        ])
        jit = mode == "XLA" if backend == "tensorflow" else "auto"
        model.compile("adam", loss={"potentials": kaq.losses.CRFLoss()}, jit_compile=jit)
        fit = lambda m=model: m.train_on_batch(inputs, {"potentials": labels})  # noqa: E731
        if backend == "tensorflow":
            import tensorflow as tf

            x, y, n = (tf.constant(a) for a in (inputs, labels, lengths_))
            w = tf.Variable(transitions)

            @tf.function(jit_compile=mode == "XLA")
            def likelihood():
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    value = tf.reduce_sum(text.crf_log_likelihood(x, y, n, w)[0])
                return value, tape.gradient(value, [x, w])

            decode = tf.function(lambda: text.crf_decode(x, w, n), jit_compile=mode == "XLA")
            run = lambda fn: lambda: [np.asarray(o) for o in tf.nest.flatten(fn())]  # noqa: E731
        elif backend == "jax":
            import jax

            x, y, n, w = (jax.numpy.asarray(a) for a in (inputs, labels, lengths_, transitions))
            total = lambda x, w: text.crf_log_likelihood(x, y, n, w)[0].sum()  # noqa: E731
            likelihood = jax.jit(lambda: jax.value_and_grad(total, argnums=(0, 1))(x, w))
            decode = jax.jit(lambda: text.crf_decode(x, w, n))
            run = lambda fn: lambda: jax.block_until_ready(fn())  # noqa: E731
        else:
            import torch

            x = torch.tensor(inputs, requires_grad=True)
            w = torch.tensor(transitions, requires_grad=True)
            y, n = torch.tensor(labels), torch.tensor(lengths_)

            def likelihood():
                text.crf_log_likelihood(x, y, n, w)[0].sum().backward()

            def decode():
                with torch.no_grad():
                    return text.crf_decode(x, w, n)

            run = lambda fn: fn  # noqa: E731
        row = dict(steps=steps)
        row["log-likelihood + gradient"], row["decode"], row["fit step"] = measure(
            run(likelihood), run(decode), fit
        )
        if backend == "torch" and importlib.util.find_spec("torchcrf"):
            row.update(_torch_peers(measure, inputs, labels, lengths_, transitions, tags, likelihood, decode, fit))
        rows.append(row)
    protocol.report(rows)


def _torch_peers(measure, inputs, labels, lengths, transitions, tags, likelihood, decode, fit):
    import keras
    import torch
    from torchcrf import CRF as TorchCRF

    import keras_addons_qa as kaq

    peer = TorchCRF(tags, batch_first=True)
    with torch.no_grad():
        peer.transitions.copy_(torch.tensor(transitions))
        peer.start_transitions.zero_()
        peer.end_transitions.zero_()
    x = torch.tensor(inputs, requires_grad=True)
    y = torch.tensor(labels).long()
    mask = torch.arange(inputs.shape[1])[None] < torch.tensor(lengths)[:, None]

    def peer_likelihood():
        peer(x, y, mask, reduction="sum").backward()

    def peer_decode():
        with torch.no_grad():
            return peer.decode(x, mask)

    model = keras.Sequential([
        keras.Input((None, tags)),
        keras.layers.Masking(0.0),
        kaq.layers.CRF(tags, use_kernel=False, name="crf"),
    ])
    model.compile("adam", loss={"potentials": _loop_chain_loss})
    loop_fit = lambda: model.train_on_batch(inputs, {"potentials": labels})  # noqa: E731
    ours_l, theirs_l, ours_d, theirs_d, ours_f, loop_f = measure(
        likelihood, peer_likelihood, decode, peer_decode, fit, loop_fit
    )
    return {
        "pytorch-crf log-likelihood + gradient": theirs_l,
        "pytorch-crf decode": theirs_d,
        "textbook-loss fit step": loop_f,
        "ratio log-likelihood + gradient": ours_l / theirs_l,
        "ratio decode": ours_d / theirs_d,
        "ratio fit step": ours_f / loop_f,
    }


def _legs():
    yield "tensorflow", "graph"
    yield "tensorflow", "XLA"
    if importlib.util.find_spec("jax"):
        yield "jax", "jit"
    if importlib.util.find_spec("torch"):
        yield "torch", "eager"


def run(tiny=False, repeats=7):
    """The markdown tables, each backend in a process of its own."""
    sizes = TINY if tiny else dict(lengths=LENGTHS, batch=BATCH, tags=TAGS)
    paths = ("log-likelihood + gradient", "decode", "fit step")
    header = " | ".join(f"T={t} (ms)" for t in sizes["lengths"])
    lines = [
        f"CRF against the length: batch {sizes['batch']}, {sizes['tags']} tags, a quarter of "
        f"the batch padded to half; median of {repeats} calls (growth: the longest length's "
        "time over a quarter of it; 4 is linear, the goal <= 4.5):",
        "",
        f"| path | backend | {header} | growth |",
        "| --- | --- | " + "---: | " * len(sizes["lengths"]) + "---: |",
    ]
    peers = []
    for backend, mode in _legs():
        rows = protocol.run_worker(
            "crf_scaling", backend, mode, "--repeats", repeats, *(["--tiny"] if tiny else []),
            env={"KERAS_BACKEND": backend}, what=f"CRF scaling ({backend}, {mode})",
        )[-1]
        quarter = next((r for r in rows if r["steps"] * 4 == rows[-1]["steps"]), rows[0])
        for path in paths:
            cells = " | ".join(f"{r[path] * 1e3:.3g}" for r in rows)
            lines.append(f"| {path} | {backend} {mode} | {cells} | "
                         f"{rows[-1][path] / quarter[path]:.2f} |")
        if backend == "torch" and "ratio decode" in rows[0]:
            peers = rows
        if backend == "tensorflow" and mode == "graph" and not tiny:
            at = next(r for r in rows if r["steps"] == 256)
            tfa = [f"{p}: {at[p] * 1e3:.3g} ms, {at[p] * 1e3 / ms:.2f}x TensorFlow Addons' "
                   f"{ms:g} ms" for p, ms in TFA_MS.items()]
    if peers:
        lines += ["", "torch, ours / theirs in the same process (goals: <= 0.8, <= 1.0, <= 1.0):", "",
                  "| T | log-likelihood + gradient / pytorch-crf | decode / pytorch-crf | "
                  "fit step / textbook loss | pytorch-crf log-likelihood + gradient (ms) | "
                  "pytorch-crf decode (ms) | textbook-loss fit step (ms) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in peers:
            lines.append(
                f"| {r['steps']} | {r['ratio log-likelihood + gradient']:.2f} | {r['ratio decode']:.2f} | "
                f"{r['ratio fit step']:.2f} | {r['pytorch-crf log-likelihood + gradient'] * 1e3:.3g} | "
                f"{r['pytorch-crf decode'] * 1e3:.3g} | {r['textbook-loss fit step'] * 1e3:.3g} |"
            )
    if not tiny:
        lines += ["", "TensorFlow graph at T=256 against TensorFlow Addons' figures (another "
                  "process, one core; goal <= 1.0x): " + "; ".join(tfa) + "."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sizes = TINY if args.tiny else dict(lengths=LENGTHS, batch=BATCH, tags=TAGS)
        _worker(*args.worker, repeats=args.repeats, **sizes)
        return 0
    print(run(args.tiny, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
