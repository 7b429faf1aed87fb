"""Whole models in `fit`: ours against the same model built from stock layers.

Two models users build, each in two versions with the same sizes:

- a HAN-style text classifier, `Embedding(mask_zero=True) ->
  Bidirectional(GRU) -> pooling -> Dense`, with `MaskedAttentionPooling`
  against the stock composition `Dense(tanh) -> Dense(1) -> Softmax(mask) ->
  weighted sum`;
- a 2-block Transformer encoder (attention, residual, LayerNorm, a
  feed-forward block whose hidden activity is penalized), with
  `QKVAttention` and `ActivityPenalty` against `MultiHeadAttention` and
  `ActivityRegularization`.

Reported: the time of one `fit` step (`train_on_batch`, the same compiled
train function `fit` runs), TensorFlow, as a graph and with
`jit_compile=True`; the two models alternate in repeats within one process
(one process per model and mode), and the ratio is the median of the paired
per-repeat ratios ours / stock.

    python -m benchmarks.end_to_end [--tiny]
"""

import argparse
import os
import statistics
import sys
import time

from benchmarks import protocol

GOAL = 1.05
SIZES = {  # batch, steps, vocabulary, model width
    False: dict(batch=64, steps=128, vocab=8000, width=128),
    True: dict(batch=4, steps=8, vocab=50, width=8),
}
CLASSES = 5


def han(ours, batch, steps, vocab, width):
    """Embedding -> BiGRU -> attention pooling -> softmax classifier."""
    import keras

    import keras_addons_qa as kaq
    from benchmarks.stock import StockPooling

    words = keras.Input((steps,), dtype="int32")
    x = keras.layers.Embedding(vocab, width, mask_zero=True)(words)
    x = keras.layers.Bidirectional(
        keras.layers.GRU(width // 2, return_sequences=True)
    )(x)
    pool = kaq.layers.MaskedAttentionPooling(width // 2) if ours else StockPooling(width // 2)
    x = pool(x)
    return keras.Model(words, keras.layers.Dense(CLASSES, activation="softmax")(x))


def transformer(ours, batch, steps, vocab, width, blocks=2, heads=4):
    """Embedding -> 2 x (attention, FFN with an activity penalty) -> mean."""
    import keras

    import keras_addons_qa as kaq

    words = keras.Input((steps,), dtype="int32")
    x = keras.layers.Embedding(vocab, width, mask_zero=True)(words)
    for _ in range(blocks):
        attention = (kaq.layers.QKVAttention if ours else keras.layers.MultiHeadAttention)(
            heads, width // heads
        )
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, attention(x, x)]))
        h = keras.layers.Dense(2 * width, activation="relu")(x)
        h = (kaq.layers.ActivityPenalty if ours else keras.layers.ActivityRegularization)(
            l1=1e-5, l2=1e-5
        )(h)
        h = keras.layers.Dense(width)(h)
        x = keras.layers.LayerNormalization()(keras.layers.Add()([x, h]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(words, keras.layers.Dense(CLASSES, activation="softmax")(x))


MODELS = {
    "HAN classifier (Embedding, BiGRU, attention pooling)": (
        han, "the stock pooling composition"),
    "2-block Transformer encoder (attention, FFN + activity penalty)": (
        transformer, "MultiHeadAttention + ActivityRegularization"),
}


def _data(batch, steps, vocab, **_):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    words = rng.integers(1, vocab, size=(batch, steps))
    lengths = rng.integers(steps // 4, steps + 1, size=batch)
    words[np.arange(steps)[None] >= lengths[:, None]] = 0  # right padding
    labels = rng.integers(0, CLASSES, size=batch)
    return tf.constant(words, "int32"), tf.constant(labels, "int32")


def _step_time(model, x, y, steps):
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def _worker(name, mode, tiny, repeats, min_seconds):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    build = MODELS[name][0]
    size = SIZES[tiny]
    x, y = _data(**size)
    models = {}
    for side in ("ours", "stock"):
        keras.utils.set_random_seed(0)
        model = build(side == "ours", **size)
        model.compile("adam", "sparse_categorical_crossentropy",
                      jit_compile=mode == "XLA")
        for _ in range(3):  # trace, compile, warm up
            model.train_on_batch(x, y)
        models[side] = model
    slow = max(_step_time(m, x, y, 2) for m in models.values())
    n = max(1, int(min_seconds / slow))
    times = {side: [] for side in models}
    for _ in range(repeats):
        for side, model in models.items():  # interleaved
            times[side].append(_step_time(model, x, y, n))
    protocol.report({
        "ours": statistics.median(times["ours"]),
        "stock": statistics.median(times["stock"]),
        "ratio": statistics.median(a / b for a, b in zip(times["ours"], times["stock"])),
    })
    return 0


def run(tiny=False, repeats=15, min_seconds=0.5):
    """The markdown table; each model and mode in a fresh process."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    size = SIZES[tiny]
    rows = [
        f"Whole models, one `fit` step (batch {size['batch']}, {size['steps']} steps, "
        f"vocabulary {size['vocab']}, width {size['width']}, {CLASSES} classes; TensorFlow; "
        f"median of {repeats} interleaved repeats; ratio: ours / stock):",
        "",
        "| model | stock version | mode | ours (ms) | stock (ms) | ratio | goal | met |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for name, (_, stock) in MODELS.items():
        for mode in ("graph", "XLA"):
            r = protocol.run_worker(
                "end_to_end", name, mode, "--repeats", repeats, "--min-seconds", min_seconds,
                *(["--tiny"] if tiny else []), env=env, what=f"{name} [{mode}]",
            )[-1]
            print(f"  {name} [{mode}]: ours {r['ours'] * 1e3:.1f} ms, stock "
                  f"{r['stock'] * 1e3:.1f} ms, ratio {r['ratio']:.3f}", flush=True)
            rows.append(
                f"| {name} | {stock} | {mode} | {r['ours'] * 1e3:.1f} | "
                f"{r['stock'] * 1e3:.1f} | {r['ratio']:.2f} | <= {GOAL:g} | "
                f"{'yes' if r['ratio'] <= GOAL else 'NO'} |"
            )
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.repeats, args.min_seconds = 1, 0.0
    if args.worker:
        return _worker(*args.worker, args.tiny, args.repeats, args.min_seconds)
    print(run(args.tiny, args.repeats, args.min_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
