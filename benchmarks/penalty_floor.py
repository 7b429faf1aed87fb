"""What any layer adding an activity penalty costs on torch: the floor under
the ratio suite's `Dense(512) + ActivityPenalty` case.

The case's goal (<= 1.10x `Dense` alone) leaves 10% of a small step for the
penalty. On eager torch every elementwise pass is its own kernel and every
layer call its own Python dispatch, so this measures, against the same
`Dense` alone, interleaved in one process (`protocol.interleaved`), batches
of 256 and 1024 with 512 features, gradients of the weights and the input:

- `empty layer`: a Keras layer that returns its input (the layer's share);
- `torch penalty`: that layer adding `l1 * sum(|x|) + l2 * sum(x ** 2)`
  divided by the batch, written in torch (the arithmetic's share, the
  least any implementation can do as a Keras layer);
- `ActivityPenalty`: the package's layer.

    python -m benchmarks.penalty_floor [--runs N] [--tiny]
"""

import argparse
import os
import sys

from benchmarks import protocol

SIDES = ("empty layer", "torch penalty", "ActivityPenalty")


def _worker(batch, repeats, min_seconds):
    import keras
    import numpy as np
    import torch

    import keras_addons_qa as kaq

    class Empty(keras.layers.Layer):
        def call(self, inputs):
            return inputs

    class TorchPenalty(keras.layers.Layer):
        def call(self, inputs):
            total = 1e-4 * inputs.abs().sum() + 1e-4 * inputs.square().sum()
            self.add_loss(total / inputs.shape[0])
            return inputs

    x = np.random.default_rng(3).normal(size=(batch, 512)).astype("float32")
    x = torch.tensor(x, requires_grad=True)
    dense = keras.layers.Dense(512, activation="relu")
    dense(x)
    weights = [v.value for v in dense.trainable_variables]

    def step_of(layer):
        def step():
            if layer is None:
                loss = keras.ops.sum(keras.ops.square(dense(x)))
            else:
                loss = keras.ops.sum(keras.ops.square(layer(dense(x)))) + sum(layer.losses)
            loss.backward()
            for t in (*weights, x):
                t.grad = None

        return step

    # `interleaved` names the two compared sides "ours" and "theirs".
    keys = {"empty layer": "empty layer", "torch penalty": "torch penalty",
            "ActivityPenalty": "ours"}
    layers = [Empty(), TorchPenalty(), kaq.layers.ActivityPenalty(l1=1e-4, l2=1e-4)]
    steps = {"theirs": step_of(None)}
    steps.update({keys[name]: step_of(layer) for name, layer in zip(SIDES, layers)})
    for step in steps.values():  # warm up
        step()
        step()
    result = protocol.interleaved(steps, repeats, min_seconds)
    return {"batch": batch, **{name: result["ratios"][keys[name]] for name in SIDES},
            "dense": result["theirs"]}


def run(runs=3, tiny=False):
    """The markdown table: each side's step over `Dense` alone, per run."""
    batches = (2,) if tiny else (256, 1024)
    repeats, min_seconds = (1, 0.0) if tiny else (15, 0.2)
    rows = {b: [] for b in batches}
    for _ in range(runs):
        for batch in batches:
            env = {"KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}
            rows[batch] += protocol.run_worker("penalty_floor", batch, repeats, min_seconds,
                                               env=env, what=f"torch at batch {batch}")
    lines = ["| batch | Dense alone (ms) | " + " | ".join(f"+ {s} / Dense" for s in SIDES) + " |",
             "| ---: | ---: |" + " ---: |" * len(SIDES)]
    for batch, results in rows.items():
        cells = [" / ".join(f"{r[s]:.2f}" for r in results) for s in SIDES]
        dense = " / ".join(f"{r['dense'] * 1e3:.2f}" for r in results)
        lines.append(f"| {batch} | {dense} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        batch, repeats, min_seconds = args.worker
        protocol.report(_worker(int(batch), int(repeats), float(min_seconds)))
        return 0
    print(run(args.runs, args.tiny))
    return 0


if __name__ == "__main__":
    sys.exit(main())
