import keras
import numpy as np
import pytest

from keras_addons_qa.layers import DecomposedConv2D
from tests import harness


class DecomposedConv2DHarnessTest(harness.TestCase):
    def test_layer_harness(self):
        self.run_layer_test(
            DecomposedConv2D,
            init_kwargs={"filters": 5, "kernel_size": 3, "padding": "same"},
            input_shape=(2, 6, 7, 3),
            expected_output_shape=(2, 6, 7, 5),
            expected_num_trainable_weights=4,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
            supports_masking=False,
        )

    def test_layer_harness_no_bias_strided(self):
        self.run_layer_test(
            DecomposedConv2D,
            init_kwargs={
                "filters": 4, "kernel_size": (3, 2), "strides": (2, 1),
                "use_bias": False, "intermediate_filters": 6, "activation": None,
            },
            input_shape=(2, 9, 8, 3),
            expected_output_shape=(2, 4, 7, 4),
            expected_num_trainable_weights=2,
            expected_num_non_trainable_weights=0,
            expected_num_losses=0,
            supports_masking=False,
        )


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2, (2, 3)])
@pytest.mark.parametrize("kernel_size", [1, 3, (3, 5), (4, 2)])
def test_output_shape_is_conv2d_s(padding, strides, kernel_size):
    x = np.zeros((2, 17, 19, 4), "float32")
    ours = DecomposedConv2D(6, kernel_size, strides=strides, padding=padding)
    stock = keras.layers.Conv2D(6, kernel_size, strides=strides, padding=padding)
    assert tuple(ours(x).shape) == tuple(stock(x).shape)
    assert ours.compute_output_shape(x.shape) == stock.compute_output_shape(x.shape)


@pytest.mark.parametrize("channels,filters,k", [(3, 64, 3), (64, 64, 3), (32, 16, 5), (8, 8, 7)])
def test_fewer_parameters_than_the_full_kernel(channels, filters, k):
    layer = DecomposedConv2D(filters, k)
    layer.build((None, 32, 32, channels))
    full = keras.layers.Conv2D(filters, k)
    full.build((None, 32, 32, channels))
    assert layer.count_params() < full.count_params()
    intermediate = min(channels, filters)
    assert layer.count_params() == intermediate * (channels * k + filters * k) + intermediate + filters


@pytest.mark.parametrize("padding,strides", [("valid", 1), ("same", 1), ("same", (2, 3))])
def test_linear_block_is_a_conv_with_a_separable_kernel(padding, strides):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 11, 10, 3)).astype("float32")
    layer = DecomposedConv2D(
        4, (3, 5), strides=strides, padding=padding, activation=None,
        intermediate_filters=2,
    )
    layer.build(x.shape)
    # The vertical bias would pass through the horizontal kernel, and "same"
    # zero-pads after it: the identity holds without it.
    layer.vertical.bias.assign(np.zeros(2, "float32"))
    v = harness.to_numpy(layer.vertical.kernel)  # (3, 1, 3, 2)
    h = harness.to_numpy(layer.horizontal.kernel)  # (1, 5, 2, 4)
    full = keras.layers.Conv2D(4, (3, 5), strides=strides, padding=padding)
    full.build(x.shape)
    full.kernel.assign(np.einsum("aci,bif->abcf", v[:, 0], h[0]))
    full.bias.assign(harness.to_numpy(layer.horizontal.bias))
    np.testing.assert_allclose(
        harness.to_numpy(layer(x)), harness.to_numpy(full(x)), atol=1e-5
    )


def test_the_activation_sits_between_the_two_convolutions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    layer = DecomposedConv2D(4, 3, activation="relu")
    out = harness.to_numpy(layer(x))
    middle = np.maximum(harness.to_numpy(layer.vertical.convolution_op(x, layer.vertical.kernel))
                        + harness.to_numpy(layer.vertical.bias), 0.0)
    expected = harness.to_numpy(layer.horizontal(middle))
    np.testing.assert_allclose(out, expected, atol=1e-5)
    linear = DecomposedConv2D(4, 3, activation=None)
    linear.build(x.shape)
    linear.set_weights(layer.get_weights())
    assert np.abs(harness.to_numpy(linear(x)) - out).max() > 1e-3


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    with harness.dtype_policy(policy):
        layer = DecomposedConv2D(4, 3, padding="same")
        out = layer(np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32"))
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    assert keras.backend.standardize_dtype(layer.vertical.kernel.dtype) == "float32"
    harness.assert_finite(out)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(filters=0, kernel_size=3), "filters=0"),
        (dict(filters=4, kernel_size=0), "kernel_size=0"),
        (dict(filters=4, kernel_size=(3, 3, 3)), r"kernel_size=\(3, 3, 3\)"),
        (dict(filters=4, kernel_size=3, strides=(1, 0)), r"strides=\(1, 0\)"),
        (dict(filters=4, kernel_size=3, padding="causal"), "padding='causal'"),
        (dict(filters=4, kernel_size=3, intermediate_filters=0), "intermediate_filters=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecomposedConv2D(**kwargs)


def test_inputs_must_be_images():
    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 8, 3\)"):
        DecomposedConv2D(4, 3)(np.zeros((2, 8, 3), "float32"))
