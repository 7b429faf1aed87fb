"""Every component in a functional model: fit in each execution mode, a
hand-written XLA train step, .keras round trip in safe mode, mixed precision.

Each case is a small model built by a factory, with data and a loss, so the
same checks run over all components.
"""

import keras
import numpy as np
import pytest

import keras_addons_qa as kaq
from tests import harness

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 8)).astype("float32")
TOKENS = np.where(
    np.arange(6)[None, :] < RNG.integers(1, 7, size=(32, 1)),
    RNG.integers(1, 20, size=(32, 6)),
    0,
)
EMBEDDING = RNG.normal(size=(10, 4)).astype("float32")


def activity_penalty_case():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    hidden = kaq.layers.ActivityPenalty(l1=1e-3, l2=1e-2)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    return model, X, X[:, :1] * 2.0, keras.losses.MeanSquaredError()


def masked_activity_penalty_case():
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    hidden = kaq.layers.ActivityPenalty(l2=1e-2)(hidden)
    pooled = keras.layers.GlobalAveragePooling1D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    return model, TOKENS, (TOKENS > 0).sum(1, keepdims=True).astype("float32"), keras.losses.MeanSquaredError()


def monotone_case():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    probs = kaq.layers.MonotoneGroupedSoftmax(4, 5, penalty_weight=0.5)(hidden)
    model = keras.Model(inputs, probs)
    labels = np.sort(RNG.integers(0, 5, size=(32, 4)), axis=1)
    return model, X, np.eye(5, dtype="float32")[labels], keras.losses.CategoricalCrossentropy()


def non_negative_case():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(
        6, kernel_constraint=kaq.constraints.NonNegative(), activation="relu"
    )(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    return model, X, X[:, :1] - X[:, 1:2], keras.losses.MeanSquaredError()


def loss_case():
    inputs = keras.Input((8,))
    probs = keras.layers.Dense(10, activation="softmax")(inputs)
    model = keras.Model(inputs, probs)
    target = EMBEDDING[np.argmax(X, axis=1)]
    loss = kaq.losses.AlmostOneHotEmbeddingLoss(EMBEDDING, power=8.0)
    return model, X, target, loss


def attention_case():
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    hidden = kaq.layers.QKVAttention(2, 4, dropout=0.1)(hidden, hidden)
    pooled = kaq.layers.MaskedAttentionPooling(4)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    return model, TOKENS, (TOKENS > 0).sum(1, keepdims=True).astype("float32"), keras.losses.MeanSquaredError()


def causal_attention_case():
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    hidden = kaq.layers.QKVAttention(2, 4, output_shape=3)(
        hidden, hidden, use_causal_mask=True
    )
    pooled = kaq.layers.MaskedAttentionPooling(4)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    return model, TOKENS, TOKENS[:, :1].astype("float32") / 10, keras.losses.MeanSquaredError()


IMAGES = RNG.normal(size=(32, 6, 6, 2)).astype("float32")
PRETRAINED = RNG.normal(size=(20, 4)).astype("float32")


def noise_adaptation_case():
    inputs = keras.Input((8,))
    clean = keras.layers.Dense(3, activation="softmax")(inputs)
    noisy = kaq.layers.NoiseAdaptation(3)(clean)
    labels = np.argmax(X[:, :3], axis=1)
    labels[::4] = (labels[::4] + 1) % 3  # a quarter of the labels flipped
    return keras.Model(inputs, noisy), X, labels, keras.losses.SparseCategoricalCrossentropy()


def gaussian_sampling_case():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    mean = keras.layers.Dense(2)(hidden)
    log_var = keras.layers.Dense(2)(hidden)
    code = kaq.layers.GaussianSampling(kl_weight=0.05, seed=5)([mean, log_var])
    model = keras.Model(inputs, keras.layers.Dense(8)(code))
    return model, X, X, keras.losses.MeanSquaredError()


def decomposed_conv_case():
    inputs = keras.Input((6, 6, 2))
    hidden = kaq.layers.DecomposedConv2D(4, 3, padding="same")(inputs)
    hidden = kaq.layers.DecomposedConv2D(4, (3, 2), strides=2)(hidden)
    pooled = keras.layers.GlobalAveragePooling2D()(hidden)
    target = IMAGES[:, :3, :3, :1].mean(axis=(1, 2))
    return keras.Model(inputs, keras.layers.Dense(1)(pooled)), IMAGES, target, keras.losses.MeanSquaredError()


def pretrained_embedding_case():
    inputs = keras.Input((6,), dtype="int32")
    hidden = kaq.layers.PretrainedEmbedding(
        PRETRAINED, trainable_tokens=5, trainable_dim=2, mask_zero=True
    )(inputs)
    pooled = kaq.layers.MaskedAttentionPooling(4)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    return model, TOKENS, (TOKENS > 0).sum(1, keepdims=True).astype("float32"), keras.losses.MeanSquaredError()


def distance_penalty_case():
    inputs = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    hidden = kaq.layers.QKVAttention(2, 4, distance_penalty=0.5)(hidden, hidden)
    pooled = kaq.layers.MaskedAttentionPooling(4)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    return model, TOKENS, TOKENS[:, :1].astype("float32") / 10, keras.losses.MeanSquaredError()


VIDEO_TOKENS = np.where(  # 2 clips of 6 steps per example, right-padded
    np.arange(6)[None, None, :] < RNG.integers(1, 7, size=(32, 2, 1)),
    RNG.integers(1, 20, size=(32, 2, 6)),
    0,
)


def rank4_attention_case():
    # Attention over the steps of each clip (axis 2 of (B, clips, steps,
    # features)): gated, causal, a sliding window, padding from the
    # embedding's mask.
    inputs = keras.Input((2, 6), dtype="int32")
    hidden = keras.layers.Embedding(20, 8, mask_zero=True)(inputs)
    hidden = kaq.layers.QKVAttention(
        2, 4, attention_axes=2, use_gate=True, sliding_window=3
    )(hidden, hidden, use_causal_mask=True)
    pooled = keras.layers.GlobalAveragePooling2D()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    target = VIDEO_TOKENS[:, 0, :1].astype("float32") / 10
    return model, VIDEO_TOKENS, target, keras.losses.MeanSquaredError()


CASES = {
    "activity_penalty": activity_penalty_case,
    "masked_activity_penalty": masked_activity_penalty_case,
    "monotone_grouped_softmax": monotone_case,
    "non_negative": non_negative_case,
    "almost_one_hot_loss": loss_case,
    "qkv_attention_and_pooling": attention_case,
    "causal_qkv_attention": causal_attention_case,
    "noise_adaptation": noise_adaptation_case,
    "gaussian_sampling": gaussian_sampling_case,
    "decomposed_conv2d": decomposed_conv_case,
    "pretrained_embedding": pretrained_embedding_case,
    "qkv_distance_penalty": distance_penalty_case,
    "qkv_rank4_gated_window": rank4_attention_case,
}


def _check_constraint(model):
    """The invariants training must keep: constraints hold, frozen stays frozen."""
    for layer in model.layers:
        if isinstance(getattr(layer, "kernel_constraint", None), kaq.constraints.NonNegative):
            assert harness.to_numpy(layer.kernel).min() >= 0.0
        if isinstance(layer, kaq.layers.NoiseAdaptation):
            transition = harness.to_numpy(layer.transition).astype("float64")
            assert transition.min() >= 0.0
            np.testing.assert_allclose(transition.sum(axis=0), 1.0, atol=1e-5)
        if isinstance(layer, kaq.layers.PretrainedEmbedding):
            np.testing.assert_array_equal(harness.to_numpy(layer.embeddings), PRETRAINED)


@pytest.mark.parametrize("mode", list(harness.FIT_MODES))
@pytest.mark.parametrize("case", list(CASES))
def test_fit(case, mode):
    keras.utils.set_random_seed(1)
    model, x, y, loss = CASES[case]()
    model.compile(keras.optimizers.Adam(1e-2), loss=loss, **harness.FIT_MODES[mode])
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before
    _check_constraint(model)


@pytest.mark.parametrize("case", list(CASES))
def test_reported_loss_includes_the_layer_penalties(case):
    model, x, y, loss = CASES[case]()
    model.compile("sgd", loss=loss)
    reported = model.evaluate(x, y, verbose=0, batch_size=len(x))
    predictions = model(x)
    expected = float(harness.to_numpy(loss(y, predictions)))
    expected += sum(float(harness.to_numpy(v)) for v in model.losses)
    np.testing.assert_allclose(reported, expected, rtol=1e-5)


@harness.tensorflow_only
@pytest.mark.parametrize("case", list(CASES))
def test_hand_written_xla_train_step(case):
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    model, x, y, loss = CASES[case]()
    optimizer = keras.optimizers.SGD(0.05)
    optimizer.build(model.trainable_variables)

    def step(x, y, training):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=training)) + sum(model.losses)
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return value

    # Dropout draws differ between eager and XLA kernels, so the equality
    # check runs in inference mode; a training-mode XLA step runs after it.
    initial = [v.numpy() for v in model.variables]
    eager_value = step(x, y, training=False)
    eager_weights = [v.numpy() for v in model.variables]
    for v, w in zip(model.variables, initial):
        v.assign(w)
    optimizer = keras.optimizers.SGD(0.05)
    optimizer.build(model.trainable_variables)
    xla_step = tf.function(step, jit_compile=True)
    xla_value = xla_step(x, y, training=False)
    np.testing.assert_allclose(xla_value.numpy(), eager_value.numpy(), rtol=1e-5)
    for v, w in zip(model.variables, eager_weights):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-4, atol=1e-6)
    values = [xla_step(x, y, training=True).numpy() for _ in range(5)]
    harness.assert_finite(np.array(values), *model.trainable_variables)
    _check_constraint(model)


@pytest.mark.parametrize("case", list(CASES))
def test_keras_file_round_trip_in_safe_mode(case, tmp_path):
    model, x, y, loss = CASES[case]()
    model.compile("adam", loss=loss)
    model.fit(x, y, epochs=1, verbose=0)
    restored = harness.save_and_reload(model, tmp_path)  # no custom_objects
    np.testing.assert_allclose(
        harness.to_numpy(restored.predict(x, verbose=0)),
        harness.to_numpy(model.predict(x, verbose=0)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        restored.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_mixed_precision(case, policy):
    keras.utils.set_random_seed(3)
    with harness.dtype_policy(policy):
        model, x, y, loss = CASES[case]()
        model.compile(keras.optimizers.Adam(1e-2), loss=loss)
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        outputs = model.predict(x, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    harness.assert_finite(outputs)
    for value in model.losses:
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
    _check_constraint(model)
