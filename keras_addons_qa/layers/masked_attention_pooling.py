import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _numerics
from keras_addons_qa import _xla


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class MaskedAttentionPooling(keras.layers.Layer):
    """Attention pooling over time that padding cannot see.

    The attention of Hierarchical Attention Networks (Yang et al., 2016):
    each step `h_t` gets a score `s_t = u . tanh(W h_t + b)`, the weights are
    `a = softmax(s)` over the real steps only, and the output is
    `sum_t a_t h_t`.

    Padding is invisible, exactly: padded steps get weight 0 (the others are
    renormalized among themselves, as if the sequence had been truncated), and
    whatever the padding holds (large values, inf, NaN) changes neither the
    output nor any gradient. A row with no real step gives a zero vector and
    zero weights, with finite gradients. The softmax runs in float32.

    Args:
        units: Size of the hidden attention projection `W`, an int >= 1.
        use_bias: Whether the projection has the bias `b`.
        kernel_initializer: Initializer of `W`, `(features, units)`.
        bias_initializer: Initializer of `b`, `(units,)`.
        context_initializer: Initializer of the context vector `u`,
            `(units,)`.
        kernel_regularizer: Optional regularizer of `W`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: `(batch, time, features)` tensor.
        mask: Optional bool `(batch, time)` mask, True for real steps. Keras
            passes it in automatically after `Embedding(mask_zero=True)` or
            `Masking`.
        return_attention_scores: If True, also return the weights.

    Input shape:
        `(batch, time, features)`.

    Output shape:
        `(batch, features)`, and the `(batch, time)` weights if asked. The
        time axis is gone, so the output carries no mask.

    Example:

    >>> import numpy as np
    >>> layer = MaskedAttentionPooling(units=8)
    >>> x = np.random.rand(2, 5, 3).astype("float32")
    >>> mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    >>> pooled, weights = layer(x, mask=mask, return_attention_scores=True)
    >>> tuple(pooled.shape), keras.ops.convert_to_numpy(weights)[0, 2:].tolist()
    ((2, 3), [0.0, 0.0, 0.0])

    References:
        - [Yang et al., 2016](https://aclanthology.org/N16-1174/),
          Hierarchical Attention Networks for Document Classification.
    """

    def __init__(
        self,
        units,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        context_initializer="glorot_uniform",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _checks.integer_at_least("units", units, 1)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.context_initializer = keras.initializers.get(context_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.supports_masking = True

    def build(self, input_shape):
        _check_rank3(input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = (
            self.add_weight(
                name="bias", shape=(self.units,), initializer=self.bias_initializer
            )
            if self.use_bias
            else None
        )
        self.context = self.add_weight(
            name="context",
            shape=(self.units,),
            initializer=self.context_initializer,
        )

    def call(self, inputs, mask=None, return_attention_scores=False):
        _check_rank3(inputs.shape)
        if mask is not None:
            mask = ops.cast(mask, "bool")
            if len(mask.shape) != 2:
                raise ValueError(
                    "The mask must have shape (batch, time). Received: "
                    f"mask.shape={tuple(mask.shape)}, inputs.shape={tuple(inputs.shape)}"
                )
            _checks.check_mask_shape(mask.shape, inputs.shape)
        inputs, kernel, bias, context = _numerics.cast_to_compute_dtype(
            self, inputs, self.kernel, self.bias, self.context
        )
        if not return_attention_scores and _takes_hand_written_gradient():
            return _pool(inputs, mask, kernel, bias, context)
        if mask is not None:
            inputs = _numerics.sanitize(inputs, mask)
        if bias is not None and mask is not None and _folds_bias():
            hidden = _project_with_folded_bias(inputs, kernel, bias)
        else:
            hidden = ops.matmul(inputs, kernel)
            if bias is not None:
                hidden = hidden + bias
        scores = ops.matmul(_numerics.tanh(hidden), context)  # (batch, time)
        weights = _numerics.masked_softmax(scores, mask)
        pooled = _weighted_sum(inputs, weights)
        if return_attention_scores:
            return pooled, ops.cast(weights, self.compute_dtype)
        return pooled

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_spec(self, inputs, mask=None, return_attention_scores=False):
        _check_rank3(inputs.shape)
        pooled = keras.KerasTensor(
            (inputs.shape[0], inputs.shape[2]), dtype=self.compute_dtype
        )
        if return_attention_scores:
            weights = keras.KerasTensor(inputs.shape[:2], dtype=self.compute_dtype)
            return pooled, weights
        return pooled

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "context_initializer": keras.initializers.serialize(
                self.context_initializer
            ),
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer
            ),
        }


def _takes_hand_written_gradient():
    """Whether `call` (without the weights) goes through `_pool`.

    On TensorFlow without XLA. Measured fwd+bwd at B64 T256 F128, units 64,
    2 CPU cores, against the automatic gradient of the same forward pass:
    - TensorFlow graph: 0.83-0.91 of the stock composition's step (three
      `make bench` runs and two one-process comparisons), against 0.99-1.02
      for the automatic gradient;
    - under XLA (TensorFlow's `jit_compile=True`, and all of JAX): 1.04-1.20
      of the automatic gradient's step, over six hand-written formulations;
      XLA fuses that gradient's elementwise passes itself, and copies the
      zeroing of the padding into each matrix product the hand-written one
      feeds;
    - torch: 1.04-1.16 of the automatic gradient's step.
    Both paths give the same values and gradients; the tests run both on
    every backend.
    """
    return keras.backend.backend() == "tensorflow" and not _xla.compiling()


def _folds_bias():
    """Whether `call` folds the bias into the projection's kernel (with a
    mask, under TensorFlow's XLA).

    Measured fwd+bwd under `jit_compile=True`, B64 T256 F128, units 64, two
    CPU cores: 0.93-0.97 of the step with a separate bias (three one-process
    comparisons of 30 interleaved repeats). Measured on a CPU only, so JAX
    (which the GPU benchmark runs) keeps the separate bias: a contracted
    axis of `features + 1` may be misaligned for a GPU's matrix units.
    TensorFlow's XLA on a GPU takes the fold, unmeasured.
    """
    return keras.backend.backend() == "tensorflow" and _xla.compiling()


def _project_with_folded_bias(inputs, kernel, bias):
    """`inputs @ kernel + bias` as one product: `[inputs, 1] @ [kernel; bias]`.

    With a mask, XLA writes the zeroed copy of the input out anyway (its
    CPU matrix products read no fused operand); writing it with a column of
    ones costs one more float per step. In exchange the bias's add is part
    of the product, and its gradient (a reduction over `batch * time` rows
    that XLA runs as a separate pass) comes out of the kernel's gradient
    product as its last row.
    """
    ones = ops.ones_like(inputs[..., :1])
    augmented = ops.concatenate([inputs, ones], axis=-1)
    return ops.matmul(augmented, ops.concatenate([kernel, ops.expand_dims(bias, 0)], axis=0))


def _pool(inputs, mask, kernel, bias, context):
    """The layer's pooled output, with its gradient written by hand.

    The same forward pass as `call`'s (the projection flattened to one 2-D
    product, the weighted sum a batched `(1, T) @ (T, F)` product), and the
    gradient automatic differentiation gives, in fewer passes over the
    `(batch, time, features)` input. `_takes_hand_written_gradient` says
    when it is used.

    - The padded input rows are zeroed once, and the gradient needs no
      second `where`: at a padded step the weight is 0 and so is the score's
      gradient (the softmax's gradient is `a * (...)`, and everything it
      multiplies is finite), so every term of the input's gradient is an
      exact 0 there.
    - The input's gradient is `d_hidden @ W^T + a g^T`: one matrix product
      and one fused add, where the automatic gradient adds a third pass (the
      `where`) and writes the outer product with a batched matrix kernel.
    - The kernel's gradient is computed as `(d_hidden^T @ x)^T`: the same
      numbers as `x^T @ d_hidden`, which TensorFlow's CPU matrix kernel
      computes about 1.4 times slower for this shape (`(F, B*T) @ (B*T,
      U)`, a long contracted axis).
    """
    batch_time = ops.shape(inputs)[:2]
    features = inputs.shape[-1]
    args = (inputs, kernel, context) if bias is None else (inputs, kernel, context, bias)

    @ops.custom_gradient
    def pool(*args):
        inputs, kernel, context = args[:3]
        if mask is not None:
            inputs = _numerics.sanitize(inputs, mask)
        flat = ops.reshape(inputs, (-1, features))
        hidden = ops.matmul(flat, kernel)
        if bias is not None:
            hidden = hidden + args[3]
        activation = _numerics.tanh(hidden)  # (batch * time, units)
        scores = ops.reshape(ops.matmul(activation, context), batch_time)
        weights = _numerics.masked_softmax(scores, mask)  # float32
        cast_weights = ops.cast(weights, inputs.dtype)
        pooled = ops.squeeze(ops.matmul(ops.expand_dims(cast_weights, 1), inputs), 1)

        def grad(*upstream_args, upstream=None):
            if upstream is None:  # TensorFlow and JAX; torch passes it by name
                (upstream,) = upstream_args
            upstream = ops.cast(upstream, inputs.dtype)  # (batch, features)
            # The weights' gradient, and the softmax's, in float32.
            d_weights = _numerics.widen(
                ops.squeeze(ops.matmul(inputs, ops.expand_dims(upstream, -1)), -1)
            )
            d_scores = weights * (
                d_weights - ops.sum(weights * d_weights, axis=-1, keepdims=True)
            )
            d_scores = ops.cast(ops.reshape(d_scores, (-1,)), inputs.dtype)
            d_context = ops.matmul(d_scores, activation)
            d_hidden = (ops.expand_dims(d_scores, 1) * context) * (1.0 - ops.square(activation))
            d_kernel = ops.transpose(ops.matmul(ops.transpose(d_hidden), flat))
            d_inputs = ops.reshape(
                ops.matmul(d_hidden, ops.transpose(kernel)), ops.shape(inputs)
            ) + ops.expand_dims(cast_weights, -1) * ops.expand_dims(upstream, 1)
            grads = (d_inputs, d_kernel, d_context)
            if bias is not None:
                grads += (ops.sum(d_hidden, axis=0),)
            return grads

        return pooled, grad

    return pool(*args)


def _weighted_sum(inputs, weights):
    """`sum_t weights[b, t] * inputs[b, t, :]`, `(batch, features)`."""
    if _xla.compiling():
        # XLA fuses the gradient's elementwise terms into the passes that
        # need them; a batched product's gradient is a (B, T, F) outer
        # product written out by a matrix kernel. 5-9% of the step under XLA
        # on a CPU (B64 T256 F128), no difference on an H100.
        summed = ops.sum(
            _numerics.widen(inputs) * ops.expand_dims(weights, -1), axis=1
        )
        return ops.cast(summed, inputs.dtype)
    # Without XLA, the elementwise product is a (B, T, F) temporary; a
    # batched (1, T) @ (T, F) product writes none.
    return ops.squeeze(
        ops.matmul(ops.expand_dims(ops.cast(weights, inputs.dtype), 1), inputs), 1
    )


def _check_rank3(shape):
    if len(shape) != 3:
        raise ValueError(
            "MaskedAttentionPooling expects inputs of shape "
            f"(batch, time, features). Received: inputs.shape={tuple(shape)}"
        )
