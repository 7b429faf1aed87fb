"""Data parallelism: one `fit` step over two devices equals one on a single one.

A model that uses every component (QKVAttention, ActivityPenalty,
MaskedAttentionPooling, a NonNegative kernel, MonotoneGroupedSoftmax and
AlmostOneHotEmbeddingLoss) takes one SGD step on the same global batch, from
the same weights, on one device and on two: the loss (including the
`add_loss` penalties, which Keras scales per replica) and every weight after
the step agree to 1e-4. TensorFlow runs `tf.distribute.MirroredStrategy` over
two logical CPUs; JAX runs `keras.distribution.DataParallel` over two host
devices (see conftest.py).
"""

import numpy as np
import pytest

import keras
import keras_addons_qa as kaq
from tests import harness

VOCAB, GROUPS, SIZE, DIM = 12, 4, 3, 8


def _model():
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


def _data():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, VOCAB, size=(8, 6)).astype("int32")
    tokens[::2, 4:] = 0  # padding
    y = {
        "groups": rng.integers(0, SIZE, size=(8, GROUPS)).astype("int32"),
        "word": rng.normal(size=(8, 3)).astype("float32"),
    }
    return tokens, y


def _one_step(model, weights):
    model.set_weights(weights)
    tokens, y = _data()
    history = model.fit(tokens, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"][0], [harness.to_numpy(w) for w in model.weights]


def _initial_weights():
    keras.utils.set_random_seed(2)
    model = _model()
    model(_data()[0][:1])
    return model, [harness.to_numpy(w) for w in model.weights]


def _compare(single, distributed, initial):
    (loss_1, weights_1), (loss_2, weights_2) = single, distributed
    assert loss_1 > 0
    moved = max(float(np.abs(a - b).max()) for a, b in zip(weights_1, initial))
    assert moved > 1e-3  # the step did train
    kernels = [w for w in weights_2 if w.ndim == 2 and w.shape == (DIM, 16)]
    assert kernels and kernels[0].min() >= 0.0  # NonNegative held
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-4, atol=1e-4)
    assert len(weights_1) == len(weights_2)
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@harness.tensorflow_only
def test_mirrored_strategy_step_equals_single_device():
    model, initial = _initial_weights()
    single = _one_step(model, initial)
    strategy = harness.mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored_model = _model()
        mirrored_model(_data()[0][:1])
    _compare(single, _one_step(mirrored_model, initial), initial)


@pytest.mark.skipif(
    harness.BACKEND != "jax", reason="keras.distribution runs on the JAX backend"
)
def test_jax_data_parallel_step_equals_single_device():
    import jax

    devices = jax.devices("cpu")
    assert len(devices) >= 2, "conftest.py asks XLA for two host devices"
    model, initial = _initial_weights()
    single = _one_step(model, initial)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices[:2])
    )
    try:
        parallel_model = _model()
        parallel_model(_data()[0][:1])
        distributed = _one_step(parallel_model, initial)
    finally:
        keras.distribution.set_distribution(None)
    _compare(single, distributed, initial)
