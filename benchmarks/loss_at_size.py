"""AlmostOneHotEmbeddingLoss at real vocabulary sizes.

Two measurements, each side in a fresh process (TensorFlow backend):

- `save`: a `(vocab, dim)` matrix (default 50000 x 300) in a small compiled
  model (`Input(8) -> Dense(vocab, softmax)`): the `.keras` file's size and
  its `config.json`'s, and the time to save and to load it, against the same
  model compiled with `"mse"` plus the time to write and read the matrix's
  bytes once (`np.save` / `np.load`).
- `step`: one traced training step (forward and backward with respect to
  the logits, batch 64) at `(200000, 300)`: the process's peak resident
  memory and the first call's time (tracing included), against the naive
  recipe `(p ** 4 / sum(p ** 4)) @ E` with `E` an eager tensor.

    python -m benchmarks.loss_at_size [--vocab 50000] [--step-vocab 200000]

To measure another version, copy this file into that checkout's
`benchmarks/` and run it from there (the "before" figures in
`docs/api/almost_one_hot_embedding_loss.md` are
0.1.0's, measured that way).
"""

import argparse
import os
import resource
import sys
import tempfile
import time
import zipfile

from benchmarks import protocol


def _matrix(vocab, dim):
    import numpy as np

    return np.random.default_rng(0).normal(size=(vocab, dim)).astype("float32")


def _save_worker(side, vocab, dim):
    import keras
    import numpy as np

    import keras_addons_qa as kaq

    matrix = _matrix(vocab, dim)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(vocab, activation="softmax")(inputs))
    if side == "mse":
        model.compile("sgd", loss="mse")
    else:
        model.compile("sgd", loss=kaq.losses.AlmostOneHotEmbeddingLoss(matrix))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        start = time.perf_counter()
        model.save(path)
        save = time.perf_counter() - start
        start = time.perf_counter()
        keras.saving.load_model(path)
        load = time.perf_counter() - start
        with zipfile.ZipFile(path) as archive:
            config = len(archive.read("config.json"))
        size = os.path.getsize(path)
        raw = os.path.join(tmp, "matrix.npy")
        start = time.perf_counter()
        np.save(raw, matrix)
        write = time.perf_counter() - start
        start = time.perf_counter()
        np.load(raw)
        read = time.perf_counter() - start
    return dict(save=save, load=load, config=config, size=size, write=write, read=read)


def _step_worker(side, vocab, dim, batch=64):
    import numpy as np
    import tensorflow as tf
    from keras import ops

    import keras_addons_qa as kaq

    matrix = _matrix(vocab, dim)
    rng = np.random.default_rng(1)
    logits = tf.Variable(rng.normal(size=(batch, vocab)).astype("float32"))
    target = tf.constant(rng.normal(size=(batch, dim)).astype("float32"))
    if side == "naive":
        table = ops.convert_to_tensor(matrix)

        def loss_fn(p):
            q = p ** 4
            q = q / ops.sum(q, axis=-1, keepdims=True)
            return ops.mean(ops.square(ops.matmul(q, table) - target))
    else:
        loss = kaq.losses.AlmostOneHotEmbeddingLoss(matrix)

        def loss_fn(p):
            return loss(target, p)

    del matrix

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss_fn(tf.nn.softmax(logits))
        return value, tape.gradient(value, logits)

    start = time.perf_counter()
    step()[1].numpy()
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    graph = len(step.get_concrete_function().graph.as_graph_def().SerializeToString())
    return dict(first=first, peak=peak, graph=graph)


def _run(kind, side, vocab, dim):
    env = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return protocol.run_worker("loss_at_size", kind, side, "--vocab", vocab, "--dim", dim,
                               env=env, what=f"{kind} {side}")[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=50000)
    parser.add_argument("--step-vocab", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, side = args.worker
        worker = _save_worker if kind == "save" else _step_worker
        protocol.report(worker(side, args.vocab, args.dim))
        return 0
    mse = _run("save", "mse", args.vocab, args.dim)
    ours = _run("save", "ours", args.vocab, args.dim)
    budget_save = 2 * (mse["save"] + ours["write"])
    budget_load = 2 * (mse["load"] + ours["read"])
    print(f"save/load at ({args.vocab}, {args.dim}):")
    print(f"  file {ours['size'] / 2**20:.1f} MiB, config.json {ours['config'] / 1024:.1f} KiB "
          f"(mse model: {mse['size'] / 2**20:.1f} MiB, {mse['config'] / 1024:.1f} KiB)")
    print(f"  save {ours['save']:.2f} s (budget 2 x ({mse['save']:.2f} + {ours['write']:.2f}) = {budget_save:.2f} s)")
    print(f"  load {ours['load']:.2f} s (budget 2 x ({mse['load']:.2f} + {ours['read']:.2f}) = {budget_load:.2f} s)")
    naive = _run("step", "naive", args.step_vocab, args.dim)
    step = _run("step", "ours", args.step_vocab, args.dim)
    print(f"one traced step at ({args.step_vocab}, {args.dim}), batch 64:")
    print(f"  peak RSS {step['peak'] / 2**30:.2f} GiB vs naive {naive['peak'] / 2**30:.2f} GiB "
          f"(ratio {step['peak'] / naive['peak']:.2f}, goal <= 1.2)")
    print(f"  first call {step['first']:.2f} s vs naive {naive['first']:.2f} s "
          f"(ratio {step['first'] / naive['first']:.2f}, goal <= 2)")
    print(f"  GraphDef {step['graph'] / 1024:.0f} KiB vs naive {naive['graph'] / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
