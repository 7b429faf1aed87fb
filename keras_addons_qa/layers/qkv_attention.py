import math

import keras
from keras import ops

from keras_addons_qa import _checks
from keras_addons_qa import _compat
from keras_addons_qa import _numerics
from keras_addons_qa import ops as kaq_ops
from keras_addons_qa.layers import _attention_axes
from keras_addons_qa.layers import _attention_conversion
from keras_addons_qa.layers import _kv_cache
from keras_addons_qa.layers import _mha_arguments


@keras.saving.register_keras_serializable(package="keras_addons_qa")
class QKVAttention(keras.layers.MultiHeadAttention):
    """Multi-head attention, exact under masks: a drop-in for
    `keras.layers.MultiHeadAttention`.

    A subclass of `keras.layers.MultiHeadAttention` with its constructor and
    call arguments, variables (in the same order), output shapes,
    `get_config` keys and sublayers, so LoRA, int8 quantization and dtype
    policy maps reach it as they reach MultiHeadAttention;
    `from_multi_head_attention(mha)` converts a built layer and
    `replace_attention(model)` swaps it into a built model. With the same
    weights it computes the same outputs and scores wherever every query
    sees a key. Padding (`query_mask`, `value_mask`, `key_mask`, by default
    the inputs' Keras masks) reaches no output and no gradient, even inf or
    NaN; a query that sees no key gets a zero context and zero scores; the
    softmax runs in float32. It adds `distance_penalty`, grouped-query
    heads, `position_encoding` and a KV cache, and all its attention is
    `keras_addons_qa.ops.attention`, block by block past
    `scores_budget_mb`.

    Masks are bool, True = attend, combined by AND. `query_mask` has the
    query's shape without features, `value_mask` and `key_mask` the
    value's. `attention_mask` broadcasts as in MultiHeadAttention (`(T, S)`,
    `(B, T, S)` or `(B, num_heads, T, S)` for rank-3 inputs); any other
    shape raises.

    Args:
        num_heads: Number of attention heads.
        key_dim: Size of each query and key head.
        value_dim: Size of each value head; defaults to `key_dim`.
        dropout: Dropout rate on the attention weights, in `[0, 1)`.
        use_bias: Whether the projections have biases.
        output_shape: The output's trailing shape, an int or a tuple;
            defaults to the query's feature size.
        attention_axes: Axes attention runs over; `None` means every axis
            but the batch and feature axes.
        sliding_window: Optional int >= 1: query `i` sees keys `j` with
            `|i - j| < sliding_window` (single attention axis).
        flash_attention: As in MultiHeadAttention.
        kernel_initializer: As in MultiHeadAttention.
        bias_initializer: As in MultiHeadAttention.
        kernel_regularizer: As in MultiHeadAttention.
        bias_regularizer: As in MultiHeadAttention.
        activity_regularizer: As in MultiHeadAttention.
        kernel_constraint: As in MultiHeadAttention.
        bias_constraint: As in MultiHeadAttention.
        use_gate: Gated attention: a sigmoid projection of the query
            multiplies each head's context.
        seed: Optional int seeding the dropout.
        distance_penalty: A float >= 0: `distance_penalty * |i' - j|` is
            subtracted from each logit, `i' = (i + 1/2) S / T - 1/2` the
            query's position on the key axis (single attention axis).
        num_key_value_heads: Key and value heads, a divisor of `num_heads`;
            defaults to `num_heads`.
        scores_budget_mb: MiB of scores per example above which attention
            runs block by block (default 128); `None`: always the full
            scores.
        output_dim: 0.1.0's name for an int `output_shape`.
        position_encoding: Optional layer applied to the projected queries
            and keys, `(B, steps, heads, key_dim)`, as `layer(x,
            start_index=i)` with `i` the first step's position (the cache
            index when decoding, else 0), before keys enter the cache:
            rotary positions, e.g. KerasHub's `RotaryEmbedding`. Rank-3
            inputs only.
        **kwargs: Base layer keyword arguments.

    Call arguments:
        query: `(B, T, features)`, or rank 4-5 with `attention_axes`.
        value: `(B, S, features)`, the same rank as `query`.
        key: Optional, like `value`; defaults to `value`.
        query_mask: Optional bool, the query's shape without features.
        value_mask: Optional bool, the value's shape without features.
        key_mask: Optional bool, the key's shape without features.
        attention_mask: Optional bool, see above.
        return_attention_scores: Also return the weights (before dropout).
        training: Whether dropout is active.
        use_causal_mask: Whether query `i` sees only keys `j <= i`.
        cache: Optional `(B, 2, max_length, num_key_value_heads, key_dim)`
            keys and values (finite, zeros where nothing is written yet);
            the call then returns `(output, cache)` (`(output, scores,
            cache)` with `return_attention_scores`, as KerasHub's
            `CachedMultiHeadAttention` does) and
            attends over the whole cache, causal order, window and penalty
            counting positions from `cache_update_index`. Earlier steps'
            padding is an `attention_mask` of shape `(B, T, max_length)`.
        cache_update_index: Where the new steps go in the cache (an int or
            a scalar int tensor); None reads the cache as it is. The steps
            must fit: `0 <= cache_update_index <= max_length - T`, checked
            in eager code. Compiled code cannot raise: there a step whose
            slot falls outside the cache is not written (nothing is
            clamped), and positions still count from the index given.

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
        - [Dong et al., 2018](https://ieeexplore.ieee.org/document/8462506),
          Speech-Transformer.
    """

    def __init__(
        self,
        *args,
        distance_penalty=0.0,
        num_key_value_heads=None,
        scores_budget_mb=128.0,
        output_dim=None,
        position_encoding=None,
        **kwargs,
    ):
        arguments, provided = _mha_arguments.bind(args, kwargs, output_dim)
        self.distance_penalty = _checks.non_negative_float(
            "distance_penalty", distance_penalty
        )
        self.scores_budget_mb = None if scores_budget_mb is None else _checks.positive_float(
            "scores_budget_mb", scores_budget_mb
        )
        super().__init__(**arguments)  # checks num_heads
        if "use_gate" in provided:
            self._use_gate = provided["use_gate"]
        if "sliding_window" in provided:
            self._sliding_window = provided["sliding_window"]
        heads = self._num_heads
        if num_key_value_heads is None:
            num_key_value_heads = heads
        num_key_value_heads = _checks.integer_at_least(
            "num_key_value_heads", num_key_value_heads, 1
        )
        if heads % num_key_value_heads:
            raise ValueError(
                "`num_heads` must be a multiple of `num_key_value_heads`. "
                f"Received: num_heads={heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        self.num_key_value_heads = num_key_value_heads
        if position_encoding is not None and not isinstance(position_encoding, keras.layers.Layer):
            raise ValueError(
                "`position_encoding` must be a Keras layer called as "
                "`layer(x, start_index=i)` (KerasHub's `RotaryEmbedding` is one). "
                f"Received: position_encoding={position_encoding!r}"
            )
        self.position_encoding = position_encoding

    def get_config(self):
        config = {
            **super().get_config(),
            **{name: getattr(self, "_" + name) for name in _mha_arguments.PROVIDED},
            "distance_penalty": self.distance_penalty,
            "num_key_value_heads": self.num_key_value_heads,
            "scores_budget_mb": self.scores_budget_mb,
        }
        if self.position_encoding is not None:  # absent otherwise, as in 0.2.0
            config["position_encoding"] = keras.saving.serialize_keras_object(
                self.position_encoding
            )
        return config

    @classmethod
    def from_config(cls, config):
        encoding = config.get("position_encoding")
        if isinstance(encoding, dict):
            config = {
                **config,
                "position_encoding": keras.saving.deserialize_keras_object(encoding),
            }
        return super().from_config(config)

    def build(self, query_shape, value_shape, key_shape=None):
        for name, shape in (("query", query_shape), ("value", value_shape)):
            if len(shape) < 3:
                raise ValueError(
                    f"QKVAttention expects `{name}` of shape (batch, ..., "
                    f"features), rank >= 3. Received: {name}.shape="
                    f"{tuple(shape)}"
                )
        if len(query_shape) != len(value_shape):
            raise ValueError(
                "`query` and `value` must have the same rank. Received: "
                f"query.shape={tuple(query_shape)}, "
                f"value.shape={tuple(value_shape)}"
            )
        if self.distance_penalty and len(_attention_axes.resolve(
            self._attention_axes, len(query_shape)
        )) != 1:
            raise ValueError(
                "`distance_penalty` needs attention over a single axis (the "
                "axis its distance is measured along). Received: attention_axes="
                f"{self._attention_axes} for query.shape={tuple(query_shape)}"
            )
        if self.position_encoding is not None and len(query_shape) != 3:
            raise ValueError(
                "`position_encoding` needs rank-3 inputs `(batch, steps, "
                f"features)`. Received: query.shape={tuple(query_shape)}"
            )
        super().build(query_shape, value_shape, key_shape)
        if self.position_encoding is not None and not self.position_encoding.built:
            self.position_encoding.build((None, None, self._num_heads, self._key_dim))
        self._qkv_rank = len(query_shape)  # what the projections' equations were made for
        if "use_gate" in _mha_arguments.PROVIDED and self._use_gate:
            self._build_gate(query_shape)
        if self.num_key_value_heads != self._num_heads:
            # Grouped-query attention: keys and values get fewer heads.
            self._group_heads("_key_dense", key_shape or value_shape)
            self._group_heads("_value_dense", value_shape)

    def _build_gate(self, query_shape):
        """The gate's projection where MultiHeadAttention has none (Keras
        before 3.14), as Keras builds it: the query's equation with
        `value_dim` heads' features and a sigmoid, between the key's and the
        value's projections among the sublayers."""
        query_dense = self._query_dense
        self._gate_dense = keras.layers.EinsumDense(  # tracked: appended
            query_dense.equation,
            output_shape=tuple(query_dense.partial_output_shape[:-1])
            + (self._value_dim,),
            bias_axes=query_dense.bias_axes,
            activation="sigmoid",
            name="gate",
            **self._get_common_kwargs_for_sublayer(),
        )
        self._gate_dense.build(query_shape)
        _compat.move_sublayer(self, self._gate_dense, before=self._value_dense)

    def _group_heads(self, attribute, input_shape):
        """Rebuilds the projection `attribute` (built by MultiHeadAttention)
        with `num_key_value_heads` heads, in the same place among the
        sublayers, so the weights keep MultiHeadAttention's order."""
        dense = getattr(self, attribute)
        grouped = keras.layers.EinsumDense(
            dense.equation,
            output_shape=tuple(dense.partial_output_shape[:-2])
            + (self.num_key_value_heads, dense.partial_output_shape[-1]),
            bias_axes=dense.bias_axes,
            name=dense.name,
            **self._get_common_kwargs_for_sublayer(),
        )
        grouped.build(input_shape)
        _compat.swap_sublayer(self, dense, grouped)
        setattr(self, attribute, grouped)

    @classmethod
    def from_multi_head_attention(cls, mha, **kwargs):
        """A `QKVAttention` with the configuration and weights of `mha`.

        Args:
            mha: A built `keras.layers.MultiHeadAttention`.
            **kwargs: Overrides of the constructor arguments (e.g. `name`).
        """
        return _attention_conversion.from_multi_head_attention(cls, mha, kwargs)

    @classmethod
    def from_grouped_query_attention(cls, gqa, **kwargs):
        """A `QKVAttention` with the configuration and weights of `gqa`.

        `gqa` is a built layer with `EinsumDense` projections `_query_dense`,
        `_key_dense`, `_value_dense` and `_output_dense`, optionally a
        `_gate_dense` and a rotary layer (`rotary_embedding_layer`, which
        becomes `position_encoding`), and no other weights: Keras's
        `GroupQueryAttention` and KerasHub's `LlamaAttention`; a layer with
        other weights raises. What the converter reads, and what it cannot
        see, is on the API page. The result is called as `layer(x, x, ...)`.

        Args:
            gqa: The built layer.
            **kwargs: Overrides of the constructor arguments (e.g. `name`).
        """
        return _attention_conversion.from_grouped_query_attention(cls, gqa, kwargs)

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
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
    ):
        if key is None:
            key, key_mask = value, None  # the value mask covers the key
        _mha_arguments.check_call(
            self, query, value, key, (query_mask, value_mask, key_mask),
            attention_mask, use_causal_mask, cache, cache_update_index,
        )
        axes = self._attention_axes  # resolved by build

        # Padding may hold anything (inf, NaN): zero it before projecting.
        # A key step either mask marks gets no weight, so both masks zero
        # the value and the key there. (Self-attention with one mask:
        # sanitize the shared tensor once.)
        key_valid = _attention_axes.and_masks(value_mask, key_mask)
        same = query is value and query_mask is value_mask and key_mask is None
        key_is_value = key is value
        if key_valid is not None:
            value = _numerics.sanitize(value, key_valid)
        if same:
            query = value
        elif query_mask is not None:
            query = _numerics.sanitize(query, query_mask)
        if key_is_value:
            key = value
        elif key_valid is not None:
            key = _numerics.sanitize(key, key_valid)

        q = _project(self._query_dense, query)  # (B, T, N, key_dim)
        k = _project(self._key_dense, key)  # (B, S, N, key_dim)
        v = _project(self._value_dense, value)  # (B, S, N, value_dim)
        if self.position_encoding is not None:
            # Queries and new keys by position, before keys enter the cache
            # (KerasHub's Llama caches rotated keys).
            start = 0 if cache_update_index is None else cache_update_index
            # Cast back: an encoding with its own dtype policy leaves the
            # heads in this layer's compute dtype.
            q = ops.cast(self.position_encoding(q, start_index=start), q.dtype)
            k = ops.cast(self.position_encoding(k, start_index=start), k.dtype)
        offset = None  # the first query's position, when decoding
        if cache is not None:
            k, v, cache, key_valid, offset = _kv_cache.update(
                cache, k, v, key_valid, cache_update_index
            )
        query_valid = None if query_mask is None else ops.cast(query_mask, "bool")
        rank = len(q.shape) - 1 + len(axes)  # the scores'
        mask = None
        if attention_mask is not None:
            mask = _attention_axes.expand_mask(ops.cast(attention_mask, "bool"), rank, axes)
        if type(self)._compute_attention is QKVAttention._compute_attention:
            context, scores = self._attend(
                q, k, v, key_valid=key_valid, mask=mask, causal=bool(use_causal_mask),
                window=self._sliding_window, offset=offset, training=training,
                return_scores=return_attention_scores,
            )
        else:
            # A subclass's `_compute_attention` gets MultiHeadAttention's
            # arguments: as many key heads as query heads, and one mask with
            # every part, causality and the query padding included.
            if self.distance_penalty and offset is not None:
                raise ValueError(
                    "A subclass overriding `_compute_attention` cannot take a "
                    "`cache` with `distance_penalty` (its signature has no query "
                    f"position). Received: distance_penalty={self.distance_penalty}"
                )
            groups = self._num_heads // self.num_key_value_heads
            if groups > 1:
                k, v = ops.repeat(k, groups, axis=-2), ops.repeat(v, groups, axis=-2)
            positions = None
            if use_causal_mask or self._sliding_window:
                axis = axes[0]
                positions = kaq_ops.position_mask(
                    ops.shape(q)[axis], ops.shape(k)[axis], is_causal=bool(use_causal_mask),
                    sliding_window=self._sliding_window, query_offset=offset,
                )
            mask = _attention_axes.one_mask(mask, key_valid, query_valid, positions, rank, axes)
            context, scores = self._compute_attention(
                q, k, v, mask, training, return_attention_scores
            )
        if query_valid is not None:
            context = _numerics.sanitize(context, query_valid)
            if scores is not None:
                query_rows = _attention_axes.steps_to_scores(query_valid, axes, keys=False)
                scores = ops.where(query_rows, scores, 0.0)
        if self._use_gate:  # the gate's sublayer has a sigmoid activation
            context = context * _project(self._gate_dense, query)
        output = _project(self._output_dense, context, contracted=2)
        if query_valid is not None:
            _compat.set_keras_mask(output, query_valid)
        if cache is not None:  # KerasHub's order
            return (output, scores, cache) if return_attention_scores else (output, cache)
        if return_attention_scores:
            return output, scores
        return output

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        """Attention over projected heads, with this layer's policies.

        MultiHeadAttention's override point, with its signature: `query`
        `(B, T, N, key_dim)`, `key` `(B, S, N, key_dim)`, `value`
        `(B, S, N, value_dim)` (more axes with `attention_axes`), and a bool
        `attention_mask` broadcastable to the scores after
        MultiHeadAttention's expansion (`(T, S)`, `(B, T, S)` or
        `(B, N, T, S)`). Queries with no visible key get a zero context and
        zero scores. Returns the context and the scores (None unless asked).
        """
        mask = None
        if attention_mask is not None:
            rank = len(query.shape) - 1 + len(self._attention_axes)
            mask = _attention_axes.expand_mask(ops.cast(attention_mask, "bool"), rank, self._attention_axes)
        return self._attend(
            query, key, value, key_valid=None, mask=mask, causal=bool(use_causal_mask),
            window=None, offset=None, training=training,
            return_scores=return_attention_scores,
        )

    def _attend(self, q, k, v, *, key_valid, mask, causal, window, offset,
                training, return_scores):
        """`ops.attention` over the attention axes of projected heads `(B,
        *steps, heads, dim)` with this layer's options; `key_valid` has the
        key's steps, `mask` is in the scores' layout."""
        if self._flash_attention and return_scores:
            raise ValueError(
                "Returning attention scores is not supported when flash "
                "attention is enabled. Please disable flash attention to access"
                " attention scores."
            )
        dropout = self._dropout if (self._dropout > 0 and bool(training)) else 0.0
        return _attention_axes.attention(
            q, k, v, axes=self._attention_axes, key_valid=key_valid, mask=mask,
            return_weights=return_scores, is_causal=causal, sliding_window=window,
            distance_penalty=self.distance_penalty, query_offset=offset,
            scale=float(self._inverse_sqrt_key_dim), dropout=dropout,
            seed=self._dropout_layer.seed_generator if dropout else None,
            scores_budget_mb=self.scores_budget_mb,
        )

    def compute_output_spec(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        cache=None,
        cache_update_index=None,
    ):
        output = keras.KerasTensor(
            self.compute_output_shape(
                query.shape, value.shape, None if key is None else key.shape
            ),
            dtype=self.compute_dtype,
        )
        cache_spec = None if cache is None else keras.KerasTensor(cache.shape, dtype=cache.dtype)
        if not return_attention_scores:
            return output if cache is None else (output, cache_spec)
        # The scores' layout: non-attention axes, heads, query attention
        # axes, key attention axes (MultiHeadAttention's spec gives
        # (B, N, T, T) whatever the key length).
        axes = _attention_axes.resolve(self._attention_axes, len(query.shape))
        keys = tuple(value.shape[i] for i in axes) if cache is None else (cache.shape[2],)
        shape = _attention_axes.scores_shape(query.shape, keys, axes, self._num_heads)
        scores = keras.KerasTensor(shape, dtype=self.compute_dtype)
        return (output, scores) if cache is None else (output, scores, cache_spec)


def _project(dense, inputs, contracted=1):
    """`dense(inputs)` for an `EinsumDense` that contracts the last
    `contracted` axes of `inputs`, as one 2-D matrix product with the bias
    added by NumPy broadcasting (Keras's TensorFlow `ops.add`, which
    `EinsumDense` uses, adds a `(heads, 1)` bias along the wrong axis when
    the length equals the number of heads; see the API page). A quantized
    projection, or one with an activity regularizer, calls its sublayer.
    """
    if getattr(dense, "quantization_mode", None) or dense.activity_regularizer:
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
    return dense.activation(out)  # the gate's sigmoid; linear elsewhere
