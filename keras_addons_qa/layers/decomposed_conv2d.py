import keras

from keras_addons_qa import _checks


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class DecomposedConv2D(keras.layers.Layer):
    """A `(k, 1)` convolution, a non-linearity, then a `(1, k)` convolution.

    The DecomposeMe block (Alvarez and Petersson, 2016): a 2D convolution
    with a `kh x kw` kernel is replaced by a vertical `(kh, 1)` convolution
    into `intermediate_filters` channels, an activation, and a horizontal
    `(1, kw)` convolution into `filters` channels. The output has the shape
    `Conv2D(filters, kernel_size, strides, padding)` would give (the
    vertical part takes the vertical stride, the horizontal part the
    horizontal one), with `intermediate * (C * kh + filters * kw)` kernel
    parameters instead of `C * filters * kh * kw`, and an extra
    non-linearity in between.

    With `activation=None` the block is exactly a convolution whose kernel
    has separable rank `intermediate_filters`:
    `K[a, b, c, f] = sum_i V[a, c, i] H[b, i, f]`.

    Args:
        filters: Output channels, an int >= 1.
        kernel_size: An int `k` or a pair `(kh, kw)`.
        strides: An int or a pair, as in `Conv2D`.
        padding: `"valid"` or `"same"`, as in `Conv2D`.
        activation: The non-linearity between the two convolutions
            (`"relu"` by default; `None` for a linear, low-rank block). The
            output itself has no activation, like `Conv2D`'s default; add
            one after if you want it.
        intermediate_filters: Channels between the two convolutions, an
            int >= 1. By default `min(input channels, filters)`, which keeps
            the parameter count at or below the full kernel's for every
            `k >= 2`.
        use_bias: Whether both convolutions have a bias.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.
            Convolution initializers and regularizers are the Keras
            defaults; the sublayers are `vertical` and `horizontal`.

    Input shape:
        `(batch, height, width, channels)` (channels last).

    Output shape:
        `(batch, new_height, new_width, filters)`, as `Conv2D`.

    Example:

    >>> import numpy as np
    >>> layer = DecomposedConv2D(16, 3, padding="same")
    >>> tuple(layer(np.zeros((2, 8, 8, 4), "float32")).shape)
    (2, 8, 8, 16)
    >>> layer.count_params(), 3 * 3 * 4 * 16 + 16  # vs Conv2D(16, 3)'s
    (260, 592)

    References:
        - [Alvarez and Petersson, 2016](https://arxiv.org/abs/1606.05426),
          DecomposeMe: Simplifying ConvNets for End-to-End Learning.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        padding="valid",
        activation="relu",
        intermediate_filters=None,
        use_bias=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = _checks.integer_at_least("filters", filters, 1)
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.strides = _pair("strides", strides)
        self.padding = _checks.one_of(
            "padding", str(padding).lower(), {"valid", "same"}
        )
        self.activation = keras.activations.get(activation)
        self.intermediate_filters = (
            None
            if intermediate_filters is None
            else _checks.integer_at_least(
                "intermediate_filters", intermediate_filters, 1
            )
        )
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "DecomposedConv2D expects inputs of shape (batch, height, "
                "width, channels) with known channels. Received: "
                f"inputs.shape={tuple(input_shape)}"
            )
        intermediate = self.intermediate_filters or min(
            input_shape[-1], self.filters
        )
        (kh, kw), (sh, sw) = self.kernel_size, self.strides
        self.vertical = keras.layers.Conv2D(
            intermediate, (kh, 1), strides=(sh, 1), padding=self.padding,
            activation=self.activation, use_bias=self.use_bias,
            dtype=self.dtype_policy, name="vertical",
        )
        self.horizontal = keras.layers.Conv2D(
            self.filters, (1, kw), strides=(1, sw), padding=self.padding,
            use_bias=self.use_bias, dtype=self.dtype_policy, name="horizontal",
        )
        self.vertical.build(input_shape)
        self.horizontal.build(self.vertical.compute_output_shape(input_shape))

    def call(self, inputs):
        return self.horizontal(self.vertical(inputs))

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(
            self.filters, self.kernel_size, strides=self.strides,
            padding=self.padding,
        ).compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "activation": keras.activations.serialize(self.activation),
            "intermediate_filters": self.intermediate_filters,
            "use_bias": self.use_bias,
        }


def _pair(name, value):
    """An int or a pair of ints >= 1, as a tuple `(vertical, horizontal)`."""
    values = value if isinstance(value, (list, tuple)) else (value, value)
    if len(values) != 2:
        raise ValueError(
            f"Argument `{name}` must be an int or a pair of ints >= 1. "
            f"Received: {name}={value!r}"
        )
    try:
        return tuple(_checks.integer_at_least(name, v, 1) for v in values)
    except ValueError:
        raise ValueError(
            f"Argument `{name}` must be an int or a pair of ints >= 1. "
            f"Received: {name}={value!r}"
        ) from None
