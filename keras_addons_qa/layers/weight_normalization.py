import inspect

import keras
from keras import ops

from keras_addons_qa import _numerics


# The variance over the first batch below which a unit keeps its length.
_VARIANCE_FLOOR = 1e-6


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class WeightNormalization(keras.layers.Wrapper):
    """Weight normalization (Salimans and Kingma, 2016) of a wrapped layer.

    The wrapped layer's kernel `v` is re-parameterized as `g * v / ||v||`,
    the norm taken over every axis but the last (the output units), with a
    trainable `g` per unit: the direction and the length of each unit's
    weight vector are learned separately. It wraps `Dense`, `Conv1D/2D/3D`
    and anything with a `kernel`; for a recurrent layer (`SimpleRNN`,
    `GRU`, `LSTM`) its cell's `recurrent_kernel`. Arguments and defaults
    are TensorFlow Addons' `tfa.layers.WeightNormalization`'s:

    ```python
    layer = WeightNormalization(keras.layers.Conv2D(32, 3), data_init=True)
    ```

    `g` starts at `||v||`, so the layer first computes what the wrapped
    layer computes. With `data_init=True` (the default), the first batch
    the layer sees initializes it, as in TensorFlow Addons: in `fit`, or in
    `predict`, `evaluate` or a direct call if those come first (the paper's
    section 3): the pre-activations of the unit-norm kernel get zero mean
    and unit variance over that batch, each unit's length becoming
    `1 / std` and its bias `-mean / std`. A unit whose pre-activations
    vary less than that (variance <= 1e-6: a batch of one, a constant
    input) keeps its length `||v||` and is only centred; an empty batch
    leaves the initialization to the next one. This happens once: the layer
    keeps an `initialized` flag, and a saved and reloaded model does not
    initialize again. Call the model on representative data before
    exporting it.

    The data-dependent values are offsets in non-trainable variables
    (`g_init`, `bias_init`) added to the trainable `g` and the layer's
    bias, so that the initialization is a state update like a batch
    normalization's statistics and works inside a compiled `fit` on every
    backend; the trainable variables get the same gradients as the paper's
    `g` and bias. `g` and the norm are computed in float32 under mixed
    precision.

    Args:
        layer: The layer to wrap, a `keras.layers.Layer` with a `kernel`
            (or a recurrent layer).
        data_init: Whether to initialize from the first batch.
        **kwargs: Base layer keyword arguments, such as `name`.

    Call arguments:
        inputs: What the wrapped layer takes.
        training: Passed on to the wrapped layer if it takes it.

    Example:

    >>> import numpy as np
    >>> layer = WeightNormalization(keras.layers.Dense(3))
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> y = keras.ops.convert_to_numpy(layer(x))  # the first batch initializes
    >>> bool(np.allclose(y.mean(0), 0.0, atol=1e-5)), bool(np.allclose(y.std(0), 1.0, atol=1e-3))
    (True, True)

    References:
        - [Salimans and Kingma, 2016](https://arxiv.org/abs/1602.07868),
          Weight Normalization.
    """

    def __init__(self, layer, data_init=True, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "Argument `layer` must be a Keras layer with a `kernel`. "
                f"Received: layer={layer!r}"
            )
        super().__init__(layer, **kwargs)
        self.data_init = bool(data_init)
        self.is_rnn = isinstance(layer, keras.layers.RNN)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        owner = self.layer.cell if self.is_rnn else self.layer
        name = "recurrent_kernel" if self.is_rnn else "kernel"
        kernel = getattr(owner, name, None)
        if not isinstance(kernel, keras.Variable):
            raise ValueError(
                "WeightNormalization wraps a layer that contains a `kernel` "
                f"(or an RNN whose cell has a `recurrent_kernel`). Received: "
                f"layer={self.layer.name!r} ({type(self.layer).__name__})"
            )
        self._v = kernel
        self._takes_training = "training" in inspect.signature(self.layer.call).parameters
        bias = getattr(owner, "bias", None)
        self._bias = bias if isinstance(bias, keras.Variable) else None
        units = kernel.shape[-1]
        self.kernel_norm_axes = tuple(range(len(kernel.shape) - 1))
        norm = ops.convert_to_numpy(self._norm(kernel))
        self.g = self.add_weight(
            name="g", shape=(units,),
            initializer=keras.initializers.Constant(norm),
            dtype="float32", autocast=False,
        )
        self.g_init = self.add_weight(
            name="g_init", shape=(units,), initializer="zeros",
            trainable=False, dtype="float32", autocast=False,
        )
        self.bias_init = self.add_weight(
            name="bias_init", shape=(units,), initializer="zeros",
            trainable=False, dtype="float32", autocast=False,
        )
        self.initialized = self.add_weight(
            name="initialized", shape=(), initializer="zeros",
            trainable=False, dtype="float32", autocast=False,
        )
        if not self.data_init:
            self.initialized.assign(1.0)

    def _norm(self, kernel):
        """Each unit's `||v||`, at least 1e-12: floored under the square
        root, so that a zero kernel has a finite gradient (sqrt's is inf at
        0, and inf * 0 is NaN)."""
        kernel = _numerics.widen(ops.convert_to_tensor(kernel))
        squares = ops.sum(ops.square(kernel), axis=self.kernel_norm_axes)
        return ops.sqrt(ops.maximum(squares, 1e-24))

    def _direction(self):
        v = _numerics.widen(ops.convert_to_tensor(self._v))
        return v / self._norm(v)

    def _wrapped(self, kernel, bias, inputs, training, linear=False):
        """The wrapped layer with `kernel` (and `bias`) in place of its own."""
        replace = {id(self._v): kernel}
        if bias is not None and self._bias is not None:
            replace[id(self._bias)] = bias
        trainable = [replace.get(id(w), w.value) for w in self.layer.trainable_variables]
        fixed = [replace.get(id(w), w.value) for w in self.layer.non_trainable_variables]
        activation = getattr(self.layer, "activation", None)
        if linear and activation is not None:
            self.layer.activation = keras.activations.linear
        try:
            extra = {"training": training} if self._takes_training else {}
            outputs, _ = self.layer.stateless_call(trainable, fixed, inputs, **extra)
        finally:
            if linear and activation is not None:
                self.layer.activation = activation
        return outputs

    def call(self, inputs, training=None):
        direction = self._direction()
        if self.data_init:
            self._initialize_once(inputs, direction, training)
        g = self.g + self.g_init
        kernel = ops.cast(direction * g, self._v.dtype)
        bias = None
        if self._bias is not None:
            bias = ops.cast(_numerics.widen(self._bias.value) + self.bias_init, self._bias.dtype)
        return self._wrapped(kernel, bias, inputs, training)

    def _initialize_once(self, inputs, direction, training):
        """The paper's data-dependent initialization, on the first batch."""
        done = self.initialized > 0.5

        def measure():
            zero_bias = None if self._bias is None else ops.zeros_like(self._bias.value)
            pre = _numerics.widen(self._wrapped(
                ops.cast(direction, self._v.dtype), zero_bias, inputs, training,
                linear=not self.is_rnn,
            ))
            axes = tuple(range(len(pre.shape) - 1))
            # An empty batch initializes nothing (its mean would be NaN).
            rows = ops.sum(ops.ones_like(pre[..., 0]))
            empty = rows < 0.5
            mean = ops.sum(pre, axis=axes) / ops.maximum(rows, 1.0)
            variance = ops.sum(ops.square(pre - mean), axis=axes) / ops.maximum(rows, 1.0)
            # Fused recurrent kernels hold several gates per unit.
            repeats = self.g.shape[0] // mean.shape[0]
            if repeats > 1:
                variance, mean = ops.tile(variance, (repeats,)), ops.tile(mean, (repeats,))
            # A unit that hardly varies over the batch (a batch of one, a
            # constant input) says nothing of its scale: it keeps its
            # length and is only centred, instead of a length of 1 / std
            # (1e5 and more, then inf under float16).
            varies = variance > _VARIANCE_FLOOR
            g = _numerics.widen(self.g.value)
            scale = ops.where(varies, 1.0 / ops.sqrt(ops.maximum(variance, _VARIANCE_FLOOR)), g)
            # Offsets that bring the current g and bias to the targets.
            bias = 0.0 if self._bias is None else _numerics.widen(self._bias.value)
            return (
                ops.where(empty, self.g_init.value, scale - self.g),
                ops.where(empty, self.bias_init.value, -mean * scale - bias),
                ops.where(empty, 0.0, 1.0),
            )

        scale, shift, initialized = ops.cond(
            done,
            lambda: (self.g_init.value, self.bias_init.value, self.initialized.value),
            measure,
        )
        self.g_init.assign(scale)
        self.bias_init.assign(shift)
        self.initialized.assign(initialized)

    def remove(self):
        """The wrapped layer with its kernel (and bias) set to the
        normalized ones, for inference without the wrapper."""
        g = self.g + self.g_init
        self._v.assign(ops.cast(self._direction() * g, self._v.dtype))
        if self._bias is not None:
            self._bias.assign(ops.cast(
                _numerics.widen(self._bias.value) + self.bias_init, self._bias.dtype
            ))
        return self.layer

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "data_init": self.data_init}
