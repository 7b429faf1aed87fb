"""Monotone decoding at size: compile time and call time against NumPy.

`monotone_decode` (the `MonotoneDecode` layer's computation) on 512 groups
of 256 classes, batch 32, as a TensorFlow graph (`tf.function`), under
TensorFlow's XLA (`jit_compile=True`) and under `jax.jit`, against a NumPy
Viterbi in the same process. Each backend runs in its own process (JAX only
if installed). Reported: tracing plus compiling plus the first call, the
median call after it, and the call's ratio to NumPy's (which also starts from
the probabilities: a log, then the loop); every decoded path is checked to
score as much as NumPy's.

    python -m benchmarks.decode [--tiny]
"""

import argparse
import importlib.util
import sys
import time

from benchmarks import protocol


def numpy_viterbi(log_probs):
    """The reference: the same dynamic program, a loop over groups."""
    import numpy as np

    best = log_probs[:, 0]
    history = []
    for g in range(1, log_probs.shape[1]):
        history.append(best)
        best = np.maximum.accumulate(best, axis=-1) + log_probs[:, g]
    path = [best.argmax(-1)]
    for earlier in reversed(history):
        reachable = np.where(np.arange(best.shape[-1]) <= path[-1][:, None], earlier, -np.inf)
        path.append(reachable.argmax(-1))
    return np.stack(path[::-1], -1)


def _worker(sizes, repeats):
    import numpy as np

    import keras
    from keras_addons_qa.layers import monotone_decode

    batch, groups, classes = sizes
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(batch, groups, classes)) * 3
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype("float32")
    tiny = np.finfo("float32").tiny
    log_probs = np.log(np.maximum(probs, tiny))
    numpy_times = []
    for _ in range(repeats):  # from the same probabilities: log, then Viterbi
        start = time.perf_counter()
        expected = numpy_viterbi(np.log(np.maximum(probs, tiny)))
        numpy_times.append(time.perf_counter() - start)
    numpy_time = float(np.median(numpy_times))

    def score(path):
        return np.take_along_axis(log_probs, path[..., None], -1)[..., 0].sum(-1)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        modes = {"graph": tf.function(monotone_decode),
                 "XLA": tf.function(monotone_decode, jit_compile=True)}
    else:
        import jax

        modes = {"XLA": jax.jit(monotone_decode)}
    results = []
    for mode, fn in modes.items():
        start = time.perf_counter()
        path = np.asarray(fn(probs))
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            np.asarray(fn(probs))
            times.append(time.perf_counter() - start)
        call = float(np.median(times))
        exact = bool(np.allclose(score(path), score(expected), rtol=1e-5))
        results.append(dict(backend=backend, mode=mode, compile=first, call=call,
                            numpy=numpy_time, ratio=call / numpy_time, exact=exact))
    protocol.report(results)


def run(tiny=False, repeats=15):
    """The markdown table, one process per backend."""
    sizes = (4, 8, 6) if tiny else (32, 512, 256)
    rows = []
    backends = ["tensorflow"]
    if importlib.util.find_spec("jax") is not None:
        backends.append("jax")
    for backend in backends:
        rows += protocol.run_worker(
            "decode", "--repeats", repeats, *(["--tiny"] if tiny else []),
            env={"KERAS_BACKEND": backend}, what=f"decode benchmark on {backend}",
        )[-1]
    batch, groups, classes = sizes
    lines = [
        f"Monotone decoding, {groups} groups x {classes} classes, batch {batch} "
        "(goal: trace + compile < 10 s; compiled call <= 2x NumPy):",
        "",
        "| backend | mode | trace + compile + first call (s) | call (ms) | NumPy Viterbi (ms) | ratio | exact |",
        "| --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['mode']} | {r['compile']:.2f} | {r['call'] * 1e3:.1f} | "
            f"{r['numpy'] * 1e3:.1f} | {r['ratio']:.2f} | {'yes' if r['exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sizes = (4, 8, 6) if args.tiny else (32, 512, 256)
        return _worker(sizes, args.repeats) or 0
    print(run(args.tiny, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
