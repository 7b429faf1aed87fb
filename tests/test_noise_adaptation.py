import keras
import numpy as np
import pytest

from keras_addons_qa.constraints import ProbabilitySimplex
from keras_addons_qa.layers import NoiseAdaptation
from tests import harness


class NoiseAdaptationHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            NoiseAdaptation,
            init_kwargs={"num_classes": 4},
            input_shape=(2, 3, 4),
            expected_output_shape=(2, 3, 4),
            expected_num_trainable_weights=1,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
            supports_masking=True,
        )


def _probabilities(shape, seed=0):
    logits = np.random.default_rng(seed).normal(size=shape) * 3
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


def test_starts_as_the_identity_with_a_simplex_constraint():
    layer = NoiseAdaptation(5)
    p = _probabilities((4, 5))
    np.testing.assert_array_equal(harness.to_numpy(layer(p)), p)
    np.testing.assert_array_equal(harness.to_numpy(layer.transition), np.eye(5))
    assert isinstance(layer.transition.constraint, ProbabilitySimplex)
    assert layer.transition.constraint.axis == 0


def test_output_is_p_times_q_transposed_and_rows_sum_to_one():
    layer = NoiseAdaptation(3)
    layer.build((None, 3))
    q = np.array([[0.7, 0.1, 0.0], [0.2, 0.8, 0.5], [0.1, 0.1, 0.5]], "float32")
    layer.transition.assign(q)  # columns are distributions
    p = _probabilities((6, 3), seed=1)
    out = harness.to_numpy(layer(p))
    np.testing.assert_allclose(out, p @ q.T, rtol=1e-6)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)


def test_learns_the_noise_transition_from_noisy_labels():
    # Clean class probabilities are given (a confident, correct classifier
    # below: 0.98 on the true class); labels are flipped with a known
    # column-stochastic T. Training the layer alone on the noisy labels
    # must recover T. (Exactly one-hot inputs would not do: the identity
    # gives the flipped labels probability 0, where cross-entropy's clip
    # has no gradient.)
    rng = np.random.default_rng(3)
    true_t = np.array([[0.6, 0.0, 0.2], [0.4, 0.9, 0.0], [0.0, 0.1, 0.8]])
    clean = rng.integers(0, 3, size=6000)
    noisy = np.array([rng.choice(3, p=true_t[:, c]) for c in clean])
    inputs = (0.97 * np.eye(3) + 0.01)[clean].astype("float32")
    layer = NoiseAdaptation(3)
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy")
    model.fit(inputs, noisy, epochs=150, batch_size=len(inputs), verbose=0)
    learned = harness.to_numpy(layer.transition)
    empirical = np.stack(
        [np.bincount(noisy[clean == c], minlength=3) / (clean == c).sum() for c in range(3)],
        axis=1,
    )
    # What the model predicts for clean class c is Q p_c: that must match
    # the noisy-label frequencies; Q itself is T up to the 0.01 smoothing.
    smoothing = 0.97 * np.eye(3) + 0.01
    np.testing.assert_allclose(learned @ smoothing, empirical, atol=0.02)
    np.testing.assert_allclose(learned, empirical, atol=0.05)
    np.testing.assert_allclose(learned.sum(axis=0), 1.0, atol=1e-5)
    assert learned.min() >= 0.0


def test_trace_penalty_is_added_as_a_loss():
    layer = NoiseAdaptation(3, trace_penalty=0.5)
    layer(_probabilities((2, 3)))
    np.testing.assert_allclose(harness.to_numpy(layer.losses[0]), 1.5, rtol=1e-6)
    assert NoiseAdaptation(3).get_config()["trace_penalty"] == 0.0
    quiet = NoiseAdaptation(3)
    quiet(_probabilities((2, 3)))
    assert quiet.losses == []


def _joint_fit(trace_penalty):
    """A classifier and the layer trained together on 40%-flipped labels."""
    rng = np.random.default_rng(5)
    clean = rng.integers(0, 3, size=1500)
    x = (np.eye(3)[clean] * 3 + rng.normal(size=(1500, 3))).astype("float32")
    noisy = np.where(rng.random(1500) < 0.4, (clean + 1) % 3, clean)
    keras.utils.set_random_seed(0)
    classifier = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(16, activation="relu"),
         keras.layers.Dense(3, activation="softmax")]
    )
    layer = NoiseAdaptation(3, trace_penalty=trace_penalty)
    model = keras.Sequential([classifier, layer])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, noisy, epochs=15, batch_size=50, verbose=0)
    return harness.to_numpy(layer.transition)


def test_joint_training_needs_the_trace_penalty_to_leave_the_identity():
    # Without it Q stays at (or within a hair of) the identity: the
    # classifier absorbs the noise. With it the flips (clean c -> noisy
    # c + 1) land in Q.
    np.testing.assert_allclose(_joint_fit(0.0), np.eye(3), atol=0.02)
    learned = _joint_fit(0.05)
    flips = learned[[1, 2, 0], [0, 1, 2]]
    assert flips.min() > 0.2, learned
    np.testing.assert_allclose(learned.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_output_dtype_and_sums(policy):
    with harness.dtype_policy(policy):
        layer = NoiseAdaptation(4)
        out = layer(_probabilities((3, 4), seed=2))
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    assert keras.backend.standardize_dtype(layer.transition.dtype) == "float32"
    np.testing.assert_allclose(
        harness.to_numpy(out).astype("float32").sum(-1), 1.0, atol=1e-2
    )


@pytest.mark.parametrize("value", [1, 0, 2.5, "3"])
def test_bad_num_classes(value):
    with pytest.raises(ValueError, match=f"num_classes={value!r}"):
        NoiseAdaptation(value)


def test_bad_trace_penalty():
    with pytest.raises(ValueError, match="trace_penalty=-0.1"):
        NoiseAdaptation(3, trace_penalty=-0.1)


def test_wrong_number_of_classes_in_the_input():
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 4\)"):
        NoiseAdaptation(3)(np.zeros((2, 4), "float32"))
