"""Data parallelism: one `fit` step over two devices equals one on a single one.

A model that uses every component (QKVAttention, ActivityPenalty,
MaskedAttentionPooling, a NonNegative kernel, MonotoneGroupedSoftmax and
AlmostOneHotEmbeddingLoss) takes one SGD step on the same global batch, from
the same weights, on one device and on two: the loss (including the
`add_loss` penalties, which Keras scales per replica) and every weight after
the step agree to 1e-4. TensorFlow runs `tf.distribute.MirroredStrategy` over
two logical CPUs; JAX runs `keras.distribution.DataParallel` over two host
devices (see conftest.py).

A second model does the same for the later components: PretrainedEmbedding,
QKVAttention with distance_penalty, a gate, a causal sliding window and
padding, QKVAttention over the two axes of an image, DecomposedConv2D and
NoiseAdaptation
(with its trace penalty and ProbabilitySimplex constraint). GaussianSampling
is left out on purpose: its training-mode draws come from per-device random
streams, so one device and two give different samples by design.
"""

import numpy as np
import pytest

import keras
import keras_addons_qa as kaq
from tests import harness

VOCAB, GROUPS, SIZE, DIM = harness.VOCAB, harness.GROUPS, harness.SIZE, harness.DIM
_model, _data = harness.every_component_model, harness.every_component_data


PRETRAINED = np.random.default_rng(3).normal(size=(VOCAB, DIM)).astype("float32")


def _beyond_model():
    tokens = keras.Input((6,), dtype="int32")
    images = keras.Input((6, 6, 2))
    x = kaq.layers.PretrainedEmbedding(
        PRETRAINED, trainable_tokens=5, trainable_dim=2, mask_zero=True
    )(tokens)
    x = kaq.layers.QKVAttention(
        2, 4, distance_penalty=0.5, use_gate=True, sliding_window=3
    )(x, x, use_causal_mask=True)
    pooled = kaq.layers.MaskedAttentionPooling(5)(x)
    seen = kaq.layers.DecomposedConv2D(3, 3, padding="same")(images)
    # Attention over both image axes (rank-4 inputs).
    seen = kaq.layers.QKVAttention(1, 2, attention_axes=(1, 2))(seen, seen)
    seen = keras.layers.GlobalAveragePooling2D()(seen)
    hidden = keras.layers.Concatenate()([pooled, seen])
    clean = keras.layers.Dense(SIZE, activation="softmax")(hidden)
    noisy = kaq.layers.NoiseAdaptation(SIZE, trace_penalty=0.1, name="noise")(clean)
    model = keras.Model({"tokens": tokens, "images": images}, noisy)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    return model


def _beyond_data():
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, VOCAB, size=(8, 6)).astype("int32")
    tokens[::2, 4:] = 0  # padding
    images = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    return {"tokens": tokens, "images": images}, rng.integers(0, SIZE, size=(8,))


def _beyond_invariants(weights):
    embeddings = [w for w in weights if w.shape == PRETRAINED.shape]
    assert embeddings and np.array_equal(embeddings[0], PRETRAINED)  # frozen
    transition = [w for w in weights if w.shape == (SIZE, SIZE)][-1]
    np.testing.assert_allclose(transition.sum(axis=0), 1.0, atol=1e-5)  # simplex
    assert transition.min() >= 0.0


def _core_invariants(weights):
    kernels = [w for w in weights if w.ndim == 2 and w.shape == (DIM, 16)]
    assert kernels and kernels[0].min() >= 0.0  # NonNegative held



MODELS = {
    "core": (_model, _data, _core_invariants),
    "beyond": (_beyond_model, _beyond_data, _beyond_invariants),
}


def _one_step(model, weights, data=_data):
    model.set_weights(weights)
    tokens, y = data()
    history = model.fit(tokens, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"][0], [harness.to_numpy(w) for w in model.weights]


def _first(inputs):
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    return inputs[:1]


def _initial_weights(build=_model, data=_data):
    keras.utils.set_random_seed(2)
    model = build()
    model(_first(data()[0]))
    return model, [harness.to_numpy(w) for w in model.weights]


def _compare(single, distributed, initial, invariants=_core_invariants):
    (loss_1, weights_1), (loss_2, weights_2) = single, distributed
    assert loss_1 > 0
    moved = max(float(np.abs(a - b).max()) for a, b in zip(weights_1, initial))
    assert moved > 1e-3  # the step did train
    invariants(weights_2)
    np.testing.assert_allclose(loss_2, loss_1, rtol=1e-4, atol=1e-4)
    assert len(weights_1) == len(weights_2)
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@harness.tensorflow_only
@pytest.mark.parametrize("kind", list(MODELS))
def test_mirrored_strategy_step_equals_single_device(kind):
    build, data, invariants = MODELS[kind]
    model, initial = _initial_weights(build, data)
    single = _one_step(model, initial, data)
    strategy = harness.mirrored_strategy()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored_model = build()
        mirrored_model(_first(data()[0]))
    _compare(single, _one_step(mirrored_model, initial, data), initial, invariants)


@pytest.mark.skipif(
    harness.BACKEND != "jax", reason="keras.distribution runs on the JAX backend"
)
@pytest.mark.parametrize("kind", list(MODELS))
def test_jax_data_parallel_step_equals_single_device(kind):
    import jax

    build, data, invariants = MODELS[kind]
    devices = jax.devices("cpu")
    assert len(devices) >= 2, "conftest.py asks XLA for two host devices"
    model, initial = _initial_weights(build, data)
    single = _one_step(model, initial, data)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=devices[:2])
    )
    try:
        parallel_model = build()
        parallel_model(_first(data()[0]))
        distributed = _one_step(parallel_model, initial, data)
    finally:
        keras.distribution.set_distribution(None)
    _compare(single, distributed, initial, invariants)
