"""The one place tests import private Keras API, plus shared test helpers.

`keras.src.testing.TestCase` is Keras's own layer harness (`run_layer_test`,
`run_class_serialization_test`). It is private: it is imported here and only
here (`test_house_rules.py` checks it), and pyproject.toml pins Keras to the
3.x line it was written against. `test_keras_mha_suite.py` runs Keras's own
MultiHeadAttention test file from the installed wheel in a subprocess; that
file imports Keras's private harness itself.
"""

import contextlib
import functools
import os

import keras
import numpy as np
import pytest

import keras_addons_qa as kaq
from keras.src.testing import TestCase  # noqa: F401  (re-exported)

BACKEND = keras.backend.backend()


def examples(on_tensorflow):
    """Hypothesis case budget: full on TensorFlow, a third elsewhere.

    Eager JAX and torch compile or dispatch every op per new shape, which
    makes each random-shape case ~10x slower there.
    """
    return on_tensorflow if BACKEND == "tensorflow" else max(10, on_tensorflow // 3)

KERAS_VERSION = tuple(int(part) for part in keras.__version__.split(".")[:2])


def skip_unless_keras_reads(path):
    """Skips a test of a `.keras` file that this Keras cannot read: one
    written by a newer Keras (the version is in the file's metadata). Keras
    files are not readable by older Keras: stock layers' configs gain
    arguments (Keras 3.15's `Dense` and `Embedding` write
    `quantization_config`). Files written by 0.1.0 come from Keras 3.15,
    which it required."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        written = json.loads(archive.read("metadata.json"))["keras_version"]
    if tuple(int(part) for part in written.split(".")[:2]) > KERAS_VERSION:
        pytest.skip(
            f"{path.name} was written by Keras {written}; Keras "
            f"{keras.__version__} cannot read newer Keras's stock layers"
        )


tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="uses TensorFlow APIs (tf.function, GradientTape, tf.distribute) "
    "that have no counterpart on this backend",
)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_finite(*tensors):
    for t in tensors:
        values = np.asarray(to_numpy(t), dtype="float64")
        assert np.all(np.isfinite(values)), f"non-finite values: {values}"


@contextlib.contextmanager
def dtype_policy(name):
    """Sets a global dtype policy for the block and restores the old one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def gradients(fn, variables):
    """Gradients of the scalar `fn()` with respect to `variables`.

    `variables` are `keras.Variable`s: a layer's weights, or inputs wrapped
    with `keras.Variable(data)` so that every backend can differentiate the
    closure `fn` with respect to them (JAX substitutes them through a
    `keras.StatelessScope`).
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch([getattr(v, "value", v) for v in variables])
            value = fn()
        return value, tape.gradient(
            value, [getattr(v, "value", v) for v in variables]
        )
    if BACKEND == "torch":
        import torch

        leaves = [getattr(v, "value", v) for v in variables]
        for leaf in leaves:
            leaf.requires_grad_(True)
        value = fn()
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
        return value, [
            torch.zeros_like(leaf) if g is None else g
            for g, leaf in zip(grads, leaves)
        ]
    if BACKEND == "jax":
        import jax

        variables = list(variables)
        for v in variables:
            if not isinstance(v, keras.Variable):
                raise TypeError(
                    "On JAX, gradients are taken with respect to keras.Variables "
                    f"(the closure reads them); got {type(v).__name__}"
                )

        def pure(values):
            with keras.StatelessScope(
                state_mapping=list(zip(variables, values)), collect_losses=True
            ):
                return fn()

        return jax.value_and_grad(pure)([v.value for v in variables])
    pytest.skip(f"gradient helper not written for the {BACKEND} backend")


@functools.lru_cache(maxsize=None)
def mirrored_strategy():
    """One `MirroredStrategy` over two logical CPUs, shared by all tests.

    TensorFlow numbers collective instances per process; two strategies in
    one process can hand the same instance key to different all-reduces
    ("Shape mismatch in the collective instance"), so tests share this one.
    """
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, "conftest.py splits the CPU into two devices"
    return tf.distribute.MirroredStrategy(devices[:2])


def save_and_reload(model, directory):
    """Saves `model` as .keras and loads it in safe mode, no custom objects."""
    path = os.path.join(str(directory), "model.keras")
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


FIT_MODES = {
    "eager": dict(run_eagerly=True),
    "graph": dict(jit_compile=False),
    "xla": dict(jit_compile=True),
}


# The model every-component tests share (distribution, saving, determinism).
VOCAB, GROUPS, SIZE, DIM = 12, 4, 3, 8


def every_component_model():
    """A compiled model with every core component: QKVAttention,
    ActivityPenalty, MaskedAttentionPooling, a NonNegative kernel,
    MonotoneGroupedSoftmax and AlmostOneHotEmbeddingLoss."""
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, DIM, mask_zero=True)(tokens)
    x = kaq.layers.QKVAttention(2, 4)(x, x)
    x = kaq.layers.ActivityPenalty(l1=1e-2, l2=1e-2)(x)
    pooled = kaq.layers.MaskedAttentionPooling(5)(x)
    hidden = keras.layers.Dense(
        16, activation="tanh", kernel_constraint=kaq.constraints.NonNegative()
    )(pooled)
    groups = kaq.layers.MonotoneGroupedSoftmax(GROUPS, SIZE, name="groups")(hidden)
    word = keras.layers.Dense(VOCAB, activation="softmax", name="word")(hidden)
    model = keras.Model(tokens, {"groups": groups, "word": word})
    embedding = np.random.default_rng(0).normal(size=(VOCAB, 3)).astype("float32")
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss={
            "groups": "sparse_categorical_crossentropy",
            "word": kaq.losses.AlmostOneHotEmbeddingLoss(embedding, power=2.0),
        },
    )
    return model


def every_component_data():
    """`(tokens, y)` for `every_component_model`: 8 examples, half padded."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, VOCAB, size=(8, 6)).astype("int32")
    tokens[::2, 4:] = 0  # padding
    y = {
        "groups": rng.integers(0, SIZE, size=(8, GROUPS)).astype("int32"),
        "word": rng.normal(size=(8, 3)).astype("float32"),
    }
    return tokens, y
