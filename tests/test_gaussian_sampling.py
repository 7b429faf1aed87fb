import keras
import numpy as np
import pytest

from keras_addons_qa.layers import GaussianSampling
from tests import harness


class GaussianSamplingHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            GaussianSampling,
            init_kwargs={"kl_weight": 0.5, "seed": 3},
            input_shape=((2, 4), (2, 4)),
            expected_output_shape=(2, 4),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=1,
            expected_num_losses=1,
            supports_masking=False,
        )


def _kl(mean, log_var):
    kl = 0.5 * (mean**2 + np.exp(log_var) - 1.0 - log_var)
    return kl.reshape(len(kl), -1).sum(-1).mean()


def test_the_kl_values_of_the_issue():
    layer = GaussianSampling()
    zeros = np.zeros((4, 3), "float32")
    layer([zeros, zeros])
    assert float(harness.to_numpy(layer.losses[0])) == 0.0
    layer([np.ones((4, 3), "float32"), zeros])
    np.testing.assert_allclose(harness.to_numpy(layer.losses[0]), 1.5, rtol=1e-6)


def test_kl_term_matches_the_closed_form_times_kl_weight():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(5, 2, 3)).astype("float32")
    log_var = rng.normal(size=(5, 2, 3)).astype("float32")
    layer = GaussianSampling(kl_weight=0.25)
    layer([mean, log_var])
    np.testing.assert_allclose(
        harness.to_numpy(layer.losses[0]), 0.25 * _kl(mean, log_var), rtol=1e-5
    )
    silent = GaussianSampling(kl_weight=0.0)
    silent([mean, log_var])
    assert silent.losses == []


def test_inference_returns_the_mean_and_training_samples():
    rng = np.random.default_rng(1)
    mean = np.tile(rng.normal(size=(1, 4)), (20000, 1)).astype("float32")
    log_var = np.tile(np.log([0.25, 1.0, 4.0, 0.01]), (20000, 1)).astype("float32")
    layer = GaussianSampling(seed=7)
    np.testing.assert_array_equal(harness.to_numpy(layer([mean, log_var])), mean)
    np.testing.assert_array_equal(
        harness.to_numpy(layer([mean, log_var], training=False)), mean
    )
    z = harness.to_numpy(layer([mean, log_var], training=True))
    np.testing.assert_allclose(z.mean(0), mean[0], atol=0.04)
    np.testing.assert_allclose(z.std(0), [0.5, 1.0, 2.0, 0.1], rtol=0.03)


def test_seeded_layers_draw_the_same_noise():
    x = [np.zeros((3, 5), "float32"), np.zeros((3, 5), "float32")]
    a = harness.to_numpy(GaussianSampling(seed=11)(x, training=True))
    b = harness.to_numpy(GaussianSampling(seed=11)(x, training=True))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() > 0


def test_gradients_reach_mean_and_log_var_through_the_sample():
    mean = keras.Variable(np.full((2, 3), 0.5, "float32"))
    log_var = keras.Variable(np.zeros((2, 3), "float32"))
    layer = GaussianSampling(kl_weight=0.0, seed=1)

    def fn():
        return keras.ops.sum(layer([mean, log_var], training=True))

    _, (g_mean, g_log_var) = harness.gradients(fn, [mean, log_var])
    np.testing.assert_allclose(harness.to_numpy(g_mean), 1.0)
    # d/d(log_var) of mean + exp(log_var / 2) eps is eps / 2 at log_var = 0.
    assert np.abs(harness.to_numpy(g_log_var)).max() > 0


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_extreme_log_variances_stay_finite(policy):
    mean = np.array([[0.0, 1e4, -1e4]], "float32")
    log_var = np.array([[-1e4, 1e4, 300.0]], "float32")
    with harness.dtype_policy(policy):
        layer = GaussianSampling(seed=0)
        variables = [keras.Variable(mean), keras.Variable(log_var)]

        def fn():
            z = layer(variables, training=True)
            return keras.ops.sum(keras.ops.cast(z, "float32")) + layer.losses[0]

        value, grads = harness.gradients(fn, variables)
    sample = layer([mean, log_var], training=True)
    harness.assert_finite(value, sample, *grads)
    assert keras.backend.standardize_dtype(layer.losses[0].dtype) == "float32"


@pytest.mark.parametrize("value", [-1.0, float("inf"), "1"])
def test_bad_kl_weight(value):
    with pytest.raises(ValueError, match=f"kl_weight={value!r}"):
        GaussianSampling(kl_weight=value)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed=-1"):
        GaussianSampling(seed=-1)


def test_inputs_must_be_a_pair_of_one_shape():
    x = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match=r"Received: one tensor of shape \(2, 3\)"):
        GaussianSampling()(x)
    with pytest.raises(ValueError, match="Received: a list of 3"):
        GaussianSampling()([x, x, x])
    with pytest.raises(ValueError, match=r"log_var.shape=\(2, 4\)"):
        GaussianSampling()([x, np.zeros((2, 4), "float32")])
