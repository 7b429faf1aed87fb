import math

import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _compat
from keras_addons_qa import _numerics


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class QKVAttention(keras.layers.Layer):
    """Multi-head attention with q, k, v projections, exact under masks.

    The attention of "Attention Is All You Need" (and Trax's `AttentionQKV`):
    three projections of the inputs into `num_heads` query, key and value
    heads, scaled dot-product attention per head, and an output projection.

    It is a drop-in for `keras.layers.MultiHeadAttention` (rank-3 inputs):
    the same call signature, the same variables in the same order and shapes
    (`query`, `key`, `value` kernels `(features, num_heads, dim)` and biases
    `(num_heads, dim)`, output kernel `(num_heads, value_dim, output_dim)` and
    bias `(output_dim,)`), so `set_weights(mha.get_weights())` reproduces its
    outputs and scores; `from_multi_head_attention(mha)` does that for you.
    Each projection is one 2-D matrix product over the flattened batch and
    time axes, so its kernel gradient is one product too (on TensorFlow,
    `EinsumDense` computes one per example and sums them). One exception to
    reproducing MultiHeadAttention: on TensorFlow, Keras 3.15's `ops.add`
    adds a `(num_heads, 1)` bias along the time axis when the sequence
    length equals `num_heads` (heads of size 1), which makes
    MultiHeadAttention wrong there; this layer broadcasts biases as NumPy
    does, on every backend.

    What it adds is one policy for queries that see no valid key (a fully
    padded value sequence, or a padded query): their attention context is
    exactly zero, so their output is the output projection's bias. Never NaN,
    never a mean over padding (MultiHeadAttention returns zeros on one code
    path and the mean of the values on another), with finite gradients.
    Padded steps of `query`, `value` and `key` (by their masks) are zeroed
    before the projections, so whatever they hold, inf and NaN included,
    reaches no output and no gradient.

    Masks follow Keras: bool, True = attend. `query_mask` `(B, T)`,
    `value_mask` and `key_mask` `(B, S)` come explicitly or from the inputs'
    Keras masks (`Embedding(mask_zero=True)`, `Masking`); `attention_mask`
    `(B, T, S)` and `use_causal_mask` add to them; all combine by AND. The
    output carries the query mask as its Keras mask.

    The softmax always runs in float32. Without dropout at training time,
    without returned scores, with `value_dim == key_dim` and no
    `distance_penalty`, attention goes through a fused path:
    `keras.ops.dot_product_attention` (the backend's fused kernel where it
    has one); on JAX with a GPU, cuDNN flash attention with the key mask as
    sequence lengths; on TensorFlow without a causal mask, the same einsum
    and softmax as TensorFlow's op, with the key mask broadcast rather than
    expanded. Otherwise attention takes an explicit einsum path. All give
    the same result up to rounding (tested).

    Args:
        num_heads: Number of attention heads, an int >= 1.
        key_dim: Size of each query and key head, an int >= 1.
        value_dim: Size of each value head; defaults to `key_dim`.
        output_dim: Size of the output; defaults to the query's feature size.
        dropout: Dropout rate on the attention weights, `0 <= dropout < 1`.
        use_bias: Whether the four projections have biases.
        kernel_initializer: Initializer of the four kernels.
        bias_initializer: Initializer of the four biases.
        kernel_regularizer: Optional regularizer of the four kernels.
        kernel_constraint: Optional constraint of the four kernels.
        distance_penalty: Speech-Transformer's locality bias, a finite float
            >= 0: `distance_penalty * |i - j|` is subtracted from the logit
            of query `i` and key `j` before the softmax (in float32), so
            attention prefers nearby steps; a very large value makes
            self-attention the identity (each query attends to its own
            step, or to the nearest valid one). When the query and key
            lengths differ, query positions are mapped onto the key axis by
            relative scale, aligning step centers: `i' = (i + 1/2) S / T -
            1/2`. 0 (the default) is plain attention, identical to
            MultiHeadAttention.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        query: `(B, T, query_features)`.
        value: `(B, S, value_features)`.
        key: Optional `(B, S, key_features)`; defaults to `value`.
        query_mask: Optional bool `(B, T)`.
        value_mask: Optional bool `(B, S)`.
        key_mask: Optional bool `(B, S)`.
        attention_mask: Optional bool `(B, T, S)` (or `(1, T, S)`).
        use_causal_mask: Whether query `i` may only see keys `j <= i`.
        return_attention_scores: Also return the `(B, num_heads, T, S)`
            attention weights (before dropout).
        training: Whether dropout is active.

    Output shape:
        `(B, T, output_dim)`, and the scores if asked.

    Example:

    >>> import numpy as np
    >>> layer = QKVAttention(num_heads=2, key_dim=4)
    >>> x = np.random.rand(2, 5, 8).astype("float32")
    >>> mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    >>> out, scores = layer(x, x, query_mask=mask, value_mask=mask,
    ...                     return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape)
    ((2, 5, 8), (2, 2, 5, 5))
    >>> float(np.abs(keras.ops.convert_to_numpy(scores)[0, :, :, 3:]).max())  # padded keys
    0.0

    References:
        - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762),
          Attention Is All You Need.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        output_dim=None,
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        kernel_constraint=None,
        distance_penalty=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = _checks.integer_at_least("num_heads", num_heads, 1)
        self.key_dim = _checks.integer_at_least("key_dim", key_dim, 1)
        self.value_dim = (
            self.key_dim
            if value_dim is None
            else _checks.integer_at_least("value_dim", value_dim, 1)
        )
        self._value_dim_arg = value_dim
        self.output_dim = (
            None
            if output_dim is None
            else _checks.integer_at_least("output_dim", output_dim, 1)
        )
        self.dropout = _checks.non_negative_float("dropout", dropout)
        if self.dropout >= 1.0:
            raise ValueError(
                "Argument `dropout` must be in [0, 1). "
                f"Received: dropout={dropout!r}"
            )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.distance_penalty = _checks.non_negative_float(
            "distance_penalty", distance_penalty
        )
        self.supports_masking = True
        self._scale = 1.0 / float(self.key_dim) ** 0.5
        self._dropout_layer = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy
        )

    # -- construction ------------------------------------------------------

    def _projection(self, name, equation, output_shape, bias_axes):
        def clone(initializer):
            # A fresh initializer per sublayer, so the kernels differ.
            return initializer.__class__.from_config(initializer.get_config())

        return keras.layers.EinsumDense(
            equation,
            output_shape=output_shape,
            bias_axes=bias_axes if self.use_bias else None,
            kernel_initializer=clone(self.kernel_initializer),
            bias_initializer=clone(self.bias_initializer),
            kernel_regularizer=self.kernel_regularizer,
            kernel_constraint=self.kernel_constraint,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, query_shape, value_shape, key_shape=None):
        key_shape = value_shape if key_shape is None else key_shape
        for name, shape in (
            ("query", query_shape),
            ("value", value_shape),
            ("key", key_shape),
        ):
            if len(shape) != 3:
                raise ValueError(
                    f"QKVAttention expects `{name}` of shape (batch, "
                    f"length, features). Received: {name}.shape={tuple(shape)}"
                )
        if (
            value_shape[1] is not None
            and key_shape[1] is not None
            and value_shape[1] != key_shape[1]
        ):
            raise ValueError(
                "`key` and `value` must have the same length. Received: "
                f"key.shape={tuple(key_shape)}, value.shape={tuple(value_shape)}"
            )
        heads = (None, self.num_heads)
        self._query_dense = self._projection(
            "query", "abc,cde->abde", heads + (self.key_dim,), "de"
        )
        self._key_dense = self._projection(
            "key", "abc,cde->abde", heads + (self.key_dim,), "de"
        )
        self._value_dense = self._projection(
            "value", "abc,cde->abde", heads + (self.value_dim,), "de"
        )
        output_dim = self.output_dim or query_shape[-1]
        self._output_dense = self._projection(
            "attention_output", "abcd,cde->abe", (None, output_dim), "e"
        )
        self._query_dense.build(query_shape)
        self._key_dense.build(key_shape)
        self._value_dense.build(value_shape)
        self._output_dense.build(
            (query_shape[0], query_shape[1], self.num_heads, self.value_dim)
        )

    @classmethod
    def from_multi_head_attention(cls, mha, **kwargs):
        """A `QKVAttention` with the configuration and weights of `mha`.

        Args:
            mha: A built `keras.layers.MultiHeadAttention` over rank-3
                inputs (default `attention_axes`).
            **kwargs: Overrides of the constructor arguments (e.g. `name`).
        """
        if not mha.built:
            raise ValueError(
                "`mha` must be built (called once) so its shapes are known. "
                f"Received: mha={mha.name!r} (not built)"
            )
        config = mha.get_config()
        output_shape = config.get("output_shape")
        if isinstance(output_shape, (list, tuple)):
            output_shape = output_shape[-1]
        arguments = dict(
            num_heads=config["num_heads"],
            key_dim=config["key_dim"],
            value_dim=config["value_dim"],
            output_dim=output_shape,
            dropout=config["dropout"],
            use_bias=config["use_bias"],
            kernel_initializer=config["kernel_initializer"],
            bias_initializer=config["bias_initializer"],
            kernel_regularizer=config["kernel_regularizer"],
            kernel_constraint=config["kernel_constraint"],
            dtype=config["dtype"],
        )
        arguments.update(kwargs)
        layer = cls(**arguments)
        layer.build(
            (None, None, mha.query_dense.kernel.shape[0]),
            (None, None, mha.value_dense.kernel.shape[0]),
            (None, None, mha.key_dense.kernel.shape[0]),
        )
        layer.set_weights(mha.get_weights())
        return layer

    # -- call --------------------------------------------------------------

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        key_is_value = key is None
        if key_is_value:
            key_mask = None  # the value mask covers the key
        batch, q_len, v_len = query.shape[0], query.shape[1], value.shape[1]
        for name, mask, length in (
            ("query_mask", query_mask, q_len),
            ("value_mask", value_mask, v_len),
            ("key_mask", key_mask, v_len),
        ):
            if mask is not None:
                _check_shape(name, mask.shape, (batch, length))
        if attention_mask is not None:
            _check_shape(
                "attention_mask", attention_mask.shape, (batch, q_len, v_len)
            )

        # Padding may hold anything (inf, NaN): zero it before projecting.
        # (Self-attention with one mask: sanitize the shared tensor once.)
        same = query is value and query_mask is value_mask
        if value_mask is not None:
            value = _numerics.sanitize(value, value_mask)
        if same:
            query = value
        elif query_mask is not None:
            query = _numerics.sanitize(query, query_mask)
        if key_is_value:
            key = value
        elif key_mask is not None:
            key = _numerics.sanitize(key, key_mask)

        q = _project(self._query_dense, query)  # (B, T, N, key_dim)
        k = _project(self._key_dense, key)  # (B, S, N, key_dim)
        v = _project(self._value_dense, value)  # (B, S, N, value_dim)

        dropout_active = self.dropout > 0 and bool(training)
        # jax.nn.dot_product_attention (the JAX backend's fused op) needs
        # value heads as wide as key heads, and computes its logits in
        # float32: float64 layers take the explicit path.
        # XLA on a CPU has no float16 dot with float32 accumulation, which
        # JAX's fused op asks for: float16 there takes the explicit path too.
        dtype = keras.backend.standardize_dtype(q.dtype)
        fusable = (
            self.value_dim == self.key_dim
            and not self.distance_penalty
            and dtype != "float64"
            and not (dtype == "float16" and _jax_off_gpu())
        )
        if return_attention_scores or dropout_active or not fusable or (
            attention_mask is not None
        ):
            mask = self._combined_mask(
                query, value, query_mask, value_mask, key_mask, attention_mask,
                use_causal_mask,
            )
        if return_attention_scores or dropout_active or not fusable:
            context, scores = self._explicit_attention(q, k, v, mask, training)
        elif attention_mask is not None:
            context, scores = self._fused_attention(q, k, v, mask), None
        else:
            # Step masks only: the kernel sees the key mask (and causality),
            # never a (B, T, S) tensor; queries that see no key are zeroed.
            context = self._fused_step_attention(
                q, k, v, _and_masks(value_mask, key_mask), bool(use_causal_mask)
            )
            sees = _sees_a_key(
                query_mask, _and_masks(value_mask, key_mask),
                bool(use_causal_mask), q_len=ops.shape(q)[1],
            )
            if sees is not None:
                context = ops.where(sees[:, :, None, None], context, 0.0)
            scores = None
        output = _project(self._output_dense, context, contracted=2)
        if query_mask is not None:
            _compat.set_keras_mask(output, ops.cast(query_mask, "bool"))
        if return_attention_scores:
            return output, scores
        return output

    def _combined_mask(
        self, query, value, query_mask, value_mask, key_mask, attention_mask,
        use_causal_mask,
    ):
        """AND of every mask given, as bool `(B or 1, T, S)`, or None."""
        parts = []
        if query_mask is not None:
            parts.append(ops.expand_dims(ops.cast(query_mask, "bool"), -1))
        for step_mask in (value_mask, key_mask):
            if step_mask is not None:
                parts.append(ops.expand_dims(ops.cast(step_mask, "bool"), -2))
        if attention_mask is not None:
            parts.append(ops.cast(attention_mask, "bool"))
        if use_causal_mask:
            rows = ops.arange(ops.shape(query)[1])[:, None]
            cols = ops.arange(ops.shape(value)[1])[None, :]
            parts.append(ops.expand_dims(rows >= cols, 0))
        if not parts:
            return None
        mask = parts[0]
        for part in parts[1:]:
            mask = ops.logical_and(mask, part)
        return ops.broadcast_to(
            mask,
            (ops.shape(mask)[0], ops.shape(query)[1], ops.shape(value)[1]),
        )

    def _explicit_attention(self, q, k, v, mask, training):
        q = q * ops.cast(self._scale, q.dtype)
        logits = ops.einsum("bsnh,btnh->bnts", k, q)
        if self.distance_penalty:
            logits = _numerics.widen(logits)
            logits = logits - self._distance_bias(
                ops.shape(q)[1], ops.shape(k)[1], logits.dtype
            )
        weights = _numerics.masked_softmax(
            logits, None if mask is None else ops.expand_dims(mask, 1)
        )
        scores = ops.cast(weights, self.compute_dtype)
        dropped = self._dropout_layer(scores, training=training)
        context = ops.einsum("bnts,bsnh->btnh", dropped, v)
        return context, scores

    def _distance_bias(self, q_len, k_len, dtype):
        """`distance_penalty * |i' - j|`, `(T, S)`, with `i'` on the key scale."""
        rows = ops.cast(ops.arange(q_len), dtype)
        cols = ops.cast(ops.arange(k_len), dtype)
        scale = ops.cast(k_len, dtype) / ops.cast(q_len, dtype)
        aligned = (rows + 0.5) * scale - 0.5  # == rows when q_len == k_len
        distance = ops.abs(aligned[:, None] - cols[None, :])
        # Capped far below the float32 maximum: a huge penalty is a hard
        # locality mask, never an inf logit (inf - inf is NaN in the softmax).
        return ops.minimum(self.distance_penalty * distance, 1e30)

    def _fused_step_attention(self, q, k, v, key_valid, is_causal):
        """Fused attention with a `(B, S)` key mask (or none) and causality."""
        lengths_path = _jax_padded_attention()
        if lengths_path is not None:
            # JAX on a GPU: the key mask goes to cuDNN as lengths (exact).
            return lengths_path(q, k, v, key_valid, self._scale, is_causal)
        kernel_mask = None
        if key_valid is not None:
            kernel_mask = key_valid[:, None, None, :]  # (B, 1, 1, S)
        if keras.backend.backend() == "tensorflow" and not is_causal:
            return self._lean_attention(q, k, v, kernel_mask)
        return ops.dot_product_attention(
            q, k, v, mask=kernel_mask, scale=self._scale, is_causal=is_causal
        )

    def _lean_attention(self, q, k, v, kernel_mask):
        """`ops.dot_product_attention` as TensorFlow's backend computes it,
        minus two full-size passes: the scale multiplies `q`, not the
        `(B, N, T, S)` logits, and the `(B, 1, 1, S)` key mask broadcasts in
        the `where` instead of being expanded to a `(B, N, T, S)` tensor
        first. Same result, up to rounding."""
        q = q * ops.cast(self._scale, q.dtype)
        logits = _numerics.widen(ops.einsum("btnh,bsnh->bnts", q, k))
        if kernel_mask is not None:
            logits = ops.where(kernel_mask, logits, _numerics.FLOAT32_MIN)
        probs = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        return ops.einsum("bnts,bsnh->btnh", probs, v)

    def _fused_attention(self, q, k, v, mask):
        if mask is None:
            return ops.dot_product_attention(q, k, v, scale=self._scale)
        context = ops.dot_product_attention(
            q, k, v, mask=ops.expand_dims(mask, 1), scale=self._scale
        )
        # The fused kernel spreads a query with no valid key over all keys;
        # our policy is a zero context for it.
        sees_a_key = ops.any(mask, axis=-1)[:, :, None, None]  # (B, T, 1, 1)
        return ops.where(sees_a_key, context, ops.zeros_like(context))

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
    ):
        output_dim = self.output_dim or query.shape[-1]
        output = keras.KerasTensor(
            query.shape[:-1] + (output_dim,), dtype=self.compute_dtype
        )
        if return_attention_scores:
            scores = keras.KerasTensor(
                (query.shape[0], self.num_heads, query.shape[1], value.shape[1]),
                dtype=self.compute_dtype,
            )
            return output, scores
        return output

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        return tuple(query_shape[:-1]) + (self.output_dim or query_shape[-1],)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self._value_dim_arg,
            "output_dim": self.output_dim,
            "dropout": self.dropout,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
            "kernel_regularizer": keras.regularizers.serialize(
                self.kernel_regularizer
            ),
            "kernel_constraint": keras.constraints.serialize(
                self.kernel_constraint
            ),
            "distance_penalty": self.distance_penalty,
        }


def _and_masks(*masks):
    present = [ops.cast(m, "bool") for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = ops.logical_and(out, m)
    return out


def _sees_a_key(query_valid, key_valid, is_causal, q_len):
    """`(B, T)` bool: which queries see at least one key (None: all do)."""
    sees = None
    if key_valid is not None:
        if is_causal:  # query i sees a key iff one of keys 0..i is valid
            seen = ops.cumsum(ops.cast(key_valid, "int32"), axis=1) > 0
            rows = ops.minimum(ops.arange(q_len), ops.shape(key_valid)[1] - 1)
            sees = ops.take(seen, rows, axis=1)
        else:
            sees = ops.any(key_valid, axis=1, keepdims=True)
    if query_valid is not None:
        query_valid = ops.cast(query_valid, "bool")
        sees = query_valid if sees is None else ops.logical_and(sees, query_valid)
    return sees


def _jax_off_gpu():
    """True on the JAX backend without a GPU."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() != "gpu"


def _jax_padded_attention():
    """The JAX length-based attention on a GPU, or None elsewhere.

    Its point is cuDNN; on CPU (where XLA's float16 dot with float32
    accumulation does not exist) and TPU the generic fused op is used.
    """
    if keras.backend.backend() != "jax":
        return None
    try:
        from keras_addons_qa import _jax_attention
    except ImportError:  # pragma: no cover - JAX missing: generic path
        return None
    return _jax_attention.padded_attention if _jax_attention.on_gpu() else None


def _check_shape(name, shape, expected):
    """Raises unless `shape` matches `expected` where both are known.

    A batch dimension of 1 broadcasts for `attention_mask`, as in Keras.
    """
    shape, expected = tuple(shape), tuple(expected)
    ok = len(shape) == len(expected) and all(
        s is None
        or e is None
        or s == e
        or (i == 0 and s == 1 and name == "attention_mask")
        for i, (s, e) in enumerate(zip(shape, expected))
    )
    if not ok:
        raise ValueError(
            f"`{name}` must have shape {expected} (None = any). "
            f"Received: {name}.shape={shape}"
        )


def _project(dense, inputs, contracted=1):
    """`dense(inputs)` for an `EinsumDense` that contracts the last
    `contracted` axes of `inputs`, as one 2-D matrix product.

    On TensorFlow, `EinsumDense`'s `einsum("abc,cde->abde")` takes its
    kernel gradient as one product per example and a sum over them (a
    `(B, C, N*H)` temporary); flattening the batch and time axes first makes
    it one `(C, B*T) @ (B*T, N*H)` product. Same values. A quantized
    projection, which has its own call, goes through the sublayer.
    """
    if getattr(dense, "quantization_mode", None):
        return dense(inputs)
    # `dense.kernel` includes a LoRA update, if one is enabled.
    inputs, kernel, bias = _numerics.cast_to_compute_dtype(
        dense, inputs, dense.kernel, dense.bias
    )
    lead = ops.shape(inputs)[: len(inputs.shape) - contracted]
    size = math.prod(kernel.shape[:contracted])
    flat = ops.reshape(inputs, (-1, size))
    out = ops.matmul(flat, ops.reshape(kernel, (size, -1)))
    out = ops.reshape(out, tuple(lead) + tuple(kernel.shape[contracted:]))
    if bias is not None:
        out = out + bias
    return out
